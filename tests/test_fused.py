"""The fused loops of ``lsedu merge`` are bit-identical to the reference functions they replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lsedu import fused
from lsedu.localize_stitch import _stitched_vector
from lsedu.ties import _disjoint_mean, _elect_sign

# Few distinct values: zeros, ties at the threshold and opposite signs are common.
values = st.sampled_from([0.0, 0.25, -0.25, 0.5, -0.5, 1.0, -1.0, 0.1, -0.3, 3e-8, -2.0])


@st.composite
def blocks(draw):
    k = draw(st.integers(1, 4))
    n = draw(st.integers(1, 40))
    b = np.array(draw(st.lists(values, min_size=n, max_size=n)), np.float32)
    srcs = tuple(np.array(draw(st.lists(values, min_size=n, max_size=n)), np.float32) for _ in range(k))
    is_tau = draw(st.booleans())
    thr = np.array(draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5]), min_size=k, max_size=k)), np.float32)
    allow = np.array(draw(st.lists(st.booleans(), min_size=k, max_size=k)))
    lam = draw(st.sampled_from([1.0, 0.3, 0.9, -0.5]))
    return b, srcs, is_tau, thr, allow, lam


def reference_parts(b, srcs, is_tau, thr, allow):
    bt = torch.from_numpy(b)
    taus = [torch.from_numpy(s) if is_tau else torch.from_numpy(s) - bt for s in srcs]
    masks = [(t.abs() > float(th)) | ((t.abs() == float(th)) & bool(al)) for t, th, al in zip(taus, thr, allow)]
    return bt, taus, masks


@settings(max_examples=200, deadline=None)
@given(blocks())
def test_ties_kernel_equals_trim_elect_disjoint_mean(block):
    b, srcs, is_tau, thr, allow, lam = block
    bt, taus, masks = reference_parts(b, srcs, is_tau, thr, allow)
    trimmed = [{"x": t.masked_fill(~m, 0.0)} for t, m in zip(taus, masks)]
    want = bt + lam * _disjoint_mean(trimmed, _elect_sign(trimmed))["x"]
    out = np.empty_like(b)
    fused.ties(b, srcs, is_tau, thr, allow, lam, out)
    assert torch.equal(torch.from_numpy(out), want)


@settings(max_examples=200, deadline=None)
@given(blocks())
def test_stitch_kernel_equals_stitched_vector_and_writes_the_masks(block):
    b, srcs, is_tau, thr, allow, _ = block
    bt, taus, masks = reference_parts(b, srcs, is_tau, thr, allow)
    want = bt + _stitched_vector([{"x": t} for t in taus], [{"x": m} for m in masks])["x"]
    out, got_masks = np.empty_like(b), np.empty((len(srcs), b.size), np.bool_)
    fused.stitch(b, srcs, is_tau, thr, allow, out, got_masks)
    assert torch.equal(torch.from_numpy(out), want)
    assert all(torch.equal(torch.from_numpy(g), m) for g, m in zip(got_masks, masks))


@settings(max_examples=100, deadline=None)
@given(blocks())
def test_task_arithmetic_and_count_kernels(block):
    b, srcs, is_tau, thr, allow, lam = block
    bt, taus, _ = reference_parts(b, srcs, is_tau, thr, allow)
    out = np.empty_like(b)
    fused.task_arithmetic(b, srcs, is_tau, lam, out)
    assert torch.equal(torch.from_numpy(out), bt + lam * sum(taus))
    counts = np.zeros(len(srcs), np.int64)
    fused.count_equal(b, srcs, is_tau, thr, counts)
    assert counts.tolist() == [int((t.abs() == float(th)).sum()) for t, th in zip(taus, thr)]


@settings(max_examples=100, deadline=None)
@given(blocks(), st.sampled_from([0.0, 0.25]), st.sampled_from([0.5, 1.0, np.inf]), st.integers(1, 50))
def test_bracket_count_counts_above_keeps_inside_and_histograms(block, lo, hi, cap):
    b, srcs, is_tau, thr, allow, _ = block
    _, taus, _ = reference_parts(b, srcs, is_tau, thr, allow)
    k = len(srcs)
    lo_a, hi_a = np.full(k, lo, np.float32), np.full(k, hi, np.float32)
    above, n_cand = np.zeros(k, np.int64), np.zeros(k, np.int64)
    cand, hist = np.empty((k, cap + 1), np.float32), np.zeros((k, 1 << 16), np.int64)
    fused.bracket_count(b, srcs, is_tau, lo_a, hi_a, above, n_cand, cand, hist, np.empty(b.size, np.float32))
    for i, t in enumerate(taus):
        a = t.abs()
        inside = a[(a >= lo) & (a <= hi)]
        assert above[i] == int((a > hi).sum()) and n_cand[i] == inside.numel()
        if inside.numel() <= cap:  # kept in position order; past the end only counted
            assert torch.equal(torch.from_numpy(cand[i, : inside.numel()]), inside)
        keys = a.view(torch.int32) >> 16
        assert torch.equal(torch.from_numpy(hist[i]), torch.bincount(keys.long(), minlength=1 << 16))


@pytest.mark.parametrize("n", [1, 1000, 100_003])
def test_kernels_on_random_float32_match_to_the_bit(n):
    """Large random blocks (the parallel loop splits them across threads)."""
    g = torch.Generator().manual_seed(n)
    bt = torch.randn(n, generator=g) * 0.02
    fts = [bt + 1e-3 * torch.randn(n, generator=g) for _ in range(3)]
    taus = [f - bt for f in fts]
    thr = np.array([float(t.abs().kthvalue(max(1, int(0.8 * n))).values) for t in taus], np.float32)
    allow = np.array([True, False, True])
    block = (bt.numpy(), tuple(f.numpy() for f in fts), False, thr, allow, 0.7)
    test_ties_kernel_equals_trim_elect_disjoint_mean.hypothesis.inner_test(block)
    test_stitch_kernel_equals_stitched_vector_and_writes_the_masks.hypothesis.inner_test(block)
