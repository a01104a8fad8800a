"""How ``lsedu merge`` merges one block of a tensor: the steps of each recipe method, and the blocks they run on.

A tensor is merged whole, or a block of rows at a time when it is large
(:func:`chunks`), so that memory is bounded by the block, not the tensor.
Each recipe method is a :class:`Steps`: DARE's drop (or none), an exact
top-k trim of each task vector (global, per tensor, or none) and one
*combine*, which turns a :class:`Block` into merged entries with the fast
path of the method's readable function (:mod:`lsedu.merge.fused`) or with
that function itself. :data:`STREAMED` gives the steps of every method of
the registry (:mod:`lsedu.methods`) that a recipe can run.

Precision: blocks are float32, so float16 and bfloat16 tensors are merged in
float32 and cast back, as the in-memory functions do. float64 tensors are
refused (:func:`check_computable`, before anything is written): the
in-memory functions compute them in float64, and a float32 merge would
change even the entries it does not touch. Every combine casts its result
back to the tensor's dtype and checks it: a task vector or a merged value
that overflows is an error naming the tensor and the file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from .._checks import all_finite
from ..drop_rescale import drop_and_rescale
from ..localize_stitch import stitch as stitch_reference
from ..soups import uniform_soup
from . import fused
from .io import Checkpoint, Unit

#: Tensors larger than this many entries are merged a block of rows at a time, so that the
#: temporaries of a 50,000-token embedding stay small: memory is bounded by the chunk, not the tensor.
CHUNK_ENTRIES = 1 << 22


def chunks(shape: tuple[int, ...], chunk: int | None = None) -> list[tuple[int, int] | None]:
    """Row ranges along the first dimension covering a tensor, or ``[None]`` for one piece.

    Not called in a notebook: ``lsedu merge`` cuts tensors bigger than 4M entries into blocks of rows with it; see the
    appendix (appendix_streaming_merge.ipynb).
    """
    chunk = CHUNK_ENTRIES if chunk is None else chunk
    numel = math.prod(shape)
    if len(shape) == 0 or numel <= chunk:
        return [None]
    row = numel // shape[0] if shape[0] else 1
    step = max(1, chunk // max(row, 1))
    return [(a, min(a + step, shape[0])) for a in range(0, shape[0], step)]


def _float64_error(name: str, file) -> ValueError:
    return ValueError(f"tensor {name!r} in {file} is float64, and lsedu merge computes in float32, which would round "
                      "it; merge float64 models with the Python API (lsedu.ties_merge and the others compute in "
                      "float64), convert them to float32, or leave the tensor out with exclude")


def check_computable(base: Checkpoint, names: Sequence[str]) -> None:
    """The merged tensors ``names`` of ``base`` have a dtype that ``lsedu merge`` computes exactly as the
    in-memory functions do: float32, float16 or bfloat16, not float64. Reads headers only; the error names the
    tensor and the file. (The models' dtypes equal the base's, :func:`lsedu.merge.plan.check_layouts`.)

    Not called in a notebook: ``lsedu merge`` uses it before anything is written; see the appendix
    (appendix_streaming_merge.ipynb).
    """
    for name in names:
        if base.dtype(name) == torch.float64:
            raise _float64_error(name, base.file_of(name))


@dataclass
class Block:
    """One unit's entries, flat float32, as the fused kernels take them.

    ``srcs`` are the fine-tuned models' entries (``is_tau=False``) or, after
    DARE's drop, the task vectors themselves (``is_tau=True``). ``name``,
    ``dtype`` and ``files`` (the base's file, then each model's) are the
    tensor's, for the result's dtype and the errors.

    Not called in a notebook: ``lsedu merge`` uses it (one block of a tensor at a time); see the appendix
    (appendix_streaming_merge.ipynb).
    """

    b: np.ndarray
    srcs: tuple[np.ndarray, ...]
    is_tau: bool
    name: str = "x"
    dtype: torch.dtype = torch.float32
    files: tuple = ()

    def taus(self) -> list[torch.Tensor]:
        b = torch.from_numpy(self.b)
        return [torch.from_numpy(s) if self.is_tau else torch.from_numpy(s) - b for s in self.srcs]


def check_finite(name: str, raw: Unit, ckpts: Sequence[Checkpoint]) -> None:
    """No NaN or inf in the unit ``raw`` of tensor ``name``; the error names the file.

    Not called in a notebook: ``lsedu merge`` uses it on every unit it reads; see the appendix
    (appendix_streaming_merge.ipynb).
    """
    for ok, t, ckpt in zip(raw.finite, raw, ckpts):
        if not ok:
            raise ValueError(f"tensor {name!r} in {ckpt.file_of(name)} has {int((~torch.isfinite(t)).sum())} "
                             "non-finite value(s) (NaN or inf)")


def _flat32(t: torch.Tensor) -> np.ndarray:
    return t.float().reshape(-1).contiguous().numpy()


@dataclass(frozen=True)
class Drop:
    """DARE's drop (``lsedu.dare``): task vector i drops each entry with probability ``p``, seed ``seed + i``.

    Not called in a notebook: ``lsedu merge`` uses it for DARE recipes; see the appendix
    (appendix_streaming_merge.ipynb).
    """

    p: float
    seed: int


def block(name: str, rows, raw: Unit, ckpts: Sequence[Checkpoint], drop: Drop | None, check: bool = True) -> Block:
    """The base's and the models' entries of tensor ``name`` (rows ``rows``), after DARE's ``drop`` if any.

    ``raw`` is what :class:`lsedu.merge.io.Reader` returned for ``ckpts = [base, *models]``.
    ``check``: look for NaN and inf (the first pass over the inputs does; later passes read the same bytes).
    The drop is :func:`lsedu.drop_rescale.drop_and_rescale` itself, on this block's slice of the tensor's draws;
    a rescaled task vector that overflows float32 is an error naming the tensor and the model's file.
    A float64 tensor is refused (:func:`check_computable` says so before the merge starts).

    Not called in a notebook: ``lsedu merge`` reads every block of rows with it; see the appendix
    (appendix_streaming_merge.ipynb).
    """
    if raw[0].dtype == torch.float64:
        raise _float64_error(name, ckpts[0].file_of(name))
    if check:
        check_finite(name, raw, ckpts)
    b = _flat32(raw[0])
    files = tuple(c.file_of(name) for c in ckpts)
    if drop is None:
        return Block(b, tuple(_flat32(t) for t in raw[1:]), False, name, raw[0].dtype, files)
    shape, bt = ckpts[0].shape(name), torch.from_numpy(b)
    numel = math.prod(shape)
    start = 0 if rows is None else rows[0] * (numel // shape[0])
    taus = [drop_and_rescale(torch.from_numpy(_flat32(t)) - bt, drop.p, drop.seed + i, name, numel, start)
            for i, t in enumerate(raw[1:])]
    for t, file in zip(taus, files[1:]):
        if not all_finite(t):
            raise ValueError(f"tensor {name!r}: the task vector of {file} after DARE's rescaling (tau / (1 - p), "
                             f"p={drop.p:g}) overflows float32; use a smaller p")
    return Block(b, tuple(t.numpy() for t in taus), True, name, raw[0].dtype, files)


def _files(blk: Block) -> tuple:
    return blk.files or ("the base",) + tuple(f"model {i}" for i in range(len(blk.srcs)))


def _check_taus(blk: Block, taus: Sequence[torch.Tensor]) -> None:
    """Each task vector of the block is finite: else an error names the tensor and the model's file."""
    for t, file in zip(taus, _files(blk)[1:]):
        if not all_finite(t):
            raise ValueError(f"tensor {blk.name!r}: the task vector of {file} (the model minus the base) overflows "
                             "float32; these weights are too large to merge")


