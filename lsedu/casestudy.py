"""Case studies: every merging method on one setup, in one table (the case-study notebooks 06 to 09).

The Localize-and-Stitch paper (He et al. 2025, arXiv 2408.13656, Tables 1-3)
compares merging methods on RoBERTa, CLIP and GPT2-XL. :func:`comparison_table`
runs the same comparison on any :class:`~lsedu.zoo.Setup`, laptop or paper
track:

1. fine-tune every task (``setup.finetune``, one config per seed, cached) and
   build the task vectors over the tensors a merge combines (``setup.merge_names()``);
2. pick each method's hyperparameters on the *validation* split (mean
   accuracy over the tasks) with :func:`grid_search`, which widens a grid
   whose best value sits at an edge: lambda of task arithmetic, density and
   lambda of TIES, lambda of DARE, the density of Localize-and-Stitch;
3. evaluate every method on the *test* split, and add the multi-task
   baseline (``setup.multitask``), which the paper does not report.

:func:`summarize` turns the per-run records into the table (mean and std over
seeds); :func:`pretty` formats it and :func:`plot_comparison` draws it. :func:`scaling_curve` merges 2, 3,
..., N tasks at a time (notebook 09, after Yadav et al. 2024, "What Matters
for Model Merging at Scale?", arXiv 2410.03617).

What is stochastic, and how it is reported: a fine-tune depends on its seed
(``CaseStudyConfig.finetune_seeds``), DARE on its drop seed and trained
localization on the order of its batches (``CaseStudyConfig.merge_seeds``).
Every row is a mean over the runs it has, with the standard deviation
(``ddof=1``) where there are at least two. Every run also keeps which test
examples it got right, so two rows compare *paired*:
:func:`paired_differences` and :func:`ordering_steps` give each difference
a 95% interval by bootstrap over the examples (and the fine-tune seeds),
:func:`lsedu.stats.paired_bootstrap`, and call it a tie unless the interval
excludes zero; :func:`verdict` puts one such comparison in words for the
prose, :func:`plot_differences` draws the intervals, and
:func:`scaling_differences` and :func:`scaling_verdict` do the same for a
point of the scaling curve.

Each row of each fine-tune seed is cached on its own, like fine-tunes
(``$LSEDU_CACHE``, kind ``casestudy``), keyed by the setup's identity, the
tasks, the fine-tune configs, the fields of :class:`CaseStudyConfig` the row
depends on (:data:`ROW_DEPENDS`) and the lsedu version. :func:`finetune_all`
trains (or reads back) every fine-tune first and :func:`run_rows` computes a
few rows at a time, so a notebook can spread a cold table over several cells.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import __version__, methods
from .analysis import storage
from .arithmetic import lambda_beyond, task_arithmetic
from .config import Config, boolean, checked, choice, integer, integers, number, numbers, optional
from .drop_rescale import dare_merge
from .localize_stitch import localize_trained, stitch, stitch_dataless
from .soups import uniform_soup
from .stats import PairedDifference, describe, format_interval, paired_bootstrap
from .task_vectors import TaskVector
from .ties import ties_merge
from .zoo.base import normalized_accuracy
from .zoo.cache import cached

#: Method keys, in the order of the table's rows: the three references, then the merge methods of the registry
#: (:mod:`lsedu.methods`), whose keys, labels and validation grids live there.
METHODS = ("pretrained", "finetuned", "multitask", *methods.labels())

#: Row labels of the methods (``finetuned`` gives one row per task plus the "individual" row).
LABELS = {
    "pretrained": "pretrained",
    "individual": "individual fine-tunes (each on its own task)",
    "multitask": "multi-task learning",
    **methods.labels(),
}

#: Methods whose result depends on a merge seed (DARE's drops, trained localization's batch order).
STOCHASTIC = ("dare", "stitch_trained")

_GRID = {m: methods.get(m).grid for m in ("task_arithmetic", "ties", "dare", "stitch_dataless")}
_SEEDS = integers(low=0)
_FRACTIONS = numbers(0, 1, low_open=True)


@dataclass(frozen=True)
class CaseStudyConfig(Config):
    """Every choice of a comparison, in one place (all of it goes into the cache keys).

    * ``finetune_seeds``: one fine-tune of every task per seed (seed 0 is the
      zoo's default fine-tune, so it is shared with the other notebooks);
      ``merge_seeds``: seeds of DARE's drops and of trained localization's
      batch order, run for every fine-tune seed.
    * Validation grids, by default the registry's (:mod:`lsedu.methods`):
      ``lambda_grid`` (task arithmetic and DARE), ``ties_densities`` x
      ``ties_lambdas`` (TIES, global trim as in the paper),
      ``stitch_densities`` (the mask density of Localize-and-Stitch; trained
      localization keeps the density chosen for the dataless masks).
      ``dare_p`` is DARE's drop rate (fixed, not searched).
    * Trained localization (:func:`lsedu.localize_trained`): the first
      ``loc_batches`` batches of ``loc_batch_size`` training examples,
      ``loc_epochs`` passes, one ``loc_optimizer`` step per batch at ``loc_lr``
      (Adam's step size does not depend on the gradients' scale; SGD's does, so
      its ``loc_lr`` has to be calibrated per model), L1 weight
      ``loc_l1``, logits starting at +-``loc_bias`` (the paper's 3 needs more
      steps than a notebook can afford before any entry changes sides: Adam
      moves a logit by about ``loc_lr`` a step); the mask keeps exactly the
      chosen density (``target_density``).
    * ``widen``: when validation's best value sits at the edge of its grid
      (the lowest or highest lambda, density), the search adds the next value
      beyond that edge and scores it, up to ``widen`` times per edge, and
      warns if the best is still at an edge (:func:`grid_search`). 0 keeps
      the grids as given. Each row reports how many configurations it scored.
    * ``eval_batch_size``: batch size of every evaluation (it changes speed only).
      ``max_val`` / ``max_test``: score on the first that many examples of each
      task's validation / test split (the splits are stored shuffled), or on
      all of it (None). For setups whose evaluation is slow on a CPU.
    * ``multitask``: train the multi-task baseline (``setup.multitask``).

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """

    finetune_seeds: tuple[int, ...] = checked((0,), _SEEDS)
    merge_seeds: tuple[int, ...] = checked((0, 1, 2), _SEEDS)
    lambda_grid: tuple[float, ...] = checked(_GRID["task_arithmetic"]["lam"],
                                             numbers(0, 10, low_open=True))
    ties_densities: tuple[float, ...] = checked(_GRID["ties"]["density"], _FRACTIONS)
    ties_lambdas: tuple[float, ...] = checked(_GRID["ties"]["lam"], numbers(0, 10, low_open=True))
    dare_p: float = checked(_GRID["dare"]["p"][0], number(0, 1, high_open=True))
    stitch_densities: tuple[float, ...] = checked(_GRID["stitch_dataless"]["density"], _FRACTIONS)
    loc_batches: int = checked(4, integer(low=1))
    loc_batch_size: int = checked(32, integer(low=1))
    loc_epochs: int = checked(5, integer(low=1))
    loc_optimizer: str = checked("adam", choice("adam", "sgd"))
    loc_lr: float = checked(0.1, number(0, low_open=True))
    loc_bias: float = checked(1.0, number(0, low_open=True))
    loc_l1: float = checked(1e-5, number(0))
    widen: int = checked(3, integer(low=0))
    eval_batch_size: int = checked(64, integer(low=1))
    max_val: int | None = checked(None, optional(integer(low=1)))
    max_test: int | None = checked(None, optional(integer(low=1)))
    multitask: bool = checked(True, boolean())

    def to_dict(self) -> dict:
        """The config as JSON values; ``max_val`` / ``max_test`` only when set (whole splits add nothing)."""
        d = super().to_dict()
        return {k: v for k, v in d.items() if not (k in ("max_val", "max_test") and v is None)}


# ----------------------------------------------------------------------------- small pieces


def check_tasks(setup, tasks) -> tuple[str, ...]:
    """``tasks`` (default: all of ``setup.tasks``) as a tuple; ValueError naming an unknown or repeated task.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    if tasks is None:
        return tuple(setup.tasks)
    if isinstance(tasks, str) or not isinstance(tasks, Sequence):
        raise TypeError(f"tasks must be a list of task names, got {tasks!r}")
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in setup.tasks]
    if unknown:
        raise ValueError(f"tasks {unknown} are not tasks of setup {setup.name!r} ({list(setup.tasks)})")
    if len(tasks) < 2 or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must name at least 2 distinct tasks to merge, got {list(tasks)}")
    return tasks


