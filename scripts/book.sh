#!/usr/bin/env bash
# Set up .venv, then build the book: execute every notebook and write the
# HTML site to _build/html. Fails on any cell error or Sphinx warning.
#   bash scripts/book.sh                 the book, every solution in a toggle
#   bash scripts/book.sh --no-solutions  also a second site without solutions or hidden tests, for a course that
#                                        grades the exercises: _build/no-solutions/_build/html (book/teaching.md)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
no_solutions=0
if [ "${1:-}" = "--no-solutions" ]; then no_solutions=1; shift; fi
bash scripts/setup.sh book
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
# --all: execute every notebook again, even if its source did not change (the library may have).
# -W: warnings are errors; -n: nitpicky cross-references; --keep-going: report them all.
# (Without -W, jupyter-book exits 0 even when a notebook cell raises.)
.venv/bin/jupyter-book build --all -W -n --keep-going . "$@"
echo "[lsedu book] built: open $(pwd)/_build/html/index.html"
if [ "$no_solutions" = 1 ]; then
  # the executed notebooks of the build above, solutions and hidden tests taken out, outputs kept; nothing re-runs
  .venv/bin/python -c "from lsedu.course import solution_free_book as b; b('.', '_build/no-solutions-src', executed='_build/jupyter_execute', overwrite=True)"
  .venv/bin/jupyter-book build --all -W -n --keep-going _build/no-solutions-src --path-output _build/no-solutions
  echo "[lsedu book] built without solutions: open $(pwd)/_build/no-solutions/_build/html/index.html"
fi
