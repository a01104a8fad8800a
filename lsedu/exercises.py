"""Checks for the exercises in notebooks 02-05: ``lsedu.exercises.check_<id>(your_function)``.

Each check runs the student's function on several small generated cases (edge
cases included: ties at a top-k threshold, zero entries, values that cancel to
exactly 0, a single model, overlapping and disjoint masks, all-zero vectors)
and compares its answer with lsedu's own implementation. On success it prints
one line, ``check_<id>: correct on N cases``; on the first mistake it raises
:class:`ExerciseFailed` with a message that names the case, the tensor and the
entry, e.g. ``on case 3 (two models) your soup differs from the element-wise
mean at 'layer.weight'[2, 5]: 0.75 vs 0.5``. It also reports a function that
raises, returns the wrong type, names, shape or dtype, or changes its inputs.

``hidden=True`` runs other seeds and more cases: the grading run of
``lsedu grade`` calls it (book/teaching.md explains the workflow).

=====================  ====================================================  ========
exercise id            the student writes                                     notebook
=====================  ====================================================  ========
``uniform_soup``       ``f(models) -> dict``, the element-wise mean           02
``greedy_soup``        ``f(models, val_accuracy) -> list[int]``               02
``paired_bootstrap``   ``f(a, b, resamples, rng) -> (diff, low, high)``       02
``task_vector``        ``f(pretrained, finetuned) -> dict``, ft - pre         03
``pick_lambda``        ``f(grid, val_score, test_score) -> float``            03
``elect_sign``         ``f(trimmed) -> dict`` of -1/0/+1                      04
``disjoint_mean``      ``f(trimmed, signs) -> dict``                          04
``dare``               ``f(task_vector, p, generator) -> dict``               04
``localize_dataless``  ``f(task_vector, density) -> dict`` of bool masks      05
``stitch``             ``f(pretrained, task_vectors, masks) -> dict``         05
``overlap_prediction`` an answer ``"a+b"``, checked against the masks         05
=====================  ====================================================  ========
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch

from .analysis import mask_overlap
from .localize_stitch import localize_dataless, stitch
from .soups import greedy_soup, uniform_soup
from .stats import paired_bootstrap
from .ties import disjoint_mean, elect_sign
from .topk import count_for_density

#: Seeds of the random cases: the visible check and the hidden one never share one.
VISIBLE_SEED, HIDDEN_SEED = 0, 1000


class ExerciseFailed(AssertionError):
    """A check found a mistake; the message says on which case, tensor and entry.

    Not called in a notebook: every ``check_*`` of notebooks 02 to 05 raises it, starting with notebook 02
    (02_model_soups.ipynb).
    """


@dataclass
class Case:
    """One input of a check: ``label`` says what it tests, ``args`` are passed to the student's function.

    Not called in a notebook: every ``check_*`` of notebooks 02 to 05 describes its inputs with it, starting
    with notebook 02 (02_model_soups.ipynb).
    """

    number: int
    label: str
    args: tuple
    names: tuple[str, ...]  # the argument names, to say which input was modified

    def __str__(self) -> str:
        return f"case {self.number} ({self.label})"


# --- helpers shared by every check ---------------------------------------------------------------


def _fail(msg: str):
    raise ExerciseFailed(msg)


def _numbered(cases: list[tuple[str, tuple]], names: tuple[str, ...]) -> list[Case]:
    return [Case(i + 1, label, args, names) for i, (label, args) in enumerate(cases)]


def _done(exercise: str, n: int) -> None:
    print(f"check_{exercise}: correct on {n} case{'s' if n != 1 else ''}")


def _require_callable(student, exercise: str) -> None:
    if not callable(student):
        _fail(f"check_{exercise} expects your function itself (e.g. check_{exercise}(my_{exercise})), "
              f"got a {type(student).__name__}")


def _cases(student, exercise: str, build, hidden: bool, n_visible: int, n_hidden: int, argnames) -> list:
    """The numbered cases of ``exercise`` (``build(seed, n)``, visible or hidden), once ``student`` is a function."""
    _require_callable(student, exercise)
    return _numbered(build(HIDDEN_SEED if hidden else VISIBLE_SEED, n_hidden if hidden else n_visible), argnames)


def _snapshot(x):
    """A deep copy of the tensors inside lists, tuples and dicts (the rest is kept as is)."""
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, Mapping):
        return {k: _snapshot(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_snapshot(v) for v in x]
    return x


def _find_change(before, after, path: str) -> str | None:
    """The path of the first tensor (or container) of ``after`` that differs from ``before``."""
    if isinstance(before, torch.Tensor):
        same = (isinstance(after, torch.Tensor) and after.shape == before.shape and after.dtype == before.dtype
                and torch.equal(after, before))
        return None if same else path
    if isinstance(before, np.ndarray):
        same = isinstance(after, np.ndarray) and after.shape == before.shape and np.array_equal(after, before)
        return None if same else path
    if isinstance(before, Mapping):
        if not isinstance(after, Mapping) or list(after.keys()) != list(before.keys()):
            return f"{path} (its keys)"
        for k in before:
            found = _find_change(before[k], after[k], f"{path}[{k!r}]")
            if found:
                return found
        return None
    if isinstance(before, list):
        if len(after) != len(before):
            return f"{path} (its length)"
        for i, (b, a) in enumerate(zip(before, after)):
            found = _find_change(b, a, f"{path}[{i}]")
            if found:
                return found
    return None


def _call(student, case: Case):
    """Run the student's function on a case; report an exception or a modified input as a failure."""
    before = [_snapshot(a) for a in case.args]
    try:
        out = student(*case.args)
    except ExerciseFailed:
        raise
    except NotImplementedError as e:
        raise ExerciseFailed(f"on {case} your function raises NotImplementedError: replace the "
                             "`raise NotImplementedError(...)` line with your solution") from e
    except Exception as e:  # the student's bug, reported with the case it happened on
        raise ExerciseFailed(f"on {case} your function raised {type(e).__name__}: {e}") from e
    for name, b, a in zip(case.names, before, case.args):
        where = _find_change(b, a, name)
        if where:
            _fail(f"on {case} your function modified its input {where}; it must leave its inputs "
                  "unchanged and return new tensors")
    return out


