"""The zoo's shared machinery: cache, assets, splits, and a toy setup run end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import lsedu
from lsedu import zoo
from lsedu.zoo import assets as assets_mod
from lsedu.zoo.base import ClassificationSetup, FinetuneConfig, HeadConfig, Split, TaskData, split_fixed
from lsedu.zoo.cache import cached, config_key, entry_paths, load_cached

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LSEDU_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- cache


def test_config_key_is_stable_and_order_free():
    a = config_key({"lr": 1e-4, "task": "x", "nested": {"b": 1, "a": [1, 2]}})
    b = config_key({"nested": {"a": [1, 2], "b": 1}, "task": "x", "lr": 1e-4})
    assert a == b and len(a) == 16
    assert config_key({"lr": 1e-4, "task": "y"}) != config_key({"lr": 1e-4, "task": "x"})


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": object()}, {"x": torch.zeros(1)}])
def test_config_key_rejects_non_json(bad):
    with pytest.raises(TypeError, match="JSON"):
        config_key(bad)


def test_cached_builds_once_then_loads(private_cache):
    calls = []

    def build():
        calls.append(1)
        return {"w": torch.arange(6.0).reshape(2, 3)}, {"acc": 0.5}

    sd1, rec1 = cached("toy", {"k": 1}, build)
    sd2, rec2 = cached("toy", {"k": 1}, build)
    assert len(calls) == 1
    assert torch.equal(sd1["w"], sd2["w"])
    assert rec2["metrics"] == {"acc": 0.5} and rec2["config"] == {"k": 1}
    assert "torch" in rec2["versions"]
    weights, record = entry_paths("toy", {"k": 1})
    assert weights.parent == private_cache / "toy" and weights.exists() and record.exists()
    cached("toy", {"k": 1}, build, refresh=True)
    assert len(calls) == 2
    cached("toy", {"k": 2}, build)
    assert len(calls) == 3


def test_cached_ignores_an_entry_whose_record_does_not_match(private_cache):
    cached("toy", {"k": 1}, lambda: ({"w": torch.ones(2)}, {}))
    _, record = entry_paths("toy", {"k": 1})
    rec = json.loads(record.read_text())
    rec["config"] = {"k": "edited"}
    record.write_text(json.dumps(rec))
    assert load_cached("toy", {"k": 1}) is None


def test_cached_leaves_nothing_when_build_fails(private_cache):
    def build():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cached("toy", {"k": 1}, build)
    assert not any(p.is_file() for p in private_cache.rglob("*"))


def test_cache_entry_is_never_half_written(tmp_path):
    """A process killed while writing leaves either no entry or a whole one, never a partial file."""
    script = textwrap.dedent(f"""
        import os, torch
        os.environ["LSEDU_CACHE"] = {str(tmp_path / "c")!r}
        from lsedu.zoo import cache
        import safetensors.torch as st
        real = st.save_file
        def slow_save(sd, path, *a, **k):
            real(sd, path, *a, **k)
            print("written", flush=True)
            import time; time.sleep(60)
        cache.save_file = slow_save
        cache.cached("toy", {{"k": 1}}, lambda: ({{"w": torch.ones(1000)}}, {{}}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    os.environ["LSEDU_CACHE"] = str(tmp_path / "c")
    weights, _ = entry_paths("toy", {"k": 1})
    assert not weights.exists()  # only a temporary file, under another name
    assert load_cached("toy", {"k": 1}) is None


@pytest.mark.parametrize("kind", ["", "a/b", ".hidden"])
def test_cache_kind_must_be_a_folder_name(kind):
    with pytest.raises(ValueError, match="kind"):
        entry_paths(kind, {})


# ----------------------------------------------------------------------------- assets


def test_missing_package_asset_says_how_to_install(monkeypatch):
    a = assets_mod.Asset("ghost", "w.bin", "pip install ghost-model==1.0", "MIT", "a test", package="no_such_pkg_xyz",
                         hub="org/ghost")
    with pytest.raises(zoo.AssetMissing) as e:
        a.verified()
    msg = str(e.value)
    assert "ghost" in msg and "pip install ghost-model==1.0" in msg and "org/ghost" in msg


def test_missing_file_asset_names_the_path(tmp_path):
    a = assets_mod.Asset("debian-data", str(tmp_path / "nope.txt"), "sudo apt-get install something", "BSD", "a test")
    with pytest.raises(zoo.AssetMissing, match="nope.txt.*\n.*sudo apt-get install something"):
        a.locate()


def test_a_debian_file_unpacked_without_root_is_found(tmp_path, monkeypatch):
    """scripts/setup.sh without root unpacks a data package under LSEDU_DEBIAN_ROOT; the asset is read from there,
    checked like the system's copy, and the system's copy wins when there is one."""
    system = tmp_path / "sys" / "usr" / "share" / "wordnet" / "data.noun"  # stands for /usr/share/wordnet/data.noun
    root = tmp_path / "unpacked"
    unpacked = root / system.relative_to(system.anchor)
    unpacked.parent.mkdir(parents=True)
    unpacked.write_text("noun data")
    a = assets_mod.Asset("wn", str(system), "sudo apt-get install wordnet-base", "WordNet", "a test",
                         sha256=assets_mod.sha256_file(unpacked))
    monkeypatch.setenv("LSEDU_DEBIAN_ROOT", str(root))
    assert a.verified() == unpacked
    system.parent.mkdir(parents=True)
    system.write_text("noun data")
    assert a.locate() == system
    monkeypatch.setenv("LSEDU_DEBIAN_ROOT", str(tmp_path / "empty"))
    system.unlink()
    with pytest.raises(zoo.AssetMissing, match=r"Without root, scripts/setup.sh unpacks the Debian package into "
                                               r".*empty \(LSEDU_DEBIAN_ROOT\)"):
        a.locate()
    monkeypatch.delenv("LSEDU_DEBIAN_ROOT")
    assert assets_mod.debian_root() == Path.home() / ".local" / "share" / "lsedu" / "debian"


def test_setup_unpacks_a_data_package_where_lsedu_looks(tmp_path):
    """setup.sh's place for unpacked packages is debian_root's (one default in two languages, checked here)."""
    text = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'DEBIAN_ROOT=${LSEDU_DEBIAN_ROOT:-$HOME/.local/share/lsedu/debian}' in text
    assert text.count(" data\n") >= 4  # the four Debian data packages may be unpacked without root


def test_corrupt_asset_is_refused(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    good = assets_mod.sha256_file(f)
    assert assets_mod.Asset("w", str(f), "pip install w", "MIT", "t", sha256=good).verified() == f
    with pytest.raises(zoo.AssetCorrupt, match="sha256"):
        assets_mod.Asset("w", str(f), "pip install w", "MIT", "t", sha256="0" * 64).verified()


def test_unknown_asset_name():
    with pytest.raises(KeyError, match="unknown asset 'nope'"):
        zoo.asset_path("nope")


def test_registered_weight_assets_match_their_files():
    """The installed packages hold exactly the files the book was made with."""
    for name in ("minilm", "efficientnet-lite0", "smollm2", "rotten-tomatoes"):
        assert zoo.asset_path(name).exists()


def test_register_refuses_a_conflicting_asset():
    a = zoo.ASSETS["minilm"]
    assert assets_mod.register(a) is a
    with pytest.raises(ValueError, match="already registered"):
        assets_mod.register(assets_mod.Asset("minilm", "x", "y", "z", "w"))


def test_load_refuses_unknown_setup_and_track():
    with pytest.raises(ValueError, match="unknown setup 'audio'"):
        zoo.load("audio")
    with pytest.raises(ValueError, match="track"):
        zoo.load("text", track="cloud")


# ----------------------------------------------------------------------------- splits and configs


def test_split_fixed_is_stratified_disjoint_and_seeded():
    labels = torch.tensor([0] * 50 + [1] * 30)
    inputs = [f"x{i}" for i in range(80)]
    tr, va, te = split_fixed(inputs, labels, val=0.2, test=5, seed=3)
    assert sorted(tr.inputs + va.inputs + te.inputs) == sorted(inputs)
    assert len(set(tr.inputs) & set(te.inputs)) == 0 and len(set(va.inputs) & set(te.inputs)) == 0
    assert te.labels.bincount().tolist() == [5, 5]
    assert va.labels.bincount().tolist() == [10, 6]
    tr2, _, _ = split_fixed(inputs, labels, val=0.2, test=5, seed=3)
    assert tr.inputs == tr2.inputs
    tr3, _, _ = split_fixed(inputs, labels, val=0.2, test=5, seed=4)
    assert tr.inputs != tr3.inputs


def test_split_fixed_refuses_a_too_small_class():
    with pytest.raises(ValueError, match="class 1 has 3 examples"):
        split_fixed(list(range(13)), [0] * 10 + [1] * 3, val=2, test=2, seed=0)


def test_per_class_draws_n_of_each_class():
    s = Split(torch.arange(100).float(), torch.tensor([0] * 60 + [1] * 40))
    few = s.per_class(8, seed=0)
    assert few.labels.bincount().tolist() == [8, 8]
    assert torch.equal(few.inputs, s.per_class(8, seed=0).inputs)
    with pytest.raises(ValueError, match="examples per class"):
        s.per_class(0, seed=0)


def test_split_length_mismatch():
    with pytest.raises(ValueError, match="3 inputs but 2 labels"):
        Split(["a", "b", "c"], [0, 1])


@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", 1.5), ("lr", -1.0), ("warmup", 1.0),
                                         ("seed", -1)])
def test_finetune_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=f"FinetuneConfig.{field}"):
        FinetuneConfig(**{field: value})


