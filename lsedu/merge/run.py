"""``lsedu merge``: merge checkpoints larger than memory, one tensor name at a time.

A recipe (YAML, in the style mergekit's users know) names a base model, its
fine-tunes, a method and its parameters. The merge streams: for each tensor
name it reads that tensor from every input, merges it with the same lsedu
functions the notebooks use, and writes it straight into the output shard.
Peak memory is a few tensors per input, whatever the size of the model.

Methods whose thresholds are global (TIES with ``trim: global``,
Localize-and-Stitch, DARE followed by global TIES) first find each task
vector's exact top-k threshold: a small sample brackets it, and one streamed
pass counts the entries above the bracket and keeps those inside it (a radix
select, :class:`lsedu.topk.RadixSelect`, finishes the rare miss). That is
one extra read pass, and no concatenation of the model.

The arithmetic runs in the fused loops of :mod:`lsedu.fused`, one pass over
memory per block instead of torch's dozen; they are bit-identical to the
reference functions that the notebooks use.

Nothing is lost: inputs are only read, the output is written into a hidden
temporary folder next to the destination and renamed only once complete, and
every name, shape and dtype is checked against the base before anything is
written.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch
import yaml
from tqdm.auto import tqdm

from . import fused
from ._checks import all_finite, check_fraction, check_scalar
from .checkpoints import READ_SLACK, Checkpoint, MaskWriter, ShardedWriter, load_masks
from .dare import drop_and_rescale
from .localize_stitch import _stitched_vector
from .soups import uniform_soup
from .task_vectors import select
from .topk import KthLargest, RadixSelect, count_for_density, kth_largest

METHODS = {
    # method: {parameter: default}
    "average": {},
    "task_arithmetic": {"lambda": 1.0},
    "ties": {"density": 0.2, "lambda": 1.0, "trim": "global"},
    "dare": {"p": 0.9, "lambda": 1.0, "seed": 0, "then": "task_arithmetic", "density": 0.2, "trim": "global"},
    "localize_stitch": {"density": 0.01},
}
RECIPE_FIELDS = {"merge_method", "base_model", "models", "parameters", "include", "exclude", "masks", "output",
                 "shard_size", "copy_files"}
#: Files copied from the base model's folder, so that ``from_pretrained`` finds them next to the weights.
COPY_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model")


@dataclass
class MergeRecipe:
    """A merge, as ``lsedu merge`` reads it from YAML (see :func:`load_recipe`)."""

    merge_method: str
    base_model: Path
    models: list[Path]
    output: Path | None = None
    parameters: dict = field(default_factory=dict)
    include: list[str] | None = None
    exclude: list[str] | None = None
    save_masks: Path | None = None
    load_masks: list[Path] | None = None
    shard_size: int = 2 * 1024**3
    copy_files: bool = True

    def __post_init__(self):
        if self.merge_method not in METHODS:
            raise ValueError(f"merge_method must be one of {sorted(METHODS)}, got {self.merge_method!r}")
        known = METHODS[self.merge_method]
        unknown = set(self.parameters) - set(known)
        if unknown:
            raise ValueError(f"parameters {sorted(unknown)} do not apply to merge_method {self.merge_method!r}; "
                             f"it takes {sorted(known) or 'none'}")
        self.parameters = {**known, **self.parameters}
        p = self.parameters
        if "density" in p:
            check_fraction(p["density"], "parameters.density", low_open=True, high_open=False)
        if "p" in p:
            check_fraction(p["p"], "parameters.p", low_open=False, high_open=True)
        if "lambda" in p:
            check_scalar(p["lambda"], "parameters.lambda")
        if p.get("trim", "global") not in ("global", "per_tensor"):
            raise ValueError(f"parameters.trim must be 'global' or 'per_tensor', got {p['trim']!r}")
        if p.get("then", "ties") not in ("task_arithmetic", "ties"):
            raise ValueError(f"parameters.then must be 'task_arithmetic' or 'ties', got {p['then']!r}")
        if "seed" in p and (isinstance(p["seed"], bool) or not isinstance(p["seed"], int)):
            raise TypeError(f"parameters.seed must be an int, got {type(p['seed']).__name__}")
        if not self.models:
            raise ValueError("models is empty: list at least one fine-tuned model")
        if (self.save_masks or self.load_masks) and self.merge_method != "localize_stitch":
            raise ValueError("masks: save/load applies to merge_method 'localize_stitch' only")
        if self.load_masks is not None and len(self.load_masks) != len(self.models):
            raise ValueError(f"masks.load lists {len(self.load_masks)} files for {len(self.models)} models")

    @property
    def global_threshold(self) -> bool:
        """Whether the method needs each task vector's exact global top-k (a sample and one extra read pass)."""
        m, p = self.merge_method, self.parameters
        if m == "localize_stitch":
            return self.load_masks is None
        return (m == "ties" or (m == "dare" and p["then"] == "ties")) and p["trim"] == "global"