def _where(name: str, flat: int, shape) -> str:
    """``'w'[2, 5]`` for the flat index ``flat`` of tensor ``name``."""
    if len(shape) == 0:
        return f"{name!r} (a 0-d tensor)"
    idx = []
    for size in reversed(shape):
        idx.append(flat % size)
        flat //= size
    return f"{name!r}[{', '.join(str(i) for i in reversed(idx))}]"


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _signed(x: float) -> str:
    return "0" if x == 0 else f"{x:+.6g}"


def _check_tensor_dict(out, like: Mapping[str, torch.Tensor], case: Case, what: str, *,
                       dtype: torch.dtype | str | None = "same") -> None:
    """``out`` is a mapping with the names and shapes of ``like``; dtypes as ``dtype`` says.

    ``dtype="same"``: each tensor's dtype equals ``like``'s; ``"floating"``: any floating dtype;
    a ``torch.dtype``: exactly that one.
    """
    if not isinstance(out, Mapping):
        _fail(f"on {case} your function returned a {type(out).__name__}; {what} should be a dict of "
              "name -> tensor")
    missing = [n for n in like if n not in out]
    extra = [n for n in out if n not in like]
    if missing or extra:
        _fail(f"on {case} the names of your {what} are wrong: missing {missing}, unexpected {extra}")
    for n, ref in like.items():
        t = out[n]
        if not isinstance(t, torch.Tensor):
            _fail(f"on {case} your {what}[{n!r}] is a {type(t).__name__}, not a torch.Tensor")
        if t.shape != ref.shape:
            _fail(f"on {case} your {what}[{n!r}] has shape {tuple(t.shape)}, expected {tuple(ref.shape)}")
        if dtype == "same" and t.dtype != ref.dtype:
            _fail(f"on {case} your {what}[{n!r}] has dtype {t.dtype}, expected {ref.dtype} (the dtype of the input)")
        if dtype == "floating" and not t.is_floating_point():
            _fail(f"on {case} your {what}[{n!r}] has dtype {t.dtype}; it should be a floating-point tensor")
        if isinstance(dtype, torch.dtype) and t.dtype != dtype:
            _fail(f"on {case} your {what}[{n!r}] has dtype {t.dtype}, expected {dtype}")


def _compare(out, expected: Mapping[str, torch.Tensor], case: Case, what: str, reference: str, *,
             detail: Callable[[str, int], str] | None = None, dtype="same", atol=1e-6, rtol=1e-5) -> None:
    """Fail at the first entry where ``out`` differs from ``expected``, naming the tensor and index."""
    _check_tensor_dict(out, expected, case, what, dtype=dtype)
    for n, ref in expected.items():
        got = out[n].detach().double().reshape(-1)
        want = ref.double().reshape(-1)
        bad = ~torch.isclose(got, want, rtol=rtol, atol=atol)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0])
            extra = f" ({detail(n, i)})" if detail else ""
            _fail(f"on {case} your {what} differs from {reference} at {_where(n, i, ref.shape)}: "
                  f"{_fmt(float(got[i]))} vs {_fmt(float(want[i]))}{extra}")


def _quarters(shape, g: torch.Generator, zeros: float = 0.0, dtype=torch.float32) -> torch.Tensor:
    """Random multiples of 1/4 in [-2, 2] (exact in float: sums and signs do not depend on the order),
    with a fraction ``zeros`` of entries set to 0."""
    t = torch.randint(-8, 9, shape, generator=g).to(dtype) / 4
    if zeros:
        t = torch.where(torch.rand(shape, generator=g) < zeros, torch.zeros((), dtype=dtype), t)
    return t


def _randn(shapes: Mapping[str, tuple], g: torch.Generator, dtype=torch.float32) -> dict[str, torch.Tensor]:
    return {n: torch.randn(s, generator=g, dtype=dtype) for n, s in shapes.items()}


_SHAPES = [
    {"w": (2, 3), "b": (3,)},
    {"layer.weight": (3, 6), "layer.bias": (3,)},
    {"enc.0.w": (4, 3), "enc.0.b": (3,), "scale": ()},
    {"conv.weight": (2, 2, 3, 3), "fc.weight": (5, 4), "fc.bias": (5,)},
]


# --- notebook 02: model soups --------------------------------------------------------------------


def _soup_cases(seed: int, extra: int) -> list[tuple[str, tuple]]:
    g = torch.Generator().manual_seed(seed)
    a = _randn(_SHAPES[1], g)
    cases = [
        ("a single model", ([_randn(_SHAPES[0], g)],)),
        ("two models", ([a, _randn(_SHAPES[1], g)],)),
        ("three models, with a 0-d tensor", ([_randn(_SHAPES[2], g) for _ in range(3)],)),
        ("two models whose values cancel: the mean is 0", ([a, {n: -t for n, t in a.items()}],)),
        ("four float64 models", ([_randn(_SHAPES[3], g, torch.float64) for _ in range(4)],)),
    ]
    for j in range(extra):
        n = int(torch.randint(2, 7, (), generator=g))
        shapes = _SHAPES[j % len(_SHAPES)]
        cases.append((f"{n} random models", ([_randn(shapes, g) for _ in range(n)],)))
    return cases


def check_uniform_soup(student, *, hidden: bool = False) -> None:
    """Check ``student(models) -> dict``: the element-wise mean of the models' tensors (notebook 02).

    The inputs must stay unchanged and each tensor keeps its dtype.

    Explained in notebook 02 (02_model_soups.ipynb).
    """
    cases = _cases(student, "uniform_soup", _soup_cases, hidden, 2, 6, ("models",))
    for case in cases:
        models = case.args[0]
        expected = uniform_soup(models)
        out = _call(student, case)
        _compare(out, expected, case, "soup", "the element-wise mean",
                 detail=lambda n, i: "the models hold " + ", ".join(_fmt(float(m[n].reshape(-1)[i])) for m in models))
    _done("uniform_soup", len(cases))


