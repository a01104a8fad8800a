"""The zoo's cache keys, configs and task data are those of commit a5b6712 (``tests/fixtures/zoo/frozen.json``).

Cached fine-tunes under ``$LSEDU_CACHE`` are found by these keys, and the
book's numbers come from these splits: a refactoring of the zoo must leave
every one of them as it was. ``tests/fixtures/zoo/freeze.py`` computes them
with the code on the path; the JSON holds what the old code computed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "zoo"
sys.path.insert(0, str(FIXTURES))
import freeze  # noqa: E402

FROZEN = json.loads((FIXTURES / "frozen.json").read_text())


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LSEDU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LSEDU_DEVICE", "cpu")


def test_config_to_dict_is_unchanged():
    assert freeze.configs() == FROZEN["configs"]


def test_paper_cache_keys_are_unchanged():
    assert freeze.paper_keys() == FROZEN["keys"]["paper"]


def test_laptop_cache_keys_are_unchanged():
    assert freeze.laptop_keys() == FROZEN["keys"]["laptop"]


def test_laptop_task_data_is_unchanged():
    assert freeze.laptop_data() == FROZEN["data"]


def test_wordnet_readers_are_unchanged():
    assert freeze.wordnet() == FROZEN["wordnet"]
