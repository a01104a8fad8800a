"""Benchmark: the laptop track's fine-tunes, cold and warm, and what each one learned.

    .venv/bin/python benchmarks/bench_zoo.py                      # text, vision, causal_lm
    .venv/bin/python benchmarks/bench_zoo.py --setups text vision
    .venv/bin/python benchmarks/bench_zoo.py --cache ~/.cache/lsedu   # an empty folder, kept afterwards

For each setup it produces every task's fine-tune (with the default
FinetuneConfig) twice in a fresh process each:

* cold: into an empty cache folder, so the time includes loading the model,
  fitting the frozen heads (or dequantizing SmolLM2) and training;
* warm: again, from the cache that the cold run filled.

Then it prints, per task, the test accuracy of the pretrained body (the
linear probe with the frozen head, or zero-shot multiple choice for the
causal LM) against that of the fine-tune, the gain, and the seconds the
fine-tune took. A fine-tune that does not clearly beat the pretrained model
makes a task that teaches nothing. Nothing here is a test: it only prints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
start = time.perf_counter()
import lsedu.zoo
setup = lsedu.zoo.load(sys.argv[1], progress=False)
rows = {}
for task in setup.tasks:
    t0 = time.perf_counter()
    body, record = setup.finetune_record(task)
    rows[task] = {"seconds": time.perf_counter() - t0, "train_seconds": record["seconds"]}
total = time.perf_counter() - start
if sys.argv[2] == "score":
    pre = setup.pretrained()
    for task in setup.tasks:
        rows[task]["pretrained"] = setup.evaluate(pre, task)
        rows[task]["fine-tuned"] = setup.evaluate(setup.finetune(task), task)
        rows[task]["classes"] = len(setup.task(task).classes)
        rows[task]["train/val/test"] = "/".join(str(len(x)) for x in (setup.train_split(task), setup.task(task).val,
                                                                        setup.task(task).test))
print(json.dumps({"total": total, "rows": rows}))
"""


def run(setup: str, cache: Path, mode: str) -> dict:
    env = {**os.environ, "LSEDU_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, setup, mode], env=env, cwd=ROOT, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise SystemExit(f"{setup} ({mode}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setups", nargs="+", default=["text", "vision", "causal_lm"])
    ap.add_argument("--cache", type=Path, help="an empty (or missing) folder to fill and keep, e.g. the real "
                    "cache, so that the book reuses the fine-tunes; default: a temporary folder, deleted after")
    args = ap.parse_args()
    if args.cache is not None:
        args.cache = args.cache.expanduser()
        if args.cache.exists() and any(args.cache.iterdir()):
            ap.error(f"--cache {args.cache} is not empty: the cold run needs an empty cache")
    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}\n")
    for name in args.setups:
        with contextlib.ExitStack() as stack:
            cache = (args.cache if args.cache is not None
                     else stack.enter_context(tempfile.TemporaryDirectory(prefix="lsedu-bench-zoo-")))
            cold = run(name, Path(cache), "time")
            t = time.perf_counter()
            warm = run(name, Path(cache), "score")
            print(f"## {name}: every fine-tune cold {cold['total']:.1f} s, warm {warm['total']:.1f} s "
                  f"(the warm process, scoring excluded; scoring took {time.perf_counter() - t - warm['total']:.0f} s "
                  f"more, model start included)\n")
            print("| task | classes | train/val/test | pretrained | fine-tuned | gain | fine-tune s (cold) |")
            print("|---|---|---|---|---|---|---|")
            for task, r in warm["rows"].items():
                print(f"| {task} | {r['classes']} | {r['train/val/test']} | {r['pretrained']:.3f} | "
                      f"{r['fine-tuned']:.3f} | {r['fine-tuned'] - r['pretrained']:+.3f} | "
                      f"{cold['rows'][task]['train_seconds']:.1f} |")
            print()


if __name__ == "__main__":
    main()
