"""The explorers' callbacks (lsedu.explore) on small synthetic task vectors, against naive computations."""

from __future__ import annotations

import itertools
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import lsedu  # noqa: E402
from lsedu import explore  # noqa: E402

SHAPES = {"enc.layer.0.w": (6, 5), "enc.layer.0.b": (5,), "enc.layer.1.w": (5, 7), "head.w": (3, 7)}
TASKS = ("a", "b", "c", "d")
DENSITIES = (0.05, 0.2, 0.5)


def _vector(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: scale * torch.randn(s, generator=g) for n, s in SHAPES.items()}


@pytest.fixture(scope="module")
def base():
    return _vector(100)


@pytest.fixture(scope="module")
def tvs():
    # c shares most of a's large entries, so that masks overlap in a known direction
    a = _vector(1)
    c = {n: 0.9 * a[n] + 0.3 * t for n, t in _vector(3).items()}
    return {"a": a, "b": _vector(2), "c": c, "d": _vector(4)}


def _flat(sd):
    return torch.cat([sd[n].reshape(-1) for n in SHAPES])


def naive_mask(tv, density):
    """Top round(density * n) of |tau| over the flat vector, ties broken by position (as lsedu.topk)."""
    x = _flat(tv).abs().tolist()
    k = max(1, round(density * len(x)))
    order = sorted(range(len(x)), key=lambda i: (-x[i], i))
    return set(order[:k])


def fake_evaluate(target):
    """A deterministic 'accuracy' in [0, 1]: how close a body is to base + tau_task (per task)."""

    def evaluate(body, task):
        diff = _flat(body) - _flat(target[task])
        return float(1.0 / (1.0 + diff.norm()))

    return evaluate


@pytest.fixture(scope="module")
def sweep(base, tvs):
    target = {t: {n: base[n] + tv[n] for n in SHAPES} for t, tv in tvs.items()}
    return explore.sparsity_sweep(base, tvs, DENSITIES, evaluate=fake_evaluate(target), progress=False)


def test_coverage_counts_against_sets(tvs):
    masks = [lsedu.localize_dataless(tvs[t], 0.2) for t in TASKS]
    counts = explore.coverage_counts(masks)
    sets = [naive_mask(tvs[t], 0.2) for t in TASKS]
    n = len(_flat(tvs["a"]))
    for code in range(16):
        expected = sum(1 for i in range(n) if all(((code >> k) & 1) == (i in sets[k]) for k in range(4)))
        assert int(counts[code]) == expected, code
    assert int(counts.sum()) == n


def test_sweep_overlaps_match_mask_overlap(sweep, tvs):
    for d in DENSITIES:
        masks = [lsedu.localize_dataless(tvs[t], d) for t in TASKS]
        expected = lsedu.mask_overlap(masks)
        got = explore.overlap_from_coverage(sweep.coverage[d], 4)
        assert torch.equal(got, expected.counts)
        iou = explore.iou_matrix(sweep, d)
        sets = [naive_mask(tvs[t], d) for t in TASKS]
        for i, j in itertools.product(range(4), repeat=2):
            naive = len(sets[i] & sets[j]) / len(sets[i] | sets[j])
            assert iou.iloc[i, j] == pytest.approx(naive)


def test_sweep_accuracies_against_naive(sweep, base, tvs):
    target = {t: {n: base[n] + tv[n] for n in SHAPES} for t, tv in tvs.items()}
    evaluate = fake_evaluate(target)
    for t in TASKS:
        assert sweep.finetuned[t] == pytest.approx(1.0)
    for d in DENSITIES:
        sets = {t: naive_mask(tvs[t], d) for t in TASKS}
        pre = _flat(base)
        for t in TASKS:
            tau = _flat(tvs[t])
            masked = pre.clone()
            for i in sets[t]:
                masked[i] += tau[i]
            assert sweep.masked[d][t] == pytest.approx(1 / (1 + float((masked - pre - tau).norm())), rel=1e-5)
        stitched = pre.clone()  # naive stitching: average the tau of every mask claiming an entry
        for i in range(len(pre)):
            claim = [float(_flat(tvs[t])[i]) for t in TASKS if i in sets[t]]
            if claim:
                stitched[i] += sum(claim) / len(claim)
        for t in TASKS:
            expected = 1 / (1 + float((stitched - pre - _flat(tvs[t])).norm()))
            assert sweep.stitched[d][t] == pytest.approx(expected, rel=1e-5)


