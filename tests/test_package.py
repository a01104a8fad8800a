"""The package's layout: every module is reachable as a module, never shadowed by a function of its name."""

from __future__ import annotations

import importlib
import pkgutil

import lsedu


def test_no_module_is_shadowed_by_a_function():
    names = [m.name for m in pkgutil.iter_modules(lsedu.__path__)]
    assert "arithmetic" in names and "drop_rescale" in names
    found = 0
    for info in pkgutil.walk_packages(lsedu.__path__, "lsedu."):  # subpackages too: lsedu.merge.plan, ...
        module = importlib.import_module(info.name)
        parent, _, name = info.name.rpartition(".")
        assert getattr(importlib.import_module(parent), name) is module, f"{info.name} is shadowed in {parent}"
        found += 1
    assert found > len(names)


def test_the_functions_keep_their_chapter_names():
    assert callable(lsedu.task_arithmetic) and callable(lsedu.dare)
    assert lsedu.task_arithmetic.__module__ == "lsedu.arithmetic"
    assert lsedu.dare.__module__ == "lsedu.drop_rescale"


def test_no_file_cites_a_folder_the_reader_does_not_have():
    """The developers' notes folder is not part of the repository: nothing the reader gets may point into it."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    private = "shared" + "/"
    found = []
    for folder in ("lsedu", "notebooks", "book", "scripts", "tests", "benchmarks"):
        for path in (root / folder).rglob("*"):
            if path.suffix in (".py", ".ipynb", ".md", ".sh", ".yml", ".toml") and "node_modules" not in path.parts:
                for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                    if private in line:
                        found.append(f"{path.relative_to(root)}:{i}")
    for path in (root / "README.md", root / "_toc.yml", root / "_config.yml"):
        if private in path.read_text():
            found.append(str(path.relative_to(root)))
    assert not found, "citations of a folder the reader does not have: " + ", ".join(found)