def _finish(blk: Block, merged: torch.Tensor, what: str, lam: float | None = None) -> torch.Tensor:
    """``merged`` cast to the tensor's dtype, checked finite: else an error names the task vector that
    overflowed (with its model's file) or, if none did, ``lam`` if float32 cannot hold it, or the merged
    values (``what``), with the base's file."""
    out = merged.to(blk.dtype)
    if all_finite(out):
        return out
    dtype, files = str(blk.dtype).removeprefix("torch."), _files(blk)
    _check_taus(blk, blk.taus())
    if lam is not None and abs(lam) > torch.finfo(torch.float32).max:
        raise ValueError(f"tensor {blk.name!r} in {files[0]}: lam={lam:g} overflows float32, the dtype lsedu merge "
                         "computes in; use a smaller lam")
    remedy = "; convert the models to float32 first" if dtype in ("float16", "bfloat16") else ""
    raise ValueError(f"tensor {blk.name!r} in {files[0]}: {what} overflow {dtype}; use a smaller lam{remedy}")


# --- the combines: one block of entries -> merged entries in the tensor's dtype (and the masks used) ------------
# Each takes (blk, steps, trim, masks): ``trim`` (lsedu.merge.thresholds.Trim) holds the exact top-k thresholds
# and their tie runs; ``masks`` the block's part of the masks read from disk (masks.load), else None. Each ends
# with ``_finish``: the merged float32 entries cast to the tensor's dtype, and checked finite.
def average(blk: Block, steps: Steps, trim, masks) -> tuple[torch.Tensor, list]:
    """``lsedu.uniform_soup`` itself, on the block's fine-tuned entries.

    Not called in a notebook: ``lsedu merge`` uses it for averaging recipes; see the appendix
    (appendix_streaming_merge.ipynb).
    """
    merged = uniform_soup([{blk.name: torch.from_numpy(s)} for s in blk.srcs])[blk.name]
    return _finish(blk, merged, "the averaged values"), []


