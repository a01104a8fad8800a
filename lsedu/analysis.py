"""Measurements on task vectors and masks: overlap, density, sign conflicts, storage.

These are the numbers behind notebooks 04 (interference) and 05
(Localize-and-Stitch), and the callbacks of their widgets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ._checks import check_mask, check_nonempty_list, check_task_vectors, check_tensor_dict


def _check_masks(masks, arg: str = "masks") -> list:
    masks = check_nonempty_list(masks, arg, "masks")
    check_tensor_dict(masks[0], f"{arg}[0]")
    for i, m in enumerate(masks):
        check_mask(m, masks[0], f"{arg}[{i}]", f"{arg}[0]")
    return masks


@dataclass
class Overlap:
    """Pairwise overlap of n masks, as n x n tensors.

    ``counts[i, j] = |g_i & g_j|`` (the diagonal holds each mask's size);
    ``iou[i, j] = |g_i & g_j| / |g_i | g_j|``;
    ``fraction[i, j] = |g_i & g_j| / |g_i|``, the share of mask i that mask j
    also claims (not symmetric). Empty denominators give 0.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """

    counts: torch.Tensor
    iou: torch.Tensor
    fraction: torch.Tensor


def mask_overlap(masks: Sequence[Mapping[str, torch.Tensor]]) -> Overlap:
    """Intersection counts, intersection-over-union and overlap fraction of every pair of masks.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    masks = _check_masks(masks)
    n = len(masks)
    counts = torch.zeros(n, n, dtype=torch.int64)
    for name in masks[0]:
        flat = torch.stack([m[name].reshape(-1) for m in masks]).double()  # exact counts up to 2**53
        counts += (flat @ flat.T).round().long()
    sizes = counts.diag()
    union = sizes[:, None] + sizes[None, :] - counts
    iou = torch.where(union > 0, counts / union.clamp(min=1), 0.0)
    fraction = torch.where(sizes[:, None] > 0, counts / sizes[:, None].clamp(min=1), 0.0)
    return Overlap(counts, iou, fraction)


def density(mask: Mapping[str, torch.Tensor]) -> float:
    """Fraction of all entries that a mask selects (or that are non-zero, for a task vector).

    Explained in notebook 04 (04_interference_ties_dare.ipynb).
    """
    check_tensor_dict(mask, "mask")
    total = sum(t.numel() for t in mask.values())
    return sum(int((t != 0).sum()) for t in mask.values()) / max(total, 1)


def density_per_tensor(mask: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``{name: fraction of that tensor's entries selected (non-zero)}``, in mask order.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    check_tensor_dict(mask, "mask")
    return {n: float((t != 0).float().mean()) if t.numel() else 0.0 for n, t in mask.items()}


#: Matches the block index in the usual names: ``encoder.layer.3.``, ``transformer.h.3.``,
#: ``model.layers.3.``, ``visual.transformer.resblocks.3.``, ``blocks.3.``.
LAYER_PATTERN = r"(?:^|\.)(?:layer|layers|h|resblocks|blocks)\.(\d+)\."


def density_per_layer(mask: Mapping[str, torch.Tensor], pattern: str = LAYER_PATTERN) -> dict[str, float]:
    """``{layer: fraction selected}`` over the tensors of each block.

    The layer is the first group of ``pattern`` found in the name; tensors
    with no match (embeddings, heads, final norms) are grouped under
    ``"other"``. Layers are returned in numeric order, ``"other"`` last.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    check_tensor_dict(mask, "mask")
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a regular expression (str), got {type(pattern).__name__}")
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {e}") from None
    if regex.groups < 1:
        raise ValueError(f"pattern {pattern!r} must have a group that captures the layer index")
    selected: dict[str, int] = {}
    total: dict[str, int] = {}
    for n, t in mask.items():
        found = regex.search(n)
        layer = found.group(1) if found else "other"
        selected[layer] = selected.get(layer, 0) + int((t != 0).sum())
        total[layer] = total.get(layer, 0) + t.numel()
    order = sorted((k for k in total if k != "other"), key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    order += ["other"] if "other" in total else []
    return {k: selected[k] / max(total[k], 1) for k in order}


@dataclass
class SignConflicts:
    """Where task vectors pull the same weight in opposite directions.

    ``conflicts``: entries with at least one positive and one negative value;
    ``shared``: entries non-zero in at least two task vectors;
    ``total``: all entries. ``per_tensor`` maps a name to its conflict fraction.

    Explained in notebook 04 (04_interference_ties_dare.ipynb).
    """

    conflicts: int
    shared: int
    total: int
    per_tensor: dict[str, float]

    @property
    def fraction(self) -> float:
        """Conflicting entries over all entries."""
        return self.conflicts / max(self.total, 1)

    @property
    def fraction_of_shared(self) -> float:
        """Conflicting entries over entries that at least two vectors touch."""
        return self.conflicts / max(self.shared, 1)


def sign_conflicts(task_vectors: Sequence[Mapping[str, torch.Tensor]]) -> SignConflicts:
    """Count entries on which the (trimmed or dense) task vectors disagree in sign.

    Explained in notebook 04 (04_interference_ties_dare.ipynb).
    """
    tvs = check_task_vectors(task_vectors)
    conflicts = shared = total = 0
    per_tensor = {}
    for n in tvs[0]:
        stack = torch.stack([tv[n].reshape(-1) for tv in tvs])
        c = int(((stack > 0).any(0) & (stack < 0).any(0)).sum())
        conflicts += c
        shared += int(((stack != 0).sum(0) >= 2).sum())
        total += stack.shape[1]
        per_tensor[n] = c / max(stack.shape[1], 1)
    return SignConflicts(conflicts, shared, total, per_tensor)


@dataclass
class Storage:
    """Bytes to store a task vector densely and sparsely.

    ``dense``: every entry. ``coo``: the non-zero values plus a flat index
    each (int32, or int64 for tensors past 2**31 entries). ``bitmask``: the
    non-zero values plus one bit per entry. ``sparse`` is the smaller of the
    two sparse forms.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """

    dense: int
    coo: int
    bitmask: int
    nonzero: int
    total: int

    @property
    def sparse(self) -> int:
        return min(self.coo, self.bitmask)

    @property
    def ratio(self) -> float:
        """``sparse / dense``: 0.02 means 50x smaller."""
        return self.sparse / max(self.dense, 1)


def storage(task_vector: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor] | None = None) -> Storage:
    """Storage of ``task_vector`` (restricted to ``mask`` if given) dense vs sparse.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    check_tensor_dict(task_vector, "task_vector")
    if mask is not None:
        check_mask(mask, task_vector, "mask", "task_vector")
    dense = coo = bitmask = nonzero = total = 0
    for n, t in task_vector.items():
        nz = int((mask[n] & (t != 0)).sum()) if mask is not None else int((t != 0).sum())
        value = t.element_size()
        index = 4 if t.numel() < 2**31 else 8
        dense += t.numel() * value
        coo += nz * (value + index)
        bitmask += nz * value + math.ceil(t.numel() / 8)
        nonzero += nz
        total += t.numel()
    return Storage(dense, coo, bitmask, nonzero, total)
