"""Interactive explorers for notebooks 04 and 05, as plain functions first and widgets last.

Each explorer is split in three, so that the numbers are tested without a
kernel and a static page can still show them:

1. a *sweep* that does the expensive work once (localize every task at every
   density, evaluate the masked fine-tunes and the stitched model) and
   returns a plain :class:`SparsitySweep`;
2. pure *render* functions, ``(sweep, density[, tasks]) -> matplotlib Figure``
   (and ``-> pandas DataFrame`` for the numbers), which a widget calls on
   every move of a slider, instantly, because nothing is recomputed;
3. thin ``*_explorer`` functions that wire ipywidgets to (2).

On a static page (the built book) sliders move but Python cannot run, so the
notebooks also call :func:`plot_sparsity_sweep`, which draws the whole sweep
at once.

Which masks overlap is stored compactly: each entry gets a *code*, the bit
pattern of the masks that claim it (bit ``i`` for task ``i``), and a sweep
keeps only how many entries carry each code (``2**n`` counts for ``n``
tasks). Every question the explorers ask -- how many entries lie in exactly
``c`` of the chosen masks, the pairwise overlap, the weight stitching gives
each task -- is a sum over those counts, for any subset of the tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ._checks import check_mask, check_same_layout, check_task_vector
from .localize_stitch import localize_dataless, stitch

Evaluate = Callable[[Mapping[str, torch.Tensor], str], float]

#: At most this many tasks: a sweep stores 2**n counts per density.
MAX_TASKS = 16


# ----------------------------------------------------------------------------- coverage codes


def coverage_counts(masks: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """``counts[code]``: how many entries are claimed by exactly the masks whose bits are set in ``code``.

    ``masks[i]`` sets bit ``i``; ``counts[0]`` is the entries no mask claims.
    Returns an int64 tensor of length ``2**len(masks)`` summing to the number
    of entries.

    Not called in a notebook: the explorers of notebook 05 (05_localize_and_stitch.ipynb) compute their figures
    with it.
    """
    if isinstance(masks, Mapping) or not isinstance(masks, Sequence) or len(masks) == 0:
        raise TypeError(f"masks must be a non-empty list of masks (dicts of bool tensors), got {type(masks).__name__}")
    if len(masks) > MAX_TASKS:
        raise ValueError(f"masks: at most {MAX_TASKS} masks, got {len(masks)}")
    for i, m in enumerate(masks):
        check_mask(m, masks[0], f"masks[{i}]", "masks[0]")
    n = len(masks)
    counts = torch.zeros(2**n, dtype=torch.int64)
    for name in masks[0]:
        code = torch.zeros(masks[0][name].numel(), dtype=torch.int64)
        for i, m in enumerate(masks):
            code |= m[name].reshape(-1).long() << i
        counts += torch.bincount(code, minlength=2**n)
    return counts


def _popcount(x: int) -> int:
    return bin(x).count("1")


def _subset_bits(tasks: Sequence[str], chosen: Sequence[str], arg: str = "tasks") -> int:
    if isinstance(chosen, str) or not isinstance(chosen, Sequence):
        raise TypeError(f"{arg} must be a list of task names, got {type(chosen).__name__}")
    if len(chosen) == 0:
        raise ValueError(f"{arg} is empty: choose at least one task of {list(tasks)}")
    unknown = [t for t in chosen if t not in tasks]
    if unknown:
        raise ValueError(f"{arg} has unknown task(s) {unknown}; the tasks are {list(tasks)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"{arg} names a task twice: {list(chosen)}")
    return sum(1 << tasks.index(t) for t in chosen)


# ----------------------------------------------------------------------------- the sweep


@dataclass
class SparsitySweep:
    """What the explorers show, for every density of a sweep.

    * ``tasks``, ``densities``: in the order they were given;
    * ``coverage[d]``: :func:`coverage_counts` of the tasks' masks at density ``d``;
    * ``finetuned[t]``: accuracy of task ``t``'s full fine-tune (``pre + tau_t``);
    * ``masked[d][t]``: accuracy of ``pre + mask_t * tau_t`` on task ``t`` (the fine-tune, localized);
    * ``stitched[d][t]``: accuracy of the model stitched from all tasks' masks, on task ``t``;
    * ``total``: how many entries the task vectors have.

    Accuracies are ``nan`` when the sweep ran without an ``evaluate`` function.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """

    tasks: tuple[str, ...]
    densities: tuple[float, ...]
    coverage: dict[float, torch.Tensor]
    finetuned: dict[str, float]
    masked: dict[float, dict[str, float]]
    stitched: dict[float, dict[str, float]]
    total: int
    meta: dict = field(default_factory=dict)

    def index(self, density) -> float:
        """The sweep's density equal to ``density`` (to 1e-9), or a ValueError naming the ones it has."""
        if isinstance(density, bool) or not isinstance(density, (int, float)):
            raise TypeError(f"density must be a number, got {type(density).__name__}")
        for d in self.densities:
            if math.isclose(d, float(density), rel_tol=1e-9, abs_tol=1e-12):
                return d
        raise ValueError(f"density {density!r} is not in the sweep; it has {list(self.densities)}")

    def table(self):
        """A long DataFrame: one row per (density, task) with the masked and stitched accuracy and what they keep."""
        import pandas as pd

        rows = []
        for d in self.densities:
            for t in self.tasks:
                ft = self.finetuned[t]
                rows.append({"density": d, "task": t, "finetuned": ft, "masked": self.masked[d][t],
                             "stitched": self.stitched[d][t],
                             "masked / finetuned": self.masked[d][t] / ft if ft else math.nan,
                             "stitched / finetuned": self.stitched[d][t] / ft if ft else math.nan})
        return pd.DataFrame(rows)