# ----------------------------------------------------------------------------- a toy setup, end to end


class ToySetup(ClassificationSetup):
    """Two-feature blobs, two tasks whose labels depend on different directions: they interfere."""

    name = "toy"
    tasks = ("a", "b")
    finetune_config = FinetuneConfig(epochs=8, lr=3e-2, batch_size=32, seed=0)
    head_config = HeadConfig(epochs=200, lr=5e-2)

    def identity(self):
        return {"data_seed": 0, "dim": 8}

    def build_body(self):
        torch.manual_seed(123)
        return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8))

    def load_pretrained(self):
        return self.build_body().state_dict()

    def load_task(self, task):
        g = torch.Generator().manual_seed(0 if task == "a" else 1)
        x = torch.randn(600, 8, generator=g)
        y = (x[:, 0] * x[:, 1] > 0).long() if task == "a" else (x[:, 2] * x[:, 3] > 0).long()
        tr, va, te = split_fixed(x, y, val=0.15, test=0.25, seed=0)
        return TaskData(task, ("neg", "pos"), tr, va, te)

    def batches(self, task, split, batch_size, *, shuffle=False, generator=None):
        order = torch.randperm(len(split), generator=generator) if shuffle else torch.arange(len(split))
        for i in range(0, len(split), batch_size):
            idx = order[i:i + batch_size]
            yield split.inputs[idx], split.labels[idx]

    def features(self, forward, batch):
        return forward(batch[0])


