"""The ``lsedu`` command line.

* ``lsedu merge RECIPE.yaml``: merge checkpoints as a recipe says (streaming).
* ``lsedu student-edition SRC_DIR OUT_DIR``: the notebooks without solutions or hidden tests.
* ``lsedu grade SOURCE_DIR SUBMISSIONS_DIR --out grades.csv``: run and score students' notebooks.
"""

from __future__ import annotations

import argparse
import math
import sys

from . import methods
from .merge import load_recipe, merge_checkpoints
from .merge.plan import plan


def main(argv=None) -> int:
    """Run the ``lsedu`` command line on ``argv`` (``sys.argv[1:]`` if None); returns the exit status.

    Explained in the appendix (appendix_streaming_merge.ipynb), which runs ``lsedu merge``; the course tools'
    subcommands are on the page For teachers (book/teaching.md).
    """
    parser = argparse.ArgumentParser(prog="lsedu", description="Model merging tools from the lsedu book.")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("merge", help="merge checkpoints as a YAML recipe says, streaming tensor by tensor",
                       description="Merge a base model and its fine-tunes as RECIPE says, reading one tensor name "
                                   "at a time, and write a sharded safetensors folder.")
    runnable = [x.name for x in methods.METHODS if x.recipe]
    m.add_argument("recipe", help="the YAML recipe (merge_method, base_model, models, parameters, output); "
                                  f"merge_method is one of {', '.join(runnable)} (book/methods.md)")
    m.add_argument("-o", "--output", help="output folder (overrides the recipe's 'output')")
    m.add_argument("--overwrite", action="store_true", help="replace an existing output folder (never an input)")
    m.add_argument("--plan", action="store_true",
                   help="check the recipe from headers and paths only (names, shapes, dtypes, vocabularies, outputs, "
                        "disk space), print the estimated peak memory, disk and time, and write nothing")
    m.add_argument("--no-progress", action="store_true", help="no progress bars")

    s = sub.add_parser("student-edition", help="write the notebooks without solutions, hidden tests or outputs",
                       description="Copy every notebook under SRC_DIR to OUT_DIR with each solution replaced by "
                                   "a stub, the hidden tests removed and the outputs cleared (book/teaching.md).")
    s.add_argument("src_dir", help="folder of the teacher's notebooks (with solutions), e.g. notebooks/")
    s.add_argument("out_dir", help="new folder for the student edition (outside SRC_DIR), e.g. _student/")
    s.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")

    g = sub.add_parser("grade", help="run students' notebooks with the hidden tests and score each exercise",
                       description="For each student folder SUBMISSIONS_DIR/<student>/ holding notebooks named as "
                                   "in SOURCE_DIR: restore the source's check cells (hidden tests included), run the "
                                   "notebook in a temporary copy, and score each exercise whose check cell ran "
                                   "without error. Writes a CSV and prints a summary.")
    g.add_argument("source_dir", help="folder of the teacher's notebooks (with solutions and hidden tests)")
    g.add_argument("submissions_dir", help="folder with one subfolder of notebooks per student")
    g.add_argument("--out", default="grades.csv", help="CSV to write (default: grades.csv)")
    g.add_argument("--timeout", type=float, default=60, help="seconds a single cell may run (default: 60)")
    g.add_argument("--executed", metavar="DIR", help="also save each graded notebook, with its outputs, as "
                                                     "DIR/<student>/<notebook> (it shows the hidden tests)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    run = {"merge": _merge, "student-edition": _student_edition, "grade": _grade}[args.command]
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"lsedu {args.command}: interrupted; nothing was written under a final name (temporary files removed)",
              file=sys.stderr)
        return 130


def error_line(e: BaseException) -> str:
    """An error as one line: an operating-system error as ``FILE: reason``, any other as its message.

    Not called in a notebook: the ``lsedu`` commands print every error with it (book/teaching.md and the appendix,
    appendix_streaming_merge.ipynb).
    """
    if isinstance(e, OSError) and e.strerror:
        text = f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


def _merge(args) -> int:
    try:
        recipe = load_recipe(args.recipe)
        if args.plan:
            print(plan(recipe, args.output, overwrite=args.overwrite, estimate=True).summary())
            return 0
        report = merge_checkpoints(recipe, args.output, overwrite=args.overwrite, progress=not args.no_progress)
    except (ValueError, TypeError, OSError) as e:
        print(f"lsedu merge: error: {error_line(e)}", file=sys.stderr)
        return 2
    print(f"merged {report.merged_tensors} of {report.tensors} tensors with {report.method} in "
          f"{report.seconds:.1f} s (inputs read {report.read_passes:.2f} times) "
          f"-> {report.output}")
    for p in report.masks:
        print(f"mask saved: {p}")
    return 0


def _student_edition(args) -> int:
    from .course import CourseError, student_edition

    try:
        written = student_edition(args.src_dir, args.out_dir, overwrite=args.overwrite)
    except (CourseError, OSError) as e:
        print(f"lsedu student-edition: error: {error_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} notebook(s) without solutions to {args.out_dir}")
    return 0


def _grade(args) -> int:
    from .course import CourseError, grade, summary

    if not math.isfinite(args.timeout) or args.timeout <= 0:
        print(f"lsedu grade: error: --timeout must be a positive number of seconds, got {args.timeout!r}",
              file=sys.stderr)
        return 2
    try:
        rows = grade(args.source_dir, args.submissions_dir, args.out, timeout=args.timeout,
                     progress=not args.no_progress, executed_dir=args.executed)
    except (CourseError, OSError) as e:
        print(f"lsedu grade: error: {error_line(e)}", file=sys.stderr)
        return 2
    print(summary(rows))
    print(f"grades written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
