"""TIES-Merging: trim, elect sign, disjoint merge.

Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models"
(arXiv 2306.01708), Algorithm 1. Each step is its own function so that
notebook 04 (interference, TIES and DARE) can show it on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from ._checks import (
    StateDict,
    check_base_and_vectors,
    check_fraction,
    check_scalar,
    check_task_vector,
    check_task_vectors,
    check_tensor_dict,
    compute_dtype,
)
from .task_vectors import TaskVector, apply_vector
from .topk import global_topk_mask, per_tensor_topk_mask

TrimScope = Literal["global", "per_tensor"]


def trim(task_vector: Mapping[str, torch.Tensor], density: float, scope: TrimScope = "global") -> TaskVector:
    """Step 1, trim: ``tau_hat = tau * [|tau| in the top-k]``, other entries set to 0.

    ``scope="global"`` ranks ``|tau|`` over the whole vector at once, as the
    TIES paper does (k = density * all entries). ``scope="per_tensor"`` ranks
    within each tensor, as mergekit and peft do for large language models;
    that is a different method and keeps a different set of entries. Of ``n``
    entries (the vector's, or a tensor's), exactly ``floor(density * n + 1/2)``
    survive, rounding half up, at least one (:func:`lsedu.topk.count_for_density`);
    ties at the threshold are broken by tensor order, then position. An empty
    tensor stays empty; if every tensor is empty, nothing is kept.

    Explained in notebook 04 (04_interference_ties_dare.ipynb).
    """
    check_task_vector(task_vector, "task_vector")
    _check_scope(scope, "scope")
    density = check_fraction(density, "density", low_open=True, high_open=False)
    top = global_topk_mask if scope == "global" else per_tensor_topk_mask
    masks = top(task_vector, density, arg="task_vector")
    return TaskVector({n: torch.where(masks[n], t, torch.zeros_like(t)) for n, t in task_vector.items()})


def _check_scope(scope, arg: str) -> None:
    if scope not in ("global", "per_tensor"):
        raise ValueError(f"{arg} must be 'global' or 'per_tensor', got {scope!r}")


def elect_sign(trimmed: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Step 2, elect: ``gamma = sign(sum_t tau_hat_t)``, the sign with the larger total mass.

    Mass, not a vote count: +5 against -1 and -1 elects +1. Where the sum is
    exactly 0 the election has no winner and ``gamma = 0``, so that entry of
    the merge is 0 (the TIES reference code would put there the sign that
    most entries of the vector elected). The sum is taken in float64, so that the
    order of the task vectors cannot flip a close election. Returns float32
    tensors of -1, 0, +1.

    Explained in notebook 04 (04_interference_ties_dare.ipynb).
    """
    return _elect_sign(check_task_vectors(trimmed, "trimmed"))


def _elect_sign(tvs):
    return {n: torch.sign(sum(tv[n].double() for tv in tvs)).float() for n in tvs[0]}


def disjoint_mean(trimmed: Sequence[Mapping[str, torch.Tensor]], signs: Mapping[str, torch.Tensor]) -> TaskVector:
    """Step 3, disjoint merge: ``tau_m = sum_{t in A} tau_hat_t / |A|``, ``A = {t : sign(tau_hat_t) = gamma}``.

    Only non-zero entries that agree with the elected sign are averaged, so
    trimmed zeros do not dilute the mean; an entry where none agree is 0.
    The mean is taken in the vectors' dtype (float16 and bfloat16 in float32).

    Explained in notebook 04 (04_interference_ties_dare.ipynb).
    """
    tvs = check_task_vectors(trimmed, "trimmed")
    _check_signs(signs, tvs[0])
    return TaskVector(_disjoint_mean(tvs, signs))


def _disjoint_mean(tvs, signs) -> dict[str, torch.Tensor]:
    out = {}
    for n in tvs[0]:
        gamma, acc = signs[n], compute_dtype(tvs[0][n].dtype)
        total = torch.zeros(gamma.shape, dtype=acc)
        count = torch.zeros(gamma.shape, dtype=acc)
        for tv in tvs:
            t = tv[n].to(acc)
            agree = (torch.sign(t) == gamma) & (t != 0)
            total += torch.where(agree, t, 0.0)
            count += agree
        out[n] = (total / count.clamp(min=1)).to(tvs[0][n].dtype)
    return out


def _check_signs(signs, like: Mapping[str, torch.Tensor]) -> None:
    check_tensor_dict(signs, "signs")
    if signs.keys() != like.keys():
        missing, extra = like.keys() - signs.keys(), signs.keys() - like.keys()
        raise ValueError(f"signs must have the names of the trimmed vectors; missing {sorted(missing)}, extra {sorted(extra)}")
    for n, g in signs.items():
        if g.shape != like[n].shape:
            raise ValueError(f"signs[{n!r}] has shape {tuple(g.shape)}, expected {tuple(like[n].shape)}")
        if not g.is_floating_point() or not bool(((g == 1) | (g == 0) | (g == -1)).all()):
            raise ValueError(f"signs[{n!r}] must hold only -1, 0 and +1 as floats (as elect_sign returns)")


def ties_merge(
    base: Mapping[str, torch.Tensor],
    task_vectors: Sequence[Mapping[str, torch.Tensor]],
    density: float = 0.2,
    lam: float = 1.0,
    trim_scope: TrimScope = "global",
) -> StateDict:
    """TIES-Merging, ``theta = theta_pre + lam * tau_m`` (Yadav et al. 2023, Algorithm 1).

    ``tau_m`` is :func:`disjoint_mean` of the :func:`trim`-med vectors under
    the :func:`elect_sign`-ed signs. ``density`` is the fraction kept by the
    trim (the paper's k = 20% is ``density=0.2``); ``lam`` is about 1 when it
    is not tuned on validation data. The order of ``task_vectors`` does not
    matter. Returns a new state dict.

    Explained in notebook 04 (04_interference_ties_dare.ipynb).
    """
    tvs = check_base_and_vectors(base, task_vectors)
    lam = check_scalar(lam, "lam")
    _check_scope(trim_scope, "trim_scope")
    trimmed = [trim(tv, density, trim_scope) for tv in tvs]
    return apply_vector(base, disjoint_mean(trimmed, elect_sign(trimmed)), lam)