@pytest.fixture
def toy():
    return ToySetup(device="cpu", progress=False)


def test_finetune_beats_the_linear_probe_and_is_cached(toy, private_cache):
    pre = toy.pretrained()
    probe = toy.evaluate(pre, "a")
    ft, rec = toy.finetune_record("a")
    assert toy.evaluate(ft, "a") > probe + 0.1  # an XOR-like task: the probe cannot solve it, training can
    assert rec["metrics"]["val_accuracy"] == toy.evaluate(ft, "a", "val")
    again, rec2 = toy.finetune_record("a")
    assert all(torch.equal(ft[n], again[n]) for n in ft) and rec2 == rec
    assert len(list((private_cache / "toy").glob("*.safetensors"))) == 2  # the head of a, the fine-tune of a
    assert all(torch.equal(pre[n], toy.pretrained()[n]) for n in pre)  # the pretrained body was not changed


def test_finetune_is_deterministic_and_seeded(toy, private_cache):
    a = toy.finetune("a")
    b = toy.finetune("a", refresh=True)
    assert all(torch.equal(a[n], b[n]) for n in a)
    c = toy.finetune("a", toy.finetune_config.replace(seed=1))
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_heads_are_frozen_and_shared(toy):
    h = toy.head("b")
    assert h["weight"].shape == (2, 8) and h["bias"].shape == (2,)
    before = {n: t.clone() for n, t in h.items()}
    toy.finetune("b")
    assert all(torch.equal(before[n], toy.head("b")[n]) for n in before)


def test_multitask_learns_both_and_merges_compare(toy):
    pre = toy.pretrained()
    fts = {t: toy.finetune(t) for t in toy.tasks}
    mtl = toy.multitask()
    individual = {t: toy.evaluate(fts[t], t) for t in toy.tasks}
    acc_mtl = toy.evaluate_all(mtl)
    assert set(acc_mtl) == {"a", "b"}
    tvs = [lsedu.TaskVector.from_models(pre, fts[t]) for t in toy.tasks]
    merged = lsedu.task_arithmetic(pre, tvs, lam=0.5)
    df = zoo.results_table({"pretrained": toy.evaluate_all(pre), "multi-task": acc_mtl,
                            "task arithmetic": toy.evaluate_all(merged), "individual": individual}, individual)
    assert list(df.columns) == ["a", "b", "average", "normalized"]
    assert df.loc["individual", "normalized"] == pytest.approx(1.0)
    assert df.loc["multi-task", "average"] > df.loc["pretrained", "average"]


