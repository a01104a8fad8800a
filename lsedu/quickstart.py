"""The two tiny models of notebook 00 (quickstart): digits 0-4 and digits 5-9.

Data: scikit-learn's copy of the UCI 8x8 handwritten digits (1,797 images,
BSD licence), shipped inside the scikit-learn package, so it works offline.

The setup is the smallest one that shows why merging is needed: a weak
generalist is fine-tuned once on digits 0-4 (task A) and once on digits 5-9
(task B). Each fine-tune forgets the other task; a merge should keep both.
Every number lives in :class:`QuickstartConfig`, which the notebook and the
tests both read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class QuickstartConfig:
    """Every number of the quickstart's tiny digits experiment, in one place.

    Explained in notebook 00 (00_quickstart.ipynb).
    """

    seed: int = 0
    hidden: int = 64
    n_train: int = 1000  # the rest of the 1,797 images: 300 validation, 497 test
    n_val: int = 300
    pretrain_per_class: int = 1  # the "pretrained" model has seen one image of each digit
    pretrain_epochs: int = 20
    pretrain_lr: float = 1e-2
    finetune_epochs: int = 10
    finetune_lr: float = 1e-3
    tasks: tuple[tuple[int, ...], tuple[int, ...]] = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))


QUICKSTART = QuickstartConfig()


@dataclass
class Split:
    """One split of the digits: images ``x`` (N x 64, in [0, 1]) and labels ``y`` (N).

    Explained in notebook 00 (00_quickstart.ipynb).
    """

    x: torch.Tensor
    y: torch.Tensor

    def only(self, classes) -> "Split":
        keep = torch.isin(self.y, torch.tensor(classes))
        return Split(self.x[keep], self.y[keep])

    def __len__(self) -> int:
        return len(self.y)


def load_digits_splits(cfg: QuickstartConfig = QUICKSTART) -> dict[str, Split]:
    """Fixed, seeded train / val / test splits of the 8x8 digits, pixels scaled to [0, 1].

    Explained in notebook 00 (00_quickstart.ipynb).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - the project's install has it
        raise ImportError("the quickstart needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed))
    cut1, cut2 = cfg.n_train, cfg.n_train + cfg.n_val
    return {name: Split(x[idx], y[idx]) for name, idx in
            (("train", perm[:cut1]), ("val", perm[cut1:cut2]), ("test", perm[cut2:]))}


def pretrain_subset(train: Split, cfg: QuickstartConfig = QUICKSTART) -> Split:
    """The first ``pretrain_per_class`` training images of each digit.

    Explained in notebook 00 (00_quickstart.ipynb).
    """
    idx = torch.cat([torch.nonzero(train.y == c).reshape(-1)[: cfg.pretrain_per_class] for c in range(10)])
    return Split(train.x[idx], train.y[idx])


def tiny_mlp(cfg: QuickstartConfig = QUICKSTART) -> nn.Module:
    """64 pixels -> ``hidden`` ReLU units -> 10 digits, initialised from ``cfg.seed``.

    Explained in notebook 00 (00_quickstart.ipynb).
    """
    torch.manual_seed(cfg.seed)
    return nn.Sequential(nn.Linear(64, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 10))


def task_accuracies(model: nn.Module, state_dict, split: Split, cfg: QuickstartConfig = QUICKSTART) -> dict[str, float]:
    """Accuracy of ``state_dict`` on each task's images of ``split`` (10-way, so forgetting shows).

    Explained in notebook 00 (00_quickstart.ipynb).
    """
    from .train import accuracy

    out = {}
    for classes in cfg.tasks:
        part = split.only(classes)
        out[f"digits {classes[0]}-{classes[-1]}"] = accuracy(model, state_dict, part.x, part.y)
    return out


@dataclass
class QuickstartModels:
    """The quickstart's models, trained: the architecture, the pretrained weights, one fine-tune per task
    (keyed ``"A"``, ``"B"``) and the splits.

    Explained in notebook 00 (00_quickstart.ipynb).
    """

    model: nn.Module
    pretrained: dict
    finetuned: dict
    splits: dict


def train_models(cfg: QuickstartConfig = QUICKSTART, progress: bool = True) -> QuickstartModels:
    """Notebook 00's recipe in one call: pretrain the tiny MLP on ``pretrain_per_class`` images of each digit,
    then fine-tune it once per task of ``cfg.tasks``. Seconds on a CPU; the same weights every time.

    Notebook 00 runs these steps one by one; later chapters (notebook 05, 05_localize_and_stitch.ipynb) call this
    when they need a model small enough to watch.

    Explained in notebook 00 (00_quickstart.ipynb).
    """
    from .train import train_classifier

    splits = load_digits_splits(cfg)
    model = tiny_mlp(cfg)
    seen = pretrain_subset(splits["train"], cfg)
    pretrained = train_classifier(model, model.state_dict(), seen.x, seen.y, epochs=cfg.pretrain_epochs,
                                  lr=cfg.pretrain_lr, seed=cfg.seed, desc="pretrain", progress=progress)
    finetuned = {}
    for name, classes in zip("AB", cfg.tasks):
        part = splits["train"].only(classes)
        finetuned[name] = train_classifier(model, pretrained, part.x, part.y, epochs=cfg.finetune_epochs,
                                           lr=cfg.finetune_lr, seed=cfg.seed, desc=f"fine-tune on {name}",
                                           progress=progress)
    return QuickstartModels(model, pretrained, finetuned, splits)
