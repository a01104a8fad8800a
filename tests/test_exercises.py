"""The exercise checks accept a correct solution and reject plausible wrong ones with a concrete message.

The correct solutions are naive loops written from the equations (not calls to lsedu), as a
student would write them; each wrong answer is a mistake a student is likely to make.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import lsedu
from lsedu import exercises as ex
from lsedu.exercises import ExerciseFailed

# --- correct solutions, from the equations ------------------------------------------------------


def soup_ok(models):
    return {n: sum(m[n] for m in models) / len(models) for n in models[0]}


def soup_mean_all(models):  # another correct form: stack and mean
    return {n: torch.stack([m[n] for m in models]).mean(0) for n in models[0]}


def greedy_ok(models, val_accuracy):
    scores = [val_accuracy(m) for m in models]
    order = sorted(range(len(models)), key=lambda i: -scores[i])
    kept, best = [order[0]], scores[order[0]]
    for i in order[1:]:
        s = val_accuracy(soup_ok([models[j] for j in kept + [i]]))
        if s > best:
            kept, best = kept + [i], s
    return kept


def bootstrap_ok(a, b, resamples, rng):
    n = len(a)
    diffs = []
    for _ in range(resamples):
        idx = rng.integers(0, n, size=n)  # the same items for both methods, with replacement
        diffs.append(a[idx].sum() / n - b[idx].sum() / n)
    diffs.sort()
    return float(a.mean() - b.mean()), float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def bootstrap_of_differences(a, b, resamples, rng):  # another correct form: resample the per-item differences
    d = a - b
    means = rng.choice(d, size=(resamples, len(d)), replace=True).mean(1)
    return d.mean(), *np.percentile(means, [2.5, 97.5])


def task_vector_ok(pretrained, finetuned):
    return {n: finetuned[n] - pretrained[n] for n in pretrained}


def pick_lambda_ok(grid, val_score, test_score):
    best = None
    for lam in grid:
        s = val_score(lam)
        if best is None or s > best[1]:
            best = (lam, s)
    return best[0]


def elect_ok(trimmed):
    out = {}
    for n in trimmed[0]:
        total = torch.zeros_like(trimmed[0][n])
        for tv in trimmed:
            total = total + tv[n]
        out[n] = torch.sign(total)
    return out


def disjoint_ok(trimmed, signs):
    out = {}
    for n, gamma in signs.items():
        flat_g = gamma.reshape(-1)
        res = torch.zeros(flat_g.numel())
        for i in range(flat_g.numel()):
            vals = [float(tv[n].reshape(-1)[i]) for tv in trimmed]
            agree = [v for v in vals if v != 0 and (v > 0) == (flat_g[i] > 0) and flat_g[i] != 0]
            res[i] = sum(agree) / len(agree) if agree else 0.0
        out[n] = res.reshape(gamma.shape)
    return out


def dare_ok(task_vector, p, generator):
    out = {}
    for n, t in task_vector.items():
        keep = torch.rand(t.shape, generator=generator) >= p
        out[n] = torch.where(keep, t / (1 - p), torch.zeros_like(t))
    return out


def localize_ok(task_vector, density):
    entries = [(abs(float(v)), order, n, i) for order, (n, t) in enumerate(task_vector.items())
               for i, v in enumerate(t.reshape(-1).tolist())]
    n_all = len(entries)
    k = round(density * n_all)
    entries.sort(key=lambda e: (-e[0], e[1], e[3]))  # largest first; ties: tensor order, then position
    masks = {n: torch.zeros(t.numel(), dtype=torch.bool) for n, t in task_vector.items()}
    for _, _, n, i in entries[:k]:
        masks[n][i] = True
    return {n: m.reshape(task_vector[n].shape) for n, m in masks.items()}


def stitch_ok(pretrained, task_vectors, masks):
    out = {}
    for n, pre in pretrained.items():
        total = torch.zeros_like(pre)
        count = torch.zeros_like(pre)
        for tv, m in zip(task_vectors, masks):
            total = total + tv[n] * m[n]
            count = count + m[n].float()
        out[n] = pre + torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(pre))
    return out


CORRECT = {
    "uniform_soup": soup_ok,
    "greedy_soup": greedy_ok,
    "paired_bootstrap": bootstrap_ok,
    "task_vector": task_vector_ok,
    "pick_lambda": pick_lambda_ok,
    "elect_sign": elect_ok,
    "disjoint_mean": disjoint_ok,
    "dare": dare_ok,
    "localize_dataless": localize_ok,
    "stitch": stitch_ok,
}


@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
@pytest.mark.parametrize("exercise", sorted(CORRECT))
def test_correct_solution_passes(exercise, hidden, capsys):
    ex.CHECKS[exercise](CORRECT[exercise], hidden=hidden)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"check_{exercise}: correct on ") and line.endswith(" cases"), line
    n = int(line.split()[3])
    assert n >= (8 if hidden else 4)


def test_hidden_runs_more_cases_than_visible(capsys):
    for exercise, f in CORRECT.items():
        ex.CHECKS[exercise](f)
        ex.CHECKS[exercise](f, hidden=True)
        visible, hidden = (int(line.split()[3]) for line in capsys.readouterr().out.split("\n")[:2])
        assert hidden > visible, exercise


def test_other_correct_forms_pass(capsys):
    ex.check_uniform_soup(soup_mean_all, hidden=True)

    def greedy_reverse_sort(models, val_accuracy):  # sorted(reverse=True) is stable too
        scores = [val_accuracy(m) for m in models]
        order = sorted(range(len(models)), key=lambda i: scores[i], reverse=True)
        kept = [order[0]]
        best = scores[order[0]]
        for i in order[1:]:
            s = val_accuracy({n: torch.stack([models[j][n] for j in kept + [i]]).mean(0) for n in models[0]})
            if s > best:
                kept.append(i)
                best = s
        return kept

    ex.check_greedy_soup(greedy_reverse_sort, hidden=True)

    def localize_stable_argsort(task_vector, density):
        return localize_sorted_by(task_vector, density, torch.abs)

    ex.check_localize_dataless(localize_stable_argsort, hidden=True)

    def dare_bernoulli(task_vector, p, generator):
        return {n: torch.bernoulli(torch.full_like(t, 1 - p), generator=generator) * t / (1 - p)
                for n, t in task_vector.items()}

    ex.check_dare(dare_bernoulli, hidden=True)
    capsys.readouterr()


# --- wrong answers -------------------------------------------------------------------------------


def soup_sum(models):
    return {n: sum(m[n] for m in models) for n in models[0]}


def soup_in_place(models):
    out = models[0]
    for m in models[1:]:
        for n in out:
            out[n] += m[n]
    for n in out:
        out[n] /= len(models)
    return out


def soup_first_model(models):
    return {n: t.clone() for n, t in models[0].items()}


def soup_float32(models):
    return {n: sum(m[n].float() for m in models) / len(models) for n in models[0]}


def greedy_keep_all(models, val_accuracy):
    scores = [val_accuracy(m) for m in models]
    return sorted(range(len(models)), key=lambda i: -scores[i])


def greedy_no_sort(models, val_accuracy):
    kept, best = [0], val_accuracy(models[0])
    for i in range(1, len(models)):
        s = val_accuracy(soup_ok([models[j] for j in kept + [i]]))
        if s > best:
            kept, best = kept + [i], s
    return kept


def greedy_adds_ties(models, val_accuracy):
    scores = [val_accuracy(m) for m in models]
    order = sorted(range(len(models)), key=lambda i: -scores[i])
    kept, best = [order[0]], scores[order[0]]
    for i in order[1:]:
        s = val_accuracy(soup_ok([models[j] for j in kept + [i]]))
        if s >= best:
            kept, best = kept + [i], s
    return kept


def greedy_running_average(models, val_accuracy):  # averages the soup with the new model: a weighted mean
    scores = [val_accuracy(m) for m in models]
    order = sorted(range(len(models)), key=lambda i: -scores[i])
    kept, soup, best = [order[0]], models[order[0]], scores[order[0]]
    for i in order[1:]:
        cand = {n: (soup[n] + models[i][n]) / 2 for n in soup}
        s = val_accuracy(cand)
        if s > best:
            kept, soup, best = kept + [i], cand, s
    return kept


def task_vector_reversed(pretrained, finetuned):
    return {n: pretrained[n] - finetuned[n] for n in pretrained}


def task_vector_in_place(pretrained, finetuned):
    for n in finetuned:
        finetuned[n] -= pretrained[n]
    return finetuned


def pick_uses_test(grid, val_score, test_score):
    return max(grid, key=lambda lam: val_score(lam) + test_score(lam))


def pick_last_of_ties(grid, val_score, test_score):
    best = None
    for lam in grid:
        s = val_score(lam)
        if best is None or s >= best[1]:
            best = (lam, s)
    return best[0]


def pick_returns_score(grid, val_score, test_score):
    return max(val_score(lam) for lam in grid)


def pick_smallest_of_ties(grid, val_score, test_score):
    return max(sorted(grid), key=val_score)


def elect_by_count(trimmed):
    return {n: torch.sign(sum(torch.sign(tv[n]) for tv in trimmed)) for n in trimmed[0]}


def elect_zero_is_plus(trimmed):
    return {n: torch.where(sum(tv[n] for tv in trimmed) >= 0, 1.0, -1.0) for n in trimmed[0]}


def elect_returns_sum(trimmed):
    return {n: sum(tv[n] for tv in trimmed) for n in trimmed[0]}


def elect_int(trimmed):
    return {n: torch.sign(sum(tv[n] for tv in trimmed)).long() for n in trimmed[0]}


def disjoint_counts_zeros(trimmed, signs):  # t * gamma >= 0 lets the trimmed zeros in
    out = {}
    for n, g in signs.items():
        agree = [(tv[n] * g >= 0) for tv in trimmed]
        total = sum(torch.where(a, tv[n], 0.0) for a, tv in zip(agree, trimmed))
        out[n] = total / sum(a.float() for a in agree).clamp(min=1)
    return out


def disjoint_mean_over_all(trimmed, signs):
    return {n: sum(torch.where(torch.sign(tv[n]) == g, tv[n], 0.0) for tv in trimmed) / len(trimmed)
            for n, g in signs.items()}


def disjoint_recomputes_signs(trimmed, signs):
    return disjoint_ok(trimmed, elect_ok(trimmed))


def dare_no_rescale(task_vector, p, generator):
    return {n: torch.where(torch.rand(t.shape, generator=generator) >= p, t, 0.0) for n, t in task_vector.items()}


def dare_rescale_by_p(task_vector, p, generator):
    return {n: torch.where(torch.rand(t.shape, generator=generator) >= p, t / max(p, 1e-12), 0.0) if p else t.clone()
            for n, t in task_vector.items()}


def dare_keep_p(task_vector, p, generator):  # keeps with probability p instead of dropping
    return {n: torch.where(torch.rand(t.shape, generator=generator) < p, t / (1 - p), 0.0) for n, t in task_vector.items()}


def dare_drops_too_few(task_vector, p, generator):  # drops with probability p / 2
    return {n: torch.where(torch.rand(t.shape, generator=generator) >= p / 2, t / (1 - p), 0.0)
            for n, t in task_vector.items()}


def dare_global_rng(task_vector, p, generator):
    return {n: torch.where(torch.rand(t.shape) >= p, t / (1 - p), 0.0) for n, t in task_vector.items()}


def dare_drop_smallest(task_vector, p, generator):  # deterministic: ignores randomness altogether
    out = {}
    for n, t in task_vector.items():
        k = int(round(p * t.numel()))
        keep = torch.ones(t.numel(), dtype=torch.bool)
        keep[t.abs().reshape(-1).argsort()[:k]] = False
        out[n] = torch.where(keep.reshape(t.shape), t / (1 - p), 0.0)
    return out


def localize_per_tensor(task_vector, density):
    out = {}
    for n, t in task_vector.items():
        k = round(density * t.numel())
        m = torch.zeros(t.numel(), dtype=torch.bool)
        if k:
            m[torch.sort(t.abs().reshape(-1), descending=True, stable=True).indices[:k]] = True
        out[n] = m.reshape(t.shape)
    return out


def localize_sorted_by(task_vector, density, key):
    """A student's top-k mask: the round(density * n) entries largest by ``key``, found by a stable sort."""
    flat = torch.cat([key(t).reshape(-1) for t in task_vector.values()])
    k = round(density * flat.numel())
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
    out, start = {}, 0
    for n, t in task_vector.items():
        out[n] = keep[start:start + t.numel()].reshape(t.shape)
        start += t.numel()
    return out


