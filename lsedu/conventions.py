"""The reference implementations' conventions, by name, so that a reader can reproduce each tool's numbers.

"The numbers don't match" is most often a difference of convention, not of
method: how many entries a density keeps, what happens to entries tied at the
threshold, which sign an entry gets when its votes cancel, what the disjoint
mean divides by, and whether the weights of the models count before or after
the election. :data:`CONVENTIONS` holds one frozen row per implementation:

=========================  ===================================================
name                       what it reproduces
=========================  ===================================================
``"lsedu"``                lsedu itself (:func:`lsedu.ties_merge`, :func:`lsedu.stitch`)
``"ties_repo"``            the TIES-Merging authors' repository (Yadav et al. 2023)
``"localize_stitch_repo"`` the Localize-and-Stitch authors' repository (He et al. 2025)
``"peft"``                 ``peft.utils.merge_utils`` (``ties``, ``prune``), per tensor
``"mergekit"``             mergekit 0.1.5's ``ties`` merge method, per tensor
=========================  ===================================================

and five short functions compute exactly what each tool computes, on state
dicts of torch tensors (each tensor in its own dtype, as the tool would):

>>> from lsedu import conventions
>>> merged = conventions.ties_merge(base, tvs, 0.2, "mergekit", weights=[1.0, 0.5])  # doctest: +SKIP
>>> mask = conventions.trim_mask(tau, 0.01, "localize_stitch_repo")                   # doctest: +SKIP

* :func:`trim_mask`: the entries a density keeps, under a convention's rule;
* :func:`ties_vector` and :func:`ties_merge`: TIES, ``theta_pre + lam * tau_m``;
* :func:`stitch` and :func:`localize_stitch`: Localize-and-Stitch's stitching.

The ``"lsedu"`` row calls lsedu's own functions, so its rules live in one place
(:mod:`lsedu.ties`, :mod:`lsedu.topk`). ``python -m lsedu.conventions --update
book/conventions.md`` rewrites the page's tables from :data:`CONVENTIONS`.
The reproductions favour being exactly the tool over being fast: the two
repositories' global rankings concatenate a whole task vector, as they do.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch

from . import _pages
from . import localize_stitch as _ls
from . import ties as _ties
from ._checks import (
    Mask,
    StateDict,
    check_base_and_vectors,
    check_mask,
    check_nonempty_list,
    check_scalar,
    check_task_vector,
    check_task_vectors,
)
from .config import Check, number
from .task_vectors import TaskVector
from .topk import count_for_density, global_topk_mask

__all__ = ["CONVENTIONS", "Convention", "book_block", "get", "localize_stitch", "markdown_table", "names",
           "stitch", "ties_merge", "ties_vector", "trim_mask"]


@dataclass(frozen=True)
class Convention:
    """One implementation's rules, each stated once: a row of :data:`CONVENTIONS`.

    ``scope`` is what one ranking of ``|tau|`` covers; ``keep`` the rule that
    picks the entries, ``ties`` what it does with entries equal to the
    threshold, and ``count(n, density)`` how many of ``n`` entries one ranking
    keeps when no entries tie at the threshold. ``zero_sign`` is the elected
    sign where the summed vector is 0, ``denominator`` what the merge divides
    by, ``weights`` where per-model weights enter; ``density`` is the range a
    density may take (a :class:`lsedu.config.Check`), and ``merges`` the merges
    the tool has: ``"ties"``, ``"stitch"`` or both.

    Not called in a notebook: the rows of the page Conventions of the reference implementations
    (book/conventions.md).
    """

    name: str
    tool: str
    scope: str
    keep: str
    ties: str
    zero_sign: str
    denominator: str
    weights: str
    density: Check
    count: Callable[[int, float], int]
    per_tensor: bool
    merges: tuple[str, ...]

    def check_density(self, density) -> float:
        """``density`` in this convention's range, as a float; the error names the argument and the convention."""
        return self.density(density, f"density (convention {self.name!r})")


def _ties_repo_count(n: int, density: float) -> int:
    return int(density * n) + 1


def _stitch_repo_count(n: int, density: float) -> int:
    return int(density * n) - 1


def _peft_count(n: int, density: float) -> int:
    return n if density >= 1 else int(density * n)


