"""Benchmark: ``lsedu merge`` against an in-memory merge, mergekit, and the I/O floor.

    .venv/bin/python benchmarks/bench_merge.py --size gpt2-xl   # 1.56B parameters, 6.2 GB a model in fp32
    .venv/bin/python benchmarks/bench_merge.py --size gpt2      # 124M parameters, the small run

It writes random checkpoints shaped like GPT-2 (a base and three fine-tunes,
Hugging Face folders with 2 GB safetensors shards and a real GPT-2
config.json) under --workdir, then runs each row in its own process and
prints one table:

* wall time;
* peak RSS (VmHWM): includes the pages of memory-mapped input files that the
  process touched, which the kernel can drop at any time;
* peak anonymous RSS (RssAnon, sampled every 20 ms): the memory the process
  really allocated, the figure that decides whether a merge fits.

Rows: the I/O floor, reading every input file once, with the page cache
(buffered) and past it (O_DIRECT, as lsedu merge reads big blocks); the
ratio column divides by the faster of the two. lsedu merge with per-tensor
TIES (one read pass) and with global TIES (exact global top-k: a sample,
then two read passes); an in-memory merge that loads every model and calls
``lsedu.ties_merge``; mergekit's TIES (per-tensor, the only trim it has) on
the same files. A start-up row shows what Python, torch and lsedu take to
import, which every lsedu row pays and the I/O floor does not.

CPU s is the row's user + system time: on a shared disk whose speed drifts
from minute to minute, it shows the work a row does whatever the disk.
``--repeat N`` runs the rounds N times, interleaved, and reports each row's
median run. The in-memory row runs under an address-space limit of
--memory-limit GB so that a model that does not fit fails cleanly instead of
swapping the machine to death. Nothing here is a test: it only prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lsedu.merge.io import ShardedWriter  # noqa: E402

SIZES = {  # n_layer, n_embd, n_head: the GPT-2 family
    "gpt2": (12, 768, 12),
    "gpt2-medium": (24, 1024, 16),
    "gpt2-xl": (48, 1600, 25),
}
VOCAB, POSITIONS = 50257, 1024


def gpt2_layout(n_layer: int, d: int) -> list[tuple[str, tuple[int, ...]]]:
    """The tensor names and shapes of a Hugging Face GPT2LMHeadModel checkpoint (lm_head is tied)."""
    out = [("transformer.wte.weight", (VOCAB, d)), ("transformer.wpe.weight", (POSITIONS, d))]
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        out += [(p + "ln_1.weight", (d,)), (p + "ln_1.bias", (d,)),
                (p + "attn.c_attn.weight", (d, 3 * d)), (p + "attn.c_attn.bias", (3 * d,)),
                (p + "attn.c_proj.weight", (d, d)), (p + "attn.c_proj.bias", (d,)),
                (p + "ln_2.weight", (d,)), (p + "ln_2.bias", (d,)),
                (p + "mlp.c_fc.weight", (d, 4 * d)), (p + "mlp.c_fc.bias", (4 * d,)),
                (p + "mlp.c_proj.weight", (4 * d, d)), (p + "mlp.c_proj.bias", (d,))]
    return out + [("transformer.ln_f.weight", (d,)), ("transformer.ln_f.bias", (d,))]


def generate(workdir: Path, size: str, n_tasks: int) -> list[Path]:
    """A base and ``n_tasks`` fine-tunes (base + small noise), written tensor by tensor."""
    n_layer, d, heads = SIZES[size]
    layout = gpt2_layout(n_layer, d)
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": n_layer, "n_embd": d,
              "n_head": heads, "vocab_size": VOCAB, "n_positions": POSITIONS, "n_ctx": POSITIONS,
              "tie_word_embeddings": True, "bos_token_id": 50256, "eos_token_id": 50256}
    folders = [workdir / "base"] + [workdir / f"ft{i}" for i in range(n_tasks)]
    if all((f / "config.json").exists() for f in folders):
        print(f"reusing the checkpoints in {workdir}", file=sys.stderr)
        return folders
    for j, folder in enumerate(folders):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        writer = ShardedWriter(folder, [(n, s, torch.float32) for n, s in layout], max_shard_bytes=2 * 10**9)
        for k, (name, shape) in enumerate(layout):
            base = torch.randn(shape, generator=torch.Generator().manual_seed(k)) * 0.02
            if j:  # a fine-tune: the base plus a small, task-specific displacement
                base += 0.001 * torch.randn(shape, generator=torch.Generator().manual_seed(10_000 * j + k))
            writer.write(name, base)
        writer.close()
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        print(f"wrote {folder}", file=sys.stderr)
    return folders


# --- the rows: each one is a small program run in its own process ----------------------------------------
IO_FLOOR = """
import mmap, os, sys
from pathlib import Path
# Every byte of every input file, read once, in order, into one reused 64 MB buffer: what the disk allows.
# (Not get_tensor: safetensors maps the file, and a tensor it returns is read from disk only when touched.)
# argv[1] == "direct": with O_DIRECT, past the page cache (the buffer is page-aligned), as lsedu merge reads.
direct = sys.argv[1] == "direct"
buf, total = mmap.mmap(-1, 64 << 20), 0
for path in sys.argv[2:]:
    for f in sorted(Path(path).glob("*.safetensors")):
        fd = os.open(f, os.O_RDONLY | (os.O_DIRECT if direct else 0))
        offset = 0
        while n := os.preadv(fd, [buf], offset):
            offset += n
        total += offset
        os.close(fd)
