"""Keep committed notebooks free of outputs, except cells marked ``# NBVAL_CHECK_OUTPUT``.

    python scripts/clean_notebooks.py            strip outputs (keeps NBVAL_CHECK_OUTPUT cells as they are)
    python scripts/clean_notebooks.py --refresh  execute each notebook, then keep only the NBVAL_CHECK_OUTPUT outputs
    python scripts/clean_notebooks.py --check    exit 1 if a notebook has outputs it should not, or a check cell has none

The book build executes every notebook, so outputs in git would only go stale.
A ``# NBVAL_CHECK_OUTPUT`` cell's output is deterministic and is what nbval
compares the fresh run against, so it has to be committed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import nbformat

MARK = "NBVAL_CHECK_OUTPUT"
ROOT = Path(__file__).resolve().parents[1]


def is_check_cell(cell) -> bool:
    return cell.cell_type == "code" and MARK in cell.source


def problems(nb) -> list[str]:
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if is_check_cell(cell):
            if not cell.outputs:
                out.append(f"cell {i} is marked {MARK} but has no stored output to compare against")
        elif cell.outputs or cell.execution_count:
            out.append(f"cell {i} has outputs; only {MARK} cells may keep theirs")
    return out


def strip(nb, fresh=None):
    """Clear outputs; check cells take their outputs from ``fresh`` (an executed copy) when given."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if is_check_cell(cell):
            if fresh is not None:
                cell.outputs = fresh.cells[i].outputs
                cell.execution_count = fresh.cells[i].execution_count
        else:
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    return nb


def write_atomically(nb, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".ipynb")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        nbformat.write(nb, f)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true")
    group.add_argument("--refresh", action="store_true")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    bad = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if args.check:
            for p in problems(nb):
                print(f"{path}: {p}")
                bad += 1
            continue
        fresh = None
        if args.refresh:
            from nbclient import NotebookClient

            fresh = nbformat.read(path, as_version=4)
            NotebookClient(fresh, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
        write_atomically(strip(nb, fresh), path)
        print(f"cleaned {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