def delta_bytes(base: Mapping[str, torch.Tensor], body: Mapping[str, torch.Tensor], names: Sequence[str]) -> int:
    """Bytes to store ``body - base`` over ``names``: the smaller of dense and sparse (:func:`lsedu.storage`).

    Dense: every entry. Sparse: the non-zero entries' values plus their
    positions (a flat index each, or one bit per entry). A dense merge (task
    arithmetic) costs a whole body; a stitched one only its masked entries.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    delta = {n: body[n].float() - base[n].float() for n in names}
    s = storage(delta)
    return min(s.dense, s.sparse)


def finetune_configs(setup, tasks: Sequence[str], seed: int) -> dict:
    """Each task's default fine-tuning config with ``seed`` (seed 0 is the zoo's default, already cached).

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    return {t: setup.finetune_config_for(t).replace(seed=seed) for t in tasks}


def localize_trained_mask(setup, base, task_vector, task: str, density: float, seed: int,
                          config: CaseStudyConfig) -> dict:
    """A trained mask of ``task`` at exactly ``density`` (:func:`lsedu.localize_trained`, few cheap steps).

    The logits start from the dataless top-``density`` (the paper's
    initialisation) and take ``config.loc_epochs * config.loc_batches`` Adam
    steps on the task's training examples, drawn in the order of ``seed``.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    batches = setup.localization_batches(task, config.loc_batch_size, seed=seed)[:config.loc_batches]
    model = setup.build_body().to(setup.device)
    mask, _ = localize_trained(model, base, task_vector, setup.localization_loss(task), batches, density=density,
                               sigmoid_bias=config.loc_bias, l1=config.loc_l1, lr=config.loc_lr,
                               optimizer=config.loc_optimizer, epochs=config.loc_epochs, batches_per_step=1,
                               target_density=density, device=setup.device, progress=False)
    return mask


# ----------------------------------------------------------------------------- validation search


@dataclass(frozen=True)
class GridSearch:
    """What :func:`grid_search` returns: the best point, every point's score in the order scored, the final grid.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """

    best: dict[str, float]
    best_score: float
    scores: dict[tuple[float, ...], float]
    grid: dict[str, tuple[float, ...]]
    at_edge: tuple[str, ...]


#: Where each searched value may go: lambda above 0, densities in (0, 1]. Lambda grids extend by their own last
#: step; density grids by their own last ratio (0.1, 0.2, 0.5 -> 1.0), never past 1.
_AXES = {"lam": ("step", 0.0, 10.0), "density": ("ratio", 0.0, 1.0)}


def _beyond(values: Sequence[float], axis: str, side: str) -> float | None:
    """The next value past the ``side`` ("low" or "high") edge of a sorted axis, or None if there is no room."""
    kind, low, high = _AXES[axis]
    v = sorted(values)
    if len(v) < 2:
        return None  # one value: no spacing to extend by, and nothing was searched
    if kind == "step":
        new = lambda_beyond(v, side)  # as pick_lambda widens: the grid's own step, halving towards 0
    else:
        new = round(min(high, v[-1] * v[-1] / v[-2]) if side == "high" else v[0] * v[0] / v[1], 6)
    return None if new is None or new in v or not low < new <= high else new


