"""Bad inputs: every public function fails early, and says *what* is wrong and *where*.

Each test passes one wrong thing and checks three facts:

* the error is a ``ValueError`` or ``TypeError`` (never a ``KeyError``,
  ``AttributeError`` or a shape error from deep inside torch);
* its message names the argument and, where there is one, the tensor at fault
  (``pytest.raises(..., match=...)``);
* the inputs are left exactly as they were (a failed merge changes nothing).

Cases where lsedu does not yet behave this way are marked
``xfail(strict=True)`` with the reason: they document a defect, and turn into
a failure (so that the mark gets removed) the day it is fixed.

The helpers below are local on purpose, so this file does not depend on the
fixtures of ``conftest.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lsedu
from lsedu import TaskVector

NAN, INF = float("nan"), float("inf")
SHAPES = {"enc.w": (3, 4), "enc.b": (4,), "head.w": (2, 4)}


# --- building blocks ---------------------------------------------------------
def model(seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(s, generator=g) for n, s in SHAPES.items()}


def tvec(seed: int = 1) -> dict[str, torch.Tensor]:
    return model(seed, scale=0.1)


def bool_mask(seed: int = 2, density: float = 0.5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(s, generator=g) < density for n, s in SHAPES.items()}


def replace(sd: Mapping, name, value) -> dict:
    """A copy of ``sd`` with ``sd[name] = value`` (a new key if ``name`` is new)."""
    out = dict(sd)
    out[name] = value
    return out


def drop(sd: Mapping, name) -> dict:
    return {n: t for n, t in sd.items() if n != name}


def poison(sd: Mapping, name: str = "enc.w", value: float = NAN) -> dict:
    """A copy of ``sd`` whose tensor ``name`` holds one ``value`` (NaN or inf)."""
    t = sd[name].clone()
    t.view(-1)[1] = value
    return replace(sd, name, t)


def reshaped(sd: Mapping, name: str = "enc.w") -> dict:
    return replace(sd, name, sd[name].t().contiguous())


def retyped(sd: Mapping, name: str = "enc.w", dtype=torch.float64) -> dict:
    return replace(sd, name, sd[name].to(dtype))


def const_score(_sd) -> float:
    return 0.0


# --- "the inputs were not modified" -----------------------------------------
class _ModuleState:
    def __init__(self, module: torch.nn.Module):
        self.state = {n: t.detach().clone() for n, t in module.state_dict().items()}
        self.training = module.training


def snapshot(x):
    """A deep copy of every tensor reachable through dicts, lists and tuples."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, torch.nn.Module):
        return _ModuleState(x)
    if isinstance(x, Mapping):
        return {k: snapshot(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [snapshot(v) for v in x]
    return x  # callables, numbers, strings, iterators: compared by identity/equality


def assert_unchanged(before, after, where: str = "input") -> None:
    if isinstance(before, torch.Tensor):
        assert isinstance(after, torch.Tensor), where
        # rtol=atol=0: bit-for-bit, with NaN == NaN so that poisoned inputs compare equal
        torch.testing.assert_close(after, before, rtol=0, atol=0, equal_nan=True, msg=f"{where} was modified")
    elif isinstance(before, _ModuleState):
        assert after.training == before.training, f"{where}: train/eval mode changed"
        assert_unchanged(before.state, after.state_dict(), f"{where}.state_dict()")
    elif isinstance(before, dict):
        assert isinstance(after, Mapping), where
        assert list(after.keys()) == list(before.keys()), f"{where}: keys changed"
        for k in before:
            assert_unchanged(before[k], after[k], f"{where}[{k!r}]")
    elif isinstance(before, list):
        assert len(after) == len(before), f"{where}: length changed"
        for i, (b, a) in enumerate(zip(before, after)):
            assert_unchanged(b, a, f"{where}[{i}]")
    elif isinstance(before, float) and math.isnan(before):
        assert isinstance(after, float) and math.isnan(after), where
    else:
        assert after is before or after == before, where


def raises_unchanged(exc, match: str, fn, *args, **kwargs) -> None:
    """``fn(*args, **kwargs)`` raises ``exc`` matching ``match``, and leaves its arguments as they were."""
    before = snapshot((args, kwargs))
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)
    assert_unchanged(before, [list(args), kwargs], "arguments")


# =============================================================================
# Merges over (base, task_vectors): layout, values, types
# =============================================================================
def _stitch(base, tvs):
    masks = [bool_mask(i) for i in range(len(tvs))] if isinstance(tvs, list) else []
    return lsedu.stitch(base, tvs, masks)


MERGES = {
    "task_arithmetic": lambda base, tvs: lsedu.task_arithmetic(base, tvs, lam=0.3),
    "ties_merge": lambda base, tvs: lsedu.ties_merge(base, tvs, density=0.5),
    "dare_merge": lambda base, tvs: lsedu.dare_merge(base, tvs, p=0.5),
    "dare_merge_then_ties": lambda base, tvs: lsedu.dare_merge(base, tvs, p=0.5, then="ties", density=0.5),
    "stitch": _stitch,
    "pick_lambda": lambda base, tvs: lsedu.pick_lambda(base, tvs, const_score, grid=[0.3]),
}

# (case id, base, task vectors, exception, pattern the message must match)
MERGE_CASES = [
    ("base_nan", poison(model()), [tvec(1), tvec(2)], ValueError, r"base\['enc\.w'\] has 1 non-finite"),
    ("base_inf", poison(model(), "enc.b", INF), [tvec(1), tvec(2)], ValueError, r"base\['enc\.b'\] has 1 non-finite"),
    ("tv1_nan", model(), [tvec(1), poison(tvec(2))], ValueError, r"task_vectors\[1\]\['enc\.w'\] has 1 non-finite"),
    ("tv0_neg_inf", model(), [poison(tvec(1), "head.w", -INF), tvec(2)], ValueError,
     r"task_vectors\[0\]\['head\.w'\] has 1 non-finite"),
    ("tv0_key_base_lacks", model(), [replace(tvec(1), "extra", torch.ones(2)), replace(tvec(2), "extra", torch.ones(2))],
     ValueError, r"task_vectors\[0\] has tensor\(s\) that base lacks: 'extra'"),
    ("tv1_missing_key", model(), [tvec(1), drop(tvec(2), "enc.b")], ValueError,
     r"task_vectors\[1\] is missing tensor\(s\) that task_vectors\[0\] has: 'enc\.b'"),
    ("tv1_extra_key", model(), [tvec(1), replace(tvec(2), "extra", torch.ones(2))], ValueError,
     r"task_vectors\[1\] has tensor\(s\) that task_vectors\[0\] lacks: 'extra'"),
    ("base_shape", reshaped(model()), [tvec(1), tvec(2)], ValueError,
     r"shape mismatch at tensor 'enc\.w': base has \(4, 3\), task_vectors\[0\] has \(3, 4\)"),
    ("tv1_shape", model(), [tvec(1), reshaped(tvec(2))], ValueError,
     r"shape mismatch at tensor 'enc\.w': task_vectors\[0\] has \(3, 4\), task_vectors\[1\] has \(4, 3\)"),
    ("base_dtype", retyped(model()), [tvec(1), tvec(2)], ValueError,
     r"dtype mismatch at tensor 'enc\.w': base has torch\.float64, task_vectors\[0\] has torch\.float32"),
    ("tv1_dtype", model(), [tvec(1), retyped(tvec(2), "enc.b", torch.float16)], ValueError,
     r"dtype mismatch at tensor 'enc\.b': task_vectors\[0\] has torch\.float32, task_vectors\[1\] has torch\.float16"),
    ("tv0_integer_tensor", model(), [retyped(tvec(1), "enc.w", torch.int64), tvec(2)], TypeError,
     r"task_vectors\[0\]\['enc\.w'\] has dtype torch\.int64"),
    ("base_not_dict", list(model().values()), [tvec(1)], TypeError, r"base must be a dict .* got list"),
    ("tvs_one_dict_not_list", model(), tvec(1), TypeError, r"task_vectors must be a list of task vectors, got dict"),
    ("tvs_empty", model(), [], ValueError, r"task_vectors is empty"),
    ("tv1_not_dict", model(), [tvec(1), "tau"], TypeError, r"task_vectors\[1\] must be a dict .* got str"),
    ("tv0_value_ndarray", model(), [replace(tvec(1), "enc.w", np.zeros((3, 4), np.float32))], TypeError,
     r"task_vectors\[0\]\['enc\.w'\] must be a torch\.Tensor, got ndarray"),
    ("base_value_list", replace(model(), "enc.b", [0.0] * 4), [tvec(1)], TypeError,
     r"base\['enc\.b'\] must be a torch\.Tensor, got list"),
    ("base_int_key", replace(model(), 3, torch.ones(1)), [tvec(1)], TypeError, r"base has a key 3 of type int"),
    ("base_empty", {}, [tvec(1)], ValueError, r"base is empty"),
    ("tv0_empty", model(), [{}], ValueError, r"task_vectors\[0\] is empty"),
]


@pytest.mark.parametrize("merge", list(MERGES), ids=list(MERGES))
@pytest.mark.parametrize(("base", "tvs", "exc", "match"), [c[1:] for c in MERGE_CASES], ids=[c[0] for c in MERGE_CASES])
def test_merge_rejects_bad_base_or_task_vectors(merge, base, tvs, exc, match):
    raises_unchanged(exc, match, MERGES[merge], base, tvs)


# =============================================================================
# Soups over a list of fine-tuned models
# =============================================================================
SOUPS = {
    "uniform_soup": lambda models: lsedu.uniform_soup(models),
    "greedy_soup": lambda models: lsedu.greedy_soup(models, const_score),
}

SOUP_CASES = [
    ("empty_list", [], ValueError, r"models is empty"),
    ("dict_not_list", model(), TypeError, r"models must be a list of models, got dict"),
    ("models1_not_dict", [model(0), [1.0, 2.0]], TypeError, r"models\[1\] must be a dict .* got list"),
    ("models1_missing_key", [model(0), drop(model(1), "enc.b")], ValueError,
     r"models\[1\] is missing tensor\(s\) that models\[0\] has: 'enc\.b'"),
    ("models1_extra_key", [model(0), replace(model(1), "extra", torch.ones(2))], ValueError,
     r"models\[1\] has tensor\(s\) that models\[0\] lacks: 'extra'"),
    ("models2_shape", [model(0), model(1), reshaped(model(2))], ValueError,
     r"shape mismatch at tensor 'enc\.w': models\[0\] has \(3, 4\), models\[2\] has \(4, 3\)"),
    ("models1_dtype", [model(0), retyped(model(1), "head.w", torch.bfloat16)], ValueError,
     r"dtype mismatch at tensor 'head\.w': models\[0\] has torch\.float32, models\[1\] has torch\.bfloat16"),
    ("models0_nan", [poison(model(0)), model(1)], ValueError, r"models\[0\]\['enc\.w'\] has 1 non-finite"),
    ("models1_inf", [model(0), poison(model(1), "enc.b", INF)], ValueError, r"models\[1\]\['enc\.b'\] has 1 non-finite"),
    ("models1_value_not_tensor", [model(0), replace(model(1), "enc.b", 0.5)], TypeError,
     r"models\[1\]\['enc\.b'\] must be a torch\.Tensor, got float"),
    ("models0_empty_dict", [{}, {}], ValueError, r"models\[0\] is empty"),
]


@pytest.mark.parametrize("soup", list(SOUPS), ids=list(SOUPS))
@pytest.mark.parametrize(("models", "exc", "match"), [c[1:] for c in SOUP_CASES], ids=[c[0] for c in SOUP_CASES])
def test_soup_rejects_bad_models(soup, models, exc, match):
    raises_unchanged(exc, match, SOUPS[soup], models)


# =============================================================================
# TaskVector: construction, include/exclude, arithmetic
# =============================================================================
FROM_MODELS_CASES = [
    ("pretrained_not_dict", [1.0], model(1), {}, TypeError, r"pretrained must be a dict .* got list"),
    ("finetuned_missing_key", model(0), drop(model(1), "enc.b"), {}, ValueError,
     r"finetuned is missing tensor\(s\) that pretrained has: 'enc\.b'"),
    ("finetuned_extra_key", model(0), replace(model(1), "extra", torch.ones(1)), {}, ValueError,
     r"finetuned has tensor\(s\) that pretrained lacks: 'extra'"),
    ("pretrained_extra_key", replace(model(0), "extra", torch.ones(1)), model(1), {}, ValueError,
     r"finetuned is missing tensor\(s\) that pretrained has: 'extra'"),
    ("shape", model(0), reshaped(model(1)), {}, ValueError,
     r"shape mismatch at tensor 'enc\.w': pretrained has \(3, 4\), finetuned has \(4, 3\)"),
    ("dtype", model(0), retyped(model(1)), {}, ValueError,
     r"dtype mismatch at tensor 'enc\.w': pretrained has torch\.float32, finetuned has torch\.float64"),
    ("pretrained_nan", poison(model(0)), model(1), {}, ValueError, r"pretrained\['enc\.w'\] has 1 non-finite"),
    ("finetuned_inf", model(0), poison(model(1), "head.w", INF), {}, ValueError, r"finetuned\['head\.w'\] has 1 non-finite"),
    ("include_matches_nothing", model(0), model(1), {"include": "decoder.*"}, ValueError,
     r"include pattern 'decoder\.\*' matches no parameter name"),
    ("one_include_of_two_matches_nothing", model(0), model(1), {"include": ["enc.*", "encoder.*"]}, ValueError,
     r"include pattern 'encoder\.\*' matches no parameter name"),
    ("exclude_matches_nothing", model(0), model(1), {"exclude": ["classifier.*"]}, ValueError,
     r"exclude pattern 'classifier\.\*' matches no parameter name"),
    ("include_not_str", model(0), model(1), {"include": ["enc.*", 3]}, TypeError, r"include must be glob pattern strings"),
    ("exclude_everything", model(0), model(1), {"exclude": "*"}, ValueError,
     r"selection \(include/exclude\) leaves no floating-point tensor"),
]


@pytest.mark.parametrize(("pre", "ft", "kwargs", "exc", "match"), [c[1:] for c in FROM_MODELS_CASES],
                         ids=[c[0] for c in FROM_MODELS_CASES])
def test_task_vector_from_models_rejects(pre, ft, kwargs, exc, match):
    raises_unchanged(exc, match, TaskVector.from_models, pre, ft, **kwargs)


def test_task_vector_from_models_include_not_iterable_names_include():
    raises_unchanged(TypeError, r"include", TaskVector.from_models, model(0), model(1), include=5)


def test_select_pattern_matching_nothing():
    with pytest.raises(ValueError, match=r"exclude pattern 'head\.\*\*x' matches no parameter name"):
        lsedu.select(list(SHAPES), exclude="head.**x")


@pytest.mark.parametrize(
    ("vector", "exc", "match"),
    [
        ([torch.ones(2)], TypeError, r"vector must be a dict"),
        ({"w": [1.0, 2.0]}, TypeError, r"vector\['w'\] must be a torch\.Tensor, got list"),
        ({"w": torch.ones(2, dtype=torch.int32)}, TypeError, r"vector\['w'\] has dtype torch\.int32"),
        ({0: torch.ones(2)}, TypeError, r"vector has a key 0 of type int"),
    ],
    ids=["not_dict", "value_list", "integer_dtype", "int_key"],
)
def test_task_vector_constructor_rejects(vector, exc, match):
    raises_unchanged(exc, match, TaskVector, vector)


def _tv(seed=1):
    return TaskVector(tvec(seed))


@pytest.mark.parametrize(
    ("op", "exc", "match"),
    [
        (lambda a: a + TaskVector(drop(tvec(2), "enc.b")), ValueError,
         r"right operand is missing tensor\(s\) that left operand has: 'enc\.b'"),
        (lambda a: a - TaskVector(reshaped(tvec(2))), ValueError,
         r"shape mismatch at tensor 'enc\.w': left operand has \(3, 4\), right operand has \(4, 3\)"),
        (lambda a: a + 1, TypeError, r"cannot add a TaskVector and a int"),
        (lambda a: a - "b", TypeError, r"cannot subtract a TaskVector and a str"),
        (lambda a: a * a, TypeError, r"TaskVector \* TaskVector is not defined"),
        (lambda a: a * NAN, ValueError, r"scalar must be finite"),
        (lambda a: INF * a, ValueError, r"scalar must be finite"),
        (lambda a: a * "2", TypeError, r"scalar must be a real number, got str"),
    ],
    ids=["add_missing_key", "sub_shape", "add_int", "sub_str", "mul_tv", "mul_nan", "rmul_inf", "mul_str"],
)
def test_task_vector_arithmetic_rejects(op, exc, match):
    a = _tv(1)
    before = snapshot(a)
    with pytest.raises(exc, match=match):
        op(a)
    assert_unchanged(before, a, "left operand")


@pytest.mark.parametrize(
    ("tau", "base", "scaling", "exc", "match"),
    [
        (TaskVector(tvec(1)), poison(model()), 1.0, ValueError, r"base\['enc\.w'\] has 1 non-finite"),
        (TaskVector(poison(tvec(1), "enc.b")), model(), 1.0, ValueError, r"task vector\['enc\.b'\] has 1 non-finite"),
        (TaskVector(replace(tvec(1), "extra", torch.ones(1))), model(), 1.0, ValueError,
         r"task vector has tensor\(s\) that base lacks: 'extra'"),
        (TaskVector(tvec(1)), reshaped(model(), "head.w"), 1.0, ValueError, r"shape mismatch at tensor 'head\.w'"),
        (TaskVector(tvec(1)), model(), NAN, ValueError, r"scaling must be finite"),
        (TaskVector(tvec(1)), model(), "0.3", TypeError, r"scaling must be a real number, got str"),
        (TaskVector(tvec(1)), {}, 1.0, ValueError, r"base is empty"),
    ],
    ids=["base_nan", "tau_nan", "tau_extra_key", "base_shape", "scaling_nan", "scaling_str", "base_empty"],
)
def test_apply_to_rejects(tau, base, scaling, exc, match):
    raises_unchanged(exc, match, tau.apply_to, base, scaling)


@pytest.mark.parametrize(
    ("a", "b", "exc", "match"),
    [
        ([1.0], tvec(2), TypeError, r"\ba must be a dict"),
        (tvec(1), drop(tvec(2), "head.w"), ValueError, r"\bb is missing tensor\(s\) that a has: 'head\.w'"),
        (tvec(1), reshaped(tvec(2)), ValueError, r"shape mismatch at tensor 'enc\.w': a has \(3, 4\), b has \(4, 3\)"),
        ({n: torch.zeros(s) for n, s in SHAPES.items()}, tvec(2), ValueError, r"all zeros"),
    ],
    ids=["a_not_dict", "b_missing_key", "shape", "zero_vector"],
)
def test_cosine_similarity_rejects(a, b, exc, match):
    raises_unchanged(exc, match, lsedu.cosine_similarity, a, b)


@pytest.mark.parametrize("which", ["a", "b"])
def test_cosine_similarity_rejects_nan(which):
    a, b = tvec(1), tvec(2)
    if which == "a":
        a = poison(a)
    else:
        b = poison(b)
    raises_unchanged(ValueError, rf"\b{which}\['enc\.w'\] has 1 non-finite", lsedu.cosine_similarity, a, b)


# =============================================================================
# density: trim, global/per-tensor top-k, dataless localization, TIES
# =============================================================================
DENSITY_FUNCTIONS = {
    "trim": lambda tv, d: lsedu.trim(tv, d),
    "trim_per_tensor": lambda tv, d: lsedu.trim(tv, d, scope="per_tensor"),
    "global_topk_mask": lambda tv, d: lsedu.global_topk_mask(tv, d),
    "per_tensor_topk_mask": lambda tv, d: lsedu.per_tensor_topk_mask(tv, d),
    "localize_dataless": lambda tv, d: lsedu.localize_dataless(tv, d),
    "ties_merge": lambda tv, d: lsedu.ties_merge(model(), [tv, tvec(2)], density=d),
    "dare_merge_then_ties": lambda tv, d: lsedu.dare_merge(model(), [tv], p=0.5, then="ties", density=d),
}
BAD_DENSITIES = [
    (0, ValueError, r"density must lie in \(0, 1\], got 0\.0"),
    (0.0, ValueError, r"density must lie in \(0, 1\], got 0\.0"),
    (-0.2, ValueError, r"density must lie in \(0, 1\], got -0\.2"),
    (1.5, ValueError, r"density must lie in \(0, 1\], got 1\.5"),
    (20, ValueError, r"density must lie in \(0, 1\], got 20\.0"),  # a percentage passed as a fraction
    (NAN, ValueError, r"density must lie in \(0, 1\], got nan"),
    (INF, ValueError, r"density must lie in \(0, 1\], got inf"),
    ("0.2", TypeError, r"density must be a number, got str"),
    (None, TypeError, r"density must be a number, got NoneType"),
    (True, TypeError, r"density must be a number, got bool"),
]


@pytest.mark.parametrize("fn", list(DENSITY_FUNCTIONS), ids=list(DENSITY_FUNCTIONS))
@pytest.mark.parametrize(("density", "exc", "match"), BAD_DENSITIES, ids=[repr(d[0]) for d in BAD_DENSITIES])
def test_density_out_of_range(fn, density, exc, match):
    raises_unchanged(exc, match, DENSITY_FUNCTIONS[fn], tvec(1), density)


# =============================================================================
# DARE: p, seed, then=
# =============================================================================
DARE_FUNCTIONS = {
    "dare": lambda tv, p: lsedu.dare(tv, p),
    "dare_merge": lambda tv, p: lsedu.dare_merge(model(), [tv, tvec(2)], p=p),
}
BAD_PS = [
    (1, ValueError, r"p must lie in \[0, 1\), got 1\.0"),
    (1.0, ValueError, r"p must lie in \[0, 1\), got 1\.0"),
    (1.5, ValueError, r"p must lie in \[0, 1\), got 1\.5"),
    (-0.1, ValueError, r"p must lie in \[0, 1\), got -0\.1"),
    (-1e-12, ValueError, r"p must lie in \[0, 1\), got -1e-12"),
    (NAN, ValueError, r"p must lie in \[0, 1\), got nan"),
    (90, ValueError, r"p must lie in \[0, 1\), got 90\.0"),
    ("0.9", TypeError, r"p must be a number, got str"),
    (None, TypeError, r"p must be a number, got NoneType"),
]


@pytest.mark.parametrize("fn", list(DARE_FUNCTIONS), ids=list(DARE_FUNCTIONS))
@pytest.mark.parametrize(("p", "exc", "match"), BAD_PS, ids=[repr(p[0]) for p in BAD_PS])
def test_dare_p_out_of_range(fn, p, exc, match):
    raises_unchanged(exc, match, DARE_FUNCTIONS[fn], tvec(1), p)


@pytest.mark.parametrize(
    ("tv", "exc", "match"),
    [
        (poison(tvec(1)), ValueError, r"task_vector.*\['enc\.w'\] has 1 non-finite"),
        ([tvec(1)], TypeError, r"task_vector.* must be a dict"),
        ({}, ValueError, r"task_vector.* is empty"),
        (retyped(tvec(1), "enc.b", torch.int32), TypeError, r"task_vector.*\['enc\.b'\] has dtype torch\.int32"),
    ],
    ids=["nan", "list", "empty", "integer_dtype"],
)
@pytest.mark.parametrize("fn", ["trim", "dare", "localize_dataless"])
def test_single_task_vector_functions_reject(fn, tv, exc, match):
    call = {"trim": lambda t: lsedu.trim(t, 0.5), "dare": lambda t: lsedu.dare(t, 0.5),
            "localize_dataless": lambda t: lsedu.localize_dataless(t, 0.5)}[fn]
    raises_unchanged(exc, match, call, tv)


@pytest.mark.parametrize("fn", ["trim", "dare", "localize_dataless"])
def test_single_task_vector_message_has_no_spurious_index(fn):
    call = {"trim": lambda t: lsedu.trim(t, 0.5), "dare": lambda t: lsedu.dare(t, 0.5),
            "localize_dataless": lambda t: lsedu.localize_dataless(t, 0.5)}[fn]
    raises_unchanged(ValueError, r"(?<![\w\]])task_vector\['enc\.w'\] has 1 non-finite", call, poison(tvec(1)))


@pytest.mark.parametrize(
    ("seed", "match"), [("0", r"seed must be an int, got str"), (1.0, r"seed must be an int, got float"),
                        (True, r"seed must be an int, got bool"), (None, r"seed must be an int, got NoneType")],
    ids=["str", "float", "bool", "None"],
)
def test_dare_seed_not_int(seed, match):
    raises_unchanged(TypeError, match, lsedu.dare, tvec(1), 0.5, seed=seed)


@pytest.mark.parametrize("seed", ["0", None, True], ids=["str", "None", "bool"])
def test_dare_merge_seed_not_int(seed):
    raises_unchanged(TypeError, r"seed must be an int", lsedu.dare_merge, model(), [tvec(1), tvec(2)], p=0.5, seed=seed)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"then": "tie"}, ValueError, r"then must be 'task_arithmetic' or 'ties', got 'tie'"),
        ({"then": None}, ValueError, r"then must be 'task_arithmetic' or 'ties', got None"),
        ({"then": "TIES"}, ValueError, r"then must be 'task_arithmetic' or 'ties', got 'TIES'"),
        ({"density": 0.5}, TypeError, r"unexpected arguments for then='task_arithmetic': \['density'\]"),
        ({"then": "task_arithmetic", "trim_scope": "global"}, TypeError,
         r"unexpected arguments for then='task_arithmetic': \['trim_scope'\]"),
        ({"then": "ties", "trim_scope": "layer"}, ValueError, r"scope must be 'global' or 'per_tensor', got 'layer'"),
        ({"lam": NAN}, ValueError, r"lam must be finite"),
    ],
    ids=["then_typo", "then_None", "then_upper", "ties_kwarg_without_ties", "trim_scope_without_ties",
         "then_ties_bad_scope", "lam_nan"],
)
def test_dare_merge_rejects_bad_options(kwargs, exc, match):
    raises_unchanged(exc, match, lsedu.dare_merge, model(), [tvec(1), tvec(2)], p=0.5, **kwargs)


