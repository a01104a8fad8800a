"""Curves in weight space: how a model behaves along a straight line of weights.

Fine-tuning moves the pretrained weights by a task vector ``tau``
(:mod:`lsedu.task_vectors`). Walking the line
``theta(alpha) = theta_pre + alpha * tau`` and scoring each point shows what
that displacement does: ``alpha = 0`` is the pretrained model, ``alpha = 1``
the fine-tune, ``alpha < 0`` moves away from the task (negation, Ilharco et
al. 2023, "Editing Models with Task Arithmetic", arXiv 2212.04089, Sec. 3)
and ``alpha > 1`` extrapolates. Explained in notebook 01 (weights as vectors).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ._checks import StateDict, check_nonempty_list, check_same_layout, check_scalar, check_state_dict, \
    check_task_vector, is_real
from .task_vectors import apply_vector


@dataclass
class LineSweep:
    """What :func:`sweep_line` returns: the ``alphas`` walked and, per metric, its value at each alpha.

    Explained in notebook 01 (01_weights_as_vectors.ipynb).
    """

    alphas: list[float]
    values: dict[str, list[float]]

    def to_frame(self):
        """A pandas DataFrame indexed by alpha, one column per metric."""
        import pandas as pd

        return pd.DataFrame(self.values, index=pd.Index(self.alphas, name="alpha"))


def sweep_line(
    base: Mapping[str, torch.Tensor],
    direction: Mapping[str, torch.Tensor],
    alphas: Sequence[float],
    metrics: Mapping[str, Callable[[StateDict], float]],
    progress: bool = True,
) -> LineSweep:
    """Score every point ``theta(alpha) = base + alpha * direction`` of a line in weight space.

    ``base`` is a state dict (the pretrained weights); ``direction`` a task
    vector over some of its floating tensors (the others stay at ``base``).
    ``metrics`` maps a name to a function ``state_dict -> float`` (an
    accuracy, a loss); each is called once per alpha, in the order given.
    Inputs are never modified. Returns a :class:`LineSweep`.

    Explained in notebook 01 (01_weights_as_vectors.ipynb).
    """
    check_state_dict(base, "base")
    check_task_vector(direction, "direction")
    check_same_layout(base, direction, "base", "direction", subset=True)
    if isinstance(alphas, (str, Mapping)) or not isinstance(alphas, Iterable):
        raise TypeError(f"alphas must be a list of numbers, got {type(alphas).__name__}")
    alphas = [check_scalar(a, f"alphas[{i}]") for i, a in enumerate(check_nonempty_list(list(alphas), "alphas",
                                                                                         "numbers"))]
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a dict of name -> callable(state_dict) -> float, "
                        f"got {type(metrics).__name__}")
    if not metrics:
        raise ValueError("metrics is empty: pass at least one name -> callable(state_dict) -> float")
    for name, fn in metrics.items():
        if not isinstance(name, str):
            raise TypeError(f"metrics keys must be names (str), got {type(name).__name__}")
        if not callable(fn):
            raise TypeError(f"metrics[{name!r}] must be a callable state_dict -> float, got {type(fn).__name__}")

    values: dict[str, list[float]] = {name: [] for name in metrics}
    for alpha in tqdm(alphas, desc="line sweep", disable=not progress, leave=False):
        point = apply_vector(base, direction, alpha)
        for name, fn in metrics.items():
            v = fn(point)
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            if not is_real(v) or not math.isfinite(v):
                raise ValueError(f"metrics[{name!r}] returned {v!r} at alpha={alpha}; it must return a finite number")
            values[name].append(float(v))
    return LineSweep(alphas, values)
