"""Teaching with the book: the student edition of the notebooks, and a grading run over submissions.

``lsedu student-edition SRC_DIR OUT_DIR`` writes the notebooks of ``SRC_DIR`` with the solutions
taken out; ``lsedu grade SOURCE_DIR SUBMISSIONS_DIR --out grades.csv`` runs every student's
notebooks with the hidden tests put back and writes one row per student and exercise.
book/teaching.md is the guide for teachers.

Notebook format (nbgrader's markers, without its cell metadata):

* a solution cell holds its answer between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` lines
  (markdown answers between ``BEGIN SOLUTION`` and ``END SOLUTION`` lines);
* a check cell starts with ``# EXERCISE <id> (<points> points)`` and calls
  ``lsedu.exercises.check_<id>``; the lines between ``### BEGIN HIDDEN TESTS`` and
  ``### END HIDDEN TESTS`` are removed from the student edition and restored for grading.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nbformat

from .exercises import CHECKS

SOLUTION_CODE_STUB = 'raise NotImplementedError("write your solution here")'
ANSWER_STUB = "YOUR ANSWER HERE"
EXERCISE_LINE = re.compile(r"^\s*#\s*EXERCISE\s+(?P<id>[A-Za-z_][\w-]*)\s+\((?P<points>\d+(?:\.\d+)?)\s+points?\)\s*$")
_MARKER = re.compile(r"^(?P<indent>\s*)(?:#+\s*)?(?P<what>BEGIN|END)\s+(?P<kind>SOLUTION|HIDDEN TESTS)\s*$")
_ANY_MARKER = re.compile(r"(BEGIN|END)\s+(SOLUTION|HIDDEN TESTS)")
# Run at the top of every graded check cell: a fresh copy of the checks, whatever a solution cell
# may have reassigned (lsedu.exercises.check_x = ...). A casual guard, not a sandbox.
_FRESH_CHECKS = ('import sys as _lsedu_sys; _lsedu_sys.modules.pop("lsedu.exercises", None); '
                 'import lsedu.exercises  # lsedu grade: fresh checks')


class CourseError(ValueError):
    """A notebook or folder that the student edition or the grading run cannot use; the message says where.

    Not called in a notebook: the course tools (``lsedu student-edition``, ``lsedu grade``) use it; see the
    book's page For teachers (book/teaching.md).
    """


# --- student edition -----------------------------------------------------------------------------


def _cell_name(path, index: int, cell) -> str:
    cid = cell.get("id")
    return f"{path}, cell {index}" + (f" (id {cid})" if cid else "")


def strip_cell(source: str, cell_type: str, where: str) -> tuple[str, bool]:
    """The student version of one cell's source, and whether it held a solution.

    Solution regions become a ``raise NotImplementedError`` line at the marker's indentation
    (code) or ``YOUR ANSWER HERE`` (markdown); hidden-test regions are removed with their markers.
    Unbalanced or nested markers raise :class:`CourseError` naming ``where``.

    Not called in a notebook: the course tools (``lsedu student-edition``, ``lsedu grade``) use it; see the
    book's page For teachers (book/teaching.md).
    """
    out: list[str] = []
    open_kind: str | None = None
    had_solution = False
    for number, line in enumerate(source.splitlines(keepends=True), 1):
        m = _MARKER.match(line.rstrip("\r\n"))
        if m is None:
            if _ANY_MARKER.search(line):
                raise CourseError(f"{where}: line {number} looks like a marker but is not one: {line.strip()!r} "
                                  "(write it alone on its line, e.g. '### BEGIN SOLUTION')")
            if open_kind is None:
                out.append(line)
            continue
        what, kind = m["what"], m["kind"]
        if what == "BEGIN":
            if open_kind is not None:
                raise CourseError(f"{where}: line {number} opens {kind} inside an open {open_kind} region")
            open_kind = kind
            if kind == "SOLUTION":
                had_solution = True
                stub = SOLUTION_CODE_STUB if cell_type == "code" else ANSWER_STUB
                out.append(f"{m['indent'] if cell_type == 'code' else ''}{stub}\n")
        else:
            if open_kind != kind:
                found = f"an open {open_kind} region" if open_kind else "no open region"
                raise CourseError(f"{where}: line {number} closes {kind} but there is {found}")
            open_kind = None
    if open_kind is not None:
        raise CourseError(f"{where}: BEGIN {open_kind} has no matching END {open_kind}")
    text = "".join(out)
    return (text.rstrip("\n") if not source.endswith("\n") else text), had_solution


def student_notebook(nb, path="notebook", *, keep_outputs: bool = False):
    """A copy of ``nb`` without solutions, hidden tests or outputs (``path`` only names it in errors).

    With ``keep_outputs=True`` the outputs of the cells that held no solution
    stay (an executed notebook, for the solution-free site); a cell that held
    a solution or hidden tests loses its outputs, which could show them.

    Not called in a notebook: the course tools (``lsedu student-edition``, ``lsedu grade``) use it; see the
    book's page For teachers (book/teaching.md).
    """
    nb = copy.deepcopy(nb)
    for i, cell in enumerate(nb.cells):
        before = cell.source
        cell.source, had_solution = strip_cell(cell.source, cell.cell_type, _cell_name(path, i, cell))
        if had_solution:
            tags = [t for t in cell.metadata.get("tags", []) if t != "hide-input"]
            if tags:
                cell.metadata["tags"] = tags
            else:
                cell.metadata.pop("tags", None)
        if cell.cell_type == "code" and (not keep_outputs or cell.source != before):
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("collapsed", None)
    _assert_no_solution_left(nb, path)
    return nb


def _assert_no_solution_left(nb, path) -> None:
    for i, cell in enumerate(nb.cells):
        if _ANY_MARKER.search(cell.source):
            raise CourseError(f"{_cell_name(path, i, cell)}: a marker survived the student edition")


def _notebooks(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.ipynb")
                  if not any(part.startswith(".") or part == "_build" for part in p.relative_to(folder).parts))


def _inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or lies under it (both resolved)."""
    return a == b or b in a.parents


