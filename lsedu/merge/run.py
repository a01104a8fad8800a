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

Every output carries a model card, ``README.md``, and the same facts as JSON
in ``lsedu_merge.json``: the recipe, each input file with its sha256 (hashed
in a thread while the merge runs), the method and its parameters, the lsedu
and torch versions, and the time and peak memory the merge took
(:func:`model_card`).
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
import yaml
from tqdm.auto import tqdm

from .. import __version__, methods
from ..utils import sha256_file

from .blocks import block
from .io import Checkpoint, MaskWriter, Reader, ShardedWriter, WriteBehind, prefetch
from .plan import MergePlan, plan, units_of
from .recipe import MergeRecipe, load_recipe
from .thresholds import tensor_trim, thresholds

#: Files copied from the base model's folder, so that ``from_pretrained`` finds them next to the weights.
COPY_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model")


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
    """The merged folder and the mask files, written under temporary names and renamed once complete.

    Nothing exists under a final name until every file is complete; whatever
    fails (an error, a full disk, Ctrl-C), :meth:`abort` removes every
    temporary file, and an error while cleaning up never hides the first one.
    """

    def __init__(self, p: MergePlan, direct: bool):
        self.plan, self.recipe, self.direct = p, p.recipe, direct
        self.tmp: dict[str, Path] = {}  # recipe key -> its temporary folder, in the final folder's parent
        self.writer: WriteBehind | None = None
        self.mask_writers: list[MaskWriter] = []
        self.hasher: ThreadPoolExecutor | None = None
        self.hashes: dict[str, list[tuple[Path, Future]]] = {}  # input role -> its files and their sha256s

    def open(self) -> None:
        """Create the temporary folders and start the model's shards and the mask files."""
        p, recipe, base = self.plan, self.recipe, self.plan.base
        # the inputs' sha256s for the model card, read in a thread while the merge runs (hashlib releases the GIL)
        self.hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lsedu-merge-sha256")
        roles = {"base_model": base, **{f"models[{i}]": m for i, m in enumerate(p.models)}}
        self.hashes = {role: [(f, self.hasher.submit(sha256_file, f)) for f in c.files()] for role, c in roles.items()}
        for i, f in enumerate(recipe.load_masks or []):
            self.hashes[f"masks.load[{i}]"] = [(Path(f), self.hasher.submit(sha256_file, f))]
        for key, out in p.outputs.items():
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                _remove_stale(out)
                tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
            except OSError as e:
                raise OSError(f"{key} {out}: cannot create its folder ({e.strerror or e})") from e
            self.tmp[key] = tmp
        self.writer = WriteBehind(ShardedWriter(self.tmp["output"], [(n, base.shape(n), base.dtype(n)) for n in base],
                                                recipe.shard_size, metadata={"lsedu_merge_method": recipe.merge_method},
                                                direct=self.direct))
        if "masks.save" in self.tmp:
            meta = {"density": str(recipe.parameters["density"]), "base_model": str(recipe.base_model)}
            self.mask_writers = [MaskWriter(self.tmp["masks.save"] / f"mask_{i}.safetensors",
                                            [(n, base.shape(n)) for n in p.names], {**meta, "model": str(m)})
                                 for i, m in enumerate(recipe.models)]

    def finish(self, start: float) -> list[Path]:
        """Close every file, add the base's config files, the recipe and the model card, rename into place; the
        mask files. ``start`` is when the merge began (``time.perf_counter()``), for the card."""
        recipe, base, tmp = self.recipe, self.plan.base, self.tmp["output"]
        self.writer.close()
        for w in self.mask_writers:
            w.close()
        if recipe.copy_files and base.path.is_dir():
            for f in COPY_FILES:
                if (base.path / f).exists():
                    shutil.copy2(base.path / f, tmp / f)
        record = {
            "merge_method": recipe.merge_method, "parameters": recipe.parameters,
            "base_model": str(recipe.base_model), "models": [str(m) for m in recipe.models],
            "include": recipe.include, "exclude": recipe.exclude,
            "inputs": {role: {str(f): job.result() for f, job in files} for role, files in self.hashes.items()},
            "lsedu_version": __version__, "torch_version": torch.__version__,
            "python_version": platform.python_version(), "machine": f"{platform.system()} {platform.machine()}",
            "seconds": round(time.perf_counter() - start, 3), "peak_memory_bytes": peak_memory_bytes(),
        }
        (tmp / "lsedu_merge.json").write_text(json.dumps(record, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(record, self.plan.outputs["output"].name))
        outs = self.plan.outputs
        if "masks.save" in outs:  # the masks first: a merged model never appears without the masks it asked for
            _replace_dir(self.tmp["masks.save"], outs["masks.save"])
            self.tmp.pop("masks.save")
        _replace_dir(tmp, outs["output"])
        self.tmp.pop("output")
        return [outs["masks.save"] / f"mask_{i}.safetensors" for i in range(len(recipe.models))] \
            if "masks.save" in outs else []

    def close_hasher(self) -> None:
        """Stop hashing: files not started are dropped; one being read finishes in its thread."""
        if self.hasher is not None:
            self.hasher.shutdown(wait=False, cancel_futures=True)
            self.hasher = None

    def abort(self) -> None:
        """Close and remove every temporary file; errors here (a full disk again) are not raised."""
        self.close_hasher()
        for w in [self.writer, *self.mask_writers]:
            try:
                if w is not None:
                    w.abort()
            except Exception:  # noqa: BLE001  (the merge is failing already: report its error, not this one)
                pass
        for tmp in self.tmp.values():
            shutil.rmtree(tmp, ignore_errors=True)
        self.tmp.clear()


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
    keep the checkpoint's dtype), so float64 tensors are refused: merge those
    with the Python API, which computes in float64. Task arithmetic, TIES and dataless
    stitching run in their fast paths (:mod:`lsedu.merge.fused`), which the
    tests hold equal to those functions.

    Every check of :func:`lsedu.merge.plan.plan` (layouts, paths, disk space)
    runs before the first byte is written; the output is written under a
    temporary name and renamed only once complete, and whatever fails, the
    temporary files are removed.

    Explained in the appendix (appendix_streaming_merge.ipynb), whose ``lsedu merge`` runs it.
    """
    start = time.perf_counter()
    p = plan(recipe, output, overwrite=overwrite)
    base, models = p.base, p.models
    # Inputs larger than the page cache could hold are evicted before a second pass reads them again:
    # read them, and write the output, past it (O_DIRECT), which spares the core that copying through
    # the cache costs.
    direct = base.nbytes() * (1 + len(models)) > psutil.virtual_memory().available // 2
    for c in (base, *models):
        c.direct = direct
    outputs = _Outputs(p, direct)
    try:
        outputs.open()
        passes = _stream(recipe, base, models, p.names, p.loaded_masks, outputs, progress)
        saved = outputs.finish(start)
        outputs.close_hasher()
    except OSError as e:
        outputs.abort()
        if e.errno == errno.ENOSPC:
            need = sum(p.write_bytes.values())
            raise OSError(errno.ENOSPC, f"no space left on the device while writing {p.outputs['output']} "
                                        f"(the merge writes about {need / 1e9:.2f} GB); nothing was kept") from e
        raise
    except BaseException:
        outputs.abort()
        raise
    return MergeReport(p.outputs["output"], recipe.merge_method, len(base), len(p.names), passes,
                       time.perf_counter() - start, base.nbytes() * (1 + len(models)), saved)


def peak_memory_bytes() -> int | None:
    """The peak resident memory of this process so far, in bytes (None where the OS does not say).

    Not called in a notebook: the model card of ``lsedu merge`` records it; see the appendix
    (appendix_streaming_merge.ipynb).
    """
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def model_card(record: dict, name: str) -> str:
    """The ``README.md`` of a merged folder from its ``lsedu_merge.json`` record: what was merged, how, from what.

    A Hugging Face model card: YAML front matter (``base_model``, ``tags``),
    then the method and its parameters, every input file with its sha256,
    the versions, the time and memory the merge took, and the recipe.

    Not called in a notebook: ``lsedu merge`` writes it into every output; see the appendix
    (appendix_streaming_merge.ipynb).
    """
    method = methods.get(record["merge_method"])
    front = yaml.safe_dump({"base_model": record["base_model"], "tags": ["merge", "lsedu"],
                            "library_name": "transformers"}, sort_keys=False)
    params = "\n".join(f"| `{k}` | `{v!r}` |" for k, v in record["parameters"].items()) or "| (none) | |"
    inputs = "\n".join(f"| {role} | `{f}` | `{sha}` |" for role, files in record["inputs"].items()
                       for f, sha in files.items())
    peak = record["peak_memory_bytes"]
    recipe = yaml.safe_dump({k: record[k] for k in ("merge_method", "base_model", "models", "parameters",
                                                    "include", "exclude") if record[k] is not None},
                            sort_keys=False)
    return (f"---\n{front}---\n\n# {name}\n\n"
            f"Merged with `lsedu merge` (lsedu {record['lsedu_version']}) by **{method.name}**: {method.doc}\n\n"
            f"| parameter | value |\n|---|---|\n{params}\n\n"
            f"## Inputs\n\n| role | file | sha256 |\n|---|---|---|\n{inputs}\n\n"
            f"## Run\n\n- wall time: {record['seconds']:.1f} s\n"
            f"- peak memory (resident, the whole process): "
            f"{'unknown' if peak is None else f'{peak / 2**20:.0f} MiB'}\n"
            f"- lsedu {record['lsedu_version']}, torch {record['torch_version']}, Python {record['python_version']}, "
            f"{record['machine']}\n\n"
            f"## Recipe\n\n```yaml\n{recipe}```\n")


def _stream(recipe: MergeRecipe, base: Checkpoint, models: Sequence[Checkpoint], names: Sequence[str], loaded,
            outputs: _Outputs, progress: bool) -> float:
    """Merge every tensor into ``outputs``, in the base's order; returns how many times each input byte was read."""
    steps, merged_names = recipe.steps, set(names)
    per_tensor = steps.trim == "per_tensor"
    units = {n: units_of(base.shape(n), per_tensor) for n in names}
    reader, ckpts = Reader(), [base, *models]
    trim = None
    if recipe.global_threshold:
        trim = thresholds([(n, r) for n in names for r in units[n]], ckpts, steps, reader, progress, "global top-k")
    work = [(n, r) for n in base for r in (units[n] if n in merged_names else units_of(base.shape(n), False))]
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
