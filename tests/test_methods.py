"""Each merge method against a naive loop written from the paper's equation.

The loops below go entry by entry over Python floats, the way the equations
read on paper. They share no code with lsedu.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_same, deep_copy, finetune_of, random_state_dict

import lsedu
from lsedu import TaskVector


def entries(sd):
    """Yield (name, flat index, value) over every entry, as Python floats."""
    for n, t in sd.items():
        for i, v in enumerate(t.reshape(-1).tolist()):
            yield n, i, v


def from_entries(like, values):
    out = {}
    for n, t in like.items():
        out[n] = torch.tensor([values[(n, i)] for i in range(t.numel())], dtype=torch.float32).reshape(t.shape)
    return out


def naive_topk_keys(tv, density):
    """The keys (name, index) of the round(density * n) largest |values|, ties broken by order."""
    items = list(entries(tv))
    k = max(1, round(density * len(items)))
    ranked = sorted(range(len(items)), key=lambda j: (-abs(items[j][2]), j))  # stable: earlier entry wins a tie
    return {(items[j][0], items[j][1]) for j in ranked[:k]}


def assert_close(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n].float(), b[n].float(), atol=atol, rtol=1e-5, msg=n)


# --------------------------------------------------------------------------- task vectors
def test_task_vector_is_difference_and_apply_roundtrips(base, finetunes):
    ft = finetunes[0]
    tau = TaskVector.from_models(base, ft)
    want = {}
    for (n, i, a), (_, _, b) in zip(entries(ft), entries(base)):
        want[(n, i)] = a - b
    assert_close(dict(tau), from_entries(base, want))
    assert_close(tau.apply_to(base, 1.0), ft)


def test_task_vector_selection_and_integer_buffers(base):
    base = {**base, "pos_ids": torch.arange(5)}
    ft = {**finetune_of({k: v for k, v in base.items() if k != "pos_ids"}, 7), "pos_ids": torch.arange(5)}
    tau = TaskVector.from_models(base, ft, include="enc.*", exclude="*.b")
    assert list(tau) == ["enc.layer.0.w", "enc.layer.1.w"]
    merged = tau.apply_to(base, 1.0)
    assert torch.equal(merged["head.w"], base["head.w"])  # outside the selection: unchanged
    assert torch.equal(merged["pos_ids"], base["pos_ids"])
    assert torch.equal(merged["enc.layer.0.b"], base["enc.layer.0.b"])


def test_norm_and_cosine_match_flat_formulas(base, finetunes):
    a = TaskVector.from_models(base, finetunes[0])
    b = TaskVector.from_models(base, finetunes[1])
    va = [v for *_, v in entries(a)]
    vb = [v for *_, v in entries(b)]
    dot = sum(x * y for x, y in zip(va, vb))
    na, nb = math.sqrt(sum(x * x for x in va)), math.sqrt(sum(y * y for y in vb))
    assert a.norm() == pytest.approx(na, rel=1e-6)
    assert lsedu.cosine_similarity(a, b) == pytest.approx(dot / (na * nb), rel=1e-5)
    assert lsedu.cosine_similarity(a, a) == pytest.approx(1.0)
    assert lsedu.cosine_similarity(a, -a) == pytest.approx(-1.0)


# --------------------------------------------------------------------------- soups
def test_uniform_soup_is_entrywise_mean(finetunes):
    want = {}
    for n, t in finetunes[0].items():
        for i in range(t.numel()):
            want[(n, i)] = sum(m[n].reshape(-1)[i].item() for m in finetunes) / len(finetunes)
    assert_close(lsedu.uniform_soup(finetunes), from_entries(finetunes[0], want))


def naive_greedy(models, evaluate):
    """Recipe 1 of the model-soups paper, written as a plain loop."""
    scores = [evaluate(m) for m in models]
    order = sorted(range(len(models)), key=lambda i: -scores[i])
    soup = [order[0]]
    best = scores[order[0]]
    for i in order[1:]:
        trial = soup + [i]
        avg = {n: sum(models[j][n] for j in trial) / len(trial) for n in models[0]}
        s = evaluate(avg)
        if s > best:
            soup, best = trial, s
    return soup, best


def test_greedy_soup_matches_recipe_and_never_loses_to_best(base):
    target = finetune_of(base, 99, scale=0.05)

    def evaluate(sd):  # closer to a hidden target is better
        return -sum(float((sd[n] - target[n]).pow(2).sum()) for n in sd)

    models = [finetune_of(target, s, scale=0.2) for s in range(6)]
    models.append(finetune_of(base, 50, scale=3.0))  # a bad ingredient that must be left out
    before = deep_copy(models)
    result = lsedu.greedy_soup(models, evaluate)
    soup, best = naive_greedy(models, evaluate)
    assert result.ingredients == soup
    assert result.score == pytest.approx(best)
    assert result.score >= max(result.individual_scores)
    assert 6 not in result.ingredients
    assert len(result.history) == len(models)
    assert_close(result.state_dict, lsedu.uniform_soup([models[i] for i in soup]))
    for m, b in zip(models, before):
        assert_same(m, b)


def test_greedy_soup_ties_keep_input_order_and_are_not_added(base):
    models = [finetune_of(base, s) for s in range(3)]
    result = lsedu.greedy_soup(models, lambda sd: 1.0)  # every score equal
    assert result.ingredients == [0]  # first model starts, equal soups are not better
    assert [h["model"] for h in result.history] == [0, 1, 2]


# --------------------------------------------------------------------------- task arithmetic
@pytest.mark.parametrize("lam", [0.3, 1.0, -1.0])
def test_task_arithmetic_matches_equation(base, finetunes, lam):
    tvs = [TaskVector.from_models(base, ft) for ft in finetunes]
    want = {}
    for n, i, b in entries(base):
        want[(n, i)] = b + lam * sum(tv[n].reshape(-1)[i].item() for tv in tvs)
    assert_close(lsedu.task_arithmetic(base, tvs, lam), from_entries(base, want), atol=1e-5)
    # the TaskVector algebra says the same thing
    assert_close(sum(tvs).apply_to(base, lam), from_entries(base, want), atol=1e-5)


def test_negation_forgets(base, finetunes):
    tau = TaskVector.from_models(base, finetunes[0])
    forgot = lsedu.task_arithmetic(finetunes[0], [-tau], 1.0)
    assert_close(forgot, base, atol=1e-6)


def test_pick_lambda_chooses_the_grid_maximum(base, finetunes):
    tvs = [TaskVector.from_models(base, ft) for ft in finetunes]
    target = lsedu.task_arithmetic(base, tvs, 0.4)

    def evaluate(sd):
        return -sum(float((sd[n] - target[n]).pow(2).sum()) for n in sd)

    search = lsedu.pick_lambda(base, tvs, evaluate)
    assert search.best_lambda == pytest.approx(0.4)
    assert list(search.scores) == list(lsedu.DEFAULT_GRID)
    ties = lsedu.pick_lambda(base, tvs, evaluate, grid=[0.4], merge=lsedu.ties_merge, density=1.0)
    assert ties.best_lambda == 0.4


@pytest.mark.parametrize("grid, edge", [([0.1, 0.2, 0.3], "high"), ([0.5, 0.6, 0.8], "low"),
                                        ([0.2, 0.4, 0.6], None), ([0.0, 0.5, 1.0], None), ([0.4], None)])
def test_pick_lambda_warns_when_the_best_lambda_is_at_an_edge(base, finetunes, grid, edge):
    """The score peaks at lambda 0.4: a grid that stops short of it, on either side, says so; 0 is no edge."""
    import warnings

    tvs = [TaskVector.from_models(base, ft) for ft in finetunes]
    target = lsedu.task_arithmetic(base, tvs, 0.4)

    def evaluate(sd):
        return -sum(float((sd[n] - target[n]).pow(2).sum()) for n in sd)

    if grid[0] == 0.0:  # lambda 0 is best when the score rewards staying at the pretrained model
        evaluate = (lambda sd: -sum(float((sd[n] - base[n]).pow(2).sum()) for n in sd))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search = lsedu.pick_lambda(base, tvs, evaluate, grid=grid)
    assert search.at_edge == edge
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if edge is None:
        assert not messages
    else:
        assert len(messages) == 1 and f"{edge}est value of the grid" in messages[0]
        assert f"{search.best_lambda:g}" in messages[0]
        # widened far enough, the search walks past the edge to the peak, and stops warning
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            wide = lsedu.pick_lambda(base, tvs, evaluate, grid=grid, widen=4)
        assert wide.best_lambda == pytest.approx(0.4) and wide.at_edge is None
        assert set(grid) < set(wide.scores) and len(wide.scores) <= len(grid) + 4


@pytest.mark.parametrize("values, side, want", [([0.1, 0.2, 0.3], "high", 0.4), ([0.5, 0.6, 0.8], "low", 0.4),
                                                ([0.1, 0.3], "low", 0.05), ([0.2, 0.4], "low", 0.1),
                                                ([-0.2, -0.1], "low", -0.3), ([0.4], "high", None)])
def test_lambda_beyond_steps_by_the_grid_and_halves_towards_zero(values, side, want):
    assert lsedu.arithmetic.lambda_beyond(values, side) == (want if want is None else pytest.approx(want))


def test_pick_lambda_rejects_a_bad_widen(base, finetunes):
    tvs = [TaskVector.from_models(base, ft) for ft in finetunes]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="widen must be a non-negative int"):
            lsedu.pick_lambda(base, tvs, lambda sd: 0.0, grid=[0.1, 0.2], widen=bad)


# --------------------------------------------------------------------------- TIES
def naive_ties(base, tvs, density, lam):
    kept = [naive_topk_keys(tv, density) for tv in tvs]
    merged = {}
    for n, i, b in entries(base):
        vals = [tv[n].reshape(-1)[i].item() if (n, i) in kept[t] else 0.0 for t, tv in enumerate(tvs)]
        total = sum(vals)
        gamma = (total > 0) - (total < 0)
        agree = [v for v in vals if v != 0 and ((v > 0) - (v < 0)) == gamma]
        merged[(n, i)] = b + lam * (sum(agree) / len(agree) if agree else 0.0)
    return merged


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_matches_algorithm_1(base, finetunes, density):
    tvs = [TaskVector.from_models(base, ft) for ft in finetunes]
    want = from_entries(base, naive_ties(base, tvs, density, 0.8))
    assert_close(lsedu.ties_merge(base, tvs, density=density, lam=0.8), want, atol=1e-6)


def test_ties_election_is_by_mass_not_count():
    base = {"w": torch.zeros(3)}
    tvs = [{"w": torch.tensor([5.0, -1.0, 2.0])}, {"w": torch.tensor([-1.0, -1.0, -2.0])},
           {"w": torch.tensor([-1.0, 3.0, 0.0])}]
    signs = lsedu.elect_sign(tvs)
    assert signs["w"].tolist() == [1.0, 1.0, 0.0]  # +5 beats two -1s; +3 beats -2; 2 - 2 = 0: no winner
    merged = lsedu.ties_merge(base, tvs, density=1.0, lam=1.0)
    assert merged["w"].tolist() == [5.0, 3.0, 0.0]


def test_per_tensor_trim_keeps_top_k_of_each_tensor(base, finetunes):
    tau = TaskVector.from_models(base, finetunes[0])
    trimmed = lsedu.trim(tau, 0.5, scope="per_tensor")
    for n, t in tau.items():
        kept = naive_topk_keys({n: t}, 0.5)
        for i, v in enumerate(t.reshape(-1).tolist()):
            assert trimmed[n].reshape(-1)[i].item() == (v if (n, i) in kept else 0.0)


def test_global_trim_matches_naive_and_differs_from_per_tensor(base):
    # one tensor of large values and one of small ones: a global trim keeps only the large tensor
    tau = TaskVector({"big": torch.linspace(1, 2, 10), "small": torch.linspace(0.01, 0.02, 10)})
    g = lsedu.trim(tau, 0.5, scope="global")
    p = lsedu.trim(tau, 0.5, scope="per_tensor")
    kept = naive_topk_keys(tau, 0.5)
    assert {(n, i) for n, t in g.items() for i in range(t.numel()) if t[i] != 0} == kept
    assert int((g["small"] != 0).sum()) == 0 and int((p["small"] != 0).sum()) == 5


# --------------------------------------------------------------------------- DARE
def test_dare_drops_and_rescales():
    tau = TaskVector({"w": torch.ones(200_000)})
    out = lsedu.dare(tau, 0.9, seed=3)["w"]
    survivors = out[out != 0]
    assert torch.allclose(survivors, torch.full_like(survivors, 10.0))
    assert abs(len(survivors) / 200_000 - 0.1) < 0.005  # about 1 - p survive
    assert abs(out.mean().item() - 1.0) < 0.05  # the expectation is kept


def test_dare_merge_is_dare_then_merge(base, finetunes):
    tvs = [TaskVector.from_models(base, ft) for ft in finetunes]
    dropped = [lsedu.dare(tv, 0.5, seed=10 + i) for i, tv in enumerate(tvs)]
    assert_close(lsedu.dare_merge(base, tvs, p=0.5, lam=0.7, seed=10), lsedu.task_arithmetic(base, dropped, 0.7))
    assert_close(
        lsedu.dare_merge(base, tvs, p=0.5, lam=0.7, seed=10, then="ties", density=0.5),
        lsedu.ties_merge(base, dropped, density=0.5, lam=0.7),
    )


def test_dare_draw_does_not_depend_on_other_tensors(base, finetunes):
    tau = TaskVector.from_models(base, finetunes[0])
    alone = lsedu.dare(TaskVector({"head.w": tau["head.w"]}), 0.5, seed=1)
    assert torch.equal(alone["head.w"], lsedu.dare(tau, 0.5, seed=1)["head.w"])


# --------------------------------------------------------------------------- Localize-and-Stitch
def test_localize_dataless_is_global_topk(base, finetunes):
    tau = TaskVector.from_models(base, finetunes[0])
    mask = lsedu.localize_dataless(tau, 0.25)
    chosen = {(n, i) for n, m in mask.items() for i, v in enumerate(m.reshape(-1).tolist()) if v}
    assert chosen == naive_topk_keys(tau, 0.25)


def naive_stitch(base, tvs, masks):
    out = {}
    for n, i, b in entries(base):
        gammas = [float(m[n].reshape(-1)[i]) for m in masks]
        cover = sum(gammas)
        out[(n, i)] = b + sum(
            (g / cover) * tv[n].reshape(-1)[i].item() for g, tv in zip(gammas, tvs) if cover > 0
        )
    return out


@pytest.mark.parametrize("density", [0.1, 0.3, 0.6])
def test_stitch_averages_overlaps(base, finetunes, density):
    tvs = [TaskVector.from_models(base, ft) for ft in finetunes]
    masks = [lsedu.localize_dataless(tv, density) for tv in tvs]
    want = from_entries(base, naive_stitch(base, tvs, masks))
    assert_close(lsedu.stitch(base, tvs, masks), want)


@pytest.mark.parametrize("density", [0.1, 0.3, 0.6])
def test_stitch_dataless_is_topk_masks_then_stitching(base, finetunes, density):
    """He et al. 2025, Sec. 3 without data: gamma_i = top-k of |tau_i| over all entries, then stitch."""
    tvs = [TaskVector.from_models(base, ft) for ft in finetunes]
    keys = [naive_topk_keys(tv, density) for tv in tvs]
    masks = [{n: torch.tensor([(n, i) in k for i in range(t.numel())]).reshape(t.shape) for n, t in tv.items()}
             for tv, k in zip(tvs, keys)]
    want = from_entries(base, naive_stitch(base, tvs, masks))
    assert_close(lsedu.stitch_dataless(base, tvs, density), want)


# --------------------------------------------------------------------------- analysis
def test_mask_overlap_counts():
    m = [{"w": torch.tensor([1, 1, 0, 0], dtype=torch.bool)}, {"w": torch.tensor([0, 1, 1, 0], dtype=torch.bool)},
         {"w": torch.tensor([0, 0, 0, 0], dtype=torch.bool)}]
    ov = lsedu.mask_overlap(m)
    assert ov.counts.tolist() == [[2, 1, 0], [1, 2, 0], [0, 0, 0]]
    assert ov.iou[0, 1].item() == pytest.approx(1 / 3)
    assert ov.fraction[0, 1].item() == pytest.approx(1 / 2)
    assert ov.iou[2, 2].item() == 0.0  # an empty mask overlaps nothing, not even itself


def test_density_per_tensor_and_layer():
    mask = {
        "encoder.layer.0.attn.w": torch.tensor([1, 0, 0, 0], dtype=torch.bool),
        "encoder.layer.0.ffn.w": torch.tensor([1, 1, 0, 0], dtype=torch.bool),
        "encoder.layer.10.ffn.w": torch.tensor([1, 1, 1, 1], dtype=torch.bool),
        "encoder.layer.2.ffn.w": torch.tensor([0, 0, 0, 0], dtype=torch.bool),
        "classifier.w": torch.tensor([1, 0], dtype=torch.bool),
    }
    assert lsedu.density_per_tensor(mask)["encoder.layer.0.ffn.w"] == 0.5
    assert lsedu.density_per_layer(mask) == {"0": 3 / 8, "2": 0.0, "10": 1.0, "other": 0.5}
    assert lsedu.density(mask) == pytest.approx(8 / 18)


def test_sign_conflicts_counts_entries_pulled_both_ways():
    tvs = [{"w": torch.tensor([1.0, 2.0, 0.0, -1.0])}, {"w": torch.tensor([-1.0, 3.0, 5.0, 0.0])},
           {"w": torch.tensor([0.0, 1.0, 0.0, 2.0])}]
    sc = lsedu.sign_conflicts(tvs)
    assert (sc.conflicts, sc.shared, sc.total) == (2, 3, 4)  # entries 0 and 3 conflict; 0, 1, 3 are shared
    assert sc.fraction == 0.5


def test_storage_of_sparse_vector():
    tau = {"w": torch.zeros(1000)}
    tau["w"][:10] = 1.0
    s = lsedu.storage(tau)
    assert s.dense == 4000
    assert s.coo == 10 * (4 + 4)
    assert s.bitmask == 10 * 4 + 125
    assert s.sparse == 80 and s.ratio == pytest.approx(0.02)
    masked = lsedu.storage(tau, {"w": torch.arange(1000) < 5})
    assert masked.nonzero == 5
