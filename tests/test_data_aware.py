"""lsedu.data_aware: Fisher merging and RegMean against loops written from the papers' equations, their
properties, the statistics they need, and bad inputs."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lsedu import methods
from lsedu.data_aware import diagonal_fisher, fisher_merge, gram_matrices, regmean_merge


def models(n: int, seed: int = 0, out: int = 3, inp: int = 4) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"lin.weight": torch.randn(out, inp, generator=g), "lin.bias": torch.randn(out, generator=g),
             "steps": torch.tensor(7)} for _ in range(n)]


def fishers_for(fts, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"lin.weight": torch.rand(m["lin.weight"].shape, generator=g),
             "lin.bias": torch.rand(m["lin.bias"].shape, generator=g)} for m in fts]


# ----------------------------------------------------------------------------- Fisher merging


def naive_fisher(fts, fishers, weights, smooth):
    """Matena & Raffel's Eq. 3 entry by entry: sum_i w_i F_i theta_i / sum_i w_i F_i."""
    out = {}
    for name, first in fts[0].items():
        if name not in fishers[0]:
            out[name] = first.clone() if not first.is_floating_point() else \
                sum(w * m[name] for w, m in zip(weights, fts)) / sum(weights)
            continue
        flat = torch.empty(first.numel(), dtype=torch.float64)
        for k in range(first.numel()):
            num = sum(w * (float(f[name].flatten()[k]) + smooth) * float(m[name].flatten()[k])
                      for w, f, m in zip(weights, fishers, fts))
            den = sum(w * (float(f[name].flatten()[k]) + smooth) for w, f in zip(weights, fishers))
            flat[k] = num / den
        out[name] = flat.reshape(first.shape).to(first.dtype)
    return out


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5]])
def test_fisher_merge_matches_the_equation(weights):
    fts = models(3)
    fishers = fishers_for(fts)
    got = fisher_merge(fts, fishers, weights)
    want = naive_fisher(fts, fishers, weights or [1.0] * 3, 1e-10)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-6, atol=1e-6, msg=n)
    assert got["steps"].item() == 7


def test_fisher_merge_leaves_its_inputs_alone():
    fts, fishers = models(2), fishers_for(models(2))
    before = copy.deepcopy((fts, fishers))
    fisher_merge(fts, fishers)
    for a, b in zip(itertools.chain(*before), itertools.chain(fts, fishers)):
        assert all(torch.equal(a[n], b[n]) for n in a)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(0, 1000), st.floats(0.1, 10.0))
def test_fisher_merge_properties(n, seed, scale):
    fts = models(n, seed)
    fishers = fishers_for(fts, seed + 1)
    merged = fisher_merge(fts, fishers)
    # equal Fishers: the plain average
    same = fisher_merge(fts, [fishers[0]] * n)
    mean = sum(m["lin.weight"] for m in fts) / n
    torch.testing.assert_close(same["lin.weight"], mean, rtol=1e-5, atol=1e-5)
    # scaling every Fisher by one number changes nothing, nor does the order of the fine-tunes
    scaled = fisher_merge(fts, [{k: scale * v for k, v in f.items()} for f in fishers])
    torch.testing.assert_close(scaled["lin.weight"], merged["lin.weight"], rtol=1e-5, atol=1e-5)
    flipped = fisher_merge(fts[::-1], fishers[::-1])
    torch.testing.assert_close(flipped["lin.weight"], merged["lin.weight"], rtol=1e-5, atol=1e-5)
    # each entry lies between the fine-tunes' values (a convex combination)
    stack = torch.stack([m["lin.weight"] for m in fts])
    assert bool((merged["lin.weight"] >= stack.min(0).values - 1e-5).all())
    assert bool((merged["lin.weight"] <= stack.max(0).values + 1e-5).all())


def test_fisher_merge_follows_the_sure_model_and_averages_where_no_data_reaches():
    fts = models(2)
    sure = [{"lin.weight": torch.full((3, 4), 1e6)}, {"lin.weight": torch.zeros(3, 4)}]
    torch.testing.assert_close(fisher_merge(fts, sure)["lin.weight"], fts[0]["lin.weight"])
    blind = [{"lin.weight": torch.zeros(3, 4)}] * 2  # 0/0 without the smoothing: the average instead
    torch.testing.assert_close(fisher_merge(fts, blind)["lin.weight"],
                               (fts[0]["lin.weight"] + fts[1]["lin.weight"]) / 2)
    with pytest.raises(ValueError, match="every fine-tune's Fisher is 0 .* use smooth > 0"):
        fisher_merge(fts, blind, smooth=0.0)
    # the bias has no Fisher here: it is averaged
    torch.testing.assert_close(fisher_merge(fts, sure)["lin.bias"], (fts[0]["lin.bias"] + fts[1]["lin.bias"]) / 2)


