"""The generated part of a book page: the lines between two markers that a registry rewrites.

``book/methods.md`` (from :mod:`lsedu.methods`) and ``book/conventions.md`` (from
:mod:`lsedu.conventions`) each hold tables that are generated from a registry, so that a
fact has one home; ``python -m lsedu.methods --update book/methods.md`` and
``python -m lsedu.conventions --update book/conventions.md`` rewrite them with :func:`page_main`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

END = "<!-- end of the generated part -->"


def generated_part(text: str, begin: str, path: str, end: str = END) -> str:
    """The part of ``text`` between the markers ``begin`` and ``end``, markers included; a ValueError naming
    ``path`` where they are missing.

    Not called in a notebook: the registries' pages are checked and rewritten with it; see book/methods.md and
    book/conventions.md.
    """
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"{path} has no generated part (the lines {begin!r} ... {end!r})")
    return text[start : stop + len(end)]


def page_main(argv, *, prog: str, description: str, page: str, block: Callable[[], str], begin: str) -> int:
    """``python -m PROG``: print ``block()``, or with ``--update PAGE`` rewrite PAGE's generated part in place.

    Not called in a notebook: ``python -m lsedu.methods`` and ``python -m lsedu.conventions`` run it; see
    book/methods.md and book/conventions.md.
    """
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--update", metavar="PAGE", help=f"rewrite the generated part of PAGE ({page}) in place")
    args = ap.parse_args(argv)
    if args.update is None:
        sys.stdout.write(block() + "\n")
        return 0
    path = Path(args.update)
    text = path.read_text()
    path.write_text(text.replace(generated_part(text, begin, str(path)), block()))
    print(f"updated {path}")
    return 0
