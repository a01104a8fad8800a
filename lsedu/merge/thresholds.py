"""Exact top-k thresholds for ``lsedu merge``, streamed: a sample brackets each threshold, one pass counts it.

A trim keeps the top-``density`` of each task vector ``|tau_i|``, exactly
as :func:`lsedu.topk.kth_largest` and :class:`lsedu.topk.TieBudget` define
it, without holding the model: the threshold is first estimated from a
small sample (:func:`bracket`), then found exactly by one read pass that
counts the entries above the bracket and keeps those inside it
(:class:`Bracketed`, whose pass is the fast path ``fused.bracket_count``).
If the bracket misses, the histogram taken in that same pass starts a radix
select (:class:`lsedu.topk.RadixSelect`) that one more pass finishes. The
result is exact either way. :class:`Trim` then applies the thresholds one
block at a time, with the tie rule of :class:`lsedu.topk.TieBudget`. How
many entries a density keeps is :func:`lsedu.topk.count_for_density`'s rule
(half up, at least one), the in-memory functions' own; with no entries to
rank (empty tensors only) a trim keeps nothing and the merge is the base.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..topk import NOTHING, KthLargest, RadixSelect, TieBudget, count_for_density, kth_largest
from . import fused
from .blocks import Block, Steps, block
from .io import Reader, prefetch

#: The exact top-k first estimates each threshold from a sample (one row in SAMPLE_STRIDE of every
#: tensor: under 1% of the bytes), then finds it exactly in one read pass that counts the entries above
#: the sample's bracket and keeps those inside it. So an exact global trim reads its inputs about
#: twice, not three times. If the bracket misses (it is wide enough that this is very rare), a
#: radix-select pass finishes the job, and the result is exact either way.
SAMPLE_STRIDE = 256
#: Entries sampled from one tensor held in memory (a per-tensor trim).
SAMPLE_ENTRIES = 1 << 16


def bracket(sample: torch.Tensor, n: int, k: int) -> tuple[float, float, float]:
    """``lo, hi`` that hold the k-th largest of ``n`` values with high probability, given a sample of
    them, and the fraction of the sample inside ``[lo, hi]`` (a point mass, such as DARE's zeros, counts).

    Not called in a notebook: ``lsedu merge`` uses it to bracket each k-th value from a sample; see the appendix
    (appendix_streaming_merge.ipynb).
    """
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


class Bracketed:
    """The pass that finds K exact k-th largest values of ``|tau_i|`` inside their brackets.

    Not called in a notebook: ``lsedu merge`` uses it for the exact global thresholds; see the appendix
    (appendix_streaming_merge.ipynb).
    """

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

    def count(self, blk: Block) -> None:
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


def sample_units(units, base: Checkpoint) -> list[tuple[str, tuple[int, int] | None]]:
    """About one row in SAMPLE_STRIDE of every tensor in ``units``; 1-D tensors are read whole.

    Not called in a notebook: ``lsedu merge`` uses it to sample the tensors for the brackets; see the appendix
    (appendix_streaming_merge.ipynb).
    """
    out = []
    for name in dict.fromkeys(n for n, _ in units):
        shape = base.shape(name)
        if len(shape) < 2:
            out.append((name, None))
        else:
            picked = range(SAMPLE_STRIDE // 2, shape[0], SAMPLE_STRIDE) or [shape[0] // 2]
            out += [(name, (r, r + 1)) for r in picked if shape[0]]
    return out


def thresholds(units, ckpts, steps: Steps, reader: Reader, progress: bool, what: str) -> Trim:
    """Exact top-k of |tau_i| over ``units`` (name, rows), for every model at once, streamed.

    ``k = count_for_density(n, density)`` over the ``n`` entries of the units;
    if they hold none (only empty tensors), the trim keeps nothing.

    Not called in a notebook: ``lsedu merge`` uses it for the exact global thresholds; see the appendix
    (appendix_streaming_merge.ipynb).
    """
    base, K = ckpts[0], len(ckpts) - 1
    load = lambda u: reader(u[0], u[1], ckpts)  # noqa: E731
    n = sum(math.prod(base.shape(name)) if rows is None else (rows[1] - rows[0]) * math.prod(base.shape(name)[1:])
            for name, rows in units)
    k = count_for_density(n, steps.density)
    if k == 0:  # nothing to rank: the units are empty tensors, and nothing is kept
        return Trim([NOTHING] * K)
    samples = [[] for _ in range(K)]
    for (name, rows), raw in tqdm(prefetch(sample_units(units, base), load), total=None, desc=f"{what}: sample",
                                  disable=not progress, leave=False):
        stride = SAMPLE_STRIDE if rows is None else 1
        for i, t in enumerate(block(name, rows, raw, ckpts, steps.drop, check=False).taus()):
            samples[i].append(t.abs()[::stride])
    brackets = [bracket(torch.cat(s) if s else torch.zeros(0), n, k) for s in samples]
    finder = Bracketed(brackets, n, k, histograms=True)
    for (name, rows), raw in tqdm(prefetch(units, load), total=len(units), desc=f"{what}: count",
                                  disable=not progress, leave=False):
        finder.count(block(name, rows, raw, ckpts, steps.drop))
    kths = [finder.result(i) for i in range(K)]
    missed = [i for i in range(K) if kths[i] is None]
    if missed:  # the bracket missed: the histograms of pass 1 start a radix select; one more pass ends it
        selectors = []
        for i in missed:
            sel = RadixSelect()
            sel.hist, sel.n = torch.from_numpy(finder.hist[i].copy()), n
            sel.choose_bucket(k)
            selectors.append(sel)
        for (name, rows), raw in tqdm(prefetch(units, load), total=len(units), desc=f"{what}: refine",
                                      disable=not progress, leave=False):
            taus = block(name, rows, raw, ckpts, steps.drop, check=False).taus()
            for sel, i in zip(selectors, missed):
                sel.refine(taus[i])
        for sel, i in zip(selectors, missed):
            kths[i] = sel.result()
    return Trim(kths)


def sample_step(n: int, row: int) -> int:
    """A stride that samples about SAMPLE_ENTRIES of ``n`` entries, prime to the ``row`` length so that
    the sample visits every column of a matrix, not the same few.

    Not called in a notebook: ``lsedu merge`` uses it to sample the tensors for the brackets; see the appendix
    (appendix_streaming_merge.ipynb).
    """
    step = max(1, n // SAMPLE_ENTRIES)
    while step > 1 and math.gcd(step, row) != 1:
        step -= 1
    return step


def tensor_trim(blk: Block, density: float, row: int) -> Trim:
    """The exact top-``density`` of each task vector of one tensor held in memory (a per-tensor trim).

    ``row`` is the length of the tensor's rows (its entries past the first dimension).
    ``k = count_for_density(n, density)``; an empty tensor keeps nothing (and is merged: it stays empty).

    Not called in a notebook: ``lsedu merge`` uses it for per-tensor trims; see the appendix
    (appendix_streaming_merge.ipynb).
    """
    n = blk.b.size
    k = count_for_density(n, density)
    if k == 0:  # an empty tensor: nothing to rank, nothing kept
        return Trim([NOTHING] * len(blk.srcs))
    if n <= SAMPLE_ENTRIES:
        brackets = [(0.0, math.inf, 1.0)] * len(blk.srcs)
    else:
        step = sample_step(n, row)
        b = blk.b[::step]
        brackets = [bracket(torch.from_numpy(np.abs(s[::step] if blk.is_tau else s[::step] - b)), n, k) for s in blk.srcs]
    finder = Bracketed(brackets, n, k, histograms=False)
    finder.count(blk)
    kths = [finder.result(i) for i in range(len(blk.srcs))]
    if any(kth is None for kth in kths):  # a missed bracket: the radix select, in torch, on this tensor
        taus = blk.taus()
        kths = [kth if kth is not None else kth_largest({"tau": taus[i]}, k) for i, kth in enumerate(kths)]
    return Trim(kths)


class Trim:
    """Exact top-k trims of K task vectors, applied one block at a time, in order.

    Entries above the k-th largest value are kept; of the entries equal to
    it, those that :class:`lsedu.topk.TieBudget` keeps (the first
    ``k - n_greater`` in feed order). :meth:`runs` cuts each block into runs
    in which every task keeps all of its ties or none, the form the fused
    kernels take.

    Not called in a notebook: ``lsedu merge`` uses it for TIES's and Localize-and-Stitch's trims; see the appendix
    (appendix_streaming_merge.ipynb).
    """

    def __init__(self, kths: Sequence[KthLargest]):
        self.thr = np.array([kth.value for kth in kths], np.float32)
        self.ties = [TieBudget(kth) for kth in kths]

    def runs(self, blk: Block) -> list[tuple[int, int, np.ndarray]]:
        """``(start, stop, allow)`` runs covering the block; ``allow[i]``: task i keeps its ties there."""
        n, K = blk.b.size, len(self.ties)
        if all(t.settled for t in self.ties):  # every tie ahead is kept (or none is): nothing to count
            return [(0, n, np.array([t.left > 0 for t in self.ties]))]
        counts = np.zeros(K, np.int64)
        fused.count_equal(blk.b, blk.srcs, blk.is_tau, self.thr, counts)
        allow, cut = [], {}  # cut: task -> the position after its last kept tie
        for i, ties in enumerate(self.ties):
            c = int(counts[i])
            kept = ties.take(c)
            allow.append(kept > 0)
            if 0 < kept < c:
                cut[i] = fused.nth_equal(blk.b, blk.srcs[i], blk.is_tau, self.thr[i], kept) + 1
        points = sorted({0, n, *cut.values()})
        return [(a, z, np.array([allow[i] and (i not in cut or z <= cut[i]) for i in range(K)]))
                for a, z in zip(points, points[1:])]
