"""The fault suite: hostile inputs to the Python API and the command-line tools.

Every case asserts three things: the error is one line that names its
culprit (the tensor, file or argument at fault), no traceback reaches the
user, and nothing was lost or left behind (inputs are unchanged, no output
or temporary file remains).
"""

from __future__ import annotations

import copy
import re

import pytest
import torch

import lsedu
from lsedu import course


def sd(**tensors):
    return dict(tensors)


def raises_naming(exc, culprit: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` raises ``exc`` with a one-line message naming ``culprit``; the inputs are unchanged."""
    before = _copy((args, kwargs))
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert re.search(culprit, message), f"{culprit!r} not in {message!r}"
    after = (args, kwargs)
    for a, b in zip(_tensors(before), _tensors(after)):
        if a.is_meta or a.layout != torch.strided:  # no data to compare: the object is still there
            assert b.shape == a.shape and b.layout == a.layout
        else:  # bit for bit, NaN where there was NaN
            torch.testing.assert_close(b, a, rtol=0, atol=0, equal_nan=True, msg="an input was modified")
    return message


def _copy(obj):
    if isinstance(obj, torch.Tensor):
        return obj if obj.is_meta or obj.layout != torch.strided else obj.clone()
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copy(v) for v in obj)
    return copy.copy(obj)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


# ----------------------------------------------------------------------------- tensors a merge cannot compute with


def test_meta_tensors_are_named():
    base = sd(w=torch.zeros(3), b=torch.empty(2, device="meta"))
    raises_naming(ValueError, r"base\['b'\].*meta device", lsedu.task_arithmetic, base, [sd(w=torch.ones(3))])


def test_sparse_tensors_are_named():
    base = sd(w=torch.zeros(3, 3).to_sparse())
    raises_naming(ValueError, r"models\[0\]\['w'\].*sparse", lsedu.uniform_soup, [base, base])


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="this torch has no float8")
def test_float8_tensors_are_named():
    tv = sd(w=torch.ones(4).to(torch.float8_e4m3fn))
    raises_naming(TypeError, r"task_vector\['w'\].*float8", lsedu.dare, tv, 0.5)


# ----------------------------------------------------------------------------- soups keep every dtype's precision


def test_soup_averages_complex_tensors():
    a = sd(z=torch.tensor([1 + 1j, 2 - 2j]), w=torch.tensor([1.0, 3.0]))
    b = sd(z=torch.tensor([3 - 1j, 0 + 4j]), w=torch.tensor([3.0, 5.0]))
    out = lsedu.uniform_soup([a, b])
    assert torch.equal(out["z"], torch.tensor([2 + 0j, 1 + 1j])) and out["z"].dtype == torch.complex64
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0]))


def test_soup_of_float64_is_computed_in_float64():
    x = torch.tensor([1.0 + 2**-40, 1.0], dtype=torch.float64)  # 2**-40 is below float32's resolution at 1
    out = lsedu.uniform_soup([sd(w=x), sd(w=x.clone())])
    assert torch.equal(out["w"], x), "an entry both models agree on changed"


# ----------------------------------------------------------------------------- arguments


def test_invalid_layer_pattern_is_a_value_error():
    mask = sd(**{"blocks.1.w": torch.ones(2, dtype=torch.bool)})
    raises_naming(ValueError, r"pattern '\(\[' is not a valid regular expression", lsedu.density_per_layer,
                  mask, "([")
    raises_naming(TypeError, "pattern", lsedu.density_per_layer, mask, 3)


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 0, -1, "60", True])
def test_grade_refuses_a_timeout_that_is_not_a_positive_number(tmp_path, timeout):
    out = tmp_path / "grades.csv"
    raises_naming(course.CourseError, "timeout", course.grade, tmp_path / "src", tmp_path / "subs", out,
                  timeout=timeout)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("density, exc", [(0, ValueError), (1.5, ValueError), ("0.1", TypeError)])
def test_stitch_dataless_names_a_bad_density(density, exc):
    base, tv = sd(w=torch.zeros(4)), sd(w=torch.arange(4.0))
    raises_naming(exc, "density", lsedu.stitch_dataless, base, [tv], density)


def test_stitch_dataless_names_a_bad_task_vector():
    base = sd(w=torch.zeros(4))
    raises_naming(ValueError, r"task_vectors\[1\]\['w'\] has 1 non-finite", lsedu.stitch_dataless, base,
                  [sd(w=torch.ones(4)), sd(w=torch.tensor([1.0, float("nan"), 0.0, 2.0]))], 0.5)
