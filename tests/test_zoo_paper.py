"""The paper track (roberta-base LM-BFF, CLIP ViT-B/32, GPT2-XL) tested offline.

The hub is out of reach here, so each setup runs with ``tiny=True``: a random
model of the same architecture class with a tokenizer trained offline, and
hand-made task data injected. The hub loaders themselves are called with the
hub switched off, and must fail with AssetMissing that says what to do.
"""

from __future__ import annotations

import pytest
import torch

from lsedu.zoo import AssetMissing, FinetuneConfig, Split, TaskData
from lsedu.zoo import paper
from lsedu.zoo.cache import cache_root
from lsedu.zoo.paper import (
    CLIP_TASKS,
    GPT2XL,
    GPT2XL_TASKS,
    LMBFF_TASKS,
    ClipViTB32,
    GPT2XLConfig,
    RobertaLMBFF,
    RobertaLMBFFConfig,
    encode_prompt,
    few_shot_indices,
    holdout_indices,
    label_word_ids,
    lm_eval_accuracies,
    mc_item,
    prompt_pieces,
    tiny_bpe_tokenizer,
    zero_shot_weights,
)

STEPS = FinetuneConfig(epochs=1, lr=1e-3, batch_size=4, seed=0)  # two steps on 8 training examples


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LSEDU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LSEDU_DEVICE", "cpu")


def _changed(a, b) -> set[str]:
    return {n for n in a if not torch.equal(a[n], b[n])}


# ----------------------------------------------------------------------------- hand-made data

GOOD = ["a warm and funny film", "great acting and a clever plot", "I loved every minute", "a joy to watch"]
BAD = ["a dull and silly film", "bad acting and a lazy plot", "I hated every minute", "a chore to watch"]


def _sst2() -> TaskData:
    texts = [(t,) for t in GOOD + BAD] * 2
    labels = [1] * 4 + [0] * 4 + [1] * 4 + [0] * 4
    split = Split(texts, labels)
    return TaskData("SST-2", ("negative", "positive"), split.subset(range(8)), split.subset(range(8, 12)),
                    split.subset(range(8, 16)))


def _rte() -> TaskData:
    pairs = [("A man is sleeping.", "A man rests."), ("A dog runs in a park.", "An animal is outside."),
             ("Two kids play chess.", "Children are playing."), ("She sings on stage.", "A woman performs."),
             ("A man is sleeping.", "The man is running a race."), ("A dog runs in a park.", "The dog is asleep."),
             ("Two kids play chess.", "Nobody is playing."), ("She sings on stage.", "She is silent at home.")]
    split = Split(pairs, [0, 0, 0, 0, 1, 1, 1, 1])
    return TaskData("RTE", ("entailment", "not_entailment"), split, split.subset([0, 4, 1, 5]), split)


@pytest.fixture(scope="module")
def roberta():
    return RobertaLMBFF(tiny=True, data={"SST-2": _sst2(), "RTE": _rte()}, progress=False,
                        config=RobertaLMBFFConfig(steps=2, finetune=STEPS))


# ----------------------------------------------------------------------------- 1. LM-BFF prompts


def test_lmbff_config_covers_the_12_tasks_with_one_word_per_class():
    assert list(LMBFF_TASKS) == ["SST-2", "CR", "MR", "MPQA", "TREC", "SUBJ", "QNLI", "SNLI", "MNLI", "RTE",
                                 "MRPC", "QQP"]
    n_classes = {"TREC": 6, "SNLI": 3, "MNLI": 3}
    for name, spec in LMBFF_TASKS.items():
        classes = [c for c, _ in spec.label_words]
        words = spec.words(classes)
        assert len(classes) == n_classes.get(name, 2), name
        assert len(set(words)) == len(words), name  # distinct words, else two classes are one
        sentences = ["The first sentence."] * len(spec.text_columns)
        assert [k for k, _ in prompt_pieces(spec.template, sentences)].count("mask") == 1, name
        assert spec.hub and spec.test_split, name
    assert LMBFF_TASKS["SST-2"].words(["negative", "positive"]) == ["terrible", "great"]
    assert dict(LMBFF_TASKS["TREC"].label_words)["ABBR"] == "Expression"


