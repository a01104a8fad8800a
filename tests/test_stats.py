"""lsedu.stats: the paired bootstrap that the case-study tables read their orderings from.

The vectorized resampling is checked against a loop written from the definition (draw the items, average,
difference), the interval's properties with hypothesis, its coverage on data whose true difference is known,
and the bad inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lsedu.stats import PairedDifference, format_difference, item_differences, paired_bootstrap, resampled_means


def _scores(rng, tasks=(("x", 30), ("y", 45)), seeds=1, p=0.7):
    return {t: (rng.random((seeds, n)) < p).astype(float) for t, n in tasks}


def test_vectorized_resamples_equal_a_loop_over_drawn_items():
    rng = np.random.default_rng(1)
    a, b = _scores(rng, seeds=3), _scores(rng, seeds=3, p=0.6)
    diffs = item_differences(a, b)
    B = 50
    items = {t: rng.multinomial(d.shape[1], np.full(d.shape[1], 1 / d.shape[1]), size=B) for t, d in diffs.items()}
    seeds = rng.multinomial(3, np.full(3, 1 / 3), size=B)
    fast = resampled_means(diffs, items, seeds)
    for r in range(B):
        drawn_seeds = [s for s in range(3) for _ in range(seeds[r, s])]
        value = 0.0
        for s in drawn_seeds:
            per_task = []
            for t in a:
                drawn = [i for i in range(a[t].shape[1]) for _ in range(items[t][r, i])]
                per_task.append(np.mean([a[t][s, i] for i in drawn]) - np.mean([b[t][s, i] for i in drawn]))
            value += np.mean(per_task)
        assert fast[r] == pytest.approx(value / len(drawn_seeds), abs=1e-12)


def test_observed_difference_is_the_difference_of_the_tables_averages():
    rng = np.random.default_rng(2)
    a, b = _scores(rng, seeds=2), _scores(rng, seeds=2, p=0.5)
    d = paired_bootstrap(a, b, resamples=200)
    avg = lambda s: np.mean([np.mean([s[t][k].mean() for t in s]) for k in range(2)])  # noqa: E731
    assert d.diff == pytest.approx(avg(a) - avg(b), abs=1e-12)
    assert (d.items, d.seeds, d.resamples) == (75, 2, 200)


def test_identical_methods_tie_at_zero():
    rng = np.random.default_rng(3)
    a = _scores(rng)
    d = paired_bootstrap(a, {t: v.copy() for t, v in a.items()}, resamples=500)
    assert (d.diff, d.low, d.high, d.verdict) == (0.0, 0.0, 0.0, "tie")


def test_a_method_right_on_more_items_is_ahead_and_swapping_mirrors_the_interval():
    rng = np.random.default_rng(4)
    b = _scores(rng, tasks=(("x", 400), ("y", 400)), p=0.6)
    a = {t: np.maximum(v, (rng.random(v.shape) < 0.15).astype(float)) for t, v in b.items()}  # right where b is
    ab, ba = paired_bootstrap(a, b), paired_bootstrap(b, a)
    assert ab.low > 0 and ab.verdict == "a ahead" and ab.excludes_zero
    assert ba.verdict == "b ahead"
    assert (ba.diff, ba.low, ba.high) == pytest.approx((-ab.diff, -ab.high, -ab.low), abs=1e-12)


def test_pairing_makes_the_interval_narrower_than_the_methods_own_spread():
    # two methods that agree on most items: their difference is known far better than either accuracy
    rng = np.random.default_rng(5)
    b = _scores(rng, tasks=(("x", 300),), p=0.7)
    a = {"x": b["x"].copy()}
    flip = rng.choice(300, 12, replace=False)
    a["x"][0, flip] = 1.0
    d = paired_bootstrap(a, b)
    unpaired_se = np.sqrt(2 * 0.7 * 0.3 / 300)
    assert d.high - d.low < unpaired_se  # a 95% interval narrower than one unpaired standard error


def test_the_same_seed_gives_the_same_interval_and_other_seeds_move_it_slightly():
    rng = np.random.default_rng(6)
    tasks = (("x", 301), ("y", 457))
    a, b = _scores(rng, tasks), _scores(rng, tasks, p=0.5)
    d1, d2 = paired_bootstrap(a, b, seed=0), paired_bootstrap(a, b, seed=0)
    assert d1 == d2
    d3 = paired_bootstrap(a, b, seed=1)
    assert d3.diff == d1.diff and (d3.low, d3.high) != (d1.low, d1.high)
    assert abs(d3.low - d1.low) < 0.01 and abs(d3.high - d1.high) < 0.01


def test_repeated_identical_seeds_do_not_change_the_interval():
    # seeds are resampled after the items: two copies of one seed's results give one seed's interval
    rng = np.random.default_rng(7)
    a, b = _scores(rng), _scores(rng, p=0.5)
    one = paired_bootstrap(a, b)
    two = paired_bootstrap({t: np.repeat(v, 2, 0) for t, v in a.items()}, {t: np.repeat(v, 2, 0) for t, v in b.items()})
    assert (two.diff, two.low, two.high) == pytest.approx((one.diff, one.low, one.high), abs=1e-12)


def test_seeds_that_disagree_widen_the_interval():
    rng = np.random.default_rng(8)
    b = _scores(rng, tasks=(("x", 400),), seeds=3, p=0.6)
    a = {"x": b["x"].copy()}
    a["x"][0, :40] = 1.0  # seed 0: a clearly ahead; seeds 1 and 2: identical
    only_items = paired_bootstrap({"x": a["x"][:1]}, {"x": b["x"][:1]})
    with_seeds = paired_bootstrap(a, b)
    assert with_seeds.high - with_seeds.low > (only_items.high - only_items.low) / 3 * 1.5
    assert with_seeds.low <= 0.001  # one seed of three is not enough to call it


def test_coverage_on_data_with_a_known_difference():
    # items with a known chance of each method being right: the 95% interval covers the true difference
    rng = np.random.default_rng(9)
    hits, trials = 0, 120
    for _ in range(trials):
        pa = rng.uniform(0.4, 0.95, 200)
        pb = np.clip(pa - 0.03, 0, 1)
        u = rng.random(200)
        a, b = {"x": (u < pa).astype(float)}, {"x": (u < pb).astype(float)}  # correlated, as two merges are
        d = paired_bootstrap(a, b, resamples=1000, seed=int(rng.integers(1 << 30)))
        truth = float(np.mean(pa - pb))
        hits += d.low <= truth <= d.high
    assert 0.85 <= hits / trials <= 1.0


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 40), shift=st.floats(-0.5, 0.5), seed=st.integers(0, 1000))
def test_interval_properties(n, shift, seed):
    rng = np.random.default_rng(seed)
    a, b = {"x": rng.random(n)}, {"x": rng.random(n)}
    d = paired_bootstrap(a, b, resamples=300, seed=seed)
    assert d.low <= d.high
    assert min(d.low, d.diff) >= -1 - 1e-12 and max(d.high, d.diff) <= 1 + 1e-12
    assert d.low <= d.diff + 1e-9 or d.high >= d.diff - 1e-9
    shifted = paired_bootstrap({"x": a["x"] + shift}, b, resamples=300, seed=seed)
    assert (shifted.diff, shifted.low, shifted.high) == pytest.approx((d.diff + shift, d.low + shift, d.high + shift),
                                                                      abs=1e-9)


def test_format_difference():
    d = PairedDifference(diff=0.0123, low=0.004, high=0.02, level=0.95, resamples=100, items=10, seeds=1)
    assert format_difference(d) == "+1.2 [+0.4, +2.0]"
    with pytest.raises(TypeError, match="PairedDifference"):
        format_difference(0.1)
    from lsedu.stats import format_interval

    assert format_interval(PairedDifference(0.01, -0.0004, 0.02, 0.95, 100, 10, 1)) == "[-0.04, +2.0]"
    # Never "-0.0": a small negative difference gets the digits it needs, a negative zero is "+0.0".
    assert format_difference(PairedDifference(-0.0004, -0.01, 0.01, 0.95, 100, 10, 1)) == "-0.04 [-1.0, +1.0]"
    assert format_difference(PairedDifference(-0.0, -0.0, 0.0, 0.95, 100, 10, 1)) == "+0.0 [+0.0, +0.0]"


@pytest.mark.parametrize("a, b, kwargs, match", [
    ({"x": [1, 0]}, {"y": [1, 0]}, {}, r"same tasks: a has \['x'\], b has \['y'\]"),
    ({"x": [1, 0, 1]}, {"x": [1, 0]}, {}, r"task 'x': a has \[seeds, items\] \[1, 3\] but b has \[1, 2\]"),
    ({"x": [1, float("nan")]}, {"x": [1, 0]}, {}, r"a\['x'\] holds a NaN"),
    ({"x": []}, {"x": []}, {}, r"a\['x'\] must be a non-empty"),
    ({"x": [[1, 0]], "y": [[1, 0], [0, 1]]}, {"x": [[1, 0]], "y": [[1, 0], [0, 1]]}, {}, "same number of fine-tune"),
    ({}, {}, {}, "a has no task"),
    ({"x": [1, 0]}, {"x": [1, 0]}, {"resamples": 10}, "resamples must be an int of at least 100"),
    ({"x": [1, 0]}, {"x": [1, 0]}, {"level": 1.0}, "level must be a number strictly between 0 and 1"),
])
def test_bad_inputs_name_the_argument(a, b, kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(a, b, **kwargs)


def test_non_mappings_are_refused():
    with pytest.raises(TypeError, match="a and b must map each task"):
        paired_bootstrap([1, 0], [1, 0])


def test_describe_says_ahead_behind_or_tied_with_the_interval():
    from lsedu.stats import describe

    mk = lambda diff, low, high: PairedDifference(diff, low, high, 0.95, 1000, 100, 1)  # noqa: E731
    assert describe(mk(0.021, 0.008, 0.034), "the best single fine-tune") == \
        "ahead of the best single fine-tune by 2.1 points (95% interval +0.8 to +3.4)"
    assert describe(mk(-0.021, -0.034, -0.008), "b") == "behind b by 2.1 points (95% interval -3.4 to -0.8)"
    assert describe(mk(0.004, -0.009, 0.017), "b") == \
        "tied with b (difference +0.4 points, 95% interval -0.9 to +1.7)"
    assert describe(mk(0.015, -0.0004, 0.03), "b") == \
        "tied with b (difference +1.5 points, 95% interval -0.04 to +3.0)"  # never "-0.0"
    assert describe(mk(0.0, 0.0, 0.0), "b") == "tied with b (difference +0.0 points, 95% interval +0.0 to +0.0)"
    with pytest.raises(TypeError, match="PairedDifference"):
        describe("x", "b")