# =============================================================================
# TIES steps: scope, elect_sign, disjoint_mean
# =============================================================================
@pytest.mark.parametrize("scope", ["layer", "Global", None, 0], ids=["layer", "Global", "None", "zero"])
def test_trim_bad_scope(scope):
    raises_unchanged(ValueError, r"scope must be 'global' or 'per_tensor', got", lsedu.trim, tvec(1), 0.5, scope=scope)


def test_ties_merge_bad_trim_scope_is_rejected():
    raises_unchanged(ValueError, r"scope must be 'global' or 'per_tensor', got 'layer'", lsedu.ties_merge,
                     model(), [tvec(1), tvec(2)], trim_scope="layer")


def test_ties_merge_bad_trim_scope_names_trim_scope():
    raises_unchanged(ValueError, r"trim_scope", lsedu.ties_merge, model(), [tvec(1), tvec(2)], trim_scope="layer")


@pytest.mark.parametrize(
    ("trimmed", "exc", "match"),
    [
        ([], ValueError, r"trimmed is empty"),
        (tvec(1), TypeError, r"trimmed must be a list of task vectors, got dict"),
        ([tvec(1), poison(tvec(2))], ValueError, r"trimmed\[1\]\['enc\.w'\] has 1 non-finite"),
        ([tvec(1), drop(tvec(2), "head.w")], ValueError, r"trimmed\[1\] is missing tensor\(s\) that trimmed\[0\] has: 'head\.w'"),
        ([tvec(1), reshaped(tvec(2))], ValueError, r"shape mismatch at tensor 'enc\.w'.*trimmed\[1\]"),
    ],
    ids=["empty", "dict_not_list", "nan", "missing_key", "shape"],
)
@pytest.mark.parametrize("fn", ["elect_sign", "disjoint_mean", "sign_conflicts"])
def test_ties_steps_reject_bad_task_vectors(fn, trimmed, exc, match):
    if fn == "sign_conflicts":
        match = match.replace("trimmed", "task_vectors")
        call = lsedu.sign_conflicts
    elif fn == "elect_sign":
        call = lsedu.elect_sign
    else:
        signs = {n: torch.ones(s) for n, s in SHAPES.items()}

        def call(tvs):
            return lsedu.disjoint_mean(tvs, signs)

    raises_unchanged(exc, match, call, trimmed)