def test_unknown_task_fails_before_any_work(toy, private_cache):
    with pytest.raises(ValueError, match="unknown task 'c' for setup 'toy'"):
        toy.finetune("c")
    assert not private_cache.exists()


def test_module_refuses_foreign_tensors(toy):
    with pytest.raises(ValueError, match="does not: \\['extra.weight'\\]"):
        toy.module({**toy.pretrained(), "extra.weight": torch.zeros(1)})


def test_a_partial_body_is_completed_with_the_pretrained_weights(toy):
    pre = toy.pretrained()
    part = {"0.weight": pre["0.weight"]}
    assert toy.evaluate(part, "a") == toy.evaluate(pre, "a")


def test_localization_hooks_drive_localize_trained(toy):
    pre = toy.pretrained()
    tau = lsedu.TaskVector.from_models(pre, toy.finetune("a"))
    mask, log = lsedu.localize_trained(toy.module(pre), pre, tau, toy.localization_loss("a"),
                                       toy.localization_batches("a", 64), density=0.2, epochs=2, progress=False)
    assert set(mask) == set(tau) and len(log) == 2


def test_normalized_accuracy_checks_its_inputs():
    assert zoo.normalized_accuracy({"a": 0.5, "b": 0.9}, {"a": 1.0, "b": 0.9}) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="task\\(s\\) \\['b'\\]"):
        zoo.normalized_accuracy({"a": 0.5, "b": 0.9}, {"a": 1.0})
    with pytest.raises(ValueError, match="'a' is 0"):
        zoo.normalized_accuracy({"a": 0.5}, {"a": 0})


def test_soup_configs_sweep_learning_rate_and_seed(toy):
    cfgs = toy.soup_configs(5)
    base = toy.finetune_config
    assert cfgs[0] == base
    assert [c.lr / base.lr for c in cfgs] == [1.0, 0.5, 2.0, 1.0, 0.5]
    assert [c.seed for c in cfgs] == [0, 0, 0, 1, 1]
    assert len({json.dumps(c.to_dict(), sort_keys=True) for c in cfgs}) == 5  # five different fine-tunes
    with pytest.raises(ValueError, match="positive int"):
        toy.soup_configs(0)


# ----------------------------------------------------------------------------- mean loss


def test_evaluate_loss_is_the_mean_cross_entropy_over_examples(toy):
    """Against a naive loop: one example at a time through the frozen head, then the plain mean."""
    import torch.nn.functional as F

    pre = toy.pretrained()
    data = toy.task("a").val
    model, head = toy.module(pre), toy.head("a")
    with torch.no_grad():
        naive = sum(float(F.cross_entropy(model(data.inputs[i:i + 1]) @ head["weight"].T + head["bias"],
                                          data.labels[i:i + 1])) for i in range(len(data))) / len(data)
    # batch sizes that do and do not divide the split: the mean is over examples either way
    for bs in (1, 7, 64, 1000):
        assert toy.evaluate_loss(pre, "a", "val", batch_size=bs) == pytest.approx(naive, rel=1e-5)


def test_evaluate_loss_falls_when_fine_tuning_and_checks_its_arguments(toy):
    pre, ft = toy.pretrained(), toy.finetune("a")
    assert toy.evaluate_loss(ft, "a") < toy.evaluate_loss(pre, "a")
    with pytest.raises(ValueError, match="batch_size"):
        toy.evaluate_loss(pre, "a", batch_size=0)
    with pytest.raises(ValueError, match="split must be"):
        toy.evaluate_loss(pre, "a", split="dev")
    with pytest.raises(ValueError, match="unknown task 'c'"):
        toy.evaluate_loss(pre, "c")


