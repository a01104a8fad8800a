"""Benchmark: causal-LM multiple-choice scoring, before and after, beside lm-eval-harness, on the same items.

    .venv/bin/python benchmarks/bench_lm_scoring.py                    # the three skills' test items
    .venv/bin/python benchmarks/bench_lm_scoring.py --before 99dfa1a   # another "before" commit

Loads the laptop track's SmolLM2-135M-Instruct (pretrained, from the lsedu
cache; built on first use) and scores every option of the test items of its
three skills, each skill the way ``CausalLMSetup.evaluate`` does (batches of
64 items, the chat template as the context):

* **before**: ``lsedu.zoo.lm_scoring.continuation_logprobs`` as it was at
  ``--before`` (read from git, so the two run side by side in one process);
* **after**: the same function today;
* **lm-eval**: ``HFLM.loglikelihood`` of lm-eval-harness on the same
  (context, option) pairs, the reference the book's numbers follow.

It prints the seconds and items per second of each, the speed-up, the largest
difference of log-likelihoods from lm-eval, and whether every choice (the
argmax option) is the same. Nothing here is a test: it only prints figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lsedu.zoo import lm_scoring  # noqa: E402
from lsedu.zoo.causal_lm import CausalLMSetup  # noqa: E402


def before_module(rev: str):
    """``lsedu/zoo/lm_scoring.py`` at commit ``rev``, imported as a sibling module of today's."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:lsedu/zoo/lm_scoring.py"], check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "lm_scoring_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("lsedu.zoo._lm_scoring_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def score_all(fn, model, setup, items_by_task) -> tuple[float, list[torch.Tensor]]:
    """Seconds, and per item its options' log-likelihoods, scoring as ``CausalLMSetup.evaluate`` batches."""
    scores = []
    t = time.perf_counter()
    with torch.no_grad():
        for task, items in items_by_task.items():
            for s in range(0, len(items), 64):
                batch = items[s:s + 64]
                ctx = [setup.context(it["prompt"]) for it in batch]
                flat = [(c, o) for c, it in zip(ctx, batch) for o in it["options"]]
                enc = lm_scoring.encode_choices(setup.tokenizer, [c for c, _ in flat], [o for _, o in flat])
                scores += list(fn(model, enc).split([len(it["options"]) for it in batch]))
    return time.perf_counter() - t, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="99dfa1a", help="the commit whose scoring is 'before' (default: 99dfa1a)")
    ap.add_argument("--limit", type=int, default=None, help="items per skill (default: the whole test split)")
    ap.add_argument("--lm-eval-batch", type=int, default=16, help="lm-eval's batch size")
    args = ap.parse_args()

    setup = CausalLMSetup(progress=False)
    model = setup.module(setup.pretrained())
    items = {t: list(setup.task(t).split("test").inputs[: args.limit]) for t in setup.tasks}
    n_items = sum(len(v) for v in items.values())
    old = before_module(args.before)

    rows = {}
    for label, fn in (("before", old.continuation_logprobs), ("after", lm_scoring.continuation_logprobs)):
        rows[label] = score_all(fn, model, setup, items)
        print(f"{label}: {rows[label][0]:.1f} s", file=sys.stderr, flush=True)

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=setup.tokenizer, batch_size=args.lm_eval_batch, device="cpu")
    reqs = [Instance("loglikelihood", {}, (setup.context(it["prompt"]), o), i)
            for v in items.values() for i, it in enumerate(v) for o in it["options"]]
    t = time.perf_counter()
    ref = torch.tensor([ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)])
    rows["lm-eval HFLM.loglikelihood"] = (time.perf_counter() - t, None)
    print(f"lm-eval: {rows['lm-eval HFLM.loglikelihood'][0]:.1f} s", file=sys.stderr, flush=True)

    ref_choice = [int(s.argmax()) for s in ref.split([len(it["options"]) for v in items.values() for it in v])]
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"items: {n_items} ({', '.join(f'{t} {len(v)}' for t, v in items.items())}), "
          f"{len(reqs)} (context, option) pairs; SmolLM2-135M-Instruct, float32")
    print()
    print(f"| {'scoring':<28} | {'s':>7} | {'items/s':>8} | {'x before':>8} | {'max |dlogL| vs lm-eval':>22} | "
          f"{'same choices':>12} |")
    print(f"|{'-' * 30}|{'-' * 9}|{'-' * 10}|{'-' * 10}|{'-' * 24}|{'-' * 14}|")
    base_s = rows["before"][0]
    for label, (sec, scores) in rows.items():
        if scores is None:
            diff, same = "0 (the reference)", "-"
        else:
            flat = torch.cat(scores)
            diff = f"{float((flat - ref).abs().max()):.2e}"
            same = "yes" if [int(s.argmax()) for s in scores] == ref_choice else "NO"
        print(f"| {label:<28} | {sec:>7.1f} | {n_items / sec:>8.1f} | {base_s / sec:>8.2f} | {diff:>22} | "
              f"{same:>12} |")


if __name__ == "__main__":
    main()