def test_sweep_without_evaluate_gives_nan_accuracies(base, tvs):
    s = explore.sparsity_sweep(base, tvs, [0.1], progress=False)
    assert all(math.isnan(v) for v in s.masked[0.1].values())
    assert int(s.coverage[0.1].sum()) == s.total == len(_flat(tvs["a"]))


@pytest.mark.parametrize("chosen", [["a"], ["a", "c"], ["b", "d", "a"], list(TASKS)])
def test_overlap_counts_and_weights_against_sets(sweep, tvs, chosen):
    d = 0.2
    sets = {t: naive_mask(tvs[t], d) for t in TASKS}
    cover = {}
    for t in chosen:
        for i in sets[t]:
            cover[i] = cover.get(i, 0) + 1
    counts = explore.overlap_counts(sweep, d, chosen)
    assert counts == {c: sum(1 for v in cover.values() if v == c) for c in range(1, len(chosen) + 1)}

    weights = explore.stitch_weights(sweep, d, chosen)
    assert list(weights.index) == chosen
    for t in chosen:
        by_c = [sum(1 for i in sets[t] if cover[i] == c) for c in range(1, len(chosen) + 1)]
        row = weights.loc[t]
        assert [row[explore._weight_label(c)] for c in range(1, len(chosen) + 1)] == by_c
        assert row["mask size"] == len(sets[t])
        assert row["mean weight"] == pytest.approx(sum(1 / cover[i] for i in sets[t]) / len(sets[t]))
        assert row["alone"] == pytest.approx(by_c[0] / len(sets[t]))


def test_stitch_weights_are_the_weights_stitch_uses(base, tvs, sweep):
    """The mean weight of a task = what lsedu.stitch actually multiplies its tau by, averaged over its mask."""
    d = 0.5
    masks = [lsedu.localize_dataless(tvs[t], d) for t in TASKS]
    ones = {n: torch.ones_like(x) for n, x in base.items()}
    weights = explore.stitch_weights(sweep, d)
    for k, t in enumerate(TASKS):
        # stitch tau_t = 1 with all others at 0: the result - base is gamma'_t on every entry
        unit = [ones if i == k else {n: torch.zeros_like(x) for n, x in base.items()} for i in range(4)]
        gamma = _flat(lsedu.stitch(base, unit, masks)) - _flat(base)
        m = _flat({n: masks[k][n].float() for n in SHAPES}).bool()
        assert float(gamma[m].mean()) == pytest.approx(weights.loc[t, "mean weight"], rel=1e-5)


def test_render_functions_return_figures(sweep):
    for fig in (explore.render_sparsity(sweep, 0.2), explore.plot_sparsity_sweep(sweep),
                explore.render_overlap(sweep, 0.5, ["a", "c"]), explore.render_overlap(sweep, 0.05)):
        assert isinstance(fig, matplotlib.figure.Figure)
        plt.close(fig)


def test_table(sweep):
    table = sweep.table()
    assert len(table) == len(TASKS) * len(DENSITIES)
    row = table[(table["density"] == 0.2) & (table["task"] == "b")].iloc[0]
    assert row["masked / finetuned"] == pytest.approx(sweep.masked[0.2]["b"] / sweep.finetuned["b"])


# ----------------------------------------------------------------------------- bad input