def test_evaluation_that_first_fits_a_head_scores_the_body_it_was_given(toy, private_cache):
    """The head is fitted on the pretrained body; fitting it must not swap the evaluated body's weights."""
    g = torch.Generator().manual_seed(1)
    body = {n: t + 0.3 * torch.randn(t.shape, generator=g) for n, t in toy.pretrained().items()}
    first = toy.evaluate(body, "a", batch_size=16)  # fits the head of "a" during the first batch
    assert "a" in toy._heads
    assert toy.evaluate(body, "a", batch_size=16) == first
    fresh = ToySetup(device="cpu", progress=False)  # the head now comes from the cache
    assert fresh.evaluate(body, "a", batch_size=16) == first


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("kind", ["finetune", "multitask"])
def test_interrupted_training_resumes_to_the_same_weights(toy, private_cache, monkeypatch, kind):
    """Ctrl-C in the middle of a fine-tune (or of the multi-task model) keeps its progress; the rerun resumes there
    and ends with exactly the weights of a run never stopped, and leaves no progress file behind."""
    run = (lambda: toy.finetune("a")) if kind == "finetune" else (lambda: toy.multitask())
    whole = run()
    for f in private_cache.rglob("*"):  # start again from an empty cache, keeping nothing but the heads
        if f.is_file() and "head" not in json.loads(f.with_suffix(".json").read_text())["config"]["kind"]:
            f.unlink()
    monkeypatch.setattr(ToySetup, "CHECKPOINT_SECONDS", 0.0)  # save after every step
    real_loss, calls, stop = ToySetup.loss, [], {"at": 40}

    def loss(self, task, forward, batch):
        calls.append(1)
        if len(calls) == stop["at"]:
            raise Interrupt
        return real_loss(self, task, forward, batch)

    monkeypatch.setattr(ToySetup, "loss", loss)
    with pytest.raises(Interrupt):
        run()
    partial = list(private_cache.rglob("*.partial.pt"))
    assert len(partial) == 1 and torch.load(partial[0], weights_only=True)["done"] == 39
    calls.clear()
    stop["at"] = None
    resumed = run()
    assert all(torch.equal(whole[n], resumed[n]) for n in whole)
    steps = len(toy._steps(list(toy.tasks) if kind == "multitask" else ["a"], toy.finetune_config))
    assert len(calls) == steps - 39  # only the steps not yet done ran again
    assert not list(private_cache.rglob("*.partial.pt"))


def test_glue_returns_the_value_and_refuses_a_bad_name():
    import lsedu.utils

    assert lsedu.utils.glue("soup_verdict", "tied") == "tied"
    with pytest.raises(ValueError, match="name must be an identifier"):
        lsedu.utils.glue("two words", 1)


def test_setup_localize_is_localize_trained_with_validation_and_cached(toy, monkeypatch):
    """Setup.localize runs the paper's recipe (validation chooses the pass) once, then reads the cache."""
    pre = toy.pretrained()
    tau = lsedu.TaskVector({n: toy.finetune("a")[n] - pre[n] for n in toy.merge_names()})
    kw = dict(density=0.2, l1=1e-4, lr=0.1, sigmoid_bias=1.0, passes=3, batch_size=64, seed=0)
    mask, log = toy.localize("a", **kw)
    direct, direct_log = lsedu.localize_trained(
        toy.module(pre), pre, tau, toy.localization_loss("a"), toy.localization_batches("a", 64, seed=0),
        density=0.2, l1=1e-4, lr=0.1, sigmoid_bias=1.0, epochs=3, progress=False,
        validate=lambda m: toy.evaluate(lsedu.stitch(pre, [tau], [m]), "a", "val"))
    assert set(mask) == set(toy.merge_names()) and all(m.dtype == torch.bool for m in mask.values())
    assert all(torch.equal(mask[n], direct[n]) for n in mask)
    assert [e["val"] for e in log] == pytest.approx([e["val"] for e in direct_log])
    assert sum(e["chosen"] for e in log) == 1

    class Trained(Exception):
        pass

    def no_training(*args, **kwargs):
        raise Trained

    monkeypatch.setattr(lsedu.localize_stitch, "localize_trained", no_training)
    again, again_log = toy.localize("a", **kw)  # from the cache: no training
    assert all(torch.equal(mask[n], again[n]) for n in mask) and again_log == log
    with pytest.raises(Trained):  # another recipe is another entry, so it trains
        toy.localize("a", **{**kw, "l1": 1e-2})


# ----------------------------------------------------------------------------- remembered scores


class RememberingToy(ToySetup):
    remember_scores = True


def _count_predictions(setup, monkeypatch) -> list:
    calls = []
    predict = type(setup).predict

    def counted(self, task, forward, batch):
        calls.append(task)
        return predict(self, task, forward, batch)

    monkeypatch.setattr(type(setup), "predict", counted)
    return calls


