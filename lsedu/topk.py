"""Exact global top-k over many tensors, in O(largest tensor) extra memory.

The obvious way to find the k largest ``|tau|`` over a whole model is
``torch.cat([t.flatten() for t in tau.values()]).kthvalue(...)``: it copies the
whole model once more. For a 1.5B-parameter model that is 6 GB of extra RAM.
Here the k-th largest value is found exactly by a *radix select* over the bit
patterns of integer keys that order the floats exactly: int32 keys for
float32, float16 and bfloat16 (two passes over the tensors, each building a
65,536-bin histogram of 16 bits), int64 keys when any tensor is float64 (four
such passes), so float64 values are never ranked by a rounded copy. Only one
tensor's temporaries are alive at a
time, so the extra memory is O(largest tensor), and ``tensors`` may be any
mapping that loads its values lazily (the streaming merge reads checkpoints
this way).

Ties at the threshold are broken by tensor order, then by position, so that
exactly ``k`` entries are selected: :class:`TieBudget` is that rule, the one
place it is written. How many entries a density keeps is
:func:`count_for_density`'s rule, also written once: ``k = floor(d * n + 1/2)``
(half up), at least 1 when there is any entry.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction

import torch

from ._checks import Mask, all_finite, check_fraction

_BINS = 1 << 16


def _wide(t: torch.Tensor) -> bool:
    """Whether ``t`` needs int64 keys: float64 has more bits than an int32 key can order."""
    return t.dtype == torch.float64


def _keys(t: torch.Tensor, by_abs: bool, wide: bool = False) -> torch.Tensor:
    """Integer keys whose order is the float order of ``|t|`` (or ``t``): int32, or int64 if ``wide``.

    Non-negative IEEE floats compare like their bit patterns read as integers.
    For signed values, flipping the low bits (all but the sign) of negatives
    makes the map monotone over the whole line. Half and bfloat16 upcast to
    float32 exactly, and every float to float64 exactly, so keys of different
    dtypes compare correctly. float64 needs ``wide`` keys: it is never rounded.
    """
    x = t.detach().reshape(-1)
    x = x.double() if wide else x.float()
    if not wide and t.dtype == torch.float64:
        raise TypeError("float64 values need wide (int64) keys")
    itype, low = (torch.int64, 0x7FFFFFFFFFFFFFFF) if wide else (torch.int32, 0x7FFFFFFF)
    if by_abs:
        return x.abs().view(itype)
    bits = x.view(itype)
    return bits ^ ((bits >> (63 if wide else 31)) & low)


def _bucket_from_top(hist: torch.Tensor, k: int) -> tuple[int, int]:
    """Bucket holding the k-th largest entry, and how many entries lie above it."""
    above = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])  # above[b] = count in buckets >= b
    b = int(torch.nonzero(above >= k)[-1])
    n_above = int(above[b + 1]) if b + 1 < len(hist) else 0
    return b, n_above


@dataclass(frozen=True)
class KthLargest:
    """The k-th largest key over all tensors.

    ``value`` is that entry's float value, ``key`` its integer key (int64
    if ``wide``, when float64 is ranked; else int32), ``n_greater`` how many
    entries are strictly larger and ``n_equal`` how many share the key.
    Taking all larger entries and the first ``k - n_greater`` equal ones
    selects exactly k. ``k = 0`` (nothing to rank) selects nothing.

    Not called in a notebook: ``kth_largest`` returns it, for the top-k masks of ``lsedu.trim`` and of ``lsedu merge``;
    see notebook 04 (04_interference_ties_dare.ipynb).
    """

    value: float
    key: int
    n_greater: int
    n_equal: int
    k: int
    wide: bool = False


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
    """The k-th largest key, fed one tensor at a time: the passes of a radix select, 16 bits a pass.

    >>> sel = RadixSelect()                  # doctest: +SKIP
    >>> for t in tensors: sel.count(t)       # pass 1: histogram of the high 16 bits
    >>> sel.choose_bucket(k)
    >>> while sel.passes_left:               # one more pass (int32 keys), three more (``wide``: int64)
    ...     for t in tensors: sel.refine(t)  # the next 16 bits, inside the bucket chosen so far
    ...     sel.choose_bucket()
    >>> kth = sel.result()

    Feeding tensors yourself lets one pass over a checkpoint serve several
    task vectors at once (the streaming merge keeps one selector per model).
    ``wide`` (int64 keys, four passes) ranks float64 exactly.

    Not called in a notebook: ``lsedu merge`` uses it when a bracket misses; see the appendix
    (appendix_streaming_merge.ipynb).
    """

    def __init__(self, by_abs: bool = True, wide: bool = False):
        self.by_abs, self.wide = by_abs, wide
        self.bits = 64 if wide else 32
        self.offset = 0 if by_abs else _BINS // 2  # signed high digits lie in [-32768, 32767]
        self.hist = torch.zeros(_BINS, dtype=torch.int64)
        self.n = 0
        self.k: int | None = None
        self.level = 0  # digits (of 16 bits, from the top) fixed so far
        self.prefix = 0  # the key's value above the digits still open (signed)
        self.n_above = 0  # entries above the chosen prefix

    def count(self, t: torch.Tensor) -> None:
        self.hist += self._high_counts(_keys(t, self.by_abs, self.wide))
        self.n += t.numel()

    def count_keys(self, keys: torch.Tensor) -> None:
        """Histogram keys (from ``_keys``) whose entries were already added to ``n``."""
        self.hist += self._high_counts(keys)

    def _high_counts(self, keys: torch.Tensor) -> torch.Tensor:
        high = keys >> (self.bits - 16)
        if self.offset:
            high += self.offset
        return torch.bincount(high, minlength=_BINS)

    @property
    def passes_left(self) -> int:
        """Refining passes still to make (each followed by :meth:`choose_bucket`) before :meth:`result`."""
        return self.bits // 16 - self.level

    def choose_bucket(self, k: int | None = None) -> None:
        """Fix the next 16 bits from the histogram just taken (``k`` with the first, counting, histogram)."""
        if self.level == 0:
            self.k = k
        b, n_above = _bucket_from_top(self.hist, self.k - self.n_above)
        self.prefix = (b - self.offset) if self.level == 0 else (self.prefix << 16) | b
        self.n_above += n_above
        self.level += 1
        self.last_hist = self.hist
        self.hist = torch.zeros(_BINS, dtype=torch.int64)

    def refine(self, t: torch.Tensor) -> None:
        shift = self.bits - 16 * (self.level + 1)
        keys = _keys(t, self.by_abs, self.wide)
        inside = keys[(keys >> (shift + 16)) == self.prefix]
        del keys  # keep one tensor's temporaries alive at a time
        self.hist += torch.bincount((inside >> shift) & 0xFFFF, minlength=_BINS)

    def result(self) -> KthLargest:
        """The k-th largest, once every digit is chosen (a last refining pass not yet chosen is chosen here)."""
        if self.passes_left == 1:
            self.choose_bucket()
        if self.passes_left:
            raise RuntimeError(f"{self.passes_left} refining pass(es) left before the result")
        key, n_equal = self.prefix, int(self.last_hist[self.prefix & 0xFFFF])
        return KthLargest(_value(key, self.by_abs, self.wide), key, self.n_above, n_equal, self.k, self.wide)


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
        if self.kth.k == 0:  # nothing was ranked: nothing is kept
            return torch.zeros(t.shape, dtype=torch.bool)
        keys = _keys(t, self.by_abs, self.kth.wide)
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


def _from_sorted(keys: torch.Tensor, k: int, by_abs: bool, wide: bool) -> KthLargest:
    """The k-th largest of a small set of ``keys``, by sorting them."""
    key = int(torch.sort(keys, descending=True).values[k - 1])
    return KthLargest(_value(key, by_abs, wide), key, int((keys > key).sum()), int((keys == key).sum()), k, wide)


def _value(key: int, by_abs: bool, wide: bool = False) -> float:
    """The float whose key is ``key`` (undoing the monotone map of signed keys)."""
    itype, ftype, low, sign = ((torch.int64, torch.float64, 0x7FFFFFFFFFFFFFFF, 63) if wide
                               else (torch.int32, torch.float32, 0x7FFFFFFF, 31))
    key_t = torch.tensor([key], dtype=itype)
    if not by_abs:
        key_t = key_t ^ ((key_t >> sign) & low)
    return float(key_t.view(ftype))


#: The k-th largest of no entries: what a top-k of nothing (k = 0) keeps, none of them.
NOTHING = KthLargest(math.inf, 0x7FFFFFFF, 0, 0, 0)


def _first_pass(tensors, by_abs: bool, arg: str, wide: bool):
    """Pass 1: check every tensor, count the entries and histogram (or keep, while few) their keys.

    Returns None as soon as a float64 tensor shows up while ``wide`` is off:
    the pass is then made again with int64 keys.
    """
    sel = RadixSelect(by_abs, wide)
    small: list[torch.Tensor] | None = []
    seen = False
    for name, t in _items(tensors, arg):
        _check_entry(name, t, arg)
        seen = True
        if not wide and _wide(t):
            return None
        if small is not None and sel.n + t.numel() <= _SMALL:
            small.append(_keys(t, by_abs, wide))
            sel.n += t.numel()
            continue
        if small is not None:  # too big to sort after all: histogram what was kept
            for keys in small:
                sel.count_keys(keys)
            small = None
        sel.count(t)
    if not seen:
        raise ValueError(f"{arg} is empty: it holds no tensors to rank")
    return sel, small


def _radix_select(tensors, k_of_n: Callable[[int], int], by_abs: bool, arg: str) -> KthLargest:
    """Pass 1 also checks every tensor and counts the entries, then ``k = k_of_n(n)``; then the refining passes.

    While the entries seen add up to at most ``_SMALL``, their keys are kept
    and, if that stays so, sorted instead (same result, ties included). The
    keys are int32, or int64 (four passes in all) if any tensor is float64:
    a first pass that meets a float64 tensor starts again with int64 keys.
    ``k_of_n(n)`` may be 0 (only empty tensors): then :data:`NOTHING` is returned. No tensor at all is an error.
    """
    first = _first_pass(tensors, by_abs, arg, wide=False)
    if first is None:
        first = _first_pass(tensors, by_abs, arg, wide=True)
    sel, small = first
    k = k_of_n(sel.n)
    if k == 0:
        return NOTHING
    if small is not None:
        return _from_sorted(torch.cat(small), k, by_abs, sel.wide)
    sel.choose_bucket(k)
    while sel.passes_left:
        for _, t in _items(tensors, arg):
            sel.refine(t)
        sel.choose_bucket()
    return sel.result()


def kth_largest(tensors: Mapping[str, torch.Tensor], k: int, *, by_abs: bool = True) -> KthLargest:
    """Exact k-th largest of ``|t|`` (or ``t``) over every entry of every tensor.

    Two passes over ``tensors.items()`` (four if any tensor is float64,
    which is ranked exactly, by int64 keys); the extra memory is that of one
    tensor's keys plus two histograms.

    Not called in a notebook: the top-k masks of ``lsedu.trim`` and ``lsedu.localize_dataless``, and ``lsedu merge``,
    use it; see notebook 04 (04_interference_ties_dare.ipynb).
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int, got {type(k).__name__}")

    def check_k(n: int) -> int:
        if n == 0:
            raise ValueError("tensors holds no entries to rank: it has no tensor, or only empty ones")
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
    """``k = min(n, max(1, floor(d * n + 1/2)))``: the number of entries a density ``d`` keeps of ``n``.

    The rule is round half up, applied to the exact product of ``n`` and the
    decimal that ``d`` prints as (``Fraction(str(d))``: 0.3 is 3/10, not the
    float just below it), with no float error, and at least one entry when
    there is any; none of none. At ``d = 0.5`` tensors of 3, 5, 7 and 9
    entries keep 2, 3, 4 and 5; ``d = 0.3`` of 5 keeps 2 (1.5 rounds up);
    ``d = 0.29`` of 100 keeps 29 (the float product, 28.999999999999996, is
    not what is rounded). Every top-k of lsedu and of ``lsedu merge`` counts
    with this function and no other.

    Not called in a notebook: ``lsedu.localize_trained`` and ``lsedu merge`` use it; see notebook 05
    (05_localize_and_stitch.ipynb).
    """
    return min(numel, max(1, math.floor(Fraction(str(float(density))) * numel + Fraction(1, 2))))