def grid_search(score: Callable[..., float], grid: Mapping[str, Sequence[float]], *, widen: int = 3,
                what: str = "search") -> GridSearch:
    """Score every point of the grid (the product of its axes) and widen the grid while the best sits at an edge.

    ``score(**point)`` is a validation score (higher is better); ``grid``
    maps each axis (``"lam"``, ``"density"``) to its values. When the best
    point's value on an axis is that axis's lowest or highest, the search
    adds the next value beyond that edge (:data:`_AXES`: a lambda grid
    extends by its own step, a density grid by its own ratio, up to 1) and
    scores it with every value of the other axes; at most ``widen`` values
    per edge. If the best is still at an edge that could move further, it
    warns (``UserWarning``), naming ``what``, the axis and the grid: a value
    chosen at the edge of what was searched may not be the best one. On
    equal scores the first point scored wins.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    if not isinstance(grid, Mapping) or not grid:
        raise TypeError(f"grid must map each axis to its values, got {grid!r}")
    unknown = [a for a in grid if a not in _AXES]
    if unknown:
        raise ValueError(f"grid axes {unknown} are unknown; choose from {list(_AXES)}")
    if isinstance(widen, bool) or not isinstance(widen, int) or widen < 0:
        raise ValueError(f"widen must be a non-negative int, got {widen!r}")
    axes = list(grid)
    values = {a: [float(v) for v in grid[a]] for a in axes}
    for a in axes:
        if not values[a]:
            raise ValueError(f"grid[{a!r}] is empty")
    scores: dict[tuple[float, ...], float] = {}

    def run(points) -> None:
        for p in points:
            if p not in scores:
                v = score(**dict(zip(axes, p)))
                v = v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"{what}: the score at {dict(zip(axes, p))} is {v!r}; it must be a finite number")
                scores[p] = float(v)

    run(itertools.product(*(values[a] for a in axes)))
    grown = {(a, side): 0 for a in axes for side in ("low", "high")}
    while True:
        best = max(scores, key=lambda p: scores[p])
        edges = [(a, "low" if best[i] == min(values[a]) else "high") for i, a in enumerate(axes)
                 if best[i] in (min(values[a]), max(values[a])) and len(values[a]) > 1]
        grow = [(a, side, new) for a, side in edges
                if grown[(a, side)] < widen and (new := _beyond(values[a], a, side)) is not None]
        if not grow:
            break
        a, side, new = grow[0]
        grown[(a, side)] += 1
        values[a].append(new)
        run(itertools.product(*([new] if b == a else values[b] for b in axes)))
    stuck = tuple(a for a, side in edges if _beyond(values[a], a, side) is not None)
    for a in stuck:
        warnings.warn(f"{what}: the best {a}={best[axes.index(a)]:g} is at the edge of the grid searched "
                      f"{sorted(values[a])} after widening it {widen} times; widen the grid further", stacklevel=2)
    return GridSearch(dict(zip(axes, best)), scores[best], scores, {a: tuple(sorted(values[a])) for a in axes}, stuck)


# ----------------------------------------------------------------------------- the rows, one cached unit each

#: The config fields each row depends on (its cache key holds these and nothing else of the config), and
#: whether the row depends on the fine-tunes (the pretrained row does not: one evaluation serves every seed).
_EVAL = ("eval_batch_size", "max_test")
_VAL = _EVAL + ("max_val", "widen")
_LOC = ("loc_batches", "loc_batch_size", "loc_epochs", "loc_optimizer", "loc_lr", "loc_bias", "loc_l1")
ROW_DEPENDS = {
    "pretrained": (_EVAL, False),
    "individual": (_EVAL, True),
    "finetuned": (_EVAL, True),
    "multitask": (_EVAL, True),
    "averaging": (_EVAL, True),
    "task_arithmetic": (_VAL + ("lambda_grid",), True),
    "ties": (_VAL + ("ties_densities", "ties_lambdas"), True),
    "dare": (_VAL + ("lambda_grid", "dare_p", "merge_seeds"), True),
    "stitch_dataless": (_VAL + ("stitch_densities",), True),
    "stitch_trained": (_VAL + ("stitch_densities", "merge_seeds") + _LOC, True),
}


class _Seed:
    """What the rows of one fine-tune seed share, built on first use: the fine-tunes, task vectors, scorers."""

    def __init__(self, setup, tasks: tuple[str, ...], finetune_seed: int, config: CaseStudyConfig):
        self.setup, self.tasks, self.seed, self.config = setup, tasks, finetune_seed, config
        self.cfgs = finetune_configs(setup, tasks, finetune_seed)

    @functools.cached_property
    def pre(self):
        return self.setup.pretrained()

    @functools.cached_property
    def names(self) -> list[str]:
        return self.setup.merge_names()

    @functools.cached_property
    def fts(self) -> dict:
        return {t: self.setup.finetune(t, self.cfgs[t]) for t in self.tasks}

    @functools.cached_property
    def tvs(self) -> list[TaskVector]:
        return [TaskVector({n: self.fts[t][n] - self.pre[n] for n in self.names}) for t in self.tasks]

    def test(self, body, tasks: Sequence[str] | None = None) -> dict:
        """Per task, on the first ``config.max_test`` test examples of each: which ones ``body`` gets right
        (``[examples]`` bool), or the accuracy where the setup scores no single examples (lm-eval's)."""
        tasks = tasks or self.tasks
        try:
            return self.setup.correct_all(body, tasks, "test", self.config.eval_batch_size, limit=self.config.max_test)
        except NotImplementedError:
            return self.setup.evaluate_all(body, tasks, "test", self.config.eval_batch_size,
                                           limit=self.config.max_test)

    def val(self, body) -> float:
        """Mean validation accuracy over the tasks (the first ``config.max_val`` examples of each): what every
        hyperparameter is chosen by."""
        accs = self.setup.evaluate_all(body, self.tasks, "val", self.config.eval_batch_size, limit=self.config.max_val)
        return sum(accs.values()) / len(accs)

    def nbytes(self, body) -> int:
        return delta_bytes(self.pre, body, self.names)

    def key(self, row: str) -> dict:
        fields, per_finetune = ROW_DEPENDS[row]
        conf = self.config.to_dict()
        extra = {"finetune": {t: c.to_dict() for t, c in self.cfgs.items()}, "finetune_seed": self.seed}
        return self.setup.cache_key("casestudy", tasks=list(self.tasks), row=row,
                                    casestudy={f: conf.get(f) for f in fields}, lsedu=__version__, items=True,
                                    **(extra if per_finetune else {}))

    def unit(self, row: str, refresh: bool = False) -> dict:
        """The cached result of ``row``: ``{"runs": [records], "chosen": {hyperparameters}}``."""
        _, record = cached("casestudy", self.key(row), lambda: ({}, _ROWS[row](self)), refresh)
        return record["metrics"]


def _run(scores: Mapping[str, object], nbytes: int, merge_seed: int | None = None, choice: str = "",
         configs: int = 0) -> dict:
    """A run's record: accuracy per task and, where the setup scores single examples, which ones it got right
    (``"correct"``: per task a string of 0s and 1s in the split's stored order, compact in the cache's JSON);
    ``configs``: how many configurations validation scored to choose the run's hyperparameters."""
    run = {"accs": {}, "nbytes": int(nbytes), "merge_seed": merge_seed, "choice": choice, "configs": int(configs)}
    for t, v in scores.items():
        if isinstance(v, str):  # already encoded (a row reusing another's record)
            run.setdefault("correct", {})[t] = v
            run["accs"][t] = v.count("1") / len(v)
        elif isinstance(v, torch.Tensor):
            run.setdefault("correct", {})[t] = "".join("1" if x else "0" for x in v.tolist())
            run["accs"][t] = int(v.sum()) / len(v)
        else:
            run["accs"][t] = float(v)
    return run


def _scores(run: Mapping) -> dict:
    """A record's per-task scores as :func:`_run` takes them: the encoded examples where it has them."""
    return {t: run.get("correct", {}).get(t, a) for t, a in run["accs"].items()}


def _pretrained(s: _Seed) -> dict:
    return {"runs": [_run(s.test(s.pre), 0)]}


def _individual(s: _Seed) -> dict:
    """Each fine-tune on its own task: the reference that ``normalized`` divides by."""
    scores = {t: s.test(s.fts[t], [t])[t] for t in s.tasks}
    return {"runs": [_run(scores, sum(s.nbytes(s.fts[t]) for t in s.tasks))]}


def _finetuned(s: _Seed) -> dict:
    """Each fine-tune on every task (the off-diagonal shows transfer); its own task comes from ``individual``."""
    own = _scores(s.unit("individual")["runs"][0])
    runs = []
    for t in s.tasks:
        others = s.test(s.fts[t], [o for o in s.tasks if o != t])
        runs.append({**_run({o: own[t] if o == t else others[o] for o in s.tasks}, s.nbytes(s.fts[t])), "task": t})
    return {"runs": runs}


def _multitask(s: _Seed) -> dict:
    mtl = s.setup.multitask(s.setup.finetune_config.replace(seed=s.seed), tasks=list(s.tasks))
    return {"runs": [_run(s.test(mtl), s.nbytes(mtl))]}


def _averaging(s: _Seed) -> dict:
    avg = uniform_soup([s.fts[t] for t in s.tasks])
    return {"runs": [_run(s.test(avg), s.nbytes(avg))]}


def _search(s: _Seed, method: str, score: Callable[..., float], grid: dict[str, Sequence[float]]) -> GridSearch:
    return grid_search(score, grid, widen=s.config.widen, what=f"{s.setup.name}: {method}")


def _task_arithmetic(s: _Seed) -> dict:
    best = _search(s, "task arithmetic", lambda lam: s.val(task_arithmetic(s.pre, s.tvs, lam)),
                   {"lam": s.config.lambda_grid})
    lam = best.best["lam"]
    merged = task_arithmetic(s.pre, s.tvs, lam)
    return {"runs": [_run(s.test(merged), s.nbytes(merged), choice=f"lambda={lam:g}", configs=len(best.scores))],
            "chosen": {"lambda": lam}, "configs": len(best.scores)}


def _ties(s: _Seed) -> dict:
    best = _search(s, "TIES", lambda density, lam: s.val(ties_merge(s.pre, s.tvs, density=density, lam=lam)),
                   {"density": s.config.ties_densities, "lam": s.config.ties_lambdas})
    d, lam = best.best["density"], best.best["lam"]
    merged = ties_merge(s.pre, s.tvs, density=d, lam=lam)
    return {"runs": [_run(s.test(merged), s.nbytes(merged), choice=f"density={d:g}, lambda={lam:g}",
                          configs=len(best.scores))],
            "chosen": {"density": d, "lambda": lam}, "configs": len(best.scores)}


def _dare(s: _Seed) -> dict:
    # lambda is chosen with the first merge seed's drops, then every seed is tested with it
    p, first = s.config.dare_p, s.config.merge_seeds[0]
    best = _search(s, "DARE", lambda lam: s.val(dare_merge(s.pre, s.tvs, p=p, lam=lam, seed=first)),
                   {"lam": s.config.lambda_grid})
    lam = best.best["lam"]
    runs = []
    for seed in s.config.merge_seeds:
        merged = dare_merge(s.pre, s.tvs, p=p, lam=lam, seed=seed)
        runs.append(_run(s.test(merged), s.nbytes(merged), seed, f"p={p:g}, lambda={lam:g}", len(best.scores)))
    return {"runs": runs, "chosen": {"p": p, "lambda": lam}, "configs": len(best.scores)}


def _stitch_dataless(s: _Seed) -> dict:
    best = _search(s, "Localize-and-Stitch", lambda density: s.val(stitch_dataless(s.pre, s.tvs, density)),
                   {"density": s.config.stitch_densities})
    d = best.best["density"]
    merged = stitch_dataless(s.pre, s.tvs, d)
    return {"runs": [_run(s.test(merged), s.nbytes(merged), choice=f"density={d:g}", configs=len(best.scores))],
            "chosen": {"density": d}, "configs": len(best.scores)}


def _stitch_trained(s: _Seed) -> dict:
    """Trained masks at the density validation chose for the dataless masks (the ``stitch_dataless`` row, whose
    search its ``configs`` counts)."""
    dataless = s.unit("stitch_dataless")
    d = dataless["chosen"]["density"]
    runs = []
    for seed in s.config.merge_seeds:
        masks = [localize_trained_mask(s.setup, s.pre, tv, t, d, seed, s.config) for t, tv in zip(s.tasks, s.tvs)]
        merged = stitch(s.pre, s.tvs, masks)
        runs.append(_run(s.test(merged), s.nbytes(merged), seed, f"density={d:g}", dataless["configs"]))
    return {"runs": runs, "chosen": {"density": d}, "configs": dataless["configs"]}


_ROWS = {"pretrained": _pretrained, "individual": _individual, "finetuned": _finetuned, "multitask": _multitask,
         "averaging": _averaging, "task_arithmetic": _task_arithmetic, "ties": _ties, "dare": _dare,
         "stitch_dataless": _stitch_dataless, "stitch_trained": _stitch_trained}


def _records(s: _Seed, method: str, unit: dict, individual: Mapping[str, float]) -> list[dict]:
    out = []
    for run in unit["runs"]:
        accs = run["accs"]
        label = f"fine-tune: {run['task']}" if method == "finetuned" else LABELS[method]
        # a fine-tune with accuracy 0 on its own task (a random toy model) cannot normalize: NaN, not an error
        normalized = (normalized_accuracy(accs, dict(individual)) if all(individual[t] > 0 for t in accs)
                      else math.nan)
        out.append({"method": method, "row": label, "finetune_seed": s.seed, "merge_seed": run["merge_seed"],
                    **{f"acc:{t}": a for t, a in accs.items()}, "average": sum(accs.values()) / len(accs),
                    "normalized": normalized, "storage_mb": run["nbytes"] / 2**20, "choice": run["choice"],
                    "configs": run.get("configs", 0), "correct": run.get("correct")})
    return out


def _units(methods: Sequence[str], config: CaseStudyConfig) -> list[str]:
    """The cached units behind ``methods``, in the table's order (``finetuned`` adds the individual row)."""
    units = []
    for m in methods:
        if m == "multitask" and not config.multitask:
            continue
        units += ["finetuned", "individual"] if m == "finetuned" else [m]
    return units


def run_seed(setup, tasks: Sequence[str], finetune_seed: int, config: CaseStudyConfig,
             methods: Sequence[str] = METHODS, refresh: bool = False) -> list[dict]:
    """Every method of ``methods`` on the fine-tunes of ``finetune_seed``: one record per (row, merge seed).

    A record holds the test accuracy per task (``acc:<task>``), their mean
    (``average``), the normalized accuracy (mean of accuracy / the task's own
    fine-tune's accuracy, both of this fine-tune seed), ``storage_mb`` (see
    :func:`delta_bytes`: what must be stored besides the pretrained body to
    serve all the tasks; N fine-tunes count N times) and the hyperparameters
    chosen on validation (``choice``).

    Each row is computed once and cached on its own (``$LSEDU_CACHE``, kind
    ``casestudy``), keyed by the setup, the tasks, the fine-tune configs and
    only the fields of ``config`` that row depends on (:data:`ROW_DEPENDS`):
    changing TIES' grid recomputes the TIES row and nothing else.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    s = _Seed(setup, tuple(tasks), finetune_seed, config)
    units = _units(methods, config)
    first = ("individual", "stitch_dataless")
    order = sorted(units, key=lambda u: u not in first)  # stable: the others keep the table's order
    bar = tqdm(order, leave=False, desc=f"{setup.name}: rows (fine-tune seed {finetune_seed})",
               disable=not setup.progress)
    results = {}
    # the rows that others read (individual, stitch_dataless) first, so that refresh=True reaches them first
    for u in bar:
        bar.set_postfix_str(u)
        results[u] = s.unit(u, refresh)
    individual = (results.get("individual") or s.unit("individual"))["runs"][0]["accs"]
    return [r for u in units for r in _records(s, u, results[u], individual)]


def _check_methods(methods) -> tuple[str, ...]:
    if isinstance(methods, str) or not isinstance(methods, Sequence) or not methods:
        raise TypeError(f"methods must be a list of method names from {list(METHODS)}, got {methods!r}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods {unknown} are unknown; choose from {list(METHODS)}")
    return tuple(m for m in METHODS if m in methods)


def _check_config(config) -> CaseStudyConfig:
    config = config or CaseStudyConfig()
    if not isinstance(config, CaseStudyConfig):
        raise TypeError(f"config must be a CaseStudyConfig, got {type(config).__name__}")
    return config


def comparison_runs(setup, tasks: Sequence[str] | None = None, config: CaseStudyConfig | None = None,
                    methods: Sequence[str] = METHODS, refresh: bool = False):
    """The per-run records of :func:`run_seed` for every fine-tune seed, as a DataFrame (each row cached).

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    config = _check_config(config)
    tasks = check_tasks(setup, tasks)
    methods = _check_methods(methods)
    records: list[dict] = []
    for seed in config.finetune_seeds:
        records += run_seed(setup, tasks, seed, config, methods, refresh)
    return pd.DataFrame(records)


def finetune_all(setup, tasks: Sequence[str] | None = None, config: CaseStudyConfig | None = None) -> None:
    """Fine-tune every task once per fine-tune seed of ``config`` (each cached on its own, see ``setup.finetune``).

    The case-study notebooks run this in a cell of its own, before the rows,
    so that a cold first run spends its fine-tuning time in one cell and its
    evaluations in others, each well under the book's per-cell time limit.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    config = _check_config(config)
    tasks = check_tasks(setup, tasks)
    todo = [(t, cfg) for seed in config.finetune_seeds for t, cfg in finetune_configs(setup, tasks, seed).items()]
    for t, cfg in tqdm(todo, desc=f"{setup.name}: fine-tunes", leave=False, disable=not setup.progress):
        setup.finetune(t, cfg)


def run_rows(setup, methods: Sequence[str], tasks: Sequence[str] | None = None,
             config: CaseStudyConfig | None = None, refresh: bool = False):
    """Compute (or read from the cache) the rows of ``methods`` for every fine-tune seed of ``config``.

    The case-study notebooks call this once per method, each in a cell of
    its own, so that no cell holds a whole table's work (a cold first run
    takes minutes per row on a laptop); :func:`comparison_table` then reads
    every row from the cache. Returns those rows' per-run records.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    return comparison_runs(setup, tasks, config, methods, refresh)


