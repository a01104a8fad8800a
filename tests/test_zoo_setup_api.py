"""What a setup owns: which tensors a merge combines, a limited evaluation, its cache keys, its registration.

``lsedu.casestudy`` used to work these out itself (``merge_names``,
``mean_accuracy``, hand-built keys); the rules are copied here from
commit a5b6712 and compared with the setups' own methods.
"""

from __future__ import annotations

import fnmatch

import pytest
import torch
import test_zoo_paper as tp
from test_zoo_base import ToySetup

import lsedu.zoo
from lsedu.zoo import SETUPS, Setup, config_key, register_setup
from lsedu.zoo.causal_lm import CausalLMSetup
from lsedu.zoo.paper import GPT2XL, ClipViTB32, GPT2XLConfig, RobertaLMBFF, RobertaLMBFFConfig
from lsedu.zoo.text import TextSetup
from lsedu.zoo.vision import VisionSetup


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LSEDU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LSEDU_DEVICE", "cpu")


def old_laptop_rule(setup) -> list[str]:
    """casestudy.merge_names at a5b6712 for a setup without merge_names: the trainable floating-point parameters."""
    pre = setup.pretrained()
    params = {n for n, _ in setup.module(pre).named_parameters()}
    return [n for n, t in pre.items() if n in params and t.is_floating_point() and setup.trainable(n)]


#: The paper setups' merge_patterns at a5b6712; their merge_names kept the pretrained tensors matching one.
OLD_PATTERNS = {"RobertaLMBFF": ("roberta.encoder.layer.*",), "ClipViTB32": ("*",), "GPT2XL": ("transformer.h.*",)}


