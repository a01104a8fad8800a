"""lsedu.quickstart.train_models is notebook 00's recipe in one call: the same weights as its steps, every time."""

from __future__ import annotations

import torch

from lsedu.quickstart import QUICKSTART as cfg, load_digits_splits, pretrain_subset, task_accuracies, tiny_mlp, \
    train_models
from lsedu.train import train_classifier


def test_train_models_is_notebook_00s_recipe_and_deterministic():
    got = train_models(progress=False)
    again = train_models(progress=False)
    splits = load_digits_splits(cfg)
    model = tiny_mlp(cfg)
    seen = pretrain_subset(splits["train"], cfg)
    pre = train_classifier(model, model.state_dict(), seen.x, seen.y, epochs=cfg.pretrain_epochs, lr=cfg.pretrain_lr,
                           seed=cfg.seed, progress=False)
    part = splits["train"].only(cfg.tasks[1])
    ft_b = train_classifier(model, pre, part.x, part.y, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr,
                            seed=cfg.seed, progress=False)
    assert all(torch.equal(got.pretrained[k], pre[k]) for k in pre)
    assert all(torch.equal(got.finetuned["B"][k], ft_b[k]) for k in ft_b)
    assert all(torch.equal(got.finetuned["A"][k], again.finetuned["A"][k]) for k in pre)
    assert set(got.splits) == {"train", "val", "test"} and torch.equal(got.splits["test"].x, splits["test"].x)
    acc = {name: task_accuracies(got.model, sd, got.splits["test"], cfg) for name, sd in
           (("pre", got.pretrained), ("A", got.finetuned["A"]))}
    assert acc["A"]["digits 0-4"] > acc["pre"]["digits 0-4"] + 0.1  # the fine-tune learned its task