def summarize(runs, tasks: Sequence[str]):
    """The comparison table from per-run records: one row per method, in the records' order.

    Columns: the mean test accuracy of each task, ``average`` and
    ``normalized`` (means over runs) with their standard deviations
    (``average_std``, ``normalized_std``; NaN for a row of one run),
    ``storage_mb``, ``runs`` (how many runs the row averages), ``configs``
    (how many configurations validation scored for the row, the most over
    fine-tune seeds; 0 for a row without a search) and ``choice`` (the
    hyperparameters chosen on validation, per fine-tune seed).

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    if len(runs) == 0:
        raise ValueError("runs is empty: there is nothing to summarize")
    cols = [f"acc:{t}" for t in tasks]
    missing = [c for c in cols + ["row", "average", "normalized", "storage_mb"] if c not in runs.columns]
    if missing:
        raise ValueError(f"runs lacks the column(s) {missing}; pass the records of comparison_runs")
    rows = []
    for label in dict.fromkeys(runs["row"]):  # first-seen order
        g = runs[runs["row"] == label]
        n = len(g)
        row = {"row": label, **{t: g[f"acc:{t}"].mean() for t in tasks}, "average": g["average"].mean(),
               "average_std": g["average"].std(ddof=1) if n > 1 else math.nan,
               "normalized": g["normalized"].mean(),
               "normalized_std": g["normalized"].std(ddof=1) if n > 1 else math.nan,
               "storage_mb": g["storage_mb"].mean(), "runs": n,
               "configs": int(g["configs"].max()) if "configs" in g else 0,
               "choice": "; ".join(dict.fromkeys(c for c in g["choice"] if c))}
        rows.append(row)
    return pd.DataFrame(rows).set_index("row")


def comparison_table(setup, tasks: Sequence[str] | None = None, config: CaseStudyConfig | None = None,
                     methods: Sequence[str] = METHODS, refresh: bool = False):
    """Every merging method on ``setup``'s ``tasks``, as one DataFrame (the case-study table).

    Rows: pretrained; each fine-tune (evaluated on every task); the
    individual fine-tunes, each on its own task (the upper reference, what
    ``normalized`` divides by); multi-task learning; uniform averaging; task
    arithmetic (lambda chosen on validation); TIES (density and lambda chosen
    on validation); DARE followed by task arithmetic (lambda chosen on
    validation); Localize-and-Stitch with dataless and with trained masks
    (density chosen on validation). Columns: see :func:`summarize`.

    **Storage** (``storage_mb``) counts what a deployment keeps besides the
    pretrained body to serve every task: the difference from the pretrained
    body of each model the row needs, over the merged tensors, in the
    smaller of a dense and a sparse form (:func:`delta_bytes`). The N
    individual fine-tunes count N times; a merged or multi-task model once;
    the pretrained model costs nothing. Heads (frozen, per task, the same
    for every row) are not counted.

    ``config`` (:class:`CaseStudyConfig`) sets the seeds and the validation
    grids. The per-run records are in ``table.attrs["runs"]``.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    tasks = check_tasks(setup, tasks)
    runs = comparison_runs(setup, tasks, config, methods, refresh)
    table = summarize(runs, tasks)
    table.attrs["runs"] = runs
    return table