@pytest.mark.parametrize("call, match", [
    (lambda f, F: fisher_merge(f, F[:1]), "fishers has 1 state dict"),
    (lambda f, F: fisher_merge(f, [F[0], {**F[1], "lin.weight": -F[1]["lin.weight"]}]), r"fishers\[1\]\['lin.weight'\] has negative"),
    (lambda f, F: fisher_merge(f, [F[0], {"lin.weight": F[1]["lin.weight"]}]), "covers other tensors"),
    (lambda f, F: fisher_merge(f, [{"other": torch.ones(1)}] * 2), "lacks"),
    (lambda f, F: fisher_merge(f, F, weights=[1.0]), "weights has 1 value"),
    (lambda f, F: fisher_merge(f, F, weights=[-1.0, 2.0]), "non-negative"),
    (lambda f, F: fisher_merge(f, F, smooth=-1.0), "smooth must be >= 0"),
    (lambda f, F: fisher_merge([], F), "finetuned is empty"),
    (lambda f, F: fisher_merge([f[0], {**f[1], "lin.bias": torch.tensor([float("nan")] * 3)}], F), "non-finite"),
])
def test_fisher_merge_bad_inputs(call, match):
    fts = models(2)
    with pytest.raises((ValueError, TypeError), match=match):
        call(fts, fishers_for(fts))


# ----------------------------------------------------------------------------- RegMean


def inputs(n_models: int, rows: int = 12, inp: int = 4, seed: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows + 3 * i, inp, generator=g, dtype=torch.float64) for i in range(n_models)]


def grams_of(xs) -> list[dict[str, torch.Tensor]]:
    return [{"lin.weight": (x.T @ x / len(x)).float()} for x in xs]


def test_regmean_is_the_least_squares_layer():
    """alpha = 1: the W minimising sum_i ||X_i W^T - X_i W_i^T||^2 / n_i (Jin et al. 2023, Eq. 1), by lstsq."""
    fts, xs = models(3), inputs(3)
    got = regmean_merge(fts, grams_of(xs))
    a = np.concatenate([x.numpy() / np.sqrt(len(x)) for x in xs])
    b = np.concatenate([x.numpy() @ m["lin.weight"].double().numpy().T / np.sqrt(len(x)) for x, m in zip(xs, fts)])
    want = np.linalg.lstsq(a, b, rcond=None)[0].T
    np.testing.assert_allclose(got["lin.weight"].numpy(), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["lin.bias"], sum(m["lin.bias"] for m in fts) / 3)  # no Gram: averaged


def naive_regmean(fts, grams, alpha):
    """Eq. 2 with the off-diagonal scaling, entry by entry in plain Python, then one inverse."""
    d = grams[0]["lin.weight"].shape[0]
    tilde = []
    for g in grams:
        G = g["lin.weight"].double()
        tilde.append([[float(G[r, c]) * (1.0 if r == c else alpha) for c in range(d)] for r in range(d)])
    total = np.array([[sum(t[r][c] for t in tilde) for c in range(d)] for r in range(d)])
    rhs = sum(m["lin.weight"].double().numpy() @ np.array(t) for m, t in zip(fts, tilde))
    return rhs @ np.linalg.inv(total)


@pytest.mark.parametrize("alpha", [1.0, 0.9, 0.3, 0.0])
def test_regmean_matches_the_equation(alpha):
    fts, xs = models(3), inputs(3)
    got = regmean_merge(fts, grams_of(xs), alpha=alpha)
    np.testing.assert_allclose(got["lin.weight"].numpy(), naive_regmean(fts, grams_of(xs), alpha), rtol=1e-4,
                               atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(0, 1000), st.floats(0.0, 1.0))