def test_disjoint_mean_signs_of_wrong_shape():
    signs = replace({n: torch.ones(s) for n, s in SHAPES.items()}, "enc.b", torch.ones(5))
    raises_unchanged(ValueError, r"signs\['enc\.b'\] has shape \(5,\), expected \(4,\)", lsedu.disjoint_mean,
                     [tvec(1), tvec(2)], signs)


@pytest.mark.parametrize(
    ("signs", "exc", "match"),
    [
        (drop({n: torch.ones(s) for n, s in SHAPES.items()}, "enc.b"), ValueError, r"signs.*'enc\.b'"),
        ([torch.ones(s) for s in SHAPES.values()], TypeError, r"signs must be a dict"),
        (replace({n: torch.ones(s) for n, s in SHAPES.items()}, "enc.b", 1.0), TypeError, r"signs\['enc\.b'\]"),
    ],
    ids=["missing_key", "list", "value_not_tensor"],
)
def test_disjoint_mean_checks_signs(signs, exc, match):
    raises_unchanged(exc, match, lsedu.disjoint_mean, [tvec(1), tvec(2)], signs)


# =============================================================================
# lam / grid
# =============================================================================
@pytest.mark.parametrize(
    ("lam", "exc", "match"),
    [(NAN, ValueError, r"lam must be finite, got nan"), (INF, ValueError, r"lam must be finite, got inf"),
     (-INF, ValueError, r"lam must be finite, got -inf"), ("0.3", TypeError, r"lam must be a real number, got str"),
     (None, TypeError, r"lam must be a real number, got NoneType")],
    ids=["nan", "inf", "-inf", "str", "None"],
)
@pytest.mark.parametrize("merge", ["task_arithmetic", "ties_merge", "dare_merge"])
def test_non_finite_lam(merge, lam, exc, match):
    raises_unchanged(exc, match, getattr(lsedu, merge), model(), [tvec(1), tvec(2)], lam=lam)


