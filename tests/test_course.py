"""The student edition leaks no solution, and the grading run scores fixture submissions exactly.

tests/fixtures/course/source/course.ipynb is a tiny teacher's notebook with three cheap exercises
(uniform_soup 1 point, elect_sign 2, stitch 2) in the book's exercise format.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from lsedu import cli, course
from lsedu.course import CourseError

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "fixtures" / "course" / "source"
MARKER = re.compile(r"(BEGIN|END)\s+(SOLUTION|HIDDEN TESTS)")


def _solution_lines(source: str) -> set[str]:
    """Non-blank lines strictly inside marker regions that do not also occur outside them."""
    inside, outside, depth = set(), set(), 0
    for line in source.splitlines():
        m = MARKER.search(line)
        if m:
            depth += 1 if m[1] == "BEGIN" else -1
            continue
        (inside if depth else outside).add(line.strip())
    return {x for x in inside - outside if x}


def _assert_student_edition_clean(src_dir: Path, out_dir: Path) -> int:
    checked = 0
    for src in sorted(src_dir.glob("*.ipynb")):
        nb_src = nbformat.read(src, as_version=4)
        nb = nbformat.read(out_dir / src.name, as_version=4)
        nbformat.validate(nb)
        assert len(nb.cells) == len(nb_src.cells)
        for i, (a, b) in enumerate(zip(nb_src.cells, nb.cells)):
            assert "HIDDEN TESTS" not in b.source and not MARKER.search(b.source), (src.name, i)
            leaked = [x for x in _solution_lines(a.source) if x in {y.strip() for y in b.source.splitlines()}]
            assert not leaked, (src.name, i, leaked)
            if b.cell_type == "code":
                assert b.outputs == [] and b.execution_count is None
            if _solution_lines(a.source) and "SOLUTION" in a.source:
                assert "hide-input" not in b.metadata.get("tags", []), (src.name, i)
                checked += 1
    return checked


# --- student edition -----------------------------------------------------------------------------


def test_student_edition_of_the_fixture(tmp_path):
    out = tmp_path / "_student"
    written = course.student_edition(SOURCE, out)
    assert [p.name for p in written] == ["course.ipynb"]
    assert _assert_student_edition_clean(SOURCE, out) == 4  # three code solutions and one markdown answer
    cells = nbformat.read(out / "course.ipynb", as_version=4).cells
    assert cells[3].source == 'def my_uniform_soup(models):\n    raise NotImplementedError("write your solution here")'
    assert cells[10].source.splitlines() == [  # the def line and the code outside the markers are kept
        "def my_stitch(pretrained, task_vectors, masks):", "    out = {}", "    for n, pre in pretrained.items():",
        '        raise NotImplementedError("write your solution here")', "    return out"]
    assert cells[10].metadata["tags"] == ["keep-me"]  # only hide-input is dropped
    assert "YOUR ANSWER HERE" in cells[8].source and "large update" not in cells[8].source
    assert cells[4].source == "# EXERCISE uniform_soup (1 points)\nlsedu.exercises.check_uniform_soup(my_uniform_soup)"
    assert not list(tmp_path.glob(".*"))  # no temporary folder left behind


REAL = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.skipif(not REAL, reason="no notebooks yet")
def test_student_edition_of_the_book_notebooks(tmp_path):
    course.student_edition(ROOT / "notebooks", tmp_path / "student")
    _assert_student_edition_clean(ROOT / "notebooks", tmp_path / "student")


def test_an_executed_notebook_keeps_its_outputs_except_where_a_solution_was(tmp_path):
    """keep_outputs=True (the solution-free site): outputs stay on the cells that held nothing secret."""
    nb = nbformat.read(SOURCE / "course.ipynb", as_version=4)
    shown = nbformat.v4.new_output("stream", name="stdout", text="shown\n")
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [shown], 1
    out = course.student_notebook(nb, keep_outputs=True)
    for a, b in zip(nb.cells, out.cells):
        if b.cell_type != "code":
            continue
        secret = bool(MARKER.search(a.source))
        assert (b.outputs == []) == secret, a.source[:60]  # a solution's or hidden test's output could show it
    assert any(b.outputs for b in out.cells if b.cell_type == "code")
    assert all(b.outputs == [] for b in course.student_notebook(nb).cells if b.cell_type == "code")


def test_solution_free_book_sources(tmp_path):
    out = course.solution_free_book(ROOT, tmp_path / "src")
    import yaml

    assert yaml.safe_load((out / "_config.yml").read_text())["execute"]["execute_notebooks"] == "off"
    assert (out / "_toc.yml").read_text() == (ROOT / "_toc.yml").read_text()
    assert (out / "book" / "js").is_symlink() and (out / "book" / "glossary.md").is_file()
    assert sorted(p.name for p in (out / "notebooks").glob("*.ipynb")) == [p.name for p in REAL]
    _assert_student_edition_clean(ROOT / "notebooks", out / "notebooks")
    with pytest.raises(CourseError, match="already exists"):
        course.solution_free_book(ROOT, out)
    with pytest.raises(CourseError, match="has no _toc.yml"):
        course.solution_free_book(tmp_path, tmp_path / "other")
    with pytest.raises(CourseError, match="lacks the executed notebook"):
        course.solution_free_book(ROOT, tmp_path / "x", executed=tmp_path / "nothing-built")
    assert not list(tmp_path.glob(".*"))  # no temporary folder left behind


@pytest.mark.parametrize("source, words", [
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n", "BEGIN SOLUTION has no matching END SOLUTION"),
    ("def f():\n    return 1\n    ### END SOLUTION\n", "closes SOLUTION but there is no open region"),
    ("### BEGIN SOLUTION\n### BEGIN HIDDEN TESTS\n### END HIDDEN TESTS\n### END SOLUTION",
     "opens HIDDEN TESTS inside an open SOLUTION region"),
    ("### BEGIN HIDDEN TESTS\nx = 1\n### END SOLUTION", "closes SOLUTION but there is an open HIDDEN TESTS region"),
    ("x = 1  ### BEGIN SOLUTION\n", "looks like a marker but is not one"),
])
def test_unbalanced_markers_name_the_notebook_and_cell(tmp_path, source, words):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("intro"), nbformat.v4.new_code_cell(source)]
    nb.cells[1].id = "bad-cell"
    src = tmp_path / "src"
    src.mkdir()
    nbformat.write(nb, src / "lesson.ipynb")
    with pytest.raises(CourseError) as err:
        course.student_edition(src, tmp_path / "out")
    assert "lesson.ipynb, cell 1 (id bad-cell)" in str(err.value) and words in str(err.value)
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["src"]  # nothing written


def test_student_edition_refuses_the_source_folder_and_existing_output(tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(SOURCE, src)
    for out in (src, src / "student", tmp_path):
        with pytest.raises(CourseError):
            course.student_edition(src, out, overwrite=True)
    out = tmp_path / "student"
    course.student_edition(src, out)
    with pytest.raises(CourseError, match="already exists"):
        course.student_edition(src, out)
    (out / "stale.ipynb").write_text("{}")
    course.student_edition(src, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["course.ipynb"]
    assert cli.main(["student-edition", str(src), str(src / "x")]) == 2
    assert "refusing to write the student edition into the source folder" in capsys.readouterr().err
    assert cli.main(["student-edition", str(src), str(tmp_path / "new")]) == 0
    assert "wrote 1 notebook(s)" in capsys.readouterr().out
    assert sorted(p.name for p in src.iterdir()) == ["course.ipynb"]  # the source is untouched


def test_find_exercises_and_restore_checks():
    exercises = course.find_exercises(SOURCE)
    assert [(e.id, e.points) for e in exercises] == [("uniform_soup", 1), ("elect_sign", 2), ("stitch", 2)]
    student = course.student_notebook(nbformat.read(SOURCE / "course.ipynb", as_version=4))
    student.cells[7].source = "# EXERCISE elect_sign (2 points)\nprint('check_elect_sign: correct on 9 cases')"
    del student.cells[11]  # the stitch check cell
    student.cells.append(nbformat.v4.new_code_cell("# EXERCISE uniform_soup (1 points)\npass"))  # a duplicate
    nb, where = course.restore_checks(student, exercises)
    assert where == {"uniform_soup": 4, "elect_sign": 7, "stitch": 12}  # the missing one comes last
    assert "hidden=True" in nb.cells[7].source and "correct on 9" not in nb.cells[7].source
    assert "check_stitch(my_stitch, hidden=True)" in nb.cells[12].source and len(nb.cells) == 13
    assert nb.cells[11].source == 'print("the end")'  # the duplicate check cell is gone


# --- grading -------------------------------------------------------------------------------------

SOLUTIONS = {  # cell index in the fixture -> a student's code
    3: "def my_uniform_soup(models):\n    return {n: sum(m[n] for m in models) / len(models) for n in models[0]}",
    6: "def my_elect_sign(trimmed):\n    return {n: torch.sign(sum(t[n] for t in trimmed)) for n in trimmed[0]}",
    10: ("def my_stitch(pretrained, task_vectors, masks):\n    out = {}\n    for n, pre in pretrained.items():\n"
         "        total = sum(tv[n] * m[n] for tv, m in zip(task_vectors, masks))\n"
         "        count = sum(m[n].float() for m in masks)\n"
         "        out[n] = pre + total / count.clamp(min=1)\n    return out"),
}
WRONG_ELECT = "def my_elect_sign(trimmed):\n    return {n: torch.sign(sum(torch.sign(t[n]) for t in trimmed)) for n in trimmed[0]}"
WRONG_STITCH = ("import lsedu.exercises\nlsedu.exercises.check_stitch = lambda *a, **k: print('check_stitch: correct on 9 cases')\n"
                "def my_stitch(pretrained, task_vectors, masks):\n"
                "    return {n: p + sum(tv[n] * m[n] for tv, m in zip(task_vectors, masks)) for n, p in pretrained.items()}")


def _submission(folder: Path, student_nb, cells: dict[int, str], extra: dict[int, str] | None = None) -> None:
    nb = nbformat.from_dict(json.loads(json.dumps(student_nb)))
    for i, src in cells.items():
        nb.cells[i].source = src
    for i, src in (extra or {}).items():  # student cells inserted before cell i (highest index first)
        nb.cells.insert(i, nbformat.v4.new_code_cell(src))
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / "course.ipynb")


EXPECTED = {  # student -> {exercise: points}, and words of the error of each zero
    "correct": ({"uniform_soup": 1, "elect_sign": 2, "stitch": 2}, {}),
    "crashing": ({"uniform_soup": 1, "elect_sign": 0, "stitch": 2}, {"elect_sign": "NameError"}),
    "deleter": ({"uniform_soup": 1, "elect_sign": 2, "stitch": 2}, {}),
    "invalid": ({"uniform_soup": 0, "elect_sign": 0, "stitch": 0}, {"stitch": "not a valid notebook (JSON error"}),
    "looping": ({"uniform_soup": 0, "elect_sign": 2, "stitch": 2},
                {"uniform_soup": "NameError: name 'my_uniform_soup' is not defined (cell 3 ran past 10 s)"}),
    "missing": ({"uniform_soup": 0, "elect_sign": 0, "stitch": 0}, {"stitch": "notebook course.ipynb not submitted"}),
    "partly": ({"uniform_soup": 1, "elect_sign": 0, "stitch": 0},
               {"elect_sign": "ExerciseFailed: on case 1", "stitch": "ExerciseFailed: on case 2"}),
}


@pytest.mark.slow
def test_grading_run_scores_each_submission_exactly(tmp_path, capsys):
    student_nb = course.student_notebook(nbformat.read(SOURCE / "course.ipynb", as_version=4))
    subs = tmp_path / "submissions"
    _submission(subs / "correct", student_nb, SOLUTIONS)
    _submission(subs / "crashing", student_nb, {**SOLUTIONS, 6: "raise ValueError('student bug')\n" + SOLUTIONS[6]})
    _submission(subs / "partly", student_nb, {**SOLUTIONS, 6: WRONG_ELECT, 10: WRONG_STITCH,
                                              7: "# EXERCISE elect_sign (2 points)\nprint('check_elect_sign: correct on 9 cases')"})
    _submission(subs / "looping", student_nb, {**SOLUTIONS, 3: "while True:\n    pass\n" + SOLUTIONS[3]})
    deletes = ("import os\nfor name in ('data.txt', 'course.ipynb'):\n    if os.path.exists(name):\n        os.remove(name)\n"
               "assert not os.path.exists('data.txt')")
    _submission(subs / "deleter", student_nb, SOLUTIONS, extra={2: deletes})
    (subs / "deleter" / "data.txt").write_text("the student's data")
    (subs / "invalid").mkdir()
    (subs / "invalid" / "course.ipynb").write_text('{"cells": [ not json')
    (subs / "missing").mkdir()
    source_before = (SOURCE / "course.ipynb").read_bytes()

    out = tmp_path / "grades" / "grades.csv"
    (subs / "stray.ipynb").write_text("{}")  # not in a student folder: ignored, with a warning
    executed = tmp_path / "executed"
    # 10 s a cell: long enough for importing torch on a busy 2-core machine, short for the looping one
    rc = cli.main(["grade", str(SOURCE), str(subs), "--out", str(out), "--timeout", "10", "--no-progress",
                   "--executed", str(executed)])
    captured = capsys.readouterr()
    printed = captured.out
    assert rc == 0
    assert "ignoring notebooks outside a student folder: stray.ipynb" in captured.err

    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["student", "exercise", "points", "max_points", "error"]
    got = {}
    for r in rows:
        got.setdefault(r["student"], {})[r["exercise"]] = r
    assert sorted(got) == sorted(EXPECTED)
    for student, (points, errors) in EXPECTED.items():
        for exercise, p in points.items():
            row = got[student][exercise]
            assert float(row["points"]) == p, (student, exercise, row)
            assert float(row["max_points"]) == {"uniform_soup": 1, "elect_sign": 2, "stitch": 2}[exercise]
            assert (row["error"] == "") == (p > 0), (student, exercise, row)
            if exercise in errors:
                assert errors[exercise] in row["error"], (student, exercise, row)
            assert len(row["error"]) <= 160
    # the deleting notebook ran on a copy: the submission and the source are intact
    assert (subs / "deleter" / "data.txt").read_text() == "the student's data"
    assert (subs / "deleter" / "course.ipynb").exists()
    assert (SOURCE / "course.ipynb").read_bytes() == source_before
    # the summary table: one line per student with the total
    assert re.search(r"^correct\s+1\s+2\s+2\s+5/5$", printed, re.M), printed
    assert re.search(r"^partly\s+1\s+0\s+0\s+1/5$", printed, re.M), printed
    assert not list(out.parent.glob(".*"))  # the CSV was written through a temporary file, now renamed
    # the executed copies show each check's output: the success lines, or the failure
    partly = nbformat.read(executed / "partly" / "course.ipynb", as_version=4)
    assert "check_uniform_soup: correct on" in partly.cells[4].outputs[0]["text"]
    assert any(o.get("ename") == "ExerciseFailed" for o in partly.cells[7].outputs)
    assert sorted(p.name for p in executed.iterdir()) == ["correct", "crashing", "deleter", "looping", "partly"]


def test_grading_errors_are_reported_not_raised(tmp_path, capsys):
    (tmp_path / "subs").mkdir()
    assert cli.main(["grade", str(SOURCE), str(tmp_path / "subs"), "--out", str(tmp_path / "g.csv")]) == 2
    assert "no student folder found" in capsys.readouterr().err
    assert cli.main(["grade", str(tmp_path / "subs"), str(tmp_path / "subs")]) == 2
    assert "no check cell" in capsys.readouterr().err
    assert cli.main(["grade", str(SOURCE), str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_summary_table():
    rows = [course.Grade("ann", "a", 1, 1), course.Grade("ann", "b", 0, 2, "NameError: x"),
            course.Grade("bob", "a", 0, 1, "x"), course.Grade("bob", "b", 2, 2)]
    lines = course.summary(rows).splitlines()
    assert lines[0].split() == ["student", "a", "b", "total"]
    assert lines[2].split() == ["ann", "1", "0", "1/3"] and lines[3].split() == ["bob", "0", "2", "2/3"]