class _SoupScores:
    """``val_accuracy`` for greedy-soup cases: the score of a soup depends on which models it averages.

    Every model carries a one-hot tensor ``"id"``, so a uniform average of a set S of models has
    ``id = 1/|S|`` on S and 0 elsewhere: the scorer reads S back and looks its score up. Anything
    that is not a uniform average of some of the models (a sum, a weighted average) is reported.
    """

    def __init__(self, n: int, score_of: Callable[[frozenset], float], case: Case | None = None):
        self.n, self.score_of, self.case = n, score_of, case

    def __call__(self, state_dict) -> float:
        if not isinstance(state_dict, Mapping) or "id" not in state_dict:
            self._misuse(f"val_accuracy was called with a {type(state_dict).__name__} that is not a state dict of "
                         "the models (it lacks their tensor 'id')")
        ident = torch.as_tensor(state_dict["id"]).detach().double().reshape(-1)
        members = frozenset(int(i) for i in torch.nonzero(ident.abs() > 1e-6).reshape(-1))
        if ident.numel() != self.n or not members or not torch.allclose(
                ident[sorted(members)], torch.full((len(members),), 1 / len(members), dtype=torch.float64),
                atol=1e-5):
            weights = ", ".join(f"{_fmt(float(ident[i]))} on model {i}" for i in sorted(members))
            self._misuse(f"val_accuracy was given weights that are not a uniform average of models ({weights}); "
                         "a soup is the plain mean of its ingredients")
        return self.score_of(members)

    def _misuse(self, msg: str):
        _fail(f"on {self.case}: {msg}" if self.case else msg)


def _table_scores(individual: list[float], table: Mapping[tuple, float]) -> Callable[[frozenset], float]:
    """Scores of soups: ``individual`` for one model, ``table`` for listed sets, and otherwise a bit
    worse than the set's best member (so that unlisted soups never help)."""
    table = {frozenset(k): v for k, v in table.items()}

    def score(s: frozenset) -> float:
        if len(s) == 1:
            return individual[next(iter(s))]
        return table.get(s, round(max(individual[i] for i in s) - 0.05, 4))
    return score


def _hashed_scores(seed: int, n: int) -> Callable[[frozenset], float]:
    """Random scores in {0.5, 0.6, ..., 0.9} (ties are common), fixed per set of models."""
    def score(s: frozenset) -> float:
        return random.Random(f"{seed}:{n}:{sorted(s)}").randint(5, 9) / 10
    return score


def _greedy_cases(seed: int, extra: int) -> list[tuple[str, int, Callable]]:
    cases = [
        ("a single model", 1, _table_scores([0.7], {})),
        ("the best model is not the first", 3, _table_scores([0.5, 0.9, 0.7], {(1, 2): 0.95})),
        ("two models tie on their own scores: the sort keeps input order", 4,
         _table_scores([0.6, 0.8, 0.8, 0.7], {(1, 2): 0.85, (0, 1, 2): 0.9})),
        ("a soup that ties the current soup does not add the model", 3,
         _table_scores([0.7, 0.6, 0.5], {(0, 1): 0.7, (0, 2): 0.75})),
        ("every model improves the soup", 4,
         _table_scores([0.1, 0.2, 0.3, 0.4], {(2, 3): 0.7, (1, 2, 3): 0.8, (0, 1, 2, 3): 0.9})),
        ("a model that does not help is skipped and later ones are still tried", 5,
         _table_scores([0.9, 0.85, 0.8, 0.75, 0.7], {(0, 1): 0.88, (0, 2): 0.92, (0, 2, 3): 0.91, (0, 2, 4): 0.93})),
    ]
    rng = random.Random(seed)
    for j in range(extra):
        n = rng.randint(2, 6)
        cases.append((f"{n} models with random scores", n, _hashed_scores(seed * 100 + j, n)))
    return cases


def _soup_models(n: int, g: torch.Generator) -> list[dict[str, torch.Tensor]]:
    models = [_randn(_SHAPES[0], g) for _ in range(n)]
    for i, m in enumerate(models):
        m["id"] = torch.nn.functional.one_hot(torch.tensor(i), n).float()
    return models


def _int_list(out, case: Case, what: str) -> list[int]:
    if not isinstance(out, (list, tuple)) or not all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in out):
        kind = type(out).__name__ if not isinstance(out, (list, tuple)) else "a list with non-int items"
        _fail(f"on {case} your function returned {kind}; {what}")
    return [int(i) for i in out]


def check_greedy_soup(student, *, hidden: bool = False) -> None:
    """Check ``student(models, val_accuracy) -> list[int]``: the greedy soup's ingredients (notebook 02).

    The indices kept, in the order added: sort by individual score (best first, stable), start with
    the best, add the next model if the soup's score rises *strictly*. ``val_accuracy`` here reads
    back which models a soup averages, so only uniform averages of the models may be scored.

    Explained in notebook 02 (02_model_soups.ipynb).
    """
    _require_callable(student, "greedy_soup")
    seed = HIDDEN_SEED if hidden else VISIBLE_SEED
    g = torch.Generator().manual_seed(seed)
    specs = _greedy_cases(seed, 6 if hidden else 2)
    cases = []
    for i, (label, n, score_of) in enumerate(specs):
        case = Case(i + 1, label, (), ("models", "val_accuracy"))
        case.args = (_soup_models(n, g), _SoupScores(n, score_of, case))
        cases.append(case)
    for case, (_, n, score_of) in zip(cases, specs):
        models = case.args[0]
        expected = greedy_soup(models, _SoupScores(n, score_of)).ingredients
        out = _int_list(_call(student, case), case, "return the list of indices kept, in the order added")
        if out != expected:
            individual = [score_of(frozenset([i])) for i in range(n)]
            _fail(f"on {case} your soup keeps models {out} (in that order) but the greedy rule keeps "
                  f"{expected}; the models' own scores are {individual}")
    _done("greedy_soup", len(cases))


def _bootstrap_cases(seed: int, extra: int) -> list[tuple[str, tuple]]:
    rng = np.random.default_rng(seed)

    def pair(n, p_b, gain, loss=0.0):
        """b right with chance p_b; a right where b is, except on ``loss`` of b's items, plus ``gain`` of b's misses."""
        b = rng.random(n) < p_b
        a = b.copy()
        a[b & (rng.random(n) < loss)] = False
        a[~b & (rng.random(n) < gain)] = True
        return a.astype(float), b.astype(float)

    same = (rng.random(150) < 0.7).astype(float)
    cases = [
        ("two methods right on the same items: the difference and its interval are 0", (same, same.copy())),
        ("a right wherever b is, and on some of b's misses: a is ahead", pair(400, 0.7, 0.3)),
        ("methods that agree on most items: pairing makes the interval narrow", pair(500, 0.8, 0.08, 0.05)),
        ("b ahead of a: a negative difference", pair(300, 0.6, 0.05, 0.15)),
        ("40 items: a wide interval", pair(40, 0.5, 0.3, 0.2)),
    ]
    for j in range(extra):
        n = int(rng.integers(30, 800))
        cases.append((f"random pair of methods on {n} items", pair(n, rng.uniform(0.3, 0.9), rng.uniform(0, 0.3),
                                                                     rng.uniform(0, 0.3))))
    return cases


