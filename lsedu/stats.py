"""Paired statistics for comparing methods scored on the same test items.

Two merges of one set of fine-tunes are scored on the *same* test items, so
the items that are hard for one are mostly hard for the other. The
difference between their accuracies is therefore far less noisy than either
accuracy: its uncertainty comes only from the items on which they disagree.
:func:`paired_bootstrap` puts a confidence interval on that difference by
resampling the items (Efron & Tibshirani 1993, ch. 13, the percentile
interval), the way the case-study tables of notebooks 06 to 08 separate an
ordering from a tie.

The statistic is the one the tables report, the mean over tasks of each
task's accuracy, and it is resampled the way the data arose:

* the items of each task are resampled within that task (a stratified
  bootstrap: every task keeps its number of items), with the same draw for
  both methods, which is what makes it paired;
* when there are several fine-tune seeds, the seeds are resampled too, and
  the same items are drawn for every seed (a two-level bootstrap: seeds,
  then items), so the interval also covers how much the difference moves
  from one set of fine-tunes to another;
* several runs of one method on the same fine-tunes (DARE's drop seeds,
  trained localization's batch orders) enter as their mean per item.

numpy draws the resamples (a multinomial count per item), so one resample
costs one matrix product and 10,000 of them a fraction of a second.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedDifference:
    """The difference ``a - b`` of two methods' mean accuracy over tasks, with its bootstrap interval.

    ``diff``, ``low`` and ``high`` are fractions (0.012 is 1.2 points); the
    interval is the central ``level`` of ``resamples`` bootstrap values.
    :attr:`verdict` reads it: ``"a ahead"`` or ``"b ahead"`` when the
    interval excludes zero, ``"tie"`` otherwise.

    Explained in notebook 06 (06_case_language.ipynb), which reads every ordering of its table through it.
    """

    diff: float
    low: float
    high: float
    level: float
    resamples: int
    items: int
    seeds: int

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of zero."""
        return self.low > 0 or self.high < 0

    @property
    def verdict(self) -> str:
        """``"a ahead"``, ``"b ahead"`` or ``"tie"``, from the interval."""
        return "a ahead" if self.low > 0 else "b ahead" if self.high < 0 else "tie"


def _as_scores(x, name: str, task: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"{name}[{task!r}] must be a non-empty [items] or [seeds, items] array of per-item "
                         f"scores, got shape {tuple(np.shape(x))}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}[{task!r}] holds a NaN or infinite score")
    return arr