def _check_densities(densities) -> tuple[float, ...]:
    if isinstance(densities, (str, bytes)) or not isinstance(densities, Sequence) or len(densities) == 0:
        raise TypeError(f"densities must be a non-empty list of numbers in (0, 1], got {type(densities).__name__}")
    out = []
    for d in densities:
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < float(d) <= 1:
            raise ValueError(f"densities must be numbers in (0, 1], got {d!r}")
        out.append(float(d))
    if len(set(out)) != len(out):
        raise ValueError(f"densities has a repeated value: {out}")
    return tuple(out)


def _check_task_vectors_by_name(task_vectors) -> tuple[tuple[str, ...], list]:
    if not isinstance(task_vectors, Mapping) or len(task_vectors) == 0:
        raise TypeError(f"task_vectors must be a non-empty dict of task name -> task vector, "
                        f"got {type(task_vectors).__name__}")
    if len(task_vectors) > MAX_TASKS:
        raise ValueError(f"task_vectors: at most {MAX_TASKS} tasks, got {len(task_vectors)}")
    names = tuple(task_vectors)
    tvs = list(task_vectors.values())
    for t, tv in zip(names, tvs):
        if not isinstance(t, str):
            raise TypeError(f"task_vectors must be keyed by task name (str), got key {t!r}")
        check_task_vector(tv, f"task_vectors[{t!r}]")
        check_same_layout(tvs[0], tv, f"task_vectors[{names[0]!r}]", f"task_vectors[{t!r}]")
    return names, tvs