@pytest.mark.parametrize(
    ("grid", "exc", "match"),
    [([], ValueError, r"grid is empty"), ([0.1, NAN], ValueError, r"grid value must be finite, got nan"),
     ([0.1, "0.2"], TypeError, r"grid value must be a real number, got str"),
     ((0.1, INF), ValueError, r"grid value must be finite, got inf")],
    ids=["empty", "nan", "str", "inf"],
)
def test_pick_lambda_bad_grid(grid, exc, match):
    raises_unchanged(exc, match, lsedu.pick_lambda, model(), [tvec(1), tvec(2)], const_score, grid=grid)


def test_pick_lambda_scalar_grid_names_grid():
    raises_unchanged(TypeError, r"grid", lsedu.pick_lambda, model(), [tvec(1)], const_score, grid=0.3)


def test_pick_lambda_merge_kwargs_are_checked_by_the_merge():
    raises_unchanged(ValueError, r"density must lie in \(0, 1\]", lsedu.pick_lambda, model(), [tvec(1), tvec(2)],
                     const_score, grid=[0.5], merge=lsedu.ties_merge, density=0)


# =============================================================================
# evaluate callbacks: greedy_soup and pick_lambda
# =============================================================================
def _nan_for_soups(sd):
    # finite on each single model, NaN on any average: the failure shows up only in step 2
    return NAN if abs(float(sd["enc.b"][0]) - float(model(0)["enc.b"][0])) > 1e-6 and \
        abs(float(sd["enc.b"][0]) - float(model(1)["enc.b"][0])) > 1e-6 else 1.0