def _mergekit_count(n: int, density: float) -> int:
    if density >= 1:
        return n
    return 0 if density <= 0 or n == 0 else max(1, int(density * n))


CONVENTIONS: Mapping[str, Convention] = MappingProxyType({c.name: c for c in (
    Convention(
        name="lsedu", tool="lsedu (this library: `lsedu.ties_merge`, `lsedu.stitch_dataless`)",
        scope="global: one ranking over all tensors of a task vector (`trim_scope='per_tensor'` ranks each tensor)",
        keep="the k largest |tau|, k = max(1, floor(d*n + 1/2)), at most n",
        ties="broken by tensor order, then position: exactly k kept",
        zero_sign="0: the entry of the merge is 0",
        denominator="TIES: the number of agreeing non-zero entries (at least 1); stitch: the number of masks "
                    "covering the entry",
        weights="none", density=number(0, 1, low_open=True, type_error=True), count=count_for_density,
        per_tensor=False, merges=("ties", "stitch")),
    Convention(
        name="ties_repo", tool="the TIES-Merging repository (Yadav et al. 2023)",
        scope="global: the task vector flattened into one vector, tensors in sorted name order",
        keep="|tau| >= the (n - int(d*n))-th smallest |tau|: int(d*n) + 1 entries",
        ties="every entry equal to the threshold is kept",
        zero_sign="the majority sign of the whole vector, sign(sum of the elected signs); where that is 0 too, "
                  "the entry averages its negative values",
        denominator="the number of agreeing non-zero entries (at least 1)",
        weights="none", density=number(0, 1, high_open=True, type_error=True), count=_ties_repo_count,
        per_tensor=False, merges=("ties",)),
    Convention(
        name="localize_stitch_repo", tool="the Localize-and-Stitch repository (He et al. 2025)",
        scope="global: one ranking over the masked (trainable) tensors",
        keep="|tau| > the smallest of the int(d*n) largest |tau|: int(d*n) - 1 entries; int(d*n) = 0 fails",
        ties="every entry equal to the threshold is left out",
        zero_sign="no election",
        denominator="stitch: each task's masked vector times 1 / (the number of masks covering the entry)",
        weights="none", density=number(0, 1, low_open=True, type_error=True), count=_stitch_repo_count,
        per_tensor=False, merges=("stitch",)),
    Convention(
        name="peft", tool="peft (`peft.utils.merge_utils.ties`)",
        scope="per tensor",
        keep="exactly int(d*n) entries, chosen by `torch.topk` of |tau|; d >= 1 keeps every entry",
        ties="`torch.topk` picks among equal entries: exactly int(d*n) kept",
        zero_sign="+1 (a sum >= 0 elects +1)",
        denominator="the number of agreeing non-zero entries (at least 1)",
        weights="after the election: the sign is elected on the unweighted trimmed vectors, then the weighted "
                "agreeing entries are summed",
        density=number(0, 1, type_error=True), count=_peft_count, per_tensor=True, merges=("ties",)),
    Convention(
        name="mergekit", tool="mergekit 0.1.5 (`merge_method: ties`)",
        scope="per tensor",
        keep="max(1, int(d*n)) entries, the first of `argsort(|tau|, descending)` (keys in float32 on the CPU); "
             "d >= 1 keeps every entry, d <= 0 none",
        ties="the order of `torch.argsort` decides among equal entries: exactly max(1, int(d*n)) kept",
        zero_sign="+1 (a sum >= 0 elects +1)",
        denominator="`normalize: true`: the sum of the weights of the agreeing non-zero entries (1 where that "
                    "is 0); `normalize: false`: none, the weighted sum",
        weights="before the election: each trimmed vector is multiplied by its weight, then the sign is "
                "elected on the weighted vectors",
        density=number(0, 1, type_error=True), count=_mergekit_count, per_tensor=True, merges=("ties",)),
)})


def names() -> list[str]:
    """The conventions' names, in table order.

    Not called in a notebook: the page Conventions of the reference implementations lists them
    (book/conventions.md).
    """
    return list(CONVENTIONS)


