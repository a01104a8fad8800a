"""The fast paths of ``lsedu merge``: numba loops, one pass over memory where torch makes a dozen.

Each kernel here is the fast path of one readable lsedu function, which
stays the definition; ``tests/test_fused.py`` checks each against its
function, bit for bit, and ``tests/test_streaming.py`` the whole streamed
merge against the in-memory one (``torch.equal``):

=========================  ==========================================================
kernel                     fast path of
=========================  ==========================================================
:func:`task_arithmetic`    :func:`lsedu.arithmetic.task_arithmetic`
:func:`ties`               :func:`lsedu.ties.ties_merge` after its trim:
                           :func:`~lsedu.ties.elect_sign`, :func:`~lsedu.ties.disjoint_mean`
:func:`stitch`             :func:`lsedu.localize_stitch.stitch_dataless`: :func:`lsedu.stitch` with
                           the masks of :func:`lsedu.localize_dataless`
:func:`count_equal`,       counting and finding the ties of :class:`lsedu.topk.TieBudget`
:func:`nth_equal`
:func:`bracket_count`      one pass of :class:`lsedu.merge.thresholds.Bracketed`, whose
                           result is :func:`lsedu.topk.kth_largest`'s (with the histogram
                           of :meth:`lsedu.topk.RadixSelect.count` for a miss)
=========================  ==========================================================

Why they exist: torch runs a merge as a chain of whole-tensor operations
(subtract, abs, compare, where, sign, sum, divide ...), and each one is a
pass over memory. On a laptop's two cores that chain, not the disk, was what
limited the streaming merge: TIES made about twenty passes per entry and
task. The loops do the same float32 arithmetic, in the same order, one entry
at a time.

Every kernel takes ``b`` (the base's entries, float32, flat) and ``srcs``, a
tuple of K flat float32 arrays: either the fine-tuned models' entries
(``is_tau=False``, so ``tau_i = srcs[i] - b``) or the task vectors themselves
(``is_tau=True``, e.g. after DARE's drop).

A trim keeps ``|tau_i| > thr[i]``, and the entries equal to ``thr[i]`` if
``allow[i]``. The tie rule is :class:`lsedu.topk.TieBudget`'s, and only
there: the caller (:class:`lsedu.merge.thresholds.Trim`) counts a block's
ties with :func:`count_equal`, asks the budget how many it keeps, and cuts a
block that keeps only some of them at the last one kept (:func:`nth_equal`)
into a run that keeps its ties and one that does not. The loops over entries
run on all cores (numba's ``prange``): each entry is computed on its own, so
the order of threads cannot change a result.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)


@njit(cache=True, nogil=True, inline="always")
def _tau(srcs, i, b, j, is_tau):
    return srcs[i][j] if is_tau else srcs[i][j] - b[j]


@njit(cache=True, nogil=True, inline="always")
def _keeps(t, i, thr, allow):
    """Whether the trim of task ``i`` keeps the entry ``t``: above the threshold, or a tie in a run that keeps ties."""
    a = abs(t)
    return (a > thr[i]) | ((a == thr[i]) & allow[i])


@njit(cache=True, nogil=True, inline="always")
def _kept(t, i, thr, allow):
    return t if _keeps(t, i, thr, allow) else _ZERO


@njit(cache=True, nogil=True, parallel=True)
def task_arithmetic(b, srcs, is_tau, lam, out):
    """Fast path of ``lsedu.arithmetic.task_arithmetic``: ``out = b + lam * sum_i tau_i``."""
    lam32 = np.float32(lam)
    for j in prange(b.size):
        s = _ZERO
        for i in range(len(srcs)):
            s += _tau(srcs, i, b, j, is_tau)
        out[j] = b[j] + lam32 * s


@njit(cache=True, nogil=True, parallel=True)
def ties(b, srcs, is_tau, thr, allow, lam, out):
    """Fast path of ``lsedu.ties.ties_merge`` after its trim: ``b + lam * disjoint_mean(tau_hat, elect_sign(tau_hat))``.

    ``tau_hat_i`` is ``tau_i`` trimmed at ``thr[i]`` (ties if ``allow[i]``).
    The election (``lsedu.ties.elect_sign``) sums in float64, as the readable
    function does. The disjoint mean (``lsedu.ties.disjoint_mean``) of the
    entries that agree with the elected sign is the mean of the kept positive
    entries (sign +1) or of the kept negative ones (sign -1).
    """
    lam32 = np.float32(lam)
    for j in prange(b.size):
        s = 0.0
        pos, neg, npos, nneg = _ZERO, _ZERO, _ZERO, _ZERO
        for i in range(len(srcs)):
            t = _kept(_tau(srcs, i, b, j, is_tau), i, thr, allow)
            s += np.float64(t)
            pos += max(t, _ZERO)
            neg += min(t, _ZERO)
            npos += _ONE if t > _ZERO else _ZERO
            nneg += _ONE if t < _ZERO else _ZERO
        m = pos / max(npos, _ONE) if s > 0 else (neg / max(nneg, _ONE) if s < 0 else _ZERO)
        out[j] = b[j] + lam32 * m


@njit(cache=True, nogil=True, parallel=True)
def stitch(b, srcs, is_tau, thr, allow, out, masks):
    """Fast path of ``lsedu.localize_stitch.stitch_dataless``: ``b + sum_i gamma'_i tau_i``, overlaps averaged.

    That is ``lsedu.localize_stitch.stitch`` with, as ``gamma_i``, the mask
    of ``lsedu.localize_stitch.localize_dataless``,
    the top-k of ``|tau_i|`` (``thr``, ``allow``); it is also written to
    ``masks[i]`` so that it can be saved.
    """
    for j in prange(b.size):
        total, cover = _ZERO, _ZERO
        for i in range(len(srcs)):
            t = _tau(srcs, i, b, j, is_tau)
            kept = _keeps(t, i, thr, allow)
            masks[i, j] = kept
            total += t if kept else _ZERO
            cover += _ONE if kept else _ZERO
        out[j] = b[j] + total / max(cover, _ONE)


@njit(cache=True, nogil=True)
def count_equal(b, srcs, is_tau, thr, counts):
    """Fast path of ``(tau_i.abs() == thr[i]).sum()``, added to ``counts[i]``: the ties a block holds."""
    for i in range(len(srcs)):
        c, v = 0, thr[i]
        for j in range(b.size):
            c += abs(_tau(srcs, i, b, j, is_tau)) == v
        counts[i] += c


@njit(cache=True, nogil=True)
def nth_equal(b, src, is_tau, thr, nth):
    """Fast path of ``torch.nonzero(tau.abs() == thr)[nth - 1]``: the ``nth`` tie (1-based), or -1."""
    seen = 0
    for j in range(b.size):
        t = src[j] if is_tau else src[j] - b[j]
        if abs(t) == thr:
            seen += 1
            if seen == nth:
                return j
    return -1


@njit(cache=True, nogil=True)
def bracket_count(b, srcs, is_tau, lo, hi, above, n_cand, cand, hist, scratch):
    """Fast path of one counting pass of ``lsedu.merge.thresholds.Bracketed`` (an exact top-k in a bracket).

    Counts the entries with ``|tau_i| > hi[i]`` into ``above[i]`` and copies
    those in ``[lo[i], hi[i]]`` into ``cand[i]`` (``n_cand[i]`` counts them,
    even past the buffer's end, so an overflow shows: ``cand`` needs one
    spare column). If ``hist`` has 65,536 columns, it also adds the histogram
    of the high 16 bits of ``|tau_i|``, as ``lsedu.topk.RadixSelect.count``
    does, for when the bracket misses; ``scratch``
    holds ``n`` float32 values.
    """
    n, last = b.size, cand.shape[1] - 1
    keys = scratch[:n].view(np.int32)
    for i in range(len(srcs)):
        low, high, n_above, c = lo[i], hi[i], 0, n_cand[i]  # locals: the loop keeps them in registers
        for j in range(n):  # branch-free: the comparisons are coin flips that a branch would mispredict
            a = abs(_tau(srcs, i, b, j, is_tau))
            scratch[j] = a
            n_above += a > high
            cand[i, min(c, last)] = a  # past the end, the last slot is overwritten and c still counts
            c += (a >= low) & (a <= high)
        above[i] += n_above
        n_cand[i] = c
        if hist.shape[1]:
            _count_high16(keys, hist[i])


@njit(cache=True, nogil=True)
def _count_high16(keys, hist):
    # Its own function: inside the loop above, this scatter made numba's whole kernel 15x slower.
    for j in range(keys.size):
        hist[keys[j] >> 16] += 1
