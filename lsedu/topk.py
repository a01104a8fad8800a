"""Exact global top-k over many tensors, in O(largest tensor) extra memory.

The obvious way to find the k largest ``|tau|`` over a whole model is
``torch.cat([t.flatten() for t in tau.values()]).kthvalue(...)``: it copies the
whole model once more. For a 1.5B-parameter model that is 6 GB of extra RAM.
Here the k-th largest value is found exactly by a *radix select* over the bit
patterns of the float32 keys: two passes over the tensors, each building a
65,536-bin histogram of 16 bits. Only one tensor's temporaries are alive at a
time, so the extra memory is O(largest tensor), and ``tensors`` may be any
mapping that loads its values lazily (the streaming merge reads checkpoints
this way).

Ties at the threshold are broken by tensor order, then by position, so that
exactly ``k`` entries are selected: :class:`TieBudget` is that rule, the one
place it is written.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ._checks import Mask, all_finite, check_fraction

_BINS = 1 << 16


def _keys(t: torch.Tensor, by_abs: bool) -> torch.Tensor:
    """int32 keys whose integer order is the float order of ``|t|`` (or ``t``).

    Non-negative IEEE floats compare like their bit patterns read as integers.
    For signed values, flipping the 31 low bits of negatives makes the map
    monotone over the whole line. Half and bfloat16 upcast to float32 exactly;
    float64 is rounded to float32, so values equal in float32 count as ties.
    """
    x = t.detach().reshape(-1).float()
    if by_abs:
        return x.abs().view(torch.int32)
    bits = x.view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _bucket_from_top(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """Bucket holding the k-th largest entry, and how many entries lie above it."""
    above = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])  # above[b] = count in buckets >= b
    b = int(torch.nonzero(above >= k)[-1])
    n_above = int(above[b + 1]) if b + 1 < len(hist) else 0
    return b, n_above


@dataclass(frozen=True)
class KthLargest:
    """The k-th largest key over all tensors.

    ``value`` is that entry's float value, ``key`` its int32 key,
    ``n_greater`` how many entries are strictly larger and ``n_equal`` how
    many share the key. Taking all larger entries and the first
    ``k - n_greater`` equal ones selects exactly k.

    Not called in a notebook: ``kth_largest`` returns it, for the top-k masks of ``lsedu.trim`` and of ``lsedu merge``;
    see notebook 04 (04_interference_ties_dare.ipynb).
    """

    value: float
    key: int
    n_greater: int
    n_equal: int
    k: int


def _check_entry(name, t, arg: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{arg} has a key {name!r} of type {type(name).__name__}; keys must be tensor names (str)")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{arg}[{name!r}] must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{arg}[{name!r}] has dtype {t.dtype}; top-k ranks floating-point tensors")
    if not all_finite(t):
        raise ValueError(f"{arg}[{name!r}] has {int((~torch.isfinite(t)).sum())} non-finite value(s) (NaN or inf)")


def _items(tensors, arg: str):
    if not isinstance(tensors, Mapping) and not hasattr(tensors, "items"):
        raise TypeError(f"{arg} must be a dict of name -> torch.Tensor, got {type(tensors).__name__}")
    return tensors.items()


class RadixSelect:
    """The k-th largest key, fed one tensor at a time: the two passes of a radix select.

    >>> sel = RadixSelect()                  # doctest: +SKIP
    >>> for t in tensors: sel.count(t)       # pass 1: histogram of the high 16 bits
    >>> sel.choose_bucket(k)
    >>> for t in tensors: sel.refine(t)      # pass 2: the low 16 bits inside that bucket
    >>> kth = sel.result()

    Feeding tensors yourself lets one pass over a checkpoint serve several
    task vectors at once (the streaming merge keeps one selector per model).

    Not called in a notebook: ``lsedu merge`` uses it when a bracket misses; see the appendix
    (appendix_streaming_merge.ipynb).
    """

    def __init__(self, by_abs: bool = True):
        self.by_abs = by_abs
        self.offset = 0 if by_abs else _BINS // 2  # signed high halves lie in [-32768, 32767]
        self.hist = torch.zeros(_BINS, dtype=torch.int64)
        self.n = 0
        self.k: int | None = None

    def count(self, t: torch.Tensor) -> None:
        self.hist += self._high_counts(_keys(t, self.by_abs))
        self.n += t.numel()

    def count_keys(self, keys: torch.Tensor) -> None:
        """Histogram keys (from ``_keys``) whose entries were already added to ``n``."""
        self.hist += self._high_counts(keys)

    def _high_counts(self, keys: torch.Tensor) -> torch.Tensor:
        high = keys >> 16
        if self.offset:
            high += self.offset
        return torch.bincount(high, minlength=_BINS)

    def choose_bucket(self, k: int) -> None:
        self.k = k
        self.hi, self.n_above_hi = _bucket_from_top(self.hist, k)
        self.hist = torch.zeros(_BINS, dtype=torch.int64)

    def refine(self, t: torch.Tensor) -> None:
        keys = _keys(t, self.by_abs)
        low = keys[(keys >> 16) == self.hi - self.offset] & 0xFFFF
        del keys  # keep one tensor's temporaries alive at a time
        self.hist += torch.bincount(low, minlength=_BINS)

    def result(self) -> KthLargest:
        lo, n_above_lo = _bucket_from_top(self.hist, self.k - self.n_above_hi)
        key = ((self.hi - self.offset) << 16) | lo
        return KthLargest(_value(key, self.by_abs), key, self.n_above_hi + n_above_lo, int(self.hist[lo]), self.k)


class TieBudget:
    """The tie rule of an exact top-k, defined once; every top-k of lsedu (and of ``lsedu merge``) uses it.

    All entries above the k-th largest value are kept, and of the entries
    *equal* to it the first ``k - n_greater`` in feed order (tensor order,
    then position), so that exactly k are kept. The entries arrive in pieces
    (tensors, or blocks of a tensor); :meth:`take` says how many of the next
    piece's ties are kept: the first that many of them.

    Not called in a notebook: every top-k of lsedu (``lsedu.trim``, ``lsedu.localize_dataless``) and of ``lsedu merge``
    uses it; see notebook 04 (04_interference_ties_dare.ipynb).
    """

    def __init__(self, kth: KthLargest):
        self.left = kth.k - kth.n_greater  # ties still to keep
        self.ahead = kth.n_equal  # ties not yet fed

    def take(self, n_equal: int) -> int:
        """Of the next piece's ``n_equal`` ties, how many are kept (its first ones)."""
        kept = min(self.left, n_equal)
        self.left -= kept
        self.ahead -= n_equal
        return kept

    @property
    def settled(self) -> bool:
        """Every tie ahead is kept, or none is: a piece's ties need no counting (all or none of them)."""
        return self.left == 0 or self.left >= self.ahead


