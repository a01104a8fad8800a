#!/usr/bin/env bash
# Set up .venv and run every test: the library's unit and property tests and
# every notebook under nbval. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh test book   # book: the site test builds the book and opens it in Chromium
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" = 5 ]; then echo "[lsedu test] error: pytest collected no test" >&2; fi
exit "$status"