def get(name) -> Convention:
    """The convention called ``name``; a ValueError naming the argument and listing the names otherwise.

    Not called in a notebook: every function of ``lsedu.conventions`` looks its convention up with it; see
    book/conventions.md.
    """
    if not isinstance(name, str) or name not in CONVENTIONS:
        raise ValueError(f"convention must be one of {names()}, got {name!r}")
    return CONVENTIONS[name]


def _for(convention, merge: str) -> Convention:
    c = get(convention)
    if merge not in c.merges:
        other = "conventions.ties_merge" if merge == "stitch" else "conventions.stitch"
        raise ValueError(f"convention {c.name!r} has no {merge} merge (it has {', '.join(c.merges)}: "
                         f"use {other}); {merge} conventions: {[n for n, r in CONVENTIONS.items() if merge in r.merges]}")
    return c


# --- trim: which entries a density keeps ------------------------------------------------------------------
def _flat(tv: Mapping[str, torch.Tensor], names_: Sequence[str]) -> torch.Tensor:
    return torch.cat([tv[n].reshape(-1) for n in names_])


def _split(flat: torch.Tensor, like: Mapping[str, torch.Tensor], names_: Sequence[str]) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for n in names_:
        size = like[n].numel()
        out[n] = flat[start : start + size].reshape(like[n].shape)
        start += size
    return out


def _ranked(tv, names_: Sequence[str], convention: str) -> torch.Tensor:
    """``|tau|`` of the whole task vector as one flat tensor, for a global ranking; an error if it has no entry."""
    flat = _flat(tv, names_).abs()
    if flat.numel() == 0:
        raise ValueError(f"task_vector holds no entries (every tensor is empty): convention {convention!r} "
                         "has nothing to rank")
    return flat


def _ties_repo_mask(tv, density: float) -> Mask:
    """``|tau| >= kthvalue(|tau|, K - int(d * K))`` over the flattened vector (names sorted)."""
    order = sorted(tv)
    flat = _ranked(tv, order, "ties_repo")
    kth = flat.kthvalue(flat.numel() - int(flat.numel() * density)).values
    return _split(flat >= kth, tv, order)


def _stitch_repo_mask(tv, density: float) -> Mask:
    """``|tau| > min(topk(|tau|, int(d * n)))``, the threshold taken over every tensor at once."""
    flat = _ranked(tv, list(tv), "localize_stitch_repo")
    k = int(density * flat.numel())
    if k < 1:
        raise ValueError(f"density (convention 'localize_stitch_repo') keeps int({density!r} * {flat.numel()}) = 0 "
                         "entries, and that repository's threshold (the smallest of the top 0) does not exist: "
                         f"take density >= {1 / flat.numel():.3g}")
    threshold = torch.topk(flat, k).values.min()
    return {n: t.abs() > threshold for n, t in tv.items()}


def _peft_keep(t: torch.Tensor, density: float) -> torch.Tensor:
    """The ``int(d * n)`` entries of largest ``|tau|`` that ``torch.topk`` returns; every entry at ``d >= 1``."""
    keep = torch.zeros(t.numel(), dtype=torch.bool, device=t.device)
    if density >= 1:
        return keep.logical_not_().reshape(t.shape)
    keep[torch.topk(t.abs().reshape(-1), k=int(density * t.numel())).indices] = True
    return keep.reshape(t.shape)


def _mergekit_keep(t: torch.Tensor, density: float) -> torch.Tensor:
    """The first ``max(1, int(d * n))`` entries of ``torch.argsort(|tau|, descending=True)``, the keys in float32
    on the CPU (in the tensor's dtype elsewhere); every entry at ``d >= 1``, none at ``d <= 0``."""
    keep = torch.zeros(t.numel(), dtype=torch.bool, device=t.device)
    if density >= 1:
        return keep.logical_not_().reshape(t.shape)
    if density <= 0 or t.numel() == 0:
        return keep.reshape(t.shape)
    magnitude = t.abs().reshape(-1)
    if magnitude.device.type == "cpu":
        magnitude = magnitude.float()
    keep[torch.argsort(magnitude, descending=True)[: max(1, int(density * t.numel()))]] = True
    return keep.reshape(t.shape)