def _is_number(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, np.ndarray):
        return v.size == 1
    if isinstance(v, torch.Tensor):
        return v.numel() == 1
    return isinstance(v, numbers.Real)


def _three_numbers(out, case: Case) -> tuple[float, float, float]:
    if not isinstance(out, (tuple, list)) or len(out) != 3 or not all(_is_number(v) for v in out):
        kind = type(out).__name__ if not isinstance(out, (tuple, list)) else f"a {type(out).__name__} of {len(out)}"
        _fail(f"on {case} your function returned {kind}; return three numbers (difference, low, high)")
    return tuple(float(v) for v in out)


def check_paired_bootstrap(student, *, hidden: bool = False) -> None:
    """Check ``student(a, b, resamples, rng) -> (diff, low, high)``: a paired bootstrap interval (notebook 02).

    ``a`` and ``b`` are 0/1 arrays, two methods' results on the same items; ``diff`` must be
    ``mean(a) - mean(b)`` and ``(low, high)`` the central 95% of the differences over ``resamples``
    resamples of the items, drawn with replacement from ``rng`` (a ``numpy.random.Generator``), the
    same items for both methods. The endpoints are random, so they are compared with
    :func:`lsedu.stats.paired_bootstrap` on many more resamples, within 7% of the interval's width
    plus one step of ``1 / len(a)`` (several times the resampling noise, and less than half of what a
    90% interval or unpaired draws would be off by). Every random number must come from ``rng`` (its
    state must move), and the same seed must give the same answer.

    Explained in notebook 02 (02_model_soups.ipynb).
    """
    cases = _cases(student, "paired_bootstrap", _bootstrap_cases, hidden, 0, 5, ("a", "b", "resamples", "rng"))
    seed = HIDDEN_SEED if hidden else VISIBLE_SEED
    resamples = 4000
    for case in cases:
        a, b = case.args
        rng = np.random.default_rng(seed + case.number)
        case.args = (a, b, resamples, rng)
        state = rng.bit_generator.state
        diff, low, high = _three_numbers(_call(student, case), case)
        if rng.bit_generator.state == state and not np.array_equal(a, b):  # identical inputs need no draws
            _fail(f"on {case} your function drew nothing from the rng argument: draw every random number from it "
                  "(e.g. rng.integers(0, n, size=n)), so that the same seed gives the same interval")
        truth = float(a.mean() - b.mean())
        ref = paired_bootstrap({"x": a}, {"x": b}, resamples=20_000, seed=seed + case.number)
        if not math.isclose(diff, truth, abs_tol=1e-9):
            hint = " (in points? return fractions)" if math.isclose(diff, 100 * truth, rel_tol=1e-6) else ""
            _fail(f"on {case} your difference is {_fmt(diff)} but mean(a) - mean(b) = {_fmt(truth)}{hint}")
        if not low <= high:
            _fail(f"on {case} your interval [{_fmt(low)}, {_fmt(high)}] has low > high")
        width = ref.high - ref.low
        tol = 0.07 * width + 1 / len(a)  # the resampled differences are multiples of 1/len(a)
        if width == 0:
            if low != 0 or high != 0:
                _fail(f"on {case} the two methods are right on exactly the same items, so when the same items "
                      f"are drawn for a and b every resample's difference is 0; your interval is "
                      f"[{_fmt(low)}, {_fmt(high)}]")
        elif abs(low - ref.low) > tol or abs(high - ref.high) > tol:
            ratio = (high - low) / width
            if ratio < 0.05:
                why = ("it has no width: draw the items *with* replacement (a permutation of all of them gives "
                       "the same mean every time)")
            elif ratio > 1.25:
                why = (f"it is {ratio:.1f} times as wide as the paired interval: draw the *same* items for a and b "
                       "and take the difference on each draw")
            elif ratio < 0.93:
                why = f"it is {ratio:.2f} times as wide: keep the central 95% (quantiles 0.025 and 0.975)"
            else:
                why = "it is not centred where the resampled differences are: take their 0.025 and 0.975 quantiles"
            _fail(f"on {case} your interval is [{_fmt(low)}, {_fmt(high)}] but a paired bootstrap gives about "
                  f"[{_fmt(ref.low)}, {_fmt(ref.high)}] (+- {_fmt(tol)}); {why}")
        rerun = (a, b, resamples, np.random.default_rng(seed + case.number))
        again = _call(student, Case(case.number, case.label, rerun, case.names))
        if _three_numbers(again, case) != (diff, low, high) and width > 0:
            _fail(f"on {case} two calls with generators seeded alike gave different intervals: draw every random "
                  "number from the rng argument (e.g. rng.integers(0, n, size=n))")
    _done("paired_bootstrap", len(cases))


# --- notebook 03: task arithmetic ----------------------------------------------------------------


def _task_vector_cases(seed: int, extra: int) -> list[tuple[str, tuple]]:
    g = torch.Generator().manual_seed(seed)
    pre = _randn(_SHAPES[2], g)
    cases = [
        ("one tensor", (_randn({"w": (3, 4)}, g), _randn({"w": (3, 4)}, g))),
        ("several tensors, one of them 0-d", (pre, _randn(_SHAPES[2], g))),
        ("the fine-tune equals the pretrained model: tau is all zeros", (pre, {n: t.clone() for n, t in pre.items()})),
        ("float64 tensors", (_randn(_SHAPES[0], g, torch.float64), _randn(_SHAPES[0], g, torch.float64))),
    ]
    for j in range(extra):
        shapes = _SHAPES[j % len(_SHAPES)]
        cases.append(("random models", (_randn(shapes, g), _randn(shapes, g))))
    return cases