@pytest.mark.parametrize(
    ("evaluate", "exc", "match"),
    [
        (lambda sd: NAN, ValueError, r"evaluate returned nan for models\[0\]; it must return a finite number"),
        (lambda sd: -INF, ValueError, r"evaluate returned -inf for models\[0\]"),
        (lambda sd: "good", ValueError, r"evaluate returned 'good' for models\[0\]"),
        (lambda sd: None, ValueError, r"evaluate returned None for models\[0\]"),
        (lambda sd: torch.tensor([0.5, 0.5]), ValueError, r"evaluate returned tensor\(\[0\.5000, 0\.5000\]\)"),
        (lambda sd: torch.tensor(NAN), ValueError, r"evaluate returned nan for models\[0\]"),
        (lambda sd: True, ValueError, r"evaluate returned True for models\[0\]"),
        (_nan_for_soups, ValueError, r"evaluate returned nan for the soup of models \[0, 1\]"),
        ("accuracy", TypeError, r"evaluate must be a callable state_dict -> float, got str"),
    ],
    ids=["nan", "-inf", "str", "None", "tensor_of_two", "tensor_nan", "bool", "nan_on_soup_only", "not_callable"],
)
def test_greedy_soup_bad_evaluate(evaluate, exc, match):
    raises_unchanged(exc, match, lsedu.greedy_soup, [model(0), model(1)], evaluate)


