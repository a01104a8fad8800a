"""Benchmark: how long each notebook of the book takes to execute, with a cold cache and a warm one.

    .venv/bin/python benchmarks/bench_book.py                       # every notebook in notebooks/
    .venv/bin/python benchmarks/bench_book.py notebooks/02_model_soups.ipynb notebooks/05_localize_and_stitch.ipynb
    .venv/bin/python benchmarks/bench_book.py --shared-cache         # one cache for the whole run, in book order

By default each notebook runs twice, each time in a fresh kernel (nbclient):

* cold: with ``LSEDU_CACHE`` pointing at an empty folder of its own, so the
  time includes every fine-tune the notebook needs (what a reader waits for
  who opens only this page on a new machine);
* warm: again, with the cache that the cold run filled.

``--shared-cache`` instead runs the notebooks in book order on one cache,
as a book build does: a later notebook then reuses the fine-tunes of an
earlier one. Nothing here is a test: it only prints a table. Run it on an
otherwise idle machine; it prints the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def execute(path: Path, cache: Path) -> float:
    """Seconds to execute ``path`` top to bottom in a new kernel, with ``LSEDU_CACHE=cache``."""
    nb = nbformat.read(path, as_version=4)
    env = {"LSEDU_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        start = time.perf_counter()
        NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
                       ).execute()
        return time.perf_counter() - start
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb, in book order")
    ap.add_argument("--shared-cache", action="store_true", help="one cache for all, in order (as a book build)")
    args = ap.parse_args()
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    missing = [str(p) for p in notebooks if not p.is_file()]
    if missing:
        raise SystemExit(f"no such notebook: {', '.join(missing)}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
          f"load average before: {os.getloadavg()[0]:.2f}\n")
    print("| notebook | cold s | warm s |")
    print("|---|---|---|")
    total = [0.0, 0.0]
    with tempfile.TemporaryDirectory(prefix="lsedu-bench-book-") as tmp:
        for i, path in enumerate(notebooks):
            cache = Path(tmp) / ("shared" if args.shared_cache else f"cache-{i}")
            cold = execute(path, cache)
            warm = execute(path, cache)
            total[0] += cold
            total[1] += warm
            print(f"| {path.name} | {cold:.0f} | {warm:.0f} |", flush=True)
    print(f"| all | {total[0]:.0f} | {total[1]:.0f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