def parse_size(value) -> int:
    """``2GB``, ``500MB``, ``1.5GiB`` or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).upper() not in units or float(m.group(1)) <= 0:
        raise ValueError(f"shard_size must be a size such as '2GB' or '500MB', got {value!r}")
    return int(float(m.group(1)) * units[m.group(2).upper()])


def load_recipe(path: str | os.PathLike) -> MergeRecipe:
    """Read a YAML recipe; relative paths in it are relative to the recipe's folder.

    .. code-block:: yaml

        merge_method: ties            # average | task_arithmetic | ties | dare | localize_stitch
        base_model: gpt2-base/        # a folder (sharded or not) or a .safetensors/.bin file
        models:
          - model: gpt2-instruct/
          - model: gpt2-science/
        parameters: {density: 0.2, lambda: 1.0, trim: global}
        exclude: ["lm_head.*"]        # tensors copied from the base, unmerged
        output: merged/
        shard_size: 2GB
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping with merge_method, base_model and models")
    unknown = set(raw) - RECIPE_FIELDS
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}; a recipe has {sorted(RECIPE_FIELDS)}")
    for required in ("merge_method", "base_model", "models"):
        if required not in raw:
            raise ValueError(f"{path}: the recipe has no {required!r}")
    here = path.parent

    def resolve(p, what: str) -> Path:
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"{path}: {what} must be a path, got {type(p).__name__}")
        p = Path(p).expanduser()
        return p if p.is_absolute() else here / p

    models = raw["models"]
    if not isinstance(models, list):
        raise TypeError(f"{path}: models must be a list of {{model: PATH}} entries")
    model_paths = []
    for i, entry in enumerate(models):
        if isinstance(entry, dict):
            extra = set(entry) - {"model", "parameters"}
            if "model" not in entry or extra:
                raise ValueError(f"{path}: models[{i}] must be {{model: PATH}}, got keys {sorted(entry)}")
            if entry.get("parameters") not in (None, {}, {"weight": 1}, {"weight": 1.0}):
                raise ValueError(f"{path}: models[{i}].parameters: per-model parameters are not supported; "
                                 "put density, lambda and the like under the top-level parameters")
            entry = entry["model"]
        model_paths.append(resolve(entry, f"models[{i}]"))
    masks = raw.get("masks") or {}
    if not isinstance(masks, dict) or set(masks) - {"save", "load"}:
        raise ValueError(f"{path}: masks must be a mapping with 'save: FOLDER' and/or 'load: [FILES]'")
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise TypeError(f"{path}: parameters must be a mapping")

    def patterns(key):
        v = raw.get(key)
        if v is None:
            return None
        v = [v] if isinstance(v, str) else v
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise TypeError(f"{path}: {key} must be a glob pattern or a list of them")
        return v

    return MergeRecipe(
        merge_method=raw["merge_method"],
        base_model=resolve(raw["base_model"], "base_model"),
        models=model_paths,
        output=resolve(raw["output"], "output") if raw.get("output") else None,
        parameters=parameters,
        include=patterns("include"),
        exclude=patterns("exclude"),
        save_masks=resolve(masks["save"], "masks.save") if masks.get("save") else None,
        load_masks=[resolve(p, f"masks.load[{i}]") for i, p in enumerate(masks["load"])] if masks.get("load") else None,
        shard_size=parse_size(raw.get("shard_size", 2 * 1024**3)),
        copy_files=bool(raw.get("copy_files", True)),
    )


# --- checks ------------------------------------------------------------------
def check_layouts(base: Checkpoint, models: Sequence[Checkpoint]) -> None:
    """Every model has the base's tensor names, shapes and dtypes; errors name the tensor and the files."""
    for m in models:
        extra = [n for n in m if n not in base]
        missing = [n for n in base if n not in m]
        if missing:
            raise ValueError(f"tensor {missing[0]!r} is in the base ({base.file_of(missing[0])}) but not in {m.path}"
                             + (f" ({len(missing) - 1} more missing)" if len(missing) > 1 else ""))
        if extra:
            raise ValueError(f"tensor {extra[0]!r} is in {m.file_of(extra[0])} but not in the base {base.path}"
                             + (f" ({len(extra) - 1} more)" if len(extra) > 1 else ""))
        for n in base:
            if m.shape(n) != base.shape(n):
                raise ValueError(f"shape mismatch at tensor {n!r}: {base.shape(n)} in {base.file_of(n)}, "
                                 f"{m.shape(n)} in {m.file_of(n)}")
            if m.dtype(n) != base.dtype(n):
                raise ValueError(f"dtype mismatch at tensor {n!r}: {base.dtype(n)} in {base.file_of(n)}, "
                                 f"{m.dtype(n)} in {m.file_of(n)}")