@pytest.mark.parametrize(
    ("evaluate", "exc", "match"),
    [
        (lambda sd: NAN, ValueError, r"evaluate returned nan for lam=0\.1; it must return a finite number"),
        (lambda sd: INF, ValueError, r"evaluate returned inf for lam=0\.1"),
        (lambda sd: "0.9", ValueError, r"evaluate returned '0\.9' for lam=0\.1"),
        (lambda sd: None, ValueError, r"evaluate returned None for lam=0\.1"),
        (lambda sd: [0.5], ValueError, r"evaluate returned \[0\.5\] for lam=0\.1"),
        (None, TypeError, r"evaluate must be a callable state_dict -> float, got NoneType"),
    ],
    ids=["nan", "inf", "str", "None", "list", "not_callable"],
)
def test_pick_lambda_bad_evaluate(evaluate, exc, match):
    raises_unchanged(exc, match, lsedu.pick_lambda, model(), [tvec(1), tvec(2)], evaluate, grid=[0.1, 0.2])


@pytest.mark.parametrize("value", [np.float32(0.5), np.int64(3)], ids=["float32", "int64"])
def test_evaluate_may_return_a_numpy_scalar(value):
    out = lsedu.greedy_soup([model(0), model(1)], lambda sd: value)
    assert out.score == float(value)


# =============================================================================
# Masks: stitch, mask_overlap, storage
# =============================================================================
MASK_CASES = [
    ("wrong_shape", [bool_mask(1), reshaped(bool_mask(2))], ValueError,
     r"masks\[1\]\['enc\.w'\] has shape \(4, 3\) but task_vectors\[1\]\['enc\.w'\] has shape \(3, 4\)"),
    ("float_not_bool", [{n: m.float() for n, m in bool_mask(1).items()}, bool_mask(2)], TypeError,
     r"masks\[0\]\['enc\.w'\] must be a torch\.bool mask, got dtype torch\.float32"),
    ("int_not_bool", [bool_mask(1), retyped(bool_mask(2), "head.w", torch.uint8)], TypeError,
     r"masks\[1\]\['head\.w'\] must be a torch\.bool mask, got dtype torch\.uint8"),
    ("missing_key", [bool_mask(1), drop(bool_mask(2), "enc.b")], ValueError,
     r"masks\[1\] is missing tensor\(s\) of task_vectors\[1\]: 'enc\.b'"),
    ("extra_key", [replace(bool_mask(1), "extra", torch.ones(2, dtype=torch.bool)), bool_mask(2)], ValueError,
     r"masks\[0\] has tensor\(s\) that task_vectors\[0\] lacks: 'extra'"),
    ("mask_not_dict", [bool_mask(1), "mask"], TypeError, r"masks\[1\] must be a dict"),
    ("mask_value_not_tensor", [bool_mask(1), replace(bool_mask(2), "enc.b", [True] * 4)], TypeError,
     r"masks\[1\]\['enc\.b'\] must be a torch\.Tensor, got list"),
    ("one_mask_for_two", [bool_mask(1)], ValueError, r"masks must be a list with one mask per task vector \(2\), got 1"),
    ("three_masks_for_two", [bool_mask(1), bool_mask(2), bool_mask(3)], ValueError,
     r"masks must be a list with one mask per task vector \(2\), got 3"),
    ("no_masks", [], ValueError, r"masks must be a list with one mask per task vector \(2\), got 0"),
    ("dict_not_list", bool_mask(1), ValueError, r"masks must be a list with one mask per task vector \(2\), got dict"),
    ("None", None, ValueError, r"masks must be a list with one mask per task vector \(2\), got NoneType"),
]


@pytest.mark.parametrize(("masks", "exc", "match"), [c[1:] for c in MASK_CASES], ids=[c[0] for c in MASK_CASES])
def test_stitch_rejects_bad_masks(masks, exc, match):
    raises_unchanged(exc, match, lsedu.stitch, model(), [tvec(1), tvec(2)], masks)


OVERLAP_CASES = [
    ("empty_list", [], ValueError, r"masks is empty"),
    ("dict_not_list", bool_mask(1), TypeError, r"masks must be a list of masks, got dict"),
    ("wrong_shape", [bool_mask(1), reshaped(bool_mask(2))], ValueError,
     r"masks\[1\]\['enc\.w'\] has shape \(4, 3\) but masks\[0\]\['enc\.w'\] has shape \(3, 4\)"),
    ("float_first", [{n: m.float() for n, m in bool_mask(1).items()}, bool_mask(2)], TypeError,
     r"masks\[0\]\['enc\.w'\] must be a torch\.bool mask"),
    ("float_second", [bool_mask(1), {n: m.double() for n, m in bool_mask(2).items()}], TypeError,
     r"masks\[1\]\['enc\.w'\] must be a torch\.bool mask, got dtype torch\.float64"),
    ("missing_key", [bool_mask(1), drop(bool_mask(2), "head.w")], ValueError,
     r"masks\[1\] is missing tensor\(s\) of masks\[0\]: 'head\.w'"),
    ("extra_key", [bool_mask(1), replace(bool_mask(2), "extra", torch.ones(1, dtype=torch.bool))], ValueError,
     r"masks\[1\] has tensor\(s\) that masks\[0\] lacks: 'extra'"),
    ("mask_not_dict", [bool_mask(1), 7], TypeError, r"masks\[1\] must be a dict .* got int"),
]