def global_topk_mask(tensors: Mapping[str, torch.Tensor], density: float, *, arg: str = "tensors") -> Mask:
    """Keep the top ``density`` fraction of ``|t|`` over *all* tensors at once.

    This is the global top-k of TIES-Merging (Yadav et al. 2023) and of
    Localize-and-Stitch's dataless localization (He et al. 2025): three
    passes over ``tensors``, exactly ``k = floor(density * n + 1/2)`` entries
    kept, at least one (:func:`count_for_density`). Tensors with no entries
    get empty masks; if every tensor is empty, there is nothing to rank and
    every mask is empty. A mapping with no tensor at all is an error.

    Not called in a notebook: ``lsedu.trim`` (TIES's global trim) and ``lsedu.localize_dataless`` use it; see notebook
    04 (04_interference_ties_dare.ipynb).
    """
    density = check_fraction(density, "density", low_open=True, high_open=False)
    kth = _radix_select(tensors, lambda n: count_for_density(n, density), True, arg)
    return _mask(tensors, kth, True, arg)


def per_tensor_topk_mask(tensors: Mapping[str, torch.Tensor], density: float, *, arg: str = "tensors") -> Mask:
    """Keep the top ``density`` fraction of ``|t|`` within *each* tensor.

    This is the trim that mergekit and peft apply to large language models.
    Each tensor of ``n`` entries keeps ``floor(density * n + 1/2)``, at least
    one (:func:`count_for_density`). A tensor with no entries gets an empty
    mask.

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
