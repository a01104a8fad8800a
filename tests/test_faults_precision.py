"""The fault suite, precision and counting: float64, the rule for k, overflow and empty tensors.

In the style of ``tests/test_faults.py``: every error is one line that names
its culprit (the tensor, and for ``lsedu merge`` the file), the inputs are
unchanged, and a refused merge leaves no output or temporary folder behind.
"""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction
from pathlib import Path

import pytest
import safetensors.torch as st
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as hst

import lsedu
from lsedu import topk
from lsedu.merge import Checkpoint, merge
from lsedu.merge import blocks as merge_blocks
from lsedu.merge import thresholds as merge_thresholds
from test_faults import raises_naming

F64 = torch.float64
TINY = 2.0**-40  # below float32's resolution at 1: 1 + TINY is 1.0 in float32


def sd(**tensors):
    return dict(tensors)


# ----------------------------------------------------------------------------- float64 is computed in float64


def _f64_inputs():
    """A float64 base whose entries float32 would round, and task vectors that leave entry 0 of each tensor alone."""
    base = sd(w=torch.tensor([1.0 + TINY, 1.0 + 3 * TINY, -2.0 + TINY], dtype=F64),
              b=torch.tensor([[0.5 + TINY, 3.0]], dtype=F64))
    tvs = [sd(w=torch.tensor([0.0, TINY, 2 * TINY], dtype=F64), b=torch.tensor([[0.0, 1e-3]], dtype=F64)),
           sd(w=torch.tensor([0.0, TINY, -TINY], dtype=F64), b=torch.tensor([[0.0, 2e-3]], dtype=F64))]
    return base, tvs


MERGES = {
    "task_arithmetic": lambda base, tvs: lsedu.task_arithmetic(base, tvs, 1.0),
    "ties global": lambda base, tvs: lsedu.ties_merge(base, tvs, 0.9, 1.0),
    "ties per_tensor": lambda base, tvs: lsedu.ties_merge(base, tvs, 0.9, 1.0, "per_tensor"),
    "dare then task_arithmetic": lambda base, tvs: lsedu.dare_merge(base, tvs, 0.0),
    "dare then ties": lambda base, tvs: lsedu.dare_merge(base, tvs, 0.0, then="ties", density=0.9),
    "stitch_dataless": lambda base, tvs: lsedu.stitch_dataless(base, tvs, 0.9),
    "apply_to": lambda base, tvs: lsedu.TaskVector(tvs[0]).apply_to(base, 1.0),
}


@pytest.mark.parametrize("method", list(MERGES))
def test_float64_entries_that_nothing_touches_are_bit_identical(method):
    base, tvs = _f64_inputs()
    out = MERGES[method](base, tvs)
    for n in base:
        assert out[n].dtype == F64, n
        assert out[n].reshape(-1)[0].item() == base[n].reshape(-1)[0].item(), f"{method}: untouched {n}[0] changed"


def test_float64_merges_compute_in_float64():
    base, tvs = _f64_inputs()
    out = lsedu.task_arithmetic(base, tvs, 1.0)
    assert out["w"][1].item() == 1.0 + 5 * TINY  # exact in float64; float32 would give 1.0
    soup = lsedu.uniform_soup([base, {n: base[n] + 2 * TINY for n in base}])
    assert soup["w"][0].item() == 1.0 + 2 * TINY


@pytest.mark.parametrize("size", [3, topk._SMALL + 10], ids=["sorted", "radix"])
@pytest.mark.parametrize("by_abs", [True, False])
def test_float64_topk_keeps_the_larger_of_two_values_equal_in_float32(size, by_abs):
    """1 and 1 + 2**-40 are one value in float32: the exact top-1 keeps the larger, wherever it stands."""
    for where in (0, size - 1):
        x = torch.zeros(size, dtype=F64)
        x[where], x[size - 1 - where] = 1.0 + TINY, 1.0
        mask = topk.topk_mask({"w": x}, 1, by_abs=by_abs)["w"]
        assert mask.nonzero().reshape(-1).tolist() == [where]
        kth = topk.kth_largest({"w": x}, 1, by_abs=by_abs)
        assert (kth.value, kth.n_greater, kth.n_equal) == (1.0 + TINY, 0, 1)


