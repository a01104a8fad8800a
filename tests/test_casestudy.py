"""lsedu.casestudy: the comparison table of notebooks 06-09.

A toy setup (a linear body on Gaussian blobs) checks the table against naive
computations; the paper track's code path runs offline on the zoo's tiny
random-init configs (as tests/test_zoo_paper.py does) on a very small budget.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lsedu
from lsedu import casestudy
from lsedu.casestudy import CaseStudyConfig, comparison_table, delta_bytes, summarize, task_subsets
from lsedu.zoo import FinetuneConfig, Setup, Split, TaskData

SMALL = CaseStudyConfig(finetune_seeds=(0, 1), merge_seeds=(0, 1, 2), lambda_grid=(0.5, 1.0), ties_densities=(0.5,),
                        ties_lambdas=(1.0,), stitch_densities=(0.3,), loc_batches=1, loc_batch_size=8, loc_epochs=1)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LSEDU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LSEDU_DEVICE", "cpu")


# ----------------------------------------------------------------------------- a toy setup


def _blobs(task: int, n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(1000 * task + seed)
    y = torch.arange(n) % 2
    centre = torch.zeros(2, 6)
    centre[0, task], centre[1, task] = 1.5, -1.5
    return Split(centre[y] + torch.randn(n, 6, generator=g), y)


class Toy(Setup):
    """Three binary tasks on 6-d inputs; body: a 6x6 linear layer; head: the task's input coordinate."""

    name = "toy"
    tasks = ("a", "b", "c")
    finetune_config = FinetuneConfig(epochs=2, lr=0.05, batch_size=8)

    def identity(self):
        return {"toy": 1}

    def build_body(self):
        return nn.Linear(6, 6)

    def load_pretrained(self):
        return {"weight": torch.eye(6) * 0.3, "bias": torch.zeros(6)}

    def load_task(self, task):
        i = self.tasks.index(task)
        return TaskData(task, ("pos", "neg"), _blobs(i, 32, 0), _blobs(i, 16, 1), _blobs(i, 40, 2))

    def batches(self, task, split, batch_size, *, shuffle=False, generator=None):
        order = torch.randperm(len(split), generator=generator) if shuffle else torch.arange(len(split))
        for s in range(0, len(split), batch_size):
            idx = order[s:s + batch_size]
            yield split.inputs[idx], split.labels[idx]

    def logits(self, task, forward, batch):
        z = forward(batch[0])[:, self.tasks.index(task)]
        return torch.stack([z, -z], dim=1)

    def loss(self, task, forward, batch):
        return F.cross_entropy(self.logits(task, forward, batch), batch[1])

    def predict(self, task, forward, batch):
        return self.logits(task, forward, batch).argmax(-1), batch[1]