def check_task_vector(student, *, hidden: bool = False) -> None:
    """Check ``student(pretrained, finetuned) -> dict``: ``tau = theta_ft - theta_pre`` per tensor (notebook 03).

    Explained in notebook 03 (03_task_arithmetic.ipynb).
    """
    cases = _cases(student, "task_vector", _task_vector_cases, hidden, 1, 5, ("pretrained", "finetuned"))
    for case in cases:
        pre, ft = case.args
        expected = {n: ft[n] - pre[n] for n in pre}
        out = _call(student, case)
        _compare(out, expected, case, "task vector", "finetuned - pretrained",
                 detail=lambda n, i: f"pretrained {_fmt(float(pre[n].reshape(-1)[i]))}, "
                                     f"finetuned {_fmt(float(ft[n].reshape(-1)[i]))}")
    _done("task_vector", len(cases))


class _Scores:
    """A ``val_score`` or ``test_score`` callable over a lambda grid that records its calls."""

    def __init__(self, name: str, scores: Mapping[float, float], case: Case | None = None):
        self.name, self.scores, self.case, self.calls = name, dict(scores), case, []

    def __call__(self, lam) -> float:
        self.calls.append(lam)
        try:
            return self.scores[float(lam)]
        except (KeyError, TypeError, ValueError):
            _fail(f"on {self.case} {self.name} was called with {lam!r}, which is not a lambda of the grid "
                  f"{list(self.scores)}")


def _lambda_cases(seed: int, extra: int) -> list[tuple[str, list, list, list]]:
    grid10 = [round(0.1 * i, 1) for i in range(1, 11)]
    val = [0.51, 0.62, 0.71, 0.83, 0.77, 0.72, 0.66, 0.63, 0.55, 0.52]
    test = [0.51, 0.56, 0.61, 0.72, 0.76, 0.81, 0.91, 0.62, 0.57, 0.52]
    cases = [
        ("one best lambda on validation; the test score peaks elsewhere", grid10, val, test),
        ("two lambdas tie on validation: the first in the grid wins", [0.0, 0.25, 0.5, 0.75, 1.0],
         [0.6, 0.8, 0.7, 0.8, 0.5], [0.6, 0.7, 0.7, 0.9, 0.5]),
        ("a grid of one lambda", [0.3], [0.42], [0.9]),
        ("the best lambda is the last one", [0.2, 0.4, 0.6, 0.8], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]),
        ("negative lambdas", [-1.0, -0.5, 0.0, 0.5], [0.3, 0.7, 0.5, 0.6], [0.3, 0.5, 0.8, 0.6]),
        ("an unsorted grid with a tie: first in the grid, not the smallest", [0.8, 0.2, 0.5],
         [0.9, 0.9, 0.4], [0.1, 0.95, 0.2]),
    ]
    rng = random.Random(seed)
    for _ in range(extra):
        n = rng.randint(2, 9)
        grid = sorted(rng.sample(grid10 + [1.5, 2.0, -0.5], n), key=lambda _: rng.random())
        cases.append((f"a random grid of {n}", grid, [rng.randint(3, 6) / 10 for _ in grid],
                      [rng.randint(3, 9) / 10 for _ in grid]))
    return cases


def check_pick_lambda(student, *, hidden: bool = False) -> None:
    """Check ``student(grid, val_score, test_score) -> float``: the lambda with the best validation score (notebook 03).

    The first lambda of ``grid`` wins a tie. ``test_score`` is a trap: a function that calls it fails,
    whatever it returns, because the test split must never influence a choice.

    Explained in notebook 03 (03_task_arithmetic.ipynb).
    """
    _require_callable(student, "pick_lambda")
    specs = _lambda_cases(HIDDEN_SEED if hidden else VISIBLE_SEED, 6 if hidden else 2)
    for i, (label, grid, val, test) in enumerate(specs):
        case = Case(i + 1, label, (), ("grid", "val_score", "test_score"))
        val_score = _Scores("val_score", zip(grid, val), case)
        test_score = _Scores("test_score", zip(grid, test), case)
        case.args = (list(grid), val_score, test_score)
        out = _call(student, case)
        if test_score.calls:
            _fail(f"on {case} your function called test_score (with lambda={test_score.calls[0]!r}); choose lambda "
                  "with val_score only: a choice made on the test split makes the test score meaningless")
        if not isinstance(out, numbers.Real) or isinstance(out, bool):
            _fail(f"on {case} your function returned a {type(out).__name__}; it should return the chosen lambda, "
                  "a float from the grid")
        best = max(val)
        expected = grid[val.index(best)]
        if float(out) not in grid:
            _fail(f"on {case} your function returned {out!r}, which is not a lambda of the grid {grid}"
                  + (" (did you return a score?)" if float(out) in val + test else ""))
        if float(out) != expected:
            why = (" several lambdas share the best validation score and the first in the grid should win;"
                   if val.count(best) > 1 else "")
            _fail(f"on {case} your function picked lambda={out!r} with validation score "
                  f"{val[grid.index(float(out))]}, but lambda={expected!r} scores {best} on validation;{why} "
                  f"grid {grid}, validation scores {val}")
    _done("pick_lambda", len(specs))


# --- notebook 04: TIES and DARE ------------------------------------------------------------------


def _ties_cases(seed: int, extra: int) -> list[tuple[str, list]]:
    """Lists of trimmed task vectors with values in multiples of 1/4, so every sum is exact."""
    g = torch.Generator().manual_seed(seed)
    t = torch.tensor
    mass = [{"w": t([2.0, -0.5, 1.0, 0.0, 0.25]), "b": t([[1.0, -0.25], [0.0, 0.5]])},
            {"w": t([-0.25, 1.0, -1.0, 0.0, 0.0]), "b": t([[-0.5, -0.25], [0.0, 0.0]])},
            {"w": t([-0.25, 1.0, 0.0, 0.0, -0.5]), "b": t([[-0.5, 0.0], [0.0, 0.0]])}]
    cancel = [{"w": t([0.5, -1.0, 0.75, 2.0]), "v": t([[0.25, -0.25, 1.5]])},
              {"w": t([0.25, 1.0, -0.25, -1.5]), "v": t([[-0.25, 0.25, -0.5]])},
              {"w": t([-0.75, 0.0, -0.5, -0.5]), "v": t([[0.0, 0.0, -1.0]])}]
    cases = [
        ("one large value against two small ones of the other sign: mass, not count", mass),
        ("values that cancel to exactly 0", cancel),
        ("a single task vector", [{n: _quarters(s, g, zeros=0.3) for n, s in _SHAPES[0].items()}]),
        ("all-zero task vectors", [{n: torch.zeros(s) for n, s in _SHAPES[1].items()} for _ in range(2)]),
        ("four trimmed task vectors, several tensors", [{n: _quarters(s, g, zeros=0.6) for n, s in _SHAPES[3].items()}
                                                         for _ in range(4)]),
    ]
    for j in range(extra):
        n = int(torch.randint(2, 7, (), generator=g))
        shapes = _SHAPES[j % len(_SHAPES)]
        cases.append((f"{n} random trimmed task vectors",
                      [{k: _quarters(s, g, zeros=0.5) for k, s in shapes.items()} for _ in range(n)]))
    return cases