def test_prompt_pieces_follow_lm_bff():
    assert prompt_pieces("{s0} It was{mask}.", ["A fine film."]) == [
        ("sentence", "A fine film."), ("text", " It was"), ("mask", ""), ("text", ".")]
    # NLI: the premise loses its final period, the hypothesis its capital, and the space goes with it
    assert prompt_pieces("{s0_nopunct}?{mask}, {s1_lower}", ["A man sleeps.", "He rests."]) == [
        ("sentence", "A man sleeps"), ("text", "?"), ("mask", ""), ("text", ","), ("sentence", " he rests.")]
    assert prompt_pieces("{mask}: {s0}", "What is a bird?") == [
        ("mask", ""), ("text", ":"), ("sentence", " What is a bird?")]


@pytest.mark.parametrize("template, sentences, match", [
    ("{s0} It was.", ["x"], "exactly once"),
    ("{mask} {mask} {s0}", ["x"], "exactly once"),
    ("{s0} {sent}{mask}", ["x"], "unknown field"),
    ("{s1}{mask}", ["only one"], "sentence 1"),
])
def test_prompt_pieces_reject_bad_templates(template, sentences, match):
    with pytest.raises(ValueError, match=match):
        prompt_pieces(template, sentences)


def test_encode_prompt_keeps_the_mask_when_it_truncates(roberta):
    tok = roberta.tokenizer
    long = " ".join(GOOD * 10)
    ids, pos = encode_prompt(tok, prompt_pieces("{s0} It was{mask}.", [long]), max_length=24)
    assert len(ids) == 24 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert ids[pos] == tok.mask_token_id and ids.count(tok.mask_token_id) == 1
    assert tok.decode(ids[pos + 1:-1]) == "."
    short, pos2 = encode_prompt(tok, prompt_pieces("{s0} It was{mask}.", ["a joy to watch"]), max_length=24)
    assert len(short) < 24 and short[pos2] == tok.mask_token_id
    # two sentences: the longer one is cut first
    ids, _ = encode_prompt(tok, prompt_pieces("{s0}{mask}, {s1_lower}", [long, "A man rests."]), max_length=30)
    assert len(ids) == 30 and tok.decode(ids).endswith(" a man rests.</s>")
    with pytest.raises(ValueError, match="max_length"):
        encode_prompt(tok, prompt_pieces("{s0} It was{mask}.", ["x"]), max_length=3)


def test_label_words_must_be_single_tokens(roberta):
    tok = roberta.tokenizer
    ids = label_word_ids(tok, ["terrible", "great"])
    assert len(set(ids)) == 2 and tok.convert_ids_to_tokens(ids) == ["Ġterrible", "Ġgreat"]
    with pytest.raises(ValueError, match="'unbelievablyzzq' is"):
        label_word_ids(tok, ["great", "unbelievablyzzq"])


def test_few_shot_indices_are_disjoint_balanced_and_seeded():
    labels = torch.tensor([0] * 10 + [1] * 12 + [-1] * 5 + [2] * 8)
    tr, va = few_shot_indices(labels, 3, seed=13)
    assert len(set(tr.tolist()) & set(va.tolist())) == 0
    for part in (tr, va):
        assert torch.bincount(labels[part], minlength=3).tolist() == [3, 3, 3]
    assert torch.equal(tr, few_shot_indices(labels, 3, seed=13)[0])
    assert not torch.equal(tr, few_shot_indices(labels, 3, seed=21)[0])
    with pytest.raises(ValueError, match="class 2 has 8 examples"):
        few_shot_indices(labels, 5, seed=0)


def test_holdout_indices_split_every_class():
    labels = torch.tensor([0] * 50 + [1] * 30)
    tr, va = holdout_indices(labels, 0.1, cap=1000, seed=0)
    assert sorted(tr.tolist() + va.tolist()) == list(range(80))
    assert torch.bincount(labels[va]).tolist() == [5, 3]
    assert len(holdout_indices(labels, 0.1, cap=4, seed=0)[1]) == 4


# ----------------------------------------------------------------------------- 1. the tiny RoBERTa end to end


