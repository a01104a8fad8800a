"""Every public function and class of lsedu says which notebook explains it (the library points back to the book).

The rule, for the public functions and classes of every module of the package (found by walking ``lsedu``, so
``lsedu.merge.*``, ``lsedu.zoo.*`` and ``lsedu.zoo.paper.*`` too): the last paragraph of the docstring starts
with "Explained in" (followed by the notebook that teaches the name) or with "Not called in a notebook:"
(followed by what uses it), and it names at least one file, every file it names exists, and
"notebook NN (NN_....ipynb)" agrees on the number. A file is a notebook of ``notebooks/`` or, for the names no
notebook is about (the course tools, the input checks, the registry, the paper track), a page of ``book/``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import lsedu

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
PAGES = {f"book/{p.name}" for p in (ROOT / "book").glob("*.md")}

STARTS = ("Explained in ", "Not called in a notebook:")
NOTEBOOK_FILE = re.compile(r"\b(\d\d_[a-z0-9_]+\.ipynb|appendix_[a-z0-9_]+\.ipynb)")
PAGE_FILE = re.compile(r"\bbook/[a-z0-9_]+\.md\b")
NUMBERED = re.compile(r"notebook (\d\d) \((\d\d)_")


def own_docstring(obj) -> str:
    """The object's own docstring: a class does not inherit one, and a dataclass's generated signature is none."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    if not doc or (inspect.isclass(obj) and doc.startswith(f"{obj.__name__}(")):
        return ""
    return inspect.cleandoc(doc)


def problem(obj) -> str | None:
    """Why ``obj``'s docstring breaks the rule of this file, or None."""
    doc = own_docstring(obj)
    if not doc:
        return "has no docstring"
    last = " ".join(re.split(r"\n\s*\n", doc.strip())[-1].split())
    if not last.startswith(STARTS):
        return f"the docstring's last paragraph does not start with {' or '.join(map(repr, STARTS))}"
    notebooks, pages = NOTEBOOK_FILE.findall(last), PAGE_FILE.findall(last)
    if not notebooks and not pages:
        return "the docstring's last paragraph names no notebook (NN_name.ipynb) and no book page (book/name.md)"
    missing = [n for n in notebooks if n not in NOTEBOOKS] + [p for p in pages if p not in PAGES]
    if missing:
        return f"the docstring names files that do not exist: {missing}"
    wrong = [f"notebook {a} ({b}_...)" for a, b in NUMBERED.findall(last) if a != b]
    if wrong:
        return f"the notebook's number and file disagree: {wrong}"
    return None


def modules() -> list[str]:
    """The names of every module of the package: ``lsedu`` itself and all its submodules, subpackages included."""
    return ["lsedu"] + sorted(m.name for m in pkgutil.walk_packages(lsedu.__path__, "lsedu."))


def public_objects() -> dict[str, object]:
    """``{qualified name: object}`` for the public functions and classes that the rule covers."""
    found: dict[str, object] = {}
    for m in modules():
        mod = importlib.import_module(m)
        for name, obj in vars(mod).items():
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)) \
                    and obj.__module__ == mod.__name__:
                found[f"{mod.__name__}.{name}"] = obj
    for name in lsedu.__all__:
        obj = getattr(lsedu, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):  # DEFAULT_GRID is a constant
            found.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    return found


def problems() -> list[str]:
    return [f"{qualname}: {why}" for qualname, obj in sorted(public_objects().items())
            if (why := problem(obj)) is not None]


def test_every_public_name_names_the_notebook_that_explains_it():
    assert {"lsedu.cli", "lsedu.topk", "lsedu.merge.run", "lsedu.zoo.paper.vision"} <= set(modules())
    assert len(public_objects()) > 280  # the walk found every module's names (302 when written), not just a few
    found = problems()
    assert not found, f"{len(found)} docstrings without their notebook:\n" + "\n".join(found)


def test_the_rule_catches_what_it_should():
    def good():
        """Does a thing.

        Explained in notebook 04 (04_interference_ties_dare.ipynb).
        """

    def page():
        """Not called in a notebook: the course tools use it; see the book's page For teachers (book/teaching.md)."""

    def no_line():
        """Does a thing, and says nothing about the book."""

    def missing_file():
        """Does a thing.

        Explained in notebook 04 (04_no_such_chapter.ipynb).
        """

    def wrong_number():
        """Does a thing.

        Explained in notebook 03 (04_interference_ties_dare.ipynb).
        """

    def not_last():
        """Explained in notebook 04 (04_interference_ties_dare.ipynb).

        A paragraph after the notebook line.
        """

    class Generated:
        pass

    Generated.__doc__ = "Generated(x: int)"
    assert problem(good) is None and problem(page) is None
    assert "does not start with" in problem(no_line)
    assert "do not exist" in problem(missing_file)
    assert "disagree" in problem(wrong_number)
    assert "does not start with" in problem(not_last)
    assert problem(Generated) == "has no docstring"