def test_float64_after_float32_tensors_is_ranked_exactly():
    """A float64 tensor after float32 ones: the first pass starts again with int64 keys."""
    ts = {"a": torch.rand(topk._SMALL + 5, generator=torch.Generator().manual_seed(0)) * 0.5,
          "b": torch.tensor([1.0, 1.0 + TINY, -1.0 - 2 * TINY], dtype=F64)}
    mask = topk.topk_mask(ts, 2)
    assert not mask["a"].any() and mask["b"].tolist() == [False, True, True]
    trimmed = lsedu.trim({"w": torch.tensor([1.0, 1.0 + TINY, 0.5], dtype=F64)}, 0.4)  # k = 1
    assert trimmed["w"].tolist() == [0.0, 1.0 + TINY, 0.0]


def test_float64_radix_select_matches_a_sort_with_signs():
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(topk._SMALL * 2, generator=g, dtype=F64) * 1e-3).to(F64)
    x[::7] = x[::7].to(torch.float32).to(F64) + TINY * 1e-3  # near-collisions in float32
    for by_abs in (True, False):
        vals = x.abs() if by_abs else x
        ranked = vals.sort(descending=True).values
        for k in (1, 17, x.numel() // 3, x.numel()):
            kth = topk.kth_largest({"x": x}, k, by_abs=by_abs)
            assert kth.value == ranked[k - 1].item() and kth.wide
            assert kth.n_greater == int((vals > kth.value).sum()) and kth.n_equal == int((vals == kth.value).sum())


# ----------------------------------------------------------------------------- lsedu merge refuses float64


def _write(root: Path, name: str, tensors: dict) -> Path:
    path = root / f"{name}.safetensors"
    st.save_file(tensors, path)
    return path


def _recipe(root: Path, method: str, params: dict, n_models: int) -> Path:
    r = {"merge_method": method, "base_model": "base.safetensors", "parameters": params, "output": "out",
         "models": [f"ft{i}.safetensors" for i in range(n_models)]}
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def _sha(root: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob("*.safetensors"))}


def _refused(tmp_path: Path, culprit: str, method: str, params: dict, n_models: int) -> str:
    """``lsedu merge`` refuses with a one-line error naming ``culprit``; the inputs are unchanged, nothing is left."""
    before = _sha(tmp_path)
    recipe = _recipe(tmp_path, method, params, n_models)
    message = raises_naming(ValueError, culprit, merge, recipe, progress=False)
    assert _sha(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "recipe.yaml"]), "something was left behind"
    return message


def test_merge_refuses_float64_naming_the_tensor_and_file(tmp_path):
    base = {"w": torch.ones(4, 3), "h": torch.ones(5, dtype=F64)}
    _write(tmp_path, "base", base)
    _write(tmp_path, "ft0", {"w": torch.full((4, 3), 2.0), "h": torch.full((5,), 2.0, dtype=F64)})
    message = _refused(tmp_path, r"tensor 'h' in .*base\.safetensors is float64", "task_arithmetic", {}, 1)
    assert "Python API" in message
    raises_naming(ValueError, r"tensor 'h' in .*base\.safetensors is float64.*exclude", merge_blocks.check_computable,
                  Checkpoint(tmp_path / "base.safetensors"), ["w", "h"])
    merge_blocks.check_computable(Checkpoint(tmp_path / "base.safetensors"), ["w"])  # the float32 tensor is fine


# ----------------------------------------------------------------------------- one rounding rule for k


@pytest.mark.parametrize(("n", "k"), [(3, 2), (5, 3), (7, 4), (9, 5), (1, 1), (2, 1), (4, 2)])
def test_half_a_tensor_rounds_half_up(n, k):
    """At density 0.5, 3, 5, 7 and 9 entries keep 2, 3, 4 and 5 (half-to-even would keep 2, 2, 4, 4)."""
    assert topk.count_for_density(n, 0.5) == k
    t = {"w": torch.arange(1.0, n + 1)}
    for mask in (lsedu.global_topk_mask(t, 0.5), lsedu.per_tensor_topk_mask(t, 0.5), lsedu.localize_dataless(t, 0.5)):
        assert int(mask["w"].sum()) == k
        assert mask["w"].tolist() == [i >= n - k for i in range(n)]  # the largest ones
    assert int((lsedu.trim(t, 0.5, "per_tensor")["w"] != 0).sum()) == k


