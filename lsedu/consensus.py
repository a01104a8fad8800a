"""TALL masks and Consensus merging: Localize-and-Stitch's nearest relative, also a mask per task, made without data.

Wang et al. 2024, "Localizing Task Information for Improved Model Merging and
Compression" (arXiv 2405.07813). Task arithmetic adds the task vectors into
one multi-task vector ``tau_MTL = sum_t tau_t``. A weight belongs to task
``t`` where its own vector moved it further than the *other* tasks' vectors
move it, the **TALL mask** ``m_t = |tau_t| > lambda_t |tau_MTL - tau_t|``
(:func:`tall_masks`). Where only one task claims a weight ("selfish") or
none does ("catastrophic"), adding it only adds interference, so
**Consensus merging** keeps the entries that at least ``k`` tasks claim and
merges them by task arithmetic (:func:`consensus_merge`). Localize-and-Stitch
instead keeps each task's own top entries and averages where masks overlap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ._checks import StateDict, check_base_and_vectors, check_scalar, check_task_vectors
from .task_vectors import apply_vector

Mask = dict[str, torch.Tensor]


def _lambdas(tall_lambda, n: int) -> list[float]:
    if isinstance(tall_lambda, Sequence) and not isinstance(tall_lambda, str):
        if len(tall_lambda) != n:
            raise ValueError(f"tall_lambda has {len(tall_lambda)} value(s) for {n} task vectors")
        values = [check_scalar(v, f"tall_lambda[{i}]") for i, v in enumerate(tall_lambda)]
    else:
        values = [check_scalar(tall_lambda, "tall_lambda")] * n
    if any(v < 0 for v in values):
        raise ValueError(f"tall_lambda must be >= 0, got {values}")
    return values


def tall_masks(task_vectors: Sequence[Mapping[str, torch.Tensor]], tall_lambda: float | Sequence[float] = 0.4
               ) -> list[Mask]:
    """Per task, the TALL mask ``m_t = |tau_t| > lambda_t |tau_MTL - tau_t|`` with ``tau_MTL = sum_s tau_s``.

    ``tall_lambda`` is one lambda for every task or one per task (the
    authors choose each task's from 0.2 to 0.6 on its validation data; 0.4
    is the middle). A larger lambda keeps fewer entries. Returns one dict of
    bool tensors per task vector, shaped like it.

    Not called in a notebook: a row of the registry (book/methods.md), not yet a row of the case studies.
    """
    tvs = check_task_vectors(task_vectors)
    lams = _lambdas(tall_lambda, len(tvs))
    total = {n: sum(tv[n].double() for tv in tvs) for n in tvs[0]}
    return [{n: tv[n].double().abs() > lam * (total[n] - tv[n].double()).abs() for n in tv}
            for tv, lam in zip(tvs, lams)]


def consensus_merge(base: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
                    k: int = 2, tall_lambda: float | Sequence[float] = 0.4, lam: float = 0.3) -> StateDict:
    """Consensus merging, ``theta = theta_pre + lam * (m ⊙ sum_t tau_t)`` with ``m = [sum_t m_t >= k]`` (Wang et al. 2024).

    ``m_t`` are the TALL masks of :func:`tall_masks`; ``k`` is how many tasks
    must claim an entry for it to stay: 2 (the authors' default) drops the
    entries one task alone claims and those none claims, 0 keeps every
    entry (plain task arithmetic), more than the number of tasks keeps none
    (the pretrained model). ``lam`` is task arithmetic's, chosen on
    validation like it (default: task arithmetic's 0.3). Returns a new
    state dict.

    Not called in a notebook: a row of the registry (book/methods.md), not yet a row of the case studies.
    """
    tvs = check_base_and_vectors(base, task_vectors)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int (how many tasks must claim an entry), got {k!r}")
    lam = check_scalar(lam, "lam")
    masks = tall_masks(tvs, tall_lambda)
    merged = {}
    for n in tvs[0]:
        votes = sum(m[n].to(torch.int64) for m in masks)
        merged[n] = torch.where(votes >= k, sum(tv[n].double() for tv in tvs), 0.0)
    return apply_vector(base, merged, lam)