def test_roberta_tiny_finetunes_only_the_transformer_layers(roberta, tmp_path):
    pre = roberta.pretrained()
    assert "lm_head.dense.weight" in pre and "lm_head.decoder.weight" not in pre  # tied output listed once
    merged = roberta.merge_names()
    assert merged and all(n.startswith("roberta.encoder.layer.") for n in merged)
    assert roberta.finetune_config_for("SST-2").epochs == 1  # 2 steps x batch 4 on 8 examples

    ft, record = roberta.finetune_record("SST-2")
    changed = _changed(ft, pre)
    assert changed and changed <= set(merged)  # the task vector lives where Localize-and-Stitch masks
    assert record["metrics"]["train_seconds"] > 0 and 0 <= record["metrics"]["val_accuracy"] <= 1
    assert list((cache_root() / "text").glob("*.safetensors")) and str(cache_root()).startswith(str(tmp_path))
    again = roberta.finetune("SST-2")  # from the cache
    assert not _changed(again, ft)

    for task in ("SST-2", "RTE"):
        acc = roberta.evaluate(ft, task)
        assert isinstance(acc, float) and 0.0 <= acc <= 1.0
    batch = next(roberta.batches("RTE", roberta.task("RTE").test, 3))
    assert roberta.label_logits("RTE", roberta.module(pre), batch).shape == (3, 2)


def test_roberta_rejects_bad_data():
    with pytest.raises(ValueError, match="pass data="):
        RobertaLMBFF(tiny=True)
    with pytest.raises(ValueError, match="'IMDB'"):
        RobertaLMBFF(tiny=True, data={"IMDB": _sst2()})
    with pytest.raises(TypeError, match=r"data\['SST-2'\]"):
        RobertaLMBFF(tiny=True, data={"SST-2": [("text",)]})
    with pytest.raises(TypeError, match="tiny"):
        RobertaLMBFF(tiny="yes", data={"SST-2": _sst2()})
    td = _sst2()
    wrong = TaskData("SST-2", ("bad", "good"), td.train, td.val, td.test)
    setup = RobertaLMBFF(tiny=True, data={"SST-2": wrong}, progress=False)
    with pytest.raises(ValueError, match=r"\['bad', 'good'\] have no label word"):
        setup.task("SST-2")


# ----------------------------------------------------------------------------- the hub, switched off


