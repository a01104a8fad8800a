"""Model soups: averaging fine-tunes of one task.

Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned
models improves accuracy without increasing inference time" (arXiv 2203.05482).
Explained in notebook 02 (model soups).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ._checks import StateDict, all_finite, check_nonempty_list, check_same_layout, check_state_dict, is_real


def _check_models(models, arg: str = "models") -> list:
    models = check_nonempty_list(models, arg)
    for i, m in enumerate(models):
        check_state_dict(m, f"{arg}[{i}]")
        if i:
            check_same_layout(models[0], m, f"{arg}[0]", f"{arg}[{i}]")
    return models


def _mean(models: Sequence[Mapping[str, torch.Tensor]]) -> StateDict:
    out = {}
    for name, first in models[0].items():
        if first.is_floating_point() or first.is_complex():
            # half precisions add up in float32; float32, float64 and complex tensors in their own dtype
            acc = torch.promote_types(first.dtype, torch.float32)
            total = sum(m[name].to(acc) for m in models)
            out[name] = (total / len(models)).to(first.dtype)
            if first.is_floating_point() and not all_finite(out[name]):
                # the sum overflowed (the mean of finite values cannot): add the shares x / n instead
                out[name] = sum(m[name].double() / len(models) for m in models).to(first.dtype)
        else:  # integer buffers (step counters, position ids) cannot be averaged: keep the first model's
            out[name] = first.clone()
    return out


def uniform_soup(models: Sequence[Mapping[str, torch.Tensor]]) -> StateDict:
    """Uniform soup, ``theta = (1/n) sum_i theta_i`` (Wortsman et al. 2022, Table 1).

    ``models`` are state dicts of fine-tunes that share one architecture and
    pretrained start. Floating and complex tensors are averaged in their own
    dtype (float16 and bfloat16 in float32, then cast back); where the sum
    of a tensor would overflow its dtype, the shares ``theta_i / n`` are
    added instead, so the mean of finite models is finite. Integer buffers
    are taken from ``models[0]``. Returns a new state dict.

    Explained in notebook 02 (02_model_soups.ipynb).
    """
    return _mean(_check_models(models))


@dataclass
class GreedySoup:
    """What :func:`greedy_soup` returns.

    ``ingredients`` are indices into the input list, in the order they were
    added; ``history`` has one row per model tried, with its score and whether
    it was kept.

    Explained in notebook 02 (02_model_soups.ipynb).
    """

    state_dict: StateDict
    ingredients: list[int]
    score: float
    individual_scores: list[float]
    history: list[dict] = field(default_factory=list)


def _score(evaluate, state_dict, what: str) -> float:
    s = evaluate(state_dict)
    if isinstance(s, torch.Tensor) and s.numel() == 1:
        s = s.item()
    if not is_real(s) or not math.isfinite(s):
        raise ValueError(f"evaluate returned {s!r} for {what}; it must return a finite number (higher is better)")
    return float(s)


def greedy_soup(models: Sequence[Mapping[str, torch.Tensor]], evaluate: Callable[[StateDict], float]) -> GreedySoup:
    """Greedy soup (Wortsman et al. 2022, Recipe 1 "GreedySoup").

    1. Score every model with ``evaluate`` on held-out data and sort them best
       first. Equal scores keep their input order (the sort is stable).
    2. Start the soup with the best model. Try the others in order: add a
       model if the uniform average of the soup plus it scores *strictly*
       higher than the soup; a tie does not add it.

    ``evaluate(state_dict) -> float`` is called ``2n - 1`` times. The result
    is never worse on ``evaluate``'s data than the best single model.

    Explained in notebook 02 (02_model_soups.ipynb).
    """
    models = _check_models(models)
    if not callable(evaluate):
        raise TypeError(f"evaluate must be a callable state_dict -> float, got {type(evaluate).__name__}")
    scores = [_score(evaluate, m, f"models[{i}]") for i, m in enumerate(models)]
    order = sorted(range(len(models)), key=lambda i: -scores[i])

    best = order[0]
    ingredients, soup, soup_score = [best], models[best], scores[best]
    history = [{"model": best, "individual": scores[best], "soup_score": soup_score, "kept": True}]
    for i in order[1:]:
        candidate = _mean([models[j] for j in ingredients + [i]])
        s = _score(evaluate, candidate, f"the soup of models {ingredients + [i]}")
        kept = s > soup_score
        history.append({"model": i, "individual": scores[i], "soup_score": s, "kept": kept})
        if kept:
            ingredients, soup, soup_score = ingredients + [i], candidate, s
    if len(ingredients) == 1:
        soup = _mean([soup])  # a copy, so the result never aliases an input
    return GreedySoup(soup, ingredients, soup_score, scores, history)