def _values_at(tvs, n: str, i: int) -> str:
    return ", ".join(_signed(float(tv[n].reshape(-1)[i])) for tv in tvs)


def check_elect_sign(student, *, hidden: bool = False) -> None:
    """Check ``student(trimmed) -> dict``: the TIES election ``gamma = sign(sum_t tau_hat_t)`` (notebook 04).

    Float tensors of -1, 0, +1: the sign of the total mass (not of a vote count), 0 where the values
    sum to exactly 0.

    Explained in notebook 04 (04_interference_ties_dare.ipynb).
    """
    _require_callable(student, "elect_sign")
    specs = _ties_cases(HIDDEN_SEED if hidden else VISIBLE_SEED, 6 if hidden else 2)
    cases = _numbered([(label, (tvs,)) for label, tvs in specs], ("trimmed",))
    for case in cases:
        tvs = case.args[0]
        expected = elect_sign(tvs)
        out = _call(student, case)
        _check_tensor_dict(out, expected, case, "election", dtype="floating")
        for n, ref in expected.items():
            got = out[n].detach().reshape(-1)
            odd = ~((got == 1) | (got == 0) | (got == -1))
            if bool(odd.any()):
                i = int(torch.nonzero(odd)[0])
                _fail(f"on {case} your election holds {_fmt(float(got[i]))} at {_where(n, i, ref.shape)}; "
                      "an elected sign is -1, 0 or +1")
            bad = got != ref.reshape(-1)
            if bool(bad.any()):
                i = int(torch.nonzero(bad)[0])
                total = sum(float(tv[n].reshape(-1)[i]) for tv in tvs)
                _fail(f"on {case} your election returns {_signed(float(got[i]))} where the values sum to "
                      f"{_signed(total)} at {_where(n, i, ref.shape)} (the values there: {_values_at(tvs, n, i)})")
    _done("elect_sign", len(cases))


def _disjoint_cases(seed: int, extra: int) -> list[tuple[str, tuple]]:
    cases = []
    for label, tvs in _ties_cases(seed, extra):
        cases.append((label + "; signs elected from them", (tvs, elect_sign(tvs))))
    t = torch.tensor
    given = [{"w": t([1.0, -0.5, 0.0, -0.25]), "b": t([0.5, 0.0])},
             {"w": t([0.5, -1.0, 0.0, 0.75]), "b": t([-0.25, 0.0])}]
    signs = {"w": t([1.0, 1.0, 1.0, -1.0]), "b": t([-1.0, 0.0])}
    cases.insert(2, ("signs passed in that are not the elected ones: use the signs given", (given, signs)))
    return cases


def check_disjoint_mean(student, *, hidden: bool = False) -> None:
    """Check ``student(trimmed, signs) -> dict``: the TIES disjoint mean (notebook 04).

    At each entry, the mean of the non-zero values whose sign equals ``signs``; 0 where none does.
    Zeros left by the trim must not count.

    Explained in notebook 04 (04_interference_ties_dare.ipynb).
    """
    cases = _cases(student, "disjoint_mean", _disjoint_cases, hidden, 2, 6, ("trimmed", "signs"))
    for case in cases:
        tvs, signs = case.args
        expected = dict(disjoint_mean(tvs, signs))
        out = _call(student, case)
        _compare(out, expected, case, "disjoint mean", "the mean of the agreeing non-zero values",
                 detail=lambda n, i: f"the values are {_values_at(tvs, n, i)} and the sign is "
                                     f"{_signed(float(signs[n].reshape(-1)[i]))}")
    _done("disjoint_mean", len(cases))


def _dare_cases(seed: int, extra: int) -> list[tuple[str, tuple]]:
    g = torch.Generator().manual_seed(seed)

    def tv(shapes, zeros=0.0, dtype=torch.float32):
        out = _randn(shapes, g, dtype)
        if zeros:
            out = {n: torch.where(torch.rand(t.shape, generator=g) < zeros, 0.0, t).to(dtype) for n, t in out.items()}
        return out

    big = {"w": (100, 120), "b": (120,), "scale": ()}
    cases = [
        ("p = 0 is the identity", (tv(_SHAPES[3]), 0.0)),
        ("p = 0.5, one large tensor", (tv({"w": (150, 100)}), 0.5)),
        ("p = 0.9, several tensors with zeros (zeros stay 0)", (tv(big, zeros=0.2), 0.9)),
        ("p = 0.1", (tv(big), 0.1)),
    ]
    ps = [0.99, 0.3, 0.7, 0.25, 0.6, 0.95]
    for j in range(extra):
        cases.append((f"p = {ps[j % len(ps)]}, random task vector" + (" (float64)" if j == 1 else ""),
                      (tv(big, zeros=0.1, dtype=torch.float64 if j == 1 else torch.float32), ps[j % len(ps)])))
    return cases


def _dare_run(student, case: Case, seed: int):
    tau, p = case.args
    return _call(student, Case(case.number, case.label, (tau, p, torch.Generator().manual_seed(seed)), case.names))


