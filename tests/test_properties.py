"""Properties that hold for *every* input, checked on small random state dicts with hypothesis.

Each state dict holds 1-3 float32 tensors of shapes up to 4x5, so a whole
example runs in milliseconds. Three kinds of values are drawn:

* ``FINITE``: any float32 in [-8, 8] (zeros and -0.0 included);
* ``DYADIC``: multiples of 1/4 in [-4, 4]. Sums and means of a few of them are
  exact in float32, so properties that are exact in real numbers (the order of
  task vectors does not matter) can be checked with ``torch.equal``;
* ``TIED``: {-2, -1, 0, 1, 2}, so that top-k thresholds fall on many ties.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import lsedu
from lsedu import TaskVector

SETTINGS = settings(max_examples=50, deadline=None, database=None)

NAMES = ("enc.w", "enc.b", "head.w")
SHAPE = st.one_of(st.tuples(st.integers(1, 4), st.integers(1, 5)), st.tuples(st.integers(1, 5)))
FINITE = st.floats(-8, 8, width=32, allow_subnormal=False)
DYADIC = st.integers(-16, 16).map(lambda i: i / 4)
TIED = st.sampled_from([-2.0, -1.0, 0.0, 1.0, 2.0])
MAGNITUDE = st.floats(1 / 64, 8, width=32)  # strictly positive
DENSITY = st.floats(0.01, 1.0)


# --- strategies ----------------------------------------------------------------
@st.composite
def layouts(draw) -> dict[str, tuple[int, ...]]:
    n = draw(st.integers(1, 3))
    return {NAMES[i]: draw(SHAPE) for i in range(n)}


def _tensor(draw, shape, elements, dtype=np.float32) -> torch.Tensor:
    return torch.from_numpy(np.array(draw(arrays(dtype, shape, elements=elements)), copy=True))


def _sd(draw, layout, elements=FINITE) -> dict[str, torch.Tensor]:
    return {n: _tensor(draw, s, elements) for n, s in layout.items()}


@st.composite
def families(draw, n_min=1, n_max=3, elements=FINITE, extra=0):
    """``extra + n`` state dicts of one layout, n in [n_min, n_max]."""
    layout = draw(layouts())
    n = draw(st.integers(n_min, n_max))
    return [_sd(draw, layout, elements) for _ in range(n + extra)]


@st.composite
def bases_and_vectors(draw, n_min=1, n_max=3, elements=FINITE):
    """A base model and n task vectors over all its tensors."""
    base, *tvs = draw(families(n_min, n_max, elements, extra=1))
    return base, tvs


@st.composite
def masks_like(draw, sd: Mapping[str, torch.Tensor], n: int):
    return [{k: _tensor(draw, t.shape, st.booleans(), np.bool_) for k, t in sd.items()} for _ in range(n)]


@st.composite
def same_sign_vectors(draw, n_min=1, n_max=3):
    """A base and n task vectors with no zero entry that all share one sign pattern."""
    layout = draw(layouts())
    base = _sd(draw, layout)
    sign = {k: _tensor(draw, s, st.sampled_from([-1.0, 1.0])) for k, s in layout.items()}
    n = draw(st.integers(n_min, n_max))
    tvs = [{k: _tensor(draw, s, MAGNITUDE) * sign[k] for k, s in layout.items()} for _ in range(n)]
    return base, tvs


# --- helpers ---------------------------------------------------------------------
def clone(x):
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, Mapping):
        return {k: clone(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clone(v) for v in x]
    return x


def assert_equal(a, b, what="value"):
    """Bit-for-bit equality of (nested) state dicts, lists and tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, what
        assert torch.equal(a, b), f"{what} differs"
    elif isinstance(a, Mapping):
        assert list(a.keys()) == list(b.keys()), f"{what}: keys differ"
        for k in a:
            assert_equal(a[k], b[k], f"{what}[{k!r}]")
    else:
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{what}[{i}]")


