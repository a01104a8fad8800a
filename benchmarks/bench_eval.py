"""Benchmark: evaluation speed of the laptop track's setups, before and after, in one run.

    .venv/bin/python benchmarks/bench_eval.py                     # vision, text and causal_lm, every test split
    .venv/bin/python benchmarks/bench_eval.py --setups text --before 99dfa1a

Every case study evaluates each merged model on every task, so evaluation is
most of notebooks 03 to 08. For each setup this evaluates the pretrained
body on every task's test split twice, as ``Setup.evaluate`` batches it:

* **before**: the examples in their stored order (no ``eval_order``); for
  the causal LM, the scoring function of commit ``--before`` (read from git);
  for vision, weights and images in PyTorch's default (contiguous) layout;
* **after**: today's ``evaluate`` (longest examples first, so a batch pads
  little; for the causal LM, the shared prompt prefix once and the output
  layer at the answer positions only; for vision, channels-last weights and
  images).

It prints examples per second, the speed-up, and whether every prediction is
the same, example by example. Nothing here is a test: it only prints figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import lsedu.zoo  # noqa: E402
from bench_lm_scoring import before_module  # noqa: E402
from lsedu.zoo import lm_scoring  # noqa: E402


@torch.no_grad()
def predictions(setup, body, task: str, sort: bool, layout=None) -> tuple[float, torch.Tensor]:
    """Seconds, and each test example's prediction in the split's order, batching as ``evaluate`` does
    (with ``layout``, the model's weights and each batch's images in that memory format)."""
    data = setup.task(task).split("test")
    order = setup.eval_order(task, data) if sort else None
    order = torch.arange(len(data)) if order is None else order
    t = time.perf_counter()
    model = setup.module(body)
    if layout is not None:
        model.to(memory_format=layout)
    preds = []
    for batch in setup.batches(task, data.subset(order.tolist()), 64):
        if layout is not None:
            batch = (batch[0].contiguous(memory_format=layout), *batch[1:])
        preds.append(setup.predict(task, model, batch)[0].cpu())
    sec = time.perf_counter() - t
    out = torch.empty(len(data), dtype=torch.long)
    out[order] = torch.cat(preds)
    return sec, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setups", nargs="*", default=["vision", "text", "causal_lm"])
    ap.add_argument("--before", default="99dfa1a", help="the commit whose causal-LM scoring is 'before'")
    args = ap.parse_args()
    old = before_module(args.before)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; every task's test split, the pretrained body")
    print()
    print(f"| {'setup':<10} | {'task':<12} | {'examples':>8} | {'before /s':>9} | {'after /s':>9} | {'x':>5} | "
          f"{'same predictions':>16} |")
    print(f"|{'-' * 12}|{'-' * 14}|{'-' * 10}|{'-' * 11}|{'-' * 11}|{'-' * 7}|{'-' * 18}|")
    for name in args.setups:
        setup = lsedu.zoo.load(name, progress=False)
        body = setup.pretrained()
        totals = [0.0, 0.0, 0]
        for task in setup.tasks:
            setup.task(task)
            setup.module(body)  # built once, outside the timings (both rows reuse it)
            new_fn = lm_scoring.continuation_logprobs
            lm_scoring.continuation_logprobs = old.continuation_logprobs  # MultipleChoiceLM.predict reads it here
            layout = torch.contiguous_format if name == "vision" else None
            try:
                before_s, before = predictions(setup, body, task, sort=False, layout=layout)
            finally:
                lm_scoring.continuation_logprobs = new_fn
                if layout is not None:
                    setup.module(body).to(memory_format=torch.channels_last)
            after_s, after = predictions(setup, body, task, sort=True)
            n = len(after)
            totals = [totals[0] + before_s, totals[1] + after_s, totals[2] + n]
            same = "yes" if torch.equal(before, after) else f"NO ({int((before != after).sum())} differ)"
            print(f"| {name:<10} | {task:<12} | {n:>8} | {n / before_s:>9.1f} | {n / after_s:>9.1f} | "
                  f"{before_s / after_s:>5.2f} | {same:>16} |", flush=True)
        b, a, n = totals
        print(f"| {name:<10} | {'all':<12} | {n:>8} | {n / b:>9.1f} | {n / a:>9.1f} | {b / a:>5.2f} | {'':>16} |")


if __name__ == "__main__":
    main()