def test_a_remembered_score_is_read_back_not_run_again(private_cache, monkeypatch):
    toy = RememberingToy(device="cpu", progress=False)
    calls = _count_predictions(toy, monkeypatch)
    pre = toy.pretrained()
    first = toy.correct(pre, "a", "test", batch_size=32)
    ran = len(calls)
    assert ran > 0 and len(list((private_cache / "scores").glob("*.json"))) == 1
    again = RememberingToy(device="cpu", progress=False).correct(pre, "a", "test", batch_size=32)
    assert torch.equal(again, first) and again.dtype == torch.bool and len(calls) == ran
    # evaluate and evaluate_all read the same entries
    assert toy.evaluate(pre, "a", batch_size=32) == int(first.sum()) / len(first) and len(calls) == ran
    assert toy.evaluate_all(pre, ["a"], batch_size=32)["a"] == toy.evaluate(pre, "a", batch_size=32)
    assert len(calls) == ran
    # and it is what a setup that remembers nothing computes
    assert torch.equal(ToySetup(device="cpu", progress=False).correct(pre, "a", "test", batch_size=32), first)


def test_any_change_of_weights_or_examples_scores_afresh(private_cache, monkeypatch):
    toy = RememberingToy(device="cpu", progress=False)
    pre = toy.pretrained()
    toy.correct(pre, "a", "test", batch_size=32)
    calls = _count_predictions(toy, monkeypatch)
    name = next(iter(pre))
    nudged = dict(pre)
    nudged[name] = pre[name].clone()
    nudged[name].view(-1)[0] = torch.nextafter(nudged[name].view(-1)[0], torch.tensor(1e9))  # one ulp
    for args in [(nudged, "a", "test", 32, None), (pre, "b", "test", 32, None), (pre, "a", "val", 32, None),
                 (pre, "a", "test", 16, None), (pre, "a", "test", 32, 10)]:
        before = len(calls)
        toy.correct(*args)
        assert len(calls) > before, args
    assert len(list((private_cache / "scores").glob("*.json"))) == 6
    # a limit of the whole split or more is the whole split: the same entry
    before = len(calls)
    toy.correct(pre, "a", "test", 32, limit=10**6)
    assert len(calls) == before


def test_a_partial_body_is_remembered_as_the_whole_body(private_cache, monkeypatch):
    toy = RememberingToy(device="cpu", progress=False)
    pre = toy.pretrained()
    toy.correct(pre, "a")
    calls = _count_predictions(toy, monkeypatch)
    part = {n: t for i, (n, t) in enumerate(pre.items()) if i == 0}
    toy.correct(part, "a")  # the rest comes from the pretrained weights: the same model
    assert calls == []


def test_body_digest_tells_every_change_apart():
    from lsedu.zoo.cache import body_digest

    sd = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}
    d = body_digest(sd)
    assert d == body_digest({"b": sd["b"].clone(), "w": sd["w"].clone()})  # order and copies do not matter
    assert d == body_digest({"w": sd["w"].t().contiguous().t(), "b": sd["b"]})  # nor the memory layout
    changed = [{**sd, "w": sd["w"] + torch.tensor([[0, 0, 0], [0, 0, 1e-6]])},
               {**sd, "w": sd["w"].reshape(3, 2)}, {**sd, "w": sd["w"].double()},
               {"v": sd["w"], "b": sd["b"]}, {"w": sd["w"]}, {**sd, "b": -sd["b"]}]  # -0.0 has other bytes
    digests = [body_digest(x) for x in changed]
    assert d not in digests and len(set(digests)) == len(digests)
    assert body_digest({"s": torch.tensor(1.0)}) != body_digest({"s": torch.tensor([1.0])})


def test_the_zoo_setups_remember_scores_and_test_doubles_do_not():
    from lsedu.zoo.base import SETUPS

    assert all(SETUPS[(name, "laptop")].remember_scores for name in ("vision", "text", "causal_lm"))
    assert not ToySetup.remember_scores


def test_a_damaged_score_record_is_scored_again_and_replaced(private_cache):
    toy = RememberingToy(device="cpu", progress=False)
    pre = toy.pretrained()
    first = toy.correct(pre, "a")
    (path,) = (private_cache / "scores").glob("*.json")
    for damaged in ["{not json", "[]", '{"config": {}}']:
        path.write_text(damaged)
        assert torch.equal(toy.correct(pre, "a"), first)
        assert json.loads(path.read_text())["metrics"]["correct"]  # written over with the right record