def _trimmed(t: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``tau * keep``, the kept entries as they are and the others 0 (a tensor kept whole is returned as it is)."""
    return t if bool(keep.all()) and keep.numel() else t * keep.to(t.dtype)


def trim_mask(task_vector: Mapping[str, torch.Tensor], density: float, convention: str = "lsedu") -> Mask:
    """The entries of ``task_vector`` that a top-``density`` selection keeps under ``convention``'s rule.

    With ``n`` entries in one ranking (the whole vector, or one tensor where
    the scope is per tensor) and ``t`` the threshold:

    * ``"lsedu"``: the top ``k = max(1, floor(d*n + 1/2))`` of ``|tau|``, ties broken by tensor order, then position;
    * ``"ties_repo"``: ``|tau| >= t``, ``t`` the ``(n - int(d*n))``-th smallest ``|tau|``: ``int(d*n) + 1`` entries
      and every tie of ``t``;
    * ``"localize_stitch_repo"``: ``|tau| > t``, ``t`` the ``int(d*n)``-th largest: ``int(d*n) - 1`` entries, and no tie
      of ``t``;
    * ``"peft"``: per tensor, the ``int(d*n)`` entries ``torch.topk`` returns;
    * ``"mergekit"``: per tensor, the first ``max(1, int(d*n))`` of ``torch.argsort(|tau|, descending=True)``.

    This is TIES's trim, and for the first three also Localize-and-Stitch's
    dataless mask. Returns bool masks shaped like ``task_vector``.

    Not called in a notebook: the page Conventions of the reference implementations compares the rules
    (book/conventions.md).
    """
    c = get(convention)
    check_task_vector(task_vector, "task_vector")
    density = c.check_density(density)
    if c.name == "lsedu":
        return global_topk_mask(task_vector, density, arg="task_vector")
    if c.name == "ties_repo":
        return _ties_repo_mask(task_vector, density)
    if c.name == "localize_stitch_repo":
        return _stitch_repo_mask(task_vector, density)
    keep = _peft_keep if c.name == "peft" else _mergekit_keep
    return {n: keep(t, density) for n, t in task_vector.items()}


# --- TIES ------------------------------------------------------------------------------------------------
def _check_weights(weights, n: int, c: Convention) -> list[float]:
    if weights is None:
        return [1.0] * n
    if c.weights == "none":
        raise ValueError(f"weights apply to conventions {[k for k, r in CONVENTIONS.items() if r.weights != 'none']} "
                         f"only; convention {c.name!r} has no per-model weights: pass weights=None")
    items = check_nonempty_list(weights, "weights", "numbers")
    if len(items) != n:
        raise ValueError(f"weights must have one number per task vector ({n}), got {len(items)}")
    return [check_scalar(w, f"weights[{i}]") for i, w in enumerate(items)]


def _check_normalize(normalize, c: Convention) -> bool:
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    if not normalize and c.name != "mergekit":
        raise ValueError(f"normalize=False is mergekit's option (the weighted sum); convention {c.name!r} always "
                         "divides (see its denominator): pass normalize=True")
    return normalize


def _ties_repo_vector(tvs, density: float) -> dict[str, torch.Tensor]:
    order = sorted(tvs[0])
    trimmed = []
    for tv in tvs:
        flat = _flat(tv, order)
        keep = _ties_repo_mask(tv, density)
        trimmed.append(flat * _flat(keep, order))
    trimmed = torch.stack(trimmed)
    signs = torch.sign(trimmed.sum(dim=0))
    signs[signs == 0] = torch.sign(signs.sum())  # the vector's majority sign fills the cancelled entries
    agree = torch.where(signs > 0, trimmed > 0, trimmed < 0)
    chosen = trimmed * agree
    merged = chosen.sum(dim=0) / (chosen != 0).sum(dim=0).float().clamp(min=1)
    return _split(merged, tvs[0], order)


def _peft_vector(tvs, density: float, weights: list[float]) -> dict[str, torch.Tensor]:
    w = torch.tensor(weights)
    out = {}
    for n in tvs[0]:
        trimmed = torch.stack([_trimmed(tv[n], _peft_keep(tv[n], density)) for tv in tvs])
        elected = torch.where(trimmed.sum(dim=0) >= 0, 1, -1)  # sign of the unweighted sum; 0 elects +1
        agree = trimmed.sign() == elected
        weighted = trimmed * w.reshape(-1, *([1] * (trimmed.dim() - 1)))
        out[n] = (weighted * agree).sum(dim=0) / torch.clamp(agree.sum(dim=0), min=1.0)
    return out


def _mergekit_vector(tvs, density: float, weights: list[float], normalize: bool) -> dict[str, torch.Tensor]:
    out = {}
    for n in tvs[0]:
        trimmed = torch.stack([_trimmed(tv[n], _mergekit_keep(tv[n], density)) for tv in tvs])
        w = torch.tensor(weights, dtype=trimmed.dtype, device=trimmed.device)
        w = w.reshape(-1, *([1] * (trimmed.dim() - 1)))
        weighted = trimmed * w  # the weights count in the election
        elected = (weighted.sum(dim=0) >= 0).to(trimmed.dtype) * 2 - 1
        agree = weighted.sign() == elected
        merged = (weighted * agree).sum(dim=0)
        if normalize:
            divisor = (w * agree).sum(dim=0)
            divisor[divisor == 0] = 1
            merged = merged / divisor
        out[n] = merged
    return out


def _vector(tvs, density, c: Convention, weights, normalize) -> dict[str, torch.Tensor]:
    """The merged task vector ``tau_m`` of a TIES convention, in the dtype the tool computes it in."""
    density = c.check_density(density)
    weights = _check_weights(weights, len(tvs), c)
    normalize = _check_normalize(normalize, c)
    if c.name == "lsedu":
        trimmed = [_ties.trim(tv, density) for tv in tvs]
        return dict(_ties.disjoint_mean(trimmed, _ties.elect_sign(trimmed)))
    if c.name == "ties_repo":
        return _ties_repo_vector(tvs, density)
    if c.name == "peft":
        return _peft_vector(tvs, density, weights)
    return _mergekit_vector(tvs, density, weights, normalize)


def ties_vector(task_vectors: Sequence[Mapping[str, torch.Tensor]], density: float = 0.2, convention: str = "lsedu",
                *, weights: Sequence[float] | None = None, normalize: bool = True) -> TaskVector:
    """The merged task vector of TIES, ``tau_m``, as ``convention`` computes it (what ``peft``'s ``ties`` returns).

    ``tau_m = sum_{t in A} w_t * trim(tau_t) / D``, ``A`` the task vectors
    whose trimmed entry is non-zero with the elected sign ``gamma``:

    * ``"lsedu"``: ``gamma = sign(sum_t trim(tau_t))``, 0 where the sum is 0; ``D = |A|`` (at least 1); no weights;
    * ``"ties_repo"``: the same, but a 0 sum takes ``sign(sum of all gamma)`` of the whole vector; no weights;
    * ``"peft"``: ``gamma = +1`` where ``sum_t trim(tau_t) >= 0``, else -1 (unweighted); ``D = |A|``;
    * ``"mergekit"``: ``gamma = +1`` where ``sum_t w_t * trim(tau_t) >= 0``, else -1 (weighted);
      ``D = sum_{t in A} w_t`` (1 where that is 0) with ``normalize=True``, ``D = 1`` with ``normalize=False``.

    ``weights`` (one number per task vector, default all 1) apply to peft
    and mergekit only, ``normalize=False`` to mergekit only. Returns a
    :class:`lsedu.TaskVector` in the task vectors' dtype.

    Not called in a notebook: the page Conventions of the reference implementations compares the rules
    (book/conventions.md).
    """
    c = _for(convention, "ties")
    tvs = check_task_vectors(task_vectors)
    merged = _vector(tvs, density, c, weights, normalize)
    return TaskVector({n: t.to(tvs[0][n].dtype) for n, t in merged.items()})


def ties_merge(base: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
               density: float = 0.2, convention: str = "lsedu", *, weights: Sequence[float] | None = None,
               normalize: bool = True, lam: float = 1.0) -> StateDict:
    """TIES-Merging under ``convention``: ``theta = theta_pre + lam * tau_m``, ``tau_m`` of :func:`ties_vector`.

    ``"lsedu"`` is :func:`lsedu.ties_merge` itself. For the others the sum
    is taken in the dtype the tool computes in and cast to ``base``'s dtype;
    ``convention="mergekit"`` with ``lam`` is mergekit's ``lambda``, and its
    ``weights`` are mergekit's per-model ``weight`` (given here as
    ``task_vectors[i] = finetuned_i - base``, the delta mergekit computes).
    Tensors of ``base`` outside the task vectors are copied. Returns a new
    state dict.

    Not called in a notebook: the page Conventions of the reference implementations compares the rules
    (book/conventions.md).
    """
    c = _for(convention, "ties")
    tvs = check_base_and_vectors(base, task_vectors)
    lam = check_scalar(lam, "lam")
    if c.name == "lsedu":
        c.check_density(density)
        _check_weights(weights, len(tvs), c)
        _check_normalize(normalize, c)
        return _ties.ties_merge(base, tvs, density, lam)
    merged = _vector(tvs, density, c, weights, normalize)
    return {n: (t + merged[n] * lam).to(t.dtype) if n in merged else t.clone() for n, t in base.items()}


# --- Localize-and-Stitch ---------------------------------------------------------------------------------
def _check_masks(masks, tvs) -> list:
    if isinstance(masks, Mapping) or not isinstance(masks, Sequence) or len(masks) != len(tvs):
        n = len(masks) if isinstance(masks, Sequence) and not isinstance(masks, Mapping) else type(masks).__name__
        raise ValueError(f"masks must be a list with one mask per task vector ({len(tvs)}), got {n}")
    for i, m in enumerate(masks):
        check_mask(m, tvs[i], f"masks[{i}]", f"task_vectors[{i}]")
    return list(masks)


def _stitch_repo(base, tvs, masks) -> StateDict:
    """``theta = theta_pre + sum_i r_i * tau_i`` added task by task, ``r_i = gamma_i / sum_j gamma_j`` as a reciprocal."""
    out = {n: t.clone() for n, t in base.items()}
    for n in tvs[0]:
        gammas = [m[n].float() for m in masks]
        for i, (tv, g) in enumerate(zip(tvs, gammas)):
            covering = g + sum(torch.logical_and(masks[i][n], masks[j][n]) for j in range(len(masks)) if j != i)
            share = torch.reciprocal(covering).masked_fill(covering == 0, 0)
            out[n] += share * tv[n]
    return out


def stitch(base: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
           masks: Sequence[Mapping[str, torch.Tensor]], convention: str = "lsedu") -> StateDict:
    """Stitching under ``convention``: ``theta = theta_pre + sum_i gamma'_i * tau_i``, ``gamma'_i = gamma_i / sum_j gamma_j``.

    * ``"lsedu"`` is :func:`lsedu.stitch`: ``sum_i gamma_i * tau_i`` divided by
      the number of masks covering each entry, added to ``theta_pre`` in float32;
    * ``"localize_stitch_repo"``: each task's ``tau_i`` times ``1 / (the number of
      masks covering the entry)`` (0 outside its mask), added to ``theta_pre`` one
      task after the other, in the tensors' dtype: equal up to rounding, not bit for bit.

    ``masks`` are bool masks, one per task vector (trained or dataless).
    Returns a new state dict.

    Not called in a notebook: the page Conventions of the reference implementations compares the rules
    (book/conventions.md).
    """
    c = _for(convention, "stitch")
    tvs = check_base_and_vectors(base, task_vectors)
    if c.name == "lsedu":
        return _ls.stitch(base, tvs, masks)
    return _stitch_repo(base, tvs, _check_masks(masks, tvs))


def localize_stitch(base: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
                    density: float = 0.01, convention: str = "lsedu") -> StateDict:
    """Dataless Localize-and-Stitch under ``convention``: :func:`stitch` of each task's :func:`trim_mask`.

    ``"lsedu"`` is :func:`lsedu.stitch_dataless` (exactly ``max(1, floor(s*n + 1/2))``
    entries per mask); ``"localize_stitch_repo"`` keeps ``|tau| > min(topk(|tau|, int(s*n)))``,
    ``int(s*n) - 1`` entries and no tie of the threshold, then stitches as that repository does.
    Returns a new state dict.

    Not called in a notebook: the page Conventions of the reference implementations compares the rules
    (book/conventions.md).
    """
    c = _for(convention, "stitch")
    tvs = check_base_and_vectors(base, task_vectors)
    if c.name == "lsedu":
        return _ls.stitch_dataless(base, tvs, density)
    return stitch(base, tvs, [trim_mask(tv, density, c.name) for tv in tvs], c.name)


# --- the tables of book/conventions.md ---------------------------------------------------------------------
#: The sizes and densities of the page's table of counts: none lands on a half (d*n = x.5), where rounding rules differ.
EXAMPLES = ((10, 0.26), (1000, 0.01), (30, 0.01), (7, 0.2))

FIELDS = (("scope", "what one ranking covers"), ("keep", "entries kept at density d (n entries per ranking)"),
          ("ties", "entries equal to the threshold"), ("zero_sign", "sign elected where the sum is 0"),
          ("denominator", "the merge divides by"), ("weights", "per-model weights"))


def _row(cells) -> str:
    """One Markdown table row; a ``|`` inside a cell (``|tau|``) is escaped so that it does not split the cell."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def markdown_table() -> str:
    """The registry as a Markdown table: one row per rule, one column per convention.

    Not called in a notebook: ``python -m lsedu.conventions`` prints it; see book/conventions.md.
    """
    head = ["rule", *(f"`{n}`" for n in CONVENTIONS)]
    rows = [_row(head), "|" + "---|" * len(head), _row(["implementation", *(c.tool for c in CONVENTIONS.values())])]
    rows += [_row([what, *(getattr(c, field) for c in CONVENTIONS.values())]) for field, what in FIELDS]
    rows.append(_row(["density accepted",
                      *(c.density.what.removeprefix("a finite number ") for c in CONVENTIONS.values())]))
    rows.append(_row(["merges offered", *(", ".join(c.merges) for c in CONVENTIONS.values())]))
    return "\n".join(rows) + "\n"