@pytest.fixture
def offline(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", "/nonexistent-lsedu-hf-home")  # nothing cached by chance


@pytest.mark.parametrize("call, hub_id, laptop", [
    (lambda: RobertaLMBFF(progress=False).load_pretrained(), "FacebookAI/roberta-base", "text"),
    (lambda: RobertaLMBFF(progress=False).task("SST-2"), "nyu-mll/glue", "text"),
    (lambda: ClipViTB32(progress=False).pretrained(), "openai", "vision"),
    (lambda: ClipViTB32(progress=False).task("DTD"), "tanganke/dtd", "vision"),
    (lambda: GPT2XL(progress=False).load_pretrained(), "openai-community/gpt2-xl", "causal_lm"),
    (lambda: GPT2XL(progress=False).finetune("science"), "lgaalves/gpt-2-xl_camel-ai-physics", "causal_lm"),
])
def test_hub_loaders_offline_raise_asset_missing(offline, call, hub_id, laptop):
    with pytest.raises(AssetMissing) as err:
        call()
    msg = str(err.value)
    assert "needs internet access" in msg and hub_id in msg, msg
    assert f"lsedu.zoo.load('{laptop}')" in msg, msg


def test_lm_eval_offline_raises_asset_missing(offline, gpt2):
    """The real lm-eval call (simple_evaluate on our in-memory model) gets as far as the benchmark's download."""
    from lsedu.zoo.paper import run_lm_eval

    with pytest.raises(AssetMissing, match=r"allenai/ai2_arc .*lm-eval task arc_challenge.*load\('causal_lm'\)"):
        run_lm_eval(gpt2.module(gpt2.pretrained()), gpt2.tokenizer, GPT2XL_TASKS["science"], limit=2)


def test_gpt2xl_skill_without_public_finetune_says_how_to_add_one():
    with pytest.raises(ValueError, match="finetunes="):
        GPT2XL(progress=False).finetune("truthfulness")
    with pytest.raises(ValueError, match="'chat'"):
        GPT2XL(progress=False).finetune("chat")


# ----------------------------------------------------------------------------- 2. CLIP


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _vision(name: str, classes: tuple[str, ...], seed: int) -> TaskData:
    k = len(classes)
    labels = torch.arange(8) % k
    return TaskData(name, classes, Split(_images(8, seed), labels), Split(_images(4, seed + 1), labels[:4]),
                    Split(_images(6, seed + 2), labels[:6]))


@pytest.fixture(scope="module")
def clip():
    data = {"MNIST": _vision("MNIST", ("0", "1", "2"), 0), "EuroSAT": _vision("EuroSAT", ("forest", "river"), 10)}
    return ClipViTB32(tiny=True, data=data, progress=False)


def test_clip_zero_shot_heads(clip):
    for task, n in (("MNIST", 3), ("EuroSAT", 2)):
        head = clip.head(task)
        assert head["weight"].shape == (n, clip.clip.text_projection.shape[1]) == (n, 32)
        assert torch.equal(head["bias"], torch.zeros(n))
        scale = clip.clip.logit_scale.exp().item()  # each row: a unit direction times CLIP's logit scale
        assert torch.allclose(head["weight"].norm(dim=1), torch.full((n,), scale), rtol=1e-5)
    # the head is the mean over templates: one template alone gives another head
    one = zero_shot_weights(clip.clip, clip.text_tokenizer, ["forest", "river"], CLIP_TASKS["EuroSAT"].templates[:1])
    assert not torch.allclose(one, clip.head("EuroSAT")["weight"].cpu())
    with pytest.raises(ValueError, match="at least one"):
        zero_shot_weights(clip.clip, clip.text_tokenizer, [], ["a photo of {c}."])


def test_clip_tiny_finetunes_the_image_encoder(clip):
    pre = clip.pretrained()
    assert set(pre) == set(clip.clip.visual.state_dict()) and "conv1.weight" in pre
    head = clip.head("MNIST")["weight"].clone()
    ft = clip.finetune("MNIST", STEPS)
    assert set(ft) == set(pre) and _changed(ft, pre)
    assert torch.equal(clip.head("MNIST")["weight"], head)  # heads stay frozen
    for body in (pre, ft):
        acc = clip.evaluate(body, "MNIST")
        assert isinstance(acc, float) and 0.0 <= acc <= 1.0
    feats = clip.features(clip.module(ft), next(clip.batches("MNIST", clip.task("MNIST").test, 4)))
    assert torch.allclose(feats.norm(dim=1), torch.ones(4), atol=1e-5)
    cfg = clip.finetune_config_for("EuroSAT")
    assert cfg.epochs == 12 and cfg.lr == 1e-5 and cfg.batch_size == 128  # task_vectors' recipe


def test_clip_preprocesses_pil_images(clip):
    from PIL import Image

    pics = [Image.new("RGB", (40, 50), (i * 60, 20, 200)) for i in range(3)]
    out = clip._images("MNIST", pics)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32


def test_clip_task_table_has_the_eight_tasks():
    assert list(CLIP_TASKS) == ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]
    assert len(CLIP_TASKS["GTSRB"].classnames) == 43 and len(CLIP_TASKS["EuroSAT"].classnames) == 10
    assert len(CLIP_TASKS["RESISC45"].templates) == 18 and len(CLIP_TASKS["Cars"].templates) == 8
    for spec in CLIP_TASKS.values():
        assert all(t.format(c="X") != t for t in spec.templates)


# ----------------------------------------------------------------------------- 3. GPT-2


def _mc(name: str) -> TaskData:
    qs = [("Question: What do plants need to make food?\nAnswer:", [" sunlight", " sand", " plastic"], 0),
          ("Question: What is ice made of?\nAnswer:", [" rock", " water", " wood"], 1),
          ("Question: Which planet is closest to the sun?\nAnswer:", [" Mars", " Jupiter", " Mercury"], 2),
          ("Question: What force pulls things down?\nAnswer:", [" gravity", " magnetism", " friction"], 0),
          ("Q: Can pigs fly?\nA:", [" No, pigs cannot fly.", " Yes, pigs fly."], 0),
          ("Q: Is the earth flat?\nA:", [" Yes.", " No, it is round."], 1),
          ("Q: Do humans use all of their brain?\nA:", [" Yes, all of it.", " Most of it, over a day."], 1),
          ("Q: Is water wet?\nA:", [" It makes things wet.", " Never."], 0)]
    items = [{"prompt": p, "options": o} for p, o, _ in qs]
    split = Split(items, [y for _, _, y in qs])
    return TaskData(name, ("0", "1", "2"), split, split.subset([0, 4, 5]), split.subset([1, 2, 6, 7]))