def _check_drops(out, tau, p: float, case: Case) -> None:
    """Every entry of ``out`` is 0 or ``x / (1 - p)``, and the dropped fraction of non-zero entries is near ``p``."""
    dropped = nonzero = 0
    for n, x in tau.items():
        got, x = out[n].detach().double().reshape(-1), x.double().reshape(-1)
        kept = x / (1 - p)
        ok = torch.isclose(got, kept, rtol=1e-5, atol=1e-7) | (got == 0)
        if bool((~ok).any()):
            i = int(torch.nonzero(~ok)[0])
            _fail(f"on {case} at {_where(n, i, tau[n].shape)} the value {_fmt(float(x[i]))} became "
                  f"{_fmt(float(got[i]))}{' (kept but not rescaled)' if float(got[i]) == float(x[i]) else ''}; "
                  "DARE either drops an entry (0) or keeps it rescaled by 1/(1 - p) = "
                  f"{_fmt(1 / (1 - p))}")
        dropped += int(((got == 0) & (x != 0)).sum())
        nonzero += int((x != 0).sum())
    frac = dropped / nonzero
    tol = 4.5 * math.sqrt(p * (1 - p) / nonzero) + 1 / nonzero
    if abs(frac - p) > tol:
        _fail(f"on {case} your function dropped {frac:.3f} of the {nonzero} non-zero entries; each entry "
              f"should be dropped with probability p = {p}, so about {p} of them (allowed: {p} +- {tol:.3f})")


def check_dare(student, *, hidden: bool = False) -> None:
    """Check ``student(task_vector, p, generator) -> dict``: DARE's drop and rescale (notebook 04), statistically.

    Every entry is either 0 (dropped) or ``x / (1 - p)``; zeros stay zero; the dropped fraction is
    close to ``p`` (within 4.5 standard deviations of a binomial); ``p = 0`` is the identity; the
    drops come from ``generator`` (the same seed gives the same drops, another seed other drops).

    Explained in notebook 04 (04_interference_ties_dare.ipynb).
    """
    _require_callable(student, "dare")
    seed = HIDDEN_SEED if hidden else VISIBLE_SEED
    cases = _numbered(_dare_cases(seed, 4 if hidden else 0), ("task_vector", "p", "generator"))
    for case in cases:
        tau, p = case.args
        out = _dare_run(student, case, seed + case.number)
        _check_tensor_dict(out, tau, case, "result")
        if p == 0 and not all(torch.equal(out[n], tau[n]) for n in tau):
            _fail(f"on {case} your function changed the task vector; with p = 0 nothing is dropped and "
                  "1/(1 - p) = 1, so DARE must return it unchanged")
        _check_drops(out, tau, p, case)
        again = _dare_run(student, case, seed + case.number)
        if not all(torch.equal(again[n], out[n]) for n in tau):
            _fail(f"on {case} two calls with generators seeded alike gave different drops: draw the random "
                  "numbers from the generator argument (e.g. torch.rand(..., generator=generator))")
        if 0 < p:
            other = _dare_run(student, case, seed + 10_000 + case.number)
            if all(torch.equal(other[n], out[n]) for n in tau):
                _fail(f"on {case} generators with different seeds gave the same drops: the drops must be random, "
                      "drawn from the generator argument")
    _done("dare", len(cases))


# --- notebook 05: Localize-and-Stitch ------------------------------------------------------------


def _localize_cases(seed: int, extra: int) -> list[tuple[str, tuple]]:
    g = torch.Generator().manual_seed(seed)
    t = torch.tensor
    cases = [
        ("one global top-k over all tensors, not one per tensor",
         ({"a": t([5.0, -4.0, 6.0, 3.5, 4.5, 7.0, 5.5, 3.0]), "b": t([[0.1, -0.2], [0.3, 0.05]])}, 0.5)),
        ("large negative entries: rank by magnitude, not by value",
         ({"w": t([0.5, -3.0, 1.0, -2.0, 0.25, 0.75]), "b": t([-1.5, 0.1])}, 0.25)),
        ("ties at the threshold: exactly k entries, the earliest of the tied ones",
         ({"w": t([3.0, 2.0, -2.0, 2.0, 1.0, 0.0]), "v": t([2.0, -2.0, 0.0, 0.0])}, 0.3)),
        ("ties across tensors: tensor order first, then position",
         ({"a": t([1.0, 0.5, -0.5]), "b": t([-0.5, 2.0, 0.0])}, 0.5)),
        ("random task vector, several tensors, density 0.1", (_randn(_SHAPES[3], g), 0.1)),
        ("density 1: every entry", (_randn(_SHAPES[0], g), 1.0)),
    ]
    for j in range(extra):
        if j == 0:
            zeros = {n: torch.zeros(s) for n, s in _SHAPES[2].items()}
            cases.append(("an all-zero task vector: every entry ties", (zeros, 0.2)))
            continue
        shapes = _SHAPES[j % len(_SHAPES)]
        tv = {n: _quarters(s, g, zeros=0.2) for n, s in shapes.items()}  # many ties
        cases.append((f"random task vector with many ties, density {0.1 * j:.1f}", (tv, round(0.1 * j, 1))))
    return cases