def sparsity_sweep(
    base: Mapping[str, torch.Tensor],
    task_vectors: Mapping[str, Mapping[str, torch.Tensor]],
    densities: Sequence[float],
    evaluate: Evaluate | None = None,
    localize: Callable[[Mapping[str, torch.Tensor], float], Mapping[str, torch.Tensor]] = localize_dataless,
    finetuned: Mapping[str, float] | None = None,
    progress: bool = True,
) -> SparsitySweep:
    """Localize every task at every density; record the overlaps and (with ``evaluate``) the accuracies.

    ``task_vectors`` maps a task name to its task vector (all with the same
    tensors, a subset of ``base``'s). ``evaluate(body, task) -> accuracy``
    scores a state dict on one task, e.g.
    ``lambda body, t: vision.evaluate(body, t, "val")``; it is called
    ``len(tasks) * (1 + 2 * len(densities))`` times. ``localize(tau, density)``
    returns a mask (default: :func:`lsedu.localize_dataless`, the global
    top-k of ``|tau|``). ``finetuned`` (``{task: accuracy}`` of the full
    fine-tunes, by the same ``evaluate``) saves those ``len(tasks)`` calls
    when they are already known.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    from tqdm.auto import tqdm

    tasks, tvs = _check_task_vectors_by_name(task_vectors)
    densities = _check_densities(densities)
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"evaluate must be a callable (body, task) -> accuracy, or None; got {type(evaluate).__name__}")
    if not callable(localize):
        raise TypeError(f"localize must be a callable (task_vector, density) -> mask, got {type(localize).__name__}")

    def score(body, t) -> float:
        return float(evaluate(body, t)) if evaluate is not None else math.nan

    if finetuned is not None:
        if not isinstance(finetuned, Mapping) or set(finetuned) != set(tasks):
            raise ValueError(f"finetuned must be a dict with an accuracy for each task {list(tasks)}, got "
                             f"{sorted(finetuned) if isinstance(finetuned, Mapping) else type(finetuned).__name__}")
        finetuned = {t: float(finetuned[t]) for t in tasks}
    else:
        full = [{n: torch.ones(x.shape, dtype=torch.bool) for n, x in tv.items()} for tv in tvs]
        finetuned = {t: score(stitch(base, [tv], [m]), t) for t, tv, m in zip(tasks, tvs, full)}
    coverage, masked, stitched = {}, {}, {}
    for d in tqdm(densities, desc="sparsity sweep", disable=not progress):
        masks = [localize(tv, d) for tv in tvs]
        coverage[d] = coverage_counts(masks)
        masked[d] = {t: score(stitch(base, [tv], [m]), t) for t, tv, m in zip(tasks, tvs, masks)}
        merged = stitch(base, tvs, masks) if evaluate is not None else None
        stitched[d] = {t: score(merged, t) for t in tasks}
    total = int(next(iter(coverage.values())).sum())
    return SparsitySweep(tasks, densities, coverage, finetuned, masked, stitched, total)


# ----------------------------------------------------------------------------- numbers from coverage counts


def overlap_from_coverage(counts: torch.Tensor, n_tasks: int) -> torch.Tensor:
    """``overlap[i, j]``: entries claimed by both mask ``i`` and mask ``j`` (the diagonal: each mask's size).

    The same numbers as ``lsedu.mask_overlap(masks).counts``, from the coverage counts alone.

    Not called in a notebook: the explorers of notebook 05 (05_localize_and_stitch.ipynb) compute their figures
    with it.
    """
    counts = _check_counts(counts, n_tasks)
    out = torch.zeros(n_tasks, n_tasks, dtype=torch.int64)
    for code in range(len(counts)):
        c = int(counts[code])
        if c == 0:
            continue
        bits = [i for i in range(n_tasks) if code >> i & 1]
        for i in bits:
            for j in bits:
                out[i, j] += c
    return out


def _check_counts(counts, n_tasks: int) -> torch.Tensor:
    if not isinstance(counts, torch.Tensor) or counts.dim() != 1:
        raise TypeError(f"counts must be a 1-d tensor (coverage_counts), got {type(counts).__name__}")
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or not 1 <= n_tasks <= MAX_TASKS:
        raise ValueError(f"n_tasks must be an int in [1, {MAX_TASKS}], got {n_tasks!r}")
    if len(counts) != 2**n_tasks:
        raise ValueError(f"counts has {len(counts)} entries, expected 2**n_tasks = {2**n_tasks}")
    return counts


def iou_matrix(sweep: SparsitySweep, density: float):
    """Intersection over union of every pair of masks at ``density``, as a DataFrame (tasks x tasks).

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    import pandas as pd

    d = _check_sweep(sweep).index(density)
    inter = overlap_from_coverage(sweep.coverage[d], len(sweep.tasks)).double()
    sizes = inter.diag()
    union = sizes[:, None] + sizes[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
    return pd.DataFrame(iou.numpy(), index=list(sweep.tasks), columns=list(sweep.tasks))


def overlap_counts(sweep: SparsitySweep, density: float, tasks: Sequence[str] | None = None) -> dict[int, int]:
    """``{c: entries claimed by exactly c of the chosen tasks' masks}`` for c = 1 .. len(tasks), at ``density``.

    Not called in a notebook: the explorers of notebook 05 (05_localize_and_stitch.ipynb) compute their figures
    with it.
    """
    d = _check_sweep(sweep).index(density)
    chosen, bits = _chosen(sweep, tasks)
    out = {c: 0 for c in range(1, len(chosen) + 1)}
    for code, c in enumerate(sweep.coverage[d].tolist()):
        k = _popcount(code & bits)
        if k:
            out[k] += c
    return out


def stitch_weights(sweep: SparsitySweep, density: float, tasks: Sequence[str] | None = None):
    """How stitching the chosen tasks resolves their overlaps, at ``density``, as a DataFrame.

    One row per chosen task. Column ``"weight 1/c"`` (c = 1 .. len(tasks))
    counts the entries of the task's mask that ``c`` chosen masks claim:
    stitching gives the task weight ``gamma' = 1/c`` there (its ``tau`` is
    averaged with the others'). ``"mask size"`` is the row's sum,
    ``"mean weight"`` the average ``gamma'`` over the task's mask and
    ``"alone"`` the share of its mask where it keeps full weight.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    import pandas as pd

    d = _check_sweep(sweep).index(density)
    chosen, bits = _chosen(sweep, tasks)
    counts = sweep.coverage[d].tolist()
    rows = {}
    for t in chosen:
        i = sweep.tasks.index(t)
        by_c = [0] * len(chosen)
        for code, n in enumerate(counts):
            if code >> i & 1 and n:
                by_c[_popcount(code & bits) - 1] += n
        size = sum(by_c)
        row = {_weight_label(c): by_c[c - 1] for c in range(1, len(chosen) + 1)}
        row["mask size"] = size
        row["mean weight"] = sum(n / c for c, n in enumerate(by_c, 1)) / size if size else math.nan
        row["alone"] = by_c[0] / size if size else math.nan
        rows[t] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _weight_label(c: int) -> str:
    return "weight 1" if c == 1 else f"weight 1/{c}"


def _chosen(sweep: SparsitySweep, tasks) -> tuple[list[str], int]:
    """The chosen tasks as a list (all of the sweep's when ``tasks`` is None) and their bit pattern."""
    if tasks is None:
        tasks = list(sweep.tasks)
    bits = _subset_bits(sweep.tasks, tasks)
    return list(tasks), bits


def _check_sweep(sweep) -> SparsitySweep:
    if not isinstance(sweep, SparsitySweep):
        raise TypeError(f"sweep must be a SparsitySweep (from sparsity_sweep), got {type(sweep).__name__}")
    return sweep


# ----------------------------------------------------------------------------- rendering (pure: data -> Figure)


def render_sparsity(sweep: SparsitySweep, density: float):
    """The sparsity explorer's picture at one density: the masks' overlap (IoU heatmap) and what each task keeps.

    Left: intersection over union of every pair of the tasks' masks. Right:
    each task's accuracy as a share of its full fine-tune's, for the
    fine-tune masked to ``density`` and for the model stitched from all
    masks. Returns a new matplotlib Figure (the caller shows or closes it).

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    import matplotlib.pyplot as plt

    d = _check_sweep(sweep).index(density)
    iou = iou_matrix(sweep, d)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1, 1.3]})
    im = ax0.imshow(iou.values, vmin=0, vmax=1, cmap="viridis")
    n = len(sweep.tasks)
    ax0.set_xticks(range(n), sweep.tasks, rotation=45, ha="right")
    ax0.set_yticks(range(n), sweep.tasks)
    for i in range(n):
        for j in range(n):
            v = iou.values[i, j]
            ax0.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
    fig.colorbar(im, ax=ax0, fraction=0.046, label="IoU of the masks")
    ax0.set_title(f"mask overlap at density {d:g}")

    kept = sweep.table()
    kept = kept[kept["density"] == d].set_index("task")
    x = torch.arange(n).numpy()
    ax1.bar(x - 0.2, kept["masked / finetuned"], 0.4, label="fine-tune, masked")
    ax1.bar(x + 0.2, kept["stitched / finetuned"], 0.4, label="stitched (all tasks)")
    ax1.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax1.set_xticks(x, sweep.tasks)
    ax1.set_ylim(0, 1.15)
    ax1.set_ylabel("accuracy / fine-tuned accuracy")
    ax1.set_title("what each task keeps")
    ax1.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_sparsity_sweep(sweep: SparsitySweep):
    """The whole sweep in one Figure, for pages without a kernel.

    Left: accuracy kept (share of the fine-tune's) vs density, per task, for
    the masked fine-tune (solid) and the stitched model (dashed). Right: the
    mean pairwise IoU of the masks and the share of claimed entries that more
    than one mask claims, vs density.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    import matplotlib.pyplot as plt

    _check_sweep(sweep)
    table = sweep.table()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, t in enumerate(sweep.tasks):
        rows = table[table["task"] == t]
        color = f"C{k}"
        ax0.plot(rows["density"], rows["masked / finetuned"], "o-", color=color, label=f"{t}, masked")
        ax0.plot(rows["density"], rows["stitched / finetuned"], "s--", color=color, label=f"{t}, stitched")
    ax0.set_xscale("log")
    ax0.axhline(1.0, color="grey", lw=0.8)
    ax0.set_xlabel("density of each mask")
    ax0.set_ylabel("accuracy / fine-tuned accuracy")
    ax0.legend(fontsize=7, ncol=2)
    n = len(sweep.tasks)
    mean_iou, shared = [], []
    for d in sweep.densities:
        iou = iou_matrix(sweep, d).values
        off = [iou[i, j] for i in range(n) for j in range(n) if i < j]
        mean_iou.append(sum(off) / len(off) if off else math.nan)
        counts = overlap_counts(sweep, d)
        claimed = sum(counts.values())
        shared.append(sum(v for c, v in counts.items() if c >= 2) / claimed if claimed else math.nan)
    ax1.plot(sweep.densities, mean_iou, "o-", label="mean IoU of two masks")
    ax1.plot(sweep.densities, shared, "s-", label="claimed entries in 2+ masks")
    ax1.set_xscale("log")
    ax1.set_ylim(0, 1)
    ax1.set_xlabel("density of each mask")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    return fig


def render_overlap(sweep: SparsitySweep, density: float, tasks: Sequence[str] | None = None):
    """The overlap explorer's picture: how many entries lie in 1, 2, ... of the chosen masks, and the weight
    stitching gives each chosen task on its own mask (stacked: full weight, 1/2, 1/3, ...).

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    import matplotlib.pyplot as plt

    d = _check_sweep(sweep).index(density)
    chosen, _ = _chosen(sweep, tasks)
    counts = overlap_counts(sweep, d, chosen)
    weights = stitch_weights(sweep, d, chosen)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax0.bar([str(c) for c in counts], list(counts.values()), color="C0")
    for c, v in counts.items():
        ax0.text(str(c), v, f"{v:,}", ha="center", va="bottom", fontsize=8)
    ax0.set_xlabel("in how many of the chosen masks")
    ax0.set_ylabel("entries")
    ax0.set_title(f"{len(chosen)} tasks, density {d:g}")
    left = [0.0] * len(chosen)
    for c in range(1, len(chosen) + 1):
        col = weights[_weight_label(c)] / weights["mask size"].clip(lower=1)
        ax1.barh(chosen, col, left=left, label=_weight_label(c), color=f"C{c - 1}")
        left = [a + b for a, b in zip(left, col)]
    ax1.set_xlim(0, 1)
    ax1.invert_yaxis()
    ax1.set_xlabel("share of the task's mask")
    ax1.set_title("weight stitching gives the task")
    ax1.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- widgets (thin)


def _show(fig) -> None:
    import matplotlib.pyplot as plt
    from IPython.display import display

    display(fig)
    plt.close(fig)


def sparsity_explorer(sweep: SparsitySweep):
    """A density slider driving :func:`render_sparsity` (needs a live kernel to redraw). Returns the widget.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    import ipywidgets as widgets

    _check_sweep(sweep)
    slider = widgets.SelectionSlider(options=[(f"{d:g}", d) for d in sweep.densities], value=sweep.densities[0],
                                     description="density", continuous_update=False)
    out = widgets.interactive_output(lambda density: _show(render_sparsity(sweep, density)), {"density": slider})
    return widgets.VBox([slider, out])


def overlap_explorer(sweep: SparsitySweep):
    """Task checkboxes and a density slider driving :func:`render_overlap`. Returns the widget.

    Explained in notebook 05 (05_localize_and_stitch.ipynb).
    """
    import ipywidgets as widgets

    _check_sweep(sweep)
    boxes = {t: widgets.Checkbox(value=True, description=t, indent=False) for t in sweep.tasks}
    slider = widgets.SelectionSlider(options=[(f"{d:g}", d) for d in sweep.densities], value=sweep.densities[0],
                                     description="density", continuous_update=False)

    def draw(density, **checked):
        chosen = [t for t in sweep.tasks if checked[t]]
        if not chosen:
            print("choose at least one task")
            return
        _show(render_overlap(sweep, density, chosen))

    out = widgets.interactive_output(draw, {"density": slider, **boxes})
    return widgets.VBox([widgets.HBox(list(boxes.values())), slider, out])