def localize_by_value(task_vector, density):
    return localize_sorted_by(task_vector, density, lambda t: t)


def localize_threshold_keeps_ties(task_vector, density):
    flat = torch.cat([t.abs().reshape(-1) for t in task_vector.values()])
    k = round(density * flat.numel())
    threshold = flat.sort(descending=True).values[k - 1]
    return {n: t.abs() >= threshold for n, t in task_vector.items()}


def localize_float_mask(task_vector, density):
    return {n: m.float() for n, m in localize_ok(task_vector, density).items()}


def stitch_sums(pretrained, task_vectors, masks):
    return {n: pre + sum(tv[n] * m[n] for tv, m in zip(task_vectors, masks)) for n, pre in pretrained.items()}


def stitch_divides_by_tasks(pretrained, task_vectors, masks):
    return {n: pre + sum(tv[n] * m[n] for tv, m in zip(task_vectors, masks)) / len(task_vectors)
            for n, pre in pretrained.items()}


def stitch_forgets_pretrained(pretrained, task_vectors, masks):
    return {n: v - pretrained[n] for n, v in stitch_ok(pretrained, task_vectors, masks).items()}


def bootstrap_unpaired(a, b, resamples, rng):
    n = len(a)
    d = [a[rng.integers(0, n, n)].mean() - b[rng.integers(0, n, n)].mean() for _ in range(resamples)]
    return a.mean() - b.mean(), np.quantile(d, 0.025), np.quantile(d, 0.975)


