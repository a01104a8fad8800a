"""Committed notebooks carry no outputs, except the deterministic ones nbval compares."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("clean_notebooks", ROOT / "scripts" / "clean_notebooks.py")
clean = importlib.util.module_from_spec(spec)
spec.loader.exec_module(clean)

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebook found under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean(path):
    assert clean.problems(nbformat.read(path, as_version=4)) == []


def test_check_flags_outputs_and_empty_check_cells():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("1 + 1"), nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\n2")]
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="2\n")]
    found = clean.problems(nb)
    assert len(found) == 2 and "cell 0 has outputs" in found[0] and "no stored output" in found[1]
    assert clean.problems(clean.strip(nb)) == [found[1]]  # strip keeps check cells as they are