def check_localize_dataless(student, *, hidden: bool = False) -> None:
    """Check ``student(task_vector, density) -> dict`` of bool masks: dataless localization (notebook 05).

    The mask keeps the ``k = floor(density * N + 1/2)`` largest ``|tau|`` (half up, at least one:
    :func:`lsedu.topk.count_for_density`) over all tensors at once; among
    entries that tie at the threshold the earliest are kept (tensor order, then position), as
    :func:`lsedu.localize_dataless` does.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    cases = _cases(student, "localize_dataless", _localize_cases, hidden, 0, 5, ("task_vector", "density"))
    for case in cases:
        tau, density = case.args
        expected = localize_dataless(tau, density)
        out = _call(student, case)
        _check_tensor_dict(out, tau, case, "mask", dtype=torch.bool)
        n_all = sum(x.numel() for x in tau.values())
        k = count_for_density(n_all, density)
        kept = sum(int(out[n].sum()) for n in tau)
        if kept != k:
            _fail(f"on {case} your mask keeps {kept} entries; with density {density} over {n_all} entries it "
                  f"should keep exactly floor({density} * {n_all} + 1/2) = {k} (half up)"
                  + (" (when entries tie at the threshold, keep only the earliest ones)" if kept > k else ""))
        def only_in(a, b):
            return [(n, i) for n in tau for i in torch.nonzero(a[n].reshape(-1) & ~b[n].reshape(-1)).reshape(-1).tolist()]
        missed, extra = only_in(expected, out), only_in(out, expected)
        if missed:
            (n1, i1), (n2, i2) = missed[0], extra[0]
            a1, a2 = abs(float(tau[n1].reshape(-1)[i1])), abs(float(tau[n2].reshape(-1)[i2]))
            hint = (" They tie: among equal magnitudes keep the earliest (tensor order, then position)."
                    if a1 == a2 else "")
            _fail(f"on {case} your mask keeps {_where(n2, i2, tau[n2].shape)} (|tau| = {_fmt(a2)}) but leaves out "
                  f"{_where(n1, i1, tau[n1].shape)} (|tau| = {_fmt(a1)}).{hint}")
    _done("localize_dataless", len(cases))


def _stitch_cases(seed: int, extra: int) -> list[tuple[str, tuple]]:
    g = torch.Generator().manual_seed(seed)
    t = torch.tensor
    pre = {"w": t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), "b": t([0.5, -0.5, 0.0])}

    def taus(n, shapes=None):
        return [{k: _quarters(v.shape if shapes is None else shapes[k], g) for k, v in (shapes or pre).items()}
                for _ in range(n)]

    def masks(rows):
        return [{"w": t(r[0]), "b": t(r[1])} for r in rows]

    disjoint = masks([([[True, False, False], [False, True, False]], [True, False, False]),
                      ([[False, True, False], [False, False, True]], [False, True, False])])
    same = masks([([[True, True, False], [False, True, False]], [True, False, True])] * 2)
    partial = masks([([[True, True, True], [False, False, False]], [True, True, False]),
                     ([[True, True, False], [True, False, False]], [True, False, False]),
                     ([[True, False, False], [True, True, False]], [False, False, False])])
    cases = [
        ("two tasks, disjoint masks", (pre, taus(2), disjoint)),
        ("two tasks, identical masks: the task vectors are averaged", (pre, taus(2), same)),
        ("three tasks, overlapping masks, some entries in no mask", (pre, taus(3), partial)),
        ("a single task", (pre, taus(1), partial[:1])),
    ]
    shapes = _SHAPES[3]
    for j in range(extra + 1):
        n = int(torch.randint(2, 6, (), generator=g))
        base = _randn(shapes, g)
        tvs = [{k: _quarters(s, g) for k, s in shapes.items()} for _ in range(n)]
        ms = [{k: torch.rand(s, generator=g) < 0.4 for k, s in shapes.items()} for _ in range(n)]
        cases.append((f"{n} tasks, random masks", (base, tvs, ms)))
    return cases


def check_stitch(student, *, hidden: bool = False) -> None:
    """Check ``student(pretrained, task_vectors, masks) -> dict``: stitching (notebook 05).

    ``theta = theta_pre + sum_i (gamma_i / sum_j gamma_j) tau_i``: where masks overlap the task
    vectors are averaged, where one mask claims an entry its task vector is taken whole, and where
    none does the pretrained value stays. The inputs must stay unchanged.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    cases = _cases(student, "stitch", _stitch_cases, hidden, 1, 5, ("pretrained", "task_vectors", "masks"))
    for case in cases:
        pre, tvs, ms = case.args
        expected = stitch(pre, tvs, ms)
        out = _call(student, case)

        def detail(n, i):
            owners = [j for j, m in enumerate(ms) if bool(m[n].reshape(-1)[i])]
            claim = f"masks {owners} claim it" if owners else "no mask claims it"
            return f"{claim}; pretrained {_fmt(float(pre[n].reshape(-1)[i]))}, task vectors {_values_at(tvs, n, i)}"
        _compare(out, expected, case, "stitched model", "the stitching rule", detail=detail)
    _done("stitch", len(cases))


def check_overlap_prediction(answer, masks: Mapping[str, Mapping[str, torch.Tensor]], *,
                             pairs: Sequence[str] | None = None, hidden: bool = False) -> None:
    """Check a prediction ``answer = "a+b"``: the pair of tasks whose masks overlap most (notebook 05).

    ``masks`` maps a task name to its mask (a dict of bool tensors). ``pairs`` lists the candidate
    pairs (``"mnist+digits"``, ...); by default every pair of tasks in ``masks``. The overlap is the
    intersection over union (:func:`lsedu.mask_overlap`); the order of the names in a pair does not
    matter, and any pair that ties for the top is accepted. ``hidden`` changes nothing: the truth
    comes from the masks.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    if not isinstance(masks, Mapping) or len(masks) < 2:
        _fail("check_overlap_prediction needs masks as a dict {task name: mask} with at least two tasks, "
              f"got {type(masks).__name__}")
    names = list(masks)
    candidates = [tuple(p.split("+")) for p in pairs] if pairs is not None else list(combinations(names, 2))
    for c in candidates:
        if len(c) != 2 or c[0] not in masks or c[1] not in masks:
            _fail(f"the candidate pair {'+'.join(c)!r} does not name two tasks of {names}")

    def norm(pair):
        return frozenset(p.strip() for p in pair)

    shown = " or ".join(repr(f"{a}+{b}") for a, b in candidates)
    if not isinstance(answer, str):
        _fail(f"your answer is a {type(answer).__name__}; answer with a string, one of {shown}")
    parts = answer.split("+")
    if len(parts) != 2 or norm(parts) not in {norm(c) for c in candidates}:
        _fail(f"your answer {answer!r} is not one of the pairs {shown}; write two task names joined by '+'")
    overlap = mask_overlap([masks[n] for n in names])
    iou = {norm(c): float(overlap.iou[names.index(c[0]), names.index(c[1])]) for c in candidates}
    best = max(iou.values())
    if iou[norm(parts)] < best:
        table = ", ".join(f"{a}+{b}: {iou[norm((a, b))]:.3f}" for a, b in candidates)
        _fail(f"your prediction {answer!r} is not the pair that overlaps most; the intersection over union "
              f"of the masks is {table}. Look at the overlap table above and think about why.")
    _done("overlap_prediction", 1)


#: Every check, by exercise id (the id in a check cell's ``# EXERCISE <id> (<points> points)`` line).
CHECKS: dict[str, Callable[..., None]] = {
    "uniform_soup": check_uniform_soup,
    "greedy_soup": check_greedy_soup,
    "paired_bootstrap": check_paired_bootstrap,
    "task_vector": check_task_vector,
    "pick_lambda": check_pick_lambda,
    "elect_sign": check_elect_sign,
    "disjoint_mean": check_disjoint_mean,
    "dare": check_dare,
    "localize_dataless": check_localize_dataless,
    "stitch": check_stitch,
    "overlap_prediction": check_overlap_prediction,
}