class TopKMasker:
    """Pass 3: masks of the entries above the k-th key, plus the ties that :class:`TieBudget` keeps, in feed order.

    Not called in a notebook: the top-k masks of ``lsedu.trim`` and ``lsedu.localize_dataless`` use it; see notebook 04
    (04_interference_ties_dare.ipynb).
    """

    def __init__(self, kth: KthLargest, by_abs: bool = True):
        self.kth, self.by_abs = kth, by_abs
        self.ties = TieBudget(kth)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        keys = _keys(t, self.by_abs)
        m = keys > self.kth.key
        if self.ties.left > 0:
            eq = keys == self.kth.key
            n_eq = int(eq.sum())
            kept = self.ties.take(n_eq)
            if kept < n_eq:  # keep only the first `kept` ties, in position order
                eq[torch.nonzero(eq).reshape(-1)[kept:]] = False
            m |= eq
        return m.reshape(t.shape)


#: Up to this many entries in all, the keys are simply sorted: the radix select's two 65,536-bin
#: histograms cost more than sorting a small input (the exercises' checks call top-k on tiny tensors).
_SMALL = 1 << 15


def _from_sorted(keys: torch.Tensor, k: int, by_abs: bool) -> KthLargest:
    """The k-th largest of a small set of ``keys``, by sorting them."""
    key = int(torch.sort(keys, descending=True).values[k - 1])
    return KthLargest(_value(key, by_abs), key, int((keys > key).sum()), int((keys == key).sum()), k)


def _value(key: int, by_abs: bool) -> float:
    """The float whose key is ``key`` (undoing the monotone map of signed keys)."""
    key_t = torch.tensor([key], dtype=torch.int32)
    if not by_abs:
        key_t = key_t ^ ((key_t >> 31) & 0x7FFFFFFF)
    return float(key_t.view(torch.float32))