@pytest.fixture(scope="module")
def gpt2():
    return GPT2XL(tiny=True, data={"science": _mc("science"), "truthfulness": _mc("truthfulness")},
                  progress=False, config=GPT2XLConfig(finetune=STEPS))


def test_gpt2_tiny_trains_where_there_is_no_public_finetune(gpt2):
    pre = gpt2.pretrained()
    assert "transformer.wte.weight" in pre and "lm_head.weight" not in pre
    ft = gpt2.finetune("science")
    changed = _changed(ft, pre)
    assert changed and all(n.startswith("transformer.h.") for n in changed)
    for body in (pre, ft):
        acc = gpt2.evaluate(body, "science")  # tiny: our lm-eval-style scoring, not the hub benchmark
        assert isinstance(acc, float) and 0.0 <= acc <= 1.0


def test_gpt2_scores_options_as_lm_eval_does(gpt2):
    """Our log-likelihood of each option equals lm-eval's HFLM.loglikelihood on the same in-memory model."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from lsedu.zoo.causal_lm import continuation_logprobs

    model = gpt2.module(gpt2.pretrained())
    split = gpt2.task("science").test
    batch = next(gpt2.batches("science", split, 4))
    ours = continuation_logprobs(model, batch.choices)
    requests = [Instance("loglikelihood", {}, (it["prompt"], o), i)
                for i, (it, o) in enumerate((it, o) for it in batch.items for o in it["options"])]
    lm = HFLM(pretrained=model, tokenizer=gpt2.tokenizer, batch_size=4, device="cpu", max_length=256)
    theirs = torch.tensor([ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)])
    assert torch.allclose(ours.cpu(), theirs, atol=1e-4), (ours, theirs)


def test_lm_eval_results_become_accuracies():
    recorded = {"results": {  # the shape of lm_eval.simple_evaluate's output (0.4.x)
        "mmlu": {"acc,none": 0.2643, "acc_stderr,none": "N/A", "alias": "mmlu"},
        "arc_challenge": {"acc,none": 0.2585, "acc_norm,none": 0.3029, "alias": "arc_challenge"},
        "truthfulqa_mc2": {"acc,none": 0.3854, "alias": "truthfulqa_mc2"}}}
    assert lm_eval_accuracies(recorded, GPT2XL_TASKS) == {"instruction": 0.2643, "science": 0.3029,
                                                           "truthfulness": 0.3854}
    with pytest.raises(ValueError, match="no task 'mmlu'"):
        lm_eval_accuracies({"results": {"arc_challenge": {}}}, GPT2XL_TASKS)
    with pytest.raises(ValueError, match="no metric 'acc_norm,none'"):
        lm_eval_accuracies({"results": {"arc_challenge": {"acc,none": 0.3}}}, {"science": GPT2XL_TASKS["science"]})
    with pytest.raises(ValueError, match="not an accuracy"):
        lm_eval_accuracies({"results": {"mmlu": {"acc,none": 26.4}}}, {"instruction": GPT2XL_TASKS["instruction"]})
    with pytest.raises(ValueError, match="simple_evaluate"):
        lm_eval_accuracies([0.3], GPT2XL_TASKS)


def test_benchmark_rows_become_lm_eval_prompts():
    item, y = mc_item("mmlu", {"question": " 2+2? ", "choices": ["1", "2", "3", "4"], "answer": 3})
    assert item == {"prompt": "2+2?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:", "options": [" A", " B", " C", " D"]} and y == 3
    item, y = mc_item("arc", {"question": "Hot?", "choices": {"text": ["sun", "ice"], "label": ["A", "B"]},
                              "answerKey": "A"})
    assert item == {"prompt": "Question: Hot?\nAnswer:", "options": [" sun", " ice"]} and y == 0
    item, y = mc_item("truthfulqa", {"question": "Why?", "mc1_targets": {"choices": ["a", "b"], "labels": [0, 1]}})
    assert item["prompt"] == "Q: Why?\nA:" and y == 1
    with pytest.raises(ValueError, match="'gsm8k'"):
        mc_item("gsm8k", {})


def test_gpt2xl_rejects_a_finetune_with_another_vocabulary(gpt2, monkeypatch):
    setup = GPT2XL(data=gpt2._injected, tokenizer=gpt2.tokenizer, progress=False)  # full-size code path, no hub
    base = {"transformer.wte.weight": torch.zeros(10, 4), "transformer.h.0.attn.c_attn.weight": torch.zeros(4, 12)}
    monkeypatch.setattr(setup, "load_pretrained", lambda: base)
    monkeypatch.setattr(setup, "_load", lambda hub_id, what: {**base, "transformer.wte.weight": torch.zeros(11, 4)})
    with pytest.raises(ValueError, match=r"'transformer.wte.weight' is shape \(11, 4\), expected \(10, 4\)"):
        setup.finetune("science")
    monkeypatch.setattr(setup, "_load", lambda hub_id, what: {n: t + 1 for n, t in base.items()})
    ft = setup.finetune("science")
    assert torch.equal(ft["transformer.wte.weight"], torch.ones(10, 4))


def test_tiny_tokenizer_is_deterministic_and_rejects_bad_kind():
    a = tiny_bpe_tokenizer(GOOD + BAD, "gpt2", vocab_size=300)
    b = tiny_bpe_tokenizer(GOOD + BAD, "gpt2", vocab_size=300)
    assert a.get_vocab() == b.get_vocab() and a.eos_token == "<|endoftext|>"
    with pytest.raises(ValueError, match="kind"):
        tiny_bpe_tokenizer(GOOD, "bert")
    with pytest.raises(ValueError, match="non-empty"):
        tiny_bpe_tokenizer([], "roberta")


def test_module_exports_exist():
    assert all(hasattr(paper, name) for name in paper.__all__)


# ----------------------------------------------------------------------------- all three: trained localization


@pytest.mark.parametrize("which, task", [("roberta", "SST-2"), ("clip", "MNIST"), ("gpt2", "science")])
def test_trained_localization_runs_on_each_setup(request, which, task):
    """lsedu.localize_trained accepts each setup's body, loss and batches, and masks only the merged tensors."""
    from lsedu import localize_trained

    setup = request.getfixturevalue(which)
    pre = setup.pretrained()
    ft = setup.finetune(task, STEPS)
    names = setup.merge_names()
    tau = {n: ft[n] - pre[n] for n in names}
    mask, log = localize_trained(setup.build_body(), pre, tau, setup.localization_loss(task),
                                 setup.localization_batches(task, 4), density=0.1, epochs=1, progress=False)
    assert set(mask) == set(names) and len(log) == 1
    assert torch.isfinite(torch.tensor(log[0]["task_loss"]))


@pytest.mark.parametrize("make, err, match", [
    (lambda: RobertaLMBFFConfig(shots=0), ValueError, "shots"),
    (lambda: RobertaLMBFFConfig(max_test=-5), ValueError, "max_test"),
    (lambda: paper.ClipViTB32Config(val_fraction=0.7), ValueError, "val_fraction"),
    (lambda: paper.ClipViTB32Config(epochs={"MNIST": 0}), ValueError, "epochs"),
    (lambda: GPT2XLConfig(finetunes={"chat": "someone/gpt2-xl-chat"}), ValueError, "'chat'"),
    (lambda: GPT2XLConfig(lm_eval="yes"), TypeError, "lm_eval"),
    (lambda: RobertaLMBFF(config=GPT2XLConfig()), TypeError, "RobertaLMBFFConfig"),
    (lambda: ClipViTB32(tasks="MNIST"), TypeError, "sequence of task names"),
    (lambda: GPT2XL(tasks=["science", "chat"]), ValueError, r"\['chat'\]"),
])
def test_configs_and_arguments_name_the_culprit(make, err, match):
    with pytest.raises(err, match=match):
        make()