def ordering(table, rows: Sequence[str] = ("uniform averaging", "task arithmetic", "TIES",
                                           "Localize-and-Stitch (dataless)")) -> list[str]:
    """The labels of ``rows`` sorted by the table's ``average``, best first (ties keep the given order).

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    missing = [r for r in rows if r not in table.index]
    if missing:
        raise ValueError(f"table has no row(s) {missing}")
    return sorted(rows, key=lambda r: -float(table.loc[r, "average"]))


# ----------------------------------------------------------------------------- for reading

#: Average accuracy (%) over tasks that the papers report, keyed by our method keys; the book's page "Sources and
#: licences" (book/sources.md) gives the paper, setup and row of each value. vision: CLIP ViT-B/32 on 8 tasks;
#: Localize-and-Stitch and individual from He et al. 2025 (arXiv 2408.13656); the other rows match, value by value,
#: the eight-task table that later papers print with AdaMerging's rows (Yang et al. 2024, arXiv 2310.02575), read
#: through secondary copies (that page names them; the table number is not established). text: roberta-base on 12 LM-BFF tasks,
#: 64 shots. causal_lm: GPT2-XL, 3 public fine-tunes, scored on MMLU, ARC, TruthfulQA. Rows a paper does not
#: report are absent.
PAPER_AVERAGES = {
    "vision": {"pretrained": 48.0, "individual": 90.5, "multitask": 88.9, "averaging": 65.8, "task_arithmetic": 69.1,
               "ties": 72.4, "stitch_trained": 79.9},
    "text": {"individual": 81.1, "stitch_trained": 75.9},
    "causal_lm": {"individual": 41.1, "averaging": 34.4, "stitch_trained": 36.7},
}


def paper_comparison(table, setup_name: str):
    """Our ``average`` (in %) next to the paper's for each row the paper reports (:data:`PAPER_AVERAGES`).

    Two columns each compare the setups as ratios, which factor out how hard
    each setup's tasks are: ``... / individual`` (the row over the individual
    fine-tunes) and ``... gap closed (%)`` (:func:`gap_closed`; NaN where the
    paper reports no pretrained row).

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    if setup_name not in PAPER_AVERAGES:
        raise ValueError(f"setup_name must be one of {list(PAPER_AVERAGES)}, got {setup_name!r}")
    paper = PAPER_AVERAGES[setup_name]
    labels = {label: method for method, label in LABELS.items() if label in table.index}
    ours_gap = gap_closed(table, list(labels)) if LABELS["individual"] in table.index else None
    rows = []
    for label, method in labels.items():
        p = paper.get(method, math.nan)
        ours = 100 * float(table.loc[label, "average"])
        p_gap = (100 * (p - paper["pretrained"]) / (paper["individual"] - paper["pretrained"])
                 if "pretrained" in paper and "individual" in paper else math.nan)
        rows.append({"row": label, "paper (%)": p, "ours (%)": ours,
                     "paper: / individual": p / paper.get("individual", math.nan),
                     "ours: / individual": ours / (100 * float(table.loc[LABELS["individual"], "average"]))
                     if ours_gap is not None else math.nan,
                     "paper: gap closed (%)": p_gap,
                     "ours: gap closed (%)": 100 * float(ours_gap[label]) if ours_gap is not None else math.nan})
    return pd.DataFrame(rows).set_index("row")


def pretty(table, digits: int = 1):
    """The table for reading: accuracies in %, ``mean +- std`` where a row has several runs, storage in MB.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    tasks = _task_columns(table)

    def pm(mean, std, scale):
        text = f"{scale * mean:.{digits}f}"
        return text if math.isnan(std) else f"{text} ± {scale * std:.{digits}f}"

    out = pd.DataFrame(index=table.index)
    for t in tasks:
        out[t] = [f"{100 * v:.{digits}f}" for v in table[t]]
    out["average"] = [pm(m, s, 100) for m, s in zip(table["average"], table["average_std"])]
    out["normalized"] = [pm(m, s, 100) for m, s in zip(table["normalized"], table["normalized_std"])]
    out["storage (MB)"] = [f"{v:.2f}" for v in table["storage_mb"]]
    out["runs"] = table["runs"]
    if "configs" in table:
        out["configs scored"] = table["configs"]
    out["chosen on validation"] = table["choice"]
    return out


# ----------------------------------------------------------------------------- reading a table (notebooks 06-08)

#: The merge rows of a comparison table, in its order.
MERGES = tuple(LABELS[m] for m in ("averaging", "task_arithmetic", "ties", "dare", "stitch_dataless",
                                   "stitch_trained"))

#: The order the papers report, best first: Localize-and-Stitch > TIES > task arithmetic > averaging.
PAPERS_ORDER = tuple(LABELS[m] for m in ("stitch_dataless", "ties", "task_arithmetic", "averaging"))


def gap_closed(table, rows: Sequence[str]):
    """The share of the gap between the pretrained and the individual rows that each of ``rows`` closes.

    (average - pretrained) / (individual - pretrained), on the table's ``average`` column.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    pre = float(table.loc[LABELS["pretrained"], "average"])
    ind = float(table.loc[LABELS["individual"], "average"])
    return (table.loc[list(rows), "average"] - pre) / (ind - pre)


def merge_summary(table, rows: Sequence[str] = MERGES + (LABELS["multitask"],)):
    """Each merge (and multi-task learning): average accuracy and gap closed in %, storage, the choice made.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    rows = [r for r in rows if r in table.index]
    return pd.DataFrame({
        "average (%)": 100 * table.loc[rows, "average"],
        "gap closed (%)": 100 * gap_closed(table, rows),
        "storage (MB)": table.loc[rows, "storage_mb"],
        "chosen on validation": table.loc[rows, "choice"],
    }).round(1)


def ordering_steps(table, papers: Sequence[str] = PAPERS_ORDER):
    """The papers' rows in our order, best first, with the step to the next one and whether it is a real one.

    A DataFrame with one row per rank: ``papers`` (the papers' row at that
    rank), ``ours`` (ours), ``average (%)`` (ours), ``step to next
    (points)``, its paired 95% interval (:func:`paired_difference`) and
    ``step``: ``"ahead"`` where the interval excludes zero, ``"tie"`` where it
    does not (empty where the setup scores no single examples).

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    ours = ordering(table, tuple(papers)[::-1])  # equal averages keep the papers' reversed order, as before
    avg = [100 * float(table.loc[r, "average"]) for r in ours]
    steps = [a - b for a, b in zip(avg, avg[1:])] + [math.nan]
    diffs = [paired_difference(table, a, b) for a, b in zip(ours, ours[1:])] + [None]
    return pd.DataFrame({"papers": list(papers), "ours": ours, "average (%)": avg,
                         "step to next (points)": steps,
                         "95% interval": [_interval(d) for d in diffs],
                         "step": [_verdict(d, "ahead", "") for d in diffs]}).round(1)