@pytest.mark.parametrize(("n", "density", "k"), [(100, 0.29, 29), (5, 0.3, 2), (10, 0.25, 3), (10, 0.15, 2),
                                                  (1000, 1e-9, 1), (7, 1.0, 7), (0, 0.5, 0), (3, 1 / 6, 1),
                                                  (100, 0.035, 4), (20, 0.125, 3)])
def test_the_count_is_the_exact_product_rounded_half_up(n, density, k):
    """The rule applies to the exact product of n and the density as written: 0.29 * 100 is 28.999999999999996 in
    float arithmetic but 29 exactly; 0.3 * 5 is 1.5 and 0.15 * 10 is 1.5, which round up to 2 (the floats 0.3 and
    0.15 lie just below 3/10 and 3/20: the decimal, not the float, is rounded); 0.25 * 10 is 2.5: 3."""
    assert topk.count_for_density(n, density) == k


@settings(max_examples=200, deadline=None, database=None)
@given(hst.integers(0, 10**7), hst.floats(1e-6, 1.0))
def test_count_for_density_is_round_half_up_of_the_exact_product(n, density):
    k = topk.count_for_density(n, density)
    exact = Fraction(str(density)) * n  # the density as it prints: 0.3 is 3/10
    assert k == (0 if n == 0 else max(1, min(n, math.floor(exact + Fraction(1, 2)))))
    if n:
        assert 1 <= k <= n and (k == 1 or abs(Fraction(k) - exact) <= Fraction(1, 2))
        assert topk.count_for_density(n, min(1.0, density * 1.5)) >= k  # more density never keeps fewer


def test_streaming_counts_with_the_same_function():
    assert merge_thresholds.count_for_density is topk.count_for_density


@pytest.mark.parametrize("trim", ["global", "per_tensor"])
def test_streaming_trim_keeps_the_half_up_count(tmp_path, trim):
    """One model, TIES: the merge moves exactly the kept entries. Tensors of 3, 5 and 7 entries at density 0.5
    keep 2, 3 and 4 each (per tensor), or 8 of the 15 (global: six above 3/8, then two of the three ties at 3/8,
    the first in tensor order), as in memory."""
    base = {f"t{n}": torch.zeros(n) for n in (3, 5, 7)}
    ft = {f"t{n}": torch.arange(1.0, n + 1) / 8 for n in (3, 5, 7)}
    _write(tmp_path, "base", base)
    _write(tmp_path, "ft0", ft)
    report = merge(_recipe(tmp_path, "ties", {"density": 0.5, "trim": trim}, 1), progress=False)
    got = Checkpoint(report.output)
    moved = {n: int((got[n] != 0).sum()) for n in base}
    assert moved == ({"t3": 2, "t5": 3, "t7": 4} if trim == "per_tensor" else {"t3": 1, "t5": 3, "t7": 4})
    want = lsedu.ties_merge(base, [lsedu.TaskVector.from_models(base, ft)], 0.5, 1.0, trim)
    assert all(torch.equal(got[n], want[n]) for n in base)


# ----------------------------------------------------------------------------- overflow is an error naming the tensor


OVERFLOWING = {
    "task_arithmetic": lambda b, tvs, lam: lsedu.task_arithmetic(b, tvs, lam),
    "ties": lambda b, tvs, lam: lsedu.ties_merge(b, tvs, 0.5, lam),
    "dare": lambda b, tvs, lam: lsedu.dare_merge(b, tvs, 0.0, lam, then="ties", density=0.5),
    "apply_to": lambda b, tvs, lam: lsedu.TaskVector(tvs[0]).apply_to(b, lam),
}