def item_differences(a: Mapping[str, object], b: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Per task, the ``[seeds, items]`` array of per-item score differences ``a - b``, after checking both.

    ``a`` and ``b`` map each task to the per-item scores of one method
    (1 right, 0 wrong, or a mean over runs), as ``[items]`` for one
    fine-tune seed or ``[seeds, items]`` for several; both must have the
    same tasks, seeds and items, in the same order.

    Explained in notebook 06 (06_case_language.ipynb), through :func:`paired_bootstrap`.
    """
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        raise TypeError(f"a and b must map each task to per-item scores, got {type(a).__name__} and "
                        f"{type(b).__name__}")
    if not a:
        raise ValueError("a has no task: there is nothing to compare")
    if set(a) != set(b):
        raise ValueError(f"a and b must score the same tasks: a has {sorted(a)}, b has {sorted(b)}")
    out = {}
    for task in a:
        x, y = _as_scores(a[task], "a", task), _as_scores(b[task], "b", task)
        if x.shape != y.shape:
            raise ValueError(f"task {task!r}: a has [seeds, items] {list(x.shape)} but b has {list(y.shape)}; "
                             "a paired comparison needs the same items and seeds")
        out[task] = x - y
    seeds = {d.shape[0] for d in out.values()}
    if len(seeds) > 1:
        raise ValueError(f"every task must have the same number of fine-tune seeds, got {sorted(seeds)}")
    return out


def resampled_means(diffs: Mapping[str, np.ndarray], item_counts: Mapping[str, np.ndarray],
                    seed_counts: np.ndarray) -> np.ndarray:
    """``[resamples]`` values of the statistic, one per resample given as counts.

    ``item_counts[task]`` is ``[resamples, items]``: how often each item of
    the task is drawn (each row sums to the task's number of items);
    ``seed_counts`` is ``[resamples, seeds]``, likewise for the seeds. A
    resample's value is the mean over the drawn seeds of the mean over tasks
    of the drawn items' mean difference: for each task,
    ``item_counts @ diffs.T / items`` gives every resample's per-seed task
    mean at once.

    Explained in notebook 06 (06_case_language.ipynb), through :func:`paired_bootstrap`.
    """
    per_seed = sum(item_counts[t] @ d.T / d.shape[1] for t, d in diffs.items()) / len(diffs)  # [resamples, seeds]
    return (per_seed * seed_counts).sum(1) / seed_counts.sum(1)


@functools.lru_cache(maxsize=16)
def _counts(sizes: tuple[int, ...], n_seeds: int, resamples: int, seed: int):
    """The resamples as counts, drawn once per shape: every comparison of one table uses the same draws."""
    rng = np.random.default_rng(seed)
    items = tuple(rng.multinomial(n, np.full(n, 1 / n), size=resamples) for n in sizes)
    seeds = (rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=resamples) if n_seeds > 1
             else np.ones((resamples, 1)))
    for c in (*items, seeds):
        c.flags.writeable = False
    return items, seeds


def paired_bootstrap(a: Mapping[str, object], b: Mapping[str, object], *, resamples: int = 10_000,
                     level: float = 0.95, seed: int = 0) -> PairedDifference:
    """The difference of mean accuracy over tasks, ``a - b``, with a paired bootstrap interval.

    With per-item differences :math:`d_{s,t,i}` (seed ``s``, task ``t``,
    item ``i`` of :math:`n_t`), the statistic is
    :math:`\\bar d = \\frac1S \\sum_s \\frac1T \\sum_t \\frac1{n_t} \\sum_i d_{s,t,i}`,
    the difference of the tables' ``average`` columns. Each resample draws
    :math:`S` seeds with replacement, and for every task :math:`n_t` of its
    items with replacement (the same items for both methods and every
    seed), and recomputes :math:`\\bar d`; the interval is the central
    ``level`` of the ``resamples`` values (the percentile interval). With one
    seed only the items are resampled.

    ``a`` and ``b``: see :func:`item_differences`. ``seed`` fixes the
    resamples, so the same inputs always give the same interval.

    Explained in notebook 06 (06_case_language.ipynb), which reads every ordering of its table through it.
    """
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ValueError(f"resamples must be an int of at least 100, got {resamples!r}")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level must be a number strictly between 0 and 1, got {level!r}")
    diffs = item_differences(a, b)
    n_seeds = next(iter(diffs.values())).shape[0]
    sizes = tuple(d.shape[1] for d in diffs.values())
    counts, seed_counts = _counts(sizes, n_seeds, resamples, seed)
    values = resampled_means(diffs, dict(zip(diffs, counts)), seed_counts)
    observed = float(np.mean([d.mean(1) for d in diffs.values()], axis=0).mean())
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return PairedDifference(diff=observed, low=float(low), high=float(high), level=float(level),
                            resamples=resamples, items=sum(d.shape[1] for d in diffs.values()), seeds=n_seeds)


def format_difference(d: PairedDifference, digits: int = 1) -> str:
    """``"+1.2 [+0.4, +2.0]"``: the difference and its interval in points (never "-0.0", as :func:`format_interval`).

    Explained in notebook 06 (06_case_language.ipynb).
    """
    if not isinstance(d, PairedDifference):
        raise TypeError(f"d must be a PairedDifference, got {type(d).__name__}")
    if any(math.isnan(v) for v in (d.diff, d.low, d.high)):
        return "n/a"
    return f"{_points(d.diff, digits)} {format_interval(d, digits)}"


def format_interval(d: PairedDifference, digits: int = 1) -> str:
    """``"[+0.4, +2.0]"``: the interval in points (never "-0.0": a small endpoint gets more digits).

    Explained in notebook 06 (06_case_language.ipynb).
    """
    if not isinstance(d, PairedDifference):
        raise TypeError(f"d must be a PairedDifference, got {type(d).__name__}")
    return f"[{_points(d.low, digits)}, {_points(d.high, digits)}]"


def _points(x: float, digits: int) -> str:
    """``x`` in signed points, with more digits where ``digits`` would round a non-zero value to 0 ("-0.0").

    An exact zero, negative zero included, is "+0.0".
    """
    if x == 0:
        return f"{0.0:+.{digits}f}"
    for k in range(digits, digits + 3):
        if round(100 * x, k) != 0:
            break
    return f"{100 * x:+.{k}f}"


def describe(d: PairedDifference, other: str, digits: int = 1) -> str:
    """The comparison ``a - b`` in words, as the prose states it, with ``other`` naming ``b``.

    ``"ahead of the best single fine-tune by 2.1 points (95% interval +0.8 to +3.4)"``,
    ``"behind ... by ..."`` or ``"tied with ... (difference +0.4 points, 95% interval -0.9 to +1.7)"``:
    the words follow the interval, never the sign of the difference alone.

    Explained in notebook 02 (02_model_soups.ipynb).
    """
    if not isinstance(d, PairedDifference):
        raise TypeError(f"d must be a PairedDifference, got {type(d).__name__}")
    interval = f"{100 * d.level:.0f}% interval {_points(d.low, digits)} to {_points(d.high, digits)}"
    if d.verdict == "tie":
        return f"tied with {other} (difference {100 * d.diff:+.{digits}f} points, {interval})"
    side = "ahead of" if d.verdict == "a ahead" else "behind"
    return f"{side} {other} by {abs(100 * d.diff):.{digits}f} points ({interval})"
