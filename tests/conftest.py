"""Shared fixtures: small random state dicts shaped like a tiny model."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# CI machines have 2 cores: keep hypothesis fast and free of flaky deadlines.
settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

SHAPES = {"enc.layer.0.w": (4, 3), "enc.layer.0.b": (3,), "enc.layer.1.w": (3, 5), "head.w": (2, 5)}


def random_state_dict(seed: int, scale: float = 1.0, shapes=SHAPES) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(s, generator=g) for n, s in shapes.items()}


def finetune_of(base: dict, seed: int, scale: float = 0.1) -> dict[str, torch.Tensor]:
    delta = random_state_dict(seed, scale, {n: t.shape for n, t in base.items()})
    return {n: base[n] + delta[n] for n in base}


def deep_copy(sd):
    if isinstance(sd, dict) or hasattr(sd, "items"):
        return {n: t.clone() for n, t in sd.items()}
    return [deep_copy(x) for x in sd]


def assert_same(a, b):
    assert list(a.keys()) == list(b.keys())
    for n in a:
        assert torch.equal(a[n], b[n]), n


@pytest.fixture
def base():
    return random_state_dict(0)


@pytest.fixture
def finetunes(base):
    return [finetune_of(base, seed) for seed in (1, 2, 3)]
