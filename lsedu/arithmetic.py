"""Task arithmetic: add task vectors to get several skills at once.

Ilharco et al. 2023, "Editing Models with Task Arithmetic" (arXiv 2212.04089).
Explained in notebook 03 (task arithmetic).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ._checks import StateDict, check_base_and_vectors, check_nonempty_list, check_scalar, compute_dtype
from .soups import _score
from .task_vectors import apply_vector

#: The lambda grid of the task-arithmetic paper's validation search.
DEFAULT_GRID = tuple(round(0.1 * i, 1) for i in range(1, 11))


def task_arithmetic(
    base: Mapping[str, torch.Tensor], task_vectors: Sequence[Mapping[str, torch.Tensor]], lam: float = 0.3
) -> StateDict:
    """Task arithmetic, ``theta = theta_pre + lam * sum_i tau_i`` (Ilharco et al. 2023, Sec. 2).

    A negative ``lam`` (or a negated task vector) makes the model forget.
    The order of ``task_vectors`` does not matter. It computes in the
    inputs' dtype (float16 and bfloat16 in float32); a result too large for
    the dtype is an error naming the tensor. Returns a new state dict.

    Explained in notebook 03 (03_task_arithmetic.ipynb).
    """
    tvs = check_base_and_vectors(base, task_vectors)
    lam = check_scalar(lam, "lam")
    total = {n: sum(tv[n].to(compute_dtype(tv[n].dtype)) for tv in tvs) for n in tvs[0]}
    return apply_vector(base, total, lam)


@dataclass
class LambdaSearch:
    """What :func:`pick_lambda` returns: the best lambda, its score and every score on the grid.

    Explained in notebook 03 (03_task_arithmetic.ipynb).
    """

    best_lambda: float
    best_score: float
    scores: dict[float, float]


def pick_lambda(
    base: Mapping[str, torch.Tensor],
    task_vectors: Sequence[Mapping[str, torch.Tensor]],
    evaluate: Callable[[StateDict], float],
    grid: Sequence[float] = DEFAULT_GRID,
    merge: Callable[..., StateDict] = task_arithmetic,
    **merge_kwargs,
) -> LambdaSearch:
    """Choose ``lam`` by validation: ``argmax_lam evaluate(merge(base, task_vectors, lam=lam))``.

    ``evaluate`` must score on *validation* data, never on the test split.
    Works for any merge that takes ``lam`` (task arithmetic, TIES, DARE);
    ``merge_kwargs`` (a TIES ``density``, say) are passed through. On equal
    scores the first lambda in ``grid`` wins.

    Explained in notebook 03 (03_task_arithmetic.ipynb).
    """
    if isinstance(grid, (str, Mapping)) or not isinstance(grid, Iterable):
        raise TypeError(f"grid must be a list of lambda values, got {type(grid).__name__}")
    grid = check_nonempty_list(list(grid), "grid", "lambda values")
    if not callable(evaluate):
        raise TypeError(f"evaluate must be a callable state_dict -> float, got {type(evaluate).__name__}")
    scores: dict[float, float] = {}
    for lam in grid:
        lam = check_scalar(lam, "grid value")
        scores[lam] = _score(evaluate, merge(base, task_vectors, lam=lam, **merge_kwargs), f"lam={lam}")
    best = max(scores, key=lambda lam: scores[lam])  # max() keeps the first of equal scores
    return LambdaSearch(best, scores[best], scores)