@pytest.mark.parametrize(("masks", "exc", "match"), [c[1:] for c in OVERLAP_CASES], ids=[c[0] for c in OVERLAP_CASES])
def test_mask_overlap_rejects_bad_masks(masks, exc, match):
    raises_unchanged(exc, match, lsedu.mask_overlap, masks)


@pytest.mark.parametrize(
    ("tv", "mask", "exc", "match"),
    [
        ([1.0], None, TypeError, r"task_vector must be a dict"),
        (tvec(1), reshaped(bool_mask(1)), ValueError, r"mask\['enc\.w'\] has shape \(4, 3\) but task_vector\['enc\.w'\]"),
        (tvec(1), {n: m.float() for n, m in bool_mask(1).items()}, TypeError, r"mask\['enc\.w'\] must be a torch\.bool"),
        (tvec(1), drop(bool_mask(1), "enc.b"), ValueError, r"mask is missing tensor\(s\) of task_vector: 'enc\.b'"),
    ],
    ids=["tv_not_dict", "mask_shape", "mask_float", "mask_missing_key"],
)
def test_storage_rejects(tv, mask, exc, match):
    raises_unchanged(exc, match, lsedu.storage, tv, mask)


@pytest.mark.parametrize("fn", ["density", "density_per_tensor", "density_per_layer"])
@pytest.mark.parametrize(
    ("mask", "match"),
    [([torch.ones(2, dtype=torch.bool)], r"mask must be a dict .* got list"),
     ({"w": [True, False]}, r"mask\['w'\] must be a torch\.Tensor, got list")],
    ids=["list", "value_list"],
)
def test_density_measures_reject_non_dicts(fn, mask, match):
    raises_unchanged(TypeError, match, getattr(lsedu, fn), mask)


def test_density_per_layer_pattern_without_group():
    raises_unchanged(ValueError, r"pattern '.*' must have a group that captures the layer index", lsedu.density_per_layer,
                     bool_mask(1), pattern=r"layer\.\d+")


# =============================================================================
# Top-k helpers
# =============================================================================
@pytest.mark.parametrize(
    ("fn", "k", "exc", "match"),
    [
        (lsedu.kth_largest, 0, ValueError, r"k must lie in \[1, 24\] \(the number of entries\), got 0"),
        (lsedu.kth_largest, 25, ValueError, r"k must lie in \[1, 24\] \(the number of entries\), got 25"),
        (lsedu.kth_largest, -3, ValueError, r"k must lie in \[1, 24\]"),
        (lsedu.kth_largest, 2.0, TypeError, r"k must be an int, got float"),
        (lsedu.kth_largest, True, TypeError, r"k must be an int, got bool"),
        (lsedu.topk_mask, 0, ValueError, r"k must lie in \[1, 24\]"),
        (lsedu.topk_mask, "3", TypeError, r"k must be an int, got str"),
    ],
    ids=["kth_zero", "kth_too_big", "kth_negative", "kth_float", "kth_bool", "topk_zero", "topk_str"],
)
def test_topk_bad_k(fn, k, exc, match):
    raises_unchanged(exc, match, fn, tvec(1), k)


TOPK_FUNCTIONS = {
    "global_topk_mask": lambda t: lsedu.global_topk_mask(t, 0.5),
    "per_tensor_topk_mask": lambda t: lsedu.per_tensor_topk_mask(t, 0.5),
    "kth_largest": lambda t: lsedu.kth_largest(t, 3),
    "topk_mask": lambda t: lsedu.topk_mask(t, 3),
}


@pytest.mark.parametrize("fn", list(TOPK_FUNCTIONS))
def test_topk_helpers_reject_nan(fn):
    raises_unchanged(ValueError, r"\['enc\.w'\].*non-finite", TOPK_FUNCTIONS[fn], poison(tvec(1)))


@pytest.mark.parametrize("fn", list(TOPK_FUNCTIONS))
@pytest.mark.parametrize(
    ("tensors", "match"),
    [(list(tvec(1).values()), r"tensors must be a dict"),
     (replace(tvec(1), "enc.b", [0.1, 0.2, 0.3, 0.4]), r"tensors\['enc\.b'\] must be a torch\.Tensor")],
    ids=["list", "value_list"],
)
def test_topk_helpers_reject_non_dicts(fn, tensors, match):
    raises_unchanged(TypeError, match, TOPK_FUNCTIONS[fn], tensors)


def test_global_topk_mask_of_empty_dict_names_tensors():
    raises_unchanged(ValueError, r"tensors.*empty|empty.*tensors", lsedu.global_topk_mask, {}, 0.5)


@pytest.mark.parametrize("fn", ["per_tensor_topk_mask", "trim_per_tensor"])
def test_per_tensor_trim_of_a_zero_size_tensor(fn):
    tv = replace(tvec(1), "empty", torch.zeros(0))
    call = {"per_tensor_topk_mask": lambda t: lsedu.per_tensor_topk_mask(t, 0.5),
            "trim_per_tensor": lambda t: lsedu.trim(t, 0.5, scope="per_tensor")}[fn]
    out = call(tv)
    assert out["empty"].shape == (0,)