def ordering_text(steps) -> str:
    """:func:`ordering_steps` as one line: ``"TIES ≈ Localize-and-Stitch (dataless) > task arithmetic ≈ ..."``.

    ``>`` marks a step whose paired 95% interval excludes zero, ``≈`` a tie;
    where the setup scores no single examples (no intervals), ``, then``.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    if not isinstance(steps, pd.DataFrame) or not {"ours", "step"} <= set(steps.columns):
        raise TypeError("steps must be the DataFrame of ordering_steps, with its 'ours' and 'step' columns")
    rows = list(steps["ours"])
    out = rows[0]
    for row, step in zip(rows[1:], steps["step"]):
        out += {"ahead": " > ", "tie": " ≈ "}.get(step, ", then ") + row
    return out


# ----------------------------------------------------------------------------- paired intervals

#: Bootstrap resamples of every paired interval of a table (:func:`lsedu.stats.paired_bootstrap`), and its seed.
RESAMPLES, BOOTSTRAP_SEED = 10_000, 0


def item_scores(table, row: str) -> dict[str, np.ndarray] | None:
    """Per task, ``[fine-tune seeds, test examples]``: how often ``row`` gets each example right.

    1 or 0 for a row of one run per fine-tune seed; for DARE and trained
    masks, the mean over their merge seeds. None where the setup scores no
    single examples (the paper track's lm-eval scores).

    Explained in notebook 06 (06_case_language.ipynb).
    """
    runs = table.attrs.get("runs")
    if runs is None:
        raise ValueError("table has no per-run records (table.attrs['runs']); build it with comparison_table")
    g = runs[runs["row"] == row]
    if g.empty:
        raise ValueError(f"table has no row {row!r}; its rows are {list(table.index)}")
    if "correct" not in g or g["correct"].isna().any():
        return None
    tasks = [c.removeprefix("acc:") for c in runs.columns if c.startswith("acc:")]
    out = {}
    for t in tasks:
        per_seed = []
        for _, seed_runs in g.groupby("finetune_seed", sort=True):
            bits = [np.frombuffer(c[t].encode(), dtype=np.uint8) - ord("0") for c in seed_runs["correct"]]
            per_seed.append(np.mean(bits, axis=0))
        out[t] = np.stack(per_seed)
    return out


def paired_difference(table, a: str, b: str) -> PairedDifference | None:
    """Row ``a`` minus row ``b`` of a comparison table, in mean accuracy over tasks, with its paired 95% interval.

    Both rows are scored on the same test examples, so the interval comes
    from resampling those examples (and the fine-tune seeds, if several):
    :func:`lsedu.stats.paired_bootstrap`. None where the setup scores no
    single examples.

    Explained in notebook 06 (06_case_language.ipynb).
    """
    sa, sb = item_scores(table, a), item_scores(table, b)
    if sa is None or sb is None:
        return None
    return paired_bootstrap(sa, sb, resamples=RESAMPLES, seed=BOOTSTRAP_SEED)


def verdict(table, a: str, b: str, name: str | None = None) -> str:
    """Row ``a`` against row ``b`` in words, from their paired interval: what the case studies' prose pastes.

    ``"ahead of task arithmetic by 2.7 points (95% interval +1.7 to +3.8)"``, ``"behind ..."`` or
    ``"tied with ..."`` (:func:`lsedu.stats.describe`), with ``name`` (default: ``b``) naming row ``b``.
    Where the setup scores no single examples there is no interval, and it says so.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    d = paired_difference(table, a, b)
    if d is None:
        return f"compared with {name or b} without an interval (this setup scores no single examples)"
    return describe(d, name or b)


def _interval(d: PairedDifference | None) -> str:
    return "" if d is None else format_interval(d)


def _verdict(d: PairedDifference | None, ahead: str, behind: str) -> str:
    if d is None:
        return ""
    return {"a ahead": ahead, "b ahead": behind, "tie": "tie"}[d.verdict]


def paired_differences(table, rows: Sequence[str] | None = None, reference: str | None = None):
    """Each of ``rows`` against ``reference``: the difference in points, its paired 95% interval, and a verdict.

    ``rows``: the merges and multi-task learning by default; ``reference``:
    the best merge (:func:`best_merge`) by default. Columns: ``average (%)``,
    ``minus reference (points)``, ``low`` and ``high`` (the interval, in
    points) and ``verdict``: ``"ahead"`` or ``"behind"`` where the interval
    excludes zero, ``"tie"`` where it does not. The table's prose calls an
    ordering only where this says ahead or behind.

    Explained in notebook 06 (06_case_language.ipynb).
    """
    reference = reference or best_merge(table)
    rows = [r for r in (rows or MERGES + (LABELS["multitask"],)) if r in table.index and r != reference]
    out = []
    for r in rows:
        d = paired_difference(table, r, reference)
        out.append({"row": r, "average (%)": 100 * float(table.loc[r, "average"]),
                    "minus reference (points)": 100 * (float(table.loc[r, "average"])
                                                       - float(table.loc[reference, "average"])),
                    "low": math.nan if d is None else 100 * d.low, "high": math.nan if d is None else 100 * d.high,
                    "verdict": _verdict(d, "ahead", "behind")})
    df = pd.DataFrame(out).set_index("row").round(2)
    df.attrs["reference"] = reference
    return df


def plot_differences(diffs, ax=None):
    """The rows of :func:`paired_differences` minus the reference, with their 95% intervals, and a line at zero.

    Explained in notebook 06 (06_case_language.ipynb).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.45 * len(diffs) + 1.2))
    y = list(range(len(diffs)))[::-1]
    mid = diffs["minus reference (points)"]
    err = [mid - diffs["low"], diffs["high"] - mid]
    colors = ["tab:green" if v == "ahead" else "tab:red" if v == "behind" else "tab:gray" for v in diffs["verdict"]]
    ax.errorbar(mid, y, xerr=err, fmt="none", ecolor=colors, capsize=3)
    ax.scatter(mid, y, c=colors, zorder=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, list(diffs.index))
    reference = diffs.attrs.get("reference", "the reference")
    ax.set_xlabel(f"minus {reference} (points of mean accuracy, paired 95% interval)")
    return ax


def stochastic_runs(table):
    """The runs behind the rows that depend on a merge seed (DARE, trained masks): one line per run.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    runs = table.attrs["runs"]
    tasks = [c.removeprefix("acc:") for c in runs.columns if c.startswith("acc:")]
    cols = ["row", "finetune_seed", "merge_seed", *[f"acc:{t}" for t in tasks], "average", "normalized", "choice"]
    return runs[runs["method"].isin(STOCHASTIC)][cols].round(4)


def best_merge(table, rows: Sequence[str] = MERGES) -> str:
    """The merge row with the best ``average`` (the first of equal ones).

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    rows = [r for r in rows if r in table.index]
    return max(rows, key=lambda r: float(table.loc[r, "average"]))


def multitask_comparison(table):
    """Per task: the pretrained body, multi-task learning, the best merge and the individual fine-tunes.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    tasks = _task_columns(table)
    rows = {"pretrained": LABELS["pretrained"], "multi-task": LABELS["multitask"],
            f"best merge ({best_merge(table)})": best_merge(table), "individual": LABELS["individual"]}
    out = pd.DataFrame({name: table.loc[row, tasks + ["average"]] for name, row in rows.items()}).T
    return out.astype(float).round(3)


def transfer(table):
    """What each fine-tune does to every task, against the pretrained body: fine-tune rows x task columns, as
    differences of accuracy (fractions; the diagonal is each fine-tune's gain on its own task).

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    tasks = _task_columns(table)
    rows = [f"fine-tune: {t}" for t in tasks]
    missing = [r for r in rows + [LABELS["pretrained"]] if r not in table.index]
    if missing:
        raise ValueError(f"table has no row(s) {missing}: run it with 'pretrained' and 'finetuned'")
    out = table.loc[rows, tasks].astype(float) - table.loc[LABELS["pretrained"], tasks].astype(float)
    out.index = tasks
    return out


def own_gains(table):
    """Each fine-tune's gain on its own task over the pretrained body (the diagonal of :func:`transfer`).

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    t = transfer(table)
    return pd.Series({task: float(t.loc[task, task]) for task in t.index})


def points(value: float, signed: bool = False) -> str:
    """A fraction as whole points of accuracy for prose: 0.0637 is "6 points" ("+6 points" with ``signed``);
    one point is "1 point", and a value that rounds to 0 never prints as "-0".

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value):
        raise ValueError(f"value must be a finite number (a fraction of accuracy), got {value!r}")
    n = round(100 * float(value)) or 0
    text = f"{n:+d}" if signed and n else f"{abs(n) if not signed else n:d}"
    return f"{text} point{'' if abs(n) == 1 else 's'}"


def points_range(values) -> str:
    """The smallest and largest of ``values`` (fractions) as whole points: "6 to 11 points", "3 points" when
    they round alike, "-2 to +4 points" when the signs differ.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    values = [float(v) for v in (values.values() if isinstance(values, Mapping) else values)]
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"values must be one or more finite numbers, got {values!r}")
    low, high = round(100 * min(values)) or 0, round(100 * max(values)) or 0
    signed = low < 0 < high
    if low == high:
        return points(min(values), signed=False)
    fmt = (lambda n: f"{n:+d}") if signed else (lambda n: f"{n:d}")
    return f"{fmt(low)} to {fmt(high)} points"