def bootstrap_unpaired_but_equal_when_identical(a, b, resamples, rng):
    if np.array_equal(a, b):
        return 0.0, 0.0, 0.0
    return bootstrap_unpaired(a, b, resamples, rng)


def bootstrap_no_replacement(a, b, resamples, rng):
    n = len(a)
    d = [(a[p] - b[p]).mean() for p in (rng.permutation(n) for _ in range(resamples))]
    return a.mean() - b.mean(), np.quantile(d, 0.025), np.quantile(d, 0.975)


def bootstrap_90(a, b, resamples, rng):
    d = rng.choice(a - b, size=(resamples, len(a))).mean(1)
    return (a - b).mean(), np.quantile(d, 0.05), np.quantile(d, 0.95)


def bootstrap_global_rng(a, b, resamples, rng):
    d = np.random.default_rng().choice(a - b, size=(resamples, len(a))).mean(1)
    return (a - b).mean(), np.quantile(d, 0.025), np.quantile(d, 0.975)


def bootstrap_in_points(a, b, resamples, rng):
    diff, low, high = bootstrap_of_differences(a, b, resamples, rng)
    return 100 * diff, 100 * low, 100 * high


def bootstrap_sorts_input(a, b, resamples, rng):
    a.sort()
    return bootstrap_of_differences(a, b, resamples, rng)