# =============================================================================
# localize_trained
# =============================================================================
def _tiny():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    base = {n: t.detach().clone() for n, t in net.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    tau = {n: 0.1 * torch.randn(t.shape, generator=g) for n, t in base.items()}
    loader = [(torch.randn(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g))]
    return net, base, tau, loader


def _ce(forward, batch):
    return F.cross_entropy(forward(batch[0]), batch[1])


LOCALIZE_CASES = [
    ("model_state_dict_not_module", {"model": "state_dict"}, TypeError, r"model must be a torch\.nn\.Module, got str"),
    ("model_dict", {"model": {"weight": torch.ones(2, 4)}}, TypeError, r"model must be a torch\.nn\.Module, got dict"),
    ("density_zero", {"density": 0}, ValueError, r"density must be a finite number in \(0, 1\], got 0$"),
    ("density_negative", {"density": -0.01}, ValueError, r"density must be a finite number in \(0, 1\], got -0\.01$"),
    ("density_above_one", {"density": 1.01}, ValueError, r"density must be a finite number in \(0, 1\], got 1\.01$"),
    ("density_str", {"density": "1%"}, TypeError, r"density must be a finite number in \(0, 1\], got '1%'"),
    ("target_density_zero", {"target_density": 0.0}, ValueError, r"target_density must be None or a finite number in \(0, 1\], got 0\.0"),
    ("epochs_zero", {"epochs": 0}, ValueError, r"epochs must be an int >= 1, got 0$"),
    ("epochs_negative", {"epochs": -2}, ValueError, r"epochs must be an int >= 1, got -2"),
    ("epochs_float", {"epochs": 2.5}, ValueError, r"epochs must be an int >= 1, got 2\.5"),
    ("epochs_str", {"epochs": "3"}, ValueError, r"epochs must be an int >= 1, got '3'"),
    ("epochs_bool", {"epochs": True}, ValueError, r"epochs must be an int >= 1, got True"),
    ("empty_loader", {"loader": []}, ValueError, r"loader yielded no batch"),
    ("exhausted_iterator", {"loader": iter([])}, ValueError, r"loader yielded no batch"),
    ("loss_fn_not_callable", {"loss_fn": "cross_entropy"}, TypeError, r"loss_fn must be a callable"),
    ("loss_fn_returns_float", {"loss_fn": lambda f, b: 0.5}, ValueError, r"loss_fn must return a scalar tensor"),
    ("loss_fn_returns_nan", {"loss_fn": lambda f, b: _ce(f, b) * NAN}, ValueError,
     r"loss_fn returned a non-finite loss \(nan\) in epoch 0"),
    ("lr_zero", {"lr": 0.0}, ValueError, r"lr must be a finite number > 0, got 0\.0"),
    ("l1_negative", {"l1": -1.0}, ValueError, r"l1 must be a finite number >= 0, got -1\.0"),
    ("l1_nan", {"l1": NAN}, ValueError, r"l1 must be a finite number >= 0, got nan"),
    ("sigmoid_bias_zero", {"sigmoid_bias": 0}, ValueError, r"sigmoid_bias must be a finite number > 0, got 0$"),
    ("batches_per_step_zero", {"batches_per_step": 0}, ValueError, r"batches_per_step must be None or an int >= 1, got 0"),
    ("optimizer_unknown", {"optimizer": "rmsprop"}, ValueError, r"optimizer must be one of \['sgd', 'adam'\], got 'rmsprop'"),
    ("base_nan", {"base": "nan"}, ValueError, r"base\['weight'\] has 1 non-finite"),
    ("task_vector_nan", {"task_vector": "nan"}, ValueError, r"\['weight'\] has 1 non-finite"),
    ("task_vector_extra_key", {"task_vector": "extra"}, ValueError, r"tensor\(s\) that base lacks: 'extra'"),
]


def _localize_args(overrides):
    net, base, tau, loader = _tiny()
    args = {"model": net, "base": base, "task_vector": tau, "loss_fn": _ce, "loader": loader}
    kwargs = {"progress": False, "epochs": 1}
    for k, v in overrides.items():
        if k == "base" and v == "nan":
            args["base"] = poison(base, "weight")
        elif k == "task_vector" and v == "nan":
            args["task_vector"] = poison(tau, "weight")
        elif k == "task_vector" and v == "extra":
            args["task_vector"] = replace(tau, "extra", torch.ones(1))
        elif k in args:
            args[k] = v
        else:
            kwargs[k] = v
    return args, kwargs


# lsedu formats the non-finite loss with float() on a tensor that requires grad, which makes torch warn
# (once per process); the error itself is what is tested here.
_NO_GRAD_WARNING = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True:UserWarning")


@_NO_GRAD_WARNING
@pytest.mark.parametrize(("overrides", "exc", "match"), [c[1:] for c in LOCALIZE_CASES], ids=[c[0] for c in LOCALIZE_CASES])
def test_localize_trained_rejects(overrides, exc, match):
    args, kwargs = _localize_args(overrides)
    order = ["model", "base", "task_vector", "loss_fn", "loader"]
    raises_unchanged(exc, match, lsedu.localize_trained, *[args[k] for k in order], **kwargs)


def test_localize_trained_names_task_vector():
    args, kwargs = _localize_args({"task_vector": "nan"})
    raises_unchanged(ValueError, r"(?<![\w\]])task_vector\['weight'\] has 1 non-finite", lsedu.localize_trained,
                     *args.values(), **kwargs)


def test_localize_trained_loader_none_names_loader():
    args, kwargs = _localize_args({"loader": None})
    raises_unchanged(TypeError, r"loader", lsedu.localize_trained, *args.values(), **kwargs)


@pytest.mark.parametrize("how", ["prefixed", "extra"])
def test_localize_trained_names_not_in_model(how):
    net, base, tau, loader = _tiny()
    if how == "prefixed":
        base = {f"module.{n}": t for n, t in base.items()}
        tau = {f"module.{n}": t for n, t in tau.items()}
        match = r"'module\.(weight|bias)'"
    else:
        base = replace(base, "extra", torch.zeros(3))
        tau = replace(tau, "extra", torch.ones(3))
        match = r"'extra'"
    raises_unchanged(ValueError, match, lsedu.localize_trained, net, base, tau, _ce, loader, progress=False, epochs=1)


def test_localize_trained_names_buffers_in_the_task_vector():
    """Batch-norm running statistics are buffers: a mask over them cannot be trained (torch would fail deep inside)."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    base = {n: t.detach().clone() for n, t in net.state_dict().items() if t.is_floating_point()}
    tau = {n: torch.full_like(t, 0.1) for n, t in base.items()}
    loader = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    raises_unchanged(ValueError, r"buffer\(s\).*'1\.running_mean'", lsedu.localize_trained, net, base, tau, _ce, loader,
                     progress=False, epochs=1)


@_NO_GRAD_WARNING
def test_localize_trained_failure_restores_train_mode():
    """A loss that fails mid-training must not leave the model in eval() mode."""
    net, base, tau, loader = _tiny()
    net.train()
    raises_unchanged(ValueError, r"loss_fn returned a non-finite loss", lsedu.localize_trained, net, base, tau,
                     lambda f, b: _ce(f, b) * INF, loader, progress=False, epochs=1)
    assert net.training