def _radix_select(tensors, k_of_n: Callable[[int], int], by_abs: bool, arg: str) -> KthLargest:
    """Two passes: the first also checks every tensor and counts the entries, then ``k = k_of_n(n)``.

    While the entries seen add up to at most ``_SMALL``, their keys are kept
    and, if that stays so, sorted instead (same result, ties included).
    """
    sel = RadixSelect(by_abs)
    small: list[torch.Tensor] | None = []
    for name, t in _items(tensors, arg):
        _check_entry(name, t, arg)
        if small is not None and sel.n + t.numel() <= _SMALL:
            small.append(_keys(t, by_abs))
            sel.n += t.numel()
            continue
        if small is not None:  # too big to sort after all: histogram what was kept
            for keys in small:
                sel.count_keys(keys)
            small = None
        sel.count(t)
    if sel.n == 0:
        raise ValueError(f"{arg} is empty: it holds no entries to rank")
    k = k_of_n(sel.n)
    if small is not None:
        return _from_sorted(torch.cat(small), k, by_abs)
    sel.choose_bucket(k)
    for _, t in _items(tensors, arg):
        sel.refine(t)
    return sel.result()


def kth_largest(tensors: Mapping[str, torch.Tensor], k: int, *, by_abs: bool = True) -> KthLargest:
    """Exact k-th largest of ``|t|`` (or ``t``) over every entry of every tensor.

    Two passes over ``tensors.items()``; the extra memory is that of one
    tensor's keys plus two histograms.

    Not called in a notebook: the top-k masks of ``lsedu.trim`` and ``lsedu.localize_dataless``, and ``lsedu merge``,
    use it; see notebook 04 (04_interference_ties_dare.ipynb).
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int, got {type(k).__name__}")

    def check_k(n: int) -> int:
        if not 1 <= k <= n:
            raise ValueError(f"k must lie in [1, {n}] (the number of entries), got {k}")
        return int(k)

    return _radix_select(tensors, check_k, by_abs, "tensors")


def _mask(tensors, kth: KthLargest, by_abs: bool, arg: str) -> Mask:
    masker = TopKMasker(kth, by_abs)
    return {name: masker(t) for name, t in _items(tensors, arg)}


def topk_mask(tensors: Mapping[str, torch.Tensor], k: int, *, by_abs: bool = True) -> Mask:
    """Bool masks selecting exactly the ``k`` largest entries over all tensors.

    Three passes in all: two in :func:`kth_largest`, one to build the masks.

    Not called in a notebook: ``lsedu.localize_trained`` uses it; see notebook 05 (05_localize_and_stitch.ipynb).
    """
    return _mask(tensors, kth_largest(tensors, k, by_abs=by_abs), by_abs, "tensors")


def count_for_density(numel: int, density: float) -> int:
    """``k = round(density * numel)``, at least 1: the number of entries a density keeps.

    Not called in a notebook: ``lsedu.localize_trained`` and ``lsedu merge`` use it; see notebook 05
    (05_localize_and_stitch.ipynb).
    """
    return max(1, min(numel, int(round(density * numel))))


def global_topk_mask(tensors: Mapping[str, torch.Tensor], density: float, *, arg: str = "tensors") -> Mask:
    """Keep the top ``density`` fraction of ``|t|`` over *all* tensors at once.

    This is the global top-k of TIES-Merging (Yadav et al. 2023) and of
    Localize-and-Stitch's dataless localization (He et al. 2025): three
    passes over ``tensors``, exactly ``round(density * n)`` entries kept.

    Not called in a notebook: ``lsedu.trim`` (TIES's global trim) and ``lsedu.localize_dataless`` use it; see notebook
    04 (04_interference_ties_dare.ipynb).
    """
    density = check_fraction(density, "density", low_open=True, high_open=False)
    kth = _radix_select(tensors, lambda n: count_for_density(n, density), True, arg)
    return _mask(tensors, kth, True, arg)


def per_tensor_topk_mask(tensors: Mapping[str, torch.Tensor], density: float, *, arg: str = "tensors") -> Mask:
    """Keep the top ``density`` fraction of ``|t|`` within *each* tensor.

    This is the trim that mergekit and peft apply to large language models.
    A tensor with no entries gets an empty mask.

    Not called in a notebook: ``lsedu.trim`` (TIES's per-tensor trim) uses it; see notebook 04
    (04_interference_ties_dare.ipynb).
    """
    density = check_fraction(density, "density", low_open=True, high_open=False)
    masks = {}
    for name, t in _items(tensors, arg):
        _check_entry(name, t, arg)
        masks[name] = global_topk_mask({name: t}, density, arg=arg)[name] if t.numel() else torch.zeros(t.shape, dtype=torch.bool)
    if not masks:
        raise ValueError(f"{arg} is empty: it holds no tensors to rank")
    return masks