def stitch_in_place(pretrained, task_vectors, masks):
    new = stitch_ok(pretrained, task_vectors, masks)
    for n in pretrained:
        pretrained[n].copy_(new[n])
    return pretrained


def raises_key_error(*args):
    return {}["w"]


def not_implemented(*args):
    raise NotImplementedError("your code here")


WRONG = [
    # (exercise, wrong function, words the message must contain)
    ("uniform_soup", soup_sum, ["differs from the element-wise mean", "case 2 (two models)", "'layer.weight'["]),
    ("uniform_soup", soup_in_place, ["modified its input models[0]["]),
    ("uniform_soup", soup_first_model, ["case 2 (two models)", "differs from the element-wise mean"]),
    ("uniform_soup", soup_float32, ["dtype torch.float32, expected torch.float64", "float64"]),
    ("greedy_soup", greedy_keep_all, ["case 2", "keeps models [1, 2, 0]", "the greedy rule keeps [1, 2];"]),
    ("greedy_soup", greedy_no_sort, ["case 2 (the best model is not the first)", "keeps models [0"]),
    ("greedy_soup", greedy_adds_ties, ["does not add the model", "keeps models [0, 1"]),
    ("greedy_soup", greedy_running_average, ["not a uniform average", "0.25 on model"]),
    ("paired_bootstrap", bootstrap_unpaired, ["case 1 (two methods right on the same items",
                                              "when the same items are drawn for a and b"]),
    ("paired_bootstrap", bootstrap_unpaired_but_equal_when_identical,
     ["case 2 (a right wherever b is", "2.0 times as wide as the paired", "the *same* items for a and b"]),
    ("paired_bootstrap", bootstrap_no_replacement, ["case 2", "it has no width", "*with* replacement"]),
    ("paired_bootstrap", bootstrap_90, ["case 2", "times as wide: keep the central 95%"]),
    ("paired_bootstrap", bootstrap_global_rng, ["case 2 (a right wherever b is", "drew nothing from the rng argument"]),
    ("paired_bootstrap", bootstrap_in_points, ["case 2", "(in points? return fractions)"]),
    ("paired_bootstrap", bootstrap_sorts_input, ["modified its input a"]),
    ("task_vector", task_vector_reversed, ["differs from finetuned - pretrained", "case 1 (one tensor)", "'w'[0, 0]"]),
    ("task_vector", task_vector_in_place, ["modified its input finetuned['w']"]),
    ("pick_lambda", pick_uses_test, ["called test_score", "case 1"]),
    ("pick_lambda", pick_last_of_ties, ["case 2", "first in the grid should win", "lambda=0.75"]),
    ("pick_lambda", pick_returns_score, ["not a lambda of the grid", "did you return a score?"]),
    ("pick_lambda", pick_smallest_of_ties, ["case 6", "lambda=0.2"]),
    ("elect_sign", elect_by_count, ["case 1 (one large value", "returns -1 where the values sum to +1.5",
                                    "'w'[0]", "+2, -0.25, -0.25"]),
    ("elect_sign", elect_zero_is_plus, ["case 1", "returns +1 where the values sum to 0"]),
    ("elect_sign", elect_returns_sum, ["holds 1.5 at 'w'[0]", "-1, 0 or +1"]),
    ("elect_sign", elect_int, ["dtype torch.int64", "floating-point"]),
    ("disjoint_mean", disjoint_counts_zeros, ["case 1", "differs from the mean of the agreeing non-zero values"]),
    ("disjoint_mean", disjoint_mean_over_all, ["case 1", "the sign is +1"]),
    ("disjoint_mean", disjoint_recomputes_signs, ["case 3 (signs passed in that are not the elected ones: use the signs given)"]),
    ("dare", dare_no_rescale, ["case 2 (p = 0.5", "rescaled by 1/(1 - p) = 2"]),
    ("dare", dare_rescale_by_p, ["case 3 (p = 0.9", "rescaled by 1/(1 - p) = 10"]),
    ("dare", dare_keep_p, ["case 1 (p = 0 is the identity)", "must return it unchanged"]),
    ("dare", dare_drops_too_few, ["case 2 (p = 0.5", "dropped 0.2", "probability p = 0.5"]),
    ("dare", dare_global_rng, ["generators seeded alike gave different drops"]),
    ("dare", dare_drop_smallest, ["different seeds gave the same drops"]),
    ("localize_dataless", localize_per_tensor, ["case 1 (one global top-k", "keeps 'b'[", "leaves out 'a'["]),
    ("localize_dataless", localize_by_value, ["case 1", "leaves out 'a'[1] (|tau| = 4)"]),
    ("localize_dataless", localize_threshold_keeps_ties, ["case 3 (ties", "keeps 6 entries", "exactly floor(0.3 * 10 + 1/2) = 3 (half up)",
                                                          "earliest"]),
    ("localize_dataless", localize_float_mask, ["dtype torch.float32, expected torch.bool"]),
    ("stitch", stitch_sums, ["case 2 (two tasks, identical masks", "masks [0, 1] claim it"]),
    ("stitch", stitch_divides_by_tasks, ["case 1 (two tasks, disjoint masks", "masks [0] claim it"]),
    ("stitch", stitch_forgets_pretrained, ["case 1", "differs from the stitching rule"]),
    ("stitch", stitch_in_place, ["modified its input pretrained['w']"]),
]


