"""Every value a notebook's prose pastes with ``{glue:text}`key``` is glued by that notebook's code.

The book build (``scripts/book.sh``) executes every notebook and fails on a key that was not glued; this test
finds the same mistake without running anything: each key named in a markdown cell must be the literal first
argument of a ``glue("key", ...)`` call in a code cell of the same notebook, and every glued key is pasted
somewhere (a value glued and never shown is a number the prose forgot).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PASTED = re.compile(r"\{glue:text\}`([A-Za-z_][A-Za-z0-9_]*)(?::[^`]*)?`")
GLUED = re.compile(r"\bglue\(\s*[\"']([A-Za-z_][A-Za-z0-9_]*)[\"']")


def _keys(path: Path) -> tuple[set[str], set[str]]:
    cells = json.loads(path.read_text())["cells"]
    text = lambda kind: "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == kind)  # noqa: E731
    return set(PASTED.findall(text("markdown"))), set(GLUED.findall(text("code")))


def test_some_notebook_glues():
    assert any(_keys(p)[0] for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_pasted_key_is_glued_and_every_glued_key_is_pasted(path):
    pasted, glued = _keys(path)
    assert not pasted - glued, f"{path.name} pastes {sorted(pasted - glued)} but never glues them"
    assert not glued - pasted, f"{path.name} glues {sorted(glued - pasted)} but its prose never pastes them"


def test_the_patterns_find_keys():
    assert PASTED.findall("is {glue:text}`ties_vs_ta` and {glue:text}`n:.1f`") == ["ties_vs_ta", "n"]
    assert GLUED.findall('glue("order", x)\nglue( \'a_b\', 1)') == ["order", "a_b"]


def test_track_note_only_off_the_laptop_track():
    from lsedu.utils import track_note

    assert track_note("laptop") is None
    note = track_note("paper")
    assert "`paper` track" in note.data and "laptop" in note.data and "skipped" in note.data
    for bad in ("", None, 3):
        with pytest.raises(ValueError, match="track"):
            track_note(bad)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_chapter_with_a_track_switch_shows_the_track_note(path):
    """A chapter whose parameters cell sets TRACK shows lsedu.utils.track_note(TRACK): on the paper track its laptop
    prose and skipped guards are announced."""
    cells = json.loads(path.read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    if not any(re.match(r"TRACK = ", c) for c in code):
        pytest.skip("no track switch")
    assert any("track_note(TRACK)" in c for c in code), f"{path.name} sets TRACK but never shows track_note(TRACK)"
