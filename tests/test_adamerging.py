"""lsedu.adamerging: the merged model at given coefficients, the first step against finite differences of the
entropy, clipping, task-wise sharing and bad inputs."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import lsedu
from lsedu.adamerging import adamerging, prediction_entropy


def setup(n_tasks: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(3, 4, generator=g), "b": torch.zeros(3), "steps": torch.tensor(1)}
    tvs = [{"w": torch.randn(3, 4, generator=g), "b": torch.randn(3, generator=g)} for _ in range(n_tasks)]
    inputs = [torch.randn(16, 4, generator=g) for _ in range(6)]
    return base, tvs, inputs


def entropy_of(params, x):
    return prediction_entropy(x @ params["w"].T + params["b"])


def naive_entropy(base, tvs, lams, x):
    """The merged model from the equation, coefficient by coefficient, then its prediction entropy."""
    merged = {n: base[n].clone() for n in ("w", "b")}
    for t, tv in enumerate(tvs):
        for n in ("w", "b"):
            merged[n] = merged[n] + lams[t][n] * tv[n]
    return float(entropy_of(merged, x))


def test_prediction_entropy():
    assert float(prediction_entropy(torch.zeros(5, 4))) == pytest.approx(math.log(4))
    assert float(prediction_entropy(torch.tensor([[50.0, 0.0, 0.0]]))) == pytest.approx(0.0, abs=1e-6)


def test_the_first_merge_is_task_arithmetic_at_init():
    base, tvs, inputs = setup()
    seen = []
    adamerging(base, tvs, lambda p, x: seen.append({n: t.detach().clone() for n, t in p.items()}) or entropy_of(p, x),
               inputs[:1], init=0.3)
    want = lsedu.task_arithmetic(base, tvs, lam=0.3)
    for n in want:
        torch.testing.assert_close(seen[0][n], want[n])


@pytest.mark.parametrize("layer_wise", [True, False])
def test_the_first_step_follows_the_entropys_gradient(layer_wise):
    """Adam's first step moves each coefficient by lr against the sign of its gradient: the signs of central
    finite differences of the naive entropy, coefficient by coefficient."""
    base, tvs, inputs = setup()
    lr, eps = 1e-3, 1e-3
    out = adamerging(base, tvs, entropy_of, inputs[:1], layer_wise=layer_wise, lr=lr)
    groups = [["w"], ["b"]] if layer_wise else [["w", "b"]]
    for t in range(len(tvs)):
        for group in groups:
            up = [{n: 0.3 for n in ("w", "b")} for _ in tvs]
            down = copy.deepcopy(up)
            for n in group:
                up[t][n] += eps
                down[t][n] -= eps
            slope = (naive_entropy(base, tvs, up, inputs[0]) - naive_entropy(base, tvs, down, inputs[0])) / (2 * eps)
            for n in group:
                assert out.coefficients[t][n] == pytest.approx(0.3 - lr * math.copysign(1, slope), abs=1e-6)
    if not layer_wise:
        assert all(len(set(c.values())) == 1 for c in out.coefficients)


def test_entropy_falls_and_coefficients_stay_in_the_unit_interval():
    base, tvs, inputs = setup(3, seed=1)
    before = copy.deepcopy((base, tvs))
    out = adamerging(base, tvs, entropy_of, inputs * 30, lr=0.05)
    assert out.entropy[-1] < out.entropy[0] - 0.05
    assert all(0.0 <= v <= 1.0 for c in out.coefficients for v in c.values())
    assert any(v in (0.0, 1.0) for c in out.coefficients for v in c.values())  # the clip acted somewhere
    # the returned model is the merge at the learned coefficients
    lams = [{n: c[n] for n in ("w", "b")} for c in out.coefficients]
    assert float(entropy_of(out.state_dict, inputs[0])) == pytest.approx(naive_entropy(base, tvs, lams, inputs[0]),
                                                                          rel=1e-5)
    assert out.state_dict["steps"].item() == 1
    assert all(torch.equal(a[n], b[n]) for a, b in zip([before[0], *before[1]], [base, *tvs]) for n in a)


@pytest.mark.parametrize("kwargs, match", [({"init": 1.5}, r"init must be in \[0, 1\]"), ({"lr": 0.0}, "lr must be positive"),
                                           ({"entropy": "no"}, "entropy must be a callable"),
                                           ({"entropy": lambda p, x: torch.tensor(1.0)}, "computed from the params"),
                                           ({"batches": []}, "batches is empty")])
def test_adamerging_bad_inputs(kwargs, match):
    base, tvs, inputs = setup()
    args = {"entropy": entropy_of, "batches": inputs[:2]} | kwargs
    entropy, batches = args.pop("entropy"), args.pop("batches")
    with pytest.raises((ValueError, TypeError), match=match):
        adamerging(base, tvs, entropy, batches, **args)
