"""Task arithmetic: add task vectors to get several skills at once.

Ilharco et al. 2023, "Editing Models with Task Arithmetic" (arXiv 2212.04089).
Explained in notebook 03 (task arithmetic).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
import warnings
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
    #: "low" or "high" when the best lambda is the grid's smallest (other than 0) or largest value, else None.
    at_edge: str | None = None


def lambda_beyond(values: Sequence[float], side: str) -> float | None:
    """The next lambda past the ``side`` ("low" or "high") edge of ``values``: one more step of the grid's own
    spacing at that edge; below the smallest positive value, never down to 0 or under (half of it instead).

    None for fewer than 2 values (no spacing to extend by). Used by :func:`pick_lambda` and by
    :func:`lsedu.casestudy.grid_search` to widen a grid.

    Explained in notebook 03 (03_task_arithmetic.ipynb).
    """
    v = sorted(values)
    if len(v) < 2:
        return None
    if side == "high":
        new = v[-1] + (v[-1] - v[-2])
    else:
        new = v[0] - (v[1] - v[0])
        if v[0] > 0 >= new:
            new = v[0] / 2
    new = round(new, 6)
    return None if new in v else new


def _edge(scores: Mapping[float, float], best: float) -> str | None:
    """Which edge of the searched lambdas ``best`` is: "high", "low" (never lambda 0: the pretrained model), None."""
    if len(scores) < 2:
        return None
    if best == max(scores):
        return "high"
    return "low" if best == min(scores) and best != 0 else None


def pick_lambda(
    base: Mapping[str, torch.Tensor],
    task_vectors: Sequence[Mapping[str, torch.Tensor]],
    evaluate: Callable[[StateDict], float],
    grid: Sequence[float] = DEFAULT_GRID,
    merge: Callable[..., StateDict] = task_arithmetic,
    *,
    widen: int = 0,
    **merge_kwargs,
) -> LambdaSearch:
    """Choose ``lam`` by validation: ``argmax_lam evaluate(merge(base, task_vectors, lam=lam))``.

    ``evaluate`` must score on *validation* data, never on the test split.
    Works for any merge that takes ``lam`` (task arithmetic, TIES, DARE);
    ``merge_kwargs`` (a TIES ``density``, say) are passed through. On equal
    scores the first lambda in ``grid`` wins.

    When the best lambda is the grid's largest value, or its smallest other
    than 0 (lambda = 0 is the pretrained model itself: nothing lies below it),
    a value beyond the grid may score better. With ``widen`` > 0 the search
    then scores the next value beyond that edge (:func:`lambda_beyond`), up to
    ``widen`` values per edge; ``scores`` holds every lambda scored. If the
    best is still at an edge, it warns (``UserWarning``, naming the value and
    the grid) and ``at_edge`` says which edge.

    Explained in notebook 03 (03_task_arithmetic.ipynb).
    """
    if isinstance(grid, (str, Mapping)) or not isinstance(grid, Iterable):
        raise TypeError(f"grid must be a list of lambda values, got {type(grid).__name__}")
    grid = check_nonempty_list(list(grid), "grid", "lambda values")
    if not callable(evaluate):
        raise TypeError(f"evaluate must be a callable state_dict -> float, got {type(evaluate).__name__}")
    if isinstance(widen, bool) or not isinstance(widen, int) or widen < 0:
        raise ValueError(f"widen must be a non-negative int, got {widen!r}")
    scores: dict[float, float] = {}

    def score(lam: float) -> None:
        scores[lam] = _score(evaluate, merge(base, task_vectors, lam=lam, **merge_kwargs), f"lam={lam}")

    for lam in grid:
        score(check_scalar(lam, "grid value"))
    grown = {"low": 0, "high": 0}
    while True:
        best = max(scores, key=lambda lam: scores[lam])  # max() keeps the first of equal scores
        edge = _edge(scores, best)
        new = lambda_beyond(scores, edge) if edge and grown[edge] < widen else None
        if new is None:
            break
        grown[edge] += 1
        score(new)
    if edge:
        warnings.warn(f"pick_lambda: the best lambda {best:g} is the {edge}est value of the grid {sorted(scores)}"
                      f"{f' after widening it {grown[edge]} times' if grown[edge] else ''}; a lambda beyond it may "
                      f"score better: widen the grid", stacklevel=2)
    return LambdaSearch(best, scores[best], scores, edge)