def test_regmean_properties(n, seed, alpha):
    fts, xs = models(n, seed), inputs(n, seed=seed + 7)
    grams = grams_of(xs)
    merged = regmean_merge(fts, grams, alpha)
    # one Gram for all: the plain average of the weights
    torch.testing.assert_close(regmean_merge(fts, [grams[0]] * n, alpha)["lin.weight"],
                               sum(m["lin.weight"] for m in fts) / n, rtol=1e-4, atol=1e-4)
    # the same fine-tune n times gives it back; the order does not matter
    torch.testing.assert_close(regmean_merge([fts[0]] * n, grams, alpha)["lin.weight"], fts[0]["lin.weight"],
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(regmean_merge(fts[::-1], grams[::-1], alpha)["lin.weight"], merged["lin.weight"],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("call, match", [
    (lambda f, G: regmean_merge(f, G[:1]), "grams has 1 state dict"),
    (lambda f, G: regmean_merge(f, G, alpha=1.5), r"alpha must be in \[0, 1\]"),
    (lambda f, G: regmean_merge(f, [{"lin.weight": torch.eye(3)}] * 2), r"shape \(3, 3\); .* needs its inputs' Gram, \(4, 4\)"),
    (lambda f, G: regmean_merge(f, [{"lin.bias": torch.eye(4)}] * 2), "needs its inputs' Gram"),
    (lambda f, G: regmean_merge(f, [{"nope.weight": torch.eye(4)}] * 2), "which finetuned\\[0\\] lacks"),
    (lambda f, G: regmean_merge(f, [G[0], {}]), "grams\\[1\\] is empty"),
    (lambda f, G: regmean_merge(f, [{"lin.weight": torch.zeros(4, 4)}] * 2), "'lin.weight': the summed Gram matrix is singular"),
])
def test_regmean_bad_inputs(call, match):
    fts = models(2)
    with pytest.raises((ValueError, TypeError), match=match):
        call(fts, grams_of(inputs(2)))


# ----------------------------------------------------------------------------- the statistics


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(5, 2)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def test_gram_matrices_are_the_inputs_mean_outer_product():
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = [torch.randn(6, 4), torch.randn(3, 2, 4)]  # a sequence batch too: every token is a row
    grams = gram_matrices(net, batches, lambda m, x: m(x))
    xa = torch.cat([b.reshape(-1, 4) for b in batches]).double()
    torch.testing.assert_close(grams["a.weight"], (xa.T @ xa / len(xa)).float())
    with torch.no_grad():
        xb = torch.tanh(net.a(xa.float())).double()
    torch.testing.assert_close(grams["b.weight"], (xb.T @ xb / len(xb)).float(), rtol=1e-5, atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not net.a._forward_pre_hooks  # the hooks are gone
    assert list(gram_matrices(net, batches, lambda m, x: m(x), names=["b.weight"])) == ["b.weight"]
    with pytest.raises(ValueError, match=r"names \['a.bias'\] are not weights of nn.Linear"):
        gram_matrices(net, batches, lambda m, x: m(x), names=["a.bias"])
    with pytest.raises(ValueError, match="saw no input"):
        gram_matrices(net, [], lambda m, x: m(x))


def test_diagonal_fisher_squares_each_examples_gradient():
    """Logistic regression, where d log p(y|x)/dw = (y - sigmoid(w.x)) x: the mean of its squares, per example."""
    torch.manual_seed(1)
    w = torch.randn(3, requires_grad=True)
    xs, ys = torch.randn(5, 3), torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])

    def log_likelihood(example):
        x, y = example
        p = torch.sigmoid(w @ x)
        return y * torch.log(p) + (1 - y) * torch.log(1 - p)

    got = diagonal_fisher(log_likelihood, {"w": w}, zip(xs, ys))
    with torch.no_grad():
        per = (ys - torch.sigmoid(xs @ w))[:, None] * xs
    torch.testing.assert_close(got["w"], (per ** 2).mean(0))
    batch_grad = per.sum(0) ** 2 / len(xs)  # what squaring a batch's summed gradient would give: not this
    assert not torch.allclose(got["w"], batch_grad)
    with pytest.raises(ValueError, match="examples is empty"):
        diagonal_fisher(log_likelihood, {"w": w}, [])
    with pytest.raises(ValueError, match="do not require gradients"):
        diagonal_fisher(log_likelihood, {"w": w.detach()}, zip(xs, ys))
    with pytest.raises(ValueError, match="scalar tensor per example"):
        diagonal_fisher(lambda e: torch.ones(2, requires_grad=True), {"w": w}, zip(xs, ys))


def test_the_registry_rows_say_what_data_they_need_and_refuse_a_recipe():
    from lsedu.merge.recipe import MergeRecipe

    assert methods.get("fisher").data == "labeled" and methods.get("regmean").data == "unlabeled"
    assert "fisher" not in methods.labels() and "regmean" not in methods.labels()  # no case-study row yet
    for name in ("fisher", "regmean"):
        with pytest.raises(ValueError, match=f"merge_method '{name}' cannot run from a recipe"):
            MergeRecipe(merge_method=name, base_model="b", models=["a"])
