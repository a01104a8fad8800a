"""Each fast path of ``lsedu merge`` is bit-identical to the readable lsedu function it stands for.

Kernel by kernel (``lsedu.merge.fused``, against the steps of the named
function), then the whole fast path of a method, thresholds and tie runs
included (``lsedu.merge.blocks`` and ``thresholds``, against the named
function itself: ``lsedu.ties_merge``, ``lsedu.task_arithmetic``,
``lsedu.localize_stitch.stitch_dataless``, ``lsedu.kth_largest``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lsedu
from lsedu.merge import blocks as merge_blocks
from lsedu.merge import fused, thresholds
from lsedu.localize_stitch import stitch_dataless
from lsedu.ties import disjoint_mean, elect_sign
from lsedu.topk import RadixSelect, count_for_density

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
    want = bt + lam * disjoint_mean(trimmed, elect_sign(trimmed))["x"]
    out = np.empty_like(b)
    fused.ties(b, srcs, is_tau, thr, allow, lam, out)
    assert torch.equal(torch.from_numpy(out), want)


@settings(max_examples=200, deadline=None)
@given(blocks())
def test_stitch_kernel_equals_stitched_vector_and_writes_the_masks(block):
    b, srcs, is_tau, thr, allow, _ = block
    bt, taus, masks = reference_parts(b, srcs, is_tau, thr, allow)
    want = lsedu.stitch({"x": bt}, [{"x": t} for t in taus], [{"x": m} for m in masks])["x"]
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
    assert torch.equal(torch.from_numpy(out), lsedu.task_arithmetic({"x": bt}, [{"x": t} for t in taus], lam)["x"])
    counts = np.zeros(len(srcs), np.int64)
    fused.count_equal(b, srcs, is_tau, thr, counts)
    assert counts.tolist() == [int((t.abs() == float(th)).sum()) for t, th in zip(taus, thr)]
    for i, (t, th) in enumerate(zip(taus, thr)):
        ties = torch.nonzero(t.abs() == float(th)).reshape(-1).tolist()
        for nth in (1, 2, len(ties) + 1):
            want = ties[nth - 1] if nth <= len(ties) else -1
            assert fused.nth_equal(b, srcs[i], is_tau, thr[i], nth) == want


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
        radix = RadixSelect()
        radix.count(t)  # the first pass of the readable radix select
        assert torch.equal(torch.from_numpy(hist[i]), radix.hist)


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


# --- a method's whole fast path against its readable function -------------------------------------------------
def pieces(n: int, cuts: list[int]) -> list[tuple[int, int]]:
    points = sorted({0, n, *(c % (n + 1) for c in cuts)})
    return list(zip(points, points[1:]))


def fast_path(method, b, srcs, is_tau, density, lam, cuts):
    """Run ``method`` (a combine of lsedu.merge.blocks) over the block cut into pieces, as ``lsedu merge`` does:
    exact thresholds of each task vector (``lsedu.kth_largest``), ties kept by the Trim's budget, piece by piece."""
    blk = merge_blocks.Block(b, srcs, is_tau)
    k = count_for_density(b.size, density)
    trim = thresholds.Trim([lsedu.kth_largest({"x": t}, k) for t in blk.taus()])
    steps = merge_blocks.Steps(method, lam=lam, density=density, trim="global")
    out, masks = [], []
    for a, z in pieces(b.size, cuts):
        merged, made = method(merge_blocks.Block(b[a:z], tuple(s[a:z] for s in srcs), is_tau), steps, trim, None)
        out.append(merged)
        masks.append(made)
    return torch.cat(out), masks


densities = st.sampled_from([0.05, 0.3, 0.5, 0.9, 1.0])
cut_lists = st.lists(st.integers(0, 40), max_size=4)


@settings(max_examples=150, deadline=None)
@given(blocks(), densities, cut_lists)
def test_ties_fast_path_equals_ties_merge(block, density, cuts):
    """Thresholds, the tie budget's runs and the kernel, over a block cut anywhere: ``lsedu.ties_merge``, bit for bit."""
    b, srcs, is_tau, _, _, lam = block
    got, _ = fast_path(merge_blocks.ties, b, srcs, is_tau, density, lam, cuts)
    taus = merge_blocks.Block(b, srcs, is_tau).taus()
    want = lsedu.ties_merge({"x": torch.from_numpy(b)}, [{"x": t} for t in taus], density, lam)["x"]
    assert torch.equal(got, want)


@settings(max_examples=150, deadline=None)
@given(blocks(), densities, cut_lists)
def test_stitch_fast_path_equals_dataless_stitch_and_its_masks(block, density, cuts):
    b, srcs, is_tau, _, _, _ = block
    got, made = fast_path(merge_blocks.stitch, b, srcs, is_tau, density, 1.0, cuts)
    taus = merge_blocks.Block(b, srcs, is_tau).taus()
    want = stitch_dataless({"x": torch.from_numpy(b)}, [{"x": t} for t in taus], density)["x"]
    assert torch.equal(got, want)
    masks = [lsedu.localize_dataless({"x": t}, density) for t in taus]
    for i, m in enumerate(masks):
        assert torch.equal(torch.cat([piece[i] for piece in made]), m["x"])


@settings(max_examples=100, deadline=None)
@given(blocks(), st.floats(0.0, 1.0))
def test_bracketed_count_finds_kth_largest(block, where):
    """The bracket-and-count pass (a bracket around the k-th value, or one that misses) agrees with
    ``lsedu.kth_largest`` whenever it answers, and answers whenever the bracket holds the k-th value."""
    b, srcs, is_tau, _, _, _ = block
    blk = merge_blocks.Block(b, srcs, is_tau)
    k = count_for_density(b.size, 0.3)
    for i, t in enumerate(blk.taus()):
        want = lsedu.kth_largest({"x": t}, k)
        lo = float(np.quantile(t.abs().numpy(), where))
        finder = thresholds.Bracketed([(lo, lo + 0.5, 1.0)], b.size, k, histograms=False)
        finder.count(merge_blocks.Block(b, (srcs[i],), is_tau))
        got = finder.result(0)
        if lo <= want.value <= lo + 0.5:
            assert got is not None
        if got is not None:
            assert (got.value, got.n_greater, got.n_equal, got.k) == (want.value, want.n_greater, want.n_equal, k)