@pytest.mark.parametrize("exercise, wrong, words", WRONG, ids=lambda x: getattr(x, "__name__", None))
def test_wrong_answer_is_rejected_with_a_concrete_message(exercise, wrong, words):
    for hidden in (False, True):
        with pytest.raises(ExerciseFailed) as err:
            ex.CHECKS[exercise](wrong, hidden=hidden)
        if not hidden:
            msg = str(err.value)
            for w in words:
                assert w in msg, f"{w!r} not in: {msg}"


def test_every_exercise_has_at_least_two_wrong_answers():
    counts = {e: sum(1 for w in WRONG if w[0] == e) for e in CORRECT}
    assert all(c >= 2 for c in counts.values()), counts


@pytest.mark.parametrize("exercise", sorted(CORRECT))
def test_a_function_that_raises_is_reported_with_its_exception_and_case(exercise):
    with pytest.raises(ExerciseFailed, match=r"on case 1 \(.*\) your function raised KeyError: 'w'"):
        ex.CHECKS[exercise](raises_key_error)
    with pytest.raises(ExerciseFailed, match="raises NotImplementedError: replace"):
        ex.CHECKS[exercise](not_implemented)


def test_wrong_return_types_are_named():
    with pytest.raises(ExerciseFailed, match="returned a list; soup should be a dict"):
        ex.check_uniform_soup(lambda models: [soup_ok(models)])
    with pytest.raises(ExerciseFailed, match=r"has shape \(3,\), expected \(2, 3\)"):
        ex.check_uniform_soup(lambda models: {n: t.reshape(-1)[:3] for n, t in soup_ok(models).items()})
    with pytest.raises(ExerciseFailed, match=r"missing \['b'\]"):
        ex.check_uniform_soup(lambda models: {"w": soup_ok(models)["w"]})
    with pytest.raises(ExerciseFailed, match="returned Tensor; return the list of indices"):
        ex.check_greedy_soup(lambda models, val: torch.tensor(greedy_ok(models, val)))
    with pytest.raises(ExerciseFailed, match="returned a str"):
        ex.check_pick_lambda(lambda g, v, t: "0.4")
    with pytest.raises(ExerciseFailed, match="is a list, not a torch.Tensor"):
        ex.check_task_vector(lambda pre, ft: {n: (ft[n] - pre[n]).tolist() for n in pre})
    with pytest.raises(ExerciseFailed, match="expects your function itself"):
        ex.check_stitch(3)