def _count_cell(c: Convention, n: int, d: float) -> str:
    try:
        c.check_density(d)
    except ValueError:
        return "refused"
    k = c.count(n, d)
    return "fails" if k < 0 else str(k)


def counts_table() -> str:
    """How many entries each convention keeps for a few sizes and densities (no ties at the threshold).

    Not called in a notebook: ``python -m lsedu.conventions`` prints it; see book/conventions.md.
    """
    head = ["n entries", "density d", "d*n", *(f"`{n}`" for n in CONVENTIONS)]
    rows = [_row(head), "|" + "---|" * len(head)]
    rows += [_row([n, f"{d:g}", f"{d * n:g}", *(_count_cell(c, n, d) for c in CONVENTIONS.values())])
             for n, d in EXAMPLES]
    return "\n".join(rows) + "\n"


BEGIN = "<!-- generated by `python -m lsedu.conventions --update book/conventions.md`: do not edit by hand -->"
END = _pages.END


def book_block() -> str:
    """What ``book/conventions.md`` holds between :data:`BEGIN` and :data:`END`: the rules, then the counts.

    Not called in a notebook: ``python -m lsedu.conventions --update`` writes it; see book/conventions.md.
    """
    return (f"{BEGIN}\n\n{markdown_table()}\nHow many entries each keeps, for one ranking of n entries with no two "
            f"equal at the threshold (per tensor for `peft` and `mergekit`, the whole task vector for the "
            f"others):\n\n{counts_table()}\n{END}")


def generated_part(text: str, path: str = "book/conventions.md") -> str:
    """The part of ``text`` between :data:`BEGIN` and :data:`END`, markers included.

    Not called in a notebook: ``python -m lsedu.conventions --update`` uses it; see book/conventions.md.
    """
    return _pages.generated_part(text, BEGIN, path, END)


def main(argv=None) -> int:
    """``python -m lsedu.conventions``: print the tables, or with ``--update PAGE`` rewrite PAGE's generated part.

    Not called in a notebook: ``python -m lsedu.conventions --update book/conventions.md`` writes the page
    Conventions of the reference implementations; see book/conventions.md.
    """
    return _pages.page_main(argv, prog="python -m lsedu.conventions", page="book/conventions.md",
                            description="Print the table of the reference implementations' conventions.",
                            block=book_block, begin=BEGIN)


if __name__ == "__main__":  # run the registry of lsedu.conventions, not this file's copy of it named __main__
    from lsedu.conventions import main as _main

    sys.exit(_main())