def plot_table(table, what: str = "tasks"):
    """The table's two bar charts side by side: mean accuracy and normalized accuracy over ``what``.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    plot_comparison(table, ax=axes[0], column="average", title=f"mean test accuracy over the {what}")
    plot_comparison(table, ax=axes[1], column="normalized", title="normalized accuracy")
    axes[1].axvline(1.0, color="k", lw=0.8, ls=":")
    fig.tight_layout()
    return fig


def _task_columns(table) -> list[str]:
    return [c for c in table.columns if c not in ("average", "average_std", "normalized", "normalized_std",
                                                   "storage_mb", "runs", "configs", "choice")]


# ----------------------------------------------------------------------------- plots


def plot_comparison(table, ax=None, title: str | None = None, column: str = "average"):
    """A horizontal bar per row of ``table`` (``column``: "average" or "normalized"), with +-1 std error bars.

    Reference rows (pretrained, individual, multi-task) are grey, merges blue.
    Returns the matplotlib Axes.

    Explained in notebooks 06, 07 and 08 (06_case_language.ipynb, 07_case_vision.ipynb,
    08_case_causal_lm.ipynb).
    """
    if column not in ("average", "normalized"):
        raise ValueError(f"column must be 'average' or 'normalized', got {column!r}")
    rows = [r for r in table.index if not str(r).startswith("fine-tune: ")]
    values = [float(table.loc[r, column]) for r in rows]
    errs = [0.0 if math.isnan(float(table.loc[r, f"{column}_std"])) else float(table.loc[r, f"{column}_std"])
            for r in rows]
    reference = {LABELS["pretrained"], LABELS["individual"], LABELS["multitask"]}
    colors = ["0.6" if r in reference else "tab:blue" for r in rows]
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, values, xerr=errs, color=colors, capsize=3)
    ax.set_yticks(y, rows)
    ax.set_xlabel("mean test accuracy over tasks" if column == "average" else "normalized accuracy")
    lo = min(values)
    ax.set_xlim(max(0.0, lo - 0.1), max(1.0, max(values) + 0.02) if column == "normalized" else 1.0)
    for yi, v in zip(y, values):
        ax.text(v + 0.005, yi, f"{v:.3f}", va="center", fontsize=8)
    if title:
        ax.set_title(title)
    return ax


# ----------------------------------------------------------------------------- scaling with the number of tasks


def task_subsets(tasks: Sequence[str], size: int, limit: int, seed: int = 0) -> list[tuple[str, ...]]:
    """All subsets of ``size`` tasks (in ``tasks`` order) if there are at most ``limit``, else ``limit`` drawn
    with ``seed`` without repetition.

    Explained in notebook 09 (09_what_matters_at_scale.ipynb).
    """
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= len(tasks):
        raise ValueError(f"size must be an int in [1, {len(tasks)}], got {size!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    every = list(itertools.combinations(tasks, size))
    if len(every) <= limit:
        return every
    return sorted(random.Random(seed).sample(every, limit), key=every.index)


def scaling_curve(setup, tasks: Sequence[str] | None = None, sizes: Sequence[int] | None = None,
                  subsets_per_size: int = 3, config: CaseStudyConfig | None = None,
                  methods: Sequence[str] = ("averaging", "task_arithmetic", "ties", "stitch_dataless"),
                  refresh: bool = False):
    """Merged accuracy as the number of merged tasks grows: a DataFrame with one row per (size, subset, method).

    For each ``size`` (default 2..N), a few subsets of that many tasks
    (:func:`task_subsets`, at most ``subsets_per_size``) are merged with each
    method, hyperparameters chosen on the subset's validation data as in
    :func:`run_seed`, with the first fine-tune seed and the first merge seed
    of ``config``. Columns: ``size``, ``subset``, ``method``, ``row``,
    ``average`` (mean test accuracy over the merged tasks), ``normalized``
    (the same, each divided by its own fine-tune's accuracy), ``choice`` and
    ``correct`` (per merged task, which test examples the merge got right, as
    in :func:`run_seed`'s records; None where the setup scores no single
    examples), which :func:`scaling_difference` reads.
    Each row is cached per subset (:func:`run_seed`), so a subset of all the tasks shares its rows with
    :func:`comparison_table` when the configs agree.

    Explained in notebook 09 (09_what_matters_at_scale.ipynb).
    """
    config = _check_config(config)
    tasks = check_tasks(setup, tasks)
    sizes = tuple(range(2, len(tasks) + 1)) if sizes is None else tuple(sizes)
    for k in sizes:
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= len(tasks):
            raise ValueError(f"sizes must hold ints in [2, {len(tasks)}] (tasks merged at once), got {k!r}")
    methods = _check_methods(methods)
    if {"pretrained", "finetuned", "multitask"} & set(methods):
        raise ValueError("scaling_curve compares merges only: drop 'pretrained', 'finetuned' and 'multitask'")
    one = config.replace(finetune_seeds=config.finetune_seeds[:1], merge_seeds=config.merge_seeds[:1],
                         multitask=False)
    seed = one.finetune_seeds[0]
    records = []
    for k in sizes:
        for subset in task_subsets(tasks, k, subsets_per_size, seed=k):
            for r in run_seed(setup, subset, seed, one, methods, refresh):
                records.append({"size": k, "subset": "+".join(subset), "method": r["method"], "row": r["row"],
                                "average": r["average"], "normalized": r["normalized"], "choice": r["choice"],
                                "correct": r["correct"]})
    return pd.DataFrame(records)


def _check_curve(curve) -> None:
    if not isinstance(curve, pd.DataFrame) or \
            not {"size", "subset", "method", "row", "normalized", "correct"} <= set(curve.columns):
        raise TypeError("curve must be the DataFrame of scaling_curve, with its 'size', 'subset', 'method', 'row', "
                        "'normalized' and 'correct' columns")


def _curve_method(curve, method, name: str) -> str:
    """``method`` (a method key such as ``"ties"`` or its row label ``"TIES"``) as the curve's method key."""
    keys = list(dict.fromkeys(curve["method"]))
    labels = dict(zip(curve["row"], curve["method"]))
    if isinstance(method, str) and method in keys:
        return method
    if isinstance(method, str) and method in labels:
        return labels[method]
    raise ValueError(f"{name}={method!r} is not a method of the curve; its methods are {keys}")


def _curve_items(g, method: str, size: int) -> dict[str, list[np.ndarray]] | None:
    """Per task, the 0/1 arrays of the test examples ``method`` got right, one per subset holding the task (None
    where the curve has no examples)."""
    if g["subset"].duplicated().any():
        raise ValueError(f"the curve has several records of {method!r} for one subset of {size} tasks; "
                         "pass the curve of scaling_curve (one fine-tune seed, one merge seed)")
    if any(not isinstance(c, Mapping) for c in g["correct"]):
        return None
    out: dict[str, list[np.ndarray]] = {}
    for subset, correct in zip(g["subset"], g["correct"]):
        for t in subset.split("+"):
            out.setdefault(t, []).append(np.frombuffer(correct[t].encode(), dtype=np.uint8) - ord("0"))
    # the tasks in sorted order, whatever the order of the records' keys (a cached record's are sorted, a fresh one's
    # are not) or of the subsets: the bootstrap's draws go to the tasks in order, so the same curve always gives the
    # same interval, and every size that holds the same tasks shares one set of draws (paired_bootstrap draws once
    # per shape)
    out = {t: out[t] for t in sorted(out)}
    for t, arrays in out.items():
        if len({len(x) for x in arrays}) > 1:
            raise ValueError(f"task {t!r} has test splits of different lengths in different subsets "
                             f"{sorted({len(x) for x in arrays})}; a paired comparison needs the same examples")
    return out


def scaling_difference(curve, a: str, b: str, size: int) -> PairedDifference | None:
    """Method ``a`` minus method ``b`` over every subset of ``size`` tasks of a scaling curve, with a paired interval.

    The statistic is the difference of mean test accuracy (raw, not
    normalized) over the (subset, task) pairs of that size: with ``S``
    subsets of ``size`` tasks, the mean of the ``S * size`` per-task
    accuracy differences, which is also the mean over subsets of the
    curve's ``average`` differences.

    Its 95% interval is :func:`lsedu.stats.paired_bootstrap`'s, stratified by
    task: each task's test examples are resampled once, and the same draw
    serves both methods and *every* subset that holds the task (a test image
    of ``mnist`` is one image, whether the merge of ``mnist+fashion`` or of
    ``mnist+digits`` scores it, so it is drawn once for both). To give
    paired_bootstrap's mean over tasks the statistic above, each task's
    per-example scores are summed over the subsets holding it and scaled
    by ``T / (S * size)`` (``T`` tasks in all), which weights a task by how
    many subsets hold it. The subsets themselves are not resampled (at 4 of 4
    tasks there is only one), and :func:`scaling_curve` uses one fine-tune
    seed: the interval covers the test examples, not a draw of other subsets
    or other fine-tunes.

    ``a`` and ``b``: method keys (``"ties"``) or row labels (``"TIES"``) of
    the curve; ``size``: one of its numbers of tasks. None where the setup
    scores no single examples (``correct`` is None).

    Explained in notebook 09 (09_what_matters_at_scale.ipynb).
    """
    _check_curve(curve)
    a, b = _curve_method(curve, a, "a"), _curve_method(curve, b, "b")
    sizes = sorted(int(k) for k in curve["size"].unique())
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) not in sizes:
        raise ValueError(f"size={size!r} is not a number of tasks of the curve; its sizes are {sizes}")
    at = curve[curve["size"] == size]
    ga, gb = at[at["method"] == a].sort_values("subset"), at[at["method"] == b].sort_values("subset")
    if list(ga["subset"]) != list(gb["subset"]):
        raise ValueError(f"at size {size}, {a!r} and {b!r} were merged on different subsets: "
                         f"{list(ga['subset'])} and {list(gb['subset'])}")
    sa, sb = _curve_items(ga, a, size), _curve_items(gb, b, size)
    if sa is None or sb is None:
        return None
    scale = len(sa) / (len(ga) * size)
    return paired_bootstrap({t: scale * np.sum(x, axis=0) for t, x in sa.items()},
                            {t: scale * np.sum(x, axis=0) for t, x in sb.items()},
                            resamples=RESAMPLES, seed=BOOTSTRAP_SEED)