def test_messages_never_contain_solution_code():
    for exercise, wrong, _ in WRONG:
        with pytest.raises(ExerciseFailed) as err:
            ex.CHECKS[exercise](wrong)
        msg = str(err.value)
        assert not re.search(r"\bdef \w+\(|\blambda \w*:|lsedu\.|\bfor \w+ in\b", msg), msg


# --- overlap prediction --------------------------------------------------------------------------


def _masks(seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(200, generator=g) < 0.1
    other = torch.rand(200, generator=g) < 0.1
    near = base.clone()
    near[:20] = ~near[:20]  # mostly the same as base
    return {"mnist": {"w": base}, "digits": {"w": near}, "fashion": {"w": other},
            "rotation": {"w": torch.rand(200, generator=g) < 0.1}}


def test_overlap_prediction_accepts_the_truth_in_any_order(capsys):
    masks = _masks()
    pairs = ["mnist+digits", "fashion+rotation"]
    ex.check_overlap_prediction("mnist+digits", masks, pairs=pairs)
    ex.check_overlap_prediction("digits + mnist", masks, pairs=pairs, hidden=True)
    ex.check_overlap_prediction("digits+mnist", masks)  # all pairs are candidates by default
    assert capsys.readouterr().out.count("check_overlap_prediction: correct on 1 case\n") == 3


def test_overlap_prediction_rejects_the_wrong_pair_and_malformed_answers():
    masks, pairs = _masks(), ["mnist+digits", "fashion+rotation"]
    with pytest.raises(ExerciseFailed, match=r"is not the pair that overlaps most.*mnist\+digits: 0\.\d+"):
        ex.check_overlap_prediction("fashion+rotation", masks, pairs=pairs)
    for bad in ("mnist digits", "mnist+fashion", "mnist+mnist", "cifar+digits", "a+b+c"):
        with pytest.raises(ExerciseFailed, match="is not one of the pairs 'mnist\\+digits' or 'fashion\\+rotation'"):
            ex.check_overlap_prediction(bad, masks, pairs=pairs)
    with pytest.raises(ExerciseFailed, match="answer with a string"):
        ex.check_overlap_prediction(("mnist", "digits"), masks, pairs=pairs)
    with pytest.raises(ExerciseFailed, match="at least two tasks"):
        ex.check_overlap_prediction("mnist+digits", [masks["mnist"]])


def test_overlap_prediction_matches_mask_overlap():
    masks = _masks(3)
    names = list(masks)
    iou = lsedu.mask_overlap(list(masks.values())).iou
    best = max(itertools.combinations(range(4), 2), key=lambda p: float(iou[p]))
    ex.check_overlap_prediction(f"{names[best[1]]}+{names[best[0]]}", masks)


def test_exercise_failed_is_an_assertion_error():
    assert issubclass(ExerciseFailed, AssertionError)
    assert set(ex.CHECKS) == set(CORRECT) | {"overlap_prediction"}


# --- the book's own solutions pass the checks ----------------------------------------------------


def _book_exercises():
    """(notebook, id, solution cell source, check cell source) for each function exercise of notebooks/."""
    import nbformat

    from lsedu.course import exercise_of

    found = []
    for path in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        for i, cell in enumerate(cells):
            ex_id = (exercise_of(cell) or (None,))[0]
            if ex_id and ex_id != "overlap_prediction" and i and cells[i - 1].cell_type == "code":
                found.append(pytest.param(cells[i - 1].source, cell.source, id=f"{path.stem}-{ex_id}"))
    return found


BOOK = _book_exercises()


@pytest.mark.skipif(not BOOK, reason="no exercise in notebooks/ yet")
@pytest.mark.parametrize("solution, check", BOOK)
def test_the_book_solution_passes_its_visible_and_hidden_checks(solution, check, capsys):
    namespace = {"torch": torch, "lsedu": lsedu}
    exec(compile(solution, "<solution cell>", "exec"), namespace)
    exec(compile(check, "<check cell>", "exec"), namespace)  # the hidden tests run too: markers are comments
    assert capsys.readouterr().out.count(": correct on ") == 2
