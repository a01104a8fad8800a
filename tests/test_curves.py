"""lsedu.curves: scoring a line in weight space, against a naive loop, and its bad inputs."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same, deep_copy, finetune_of, random_state_dict

import lsedu
from lsedu.curves import LineSweep, sweep_line


@pytest.fixture
def line():
    base = random_state_dict(0)
    tau = lsedu.TaskVector.from_models(base, finetune_of(base, 1))
    return base, tau


def test_points_are_base_plus_alpha_tau(line):
    base, tau = line
    seen = []

    def record(sd):
        seen.append(sd)
        return 0.0

    alphas = [-0.5, 0.0, 1.0, 1.5]
    sweep_line(base, tau, alphas, {"x": record}, progress=False)
    assert len(seen) == len(alphas)
    for alpha, sd in zip(alphas, seen):
        for n in base:
            assert torch.allclose(sd[n], base[n] + alpha * tau[n], atol=1e-6), (alpha, n)
    assert_same(seen[1], base)  # alpha = 0 is the base itself


def test_values_per_metric_in_order_and_frame(line):
    base, tau = line
    dist = lambda sd: float(sum((sd[n] - base[n]).pow(2).sum() for n in base).sqrt())  # noqa: E731
    first = lambda sd: sd["head.w"][0, 0]  # a one-element tensor is accepted  # noqa: E731
    out = sweep_line(base, tau, [0, 0.5, 2], {"dist": dist, "first": first}, progress=False)
    assert isinstance(out, LineSweep) and out.alphas == [0.0, 0.5, 2.0]
    assert out.values["dist"] == pytest.approx([0.0, 0.5 * tau.norm(), 2 * tau.norm()], rel=1e-5)
    assert out.values["first"][0] == pytest.approx(float(base["head.w"][0, 0]))
    df = out.to_frame()
    assert list(df.columns) == ["dist", "first"] and list(df.index) == [0.0, 0.5, 2.0] and df.index.name == "alpha"


def test_a_partial_direction_leaves_the_other_tensors_at_base(line):
    base, _ = line
    tau = lsedu.TaskVector.from_models(base, finetune_of(base, 1), exclude="head.*")
    got = []
    sweep_line(base, tau, [1.0], {"x": lambda sd: got.append(sd) or 0.0}, progress=False)
    assert torch.equal(got[0]["head.w"], base["head.w"])


def test_inputs_are_not_modified(line):
    base, tau = line
    b0, t0 = deep_copy(base), deep_copy(tau)

    def vandal(sd):
        for t in sd.values():
            t.add_(1.0)  # writes into the point it was given, which must be a new tensor
        return 0.0

    sweep_line(base, tau, [0.0, 1.0], {"x": vandal}, progress=False)
    assert_same(base, b0)
    assert_same(dict(tau), t0)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"base": {}}, ValueError, "base is empty"),
    ({"base": [1]}, TypeError, "base must be a dict"),
    ({"direction": {"nope": torch.zeros(1)}}, ValueError, "direction has tensor"),
    ({"direction": {"head.w": torch.zeros(2, 5, dtype=torch.long)}}, TypeError, "direction\\['head.w'\\]"),
    ({"direction": {"head.w": torch.full((2, 5), float("nan"))}}, ValueError, "direction\\['head.w'\\].*non-finite"),
    ({"alphas": []}, ValueError, "alphas is empty"),
    ({"alphas": 0.5}, TypeError, "alphas must be a list"),
    ({"alphas": "01"}, TypeError, "alphas must be a list"),
    ({"alphas": [0.0, float("inf")]}, ValueError, "alphas\\[1\\] must be finite"),
    ({"alphas": [0.0, "1"]}, TypeError, "alphas\\[1\\] must be a real number"),
    ({"metrics": {}}, ValueError, "metrics is empty"),
    ({"metrics": [lambda sd: 0.0]}, TypeError, "metrics must be a dict"),
    ({"metrics": {"acc": 0.9}}, TypeError, "metrics\\['acc'\\] must be a callable"),
    ({"metrics": {1: lambda sd: 0.0}}, TypeError, "metrics keys must be names"),
    ({"metrics": {"acc": lambda sd: float("nan")}}, ValueError, "metrics\\['acc'\\] returned nan at alpha=0.0"),
    ({"metrics": {"acc": lambda sd: "high"}}, ValueError, "metrics\\['acc'\\] returned 'high'"),
])
def test_bad_inputs_name_the_argument(line, kwargs, exc, match):
    base, tau = line
    args = {"base": base, "direction": tau, "alphas": [0.0, 1.0], "metrics": {"x": lambda sd: 0.0}, **kwargs}
    with pytest.raises(exc, match=match):
        sweep_line(args["base"], args["direction"], args["alphas"], args["metrics"], progress=False)
