"""``lsedu merge --plan``: every check a merge can make from headers and paths, before any tensor data is read.

:func:`plan` opens the checkpoints' headers (never their tensors), and checks,
in this order, each failure a one-line error naming its culprit:

1. the layouts: every model has the base's tensor names, shapes and dtypes,
   the configs (``config.json`` next to the weights) declare the same
   vocabulary size, and the tokenizer files next to the weights map every
   token to the same id (:func:`token_ids`); no merged tensor is float64 (the tool computes in
   float32; the Python API merges float64 exactly);
2. the tensors merged: ``include``/``exclude`` select at least one
   floating-point tensor with entries, and loaded masks cover exactly those;
3. the paths written (the output folder and ``masks.save``): none is an
   input or holds one, none lies inside another, none replaces an existing
   folder without ``--overwrite``, their parent is a writable folder, and
   the file system has room for them.

Every merge runs these same checks before its first byte is written
(:func:`lsedu.merge.run.merge_checkpoints` calls :func:`plan`). With
``estimate=True`` the plan also measures this machine's read speed (a 16 MB
sample of the inputs) and merge speed (the recipe's own steps on a block of
random numbers), and estimates the merge's peak memory, disk and time.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import torch

from .blocks import Block, check_computable, chunks
from .io import READ_SLACK, Checkpoint, load_masks
from .recipe import MergeRecipe, select_tensors

#: A per-tensor trim ranks each tensor on its own, so a tensor merged whole is read once, while one
#: cut into blocks is read about twice (a sample, a pass to count around it, the merge). Up to this many entries
#: (16M: every tensor of GPT2-XL but its 80M-entry embedding) a per-tensor trim takes the tensor
#: whole: its memory is then a few copies of the largest such tensor per input (64 MB each in float32).
PER_TENSOR_WHOLE_ENTRIES = 1 << 24


def units_of(shape: tuple[int, ...], per_tensor: bool) -> list[tuple[int, int] | None]:
    """The pieces one tensor is merged in: ``[None]`` (whole) for a per-tensor trim of a tensor of up to
    PER_TENSOR_WHOLE_ENTRIES entries, else :func:`lsedu.merge.blocks.chunks` (blocks of rows).

    Not called in a notebook: ``lsedu merge`` cuts its tensors with it, and its plan sizes memory by it; see the
    appendix (appendix_streaming_merge.ipynb).
    """
    return [None] if per_tensor and math.prod(shape) <= PER_TENSOR_WHOLE_ENTRIES else chunks(shape)


def _entries(shape: tuple[int, ...], rows: tuple[int, int] | None) -> int:
    return math.prod(shape) if rows is None else (rows[1] - rows[0]) * math.prod(shape[1:])


#: The read-speed sample of ``plan(estimate=True)``: this many bytes of the largest input tensor.
SAMPLE_BYTES = 16 << 20


# --- the checks -----------------------------------------------------------------------------------
def check_layouts(base: Checkpoint, models: Sequence[Checkpoint]) -> None:
    """Every model has the base's vocabulary, tensor names, shapes and dtypes; errors name the tensor and the files.

    Not called in a notebook: ``lsedu merge`` (and ``lsedu merge --plan``) check with it before anything is
    written; see the appendix (appendix_streaming_merge.ipynb).
    """
    vocab = _vocab_size(base)
    tokens = token_ids(base.folder)
    for m in models:
        theirs = _vocab_size(m)
        if vocab is not None and theirs is not None and theirs != vocab:
            raise ValueError(f"vocabulary sizes differ: {vocab} in {base.folder / 'config.json'}, {theirs} in "
                             f"{m.folder / 'config.json'}; merge only models that share one vocabulary")
        _check_same_tokens(tokens, token_ids(m.folder))
        extra = [n for n in m if n not in base]
        missing = [n for n in base if n not in m]
        if missing:
            raise ValueError(f"tensor {missing[0]!r} is in the base ({base.file_of(missing[0])}) but not in {m.path}"
                             + (f" ({len(missing) - 1} more missing)" if len(missing) > 1 else ""))
        if extra:
            raise ValueError(f"tensor {extra[0]!r} is in {m.file_of(extra[0])} but not in the base {base.path}"
                             + (f" ({len(extra) - 1} more)" if len(extra) > 1 else ""))
        embeddings = set(base.tied_weights().values())
        for n in base:
            if m.shape(n) != base.shape(n):
                a, b = base.shape(n), m.shape(n)
                rows = len(a) == 2 and len(b) == 2 and a[1] == b[1] and (n in embeddings or "embed" in n or "wte" in n)
                hint = (f": the embeddings have {a[0]} and {b[0]} rows, so the vocabularies differ (a fine-tune that "
                        "added tokens); merge only models that share one vocabulary") if rows else ""
                raise ValueError(f"shape mismatch at tensor {n!r}: {a} in {base.file_of(n)}, {b} in {m.file_of(n)}"
                                 + hint)
            if m.dtype(n) != base.dtype(n):
                raise ValueError(f"dtype mismatch at tensor {n!r}: {base.dtype(n)} in {base.file_of(n)}, "
                                 f"{m.dtype(n)} in {m.file_of(n)}")


#: The tokenizer files :func:`token_ids` reads, in the order it tries them (the first one a folder has wins).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt")


def token_ids(folder: Path) -> tuple[Path, dict[str, int]] | None:
    """The token -> id map of the tokenizer saved in ``folder``, and the file it came from; None if it has none.

    ``tokenizer.json`` (a fast tokenizer: its model's vocabulary and its
    added tokens), else ``vocab.json`` (GPT-2's BPE), else ``vocab.txt``
    (WordPiece: the line number is the id). Two models whose maps differ
    give the same embedding row to different tokens, and their merge reads
    garbage for those tokens, even when the vocabulary sizes agree.

    Not called in a notebook: ``lsedu merge`` (and ``--plan``) compare every model's with the base's before merging;
    see the appendix (appendix_streaming_merge.ipynb).
    """
    for name in TOKENIZER_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            if name == "vocab.txt":
                return path, {tok: i for i, tok in enumerate(path.read_text(encoding="utf-8").splitlines())}
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable tokenizer file ({e})") from e
        if name == "vocab.json":
            ids = data
        else:
            vocab = (data.get("model") or {}).get("vocab") if isinstance(data, dict) else None
            if isinstance(vocab, list):  # Unigram: [[piece, score], ...], the position is the id
                vocab = {piece[0]: i for i, piece in enumerate(vocab) if isinstance(piece, list) and piece}
            ids = dict(vocab) if isinstance(vocab, dict) else {}
            added = data.get("added_tokens") if isinstance(data, dict) else None
            for t in added if isinstance(added, list) else []:
                if isinstance(t, dict) and "content" in t and "id" in t:
                    ids[t["content"]] = t["id"]
        if not isinstance(ids, dict) or not ids:
            raise ValueError(f"{path}: holds no token -> id map")
        return path, ids
    return None


def _check_same_tokens(base: tuple[Path, dict[str, int]] | None, model: tuple[Path, dict[str, int]] | None) -> None:
    """One line naming the first token whose id differs between two tokenizers, with how many differ in all."""
    if base is None or model is None:
        return  # nothing to compare: the vocabulary size and the embedding shapes are still checked
    (bpath, b), (mpath, m) = base, model
    differ = sorted(t for t in b.keys() | m.keys() if b.get(t) != m.get(t))
    if differ:
        t = differ[0]
        where = lambda ids: "absent" if t not in ids else f"id {ids[t]}"  # noqa: E731
        raise ValueError(f"tokenizers differ: token {t!r} is {where(b)} in {bpath} and {where(m)} in {mpath} "
                         f"({len(differ)} token(s) differ); their embedding rows mean different tokens, so the merge "
                         f"would mix them: merge only models that share the base's tokenizer")


def _vocab_size(c: Checkpoint) -> int | None:
    """``vocab_size`` of the ``config.json`` next to the weights (or of its ``text_config``), if it gives one."""
    cfg = c.config()
    text = cfg.get("text_config")
    v = cfg.get("vocab_size", text.get("vocab_size") if isinstance(text, dict) else None)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _nearest_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_outputs(outputs: dict[str, Path], inputs: Sequence[Path], overwrite: bool) -> None:
    """The folders a merge writes (``{"output": ..., "masks.save": ...}``) are safe to write, before any is.

    None of them is an input or holds one, none lies inside another, none
    replaces an existing folder without ``overwrite`` (and none ever replaces
    a file), and each one's parent is a folder this process may write in.

    Not called in a notebook: ``lsedu merge`` (and ``lsedu merge --plan``) check with it before anything is
    written; see the appendix (appendix_streaming_merge.ipynb).
    """
    resolved = {key: Path(p).resolve() for key, p in outputs.items()}
    ins = [Path(p).resolve() for p in inputs]
    for key, out in resolved.items():
        for p in ins:
            if out == p or out in p.parents:
                raise ValueError(f"{key} {out} would overwrite the input {p}; choose another folder")
        for other, o in resolved.items():
            if other == key:
                continue
            if o == out:
                raise ValueError(f"{key} and {other} are the same folder {out}; give each its own")
            if o in out.parents:
                raise ValueError(f"{key} {out} lies inside {other} {o}; give each its own folder")
        if out.exists() and not out.is_dir():
            raise ValueError(f"{key} {out} exists and is a file, not a folder; lsedu never replaces it")
        if out.exists() and not overwrite:
            raise FileExistsError(f"{key} {out} already exists; remove it or pass --overwrite")
        here = _nearest_existing(out.parent)
        if not here.is_dir():
            raise ValueError(f"{key} {out} cannot be created: {here} is a file, not a folder")
        if not os.access(here, os.W_OK | os.X_OK):
            raise PermissionError(f"{key} {out} cannot be created: no permission to write in {here}")


def check_space(needs: dict[str, tuple[Path, int]]) -> None:
    """Each file system has room for what the merge writes there (``{"output": (folder, bytes)}``).

    Not called in a notebook: ``lsedu merge`` (and ``lsedu merge --plan``) check with it before anything is
    written; see the appendix (appendix_streaming_merge.ipynb).
    """
    by_device: dict[int, tuple[Path, int, list[str]]] = {}
    for key, (folder, nbytes) in needs.items():
        here = _nearest_existing(Path(folder).resolve())
        dev = here.stat().st_dev
        where, total, keys = by_device.get(dev, (here, 0, []))
        by_device[dev] = (where, total + nbytes, keys + [key])
    for where, total, keys in by_device.values():
        free = shutil.disk_usage(where).free
        if total > free:
            raise OSError(f"not enough disk space: {' and '.join(keys)} need {_size(total)} in {where}, "
                          f"which has {_size(free)} free")


# --- the plan -------------------------------------------------------------------------------------------
@dataclass
class MergePlan:
    """What a merge will read, write and hold, found before any tensor data is read (:func:`plan`).

    ``names`` are the tensors merged (the rest is copied from the base);
    ``outputs`` the folders written, by recipe key; ``read_bytes`` what the
    merge reads in all its passes; ``loaded_masks`` the masks of
    ``masks.load``, checked. The ``estimate_*`` fields are filled by
    ``plan(estimate=True)`` only: peak memory in bytes, seconds, and the
    read and merge speeds they come from (bytes and entries a second).

    Not called in a notebook: ``lsedu merge --plan`` prints it (:meth:`summary`); see the appendix
    (appendix_streaming_merge.ipynb).
    """

    recipe: MergeRecipe
    base: Checkpoint
    models: list[Checkpoint]
    names: list[str]
    outputs: dict[str, Path]
    unit_entries: int
    read_bytes: int
    write_bytes: dict[str, int]
    free_bytes: dict[str, int] = field(default_factory=dict)
    loaded_masks: list | None = None
    estimate_memory: int | None = None
    estimate_seconds: float | None = None
    read_speed: float | None = None
    merge_speed: float | None = None

    @property
    def merged_entries(self) -> int:
        return sum(math.prod(self.base.shape(n)) for n in self.names)

    def summary(self) -> str:
        """The plan as a person reads it: the checks passed, then the estimates."""
        r, base = self.recipe, self.base
        lines = [f"plan: {r.merge_method} of {len(self.models)} model(s) onto {base.path}",
                 f"  checked: {len(base)} tensors, names, shapes and dtypes agree in all {1 + len(self.models)} "
                 f"inputs" + (f"; vocabulary {_vocab_size(base)}" if _vocab_size(base) else ""),
                 f"  merged: {len(self.names)} tensors ({self.merged_entries:,} entries); "
                 f"{len(base) - len(self.names)} copied from the base"]
        for head, saved in self.base.tied_weights().items():
            lines.append(f"  tied: {head} is {saved} (saved once; merged with it)")
        for key, out in self.outputs.items():
            lines.append(f"  writes {key}: {out} ({_size(self.write_bytes[key])}; "
                         f"{_size(self.free_bytes.get(key, 0))} free there)")
        lines.append(f"  reads: {_size(self.read_bytes)} in all passes")
        if self.estimate_memory is not None:
            lines.append(f"  estimate: peak memory about {_size(self.estimate_memory)}, time about "
                         f"{self.estimate_seconds:.0f} s (read at {_size(self.read_speed)}/s, measured on a "
                         f"{_size(SAMPLE_BYTES)} sample; merge at {self.merge_speed / 1e6:.0f}M entries/s, "
                         "measured on random numbers)")
        return "\n".join(lines)


def plan(recipe: MergeRecipe, output=None, *, overwrite: bool = False, estimate: bool = False) -> MergePlan:
    """Check ``recipe`` from headers and paths only, and return its :class:`MergePlan`; raises on any fault.

    Every check that does not need the tensors' values runs here, so an error
    shows at once, not after a long merge. ``estimate=True`` also measures
    this machine's read and merge speeds to estimate peak memory and time
    (it then reads a 16 MB sample; the checks read none).

    Not called in a notebook: ``lsedu merge --plan`` prints it, and every ``lsedu merge`` runs it first; see the
    appendix (appendix_streaming_merge.ipynb).
    """
    out = Path(output) if output is not None else recipe.output
    if out is None:
        raise ValueError("no output folder: give 'output:' in the recipe or --output")
    base = Checkpoint(recipe.base_model)
    models = [Checkpoint(m) for m in recipe.models]
    check_layouts(base, models)
    floating = [n for n in base if base.dtype(n).is_floating_point]
    names = select_tensors(base, floating, recipe.include, recipe.exclude)
    check_computable(base, names)
    if not names:
        raise ValueError("nothing to merge: include/exclude leave no floating-point tensor "
                         f"({len(floating)} of {len(base)} are floating-point); every tensor would be the base's")
    loaded = _check_loaded_masks(recipe, base, names)
    outputs = {"output": out.resolve()}
    if recipe.save_masks is not None:
        outputs["masks.save"] = recipe.save_masks.resolve()
    inputs = [f for c in (base, *models) for f in c.files()] + list(recipe.load_masks or [])
    check_outputs(outputs, inputs, overwrite)
    merged_entries = sum(math.prod(base.shape(n)) for n in names)
    write = {"output": base.nbytes() + (1 << 20)}  # the tensors, plus headers, configs and the recipe
    if recipe.save_masks is not None:
        write["masks.save"] = len(models) * (sum(-(-math.prod(base.shape(n)) // 8) for n in names) + (1 << 16))
    check_space({key: (outputs[key].parent, nbytes) for key, nbytes in write.items()})
    free = {key: shutil.disk_usage(_nearest_existing(outputs[key].parent)).free for key in outputs}
    per_tensor = recipe.steps.trim == "per_tensor"
    one_pass = base.nbytes() + sum(m.nbytes_of(n) for m in models for n in names)
    read = one_pass + (sum(m.nbytes_of(n) for m in (base, *models) for n in names) if recipe.global_threshold else 0)
    merged = set(names)
    unit = max(_entries(base.shape(n), r) for n in base for r in units_of(base.shape(n), per_tensor and n in merged))
    p = MergePlan(recipe, base, models, names, outputs, unit, read, write, free, loaded)
    if per_tensor:  # tensors cut into blocks are counted around their own threshold first
        p.read_bytes += sum(m.nbytes_of(n) for m in (base, *models) for n in names
                            if len(units_of(base.shape(n), True)) > 1)
    if estimate:
        _estimate(p, merged_entries)
    return p


def _check_loaded_masks(recipe: MergeRecipe, base: Checkpoint, names: Sequence[str]) -> list | None:
    """The masks of ``masks: {load: [...]}``, checked to cover exactly the merged tensors, shapes included."""
    if recipe.load_masks is None:
        return None
    loaded = [load_masks(p) for p in recipe.load_masks]
    for i, (path, lm) in enumerate(zip(recipe.load_masks, loaded)):
        if set(lm) != set(names):
            raise ValueError(f"masks.load[{i}] ({path}) covers other tensors than this merge: "
                             f"{sorted(set(lm) ^ set(names))[:3]}")
        for n in names:
            if tuple(lm[n].shape) != base.shape(n):
                raise ValueError(f"masks.load[{i}][{n!r}] has shape {tuple(lm[n].shape)}, the tensor has "
                                 f"{base.shape(n)}")
    return loaded


def _estimate(p: MergePlan, merged_entries: int) -> None:
    """Peak memory and time from the unit size and this machine's measured read and merge speeds."""
    unit = p.unit_entries
    itemsize = max(p.base.dtype(n).itemsize for n in p.base)
    k = len(p.models)
    # What run.py holds at once: the reader's two buffers per input (one unit read ahead), the block as float32,
    # the merged float32 entries and their cast, one more in the writer's thread, the masks; the global
    # thresholds' candidates (at most 64 MB a model) and histograms; and this process as it is now.
    held = 2 * (1 + k) * (unit * itemsize + READ_SLACK) + (1 + k) * unit * 4 + 3 * unit * 4 + k * unit
    if p.recipe.steps.trim is not None:
        held += k * (min(merged_entries, 1 << 24) * 4 + (1 << 16) * 8)
    p.estimate_memory = psutil.Process().memory_info().rss + held
    # Read speed: a sample of the largest input tensor, read as the merge reads.
    name = max(p.base, key=p.base.nbytes_of)
    shape = p.base.shape(name)
    rows = None
    if shape and p.base.nbytes_of(name) > SAMPLE_BYTES:
        rows = (0, max(1, SAMPLE_BYTES // max(1, p.base.nbytes_of(name) // shape[0])))
    t = time.perf_counter()
    got = p.base.read(name, rows).numel() * p.base.dtype(name).itemsize
    p.read_speed = got / max(time.perf_counter() - t, 1e-6)
    # Merge speed: the recipe's combine on a block of random numbers the size of one unit (at most 1M entries).
    n = max(1, min(unit, 1 << 20))
    g = np.random.default_rng(0)
    blk = Block(g.standard_normal(n, dtype=np.float32), tuple(g.standard_normal(n, dtype=np.float32)
                                                               for _ in range(k)), False)
    steps = p.recipe.steps
    trim = None
    if steps.trim is not None:
        from .thresholds import tensor_trim
        trim = tensor_trim(blk, steps.density, 1)
    masks = [torch.ones(n, dtype=torch.bool) for _ in range(k)] if p.recipe.load_masks else None
    t = time.perf_counter()
    steps.combine(blk, steps, trim, masks)
    p.merge_speed = n / max(time.perf_counter() - t, 1e-6)
    p.estimate_seconds = p.read_bytes / p.read_speed + merged_entries / p.merge_speed


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