def old_paper_rule(setup) -> list[str]:
    patterns = OLD_PATTERNS[type(setup).__name__]
    return [n for n in setup.pretrained() if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _paper(which: str):
    if which == "text":
        return RobertaLMBFF(tiny=True, data={"SST-2": tp._sst2(), "RTE": tp._rte()}, progress=False,
                            config=RobertaLMBFFConfig(steps=2, finetune=tp.STEPS))
    if which == "vision":
        return ClipViTB32(tiny=True, progress=False, data={"MNIST": tp._vision("MNIST", ("0", "1", "2"), 0)})
    return GPT2XL(tiny=True, data={"science": tp._mc("science")}, progress=False,
                  config=GPT2XLConfig(finetune=tp.STEPS))


# ----------------------------------------------------------------------------- merge_names


@pytest.mark.parametrize("which", ["text", "vision", "causal_lm"])
def test_paper_merge_names_are_the_old_patterns(which):
    setup = _paper(which)
    names = setup.merge_names()
    assert names == old_paper_rule(setup) and names
    assert all(setup.trainable(n) for n in names)
    assert setup.merge_names() is not setup.merge_names() and setup.merge_names() == names  # a copy each call


@pytest.mark.parametrize("make", [lambda: ToySetup(device="cpu", progress=False),
                                  lambda: VisionSetup(progress=False, tasks=("digits",)),
                                  lambda: TextSetup(progress=False, tasks=("tweet_year",))],
                         ids=["toy", "vision", "text"])
def test_laptop_merge_names_are_the_old_default_rule(make):
    setup = make()
    assert setup.merge_patterns is None
    assert setup.merge_names() == old_laptop_rule(setup)


def test_vision_merge_names_leave_out_batchnorm_statistics():
    setup = VisionSetup(progress=False, tasks=("digits",))
    names = setup.merge_names()
    assert not any(n.endswith(("running_mean", "running_var", "num_batches_tracked")) for n in names)
    assert "bn1.weight" in names and len(names) < len(setup.pretrained())


def test_text_merge_names_leave_out_the_frozen_embeddings():
    names = TextSetup(progress=False, tasks=("tweet_year",)).merge_names()
    assert "embeddings.word_embeddings.weight" not in names and "embeddings.LayerNorm.weight" in names


@pytest.mark.slow
def test_causal_lm_merge_names_are_the_old_default_rule():
    setup = CausalLMSetup(progress=False)
    names = setup.merge_names()
    assert names == old_laptop_rule(setup) and "model.embed_tokens.weight" not in names


# ----------------------------------------------------------------------------- evaluate(..., limit=)


def old_mean_accuracy(setup, body, task, split, batch_size, limit):
    """casestudy.mean_accuracy at a5b6712, for one task."""
    data = setup.task(task).split(split)
    if limit is None or limit >= len(data):
        return setup.evaluate(body, task, split, batch_size=batch_size)
    model, right = setup.module(body), 0
    with torch.no_grad():
        for batch in setup.batches(task, data.subset(range(limit)), batch_size):
            pred, true = setup.predict(task, model, batch)
            right += int((pred.cpu() == true.cpu()).sum())
    return right / limit


@pytest.mark.parametrize("limit", [1, 7, 64, 149, 150, 10_000, None])
def test_limited_evaluation_is_the_old_rule(limit):
    setup = ToySetup(device="cpu", progress=False)
    body = {n: t + 0.3 * torch.randn(t.shape, generator=torch.Generator().manual_seed(1))
            for n, t in setup.pretrained().items()}
    for split in ("val", "test"):
        old = old_mean_accuracy(setup, body, "a", split, 16, limit)
        assert setup.evaluate(body, "a", split, 16, limit=limit) == old
    assert setup.evaluate_all(body, split="val", limit=limit) == {
        t: old_mean_accuracy(setup, body, t, "val", 64, limit) for t in setup.tasks}


def test_limit_is_a_positive_int():
    setup = ToySetup(device="cpu", progress=False)
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(ValueError, match=f"limit must be .*got {bad!r}"):
            setup.evaluate(setup.pretrained(), "a", limit=bad)


def test_gpt2_limited_evaluation_is_our_scoring_on_the_first_items():
    setup = _paper("causal_lm")
    pre = setup.pretrained()
    assert setup.evaluate(pre, "science", limit=2) == old_mean_accuracy(setup, pre, "science", "test", 8, 2)
    assert setup.evaluate(pre, "science", limit=100) == setup.evaluate(pre, "science")
    full = GPT2XL(data=setup._injected, tokenizer=setup.tokenizer, progress=False)  # the lm-eval code path
    with pytest.raises(ValueError, match="limit must be .*got '2'"):
        full.evaluate(pre, "science", limit="2")


# ----------------------------------------------------------------------------- cache_key


@pytest.mark.parametrize("make", [lambda: ToySetup(device="cpu", progress=False), lambda: _paper("vision"),
                                  lambda: VisionSetup(progress=False)], ids=["toy", "clip", "vision"])
def test_cache_key_is_setup_track_identity_kind_and_extras(make):
    setup = make()
    cfg = setup.finetune_config
    key = setup.cache_key("finetune", task=setup.tasks[0], finetune=cfg.to_dict())
    old = {"setup": setup.name, "track": setup.track, "identity": setup.identity(), "kind": "finetune",
           "task": setup.tasks[0], "finetune": cfg.to_dict()}  # Setup._key at a5b6712
    assert key == old and list(key) == list(old) and config_key(key) == config_key(old)


# ----------------------------------------------------------------------------- registration


def test_setups_are_registered_classes_under_the_old_keys():
    assert SETUPS == {("text", "laptop"): TextSetup, ("vision", "laptop"): VisionSetup,
                      ("causal_lm", "laptop"): CausalLMSetup, ("text", "paper"): RobertaLMBFF,
                      ("vision", "paper"): ClipViTB32, ("causal_lm", "paper"): GPT2XL}
    assert isinstance(lsedu.zoo.load("vision", progress=False, tasks=("digits",)), VisionSetup)
    assert type(lsedu.zoo.load("vision", track="paper", progress=False)) is ClipViTB32


def test_register_setup_refuses_a_second_class_for_a_key():
    class Other(ToySetup):
        name, track = "text", "laptop"

    with pytest.raises(ValueError, match=r"\('text', 'laptop'\) is already registered as TextSetup"):
        register_setup(Other)
    assert register_setup(TextSetup) is TextSetup and issubclass(SETUPS[("text", "laptop")], Setup)


def test_laptop_task_tables_list_the_tasks_in_order():
    from lsedu.zoo import causal_lm, text, vision

    assert tuple(text.TEXT_TASKS) == text.TASKS == TextSetup.tasks
    assert tuple(vision.IMAGE_TASKS) == vision.TASKS == vision.VISION.tasks
    assert tuple(causal_lm.SKILLS) == CausalLMSetup.tasks == ("sentiment", "science", "truthful")