def assert_close(a: Mapping, b: Mapping, atol=1e-5, rtol=1e-5):
    assert list(a.keys()) == list(b.keys())
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=lambda m, k=k: f"tensor {k!r}: {m}")


def flat(sd: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """All entries in tensor order, then position: the order lsedu breaks top-k ties in."""
    return torch.cat([t.reshape(-1) for t in sd.values()])


def k_for(density: float, n: int) -> int:
    """The documented count: density * n (exactly, the density as it prints: 0.3 is 3/10) rounded half up, at least 1, at most n."""
    twice = 2 * Fraction(str(density)) * n  # floor(x + 1/2) = floor((2x + 1) / 2)
    return max(1, min(n, math.floor((twice + 1) / 2)))


def sq_distance_score(target):
    """An evaluate function: higher is better, the closer the weights are to ``target``."""
    def evaluate(sd):
        return -sum(float((sd[k].double() - target[k].double()).pow(2).sum()) for k in target)
    return evaluate


# =============================================================================
# Soups
# =============================================================================
@SETTINGS
@given(families(1, 1), st.integers(1, 5))
def test_uniform_soup_of_copies_is_the_model(models, n):
    (sd,) = models
    assert_close(lsedu.uniform_soup([clone(sd) for _ in range(n)]), sd, atol=1e-6, rtol=1e-6)


@SETTINGS
@given(families(1, 1, extra=1), st.integers(1, 4))
def test_greedy_soup_of_copies_is_the_model(models, n):
    sd, target = models
    out = lsedu.greedy_soup([clone(sd) for _ in range(n)], sq_distance_score(target))
    assert_close(out.state_dict, sd, atol=1e-6, rtol=1e-6)
    assert out.ingredients[0] == 0  # equal scores keep input order


@SETTINGS
@given(families(1, 4, extra=1))
def test_greedy_soup_is_never_worse_than_the_best_model(models):
    target, *models = models
    evaluate = sq_distance_score(target)
    out = lsedu.greedy_soup(models, evaluate)
    individual = [evaluate(m) for m in models]
    assert out.individual_scores == individual
    assert out.score >= max(individual)
    assert out.ingredients[0] == int(np.argmax(individual))  # argmax: first of equal scores
    assert out.score == evaluate(out.state_dict)  # the reported score is the score of what is returned
    assert sorted(set(out.ingredients)) == sorted(out.ingredients)  # each model at most once


# =============================================================================
# TIES
# =============================================================================
@SETTINGS
@given(same_sign_vectors(), st.floats(-2, 2), st.sampled_from(["global", "per_tensor"]))
def test_ties_at_density_one_without_conflict_is_the_mean(data, lam, scope):
    base, tvs = data
    out = lsedu.ties_merge(base, tvs, density=1.0, lam=lam, trim_scope=scope)
    mean = {k: torch.stack([tv[k] for tv in tvs]).mean(0) for k in base}
    assert_close(out, {k: base[k] + lam * mean[k] for k in base})


@SETTINGS
@given(bases_and_vectors(1, 3), DENSITY, st.floats(0.05, 2), st.sampled_from(["global", "per_tensor"]))
def test_ties_merge_agrees_with_the_elected_sign(data, density, lam, scope):
    base, tvs = data
    merged = lsedu.ties_merge(base, tvs, density=density, lam=lam, trim_scope=scope)
    gamma = lsedu.elect_sign([lsedu.trim(tv, density, scope) for tv in tvs])
    for k in base:
        delta = merged[k] - base[k]  # rounding is monotone: base + lam*x - base never has the opposite sign of x
        moved = delta != 0
        assert torch.equal(torch.sign(delta)[moved], gamma[k][moved]), k
        assert not moved[gamma[k] == 0].any(), k


@pytest.mark.parametrize("fn", ["ties_merge", "elect_sign"])
def test_ties_order_independence_in_float32(fn):
    base = {"w": torch.zeros(1)}
    tvs = [{"w": torch.tensor([v], dtype=torch.float32)} for v in (0.1, 0.2, -0.3)]
    call = {"ties_merge": lambda vs: lsedu.ties_merge(base, vs, density=1.0), "elect_sign": lsedu.elect_sign}[fn]
    results = [call(list(p))["w"] for p in itertools.permutations(tvs)]
    for r in results[1:]:
        assert torch.equal(r, results[0])


# =============================================================================
# Localize-and-Stitch
# =============================================================================
@SETTINGS
@given(st.data(), bases_and_vectors(1, 3))
def test_stitch_of_disjoint_masks_is_base_plus_masked_vectors(data, bv):
    base, tvs = bv
    # each entry goes to one task, or to none (-1): the masks are disjoint by construction
    owner = {k: _tensor(data.draw, t.shape, st.integers(-1, len(tvs) - 1), np.int64) for k, t in base.items()}
    masks = [{k: owner[k] == i for k in base} for i in range(len(tvs))]
    out = lsedu.stitch(base, tvs, masks)
    expected = {k: base[k] + sum(torch.where(m[k], tv[k], 0.0) for tv, m in zip(tvs, masks)) for k in base}
    assert_close(out, expected, atol=0, rtol=0)


@SETTINGS
@given(st.data(), bases_and_vectors(1, 1))
def test_stitch_of_a_task_with_itself_is_base_plus_masked_vector(data, bv):
    base, (tv,) = bv
    (mask,) = data.draw(masks_like(base, 1))
    out = lsedu.stitch(base, [tv, clone(tv)], [mask, clone(mask)])
    assert_equal(out, {k: base[k] + torch.where(mask[k], tv[k], 0.0) for k in base})


# =============================================================================
# Order of task vectors does not matter (exact on dyadic values)
# =============================================================================
@st.composite
def permuted(draw, n_min=2, n_max=3):
    base, tvs = draw(bases_and_vectors(n_min, n_max, DYADIC))
    perm = draw(st.permutations(range(len(tvs))))
    return base, tvs, list(perm)


@SETTINGS
@given(permuted(), st.floats(-2, 2))
def test_task_arithmetic_ignores_order(data, lam):
    base, tvs, perm = data
    assert_equal(lsedu.task_arithmetic(base, [tvs[i] for i in perm], lam), lsedu.task_arithmetic(base, tvs, lam))


@SETTINGS
@given(bases_and_vectors(2, 3), st.floats(-2, 2), st.data())
def test_task_arithmetic_ignores_order_up_to_rounding(bv, lam, data):
    base, tvs = bv
    perm = data.draw(st.permutations(range(len(tvs))))
    assert_close(lsedu.task_arithmetic(base, [tvs[i] for i in perm], lam), lsedu.task_arithmetic(base, tvs, lam))


@SETTINGS
@given(permuted(), DENSITY, st.sampled_from(["global", "per_tensor"]))
def test_ties_merge_ignores_order(data, density, scope):
    base, tvs, perm = data
    a = lsedu.ties_merge(base, [tvs[i] for i in perm], density=density, trim_scope=scope)
    assert_equal(a, lsedu.ties_merge(base, tvs, density=density, trim_scope=scope))


@SETTINGS
@given(permuted())
def test_elect_sign_ignores_order(data):
    _, tvs, perm = data
    assert_equal(lsedu.elect_sign([tvs[i] for i in perm]), lsedu.elect_sign(tvs))


@SETTINGS
@given(st.data(), permuted())
def test_stitch_ignores_order(data, bpv):
    base, tvs, perm = bpv
    masks = data.draw(masks_like(base, len(tvs)))
    a = lsedu.stitch(base, [tvs[i] for i in perm], [masks[i] for i in perm])
    assert_equal(a, lsedu.stitch(base, tvs, masks))


@SETTINGS
@given(st.data(), layouts(), st.integers(1, 4))
def test_mask_overlap_permutes_with_its_masks(data, layout, n):
    like = {k: torch.zeros(s) for k, s in layout.items()}
    masks = data.draw(masks_like(like, n))
    perm = data.draw(st.permutations(range(n)))
    a, b = lsedu.mask_overlap([masks[i] for i in perm]), lsedu.mask_overlap(masks)
    idx = torch.tensor(perm)
    for field in ("counts", "iou", "fraction"):
        assert torch.equal(getattr(a, field), getattr(b, field)[idx][:, idx]), field


# =============================================================================
# Inputs are never changed, and outputs never alias them
# =============================================================================
def _scribble(out) -> None:
    """Write into every tensor of a result: if it aliased an input, the input would change."""
    if isinstance(out, torch.Tensor):
        if out.dtype == torch.bool:
            out.logical_not_()
        else:
            out.add_(1)
    elif isinstance(out, Mapping):
        for v in out.values():
            _scribble(v)
    elif isinstance(out, (list, tuple)):
        for v in out:
            _scribble(v)
    elif isinstance(out, lsedu.GreedySoup):
        _scribble(out.state_dict)
    elif isinstance(out, lsedu.Overlap):
        _scribble([out.counts, out.iou, out.fraction])


@SETTINGS
@given(st.data(), bases_and_vectors(1, 3))
def test_no_function_changes_its_inputs(data, bv):
    base, tvs = bv
    masks = data.draw(masks_like(base, len(tvs)))
    finetuned = [{k: base[k] + tv[k] for k in base} for tv in tvs]
    target = tvs[0]
    trimmed = [lsedu.trim(tv, 0.5) for tv in tvs]
    signs = lsedu.elect_sign(trimmed)
    inputs = (base, tvs, masks, finetuned, target, trimmed, signs)
    before = clone(inputs)
    tv0 = TaskVector(tvs[0])
    calls = {
        "uniform_soup": lambda: lsedu.uniform_soup(finetuned),
        "greedy_soup": lambda: lsedu.greedy_soup(finetuned, sq_distance_score(target)),
        "task_arithmetic": lambda: lsedu.task_arithmetic(base, tvs, 0.7),
        "pick_lambda": lambda: lsedu.pick_lambda(base, tvs, sq_distance_score(target), grid=[0.1, 1.0]),
        "ties_merge": lambda: lsedu.ties_merge(base, tvs, density=0.5),
        "ties_merge_per_tensor": lambda: lsedu.ties_merge(base, tvs, density=0.5, trim_scope="per_tensor"),
        "dare_merge": lambda: lsedu.dare_merge(base, tvs, p=0.5),
        "dare_merge_ties": lambda: lsedu.dare_merge(base, tvs, p=0.5, then="ties", density=0.5),
        "stitch": lambda: lsedu.stitch(base, tvs, masks),
        "trim": lambda: lsedu.trim(tvs[0], 0.3),
        "trim_density_1": lambda: lsedu.trim(tvs[0], 1.0, scope="per_tensor"),
        "elect_sign": lambda: lsedu.elect_sign(trimmed),
        "disjoint_mean": lambda: lsedu.disjoint_mean(trimmed, signs),
        "dare": lambda: lsedu.dare(tvs[0], 0.3),
        "dare_p0": lambda: lsedu.dare(tvs[0], 0.0),
        "localize_dataless": lambda: lsedu.localize_dataless(tvs[0], 0.2),
        "global_topk_mask": lambda: lsedu.global_topk_mask(tvs[0], 0.2),
        "per_tensor_topk_mask": lambda: lsedu.per_tensor_topk_mask(tvs[0], 0.2),
        "from_models": lambda: TaskVector.from_models(base, finetuned[0]),
        "apply_to": lambda: tv0.apply_to(base, 0.5),
        "apply_to_partial": lambda: TaskVector({next(iter(base)): tvs[0][next(iter(base))]}).apply_to(base),
        "neg": lambda: -tv0,
        "mul": lambda: tv0 * 3.0,
        "add": lambda: tv0 + TaskVector(tvs[-1]),
        "sub": lambda: tv0 - TaskVector(tvs[-1]),
        "to_dict": lambda: tv0.to_dict(),
        "mask_overlap": lambda: lsedu.mask_overlap(masks),
        "sign_conflicts": lambda: lsedu.sign_conflicts(tvs),
        "storage": lambda: lsedu.storage(tvs[0], masks[0]),
        "density_per_layer": lambda: lsedu.density_per_layer(masks[0]),
    }
    for name, call in calls.items():
        _scribble(call())
        assert_equal(inputs, before, f"after {name}: inputs")


# =============================================================================
# TaskVector algebra
# =============================================================================
@SETTINGS
@given(families(2, 2))
def test_task_vector_algebra(pair):
    a, b = TaskVector(pair[0]), TaskVector(pair[1])
    assert_close(dict((a + b) - b), dict(a))
    assert_equal(dict(-(-a)), dict(a))
    assert_equal(dict(2 * a), dict(a + a))
    assert_equal(dict(a * 2), dict(a + a))
    assert_equal(dict(sum([a, b])), dict(a + b))
    assert_equal(dict(a + b), dict(b + a))
    assert_close(dict(a - b), dict(a + (-b)), atol=0, rtol=0)


@SETTINGS
@given(families(2, 2))
def test_task_vector_apply_to_reproduces_the_finetune(pair):
    pre, ft = pair
    tau = TaskVector.from_models(pre, ft)
    assert_close(tau.apply_to(pre), ft)
    assert_equal(tau.apply_to(pre, 0.0), pre)
    # a partial vector leaves the other tensors exactly as they were
    first = next(iter(pre))
    partial = TaskVector.from_models(pre, ft, include=first)
    out = partial.apply_to(pre)
    assert_close({first: out[first]}, {first: ft[first]})
    for k in pre:
        if k != first:
            assert torch.equal(out[k], pre[k]), k


# =============================================================================
# DARE
# =============================================================================
@SETTINGS
@given(families(1, 1), st.integers(0, 2**31 - 1))
def test_dare_with_p_zero_is_the_identity(tvs, seed):
    assert_equal(dict(lsedu.dare(tvs[0], 0.0, seed)), tvs[0])


@SETTINGS
@given(same_sign_vectors(1, 1), st.floats(0.0, 0.95), st.integers(0, 2**31 - 1))
def test_dare_survivors_are_rescaled_and_the_rest_is_zero(data, p, seed):
    _, (tau,) = data  # no zero entry, so "dropped" is exactly "is zero in the output"
    out = lsedu.dare(tau, p, seed)
    again = lsedu.dare(tau, p, seed)
    assert_equal(dict(out), dict(again))  # deterministic for a fixed seed
    twice = lsedu.dare({k: 2 * t for k, t in tau.items()}, p, seed)
    for k, t in tau.items():
        kept = out[k] != 0
        assert torch.equal(out[k][kept], (t / (1 - p))[kept]), k
        assert torch.equal(out[k][~kept], torch.zeros_like(t)[~kept]), k
        assert torch.equal(twice[k] != 0, kept), k  # the drop pattern does not depend on the values
        # ...nor on the other tensors: a tensor draws the same pattern on its own
        assert torch.equal(lsedu.dare({k: t}, p, seed)[k], out[k]), k
    if p == 0.0:
        assert all(bool((out[k] != 0).all()) for k in tau)


# =============================================================================
# Trim and top-k
# =============================================================================
VALUES = st.one_of(FINITE, TIED)  # a mix: ties at the threshold are common


@SETTINGS
@given(families(1, 1, VALUES), DENSITY)
def test_global_trim_keeps_exactly_the_top_k(tvs, density):
    (tau,) = tvs
    n = sum(t.numel() for t in tau.values())
    k = k_for(density, n)
    mask = lsedu.global_topk_mask(tau, density)
    kept, mags = flat(mask), flat(tau).abs()
    assert int(kept.sum()) == k
    if not kept.all():
        assert mags[kept].min() >= mags[~kept].max()
        # ties at the threshold: the first ones in tensor order, then position, are kept
        at_threshold = mags == mags[kept].min()
        chosen = kept[at_threshold]
        assert torch.equal(chosen, torch.sort(chosen.int(), descending=True, stable=True).values.bool())
    trimmed = lsedu.trim(tau, density)
    assert_equal(dict(trimmed), {n_: torch.where(mask[n_], t, torch.zeros_like(t)) for n_, t in tau.items()})
    assert int((flat(trimmed) != 0).sum()) == min(k, int((flat(tau) != 0).sum()))
    assert_equal(lsedu.localize_dataless(tau, density), mask)


@SETTINGS
@given(families(1, 1, VALUES), DENSITY)
def test_per_tensor_trim_keeps_the_top_k_of_each_tensor(tvs, density):
    (tau,) = tvs
    mask = lsedu.per_tensor_topk_mask(tau, density)
    trimmed = lsedu.trim(tau, density, scope="per_tensor")
    for name, t in tau.items():
        kept, mags = mask[name].reshape(-1), t.reshape(-1).abs()
        k = k_for(density, t.numel())
        assert int(kept.sum()) == k, name
        if not kept.all():
            assert mags[kept].min() >= mags[~kept].max(), name
        assert torch.equal(trimmed[name], torch.where(mask[name], t, torch.zeros_like(t))), name
        assert int((trimmed[name] != 0).sum()) == min(k, int((t != 0).sum())), name


@SETTINGS
@given(st.data(), families(1, 1, st.one_of(TIED, TIED, FINITE)), st.booleans())
def test_kth_largest_matches_a_sort(data, tvs, by_abs):
    (t,) = tvs
    values = flat(t).abs() if by_abs else flat(t)
    k = data.draw(st.integers(1, values.numel()))
    ranked = torch.sort(values, descending=True).values
    kth = lsedu.kth_largest(t, k, by_abs=by_abs)
    assert kth.value == float(ranked[k - 1])
    assert kth.k == k
    if by_abs:  # (signed keys tell -0.0 from 0.0; float comparison does not)
        assert kth.n_greater == int((values > kth.value).sum())
        assert kth.n_equal == int((values == kth.value).sum())
        assert kth.n_greater < k <= kth.n_greater + kth.n_equal
    # topk_mask: exactly k entries, the largest ones, ties to the earliest
    mask = flat(lsedu.topk_mask(t, k, by_abs=by_abs))
    order = sorted(range(values.numel()), key=lambda i: (-float(values[i]), i))
    expected = torch.zeros(values.numel(), dtype=torch.bool)
    expected[order[:k]] = True
    if by_abs or not bool((values == 0).any()):
        assert torch.equal(mask, expected)
    else:
        assert int(mask.sum()) == k


# =============================================================================
# Mask overlap
# =============================================================================
@SETTINGS
@given(st.data(), layouts(), st.integers(1, 4))
def test_mask_overlap_bounds_and_symmetry(data, layout, n):
    like = {k: torch.zeros(s) for k, s in layout.items()}
    masks = data.draw(masks_like(like, n))
    ov = lsedu.mask_overlap(masks)
    flats = [flat(m) for m in masks]
    for i, j in itertools.product(range(n), repeat=2):
        assert int(ov.counts[i, j]) == int((flats[i] & flats[j]).sum())
    sizes = ov.counts.diag()
    assert torch.equal(ov.counts, ov.counts.T)
    assert torch.equal(ov.iou, ov.iou.T)
    nonempty = sizes > 0
    assert torch.equal(ov.iou.diag()[nonempty], torch.ones(int(nonempty.sum()), dtype=ov.iou.dtype))
    assert torch.equal(ov.fraction.diag()[nonempty], torch.ones(int(nonempty.sum()), dtype=ov.fraction.dtype))
    assert bool((ov.iou >= 0).all() and (ov.iou <= ov.fraction).all() and (ov.fraction <= 1).all())
    for i, j in itertools.product(range(n), repeat=2):
        union = int((flats[i] | flats[j]).sum())
        expected = int(ov.counts[i, j]) / union if union else 0.0
        assert math.isclose(float(ov.iou[i, j]), expected, rel_tol=1e-6, abs_tol=0)
