"""The tracks page's runtime table: written by benchmarks/bench_book.py, one row per notebook the book has."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "tracks.md"
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_book import BEGIN  # noqa: E402

from lsedu._pages import generated_part  # noqa: E402


def test_every_notebook_has_a_measured_row():
    """A notebook added (or renamed) without measuring it again shows here; so does a table not measured at all."""
    part = generated_part(PAGE.read_text(), BEGIN, str(PAGE))
    rows = dict(re.findall(r"^\| (\S+\.ipynb) \| (\d+ \| \d+) \|$", part, flags=re.M))
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(rows) == notebooks, ("book/tracks.md's runtime table does not list every notebook; measure again "
                                       "with: .venv/bin/python benchmarks/bench_book.py --shared-cache --update "
                                       "book/tracks.md")
    assert re.search(r"^\| all \| \d+ \| \d+ \|$", part, flags=re.M)
    assert re.search(r"Measured on \d{4}-\d\d-\d\d on \d+ cores", part)