print(total)
"""

IN_MEMORY = """
import sys, lsedu
from lsedu.merge import Checkpoint
from lsedu.merge.io import ShardedWriter
paths, out = sys.argv[1:-1], sys.argv[-1]
load = lambda p: {n: Checkpoint(p)[n].clone() for n in Checkpoint(p)}
base = load(paths[0])
tvs = [lsedu.TaskVector.from_models(base, load(p)) for p in paths[1:]]
merged = lsedu.ties_merge(base, tvs, density=0.2, lam=1.0, trim_scope="per_tensor")
w = ShardedWriter(__import__("pathlib").Path(out), [(n, tuple(t.shape), t.dtype) for n, t in merged.items()])
for n, t in merged.items():
    w.write(n, t)
w.close()
"""


def run_row(cmd: list[str], *, memory_limit: int | None = None, env=None) -> dict:
    """Wall time, peak RSS and peak anonymous RSS of one command, run as its own process."""
    def limit():
        if memory_limit:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit,
                            env={**os.environ, **(env or {})}, cwd=ROOT)
    peak_anon = 0
    stop = threading.Event()

    def sample():
        nonlocal peak_anon
        while not stop.is_set():
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        peak_anon = max(peak_anon, int(line.split()[1]) * 1024)
            except (OSError, ValueError):
                pass
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    err = proc.stderr.read().decode(errors="replace")
    ok = os.waitstatus_to_exitcode(status) == 0
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss": usage.ru_maxrss * 1024,
            "peak_anon": peak_anon, "ok": ok,
            "error": "" if ok else (err.strip().splitlines() or ["?"])[-1][:160]}


def drop_caches() -> bool:
    """Start each row with a cold page cache, where the machine lets us (root on Linux)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="gpt2")
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lsedu-bench"))
    ap.add_argument("--memory-limit", type=float, default=20.0, help="GB of address space for the in-memory row")
    ap.add_argument("--skip", nargs="*", default=[], help="rows to skip: startup io io-direct lsedu-per-tensor "
                                                              "lsedu-global in-memory mergekit")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the rows this many times, interleaved, and report each row's median run (a shared "
                         "disk's speed drifts: interleaving spreads the drift over every row)")
    ap.add_argument("--once", nargs="*", default=["in-memory", "mergekit"],
                    help="rows run only in the first round (slow, and not lsedu's)")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    args = ap.parse_args()

    work = args.workdir / args.size
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    folders = generate(work, args.size, args.tasks)
    gen_s = time.perf_counter() - t0
    model_bytes = sum(f.stat().st_size for f in folders[0].glob("*.safetensors"))
    py = sys.executable
    recipe = {"base_model": str(folders[0]), "models": [{"model": str(f)} for f in folders[1:]],
              "merge_method": "ties", "shard_size": "2GB"}

    def recipe_file(name: str, params: dict) -> Path:
        p = work / f"{name}.yaml"
        p.write_text(json.dumps({**recipe, "parameters": params, "output": str(work / f"out-{name}")}))
        return p

    plan = [
        ("startup", "start-up only: python -c 'import lsedu.merge'", [py, "-c", "import lsedu.merge"], {}),
        ("io", "I/O floor: read every input once (buffered)", [py, "-c", IO_FLOOR, "buffered", *map(str, folders)], {}),
        ("io-direct", "I/O floor: read every input once (O_DIRECT)", [py, "-c", IO_FLOOR, "direct",
                                                                     *map(str, folders)], {}),
        ("lsedu-per-tensor", "lsedu merge, TIES per-tensor trim",
         [py, "-m", "lsedu.cli", "merge", str(recipe_file("per-tensor", {"density": 0.2, "trim": "per_tensor"})),
          "--overwrite", "--no-progress"], {}),
        ("lsedu-global", "lsedu merge, TIES global trim (exact)",
         [py, "-m", "lsedu.cli", "merge", str(recipe_file("global", {"density": 0.2, "trim": "global"})),
          "--overwrite", "--no-progress"], {}),
        ("in-memory", "in memory: load all, lsedu.ties_merge (per-tensor)",
         [py, "-c", IN_MEMORY, *map(str, folders), str(work / "out-in-memory")],
         {"memory_limit": int(args.memory_limit * 1e9)}),
        ("mergekit", "mergekit 0.1.5 TIES (per-tensor)",
         [shutil.which("mergekit-yaml") or str(Path(py).parent / "mergekit-yaml"), str(work / "mergekit.yaml"),
          str(work / "out-mergekit"), "--out-shard-size", "500M", "--no-copy-tokenizer", "--lazy-unpickle"], {}),
    ]
    (work / "mergekit.yaml").write_text(json.dumps({
        "merge_method": "ties", "base_model": str(folders[0]), "dtype": "float32",
        "parameters": {"normalize": True},
        "models": [{"model": str(f), "parameters": {"weight": 1.0, "density": 0.2}} for f in folders[1:]]}))
    # What `lsedu merge --plan` expects of each lsedu row, printed beside what the row measured.
    estimates = {}
    for key, label, cmd, _ in plan:
        if key.startswith("lsedu") and key not in args.skip:
            shutil.rmtree(work / f"out-{key[6:]}", ignore_errors=True)
            drop_caches()
            out = subprocess.run([*cmd[:-2], "--plan"], capture_output=True, text=True).stdout
            mem = re.search(r"peak memory about ([\d.]+) ([KMGT]B)", out)
            sec = re.search(r"time about (\d+) s", out)
            if mem and sec:
                estimates[label] = (float(mem.group(1)) * {"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[mem.group(2)],
                                    float(sec.group(1)))
    cold = None
    runs: dict[str, list[dict]] = {}
    for round_ in range(args.repeat):
        for key, label, cmd, kw in plan:
            if key in args.skip or (round_ and key in args.once):
                continue
            shutil.rmtree(work / "out-in-memory", ignore_errors=True)
            (work / "out-in-memory").mkdir(exist_ok=True)
            cold = drop_caches()
            print(f"running ({round_ + 1}/{args.repeat}): {label}", file=sys.stderr, flush=True)
            r = run_row(cmd, **kw)
            runs.setdefault(label, []).append(r)
            print(f"  {r['wall_s']:.1f} s (CPU {r['cpu_s']:.1f} s), peak RSS {r['peak_rss'] / 1e9:.2f} GB, "
                  f"anon {r['peak_anon'] / 1e9:.2f} GB" + ("" if r["ok"] else f"  FAILED: {r['error']}"),
                  file=sys.stderr, flush=True)
    # Each row's median run by wall time (a failed run counts as slowest).
    rows = [(label, sorted(rs, key=lambda r: (not r["ok"], r["wall_s"]))[(len(rs) - 1) // 2], len(rs))
            for label, rs in runs.items()]

    n_params = sum(torch.Size(s).numel() for _, s in gpt2_layout(*SIZES[args.size][:2]))
    # The floor: the faster way of reading every input once.
    floor = min((r["wall_s"] for label, r, _ in rows if label.startswith("I/O") and r["ok"]), default=None)
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB RAM, torch {torch.__version__}")
    print(f"inputs: {args.size} shape, {n_params / 1e9:.3f}B parameters, fp32, {model_bytes / 1e9:.2f} GB a model, "
          f"{1 + args.tasks} models = {(1 + args.tasks) * model_bytes / 1e9:.1f} GB read per pass; "
          f"page cache dropped before each run: {'yes' if cold else 'no'}; generation took {gen_s:.0f} s; "
          f"median of {args.repeat} interleaved rounds ({', '.join(args.once)}: first round only)")
    print()
    print(f"| {'row':<52} | {'runs':>4} | {'wall s':>8} | {'x I/O floor':>11} | {'CPU s':>7} | {'peak RSS GB':>11} | "
          f"{'peak anon GB':>12} |")
    print(f"|{'-' * 54}|{'-' * 6}|{'-' * 10}|{'-' * 13}|{'-' * 9}|{'-' * 13}|{'-' * 14}|")
    for label, r, n in rows:
        ratio = f"{r['wall_s'] / floor:.2f}" if floor and r["ok"] else "-"
        status = "" if r["ok"] else f"  FAILED: {r['error']}"
        print(f"| {label:<52} | {n:>4} | {r['wall_s']:>8.1f} | {ratio:>11} | {r['cpu_s']:>7.1f} | "
              f"{r['peak_rss'] / 1e9:>11.2f} | {r['peak_anon'] / 1e9:>12.2f} |{status}")
    if estimates:
        print()
        print("`lsedu merge --plan`'s estimates beside the measured runs (page cache dropped before each plan):")
        print()
        print(f"| {'row':<52} | {'plan s':>7} | {'wall s':>7} | {'plan peak GB':>12} | {'peak anon GB':>12} |")
        print(f"|{'-' * 54}|{'-' * 9}|{'-' * 9}|{'-' * 14}|{'-' * 14}|")
        for label, r, _ in rows:
            if label in estimates:
                mem, sec = estimates[label]
                print(f"| {label:<52} | {sec:>7.0f} | {r['wall_s']:>7.1f} | {mem / 1e9:>12.2f} | "
                      f"{r['peak_anon'] / 1e9:>12.2f} |")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