@pytest.mark.parametrize("method", list(OVERFLOWING))
def test_a_finite_lambda_that_overflows_names_the_tensor(method):
    base = sd(ok=torch.zeros(2), big=torch.zeros(3))
    tvs = [sd(ok=torch.zeros(2), big=torch.tensor([10.0, 20.0, 30.0]))]
    raises_naming(ValueError, r"tensor 'big': the merged values \(lam=1e\+38\) overflow float32.*smaller lam",
                  OVERFLOWING[method], base, tvs, 1e38)
    # 1e39 is not a float32 at all: every entry, zeros too, would be NaN or inf; the first tensor is named
    raises_naming(ValueError, r"tensor 'ok': lam=1e\+39 overflows float32, the dtype the tensor is computed in",
                  OVERFLOWING[method], base, tvs, 1e39)


def test_float16_models_whose_difference_overflows_name_the_tensor():
    pre = sd(a=torch.zeros(2, dtype=torch.float16), w=torch.tensor([-65000.0, 1.0], dtype=torch.float16))
    ft = sd(a=torch.ones(2, dtype=torch.float16), w=torch.tensor([65000.0, 1.0], dtype=torch.float16))
    raises_naming(ValueError, r"tensor 'w': the task vector \(finetuned - pretrained\) overflows float16.*float32",
                  lsedu.TaskVector.from_models, pre, ft)


def test_float16_merge_that_overflows_names_the_tensor():
    base = sd(w=torch.tensor([60000.0, 1.0], dtype=torch.float16))
    tvs = [sd(w=torch.tensor([6000.0, 1.0], dtype=torch.float16))]
    raises_naming(ValueError, r"tensor 'w': the merged values \(lam=2\) overflow float16.*convert the models to float32",
                  lsedu.task_arithmetic, base, tvs, 2.0)


def test_task_vector_arithmetic_that_overflows_names_the_tensor():
    tau = lsedu.TaskVector(sd(w=torch.tensor([3e38, 1.0])))
    raises_naming(ValueError, r"tensor 'w': the task vector times 10 overflows float32", tau.__mul__, 10.0)
    raises_naming(ValueError, r"tensor 'w': the sum of the task vectors overflows float32", tau.__add__, tau)


def test_dare_rescaling_that_overflows_names_the_tensor():
    tv = sd(ok=torch.ones(3, dtype=torch.float16), w=torch.full((64,), 60000.0, dtype=torch.float16))
    raises_naming(ValueError, r"tensor 'w': the rescaled task vector \(tau / \(1 - p\), p=0.5\) overflows float16",
                  lsedu.dare, tv, 0.5)


def test_a_soup_near_the_float32_limit_is_its_exact_mean():
    """The sum of two large float32 models overflows, their mean does not: the soup is the mean, not inf."""
    a, b = sd(w=torch.tensor([3e38, 1.0])), sd(w=torch.tensor([3e38, 3.0]))
    out = lsedu.uniform_soup([a, b])
    assert torch.equal(out["w"], torch.tensor([3e38, 2.0]))


def test_streaming_lambda_that_overflows_names_the_tensor_and_file(tmp_path):
    _write(tmp_path, "base", {"a": torch.zeros(3), "w": torch.zeros(4, 2)})
    _write(tmp_path, "ft0", {"a": torch.zeros(3), "w": torch.full((4, 2), 30.0)})
    for method, params in (("task_arithmetic", {}), ("ties", {"density": 0.5})):
        _refused(tmp_path, r"tensor 'w' in .*base\.safetensors: the merged values \(lam=1e\+38\) overflow float32",
                 method, {**params, "lambda": 1e38}, 1)
        _refused(tmp_path, r"tensor 'a' in .*base\.safetensors: lam=1e\+39 overflows float32", method,
                 {**params, "lambda": 1e39}, 1)


def test_streaming_float16_result_that_overflows_names_the_tensor(tmp_path):
    """The task vector is formed in float32 (120000: no overflow), but the merge, cast back to float16, overflows."""
    _write(tmp_path, "base", {"w": torch.tensor([-60000.0, 0.0], dtype=torch.float16)})
    _write(tmp_path, "ft0", {"w": torch.tensor([60000.0, 1.0], dtype=torch.float16)})
    _refused(tmp_path, r"tensor 'w' in .*base\.safetensors: the merged values \(lam=2\) overflow float16.*float32",
             "task_arithmetic", {"lambda": 2.0}, 1)