@pytest.fixture(scope="module")
def toy_table(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("LSEDU_CACHE", str(tmp_path_factory.mktemp("cache")))
    try:
        setup = Toy(device="cpu", progress=False)
        yield setup, comparison_table(setup, config=SMALL)
    finally:
        mp.undo()


def test_table_has_every_row_and_column(toy_table):
    _, table = toy_table
    assert list(table.index) == ["pretrained", "fine-tune: a", "fine-tune: b", "fine-tune: c",
                                 casestudy.LABELS["individual"], "multi-task learning", "uniform averaging",
                                 "task arithmetic", "TIES", "DARE + task arithmetic",
                                 "Localize-and-Stitch (dataless)", "Localize-and-Stitch (trained)"]
    for col in ("a", "b", "c", "average", "average_std", "normalized", "normalized_std", "storage_mb", "runs"):
        assert col in table.columns
    runs = table.attrs["runs"]
    # deterministic rows: one run per fine-tune seed; DARE and trained masks: x3 merge seeds
    assert table.loc["task arithmetic", "runs"] == 2 and table.loc["DARE + task arithmetic", "runs"] == 6
    assert table.loc["Localize-and-Stitch (trained)", "runs"] == 6
    assert set(runs["finetune_seed"]) == {0, 1}
    assert table["average"].between(0, 1).all()


def test_table_matches_naive_computations(toy_table):
    setup, table = toy_table
    pre = setup.pretrained()
    runs = table.attrs["runs"]
    for seed in (0, 1):
        fts = {t: setup.finetune(t, setup.finetune_config.replace(seed=seed)) for t in setup.tasks}
        r = runs[runs["finetune_seed"] == seed].set_index("row")
        # uniform averaging: the element-wise mean of the fine-tunes
        avg = {n: sum(fts[t][n] for t in setup.tasks) / 3 for n in pre}
        for t in setup.tasks:
            assert r.loc["uniform averaging", f"acc:{t}"] == pytest.approx(setup.evaluate(avg, t))
        # individual: each fine-tune on its own task; normalized = mean of ratios to it
        own = {t: setup.evaluate(fts[t], t) for t in setup.tasks}
        shown = [r.loc[casestudy.LABELS["individual"], f"acc:{t}"] for t in setup.tasks]
        assert shown == pytest.approx(list(own.values()))
        accs = {t: r.loc["task arithmetic", f"acc:{t}"] for t in setup.tasks}
        assert r.loc["task arithmetic", "normalized"] == pytest.approx(sum(accs[t] / own[t] for t in own) / 3)
        assert r.loc["task arithmetic", "average"] == pytest.approx(sum(accs.values()) / 3)
        # task arithmetic: lambda is the grid's best by mean validation accuracy (first on ties), never test
        taus = [{n: fts[t][n] - pre[n] for n in pre} for t in setup.tasks]
        val = {lam: sum(setup.evaluate({n: pre[n] + lam * sum(tv[n] for tv in taus) for n in pre}, t, "val")
                        for t in setup.tasks) / 3 for lam in SMALL.lambda_grid}
        best = max(val, key=lambda k: val[k])
        assert r.loc["task arithmetic", "choice"] == f"lambda={best:g}"
        # storage: the pretrained model is free; N fine-tunes cost N deltas, each the cheapest of dense
        # (4 bytes an entry), values + int32 indices, values + one bit an entry. Here a task's gradient only
        # reaches its own output row, so the deltas are sparse.
        def naive(ft):
            nz = sum(int((ft[n] != pre[n]).sum()) for n in pre)
            return min(sum(4 * t.numel() for t in pre.values()), 8 * nz,
                       4 * nz + sum(math.ceil(t.numel() / 8) for t in pre.values()))

        assert r.loc["pretrained", "storage_mb"] == 0
        assert r.loc[casestudy.LABELS["individual"], "storage_mb"] * 2**20 == sum(naive(fts[t]) for t in fts)
        assert r.loc["uniform averaging", "storage_mb"] * 2**20 == naive(avg)
    # the summary is the mean (and sample std) over runs
    g = runs[runs["row"] == "DARE + task arithmetic"]
    assert table.loc["DARE + task arithmetic", "average"] == pytest.approx(g["average"].mean())
    assert table.loc["DARE + task arithmetic", "average_std"] == pytest.approx(g["average"].std(ddof=1))


def test_stitched_storage_counts_the_masked_entries_only(toy_table):
    _, table = toy_table
    stitched = table.loc["Localize-and-Stitch (dataless)", "storage_mb"]
    assert stitched <= table.loc["uniform averaging", "storage_mb"]  # a subset of the averaged entries
    assert stitched < table.loc[casestudy.LABELS["individual"], "storage_mb"]


def test_cache_gives_the_same_table_without_work(toy_table, monkeypatch):
    setup, table = toy_table
    mp_cache = setup  # the module fixture's cache is gone; a new private cache: compute, then read back
    first = comparison_table(mp_cache, config=SMALL.replace(finetune_seeds=(0,)), methods=("pretrained", "averaging"))

    def boom(*a, **k):
        raise AssertionError("a row was computed although it is cached")

    for row in casestudy._ROWS:
        monkeypatch.setitem(casestudy._ROWS, row, boom)
    again = comparison_table(mp_cache, config=SMALL.replace(finetune_seeds=(0,)), methods=("pretrained", "averaging"))
    pd.testing.assert_frame_equal(first.drop(columns="choice"), again.drop(columns="choice"))
    assert list(first.index) == ["pretrained", "uniform averaging"]


def test_summarize_by_hand():
    runs = pd.DataFrame([
        {"row": "m", "acc:x": 0.5, "acc:y": 0.7, "average": 0.6, "normalized": 0.8, "storage_mb": 2.0, "choice": "l=1"},
        {"row": "m", "acc:x": 0.7, "acc:y": 0.9, "average": 0.8, "normalized": 1.0, "storage_mb": 2.0, "choice": "l=1"},
        {"row": "p", "acc:x": 0.1, "acc:y": 0.3, "average": 0.2, "normalized": 0.3, "storage_mb": 0.0, "choice": ""},
    ])
    t = summarize(runs, ["x", "y"])
    assert list(t.index) == ["m", "p"]
    assert t.loc["m", "x"] == pytest.approx(0.6) and t.loc["m", "average"] == pytest.approx(0.7)
    assert t.loc["m", "average_std"] == pytest.approx(math.sqrt(0.02))  # sample std of 0.6, 0.8
    assert math.isnan(t.loc["p", "average_std"]) and t.loc["p", "runs"] == 1 and t.loc["m", "choice"] == "l=1"
    with pytest.raises(ValueError, match="acc:z"):
        summarize(runs, ["x", "z"])
    with pytest.raises(ValueError, match="empty"):
        summarize(runs.iloc[:0], ["x"])


def test_ordering_and_plots(toy_table):
    import matplotlib

    matplotlib.use("Agg")
    _, table = toy_table
    order = casestudy.ordering(table)
    assert sorted(order) == sorted(["uniform averaging", "task arithmetic", "TIES", "Localize-and-Stitch (dataless)"])
    assert [table.loc[r, "average"] for r in order] == sorted((table.loc[r, "average"] for r in order), reverse=True)
    ax = casestudy.plot_comparison(table)
    assert len(ax.patches) == len(table) - 3  # the three per-task fine-tune rows are not drawn
    with pytest.raises(ValueError, match="column"):
        casestudy.plot_comparison(table, column="storage_mb")
    with pytest.raises(ValueError, match="'nope'"):
        casestudy.ordering(table, rows=("nope",))


def test_scaling_curve_on_the_toy():
    setup = Toy(device="cpu", progress=False)
    cfg = SMALL.replace(finetune_seeds=(0,))
    curve = casestudy.scaling_curve(setup, subsets_per_size=2, config=cfg, methods=("averaging", "task_arithmetic"))
    assert sorted(set(curve["size"])) == [2, 3]
    assert (curve.groupby("size")["subset"].nunique() == pd.Series({2: 2, 3: 1})).all()
    assert set(curve["method"]) == {"averaging", "task_arithmetic"}
    ax = casestudy.plot_scaling(curve)
    assert len(ax.get_lines()) == 2
    with pytest.raises(ValueError, match="merges only"):
        casestudy.scaling_curve(setup, methods=("pretrained",))
    with pytest.raises(ValueError, match="sizes"):
        casestudy.scaling_curve(setup, sizes=(1,))


def test_delta_bytes_dense_and_sparse():
    base = {"w": torch.zeros(100), "b": torch.zeros(10)}
    dense = {"w": torch.ones(100), "b": torch.ones(10)}
    assert delta_bytes(base, dense, ["w", "b"]) == 110 * 4
    sparse = {"w": torch.zeros(100), "b": torch.zeros(10)}
    sparse["w"][3] = 1.0
    # one value (4 bytes) plus its position: the bitmask (13 + 2 bytes) is dearer than one int32 index
    assert delta_bytes(base, sparse, ["w", "b"]) == 4 + 4
    assert delta_bytes(base, sparse, ["b"]) == 0


def test_task_subsets():
    tasks = ("a", "b", "c", "d")
    assert task_subsets(tasks, 2, 10) == [("a", "b"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d")]
    picked = task_subsets(tasks, 2, 3, seed=5)
    assert len(picked) == 3 == len(set(picked)) and picked == task_subsets(tasks, 2, 3, seed=5)
    with pytest.raises(ValueError, match="size"):
        task_subsets(tasks, 5, 3)
    with pytest.raises(ValueError, match="limit"):
        task_subsets(tasks, 2, 0)


@pytest.mark.parametrize("changes, match", [
    ({"finetune_seeds": ()}, "finetune_seeds"),
    ({"merge_seeds": (0, 0)}, "merge_seeds"),
    ({"lambda_grid": (0.0,)}, "lambda_grid"),
    ({"ties_densities": (1.5,)}, "ties_densities"),
    ({"stitch_densities": "0.1"}, "stitch_densities"),
    ({"dare_p": 1.0}, "dare_p"),
    ({"loc_epochs": 0}, "loc_epochs"),
    ({"eval_batch_size": True}, "eval_batch_size"),
])
def test_config_errors_name_the_field(changes, match):
    with pytest.raises(ValueError, match=match):
        CaseStudyConfig(**changes)


def test_bad_arguments_name_the_culprit():
    setup = Toy(device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"\['z'\]"):
        comparison_table(setup, tasks=("a", "z"))
    with pytest.raises(ValueError, match="at least 2"):
        comparison_table(setup, tasks=("a",))
    with pytest.raises(TypeError, match="tasks"):
        comparison_table(setup, tasks="ab")
    with pytest.raises(ValueError, match=r"\['soup'\]"):
        comparison_table(setup, methods=("soup",))
    with pytest.raises(TypeError, match="CaseStudyConfig"):
        comparison_table(setup, config={"finetune_seeds": (0,)})


# ----------------------------------------------------------------------------- the paper track, tiny and offline

TINY = CaseStudyConfig(finetune_seeds=(0,), merge_seeds=(0, 1, 2), lambda_grid=(0.5, 1.0), ties_densities=(0.2,),
                       ties_lambdas=(1.0,), dare_p=0.5, stitch_densities=(0.1,), loc_batches=1, loc_batch_size=4,
                       loc_epochs=1, eval_batch_size=8)


def _sst2() -> TaskData:
    good = ["a warm and funny film", "great acting and a clever plot", "I loved every minute", "a joy to watch"]
    bad = ["a dull and silly film", "bad acting and a lazy plot", "I hated every minute", "a chore to watch"]
    split = Split([(t,) for t in good + bad] * 2, [1] * 4 + [0] * 4 + [1] * 4 + [0] * 4)
    return TaskData("SST-2", ("negative", "positive"), split.subset(range(8)), split.subset(range(8, 12)), split)


def _rte() -> TaskData:
    pairs = [("A man is sleeping.", "A man rests."), ("A dog runs in a park.", "An animal is outside."),
             ("A man is sleeping.", "The man is running a race."), ("A dog runs in a park.", "The dog is asleep.")]
    split = Split(pairs * 2, [0, 0, 1, 1] * 2)
    return TaskData("RTE", ("entailment", "not_entailment"), split, split.subset([0, 2, 1, 3]), split)


def _images(name: str, classes: tuple[str, ...], seed: int) -> TaskData:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(8) % len(classes)
    x = torch.randn(18, 3, 32, 32, generator=g)
    return TaskData(name, classes, Split(x[:8], labels), Split(x[8:12], labels[:4]), Split(x[12:], labels[:6]))


def _mc(name: str) -> TaskData:
    qs = [("Question: What is ice made of?\nAnswer:", [" rock", " water", " wood"], 1),
          ("Question: What force pulls things down?\nAnswer:", [" gravity", " magnetism", " friction"], 0),
          ("Q: Can pigs fly?\nA:", [" No, pigs cannot fly.", " Yes, pigs fly."], 0),
          ("Q: Is the earth flat?\nA:", [" Yes.", " No, it is round."], 1)] * 2
    split = Split([{"prompt": p, "options": o} for p, o, _ in qs], [y for _, _, y in qs])
    return TaskData(name, ("0", "1", "2"), split, split.subset([0, 2, 3]), split.subset([1, 2, 5, 7]))


def _paper_setup(which: str):
    from lsedu.zoo.paper import GPT2XL, ClipViTB32, GPT2XLConfig, RobertaLMBFF, RobertaLMBFFConfig

    steps = FinetuneConfig(epochs=1, lr=1e-3, batch_size=4, seed=0)
    if which == "text":
        return RobertaLMBFF(tiny=True, data={"SST-2": _sst2(), "RTE": _rte()}, progress=False,
                            config=RobertaLMBFFConfig(steps=2, finetune=steps))
    if which == "vision":
        data = {"MNIST": _images("MNIST", ("0", "1", "2"), 0), "EuroSAT": _images("EuroSAT", ("forest", "river"), 10)}
        return ClipViTB32(tiny=True, data=data, progress=False,
                          config=paper_clip_config(steps))
    return GPT2XL(tiny=True, data={"science": _mc("science"), "truthfulness": _mc("truthfulness")},
                  progress=False, config=GPT2XLConfig(finetune=steps))


def paper_clip_config(steps):
    from lsedu.zoo.paper import ClipViTB32Config

    return ClipViTB32Config(epochs={"MNIST": 1, "EuroSAT": 1}, warmup_steps=0, finetune=steps)


@pytest.mark.parametrize("which", ["text", "vision", "causal_lm"])
def test_paper_track_runs_the_whole_table_offline(which):
    """The notebooks' paper track (TRACK = "paper") on tiny random models: every row, merged tensors only."""
    setup = _paper_setup(which)
    table = comparison_table(setup, config=TINY)
    tasks = list(setup.tasks)
    assert len(tasks) == 2 and all(t in table.columns for t in tasks)
    assert {"pretrained", "multi-task learning", "TIES", "Localize-and-Stitch (trained)"} <= set(table.index)
    assert table[tasks].stack().between(0, 1).all()
    assert table.loc["DARE + task arithmetic", "runs"] == 3
    # storage covers the merged tensors only: a fine-tune's delta is at most their dense size
    names = setup.merge_names()
    dense = sum(setup.pretrained()[n].numel() * 4 for n in names)
    assert 0 < table.loc[f"fine-tune: {tasks[0]}", "storage_mb"] * 2**20 <= dense
    assert table.loc["Localize-and-Stitch (dataless)", "storage_mb"] * 2**20 < dense


def test_merge_names_laptop_default_is_the_trainable_floats():
    setup = Toy(device="cpu", progress=False)
    assert setup.merge_names() == ["weight", "bias"]
    assert lsedu.storage  # the library function storage relies on


def test_pretty_and_paper_comparison(toy_table):
    _, table = toy_table
    shown = casestudy.pretty(table)
    assert list(shown.columns[:3]) == ["a", "b", "c"] and "±" in shown.loc["DARE + task arithmetic", "average"]
    assert shown.loc["pretrained", "storage (MB)"] == "0.00"
    cmp = casestudy.paper_comparison(table, "vision")
    assert cmp.loc["TIES", "paper (%)"] == 72.4
    assert cmp.loc["TIES", "ours (%)"] == pytest.approx(100 * table.loc["TIES", "average"])
    assert math.isnan(cmp.loc["DARE + task arithmetic", "paper (%)"])
    with pytest.raises(ValueError, match="setup_name"):
        casestudy.paper_comparison(table, "audio")


def test_limited_evaluation_scores_the_first_examples():
    setup = Toy(device="cpu", progress=False)
    pre = setup.pretrained()
    full = setup.evaluate_all(pre, ["a"], "test")["a"]
    assert full == setup.evaluate(pre, "a")
    first = setup.evaluate_all(pre, ["a"], "test", limit=10)["a"]
    data = setup.task("a").test.subset(range(10))
    z = data.inputs @ pre["weight"].T + pre["bias"]
    assert first == pytest.approx(float(((z[:, 0] < 0).long() == data.labels).float().mean()))
    assert setup.evaluate_all(pre, ["a"], "test", limit=10_000)["a"] == full
    with pytest.raises(ValueError, match="max_test"):
        CaseStudyConfig(max_test=0)


def test_reading_helpers_match_the_table(toy_table):
    import matplotlib

    matplotlib.use("Agg")
    _, table = toy_table
    avg = table["average"]
    pre, ind = avg["pretrained"], avg[casestudy.LABELS["individual"]]
    summary = casestudy.merge_summary(table)
    assert list(summary.index) == list(casestudy.MERGES) + ["multi-task learning"]
    for r in summary.index:
        assert summary.loc[r, "gap closed (%)"] == pytest.approx(round(100 * (avg[r] - pre) / (ind - pre), 1))
        assert summary.loc[r, "average (%)"] == pytest.approx(round(100 * avg[r], 1))
    steps = casestudy.ordering_steps(table)
    assert list(steps["papers"]) == list(casestudy.PAPERS_ORDER)
    assert sorted(steps["ours"]) == sorted(casestudy.PAPERS_ORDER)
    ours = [100 * avg[r] for r in steps["ours"]]
    assert ours == sorted(ours, reverse=True)
    assert steps["step to next (points)"].iloc[0] == pytest.approx(round(ours[0] - ours[1], 1))
    assert math.isnan(steps["step to next (points)"].iloc[-1])
    runs = casestudy.stochastic_runs(table)
    assert set(runs["row"]) == {"DARE + task arithmetic", "Localize-and-Stitch (trained)"} and len(runs) == 12
    best = casestudy.best_merge(table)
    assert avg[best] == max(avg[r] for r in casestudy.MERGES)
    mtl = casestudy.multitask_comparison(table)
    assert list(mtl.index) == ["pretrained", "multi-task", f"best merge ({best})", "individual"]
    assert mtl.loc["multi-task", "a"] == pytest.approx(round(table.loc["multi-task learning", "a"], 3))
    fig = casestudy.plot_table(table, "tasks")
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == "mean test accuracy over the tasks"
    cmp = casestudy.paper_comparison(table, "vision")
    paper = casestudy.PAPER_AVERAGES["vision"]
    assert cmp.loc["TIES", "paper: gap closed (%)"] == pytest.approx(
        100 * (paper["ties"] - paper["pretrained"]) / (paper["individual"] - paper["pretrained"]))
    assert cmp.loc["TIES", "ours: gap closed (%)"] == pytest.approx(100 * (avg["TIES"] - pre) / (ind - pre))
    assert cmp.loc["TIES", "ours: / individual"] == pytest.approx(avg["TIES"] / ind)
    assert math.isnan(casestudy.paper_comparison(table, "text").loc["TIES", "paper: gap closed (%)"])


def test_rows_are_cached_by_the_fields_they_depend_on(tmp_path, monkeypatch):
    setup = Toy(device="cpu", progress=False)
    cfg = SMALL.replace(finetune_seeds=(0,))
    casestudy.run_rows(setup, ["pretrained", "ties", "task_arithmetic"], config=cfg)
    computed = []
    for row, build in list(casestudy._ROWS.items()):
        monkeypatch.setitem(casestudy._ROWS, row, lambda s, row=row, build=build: computed.append(row) or build(s))
    # a new TIES grid recomputes the TIES row only; the pretrained row does not depend on the fine-tune seed
    casestudy.run_rows(setup, ["pretrained", "ties", "task_arithmetic"], config=cfg.replace(ties_lambdas=(0.5,)))
    assert computed == ["ties"]
    casestudy.run_rows(setup, ["pretrained"], config=cfg.replace(finetune_seeds=(1,)))
    assert computed == ["ties", "individual"]


def test_finetune_all_caches_every_task_and_seed_for_the_rows(monkeypatch):
    setup = Toy(device="cpu", progress=False)
    casestudy.finetune_all(setup, config=SMALL.replace(finetune_seeds=(0, 1)))
    trained = []
    real = Setup._train
    monkeypatch.setattr(Setup, "_train", lambda self, *a, **k: trained.append(a) or real(self, *a, **k))
    for seed in (0, 1):
        for t in setup.tasks:
            setup.finetune(t, setup.finetune_config.replace(seed=seed))
    assert trained == []  # every fine-tune the rows need was cached by finetune_all
    setup.finetune("a", setup.finetune_config.replace(seed=2))
    assert len(trained) == 1  # the spy sees a fine-tune that was not cached


# ----------------------------------------------------------------------------- paired intervals


class ReversedToy(Toy):
    """The toy, evaluated in reverse order: per-example results must still come back in the stored order."""

    def eval_order(self, task, split):
        return torch.arange(len(split) - 1, -1, -1)


def test_correct_is_per_example_in_the_stored_order():
    setup = ReversedToy(device="cpu", progress=False)
    pre = setup.pretrained()
    data = setup.task("a").test
    z = data.inputs @ pre["weight"].T + pre["bias"]
    naive = (z[:, 0] < 0).long() == data.labels  # predict() takes argmax of (z, -z): class 1 where z < 0
    right = setup.correct(pre, "a", "test", batch_size=7)
    assert right.dtype == torch.bool and torch.equal(right, naive) and not naive.all()
    assert torch.equal(setup.correct(pre, "a", "test", limit=10), naive[:10])
    assert setup.evaluate(pre, "a") == int(naive.sum()) / len(naive)
    assert set(setup.correct_all(pre)) == set(setup.tasks)


def test_records_keep_which_examples_each_run_got_right(toy_table):
    setup, table = toy_table
    runs = table.attrs["runs"]
    r = runs[runs["row"] == "task arithmetic"].iloc[0]
    assert set(r["correct"]) == {"a", "b", "c"}
    for t in "abc":
        bits = r["correct"][t]
        assert set(bits) <= {"0", "1"} and len(bits) == len(setup.task(t).test)
        assert bits.count("1") / len(bits) == pytest.approx(r[f"acc:{t}"])
    scores = casestudy.item_scores(table, "DARE + task arithmetic")
    assert scores["a"].shape == (2, len(setup.task("a").test))  # fine-tune seeds x examples, mean over merge seeds
    dare = runs[(runs["row"] == "DARE + task arithmetic") & (runs["finetune_seed"] == 1)]
    mean = sum(np.array([int(c) for c in x["a"]]) for x in dare["correct"]) / len(dare)
    assert np.allclose(scores["a"][1], mean)
    with pytest.raises(ValueError, match="no row 'nope'"):
        casestudy.item_scores(table, "nope")


def test_paired_differences_read_the_runs(toy_table):
    import matplotlib

    matplotlib.use("Agg")
    _, table = toy_table
    avg = table["average"]
    d = casestudy.paired_difference(table, "TIES", "uniform averaging")
    assert d.diff == pytest.approx(avg["TIES"] - avg["uniform averaging"], abs=1e-9)  # the table's averages
    assert d.seeds == 2 and d.low <= d.diff <= d.high
    same = casestudy.paired_difference(table, "TIES", "TIES")
    assert (same.low, same.high, same.verdict) == (0.0, 0.0, "tie")
    diffs = casestudy.paired_differences(table)
    best = casestudy.best_merge(table)
    assert diffs.attrs["reference"] == best and best not in diffs.index
    for r in diffs.index:
        dd = casestudy.paired_difference(table, r, best)
        assert diffs.loc[r, "low"] == pytest.approx(round(100 * dd.low, 2))
        assert diffs.loc[r, "verdict"] == {"a ahead": "ahead", "b ahead": "behind", "tie": "tie"}[dd.verdict]
    steps = casestudy.ordering_steps(table)
    assert list(steps.columns[-2:]) == ["95% interval", "step"]
    assert set(steps["step"].iloc[:-1]) <= {"ahead", "tie"} and steps["step"].iloc[-1] == ""
    first = casestudy.paired_difference(table, steps["ours"].iloc[0], steps["ours"].iloc[1])
    assert steps["step"].iloc[0] == ("ahead" if first.low > 0 else "tie")
    ax = casestudy.plot_differences(diffs)
    labels = sorted(((t.get_position()[1], t.get_text()) for t in ax.get_yticklabels()), reverse=True)
    assert [text for _, text in labels] == list(diffs.index)  # the first row at the top


def test_paired_intervals_are_absent_where_a_setup_scores_no_examples(toy_table):
    _, table = toy_table
    runs = table.attrs["runs"].copy()
    runs["correct"] = None  # as lm-eval's scores on the paper track
    t2 = table.copy()
    t2.attrs["runs"] = runs
    assert casestudy.item_scores(t2, "TIES") is None and casestudy.paired_difference(t2, "TIES", "TIES") is None
    assert set(casestudy.ordering_steps(t2)["step"]) == {""}
    assert casestudy.paired_differences(t2)["low"].isna().all()


# ----------------------------------------------------------------------------- validation search


def test_grid_search_scores_the_product_and_keeps_the_first_of_equal_scores():
    seen = []

    def score(density, lam):
        seen.append((density, lam))
        return -abs(density - 0.2) - abs(lam - 1.0)

    g = casestudy.grid_search(score, {"density": (0.1, 0.2, 0.5), "lam": (0.6, 1.0, 1.4)})
    assert g.best == {"density": 0.2, "lam": 1.0} and len(g.scores) == 9 == len(seen) and g.at_edge == ()
    with pytest.warns(UserWarning, match="lam=0.2 is at the edge"):
        flat = casestudy.grid_search(lambda lam: 0.0, {"lam": (0.2, 0.4)}, widen=0)
    assert flat.best == {"lam": 0.2}


def test_grid_search_widens_an_edge_by_the_grids_own_step_or_ratio():
    g = casestudy.grid_search(lambda lam: -abs(lam - 1.5), {"lam": (0.2, 0.4, 0.6, 0.8, 1.0)})
    assert g.best == {"lam": 1.4} or g.best == {"lam": 1.6}  # widened by 0.2 a step, three steps at most
    assert g.grid["lam"][-3:] == (1.2, 1.4, 1.6) and len(g.scores) == 8
    with pytest.warns(UserWarning, match="lam=0.025 is at the edge"):
        low = casestudy.grid_search(lambda lam: -lam, {"lam": (0.2, 0.4, 0.6)})
    assert low.grid["lam"][:4] == (0.025, 0.05, 0.1, 0.2)  # 0.2 - 0.2 = 0 is no lambda: it halves instead
    assert low.best == {"lam": 0.025} and low.at_edge == ("lam",)
    d = casestudy.grid_search(lambda density: density, {"density": (0.1, 0.2, 0.5)})
    assert d.grid["density"] == (0.1, 0.2, 0.5, 1.0) and d.best == {"density": 1.0} and d.at_edge == ()
    # TIES' two axes: widening density scores the new density with every lambda
    t = casestudy.grid_search(lambda density, lam: density - abs(lam - 1.0),
                              {"density": (0.1, 0.2, 0.5), "lam": (0.6, 1.0, 1.4)})
    assert t.best == {"density": 1.0, "lam": 1.0} and len(t.scores) == 12


def test_grid_search_warns_when_the_best_stays_at_an_edge():
    with pytest.warns(UserWarning, match=r"toy: TIES: the best lam=0.8 is at the edge of the grid searched "
                                         r"\[0.2, 0.4, 0.6, 0.8\] after widening it 1 times"):
        g = casestudy.grid_search(lambda lam: lam, {"lam": (0.2, 0.4, 0.6)}, widen=1, what="toy: TIES")
    assert g.at_edge == ("lam",)
    with pytest.warns(UserWarning, match="widening it 0 times"):
        casestudy.grid_search(lambda lam: lam, {"lam": (0.2, 0.4)}, widen=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        casestudy.grid_search(lambda lam: lam, {"lam": (0.5,)})  # one value: nothing was searched, nothing to warn
        casestudy.grid_search(lambda density: density, {"density": (0.5, 1.0)})  # 1 is as dense as it gets


@pytest.mark.parametrize("grid, kwargs, match", [
    ({"beta": (1,)}, {}, r"grid axes \['beta'\] are unknown"),
    ({"lam": ()}, {}, r"grid\['lam'\] is empty"),
    ({}, {}, "grid must map each axis"),
    ({"lam": (1,)}, {"widen": -1}, "widen must be a non-negative int"),
])
def test_grid_search_bad_arguments(grid, kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        casestudy.grid_search(lambda **p: 0.0, grid, **kwargs)


def test_grid_search_refuses_a_score_that_is_not_a_number():
    with pytest.raises(ValueError, match=r"s: the score at \{'lam': 0.5\} is nan"):
        casestudy.grid_search(lambda lam: float("nan"), {"lam": (0.5,)}, what="s")


def test_rows_report_how_many_configurations_validation_scored(toy_table):
    _, table = toy_table
    # SMALL: lambda grid (0.5, 1.0) -> widened at most 3 values per edge; TIES and stitch have single values
    assert 2 <= table.loc["task arithmetic", "configs"] <= 8
    assert table.loc["TIES", "configs"] == 1 and table.loc["Localize-and-Stitch (dataless)", "configs"] == 1
    assert table.loc["Localize-and-Stitch (trained)", "configs"] == 1  # the dataless row's search
    assert table.loc["pretrained", "configs"] == 0 and table.loc["uniform averaging", "configs"] == 0
    pretty = casestudy.pretty(table)
    assert "configs scored" in pretty.columns and list(pretty.columns[:4]) == ["a", "b", "c", "average"]
    assert list(casestudy.multitask_comparison(table).columns) == ["a", "b", "c", "average"]  # no "configs" task


def test_ordering_text_marks_real_steps_and_ties(toy_table):
    _, table = toy_table
    steps = casestudy.ordering_steps(table)
    text = casestudy.ordering_text(steps)
    marks = [{"ahead": ">", "tie": "≈"}[v] for v in steps["step"].iloc[:-1]]
    expected = steps["ours"].iloc[0] + "".join(f" {m} {r}" for m, r in zip(marks, steps["ours"].iloc[1:]))
    assert text == expected
    fake = pd.DataFrame({"ours": ["A", "B", "C"], "step": ["ahead", "tie", ""]})
    assert casestudy.ordering_text(fake) == "A > B ≈ C"
    assert casestudy.ordering_text(fake.assign(step=["", "", ""])) == "A, then B, then C"
    with pytest.raises(TypeError, match="ordering_steps"):
        casestudy.ordering_text(["A", "B"])


def test_verdict_words_the_paired_interval(toy_table):
    from lsedu.stats import describe

    _, table = toy_table
    d = casestudy.paired_difference(table, "TIES", "task arithmetic")
    assert casestudy.verdict(table, "TIES", "task arithmetic") == describe(d, "task arithmetic")
    assert casestudy.verdict(table, "TIES", "task arithmetic", "TA") == describe(d, "TA")
    t2 = table.copy()
    t2.attrs["runs"] = table.attrs["runs"].assign(correct=None)
    assert "without an interval" in casestudy.verdict(t2, "TIES", "task arithmetic")


def test_transfer_and_own_gains_match_the_table(toy_table):
    _, toy_table = toy_table
    t = casestudy.transfer(toy_table)
    tasks = list(t.columns)
    assert list(t.index) == tasks
    for f in tasks:
        for task in tasks:
            want = toy_table.loc[f"fine-tune: {f}", task] - toy_table.loc["pretrained", task]
            assert t.loc[f, task] == pytest.approx(want)
    gains = casestudy.own_gains(toy_table)
    assert all(gains[task] == pytest.approx(t.loc[task, task]) for task in tasks)
    with pytest.raises(ValueError, match="fine-tune"):
        casestudy.transfer(toy_table.drop(index=f"fine-tune: {tasks[0]}"))


@pytest.mark.parametrize("value, signed, text", [(0.0637, False, "6 points"), (0.0637, True, "+6 points"),
                                                 (-0.021, True, "-2 points"), (0.01, False, "1 point"),
                                                 (-0.004, True, "0 points"), (-0.004, False, "0 points"),
                                                 (-0.09, False, "9 points")])
def test_points(value, signed, text):
    assert casestudy.points(value, signed) == text


@pytest.mark.parametrize("values, text", [([0.063, 0.11, 0.08], "6 to 11 points"), ([0.031, 0.029], "3 points"),
                                          ([-0.02, 0.04], "-2 to +4 points"), ({"a": 0.12, "b": 0.51}, "12 to 51 points"),
                                          ([-0.004, 0.004], "0 points")])
def test_points_range(values, text):
    assert casestudy.points_range(values) == text


@pytest.mark.parametrize("bad", [[], [float("nan")], [0.1, float("inf")]])
def test_points_range_bad_inputs(bad):
    with pytest.raises(ValueError, match="values"):
        casestudy.points_range(bad)
    with pytest.raises(ValueError, match="value"):
        casestudy.points(float("nan"))


# ----------------------------------------------------------------------------- paired intervals of the scaling curve


def _hand_curve(seed: int = 0, lead: float = 0.0) -> pd.DataFrame:
    """A scaling curve by hand: tasks x, y, z; sizes 2 (two subsets) and 3; TIES gets ``lead`` more examples right."""
    rng = np.random.default_rng(seed)
    n = {"x": 40, "y": 30, "z": 50}
    rows = []
    for size, subsets in ((2, ("x+y", "x+z")), (3, ("x+y+z",))):
        for subset in subsets:
            base = {t: rng.random(n[t]) for t in subset.split("+")}
            for method, row, p in (("task_arithmetic", "task arithmetic", 0.6), ("ties", "TIES", 0.6 + lead)):
                correct = {t: "".join("1" if u < p else "0" for u in base[t] + 0.3 * rng.random(n[t]) - 0.15)
                           for t in base}
                accs = [c.count("1") / len(c) for c in correct.values()]
                rows.append({"size": size, "subset": subset, "method": method, "row": row,
                             "average": float(np.mean(accs)), "normalized": float(np.mean(accs)) / 0.9,
                             "choice": "", "correct": correct})
    return pd.DataFrame(rows)


def _bits(s: str) -> np.ndarray:
    return np.array([int(c) for c in s], dtype=float)


def test_scaling_difference_matches_a_direct_computation():
    from lsedu.stats import paired_bootstrap

    curve = _hand_curve()
    for size in (2, 3):
        at = curve[curve["size"] == size]
        a, b = at[at["method"] == "ties"], at[at["method"] == "task_arithmetic"]
        # the mean over (subset, task) pairs of each pair's accuracy difference ...
        per_pair = [(_bits(ca[t]) - _bits(cb[t])).mean()
                    for ca, cb in zip(a["correct"], b["correct"]) for t in ca]
        # ... which, every subset having `size` tasks, is the mean over subsets of the curve's average difference
        assert np.mean(per_pair) == pytest.approx(a["average"].mean() - b["average"].mean(), abs=1e-12)
        d = casestudy.scaling_difference(curve, "ties", "task_arithmetic", size)
        assert d.diff == pytest.approx(np.mean(per_pair), abs=1e-12)
        examples = {t: len(c) for cs in a["correct"] for t, c in cs.items()}
        assert d.items == sum(examples.values()) and d.seeds == 1  # each task's test examples counted once
        # the interval is paired_bootstrap's stratified by task, each task's examples summed over the subsets
        # holding it and weighted so that its mean over tasks is the statistic above
        tasks = sorted({t for c in a["correct"] for t in c})
        w = len(tasks) / (len(a) * size)
        summed = lambda g: {t: w * sum(_bits(c[t]) for c in g["correct"] if t in c) for t in tasks}  # noqa: E731
        ref = paired_bootstrap(summed(a), summed(b), resamples=casestudy.RESAMPLES, seed=casestudy.BOOTSTRAP_SEED)
        assert ref.diff == pytest.approx(d.diff, abs=1e-12)
        assert (d.low, d.high) == pytest.approx((ref.low, ref.high), abs=1e-12)
        assert d.low <= d.diff <= d.high
    # labels work as well as keys, and a method against itself is a tie at exactly zero
    assert casestudy.scaling_difference(curve, "TIES", "task arithmetic", 2) == \
        casestudy.scaling_difference(curve, "ties", "task_arithmetic", 2)
    same = casestudy.scaling_difference(curve, "ties", "ties", 3)
    assert (same.diff, same.low, same.high, same.verdict) == (0.0, 0.0, 0.0, "tie")


def test_scaling_interval_draws_a_test_example_once_for_every_subset_that_holds_it():
    # two subsets that hold the same task and got the same examples right carry no more evidence than one:
    # a stratum per (subset, task) would narrow the interval by about sqrt(2), one draw per task does not
    one = _hand_curve().query("subset == 'x+y'")
    twice = pd.concat([one, one.assign(subset="y+x")])
    d1 = casestudy.scaling_difference(one, "ties", "task_arithmetic", 2)
    d2 = casestudy.scaling_difference(twice, "ties", "task_arithmetic", 2)
    assert (d2.diff, d2.low, d2.high) == pytest.approx((d1.diff, d1.low, d1.high), abs=1e-12)
    assert d2.items == d1.items == 70  # x's 40 and y's 30 test examples, each counted once


def test_scaling_differences_table_and_verdict_words():
    curve = _hand_curve(lead=0.3)
    table = casestudy.scaling_differences(curve, [("ties", "task_arithmetic"), ("task_arithmetic", "ties")])
    assert list(table.index) == [("TIES − task arithmetic", 2), ("TIES − task arithmetic", 3),
                                 ("task arithmetic − TIES", 2), ("task arithmetic − TIES", 3)]
    assert list(table.columns) == ["subsets", "difference (points)", "low", "high", "verdict",
                                   "normalized difference (points)"]
    assert list(table["subsets"]) == [2, 1, 2, 1]
    for (comparison, size), r in table.iterrows():
        a, b = ("ties", "task_arithmetic") if comparison.startswith("TIES") else ("task_arithmetic", "ties")
        d = casestudy.scaling_difference(curve, a, b, size)
        assert r["difference (points)"] == pytest.approx(round(100 * d.diff, 2))
        assert (r["low"], r["high"]) == pytest.approx((round(100 * d.low, 2), round(100 * d.high, 2)))
        assert r["verdict"] == {"a ahead": "ahead", "b ahead": "behind", "tie": "tie"}[d.verdict]
        at = curve[curve["size"] == size]
        norm = at[at["method"] == a]["normalized"].mean() - at[at["method"] == b]["normalized"].mean()
        assert r["normalized difference (points)"] == pytest.approx(round(100 * norm, 2))
    # a 30-point lead on every item is ahead everywhere, and the words say so
    assert set(table.loc["TIES − task arithmetic", "verdict"]) == {"ahead"}
    assert set(table.loc["task arithmetic − TIES", "verdict"]) == {"behind"}
    words = casestudy.scaling_verdict(curve, "ties", "task_arithmetic")
    assert words.startswith("ahead of task arithmetic at every number of tasks (differences of mean accuracy")
    assert "2 tasks +" in words and "3 tasks +" in words
    assert casestudy.scaling_verdict(curve, "task_arithmetic", "ties", "TIES").startswith("behind TIES at every")
    assert casestudy.scaling_verdict(curve, "ties", "task_arithmetic", intervals=False) == \
        "ahead of task arithmetic at every number of tasks"
    # a method against itself ties at every size; mixed verdicts are named size by size
    assert casestudy.scaling_verdict(curve, "ties", "ties", "itself").startswith("tied with itself at every")
    mixed = pd.concat([curve[curve["size"] == 2], _hand_curve(lead=0.0).query("size == 3")])
    assert casestudy.scaling_difference(mixed, "ties", "task_arithmetic", 3).verdict == "tie"
    assert casestudy.scaling_verdict(mixed, "ties", "task_arithmetic").startswith(
        "ahead of task arithmetic at 2 tasks and tied at 3 tasks (")


def test_scaling_difference_bad_inputs_name_the_argument():
    curve = _hand_curve()
    cases = [(dict(a="nope", b="ties", size=2), r"^a='nope' is not a method of the curve; its methods are"),
             (dict(a="ties", b="dare", size=2), r"^b='dare' is not a method of the curve"),
             (dict(a="ties", b="task_arithmetic", size=5), r"^size=5 is not a number of tasks of the curve; "
                                                           r"its sizes are \[2, 3\]$"),
             (dict(a="ties", b="task_arithmetic", size="2"), r"^size='2' is not"),
             (dict(a="ties", b="task_arithmetic", size=True), r"^size=True is not")]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            casestudy.scaling_difference(curve, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"^pairs must be a non-empty list of \(a, b\) pairs"):
        casestudy.scaling_differences(curve, [("ties",)])
    with pytest.raises(ValueError, match=r"^a='nope' is not a method"):
        casestudy.scaling_differences(curve, [("nope", "ties")])
    with pytest.raises(TypeError, match="scaling_curve"):
        casestudy.scaling_difference(curve.drop(columns="correct"), "ties", "task_arithmetic", 2)
    with pytest.raises(ValueError, match="several records"):
        casestudy.scaling_difference(pd.concat([curve, curve]), "ties", "task_arithmetic", 2)


def test_scaling_intervals_on_the_toy_curve_and_without_examples():
    setup = Toy(device="cpu", progress=False)
    cfg = SMALL.replace(finetune_seeds=(0,))
    curve = casestudy.scaling_curve(setup, subsets_per_size=2, config=cfg, methods=("averaging", "task_arithmetic"))
    assert all(set(c) == set(s.split("+")) for c, s in zip(curve["correct"], curve["subset"]))
    for size in (2, 3):
        at = curve[curve["size"] == size]
        d = casestudy.scaling_difference(curve, "task_arithmetic", "averaging", size)
        avg = at.groupby("method")["average"].mean()
        expected = avg["task_arithmetic"] - avg["averaging"]
        assert d.diff == pytest.approx(expected, abs=1e-9)
    blind = curve.assign(correct=None)  # as lm-eval's scores on the paper track
    assert casestudy.scaling_difference(blind, "task_arithmetic", "averaging", 2) is None
    table = casestudy.scaling_differences(blind, [("task_arithmetic", "averaging")])
    assert table["low"].isna().all() and set(table["verdict"]) == {""}
    assert "without an interval" in casestudy.scaling_verdict(blind, "task_arithmetic", "averaging")


def test_scaling_interval_does_not_depend_on_the_order_of_a_records_tasks():
    # a record read from the cache lists its tasks sorted, a fresh one in the subset's order: same interval
    curve = _hand_curve()
    flipped = curve.assign(correct=[dict(reversed(list(c.items()))) for c in curve["correct"]])
    for size in (2, 3):
        d1 = casestudy.scaling_difference(curve, "ties", "task_arithmetic", size)
        d2 = casestudy.scaling_difference(flipped, "ties", "task_arithmetic", size)
        assert (d1.low, d1.high) == (d2.low, d2.high)
