#!/usr/bin/env bash
# Set up .venv, then build the book: execute every notebook and write the
# HTML site to _build/html. Fails on any cell error or Sphinx warning.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh book
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
# --all: execute every notebook again, even if its source did not change (the library may have).
# -W: warnings are errors; -n: nitpicky cross-references; --keep-going: report them all.
# (Without -W, jupyter-book exits 0 even when a notebook cell raises.)
.venv/bin/jupyter-book build --all -W -n --keep-going . "$@"
echo "[lsedu book] built: open $(pwd)/_build/html/index.html"