def test_bad_density_names_the_argument(sweep):
    with pytest.raises(ValueError, match=r"density 0.3 is not in the sweep"):
        explore.render_sparsity(sweep, 0.3)
    with pytest.raises(TypeError, match="density must be a number"):
        explore.overlap_counts(sweep, "0.2")
    assert explore.overlap_counts(sweep, 0.2 + 1e-15)  # float noise is accepted


def test_bad_tasks_name_the_argument(sweep):
    with pytest.raises(ValueError, match=r"tasks has unknown task\(s\) \['z'\]"):
        explore.overlap_counts(sweep, 0.2, ["a", "z"])
    with pytest.raises(ValueError, match="tasks is empty"):
        explore.stitch_weights(sweep, 0.2, [])
    with pytest.raises(TypeError, match="tasks must be a list"):
        explore.render_overlap(sweep, 0.2, "a")
    with pytest.raises(ValueError, match="names a task twice"):
        explore.overlap_counts(sweep, 0.2, ["a", "a"])


def test_bad_sweep_inputs_name_the_argument(base, tvs):
    with pytest.raises(TypeError, match="task_vectors must be a non-empty dict"):
        explore.sparsity_sweep(base, list(tvs.values()), [0.1])
    with pytest.raises(ValueError, match=r"densities must be numbers in \(0, 1\], got 0"):
        explore.sparsity_sweep(base, tvs, [0.1, 0])
    with pytest.raises(TypeError, match="densities must be a non-empty list"):
        explore.sparsity_sweep(base, tvs, 0.1)
    with pytest.raises(ValueError, match="densities has a repeated value"):
        explore.sparsity_sweep(base, tvs, [0.1, 0.1])
    bad = dict(tvs, b={n: t for n, t in tvs["b"].items() if n != "head.w"})
    with pytest.raises(ValueError, match=r"task_vectors\[.b.\] is missing tensor"):
        explore.sparsity_sweep(base, bad, [0.1])
    with pytest.raises(TypeError, match="evaluate must be a callable"):
        explore.sparsity_sweep(base, tvs, [0.1], evaluate=0.5)
    with pytest.raises(TypeError, match="sweep must be a SparsitySweep"):
        explore.render_sparsity({"densities": [0.1]}, 0.1)
    with pytest.raises(TypeError, match="masks must be a non-empty list"):
        explore.coverage_counts({"a": {}})
    with pytest.raises(ValueError, match=r"counts has 3 entries, expected 2\*\*n_tasks = 4"):
        explore.overlap_from_coverage(torch.zeros(3, dtype=torch.long), 2)


# ----------------------------------------------------------------------------- widgets, built without a kernel


def test_widgets_build_without_a_kernel(sweep):
    import ipywidgets as widgets

    w = explore.sparsity_explorer(sweep)
    assert isinstance(w, widgets.VBox)
    slider = w.children[0]
    assert [v for _, v in slider.options] == list(DENSITIES)
    slider.value = DENSITIES[-1]  # the callback runs (its output goes to the Output widget)

    w = explore.overlap_explorer(sweep)
    assert isinstance(w, widgets.VBox)
    boxes = w.children[0].children
    assert [b.description for b in boxes] == list(TASKS)
    boxes[1].value = False
    w.children[1].value = DENSITIES[1]
    plt.close("all")


def test_known_finetuned_accuracies_are_not_recomputed(base, tvs):
    calls = []

    def evaluate(body, task):
        calls.append(task)
        return 0.5

    s = explore.sparsity_sweep(base, tvs, [0.1], evaluate=evaluate, finetuned={t: 0.8 for t in TASKS},
                               progress=False)
    assert len(calls) == 2 * len(TASKS) and s.finetuned == {t: 0.8 for t in TASKS}
    with pytest.raises(ValueError, match="finetuned must be a dict with an accuracy for each task"):
        explore.sparsity_sweep(base, tvs, [0.1], evaluate=evaluate, finetuned={"a": 0.8}, progress=False)
