"""The package's layout: every module is reachable as a module, never shadowed by a function of its name."""

from __future__ import annotations

import importlib
import pkgutil
import types

import lsedu


def test_no_module_is_shadowed_by_a_function():
    names = [m.name for m in pkgutil.iter_modules(lsedu.__path__)]
    assert "arithmetic" in names and "drop_rescale" in names
    for name in names:
        module = importlib.import_module(f"lsedu.{name}")
        assert isinstance(getattr(lsedu, name), types.ModuleType), f"lsedu.{name} is not the module {module}"


def test_the_functions_keep_their_chapter_names():
    assert callable(lsedu.task_arithmetic) and callable(lsedu.dare)
    assert lsedu.task_arithmetic.__module__ == "lsedu.arithmetic"
    assert lsedu.dare.__module__ == "lsedu.drop_rescale"
