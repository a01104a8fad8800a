"""Fine-tuning and scoring classifiers from a state dict.

Kept at the edge of the library: the merge functions never train anything.
Every function takes the starting weights as a state dict and returns new
ones, so a model object is only ever a blueprint for the architecture.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch.func import functional_call
from tqdm.auto import tqdm

from ._checks import StateDict, check_state_dict


def _check_xy(x, y, arg: str = "data") -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{arg} must be a pair of tensors (inputs, labels)")
    if len(x) != len(y):
        raise ValueError(f"{arg}: {len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
        raise ValueError(f"{arg} is empty")


def train_classifier(
    model: torch.nn.Module,
    start: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    desc: str = "fine-tune",
) -> StateDict:
    """Train a copy of ``model`` from the weights ``start`` on ``(x, y)`` with Adam and cross-entropy.

    Shuffling is seeded by ``seed``, so the same call gives the same weights.
    Neither ``model`` nor ``start`` is changed; the new state dict is returned.

    Explained in notebook 00 (00_quickstart.ipynb).
    """
    check_state_dict(start, "start")
    _check_xy(x, y)
    net = copy.deepcopy(model)
    net.load_state_dict(start)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@torch.no_grad()
def accuracy(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 4096) -> float:
    """Fraction of ``x`` that the weights ``state_dict`` (run in ``model``'s architecture) label as ``y``.

    Not called in a notebook: ``lsedu.quickstart.task_accuracies`` of notebook 00 (00_quickstart.ipynb) scores
    with it.
    """
    check_state_dict(state_dict, "state_dict")
    _check_xy(x, y)
    was_training = model.training
    model.eval()
    try:
        correct = sum(
            int((functional_call(model, dict(state_dict), (x[i : i + batch_size],)).argmax(-1) == y[i : i + batch_size]).sum())
            for i in range(0, len(x), batch_size)
        )
    finally:
        model.train(was_training)
    return correct / len(x)