def test_streaming_task_vector_that_overflows_names_the_model_file(tmp_path):
    _write(tmp_path, "base", {"w": torch.tensor([-3e38, 0.0])})
    _write(tmp_path, "ft0", {"w": torch.tensor([0.0, 1.0])})
    _write(tmp_path, "ft1", {"w": torch.tensor([3e38, 1.0])})
    for method, params in (("task_arithmetic", {"lambda": 1e-3}), ("ties", {"density": 1.0}),
                           ("localize_stitch", {"density": 1.0})):
        _refused(tmp_path, r"tensor 'w': the task vector of .*ft1\.safetensors .*overflows float32", method, params, 2)


def test_streaming_dare_rescaling_that_overflows_names_the_model_file(tmp_path):
    _write(tmp_path, "base", {"w": torch.zeros(64)})
    _write(tmp_path, "ft0", {"w": torch.full((64,), 3e38)})
    _refused(tmp_path, r"tensor 'w': the task vector of .*ft0\.safetensors after DARE's rescaling.*p=0\.5",
             "dare", {"p": 0.5, "then": "task_arithmetic"}, 1)


# ----------------------------------------------------------------------------- empty tensors, nothing to rank


def test_per_tensor_trim_merges_an_empty_tensor_in_memory_and_streaming(tmp_path):
    base = {"e": torch.zeros(0, 4), "w": torch.zeros(3, 3)}
    fts = [{"e": torch.zeros(0, 4), "w": torch.randn(3, 3, generator=torch.Generator().manual_seed(i))}
           for i in range(2)]
    _write(tmp_path, "base", base)
    for i, ft in enumerate(fts):
        _write(tmp_path, f"ft{i}", ft)
    tvs = [lsedu.TaskVector.from_models(base, ft) for ft in fts]
    want = lsedu.ties_merge(base, tvs, 0.5, 1.0, "per_tensor")
    assert want["e"].shape == (0, 4)
    report = merge(_recipe(tmp_path, "ties", {"density": 0.5, "trim": "per_tensor"}, 2), progress=False)
    got = Checkpoint(report.output)
    assert got["e"].shape == (0, 4) and torch.equal(got["w"], want["w"])


@pytest.mark.parametrize(("method", "params"), [("ties", {"density": 0.5}), ("ties", {"density": 0.5, "trim": "per_tensor"}),
                                                ("localize_stitch", {"density": 0.5}),
                                                ("dare", {"p": 0.5, "then": "ties", "density": 0.5})])
def test_nothing_to_rank_keeps_nothing_in_memory_and_streaming(tmp_path, method, params):
    """Every float tensor is empty: a trim has no entry to rank and keeps none; the merge is the base."""
    base = {"e": torch.zeros(0, 4), "f": torch.zeros(0), "ids": torch.arange(3)}
    ft = {"e": torch.zeros(0, 4), "f": torch.zeros(0), "ids": torch.arange(3)}
    tau = lsedu.TaskVector.from_models(base, ft)
    assert all(m.shape == tau[n].shape and not m.any() for n, m in lsedu.global_topk_mask(tau, 0.5).items())
    assert lsedu.localize_dataless(tau, 0.5)["e"].shape == (0, 4)
    in_memory = {"ties": lambda: lsedu.ties_merge(base, [tau], 0.5, 1.0, params.get("trim", "global")),
                 "localize_stitch": lambda: lsedu.stitch_dataless(base, [tau], 0.5),
                 "dare": lambda: lsedu.dare_merge(base, [tau], 0.5, then="ties", density=0.5)}[method]()
    _write(tmp_path, "base", base)
    _write(tmp_path, "ft0", ft)
    got = Checkpoint(merge(_recipe(tmp_path, method, params, 1), progress=False).output)
    for n in base:
        assert torch.equal(in_memory[n], base[n]) and torch.equal(got[n], base[n]), n


def test_kth_largest_of_nothing_is_a_clear_error():
    raises_naming(ValueError, "tensors holds no entries to rank", topk.kth_largest, {"e": torch.zeros(0)}, 1)
    raises_naming(ValueError, "tensors is empty: it holds no tensors to rank", topk.topk_mask, {}, 1)
    raises_naming(ValueError, "tensors is empty: it holds no tensors to rank", lsedu.global_topk_mask, {}, 0.5)