def scaling_differences(curve, pairs: Sequence[tuple[str, str]]):
    """Each pair ``(a, b)`` of methods at each number of tasks: :func:`scaling_difference` as a table.

    One row per (comparison, size), indexed by ``comparison`` (``"TIES −
    task arithmetic"``) and ``size``. Columns: ``subsets`` (how many subsets
    of that size the difference averages over); ``difference (points)``, the
    difference of mean *raw* test accuracy, with ``low`` and ``high``, its
    paired 95% interval, all in points; ``verdict``: ``"ahead"`` or
    ``"behind"`` (``a`` relative to ``b``) where the interval excludes zero,
    ``"tie"`` where it does not (empty, with NaN bounds, where the setup
    scores no single examples); and ``normalized difference (points)``, the
    same difference in the curve's *normalized* accuracy, without an
    interval, to read the table next to the curve.

    Explained in notebook 09 (09_what_matters_at_scale.ipynb).
    """
    if isinstance(pairs, str) or not isinstance(pairs, Sequence) or not pairs or \
            any(isinstance(p, str) or not isinstance(p, Sequence) or len(p) != 2 for p in pairs):
        raise ValueError(f"pairs must be a non-empty list of (a, b) pairs of methods, got {pairs!r}")
    _check_curve(curve)
    label = dict(zip(curve["method"], curve["row"]))
    out = []
    for a, b in pairs:
        ka, kb = _curve_method(curve, a, "a"), _curve_method(curve, b, "b")
        for size in sorted(int(k) for k in curve["size"].unique()):
            d = scaling_difference(curve, ka, kb, size)
            at = curve[curve["size"] == size].set_index("subset")
            norm = at[at["method"] == ka]["normalized"] - at[at["method"] == kb]["normalized"]
            out.append({"comparison": f"{label[ka]} − {label[kb]}", "size": size, "subsets": len(norm),
                        "difference (points)": math.nan if d is None else 100 * d.diff,
                        "low": math.nan if d is None else 100 * d.low,
                        "high": math.nan if d is None else 100 * d.high,
                        "verdict": _verdict(d, "ahead", "behind"),
                        "normalized difference (points)": 100 * float(norm.mean())})
    return pd.DataFrame(out).set_index(["comparison", "size"]).round(2)


def scaling_verdict(curve, a: str, b: str, name: str | None = None, intervals: bool = True) -> str:
    """Method ``a`` against method ``b`` at every number of tasks of the curve, in words, from the paired intervals.

    ``"ahead of task arithmetic at 2 and 3 tasks and tied at 4 tasks (differences of mean accuracy, in points,
    with paired 95% intervals: 2 tasks +2.1 [+1.0, +3.2], ...)"``, or ``"... at every number of tasks (...)"``:
    sizes with the same verdict (:func:`scaling_difference`: ahead, behind or tied) are named together, each
    verdict in the order of its first size; ``name`` (default: ``b``'s row label) names ``b``. The numbers are
    raw accuracy, not the curve's normalized accuracy; ``intervals=False`` leaves them out (for prose that points
    to :func:`scaling_differences`' table instead). Where the setup scores no single examples there is no
    interval, and it says so.

    Explained in notebook 09 (09_what_matters_at_scale.ipynb).
    """
    _check_curve(curve)
    ka, kb = _curve_method(curve, a, "a"), _curve_method(curve, b, "b")
    name = name or dict(zip(curve["method"], curve["row"]))[kb]
    sizes = sorted(int(k) for k in curve["size"].unique())
    ds = {k: scaling_difference(curve, ka, kb, k) for k in sizes}
    if any(d is None for d in ds.values()):
        return f"compared with {name} without an interval (this setup scores no single examples)"
    groups: dict[str, list[int]] = {}
    for k, d in ds.items():
        groups.setdefault(d.verdict, []).append(k)
    first = {"a ahead": f"ahead of {name}", "b ahead": f"behind {name}", "tie": f"tied with {name}"}
    later = {"a ahead": "ahead", "b ahead": "behind", "tie": "tied"}

    def at(ks: list[int]) -> str:
        if len(groups) == 1 and len(sizes) > 1:
            return "at every number of tasks"
        names = [str(k) for k in ks]
        return "at " + (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]) + " tasks"

    parts = [f"{(first if i == 0 else later)[v]} {at(ks)}" for i, (v, ks) in enumerate(groups.items())]
    words = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if not intervals:
        return words
    details = ", ".join(f"{k} tasks {100 * d.diff:+.1f} {format_interval(d)}" for k, d in ds.items())
    return f"{words} (differences of mean accuracy, in points, with paired 95% intervals: {details})"


def plot_scaling(curve, column: str = "normalized", ax=None):
    """Mean ``column`` over subsets against the number of merged tasks, one line per method (+-1 std band).

    Explained in notebook 09 (09_what_matters_at_scale.ipynb).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for row, g in curve.groupby("row", sort=False):
        stats = g.groupby("size")[column].agg(["mean", "std"]).fillna(0.0)
        ax.plot(stats.index, stats["mean"], marker="o", label=row)
        ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], alpha=0.15)
    ax.set_xlabel("number of tasks merged")
    ax.set_ylabel("normalized accuracy (merged tasks)" if column == "normalized" else "mean accuracy (merged tasks)")
    ax.set_xticks(sorted(curve["size"].unique()))
    ax.legend(fontsize=8)
    return ax
