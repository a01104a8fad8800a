"""Benchmark: seconds per training step of the laptop track's setups, before and after, in one run.

    .venv/bin/python benchmarks/bench_train.py                    # vision and causal_lm
    .venv/bin/python benchmarks/bench_train.py --steps 10

Fine-tunes, the multi-task models and trained localization are most of a
cold run of notebooks 06 to 08. For each setup this times the same training
steps (forward, backward and an AdamW step of the trainable weights, on the
first batches of each task's shuffled training split, as ``Setup._train``
takes them) both ways:

* **vision**: before, weights and images in PyTorch's default (contiguous)
  layout; after, channels-last (``build_encoder``);
* **causal_lm**: before, every row of a batch run whole with logits at every
  position; after, :func:`~lsedu.zoo.lm_scoring.answer_loss`'s shortcut (the
  shared prompt prefix once, logits at the answer columns only).

It prints the mean seconds a step (the first step of each task is a warm-up
and is left out), the speed-up, and the largest relative difference between
the two ways' losses. Nothing here is a test: it only prints figures.
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

import lsedu.zoo  # noqa: E402
from lsedu.zoo.lm_scoring import answer_loss  # noqa: E402


def step_times(setup, task: str, steps: int, before: bool) -> tuple[float, list[float]]:
    """Mean seconds a step over ``steps`` steps after one warm-up, and each step's loss."""
    model = setup.build_body()
    if before and setup.name == "vision":
        model.to(memory_format=torch.contiguous_format)
    model.load_state_dict(setup.pretrained(), strict=True)
    model.train()
    params = [p for n, p in model.named_parameters() if p.requires_grad_(setup.trainable(n)).requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)  # a tiny step: both ways stay comparable step after step
    g = torch.Generator().manual_seed(0)
    batches = setup.batches(task, setup.train_split(task), setup.finetune_config_for(task).batch_size, shuffle=True,
                            generator=g)
    seconds, losses = [], []
    for _, batch in zip(range(steps + 1), batches):
        if before and setup.name == "vision":
            batch = (batch[0].contiguous(), *batch[1:])
        t = time.perf_counter()
        if setup.name == "causal_lm":
            loss = answer_loss(model, batch.answer, transformers_lm=not before)
        else:
            loss = setup.loss(task, model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seconds.append(time.perf_counter() - t)
        losses.append(loss.item())
    return sum(seconds[1:]) / max(1, len(seconds) - 1), losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setups", nargs="*", default=["vision", "causal_lm"])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per task (after one warm-up step)")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.steps} timed steps per task, the pretrained body\n")
    print(f"| {'setup':<10} | {'task':<10} | {'before s/step':>13} | {'after s/step':>12} | {'x':>5} | "
          f"{'max rel. loss diff':>18} |")
    print(f"|{'-' * 12}|{'-' * 12}|{'-' * 15}|{'-' * 14}|{'-' * 7}|{'-' * 20}|")
    for name in args.setups:
        setup = lsedu.zoo.load(name, progress=False)
        total = [0.0, 0.0]
        for task in setup.tasks:
            setup.task(task)
            if hasattr(setup, "head"):
                setup.head(task)  # fitted (or read from the cache) outside the timings
            b, lb = step_times(setup, task, args.steps, before=True)
            a, la = step_times(setup, task, args.steps, before=False)
            total = [total[0] + b, total[1] + a]
            diff = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(lb, la))
            print(f"| {name:<10} | {task:<10} | {b:>13.3f} | {a:>12.3f} | {b / a:>5.2f} | {diff:>18.1e} |", flush=True)
        print(f"| {name:<10} | {'all':<10} | {total[0]:>13.3f} | {total[1]:>12.3f} | {total[0] / total[1]:>5.2f} | "
              f"{'':>18} |")


if __name__ == "__main__":
    main()
