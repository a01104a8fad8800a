"""Iso-C: task arithmetic with every direction of the summed update given the same weight.

Marczak et al. 2025, "No Task Left Behind: Isotropic Model Merging with Common
and Task-Specific Subspaces" (arXiv 2502.04959). The sum of the task vectors
of a weight matrix, ``M = sum_t tau_t``, has a few large singular values,
the directions most tasks share, and many small ones, the directions only
one task needs. Task arithmetic keeps that spectrum, so the shared
directions dominate the merge. Iso-C keeps the directions (the singular
vectors ``U`` and ``V``) and replaces every singular value by their mean, so
no task's directions are drowned by the others'.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ._checks import StateDict, check_base_and_vectors, check_scalar
from .task_vectors import apply_vector


def iso_c_merge(base: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]],
                lam: float = 1.0) -> StateDict:
    """Iso-C, ``theta = theta_pre + lam * mean(S) U V^T`` per weight matrix, ``U S V^T = sum_t tau_t`` (Marczak et al. 2025).

    Each 2-D tensor's summed task vector is decomposed (``torch.linalg.svd``,
    in float64) and rebuilt with all its singular values set to their mean:
    the same directions, a flat spectrum. Every other tensor (biases, norms,
    convolution kernels) gets the mean of its task vectors, as the authors'
    code does. ``lam`` is the paper's alpha, chosen there on validation
    data. Returns a new state dict.

    Not called in a notebook: a row of the registry (book/methods.md), not yet a row of the case studies.
    """
    tvs = check_base_and_vectors(base, task_vectors)
    lam = check_scalar(lam, "lam")
    update = {}
    for n in tvs[0]:
        total = sum(tv[n].double() for tv in tvs)
        if total.dim() == 2 and total.numel():
            U, S, Vh = torch.linalg.svd(total, full_matrices=False)
            update[n] = S.mean() * (U @ Vh)
        else:
            update[n] = total / len(tvs)
    return apply_vector(base, update, lam)