def task_arithmetic(blk: Block, steps: Steps, trim, masks) -> tuple[torch.Tensor, list]:
    """``b + lam * sum_i tau_i``: the fast path ``fused.task_arithmetic``.

    Not called in a notebook: ``lsedu merge`` uses it for task arithmetic recipes; see the appendix
    (appendix_streaming_merge.ipynb).
    """
    out = np.empty(blk.b.size, np.float32)
    fused.task_arithmetic(blk.b, blk.srcs, blk.is_tau, steps.lam, out)
    return _finish(blk, torch.from_numpy(out), f"the merged values (lam={steps.lam:g})", steps.lam), []


def ties(blk: Block, steps: Steps, trim, masks) -> tuple[torch.Tensor, list]:
    """TIES on the trimmed block: the fast path ``fused.ties``, one run of ties kept or not at a time.

    Not called in a notebook: ``lsedu merge`` uses it for TIES recipes; see the appendix
    (appendix_streaming_merge.ipynb), which checks the result bit for bit against ``lsedu.ties_merge``.
    """
    out = np.empty(blk.b.size, np.float32)
    for a, z, allow in trim.runs(blk):
        fused.ties(blk.b[a:z], tuple(s[a:z] for s in blk.srcs), blk.is_tau, trim.thr, allow, steps.lam, out[a:z])
    return _finish(blk, torch.from_numpy(out), f"the merged values (lam={steps.lam:g})", steps.lam), []


def stitch(blk: Block, steps: Steps, trim, masks) -> tuple[torch.Tensor, list]:
    """Localize-and-Stitch with the dataless masks of the trim: the fast path ``fused.stitch`` (masks returned).

    Not called in a notebook: ``lsedu merge`` uses it for Localize-and-Stitch recipes; see the appendix
    (appendix_streaming_merge.ipynb).
    """
    out = np.empty(blk.b.size, np.float32)
    made = np.empty((len(blk.srcs), blk.b.size), np.bool_)
    for a, z, allow in trim.runs(blk):
        fused.stitch(blk.b[a:z], tuple(s[a:z] for s in blk.srcs), blk.is_tau, trim.thr, allow, out[a:z],
                     made[:, a:z])
    return _finish(blk, torch.from_numpy(out), "the stitched values"), [torch.from_numpy(m) for m in made]


def stitch_with_masks(blk: Block, steps: Steps, trim, masks) -> tuple[torch.Tensor, list]:
    """Localize-and-Stitch with masks read from disk: ``lsedu.stitch`` itself.

    Not called in a notebook: ``lsedu merge`` uses it for Localize-and-Stitch recipes that load saved masks; see the
    appendix (appendix_streaming_merge.ipynb).
    """
    flat, n, taus = [m.reshape(-1) for m in masks], blk.name, blk.taus()
    _check_taus(blk, taus)
    merged = stitch_reference({n: torch.from_numpy(blk.b)}, [{n: t} for t in taus], [{n: m} for m in flat])
    return _finish(blk, merged[n], "the stitched values"), masks


@dataclass(frozen=True)
class Steps:
    """What ``lsedu merge`` does to every block for one recipe: ``drop``, then a ``trim``, then ``combine``.

    ``trim`` is ``"global"`` (each task vector's exact top-``density`` over
    all merged tensors: a sample and one extra read pass), ``"per_tensor"``
    (within each tensor) or None; ``lam`` scales the merged vector.

    Not called in a notebook: ``lsedu merge`` uses it, for every block of a recipe; see the appendix
    (appendix_streaming_merge.ipynb).
    """

    combine: Callable[[Block, Steps, object, object], tuple[torch.Tensor, list]]
    lam: float = 1.0
    density: float | None = None
    trim: str | None = None
    drop: Drop | None = None


def _dare(p: dict) -> Steps:
    return replace(STREAMED[p["then"]](p), drop=Drop(p["p"], p["seed"]))


#: The steps of each method a recipe can run, by its name in :mod:`lsedu.methods`, from its resolved parameters.
STREAMED: dict[str, Callable[[dict], Steps]] = {
    "average": lambda p: Steps(average),
    "task_arithmetic": lambda p: Steps(task_arithmetic, lam=p["lam"]),
    "ties": lambda p: Steps(ties, lam=p["lam"], density=p["density"], trim=p["trim_scope"]),
    "dare": _dare,
    "localize_stitch": lambda p: Steps(stitch, density=p["density"], trim="global"),
}


def steps_of(method: str, params: dict, masks_loaded: bool = False) -> Steps:
    """The :class:`Steps` of ``method`` (a registry name) with ``params``; stitching with loaded masks trims nothing.

    Not called in a notebook: ``lsedu merge`` uses it to turn a recipe into its steps; see the appendix
    (appendix_streaming_merge.ipynb).
    """
    steps = STREAMED[method](params)
    return replace(steps, combine=stitch_with_masks, trim=None) if masks_loaded else steps