def _read(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            nb = nbformat.read(f, as_version=4)
    except (json.JSONDecodeError, UnicodeDecodeError, nbformat.reader.NotJSONError) as e:
        raise CourseError(f"{path}: not a valid notebook (JSON error: {e})") from e
    except Exception as e:  # nbformat's own errors for JSON that is not a notebook
        raise CourseError(f"{path}: not a valid notebook ({type(e).__name__}: {e})") from e
    return nb


def student_edition(src_dir, out_dir, *, overwrite: bool = False) -> list[Path]:
    """Write the student edition of every notebook under ``src_dir`` to ``out_dir``; return the paths written.

    Only ``.ipynb`` files are written (same relative paths); hidden folders and ``_build`` are
    skipped. ``out_dir`` must not be, or lie in, ``src_dir``. The whole folder is built in a
    temporary sibling and renamed into place, so ``out_dir`` is either complete or absent;
    an existing ``out_dir`` is replaced only with ``overwrite=True``.

    Not called in a notebook: the course tools (``lsedu student-edition``, ``lsedu grade``) use it; see the
    book's page For teachers (book/teaching.md).
    """
    src, out = Path(src_dir).resolve(), Path(out_dir).resolve()
    if not src.is_dir():
        raise CourseError(f"source folder {src_dir} does not exist")
    if _inside(out, src):
        raise CourseError(f"refusing to write the student edition into the source folder {src_dir}: "
                          f"pick an output folder outside it")
    if _inside(src, out):
        raise CourseError(f"the output folder {out_dir} contains the source folder {src_dir}")
    if out.exists() and not overwrite:
        raise CourseError(f"{out_dir} already exists (pass --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise CourseError(f"{out_dir} exists and is a file, not a folder; it is never replaced")
    above = next(p for p in out.parents if p.exists())
    if not above.is_dir():
        raise CourseError(f"cannot create {out_dir}: {above} is a file, not a folder")
    paths = _notebooks(src)
    if not paths:
        raise CourseError(f"no notebook (*.ipynb) found under {src_dir}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        written = []
        for p in paths:
            nb = student_notebook(_read(p), p.relative_to(src))
            nbformat.validate(nb)
            target = tmp / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "w", encoding="utf-8") as f:
                nbformat.write(nb, f)
            written.append(out / p.relative_to(src))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


#: The book's own files that a solution-free build copies (the notebooks are written, book/js is linked).
BOOK_FILES = ("_config.yml", "_toc.yml")


def solution_free_book(root, out_dir, *, executed=None, overwrite: bool = False) -> Path:
    """Write a copy of the book's sources at ``root`` whose notebooks hold no solution, ready to build; return it.

    The notebooks are the student edition (:func:`student_notebook`) of
    ``executed``'s notebooks (``jupyter-book``'s executed copies, e.g.
    ``_build/jupyter_execute``) with their outputs and glue kept, or of
    ``root/notebooks`` without outputs. The book's pages, table of contents
    and bibliography are copied as they are, ``book/js`` (the offline
    scripts) is linked, and ``_config.yml`` turns execution off: the site
    shows the run that made ``executed`` and runs nothing, so the stubs never
    execute. The copy is written next to ``out_dir`` and renamed into place.
    ``bash scripts/book.sh --no-solutions`` builds it.

    Not called in a notebook: the course tools use it; see the book's page For teachers (book/teaching.md).
    """
    import yaml

    root, out = Path(root).resolve(), Path(out_dir).resolve()
    if not (root / "_toc.yml").is_file():
        raise CourseError(f"{root} is not the book's folder: it has no _toc.yml")
    if _inside(root, out):
        raise CourseError(f"the output folder {out_dir} contains the book's folder {root}")
    if out.exists() and not overwrite:
        raise CourseError(f"{out_dir} already exists (pass --overwrite to replace it)")
    source = Path(executed).resolve() / "notebooks" if executed is not None else root / "notebooks"
    notebooks = sorted((root / "notebooks").glob("*.ipynb"))
    missing = [p.name for p in notebooks if not (source / p.name).is_file()]
    if missing:
        raise CourseError(f"{source} lacks the executed notebook(s) {missing}: build the book first "
                          f"(bash scripts/book.sh)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name in BOOK_FILES:
            shutil.copy2(root / name, tmp / name)
        (tmp / "book").mkdir()
        for f in (root / "book").iterdir():
            if f.name == "js":
                (tmp / "book" / "js").symlink_to(f, target_is_directory=True)
            elif f.is_file():
                shutil.copy2(f, tmp / "book" / f.name)
        (tmp / "notebooks").mkdir()
        for p in notebooks:
            nb = student_notebook(_read(source / p.name), f"notebooks/{p.name}", keep_outputs=executed is not None)
            with open(tmp / "notebooks" / p.name, "w", encoding="utf-8") as f:
                nbformat.write(nb, f)
        config = yaml.safe_load((root / "_config.yml").read_text())
        config["execute"]["execute_notebooks"] = "off"
        config["title"] = f"{config.get('title', 'lsedu')} (without solutions)"
        (tmp / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is moved aside first and deleted after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old.{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- exercises in a notebook ---------------------------------------------------------------------


@dataclass(frozen=True)
class Exercise:
    """A check cell: the exercise ``id``, its ``points``, its notebook and its full source (hidden tests included).

    Not called in a notebook: the course tools (``lsedu student-edition``, ``lsedu grade``) use it; see the
    book's page For teachers (book/teaching.md).
    """

    id: str
    points: float
    notebook: str
    source: str


def exercise_of(cell) -> tuple[str, float] | None:
    """``(id, points)`` if ``cell`` is a check cell (its first line is ``# EXERCISE <id> (<n> points)``).

    Not called in a notebook: the course tools (``lsedu student-edition``, ``lsedu grade``) use it; see the
    book's page For teachers (book/teaching.md).
    """
    if cell.cell_type != "code" or not cell.source.strip():
        return None
    m = EXERCISE_LINE.match(cell.source.lstrip("\n").splitlines()[0])
    return (m["id"], float(m["points"])) if m else None


def find_exercises(source_dir) -> list[Exercise]:
    """Every check cell of the source notebooks, in notebook order; ids must be unique.

    Not called in a notebook: the course tools (``lsedu student-edition``, ``lsedu grade``) use it; see the
    book's page For teachers (book/teaching.md).
    """
    src = Path(source_dir)
    found: dict[str, Exercise] = {}
    for p in _notebooks(src):
        nb = _read(p)
        for i, cell in enumerate(nb.cells):
            ex = exercise_of(cell)
            if ex is None:
                continue
            if ex[0] in found:
                raise CourseError(f"{_cell_name(p, i, cell)}: exercise id {ex[0]!r} is used twice "
                                  f"(also in {found[ex[0]].notebook})")
            strip_cell(cell.source, "code", _cell_name(p, i, cell))  # balanced markers, or a clear error
            found[ex[0]] = Exercise(ex[0], ex[1], str(p.relative_to(src)), cell.source)
    return list(found.values())


# --- grading -------------------------------------------------------------------------------------


@dataclass
class Grade:
    """One row of the grades CSV.

    Not called in a notebook: the course tools (``lsedu student-edition``, ``lsedu grade``) use it; see the
    book's page For teachers (book/teaching.md).
    """

    student: str
    exercise: str
    points: float
    max_points: float
    error: str = ""


def restore_checks(nb, exercises: Iterable[Exercise]):
    """A copy of a student's notebook whose check cells are the source's (hidden tests included).

    Check cells are matched by their ``# EXERCISE <id>`` line; a later duplicate is removed, and a
    check cell the student deleted is appended at the end. Returns ``(notebook, {id: cell index})``.

    Not called in a notebook: the course tools (``lsedu student-edition``, ``lsedu grade``) use it; see the
    book's page For teachers (book/teaching.md).
    """
    nb = copy.deepcopy(nb)
    by_id = {e.id: e for e in exercises}
    cells, where = [], {}
    for cell in nb.cells:
        ex = exercise_of(cell)
        if ex is not None and ex[0] in by_id:
            if ex[0] in where:
                continue
            cell = nbformat.v4.new_code_cell(_graded_source(by_id[ex[0]]))
            where[ex[0]] = len(cells)
        elif ex is not None:  # a check cell of an exercise the source does not have: it cannot score
            continue
        cells.append(cell)
    for ex in by_id.values():
        if ex.id not in where:
            where[ex.id] = len(cells)
            cells.append(nbformat.v4.new_code_cell(_graded_source(ex)))
    nb.cells = cells
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb, where


def _graded_source(ex: Exercise) -> str:
    first, _, rest = ex.source.lstrip("\n").partition("\n")
    return f"{first}\n{_FRESH_CHECKS}\n{rest}"


def _current_env_kernel_manager():
    """A kernel manager for this Python's own ipykernel, whatever 'python3' kernel a user has installed."""
    import ipykernel.kernelspec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    class CurrentEnv(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return self.kernel_spec_class(resource_dir=ipykernel.kernelspec.RESOURCES,
                                          **ipykernel.kernelspec.get_kernel_dict())

    return AsyncKernelManager(kernel_name="lsedu-current-env", kernel_spec_manager=CurrentEnv())


def run_notebook(nb, workdir: Path, timeout: float) -> tuple[dict[int, dict], str]:
    """Execute ``nb`` in ``workdir``; return ``({cell index: execute-reply content}, notebook-level error)``.

    Every cell runs even after an error; a cell running past ``timeout`` seconds is interrupted
    and counts as an error. A dead kernel stops the run: the cells not reached have no reply.

    Not called in a notebook: the course tools (``lsedu student-edition``, ``lsedu grade``) use it; see the
    book's page For teachers (book/teaching.md).
    """
    from nbclient import NotebookClient

    replies: dict[int, dict] = {}
    km = _current_env_kernel_manager()

    def record(cell, cell_index, execute_reply):
        replies[cell_index] = execute_reply.get("content", {})

    client = NotebookClient(
        nb, km=km, timeout=timeout, allow_errors=True, interrupt_on_timeout=True,
        error_on_timeout={"ename": "Timeout", "evalue": f"the cell ran past {timeout:g} s", "traceback": []},
        resources={"metadata": {"path": str(workdir)}}, on_cell_executed=record, startup_timeout=120,
    )
    try:
        client.execute(stderr=subprocess.DEVNULL)  # the kernel's own log lines; cell output comes over iopub
        return replies, ""
    except Exception as e:  # a dead kernel, a failed start: the cells run so far keep their replies
        return replies, f"{type(e).__name__}: {_short(str(e))}"


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _printed(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def grade_notebook(student: str, nb_path: Path, exercises: list[Exercise], timeout: float,
                   executed: Path | None = None) -> list[Grade]:
    """Grade one student's copy of one notebook: run it in its own temporary folder, score each check cell.

    With ``executed``, the graded notebook (outputs and hidden tests included) is saved there.

    Not called in a notebook: the course tools (``lsedu student-edition``, ``lsedu grade``) use it; see the
    book's page For teachers (book/teaching.md).
    """
    def zero(why):
        return [Grade(student, e.id, 0.0, e.points, why) for e in exercises]

    if not nb_path.exists():
        return zero(f"notebook {nb_path.name} not submitted")
    try:
        nb, where = restore_checks(_read(nb_path), exercises)
    except CourseError as e:
        return zero(_short(str(e).replace(str(nb_path), nb_path.name)))
    with tempfile.TemporaryDirectory(prefix="lsedu-grade-") as tmp:
        # the student's folder is copied under a folder of its own, so that even '..' is private
        work = Path(tmp) / "work" / "submission"
        shutil.copytree(nb_path.parent, work, symlinks=True)
        replies, crash = run_notebook(nb, work, timeout)
    if executed is not None:
        executed.parent.mkdir(parents=True, exist_ok=True)
        with open(executed, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
    timeouts = [i for i, r in sorted(replies.items()) if r.get("ename") == "Timeout"]
    grades = []
    for e in exercises:
        i = where[e.id]
        reply = replies.get(i)
        if reply is None:
            why = f"check cell did not run ({crash or 'not reached'})"
        elif reply.get("status") != "ok":
            late = [j for j in timeouts if j < i]
            note = f" (cell {late[-1]} ran past {timeout:g} s)" if late and reply.get("ename") != "Timeout" else ""
            why = _short(f"{reply.get('ename', 'error')}: {reply.get('evalue', '')}{note}")
        elif e.id in CHECKS and f"check_{e.id}: correct on" not in _printed(nb.cells[i]):
            why = "check cell ran but printed no success line"
        else:
            grades.append(Grade(student, e.id, e.points, e.points))
            continue
        grades.append(Grade(student, e.id, 0.0, e.points, why))
    return grades


def submissions(submissions_dir) -> list[Path]:
    """The student folders: one subfolder per student, named after the student (hidden folders skipped).

    Not called in a notebook: the course tools (``lsedu student-edition``, ``lsedu grade``) use it; see the
    book's page For teachers (book/teaching.md).
    """
    root = Path(submissions_dir)
    if not root.is_dir():
        raise CourseError(f"submissions folder {submissions_dir} does not exist")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def grade(source_dir, submissions_dir, out_csv, *, timeout: float = 60, progress: bool = True,
          executed_dir=None) -> list[Grade]:
    """Grade every student folder of ``submissions_dir`` against the source notebooks; write ``out_csv``.

    Layout: ``submissions_dir/<student>/<notebook>.ipynb``, with the notebooks named as in
    ``source_dir``. An exercise scores its points when its check cell (the source's, with the
    hidden tests) runs without error. A submission that fails in any way scores 0 on what it
    could not run and never stops the others. The CSV is written atomically. With
    ``executed_dir``, each graded notebook is saved as ``executed_dir/<student>/<notebook>``.
    For the exercises of :mod:`lsedu.exercises` the check cell must also print the check's
    success line; an exercise id of your own only needs its check cell to run without error.

    Not called in a notebook: the course tools (``lsedu student-edition``, ``lsedu grade``) use it; see the
    book's page For teachers (book/teaching.md).
    """
    from tqdm.auto import tqdm

    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise CourseError(f"timeout must be a positive number of seconds, got {timeout!r}")
    src, out_csv = Path(source_dir), Path(out_csv)
    exercises = find_exercises(src)
    if not exercises:
        raise CourseError(f"no check cell ('# EXERCISE <id> (<points> points)') found in {source_dir}")
    if _inside(out_csv.resolve(), Path(submissions_dir).resolve()):
        raise CourseError(f"write the grades outside the submissions folder, not to {out_csv}")
    students = submissions(submissions_dir)
    loose = sorted(p.name for p in Path(submissions_dir).glob("*.ipynb"))
    if loose:
        print(f"lsedu grade: warning: ignoring notebooks outside a student folder: {', '.join(loose)} "
              f"(expected {submissions_dir}/<student>/<notebook>.ipynb)", file=sys.stderr)
    if not students:
        raise CourseError(f"no student folder found in {submissions_dir} "
                          f"(expected {submissions_dir}/<student>/<notebook>.ipynb)")
    by_notebook: dict[str, list[Exercise]] = {}
    for e in exercises:
        by_notebook.setdefault(e.notebook, []).append(e)
    rows: list[Grade] = []
    jobs = [(s, nb) for s in students for nb in by_notebook]
    for folder, notebook in tqdm(jobs, desc="grading", unit="notebook", disable=not progress):
        try:
            saved = Path(executed_dir) / folder.name / notebook if executed_dir is not None else None
            rows += grade_notebook(folder.name, folder / notebook, by_notebook[notebook], timeout, saved)
        except Exception as e:  # whatever goes wrong with one submission, the others are still graded
            why = _short(f"grading failed: {type(e).__name__}: {e}")
            rows += [Grade(folder.name, x.id, 0.0, x.points, why) for x in by_notebook[notebook]]
    write_csv(rows, out_csv)
    return rows


def write_csv(rows: list[Grade], path: Path) -> None:
    """Write the grades to ``path`` through a temporary file in the same folder, then rename it.

    Not called in a notebook: the course tools (``lsedu student-edition``, ``lsedu grade``) use it; see the
    book's page For teachers (book/teaching.md).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["student", "exercise", "points", "max_points", "error"])
            for r in rows:
                w.writerow([r.student, r.exercise, f"{r.points:g}", f"{r.max_points:g}", r.error])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summary(rows: list[Grade]) -> str:
    """A table with one line per student: points per exercise and the total.

    Not called in a notebook: the course tools (``lsedu student-edition``, ``lsedu grade``) use it; see the
    book's page For teachers (book/teaching.md).
    """
    exercises = list(dict.fromkeys(r.exercise for r in rows))
    students = list(dict.fromkeys(r.student for r in rows))
    cell = {(r.student, r.exercise): r.points for r in rows}
    maxima = {r.exercise: r.max_points for r in rows}
    width = max([len("student")] + [len(s) for s in students])
    head = "student".ljust(width) + "".join(f"  {e:>{max(len(e), 4)}}" for e in exercises) + "  total"
    lines = [head, "-" * len(head)]
    for s in students:
        pts = [cell.get((s, e), 0.0) for e in exercises]
        lines.append(s.ljust(width) + "".join(f"  {p:>{max(len(e), 4)}g}" for p, e in zip(pts, exercises))
                     + f"  {sum(pts):g}/{sum(maxima.values()):g}")
    return "\n".join(lines)