def _check_output(out: Path, inputs: Sequence[Path], overwrite: bool) -> None:
    out = out.resolve()
    for p in inputs:
        p = p.resolve()
        if out == p or out in p.parents:
            raise ValueError(f"the output {out} would overwrite the input {p}; choose another output folder")
    if out.exists() and not overwrite:
        raise FileExistsError(f"the output {out} already exists; remove it or pass --overwrite")
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output {out} exists and is not a folder")


def _check_finite(name: str, raw: _Unit, ckpts: Sequence[Checkpoint]) -> None:
    for ok, t, ckpt in zip(raw.finite, raw, ckpts):
        if not ok:
            raise ValueError(f"tensor {name!r} in {ckpt.file_of(name)} has {int((~torch.isfinite(t)).sum())} "
                             "non-finite value(s) (NaN or inf)")


# --- the merge -----------------------------------------------------------------
@dataclass
class MergeReport:
    output: Path
    method: str
    tensors: int
    merged_tensors: int
    read_passes: float
    seconds: float
    input_bytes: int
    masks: list[Path] = field(default_factory=list)


#: Tensors larger than this many entries are merged a block of rows at a time, so that the
#: temporaries of a 50,000-token embedding stay small: memory is bounded by the chunk, not the tensor.
CHUNK_ENTRIES = 1 << 22

#: A per-tensor trim ranks each tensor on its own, so a tensor merged whole is read once, while one
#: cut into blocks is read about twice (a sample, a pass to count around it, the merge). Up to this many entries
#: (16M: every tensor of GPT2-XL but its 80M-entry embedding) a per-tensor trim takes the tensor
#: whole: its memory is then a few copies of the largest such tensor per input (64 MB each in float32).
PER_TENSOR_WHOLE_ENTRIES = 1 << 24


