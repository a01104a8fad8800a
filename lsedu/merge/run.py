"""``lsedu merge``, the run: stream a recipe's merge, one tensor (or block of rows) at a time.

For each tensor name the run reads that tensor from every input
(:class:`lsedu.merge.io.Reader`, one unit ahead in a thread), merges it as
the recipe's :class:`~lsedu.merge.blocks.Steps` say, and writes it straight
into the output shard (one block behind, in a thread). Peak memory is a few
blocks per input, whatever the size of the model.

Methods whose trim is global (TIES, DARE then TIES, Localize-and-Stitch)
first find each task vector's exact threshold (:mod:`lsedu.merge.thresholds`):
one extra read pass, and no concatenation of the model.

What computes the merge: the readable lsedu functions themselves for the
average (``lsedu.uniform_soup``), DARE's drop (``lsedu.drop_rescale.drop_and_rescale``)
and stitching with loaded masks (``lsedu.stitch``); for task arithmetic,
TIES and dataless stitching, their fast paths in :mod:`lsedu.merge.fused`,
tested bit-identical to ``lsedu.task_arithmetic``, ``lsedu.ties_merge`` and
``lsedu.stitch``.

Nothing is lost: inputs are only read, the output is written into a hidden
temporary folder next to the destination and renamed only once complete, and
every name, shape and dtype is checked against the base before anything is
written.
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

import psutil
from tqdm.auto import tqdm

from ..task_vectors import select
from .blocks import block, chunks
from .io import Checkpoint, MaskWriter, Reader, ShardedWriter, WriteBehind, load_masks, prefetch
from .recipe import MergeRecipe, load_recipe
from .thresholds import tensor_trim, thresholds

#: Files copied from the base model's folder, so that ``from_pretrained`` finds them next to the weights.
COPY_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model")

#: A per-tensor trim ranks each tensor on its own, so a tensor merged whole is read once, while one
#: cut into blocks is read about twice (a sample, a pass to count around it, the merge). Up to this many entries
#: (16M: every tensor of GPT2-XL but its 80M-entry embedding) a per-tensor trim takes the tensor
#: whole: its memory is then a few copies of the largest such tensor per input (64 MB each in float32).
PER_TENSOR_WHOLE_ENTRIES = 1 << 24


# --- checks ------------------------------------------------------------------
def check_layouts(base: Checkpoint, models: Sequence[Checkpoint]) -> None:
    """Every model has the base's tensor names, shapes and dtypes; errors name the tensor and the files.

    Not called in a notebook: ``lsedu merge`` uses it before anything is written; see the appendix
    (appendix_streaming_merge.ipynb).
    """
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


def _loaded_masks(recipe: MergeRecipe, base: Checkpoint, names: Sequence[str]) -> list | None:
    """The masks of ``masks: {load: [...]}``, checked to cover exactly the merged tensors, shapes included."""
    if recipe.load_masks is None:
        return None
    loaded = [load_masks(p) for p in recipe.load_masks]
    for i, lm in enumerate(loaded):
        if set(lm) != set(names):
            raise ValueError(f"masks.load[{i}] ({recipe.load_masks[i]}) covers other tensors than this merge: "
                             f"{sorted(set(lm) ^ set(names))[:3]}")
        for n in names:
            if tuple(lm[n].shape) != base.shape(n):
                raise ValueError(f"masks.load[{i}][{n!r}] has shape {tuple(lm[n].shape)}, "
                                 f"the tensor has {base.shape(n)}")
    return loaded


# --- the merge -----------------------------------------------------------------
@dataclass
class MergeReport:
    """What a merge did: the output folder, the method, the tensors merged of all, how many times each input byte
    was read on average, the seconds it took, the bytes of the inputs and the mask files saved.

    Explained in the appendix (appendix_streaming_merge.ipynb), which reads the saved masks off it.
    """

    output: Path
    method: str
    tensors: int
    merged_tensors: int
    read_passes: float
    seconds: float
    input_bytes: int
    masks: list[Path] = field(default_factory=list)


class _Outputs:
    """The merged folder and the mask files, written under temporary names and renamed once complete."""

    def __init__(self, out: Path, recipe: MergeRecipe, base: Checkpoint, direct: bool):
        self.out, self.recipe = out, recipe
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(out)
        self.tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        self.writer = WriteBehind(ShardedWriter(self.tmp, [(n, base.shape(n), base.dtype(n)) for n in base],
                                                recipe.shard_size, metadata={"lsedu_merge_method": recipe.merge_method},
                                                direct=direct))
        self.mask_writers: list[MaskWriter] = []
        self.mask_tmp = None

    def open_masks(self, base: Checkpoint, names: Sequence[str]) -> None:
        """Start the mask files of ``masks: {save: FOLDER}``, if the recipe asks for them."""
        recipe = self.recipe
        if recipe.save_masks is not None:
            self.mask_tmp = recipe.save_masks.resolve().parent / f".{recipe.save_masks.name}.tmp-{os.getpid()}"
            shutil.rmtree(self.mask_tmp, ignore_errors=True)
            self.mask_tmp.mkdir(parents=True)
            meta = {"density": str(recipe.parameters["density"]), "base_model": str(recipe.base_model)}
            self.mask_writers = [MaskWriter(self.mask_tmp / f"mask_{i}.safetensors", [(n, base.shape(n)) for n in names],
                                            {**meta, "model": str(p)}) for i, p in enumerate(recipe.models)]

    def finish(self, base: Checkpoint) -> list[Path]:
        """Close every file, add the base's config files and the recipe, rename into place; the mask files."""
        recipe = self.recipe
        self.writer.close()
        for w in self.mask_writers:
            w.close()
        if recipe.copy_files and base.path.is_dir():
            for f in COPY_FILES:
                if (base.path / f).exists():
                    shutil.copy2(base.path / f, self.tmp / f)
        (self.tmp / "lsedu_merge.json").write_text(json.dumps({
            "merge_method": recipe.merge_method, "parameters": recipe.parameters,
            "base_model": str(recipe.base_model), "models": [str(m) for m in recipe.models],
            "include": recipe.include, "exclude": recipe.exclude,
        }, indent=2) + "\n")
        _replace_dir(self.tmp, self.out)
        if self.mask_tmp is None:
            return []
        _replace_dir(self.mask_tmp, recipe.save_masks.resolve())
        return [recipe.save_masks.resolve() / f"mask_{i}.safetensors" for i in range(len(recipe.models))]

    def abort(self) -> None:
        self.writer.abort()
        for w in self.mask_writers:
            w.abort()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.mask_tmp is not None:
            shutil.rmtree(self.mask_tmp, ignore_errors=True)


def merge_checkpoints(
    recipe: MergeRecipe,
    output: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> MergeReport:
    """Run ``recipe``, streaming, and write a sharded safetensors folder; returns a :class:`MergeReport`.

    The result equals the method's readable function (``lsedu.ties_merge``
    etc., see :mod:`lsedu.methods`) on the loaded state dicts, bit for bit,
    except that task vectors are always formed in float32 (in memory they
    keep the checkpoint's dtype). Task arithmetic, TIES and dataless
    stitching run in their fast paths (:mod:`lsedu.merge.fused`), which the
    tests hold equal to those functions.

    Explained in the appendix (appendix_streaming_merge.ipynb), whose ``lsedu merge`` runs it.
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
    loaded = _loaded_masks(recipe, base, names)
    # Inputs larger than the page cache could hold are evicted before a second pass reads them again:
    # read them, and write the output, past it (O_DIRECT), which spares the core that copying through
    # the cache costs.
    direct = base.nbytes() * (1 + len(models)) > psutil.virtual_memory().available // 2
    for c in (base, *models):
        c.direct = direct
    outputs = _Outputs(out.resolve(), recipe, base, direct)
    try:
        outputs.open_masks(base, names)
        passes = _stream(recipe, base, models, names, loaded, outputs, progress)
        saved = outputs.finish(base)
    except BaseException:
        outputs.abort()
        raise
    return MergeReport(out.resolve(), recipe.merge_method, len(base), len(names), passes,
                       time.perf_counter() - start, base.nbytes() * (1 + len(models)), saved)


def _stream(recipe: MergeRecipe, base: Checkpoint, models: Sequence[Checkpoint], names: Sequence[str], loaded,
            outputs: _Outputs, progress: bool) -> float:
    """Merge every tensor into ``outputs``, in the base's order; returns how many times each input byte was read."""
    steps, merged_names = recipe.steps, set(names)
    per_tensor = steps.trim == "per_tensor"
    # A per-tensor trim takes a tensor of up to PER_TENSOR_WHOLE_ENTRIES whole; a bigger one is cut.
    units = {n: [None] if per_tensor and math.prod(base.shape(n)) <= PER_TENSOR_WHOLE_ENTRIES else chunks(base.shape(n))
             for n in names}
    reader, ckpts = Reader(), [base, *models]
    trim = None
    if recipe.global_threshold:
        trim = thresholds([(n, r) for n in names for r in units[n]], ckpts, steps, reader, progress, "global top-k")
    work = [(n, r) for n in base for r in (units[n] if n in merged_names else chunks(base.shape(n)))]
    one_pass = base.nbytes() + sum(m.nbytes_of(n) for m in models for n in names)  # the base's all, the models' merged

    def load(unit):
        name, rows = unit
        return reader(name, rows, ckpts if name in merged_names else [base])

    current, side_bytes = None, 0
    desc = "merge (pass 2 of 2)" if recipe.global_threshold else "merge"
    for (name, rows), raw in tqdm(prefetch(work, load), total=len(work), desc=desc, disable=not progress):
        if name not in merged_names:
            outputs.writer.write(name, raw[0].clone())  # out of the reader's buffer, which it will reuse
            continue
        cut = len(units[name]) > 1
        if per_tensor and cut and name != current:  # this tensor's own thresholds, streamed
            own = Reader()  # not `reader`: its thread is reading the next unit into its buffers
            trim = thresholds([(name, r) for r in units[name]], ckpts, steps, own, False, name)
            side_bytes += own.bytes
        current = name
        first_read = not recipe.global_threshold and not (per_tensor and cut)
        blk = block(name, rows, raw, ckpts, steps.drop, check=first_read)
        del raw
        if per_tensor and not cut:  # the whole tensor is in memory: rank it there
            trim = tensor_trim(blk, steps.density, math.prod(base.shape(name)[1:]))
        part = None if loaded is None else [lm[name] if rows is None else lm[name][rows[0] : rows[1]] for lm in loaded]
        merged, masks = steps.combine(blk, steps, trim, part)
        shape = base.shape(name) if rows is None else (rows[1] - rows[0], *base.shape(name)[1:])
        outputs.writer.write(name, merged.reshape(shape).to(base.dtype(name)))
        for w, mk in zip(outputs.mask_writers, masks):
            w.write(name, mk)
    return (reader.bytes + side_bytes) / max(one_pass, 1)


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
    """Python API of ``lsedu merge``: a recipe file (or :class:`MergeRecipe`) in, a merged folder out.

    Explained in the appendix (appendix_streaming_merge.ipynb), which merges its Localize-and-Stitch recipe with it.
    """
    if not isinstance(recipe, MergeRecipe):
        recipe = load_recipe(recipe)
    return merge_checkpoints(recipe, output, overwrite=overwrite, progress=progress)