def chunks(shape: tuple[int, ...], chunk: int | None = None) -> list[tuple[int, int] | None]:
    """Row ranges along the first dimension covering a tensor, or ``[None]`` for one piece."""
    chunk = CHUNK_ENTRIES if chunk is None else chunk
    numel = 1
    for s in shape:
        numel *= s
    if len(shape) == 0 or numel <= chunk:
        return [None]
    row = numel // shape[0] if shape[0] else 1
    step = max(1, chunk // max(row, 1))
    return [(a, min(a + step, shape[0])) for a in range(0, shape[0], step)]


class _Unit(list):
    """The tensors of one unit, one per checkpoint, and whether each is free of NaN and inf."""

    finite: list[bool]


class _Reader:
    """Reads tensor ``name`` (rows ``rows``) from every checkpoint, and counts the bytes: the I/O of one unit.

    It runs in :func:`_prefetch`'s thread, so it also checks the tensors for
    NaN and inf there (:attr:`_Unit.finite`), off the main thread. The tensors
    it returns live in its buffers, which it reuses round-robin: a unit is
    valid until the reader has been called ``ring - 1`` more times. That is
    enough for :func:`_prefetch`, which reads one unit ahead: it asks for
    unit i + 1 only once the caller is done with unit i - 1. One reader
    serves one :func:`_prefetch` loop at a time.
    """

    def __init__(self, ring: int = 2):
        self.bytes = 0
        # Buffers reused round-robin: while one unit is merged, _prefetch's thread reads the next one.
        self._ring: list[list[torch.Tensor]] = [[] for _ in range(ring)]
        self._slot = 0

    def __call__(self, name: str, rows, ckpts: Sequence[Checkpoint]) -> _Unit:
        bufs = self._ring[self._slot]
        self._slot = (self._slot + 1) % len(self._ring)
        out = _Unit()
        for j, c in enumerate(ckpts):
            need = c.part_nbytes(name, rows) + READ_SLACK  # room to align a direct read to whole pages
            if j == len(bufs):
                bufs.append(torch.empty(0, dtype=torch.uint8))
            if bufs[j].numel() < need:
                bufs[j] = torch.empty(need, dtype=torch.uint8)
            out.append(c.read(name, rows, into=bufs[j]))
        out.finite = [all_finite(t) for t in out]
        self.bytes += sum(t.numel() * t.element_size() for t in out)
        return out


def _prefetch(units, load):
    """Yield ``(unit, load(unit))``, loading the next unit in a thread while the caller computes.

    Reading (a copy out of the memory-mapped file) and the merge kernels both
    release the GIL, so the disk and the cores work at the same time; one
    unit ahead keeps the extra memory to one unit.
    """
    units = list(units)
    if not units:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(load, units[0])
        for i, unit in enumerate(units):
            data = ahead.result()
            if i + 1 < len(units):
                ahead = pool.submit(load, units[i + 1])
            yield unit, data


class _WriteBehind:
    """Hands each output block to a thread that writes it while the next block is merged.

    One write is in flight at a time, and an error in it surfaces at the next
    call. The tensors handed over must not change afterwards (the merge's
    outputs are fresh; a copied input is cloned out of the reader's buffers).
    """

    def __init__(self, writer: ShardedWriter):
        self.writer = writer
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.wait()
        self._pending = self._pool.submit(self.writer.write, name, tensor)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        self.wait()
        self._pool.shutdown()
        self.writer.close()

    def abort(self) -> None:
        try:
            self.wait()
        except BaseException:  # noqa: BLE001  (the merge is failing already: report its error, not this one)
            pass
        self._pool.shutdown()
        self.writer.abort()


@dataclass
class _Block:
    """One unit's entries, flat float32, as the fused kernels take them.

    ``srcs`` are the fine-tuned models' entries (``is_tau=False``) or, after
    DARE's drop, the task vectors themselves (``is_tau=True``).
    """

    b: np.ndarray
    srcs: tuple[np.ndarray, ...]
    is_tau: bool

    def taus(self) -> list[torch.Tensor]:
        b = torch.from_numpy(self.b)
        return [torch.from_numpy(s) if self.is_tau else torch.from_numpy(s) - b for s in self.srcs]


def _flat32(t: torch.Tensor) -> np.ndarray:
    return t.float().reshape(-1).contiguous().numpy()


def _block(name: str, rows, raw: _Unit, ckpts: Sequence[Checkpoint], recipe: MergeRecipe,
           check: bool = True) -> _Block:
    """The base's and the models' entries of tensor ``name`` (rows ``rows``), after DARE's drop for dare.

    ``raw`` is what :class:`_Reader` returned for ``ckpts = [base, *models]``.
    ``check``: look for NaN and inf (the first pass over the inputs does; later passes read the same bytes).
    """
    if check:
        _check_finite(name, raw, ckpts)
    b = _flat32(raw[0])
    if recipe.merge_method != "dare":
        return _Block(b, tuple(_flat32(t) for t in raw[1:]), False)
    base, bt = ckpts[0], torch.from_numpy(b)
    p, seed = recipe.parameters["p"], recipe.parameters["seed"]
    numel = math.prod(base.shape(name))
    start = 0 if rows is None else rows[0] * (numel // base.shape(name)[0])
    taus = [drop_and_rescale(torch.from_numpy(_flat32(t)) - bt, p, seed + i, name, numel, start)
            for i, t in enumerate(raw[1:])]
    return _Block(b, tuple(t.numpy() for t in taus), True)


# --- exact top-k thresholds ------------------------------------------------------------------------------
#: The exact top-k first estimates each threshold from a sample (one row in SAMPLE_STRIDE of every
#: tensor: under 1% of the bytes), then finds it exactly in one read pass that counts the entries above
#: the sample's bracket and keeps those inside it. So an exact global trim reads its inputs about
#: twice, not three times. If the bracket misses (it is wide enough that this is very rare), a
#: radix-select pass finishes the job, and the result is exact either way.
SAMPLE_STRIDE = 256
#: Entries sampled from one tensor held in memory (a per-tensor trim).
SAMPLE_ENTRIES = 1 << 16


def _bracket(sample: torch.Tensor, n: int, k: int) -> tuple[float, float, float]:
    """``lo, hi`` that hold the k-th largest of ``n`` values with high probability, given a sample of
    them, and the fraction of the sample inside ``[lo, hi]`` (a point mass, such as DARE's zeros, counts)."""
    sample = sample[torch.isfinite(sample)]
    m = sample.numel()
    if m < 64:
        return 0.0, math.inf, 1.0
    q = k / n
    at = (1 - q) * m  # ascending position of the k-th largest in the sample
    margin = 5 * math.sqrt(m * q * (1 - q)) + 0.001 * m + 4  # 5 standard errors, plus slack for a non-random sample
    lo_i, hi_i = math.floor(at - margin), math.ceil(at + margin)
    ends = np.partition(sample.numpy(), [max(lo_i, 0), min(hi_i, m - 1)])  # both order statistics at once
    lo = 0.0 if lo_i < 0 else float(ends[lo_i])
    hi = math.inf if hi_i >= m else float(ends[hi_i])
    return lo, hi, float(((sample >= lo) & (sample <= hi)).float().mean())


#: At most this many candidates (64 MB) a task vector are kept; a bracket holding more counts as a miss.
MAX_CANDIDATES = 1 << 24


class _Bracketed:
    """The pass that finds K exact k-th largest values of ``|tau_i|`` inside their brackets."""

    def __init__(self, brackets, n: int, k: int, histograms: bool):
        self.n, self.k = n, k
        K = len(brackets)
        self.lo = np.array([b[0] for b in brackets], np.float32)
        self.hi = np.array([b[1] for b in brackets], np.float32)
        cap = min(n, int(2 * max(b[2] for b in brackets) * n) + 4096, MAX_CANDIDATES)
        self.cand = np.empty((K, cap + 1), np.float32)  # one spare slot: see fused.bracket_count
        self.above = np.zeros(K, np.int64)
        self.n_cand = np.zeros(K, np.int64)
        self.hist = np.zeros((K, 1 << 16 if histograms else 0), np.int64)
        self.scratch = np.empty(0, np.float32)

    def count(self, blk: _Block) -> None:
        if self.scratch.size < blk.b.size:
            self.scratch = np.empty(blk.b.size, np.float32)
        fused.bracket_count(blk.b, blk.srcs, blk.is_tau, self.lo, self.hi, self.above, self.n_cand, self.cand,
                            self.hist, self.scratch)

    def result(self, i: int) -> KthLargest | None:
        """The exact k-th largest of task ``i``, or None if it is not inside the bracket."""
        above, n_cand, k = int(self.above[i]), int(self.n_cand[i]), self.k
        if n_cand > self.cand.shape[1] - 1 or not above < k <= above + n_cand:
            return None
        c = torch.from_numpy(self.cand[i, :n_cand])
        v = torch.kthvalue(c, n_cand - (k - above) + 1).values
        return KthLargest(float(v), int(v.view(torch.int32)), above + int((c > v).sum()), int((c == v).sum()), k)


def _sample_units(units, base: Checkpoint) -> list[tuple[str, tuple[int, int] | None]]:
    """About one row in SAMPLE_STRIDE of every tensor in ``units``; 1-D tensors are read whole."""
    out = []
    for name in dict.fromkeys(n for n, _ in units):
        shape = base.shape(name)
        if len(shape) < 2:
            out.append((name, None))
        else:
            picked = range(SAMPLE_STRIDE // 2, shape[0], SAMPLE_STRIDE) or [shape[0] // 2]
            out += [(name, (r, r + 1)) for r in picked if shape[0]]
    return out


def _thresholds(units, ckpts, recipe, reader: _Reader, progress, what: str) -> _Trim:
    """Exact top-k of |tau_i| over ``units`` (name, rows), for every model at once, streamed."""
    base, K = ckpts[0], len(ckpts) - 1
    load = lambda u: reader(u[0], u[1], ckpts)  # noqa: E731
    n = sum(math.prod(base.shape(name)) if rows is None else (rows[1] - rows[0]) * math.prod(base.shape(name)[1:])
            for name, rows in units)
    k = count_for_density(n, recipe.parameters["density"])
    samples = [[] for _ in range(K)]
    for (name, rows), raw in tqdm(_prefetch(_sample_units(units, base), load), total=None, desc=f"{what}: sample",
                                  disable=not progress, leave=False):
        stride = SAMPLE_STRIDE if rows is None else 1
        for i, t in enumerate(_block(name, rows, raw, ckpts, recipe, check=False).taus()):
            samples[i].append(t.abs()[::stride])
    brackets = [_bracket(torch.cat(s) if s else torch.zeros(0), n, k) for s in samples]
    finder = _Bracketed(brackets, n, k, histograms=True)
    for (name, rows), raw in tqdm(_prefetch(units, load), total=len(units), desc=f"{what}: count",
                                  disable=not progress, leave=False):
        finder.count(_block(name, rows, raw, ckpts, recipe))
    kths = [finder.result(i) for i in range(K)]
    missed = [i for i in range(K) if kths[i] is None]
    if missed:  # the bracket missed: the histograms of pass 1 start a radix select; one more pass ends it
        selectors = []
        for i in missed:
            sel = RadixSelect()
            sel.hist, sel.n = torch.from_numpy(finder.hist[i].copy()), n
            sel.choose_bucket(k)
            selectors.append(sel)
        for (name, rows), raw in tqdm(_prefetch(units, load), total=len(units), desc=f"{what}: refine",
                                      disable=not progress, leave=False):
            taus = _block(name, rows, raw, ckpts, recipe, check=False).taus()
            for sel, i in zip(selectors, missed):
                sel.refine(taus[i])
        for sel, i in zip(selectors, missed):
            kths[i] = sel.result()
    return _Trim(kths)


def _sample_step(n: int, row: int) -> int:
    """A stride that samples about SAMPLE_ENTRIES of ``n`` entries, prime to the ``row`` length so that
    the sample visits every column of a matrix, not the same few."""
    step = max(1, n // SAMPLE_ENTRIES)
    while step > 1 and math.gcd(step, row) != 1:
        step -= 1
    return step


def _tensor_trim(blk: _Block, density: float, row: int) -> _Trim:
    """The exact top-``density`` of each task vector of one tensor held in memory (a per-tensor trim).

    ``row`` is the length of the tensor's rows (its entries past the first dimension).
    """
    n = blk.b.size
    k = count_for_density(n, density)
    if n <= SAMPLE_ENTRIES:
        brackets = [(0.0, math.inf, 1.0)] * len(blk.srcs)
    else:
        step = _sample_step(n, row)
        b = blk.b[::step]
        brackets = [_bracket(torch.from_numpy(np.abs(s[::step] if blk.is_tau else s[::step] - b)), n, k) for s in blk.srcs]
    finder = _Bracketed(brackets, n, k, histograms=False)
    finder.count(blk)
    kths = [finder.result(i) for i in range(len(blk.srcs))]
    if any(kth is None for kth in kths):  # a missed bracket: the radix select, in torch, on this tensor
        taus = blk.taus()
        kths = [kth or kth_largest({"tau": taus[i]}, k) for i, kth in enumerate(kths)]
    return _Trim(kths)


class _Trim:
    """Exact top-k trims of K task vectors, applied one block at a time, in order.

    Entries above the k-th largest value are kept; of the entries equal to it,
    the first ``k - n_greater`` in position order (the rule of :class:`lsedu.topk.TopKMasker`).
    :meth:`runs` cuts each block into runs in which every task keeps all of
    its ties or none, the form the fused kernels take.
    """

    def __init__(self, kths: Sequence[KthLargest]):
        self.thr = np.array([kth.value for kth in kths], np.float32)
        self.take = [kth.k - kth.n_greater for kth in kths]  # ties still to keep
        self.ties_left = [kth.n_equal for kth in kths]  # ties not yet passed (exact while counted)

    def runs(self, blk: _Block) -> list[tuple[int, int, np.ndarray]]:
        """``(start, stop, allow)`` runs covering the block; ``allow[i]``: task i keeps its ties there."""
        n, K = blk.b.size, len(self.take)
        allow = np.array([t > 0 for t in self.take])
        if not any(0 < t < left for t, left in zip(self.take, self.ties_left)):
            return [(0, n, allow)]  # every tie ahead is kept (or none is): nothing to count
        counts = np.zeros(K, np.int64)
        fused.count_equal(blk.b, blk.srcs, blk.is_tau, self.thr, counts)
        cut = {}  # task -> the position after its last kept tie
        for i in range(K):
            c = int(counts[i])
            if 0 < self.take[i] < c:
                cut[i] = fused.nth_equal(blk.b, blk.srcs[i], blk.is_tau, self.thr[i], self.take[i]) + 1
            self.take[i] -= min(c, self.take[i])
            self.ties_left[i] -= c
        points = sorted({0, n, *cut.values()})
        return [(a, z, np.array([allow[i] and (i not in cut or z <= cut[i]) for i in range(K)]))
                for a, z in zip(points, points[1:])]


def _merge_block(blk: _Block, recipe: MergeRecipe, trim: _Trim | None, loaded) -> tuple[torch.Tensor, list]:
    """The merged float32 entries of one block, and the masks used (for localize_stitch).

    ``trim`` holds the exact top-k thresholds (global, or of this tensor for a
    per-tensor trim); ``loaded`` the parts of masks read from disk.
    """
    m, p = recipe.merge_method, recipe.parameters
    out = np.empty(blk.b.size, np.float32)
    if m == "task_arithmetic" or (m == "dare" and p["then"] == "task_arithmetic"):
        fused.task_arithmetic(blk.b, blk.srcs, blk.is_tau, p["lambda"], out)
        return torch.from_numpy(out), []
    if loaded is not None:  # masks from disk: the reference function
        masks = [mk.reshape(-1) for mk in loaded]
        stitched = _stitched_vector([{"x": t} for t in blk.taus()], [{"x": mk} for mk in masks])["x"]
        return torch.from_numpy(blk.b) + stitched, loaded
    masks = np.empty((len(blk.srcs), blk.b.size), np.bool_) if m == "localize_stitch" else None
    for a, z, allow in trim.runs(blk):
        b, srcs = blk.b[a:z], tuple(s[a:z] for s in blk.srcs)
        if m == "localize_stitch":
            fused.stitch(b, srcs, blk.is_tau, trim.thr, allow, out[a:z], masks[:, a:z])
        else:
            fused.ties(b, srcs, blk.is_tau, trim.thr, allow, p["lambda"], out[a:z])
    return torch.from_numpy(out), [] if masks is None else [torch.from_numpy(mk) for mk in masks]


def merge_checkpoints(
    recipe: MergeRecipe,
    output: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> MergeReport:
    """Run ``recipe``, streaming, and write a sharded safetensors folder; returns a :class:`MergeReport`.

    The same lsedu functions as in memory merge each tensor, so the result
    equals ``lsedu.ties_merge(...)`` (etc.) on the loaded state dicts, except
    that task vectors are always formed in float32 (in memory they keep the
    checkpoint's dtype).
    """
    start = time.perf_counter()
    out = Path(output) if output is not None else recipe.output
    if out is None:
        raise ValueError("no output folder: give 'output:' in the recipe or --output")
    base = Checkpoint(recipe.base_model)
    models = [Checkpoint(m) for m in recipe.models]
    check_layouts(base, models)
    inputs = [f for c in (base, *models) for f in c.files()] + list(recipe.load_masks or [])
    _check_output(out, inputs, overwrite)
    if recipe.save_masks is not None:
        _check_output(recipe.save_masks, inputs, overwrite=True)

    floating = [n for n in base if base.dtype(n).is_floating_point]
    names = select(floating, recipe.include, recipe.exclude)  # the rest is copied from the base
    merged_names = set(names)
    loaded = None
    if recipe.load_masks is not None:
        loaded = [load_masks(p) for p in recipe.load_masks]
        for i, lm in enumerate(loaded):
            if set(lm) != merged_names:
                raise ValueError(f"masks.load[{i}] ({recipe.load_masks[i]}) covers other tensors than this merge: "
                                 f"{sorted(set(lm) ^ merged_names)[:3]}")
            for n in names:
                if tuple(lm[n].shape) != base.shape(n):
                    raise ValueError(f"masks.load[{i}][{n!r}] has shape {tuple(lm[n].shape)}, "
                                     f"the tensor has {base.shape(n)}")

    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # Inputs larger than the page cache could hold are evicted before a second pass reads them again:
    # read them, and write the output, past it (O_DIRECT), which spares the core that copying through
    # the cache costs.
    direct = base.nbytes() * (1 + len(models)) > psutil.virtual_memory().available // 2
    for c in (base, *models):
        c.direct = direct
    writer = _WriteBehind(ShardedWriter(tmp, [(n, base.shape(n), base.dtype(n)) for n in base], recipe.shard_size,
                                        metadata={"lsedu_merge_method": recipe.merge_method}, direct=direct))
    mask_writers: list[MaskWriter] = []
    mask_dir_tmp = None
    try:
        per_tensor = recipe.merge_method in ("ties", "dare") and recipe.parameters.get("trim") == "per_tensor" and (
            recipe.merge_method == "ties" or recipe.parameters["then"] == "ties")
        # A per-tensor trim takes a tensor of up to PER_TENSOR_WHOLE_ENTRIES whole; a bigger one is cut.
        whole = [None] if per_tensor else None
        units = {n: whole if whole and math.prod(base.shape(n)) <= PER_TENSOR_WHOLE_ENTRIES else chunks(base.shape(n))
                 for n in names}
        reader, ckpts = _Reader(), [base, *models]
        trim = None
        if recipe.global_threshold:
            flat_units = [(n, r) for n in names for r in units[n]]
            trim = _thresholds(flat_units, ckpts, recipe, reader, progress, "global top-k")
        if recipe.save_masks is not None:
            mask_dir_tmp = recipe.save_masks.resolve().parent / f".{recipe.save_masks.name}.tmp-{os.getpid()}"
            shutil.rmtree(mask_dir_tmp, ignore_errors=True)
            mask_dir_tmp.mkdir(parents=True)
            meta = {"density": str(recipe.parameters["density"]), "base_model": str(recipe.base_model)}
            mask_writers = [MaskWriter(mask_dir_tmp / f"mask_{i}.safetensors", [(n, base.shape(n)) for n in names],
                                       {**meta, "model": str(p)}) for i, p in enumerate(recipe.models)]
        work = [(n, r) for n in base for r in (units[n] if n in merged_names else chunks(base.shape(n)))]
        # The bytes one pass reads: the base's every tensor, the models' merged ones.
        one_pass = base.nbytes() + sum(m.nbytes_of(n) for m in models for n in names)

        def load(unit):
            name, rows = unit
            return reader(name, rows, ckpts if name in merged_names else [base])

        current, side_bytes = None, 0
        desc = "merge (pass 2 of 2)" if recipe.global_threshold else "merge"
        for (name, rows), raw in tqdm(_prefetch(work, load), total=len(work), desc=desc, disable=not progress):
            if name not in merged_names:
                writer.write(name, raw[0].clone())  # out of the reader's buffer, which it will reuse
                continue
            cut = len(units[name]) > 1
            if per_tensor and cut and name != current:  # this tensor's own thresholds, streamed
                own = _Reader()  # not `reader`: its thread is reading the next unit into its buffers
                trim = _thresholds([(name, r) for r in units[name]], ckpts, recipe, own, False, name)
                side_bytes += own.bytes
            current = name
            if recipe.merge_method == "average":
                _check_finite(name, raw, ckpts)
                writer.write(name, uniform_soup([{name: t} for t in raw[1:]])[name])
                continue
            first_read = not recipe.global_threshold and not (per_tensor and cut)
            blk = _block(name, rows, raw, ckpts, recipe, check=first_read)
            del raw
            if per_tensor and not cut:  # the whole tensor is in memory: rank it there
                trim = _tensor_trim(blk, recipe.parameters["density"], math.prod(base.shape(name)[1:]))
            part = None
            if loaded is not None:
                part = [lm[name] if rows is None else lm[name][rows[0] : rows[1]] for lm in loaded]
            merged, masks = _merge_block(blk, recipe, trim, part)
            shape = base.shape(name) if rows is None else (rows[1] - rows[0], *base.shape(name)[1:])
            writer.write(name, merged.reshape(shape).to(base.dtype(name)))
            for w, mk in zip(mask_writers, masks):
                w.write(name, mk)
        writer.close()
        for w in mask_writers:
            w.close()
        if recipe.copy_files and base.path.is_dir():
            for f in COPY_FILES:
                if (base.path / f).exists():
                    shutil.copy2(base.path / f, tmp / f)
        (tmp / "lsedu_merge.json").write_text(json.dumps({
            "merge_method": recipe.merge_method, "parameters": recipe.parameters,
            "base_model": str(recipe.base_model), "models": [str(m) for m in recipe.models],
            "include": recipe.include, "exclude": recipe.exclude,
        }, indent=2) + "\n")
        _replace_dir(tmp, out)
        saved = []
        if mask_dir_tmp is not None:
            _replace_dir(mask_dir_tmp, recipe.save_masks.resolve())
            saved = [recipe.save_masks.resolve() / f"mask_{i}.safetensors" for i in range(len(models))]
    except BaseException:
        writer.abort()
        for w in mask_writers:
            w.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        if mask_dir_tmp is not None:
            shutil.rmtree(mask_dir_tmp, ignore_errors=True)
        raise
    passes = (reader.bytes + side_bytes) / max(one_pass, 1)  # how many times each input byte was read, on average
    return MergeReport(out, recipe.merge_method, len(base), len(names), passes, time.perf_counter() - start,
                       base.nbytes() * (1 + len(models)), saved)


def _remove_stale(out: Path) -> None:
    """Remove temporary folders that a killed merge into ``out`` left behind (their process is gone)."""
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists() and os.name == "posix":
            shutil.rmtree(stale, ignore_errors=True)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished ``src`` to ``dst``; an existing ``dst`` is swapped out only after ``src`` is complete."""
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def merge(recipe: str | os.PathLike | MergeRecipe, output=None, *, overwrite: bool = False,
          progress: bool = True) -> MergeReport:
    """Python API of ``lsedu merge``: a recipe file (or :class:`MergeRecipe`) in, a merged folder out."""
    if not isinstance(recipe, MergeRecipe):
        recipe = load_recipe(recipe)
    return merge_checkpoints(recipe, output, overwrite=overwrite, progress=progress)
