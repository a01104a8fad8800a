"""The paper track: the three setups of Localize-and-Stitch, downloaded from the Hugging Face hub.

He et al. 2025 (Localize-and-Stitch, arXiv 2408.13656, Sec. 4) merge

==================  =============================================  ==========================================
setup               model and tasks                                 what is merged (:meth:`merge_names`)
==================  =============================================  ==========================================
``RobertaLMBFF``    roberta-base, 12 LM-BFF tasks, 64 shots/class,  every tensor of the 12 transformer layers
                    prompt-based fine-tuning (Gao et al. 2021)      (no embeddings, no MLM head)
``ClipViTB32``      CLIP ViT-B/32 ``openai``, 8 image tasks,        the image encoder; the heads are frozen
                    zero-shot heads from the text encoder           zero-shot heads (never merged)
``GPT2XL``          gpt2-xl and public fine-tunes for instruction   the 48 transformer blocks
                    following, science and truthfulness, scored
                    with lm-eval on MMLU, ARC, TruthfulQA
==================  =============================================  ==========================================

They share the :class:`~lsedu.zoo.base.Setup` API of the laptop track
(``finetune``, ``evaluate``, ``localization_loss`` ...), so a notebook runs
on either track by changing ``lsedu.zoo.load(name, track=...)``. They need
the hub (models and data) and, for sensible run times, a GPU; without the
hub every loader raises :class:`~lsedu.zoo.AssetMissing` that names the hub
id and points to the laptop track, instead of a traceback from deep inside
transformers or datasets.

Testing without the hub: ``tiny=True`` builds a randomly initialised model
of the *same architecture classes* (``RobertaForMaskedLM``, open_clip's
``CLIP`` / ``VisionTransformer``, ``GPT2LMHeadModel``) at a toy size, with a
byte-level BPE tokenizer trained offline on the data, and ``data=`` injects
:class:`~lsedu.zoo.TaskData` in place of the hub datasets. Everything else
(prompts, label words, zero-shot heads, lm-eval scoring) is the code the
full-size setups run.

Where the facts come from (look them up there, cite them in the book):

* LM-BFF templates and label words: ``run_experiment.sh`` of
  princeton-nlp/LM-BFF (Gao et al. 2021, arXiv 2012.15723); the 64-shot
  setting and the 12 tasks: Localize-and-Stitch Sec. 4.1, whose language
  code builds on LM-BFF's data.
* CLIP prompt templates, EuroSAT class names and fine-tuning epochs:
  ``src/datasets/templates.py``, ``src/datasets/eurosat.py`` and
  ``src/finetune.py`` of mlfoundations/task_vectors (Ilharco et al. 2023).
* Hub ids of the 8 image datasets: FusionBench's
  ``config/dataset/image_classification`` (tanganke/fusion_bench).
* lm-eval task names, splits and metrics: the task YAML files of
  lm-eval 0.4.13 (``tasks/mmlu``, ``tasks/arc``, ``tasks/truthfulqa``).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import hashlib
import json
import math
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .assets import AssetMissing
from .base import ClassificationSetup, FinetuneConfig, Forward, Setup, Split, TaskData
from .cache import StateDict
from .causal_lm import ChoiceBatch, answer_loss, check_items, choose, continuation_logprobs, encode_choices, tie_aware

T = TypeVar("T")

__all__ = [
    "CLIP_TASKS", "EUROSAT_CLASSNAMES", "GPT2XL", "GPT2XL_TASKS", "GTSRB_CLASSNAMES", "LMBFF_TASKS",
    "TASK_VECTORS_EPOCHS", "TINY_CLIP", "TINY_GPT2", "TINY_ROBERTA", "ClipViTB32", "ClipViTB32Config", "GPT2XLConfig",
    "HubRow", "LLMTask", "PromptTask", "RobertaLMBFF", "RobertaLMBFFConfig", "VisionTask", "data_fingerprint",
    "encode_prompt", "few_shot_indices", "from_hub", "holdout_indices", "label_word_ids", "lm_eval_accuracies",
    "load_llm_task", "load_prompt_task", "mc_item", "prompt_pieces", "run_lm_eval", "tiny_bpe_tokenizer",
    "zero_shot_weights",
]

# ----------------------------------------------------------------------------- the hub, and what to do without it


def from_hub(load: Callable[[], T], hub_id: str, what: str, laptop: str,
             errors: tuple[type[BaseException], ...] = (OSError,)) -> T:
    """``load()``, or :class:`AssetMissing` saying that ``hub_id`` needs the hub and naming the laptop setup.

    transformers, datasets and huggingface_hub raise ``OSError`` subclasses
    (``ConnectionError``, ``FileNotFoundError``, "couldn't connect") when a
    file is neither downloadable nor cached; open_clip raises ``RuntimeError``
    (pass it in ``errors``). The message keeps the library's first line.
    """
    try:
        return load()
    except errors as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise AssetMissing(
            f"the paper track needs internet access to download {hub_id} ({what}) from the Hugging Face hub, "
            f"and it is not in the local cache ({type(e).__name__}: {first[:200]}). Run it on a machine with "
            f"internet access (and a GPU), or use the laptop track: lsedu.zoo.load({laptop!r})") from None


def _check_flag(value, arg: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{arg} must be True or False, got {value!r}")
    return value


def _check_config(config, cls):
    if config is None:
        return cls()
    if not isinstance(config, cls):
        raise TypeError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    return config


def _check_data(data, known: Mapping[str, Any], setup: str) -> dict[str, TaskData] | None:
    """``data`` as a dict ``{task: TaskData}`` whose names ``known`` describes, or None."""
    if data is None:
        return None
    if not isinstance(data, Mapping) or not data:
        raise TypeError(f"data must be a non-empty dict of task name -> TaskData, got {type(data).__name__}")
    for name, td in data.items():
        if name not in known:
            raise ValueError(f"data has task {name!r}, which {setup} has no config for; its tasks are {list(known)}")
        if not isinstance(td, TaskData):
            raise TypeError(f"data[{name!r}] must be a lsedu.zoo.TaskData, got {type(td).__name__}")
    return dict(data)


def _pick_tasks(tasks, default: Sequence[str], data: Mapping | None, known: Mapping) -> tuple[str, ...]:
    if tasks is None:
        return tuple(t for t in default if data is None or t in data) or tuple(data or ())
    if isinstance(tasks, str) or not isinstance(tasks, Sequence) or not tasks:
        raise TypeError(f"tasks must be a non-empty sequence of task names, got {tasks!r}")
    bad = [t for t in tasks if t not in known or (data is not None and t not in data)]
    if bad:
        where = f"the injected data ({list(data)})" if data is not None else f"the known tasks ({list(known)})"
        raise ValueError(f"tasks {bad} are not in {where}")
    return tuple(tasks)


def data_fingerprint(data: Mapping[str, TaskData]) -> str:
    """A 16-hex-digit hash of injected task data (classes, labels and inputs of every split), for cache keys."""
    h = hashlib.sha256()
    for name in sorted(data):
        td = data[name]
        h.update(json.dumps([name, list(td.classes)]).encode())
        for which in ("train", "val", "test"):
            s = td.split(which)
            h.update(which.encode() + s.labels.cpu().numpy().tobytes())
            if isinstance(s.inputs, torch.Tensor):
                h.update(str(tuple(s.inputs.shape)).encode() + s.inputs.detach().cpu().contiguous().numpy().tobytes())
            else:
                h.update(repr(list(s.inputs)).encode())
    return h.hexdigest()[:16]


def tiny_bpe_tokenizer(texts: Iterable[str], kind: Literal["roberta", "gpt2"], vocab_size: int = 2000):
    """A byte-level BPE tokenizer trained offline on ``texts``, with roberta-base's or gpt2's special tokens.

    For tests of the paper track without the hub: the same tokenizer type
    (byte-level BPE, ``Ġ`` marks a leading space) and special tokens as the
    real one, so prompts, label words and lm-eval requests go through the
    same code. ``"roberta"``: ``<s> <pad> </s> <unk> <mask>`` (ids 0-4, as
    roberta-base); ``"gpt2"``: ``<|endoftext|>`` (id 0) as bos, eos and pad.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind not in ("roberta", "gpt2"):
        raise ValueError(f"kind must be 'roberta' or 'gpt2', got {kind!r}")
    texts = [t for t in texts if isinstance(t, str) and t]
    if not texts:
        raise ValueError("texts must hold at least one non-empty string to train the tokenizer on")
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"] if kind == "roberta" else ["<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if kind == "roberta":
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", cls_token="<s>", pad_token="<pad>",
                                       eos_token="</s>", sep_token="</s>", unk_token="<unk>", mask_token="<mask>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")


def _vocab_hash(tokenizer) -> str:
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:16]


def _seeded(build: Callable[[], T], seed: int) -> T:
    """``build()`` with torch's global RNG seeded, then restored: a random init that is the same every call."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _order(n: int, shuffle: bool, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randperm(n, generator=generator) if shuffle else torch.arange(n)


def few_shot_indices(labels: Sequence[int] | torch.Tensor, shots: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` row indices: ``shots`` per class each, disjoint, drawn with ``seed`` (LM-BFF's K-shot sets).

    LM-BFF samples its few-shot training set and a development set of the
    same size from the original training data. Labels below 0 (unlabelled
    rows, e.g. SNLI's -1) are never drawn. A class with fewer than
    ``2 * shots`` rows is an error that names it.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ValueError(f"shots must be a positive int, got {shots!r}")
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(labels[labels >= 0]):
        where = torch.nonzero(labels == c).flatten()
        if len(where) < 2 * shots:
            raise ValueError(f"class {int(c)} has {len(where)} examples, too few for {shots} train + {shots} val shots")
        where = where[torch.randperm(len(where), generator=g)]
        train.append(where[:shots])
        val.append(where[shots:2 * shots])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def _subsample(n: int, cap: int | None, seed: int) -> torch.Tensor:
    """Row indices ``0..n-1``, or a seeded sorted random ``cap`` of them."""
    if cap is None or cap >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:cap].sort().values


def _hub_labels(dset, column: str) -> torch.Tensor:
    return torch.as_tensor(list(dset[column]), dtype=torch.long)


def _label_names(dset, label_column: str, name_column: str | None, class_names: tuple[str, ...] | None,
                 where: str) -> tuple[str, ...]:
    """Names of labels 0, 1, ...: from the ClassLabel feature, else a name column, else the config."""
    feature = dset.features[label_column]
    if getattr(feature, "names", None):
        names = tuple(feature.names)
    elif name_column is not None:
        pairs = {(int(y), str(n)) for y, n in zip(dset[label_column], dset[name_column]) if int(y) >= 0}
        by_id: dict[int, str] = {}
        for y, n in sorted(pairs):
            if by_id.setdefault(y, n) != n:
                raise ValueError(f"{where}: label {y} has two names in column {name_column!r}: {by_id[y]!r}, {n!r}")
        names = tuple(by_id[y] for y in range(max(by_id) + 1))
    elif class_names is not None:
        names = class_names
    else:
        raise ValueError(f"{where}: the label column {label_column!r} has no names; give name_column or class_names")
    if class_names is not None and names != class_names:
        raise ValueError(f"{where}: the hub labels are named {names}, but the config expects {class_names}")
    return names


# ============================================================================= 1. roberta-base, LM-BFF


@dataclass(frozen=True)
class PromptTask:
    """One LM-BFF task: its data on the hub, its prompt template and its label words.

    ``template`` is a format string with ``{mask}`` (once) and ``{s0}``,
    ``{s1}`` for the task's sentences; ``{s0_nopunct}`` drops a final
    ``.?!`` (LM-BFF's ``*sent-_0*``) and ``{s1_lower}`` lower-cases the first
    letter (``*sentl_1*``). A space written just before a sentence belongs
    to it (LM-BFF's ``*+sent*``), so its first word gets the byte-level
    ``Ġ`` token. ``label_words`` maps each class, by its name on the hub, to
    the word the MLM head should put at ``{mask}``; the word is scored with a
    leading space, as in LM-BFF, and must be one token.
    """

    hub: str
    hub_config: str | None
    text_columns: tuple[str, ...]
    label_column: str
    train_split: str
    test_split: str  # GLUE hides its test labels: LM-BFF tests on the dev set
    template: str
    label_words: tuple[tuple[str, str], ...]  # (class name on the hub, label word)
    name_column: str | None = None  # a column naming each label, where the label feature has no names
    class_names: tuple[str, ...] | None = None  # names of labels 0, 1, ... when the dataset has neither
    max_length: int = 128

    def words(self, classes: Sequence[str]) -> list[str]:
        """The label words of ``classes`` (hub class names), in that order; ValueError for a class without one."""
        table = dict(self.label_words)
        missing = [c for c in classes if c not in table]
        if missing:
            raise ValueError(f"classes {missing} have no label word in this LM-BFF config (it has {list(table)})")
        return [table[c] for c in classes]


_SENT = "{s0} It was{mask}."  # SST-2, MR, CR, MPQA: LM-BFF's *cls**sent_0*_It_was*mask*.*sep+*
_NLI = "{s0_nopunct}?{mask}, {s1_lower}"  # *cls**sent-_0*?*mask*,*+sentl_1**sep+*
_PARA = "{s0}{mask}, {s1_lower}"  # *cls**sent_0**mask*,*+sentl_1**sep+*
_POLARITY = (("negative", "terrible"), ("positive", "great"))
_NLI3 = (("entailment", "Yes"), ("neutral", "Maybe"), ("contradiction", "No"))
_NLI2 = (("entailment", "Yes"), ("not_entailment", "No"))

#: The 12 tasks of Localize-and-Stitch's language setup, in its order. Templates and label words: LM-BFF's
#: run_experiment.sh (manual prompts). Hub ids: GLUE (nyu-mll/glue), SNLI (stanfordnlp/snli), the SentEval
#: sets mirrored by SetFit (CR, SUBJ, TREC) and jxm (MPQA), rotten_tomatoes (MR = Pang & Lee's polarity set).
LMBFF_TASKS: dict[str, PromptTask] = {
    "SST-2": PromptTask("nyu-mll/glue", "sst2", ("sentence",), "label", "train", "validation", _SENT, _POLARITY),
    "CR": PromptTask("SetFit/SentEval-CR", None, ("text",), "label", "train", "test", _SENT, _POLARITY,
                     name_column="label_text"),
    "MR": PromptTask("cornell-movie-review-data/rotten_tomatoes", None, ("text",), "label", "train", "test", _SENT,
                     (("neg", "terrible"), ("pos", "great"))),
    # jxm/mpqa has integer labels only; 0 = negative, 1 = positive as in SentEval's MPQA (not checked online)
    "MPQA": PromptTask("jxm/mpqa", None, ("sentence",), "label", "train", "test", _SENT, _POLARITY,
                       class_names=("negative", "positive")),
    "TREC": PromptTask("SetFit/TREC-QC", None, ("text",), "label_coarse", "train", "test", "{mask}: {s0}",
                       (("DESC", "Description"), ("ENTY", "Entity"), ("ABBR", "Expression"), ("HUM", "Human"),
                        ("LOC", "Location"), ("NUM", "Number")), name_column="label_coarse_original"),
    "SUBJ": PromptTask("SetFit/subj", None, ("text",), "label", "train", "test", "{s0} This is{mask}.",
                       (("subjective", "subjective"), ("objective", "objective")), name_column="label_text"),
    "QNLI": PromptTask("nyu-mll/glue", "qnli", ("question", "sentence"), "label", "train", "validation", _NLI,
                       _NLI2),
    "SNLI": PromptTask("stanfordnlp/snli", None, ("premise", "hypothesis"), "label", "train", "test", _NLI, _NLI3,
                       max_length=256),
    "MNLI": PromptTask("nyu-mll/glue", "mnli", ("premise", "hypothesis"), "label", "train", "validation_matched",
                       _NLI, _NLI3, max_length=256),
    "RTE": PromptTask("nyu-mll/glue", "rte", ("sentence1", "sentence2"), "label", "train", "validation", _NLI, _NLI2,
                      max_length=256),
    "MRPC": PromptTask("nyu-mll/glue", "mrpc", ("sentence1", "sentence2"), "label", "train", "validation", _PARA,
                       (("not_equivalent", "No"), ("equivalent", "Yes"))),
    "QQP": PromptTask("nyu-mll/glue", "qqp", ("question1", "question2"), "label", "train", "validation", _PARA,
                      (("not_duplicate", "No"), ("duplicate", "Yes"))),
}


def prompt_pieces(template: str, sentences: Sequence[str]) -> list[tuple[str, str]]:
    """``template`` filled with ``sentences``, as ``(kind, text)`` pieces: kind is "text", "sentence" or "mask".

    >>> prompt_pieces("{s0} It was{mask}.", ["A fine film."])
    [('sentence', 'A fine film.'), ('text', ' It was'), ('mask', ''), ('text', '.')]
    """
    if isinstance(sentences, str):
        sentences = [sentences]
    pieces: list[tuple[str, str]] = []
    for literal, name, _, _ in string.Formatter().parse(template):
        if literal:
            pieces.append(("text", literal))
        if name is None:
            continue
        if name == "mask":
            pieces.append(("mask", ""))
            continue
        base, _, mod = name.partition("_")
        if not (len(base) == 2 and base[0] == "s" and base[1].isdigit()) or mod not in ("", "nopunct", "lower"):
            raise ValueError(f"template {template!r} has an unknown field {{{name}}}; use {{mask}}, {{s0}}, "
                             f"{{s0_nopunct}} or {{s1_lower}}")
        i = int(base[1])
        if i >= len(sentences):
            raise ValueError(f"template {template!r} uses sentence {i}, but the example has {len(sentences)}")
        s = str(sentences[i]).strip()
        if mod == "nopunct" and s[-1:] in (".", "?", "!"):
            s = s[:-1]
        elif mod == "lower":
            s = s[:1].lower() + s[1:]
        if pieces and pieces[-1][0] == "text" and pieces[-1][1].endswith(" "):
            lit = pieces.pop()[1][:-1]  # the space goes with the sentence: " word" is one Ġword token
            if lit:
                pieces.append(("text", lit))
            s = " " + s
        pieces.append(("sentence", s))
    if sum(k == "mask" for k, _ in pieces) != 1:
        raise ValueError(f"template {template!r} must contain {{mask}} exactly once")
    return pieces


def encode_prompt(tokenizer, pieces: Sequence[tuple[str, str]], max_length: int) -> tuple[list[int], int]:
    """``(input_ids, mask position)`` of a prompt: ``<s>`` pieces ``</s>``, at most ``max_length`` tokens.

    Each piece is tokenized on its own and the ids concatenated, as LM-BFF
    does; the mask is the tokenizer's mask token. If the prompt is too long,
    sentences lose tokens at their end, longest sentence first, so the
    template (and its mask) always survives.
    """
    parts = [[tokenizer.mask_token_id] if kind == "mask" else tokenizer.encode(text, add_special_tokens=False)
             for kind, text in pieces]
    sentences = [i for i, (kind, _) in enumerate(pieces) if kind == "sentence"]
    over = sum(map(len, parts)) + 2 - max_length
    while over > 0:
        j = max(sentences, key=lambda i: len(parts[i]), default=None)
        if j is None or not parts[j]:
            raise ValueError(f"the template alone needs more than max_length={max_length} tokens")
        cut = min(over, len(parts[j]) - max((len(parts[i]) for i in sentences if i != j), default=0)) or 1
        parts[j] = parts[j][:len(parts[j]) - cut]
        over -= cut
    ids = [tokenizer.cls_token_id]
    mask_pos = -1
    for (kind, _), p in zip(pieces, parts):
        if kind == "mask":
            mask_pos = len(ids)
        ids += p
    return ids + [tokenizer.sep_token_id], mask_pos


def label_word_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """The token id of ``" " + word`` for each label word; ValueError if a word is not one token (LM-BFF's rule)."""
    out = []
    for w in words:
        ids = tokenizer.encode(" " + w, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"label word {w!r} is {len(ids)} tokens ({tokenizer.convert_ids_to_tokens(ids)}) for "
                             f"this tokenizer; prompt-based fine-tuning scores one vocabulary entry per class")
        out.append(ids[0])
    return out


def load_prompt_task(name: str, spec: PromptTask, shots: int, seed: int, max_test: int | None) -> TaskData:
    """An LM-BFF task from the hub: ``shots`` per class for train and for val (disjoint, seeded), and the test set."""
    import datasets

    where = f"{spec.hub}" + (f" ({spec.hub_config})" if spec.hub_config else "")
    ds = from_hub(lambda: datasets.load_dataset(spec.hub, spec.hub_config), where, f"the {name} data", "text")
    train, test = ds[spec.train_split], ds[spec.test_split]
    classes = _label_names(train, spec.label_column, spec.name_column, spec.class_names, f"{name} ({where})")
    spec.words(classes)  # every class has a label word

    def split(dset, idx: torch.Tensor) -> Split:
        rows = dset.select(idx.tolist())
        inputs = list(zip(*(rows[c] for c in spec.text_columns)))
        return Split(inputs, _hub_labels(rows, spec.label_column))

    tr, va = few_shot_indices(_hub_labels(train, spec.label_column), shots, seed)
    test_labels = _hub_labels(test, spec.label_column)
    labelled = torch.nonzero(test_labels >= 0).flatten()
    te = labelled[_subsample(len(labelled), max_test, seed)]
    return TaskData(name, classes, split(train, tr), split(train, va), split(test, te), source=where)


@dataclass(frozen=True)
class RobertaLMBFFConfig:
    """Every number of the roberta-base setup (all of it enters the cache keys).

    * ``shots``: training examples per class (64 in Localize-and-Stitch);
      the validation set has as many, drawn from the rest of the train data
      (LM-BFF). ``seed`` draws them (LM-BFF's data seeds are 13, 21, 42, 87, 100).
    * ``max_test``: cap on test examples (a seeded subset); None uses the whole
      test set, as the papers do (QQP's has 40k).
    * ``steps``: optimiser steps of a fine-tune (LM-BFF: 1000); turned into
      whole epochs per task by :meth:`RobertaLMBFF.finetune_config_for`.
    * ``finetune``: learning rate, batch size and seed of a fine-tune (LM-BFF
      searches lr in {1e-5, 2e-5, 5e-5} and batch size in {2, 4, 8}; we fix one point).
    """

    model: str = "FacebookAI/roberta-base"
    shots: int = 64
    seed: int = 13
    max_test: int | None = None
    steps: int = 1000
    finetune: FinetuneConfig = FinetuneConfig(epochs=1, lr=1e-5, batch_size=8, seed=13)

    def __post_init__(self):
        for f in ("shots", "steps"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"RobertaLMBFFConfig.{f} must be a positive int, got {v!r}")
        if self.max_test is not None and (isinstance(self.max_test, bool) or not isinstance(self.max_test, int)
                                          or self.max_test < 1):
            raise ValueError(f"RobertaLMBFFConfig.max_test must be None or a positive int, got {self.max_test!r}")
        if not isinstance(self.finetune, FinetuneConfig):
            raise TypeError(f"RobertaLMBFFConfig.finetune must be a FinetuneConfig, got {type(self.finetune).__name__}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> RobertaLMBFFConfig:
        return dataclasses.replace(self, **changes)


#: The toy RoBERTa of ``tiny=True``: the real class at a test size.
TINY_ROBERTA = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                "max_position_embeddings": 260}


class RobertaLMBFF(Setup):
    """roberta-base with prompt-based fine-tuning (LM-BFF) on the 12 language tasks of Localize-and-Stitch.

    A task is a cloze: its template puts ``<mask>`` in the input, and the MLM
    head's logits of the task's label words at that position are the class
    scores (Gao et al. 2021, Sec. 4). The loss is their cross-entropy; no new
    parameters are added, so every task shares one architecture.

    The body is the whole ``RobertaForMaskedLM`` state dict (the MLM head is
    the classifier), with the tied output weights listed once. Fine-tuning
    updates only the transformer layers (:data:`merge_patterns`), exactly the
    tensors Localize-and-Stitch masks and merges: task vectors are zero on
    the embeddings and the head, like the laptop text setup, which freezes
    its embeddings too.

    ``RobertaLMBFF(device=None, progress=True, *, config=None, tasks=None,
    tiny=False, data=None, tokenizer=None)``: ``tiny=True`` is a random
    2-layer RoBERTa (:data:`TINY_ROBERTA`) with a tokenizer trained on the
    injected ``data`` (required then); ``data`` replaces the hub datasets.
    """

    name = "text"
    track = "paper"
    tasks = tuple(LMBFF_TASKS)
    merge_patterns: tuple[str, ...] = ("roberta.encoder.layer.*",)

    def __init__(self, device: str | torch.device | None = None, progress: bool = True, *,
                 config: RobertaLMBFFConfig | None = None, tasks: Sequence[str] | None = None,
                 tiny: bool = False, data: Mapping[str, TaskData] | None = None, tokenizer=None):
        super().__init__(device, progress)
        self.config = _check_config(config, RobertaLMBFFConfig)
        self.tiny = _check_flag(tiny, "tiny")
        self._injected = _check_data(data, LMBFF_TASKS, "RobertaLMBFF")
        if self.tiny and self._injected is None and tokenizer is None:
            raise ValueError("tiny=True trains its tokenizer on the injected data: pass data={task: TaskData}")
        self.tasks = _pick_tasks(tasks, tuple(LMBFF_TASKS), self._injected, LMBFF_TASKS)
        self.finetune_config = self.config.finetune
        self._tokenizer = tokenizer
        self._model_config = None
        self._label_ids: dict[str, list[int]] = {}

    # --- model ------------------------------------------------------------------------------

    def identity(self) -> dict:
        return {"model": "tiny random RobertaForMaskedLM" if self.tiny else self.config.model,
                "tiny": TINY_ROBERTA if self.tiny else None, "config": self.config.to_dict(),
                "tasks": {t: dataclasses.asdict(LMBFF_TASKS[t]) for t in self.tasks},
                "data": data_fingerprint(self._injected) if self._injected else "hub",
                "tokenizer": _vocab_hash(self.tokenizer) if self.tiny else self.config.model}

    @property
    def tokenizer(self):
        """roberta-base's tokenizer from the hub; with ``tiny``, a BPE tokenizer trained on the injected data."""
        if self._tokenizer is None:
            if self.tiny:
                self._tokenizer = tiny_bpe_tokenizer(self._tiny_corpus(), "roberta")
            else:
                from transformers import AutoTokenizer

                self._tokenizer = from_hub(lambda: AutoTokenizer.from_pretrained(self.config.model),
                                           self.config.model, "its tokenizer", "text")
        return self._tokenizer

    def _tiny_corpus(self) -> list[str]:
        texts = []
        for t, td in self._injected.items():
            spec = LMBFF_TASKS[t]
            for which in ("train", "val", "test"):
                texts += [" ".join(x) if not isinstance(x, str) else x for x in td.split(which).inputs]
            texts += [spec.template.replace("{", " ").replace("}", " ")]
            texts += [" " + w for _, w in spec.label_words] * 50  # label words become single tokens
        return texts

    @property
    def model_config(self):
        """The ``RobertaConfig`` (from the hub, or :data:`TINY_ROBERTA` around the tiny tokenizer)."""
        if self._model_config is None:
            from transformers import RobertaConfig

            if self.tiny:
                tok = self.tokenizer
                self._model_config = RobertaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                                   **TINY_ROBERTA)
            else:
                self._model_config = from_hub(lambda: RobertaConfig.from_pretrained(self.config.model),
                                              self.config.model, "its config", "text")
        return self._model_config

    def build_body(self) -> nn.Module:
        from transformers import RobertaForMaskedLM

        return tie_aware(RobertaForMaskedLM(self.model_config))

    def load_pretrained(self) -> StateDict:
        """roberta-base's weights with its MLM head (hub); with ``tiny``, a random init seeded with ``config.seed``."""
        from transformers import RobertaForMaskedLM

        if self.tiny:
            model = _seeded(self.build_body, self.config.seed)
        else:
            model = tie_aware(from_hub(lambda: RobertaForMaskedLM.from_pretrained(self.config.model),
                                       self.config.model, "the pretrained weights", "text"))
        return {n: t.detach().cpu() for n, t in model.state_dict().items()}

    def trainable(self, name: str) -> bool:
        """Only the transformer layers: what Localize-and-Stitch masks (no embeddings, no MLM head)."""
        return _matches(name, self.merge_patterns)

    def merge_names(self) -> list[str]:
        """The body tensors a merge combines (:data:`merge_patterns`); the others stay pretrained."""
        return [n for n in self.pretrained() if self.trainable(n)]

    # --- data -------------------------------------------------------------------------------

    def load_task(self, task: str) -> TaskData:
        if self._injected is not None:
            td = self._injected[task]
            LMBFF_TASKS[task].words(td.classes)
            return td
        return load_prompt_task(task, LMBFF_TASKS[task], self.config.shots, self.config.seed, self.config.max_test)

    def finetune_config_for(self, task: str) -> FinetuneConfig:
        """``config.finetune`` with as many epochs as ``config.steps`` steps need on ``task``'s few-shot set."""
        cfg = self.config.finetune
        n = len(self.train_split(task))
        return cfg.replace(epochs=max(1, math.ceil(self.config.steps * cfg.batch_size / n)))

    def label_ids(self, task: str) -> list[int]:
        """Vocabulary ids of ``task``'s label words, in the order of its classes."""
        if task not in self._label_ids:
            self._label_ids[task] = label_word_ids(self.tokenizer, LMBFF_TASKS[task].words(self.task(task).classes))
        return self._label_ids[task]

    def batches(self, task: str, split: Split, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Prompts of ``split`` as ``{input_ids, attention_mask, mask_pos, labels}``, padded to the longest."""
        _check_batch_size(batch_size)
        spec, tok = LMBFF_TASKS[task], self.tokenizer
        order = _order(len(split), shuffle, generator)
        for s in range(0, len(split), batch_size):
            idx = order[s:s + batch_size]
            enc = [encode_prompt(tok, prompt_pieces(spec.template, split.inputs[int(i)]), spec.max_length)
                   for i in idx]
            width = max(len(ids) for ids, _ in enc)
            input_ids = torch.full((len(enc), width), tok.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(enc), width), dtype=torch.long)
            for r, (ids, _) in enumerate(enc):
                input_ids[r, :len(ids)] = torch.tensor(ids)
                attention[r, :len(ids)] = 1
            batch = {"input_ids": input_ids, "attention_mask": attention,
                     "mask_pos": torch.tensor([m for _, m in enc]), "labels": split.labels[idx]}
            yield {k: v.to(self.device) for k, v in batch.items()}

    def label_logits(self, task: str, forward: Forward, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[batch, classes]``: the MLM logits of the label words at the mask (LM-BFF's class scores)."""
        logits = forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        at_mask = logits[torch.arange(len(logits), device=logits.device), batch["mask_pos"]]
        return at_mask[:, self.label_ids(task)].float()

    def loss(self, task: str, forward: Forward, batch) -> torch.Tensor:
        return F.cross_entropy(self.label_logits(task, forward, batch), batch["labels"])

    def predict(self, task: str, forward: Forward, batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.label_logits(task, forward, batch).argmax(-1), batch["labels"]


# ============================================================================= 2. CLIP ViT-B/32


@dataclass(frozen=True)
class VisionTask:
    """One image task: its hub dataset, its CLIP prompt templates (``{c}`` is the class name) and class names.

    ``classnames`` overrides the dataset's label names where those are not
    words CLIP knows (digits, EuroSAT's CamelCase folders, GTSRB's numbers).
    """

    hub: str
    hub_config: str | None
    templates: tuple[str, ...]
    classnames: tuple[str, ...] | None = None
    image_column: str = "image"
    label_column: str = "label"
    train_split: str = "train"
    test_split: str = "test"


_DIGITS = tuple(str(d) for d in range(10))
_NUMBER = ('a photo of the number: "{c}".',)
_SIGN = ('a zoomed in photo of a "{c}" traffic sign.', 'a centered photo of a "{c}" traffic sign.',
         'a close up photo of a "{c}" traffic sign.')
#: EuroSAT's classes in label order, in the words task_vectors gives CLIP (from OpenAI's CLIP prompts).
EUROSAT_CLASSNAMES = ("annual crop land", "forest", "brushland or shrubland", "highway or road",
                      "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
                      "residential buildings or homes or apartments", "river", "lake or sea")
#: GTSRB's 43 classes in ClassId order, as plain descriptions of the German signs.
GTSRB_CLASSNAMES = (
    "speed limit 20 km/h", "speed limit 30 km/h", "speed limit 50 km/h", "speed limit 60 km/h",
    "speed limit 70 km/h", "speed limit 80 km/h", "end of speed limit 80 km/h", "speed limit 100 km/h",
    "speed limit 120 km/h", "no overtaking", "no overtaking by trucks", "right of way at the next crossroads",
    "priority road", "give way", "stop", "no vehicles", "no trucks", "no entry", "general danger",
    "dangerous bend to the left", "dangerous bend to the right", "double bend", "uneven road", "slippery road",
    "road narrows on the right", "road works", "traffic lights ahead", "pedestrians", "children crossing",
    "cyclists crossing", "ice or snow", "wild animals crossing", "end of all speed and overtaking limits",
    "turn right ahead", "turn left ahead", "ahead only", "straight ahead or right", "straight ahead or left",
    "keep right", "keep left", "roundabout", "end of no overtaking", "end of no overtaking by trucks")

#: The 8 tasks of Task Arithmetic, in its order. Templates: task_vectors' templates.py. Hub ids: FusionBench.
CLIP_TASKS: dict[str, VisionTask] = {
    "SUN397": VisionTask("tanganke/sun397", None, ("a photo of a {c}.", "a photo of the {c}.")),
    "Cars": VisionTask("tanganke/stanford_cars", None, tuple(
        f"{p} {{c}}{e}" for p, e in (("a photo of a", "."), ("a photo of the", "."), ("a photo of my", "."),
                                     ("i love my", "!"), ("a photo of my dirty", "."), ("a photo of my clean", "."),
                                     ("a photo of my new", "."), ("a photo of my old", ".")))),
    "RESISC45": VisionTask("tanganke/resisc45", None, tuple(
        f"{kind} {art}{{c}}." for art in ("", "a ", "the ") for kind in
        ("satellite imagery of", "aerial imagery of", "satellite photo of", "aerial photo of",
         "satellite view of", "aerial view of"))),
    "EuroSAT": VisionTask("tanganke/eurosat", None, tuple(f"a centered satellite photo of {a}{{c}}."
                                                          for a in ("", "a ", "the ")),
                          classnames=EUROSAT_CLASSNAMES),
    "SVHN": VisionTask("svhn", "cropped_digits", _NUMBER, classnames=_DIGITS),
    "GTSRB": VisionTask("tanganke/gtsrb", None, _SIGN, classnames=GTSRB_CLASSNAMES),
    "MNIST": VisionTask("mnist", None, _NUMBER, classnames=_DIGITS),
    "DTD": VisionTask("tanganke/dtd", None, tuple(f"a photo of {a} {{c}} {w}." for a in ("a", "the")
                                                  for w in ("texture", "pattern", "thing", "object"))),
}

#: Epochs of task_vectors' fine-tunes (batch 128, about 2000 steps each): src/finetune.py.
TASK_VECTORS_EPOCHS = {"SUN397": 14, "Cars": 35, "RESISC45": 15, "EuroSAT": 12, "SVHN": 4, "GTSRB": 11,
                       "MNIST": 5, "DTD": 76}


def _clean_classname(name: str) -> str:
    """A hub label name as CLIP reads it: ``"/a/abbey"`` -> ``"abbey"``, ``"tennis_court"`` -> ``"tennis court"``."""
    return name.strip("/").split("/")[-1].replace("_", " ").strip()


@torch.no_grad()
def zero_shot_weights(clip_model: nn.Module, tokenizer, classnames: Sequence[str], templates: Sequence[str],
                      device: str | torch.device = "cpu") -> torch.Tensor:
    """``[classes, embed_dim]`` zero-shot head of CLIP (Radford et al. 2021; task_vectors' ``heads.py``).

    Row ``c`` is ``exp(logit_scale)`` times the normalised mean of the
    normalised text embeddings of ``template.format(c=classname)`` over the
    templates. Logits are then ``normalize(image features) @ weights.T``.
    """
    if not classnames or not templates:
        raise ValueError(f"need at least one class name and one template, got {len(classnames)} and {len(templates)}")
    rows = []
    for c in classnames:
        tokens = tokenizer([t.format(c=c) for t in templates]).to(device)
        emb = F.normalize(clip_model.encode_text(tokens).float(), dim=-1).mean(0)
        rows.append(F.normalize(emb, dim=0))
    return torch.stack(rows) * clip_model.logit_scale.exp().float()


@dataclass(frozen=True)
class HubRow:
    """A lazy image: row ``index`` of split ``split`` of a task's hub dataset (decoded only when batched)."""

    split: str
    index: int


def holdout_indices(labels: torch.Tensor, fraction: float, cap: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` row indices: a seeded, class-stratified ``fraction`` of the rows (at most ``cap``) is val."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    g = torch.Generator().manual_seed(seed)
    val = []
    for c in torch.unique(labels):
        where = torch.nonzero(labels == c).flatten()
        val.append(where[torch.randperm(len(where), generator=g)[:max(1, round(fraction * len(where)))]])
    val_idx = torch.cat(val)
    if len(val_idx) > cap:
        val_idx = val_idx[torch.randperm(len(val_idx), generator=g)[:cap]]
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val_idx] = False
    return torch.nonzero(keep).flatten(), val_idx.sort().values


@dataclass(frozen=True)
class ClipViTB32Config:
    """Every number of the CLIP setup (all of it enters the cache keys).

    * ``arch`` / ``pretrained``: the open_clip model and weights tag.
    * Validation: a seeded, stratified ``val_fraction`` of each train set, at
      most ``max_val`` images (task_vectors' "Val" datasets hold out part of
      train too). ``max_test`` caps the test set (None: all of it).
    * Fine-tuning as task_vectors: AdamW, lr 1e-5, weight decay 0.1, batch
      128, ``epochs[task]`` epochs, ``warmup_steps`` of linear warm-up. The
      base trainer keeps the rate constant after warm-up (task_vectors: cosine)
      and uses the deterministic test transform for training (task_vectors:
      open_clip's random-crop train transform).
    """

    arch: str = "ViT-B-32"
    pretrained: str | None = "openai"
    seed: int = 0
    val_fraction: float = 0.1
    max_val: int = 5000
    max_test: int | None = None
    epochs: dict[str, int] = field(default_factory=lambda: dict(TASK_VECTORS_EPOCHS))
    warmup_steps: int = 500
    finetune: FinetuneConfig = FinetuneConfig(epochs=1, lr=1e-5, batch_size=128, weight_decay=0.1, seed=0)

    def __post_init__(self):
        if not 0 < self.val_fraction < 0.5:
            raise ValueError(f"ClipViTB32Config.val_fraction must be in (0, 0.5), got {self.val_fraction!r}")
        for f in ("max_val", "warmup_steps"):
            v = getattr(self, f)
            low = 0 if f == "warmup_steps" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"ClipViTB32Config.{f} must be an int >= {low}, got {v!r}")
        bad = {t: e for t, e in self.epochs.items() if isinstance(e, bool) or not isinstance(e, int) or e < 1}
        if bad:
            raise ValueError(f"ClipViTB32Config.epochs must map tasks to positive ints, got {bad}")
        if not isinstance(self.finetune, FinetuneConfig):
            raise TypeError(f"ClipViTB32Config.finetune must be a FinetuneConfig, got {type(self.finetune).__name__}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> ClipViTB32Config:
        return dataclasses.replace(self, **changes)


#: The toy CLIP of ``tiny=True``: open_clip's ``CLIP`` with a 2-layer ``VisionTransformer`` on 32x32 images, and
#: the real BPE tokenizer's vocabulary (49408) and context length (77). ViT-B/32 itself (151M parameters) takes
#: seconds per CPU forward, too slow for the test suite; ``tiny=False, pretrained=None`` builds it randomly.
TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32,
                            "mlp_ratio": 2.0},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


class ClipViTB32(ClassificationSetup):
    """CLIP ViT-B/32 (open_clip, ``openai`` weights) on the 8 image tasks of Task Arithmetic.

    The body is the image encoder (``clip.visual``); each task's head is the
    frozen zero-shot head built from the text encoder with the task's class
    names and templates (:func:`zero_shot_weights`), never trained and never
    merged, as in task_vectors and Localize-and-Stitch. A task's logits are
    ``normalize(visual(image)) @ head.T``; the pretrained accuracy is CLIP's
    zero-shot accuracy.

    ``ClipViTB32(device=None, progress=True, *, config=None, tasks=None,
    tiny=False, data=None)``: ``tiny=True`` is a random toy CLIP
    (:data:`TINY_CLIP`); ``data`` replaces the hub datasets (inputs: a float
    tensor ``[N, 3, H, W]`` already preprocessed, or PIL images).
    """

    name = "vision"
    track = "paper"
    tasks = tuple(CLIP_TASKS)
    merge_patterns: tuple[str, ...] = ("*",)

    def __init__(self, device: str | torch.device | None = None, progress: bool = True, *,
                 config: ClipViTB32Config | None = None, tasks: Sequence[str] | None = None,
                 tiny: bool = False, data: Mapping[str, TaskData] | None = None):
        super().__init__(device, progress)
        self.config = _check_config(config, ClipViTB32Config)
        self.tiny = _check_flag(tiny, "tiny")
        self._injected = _check_data(data, CLIP_TASKS, "ClipViTB32")
        self.tasks = _pick_tasks(tasks, tuple(CLIP_TASKS), self._injected, CLIP_TASKS)
        self.finetune_config = self.config.finetune
        self._clip = None
        self._preprocess = None
        self._hub: dict[str, Any] = {}

    # --- model ------------------------------------------------------------------------------

    def identity(self) -> dict:
        return {"model": "tiny random open_clip CLIP" if self.tiny else f"open_clip {self.config.arch}",
                "pretrained": None if self.tiny else self.config.pretrained,
                "tiny": TINY_CLIP if self.tiny else None, "config": self.config.to_dict(),
                "tasks": {t: dataclasses.asdict(CLIP_TASKS[t]) for t in self.tasks},
                "data": data_fingerprint(self._injected) if self._injected else "hub"}

    @property
    def clip(self) -> nn.Module:
        """The whole CLIP model (image and text encoders) on ``self.device``, in eval mode; loaded once."""
        if self._clip is None:
            import open_clip

            cfg = self.config
            if self.tiny:
                model = _seeded(lambda: open_clip.model.CLIP(**copy.deepcopy(TINY_CLIP)), cfg.seed)
                self._preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
            else:
                tag = open_clip.get_pretrained_cfg(cfg.arch, cfg.pretrained) if cfg.pretrained else {}
                if cfg.pretrained and not tag:
                    raise ValueError(f"open_clip has no pretrained tag {cfg.pretrained!r} for {cfg.arch!r}; "
                                     f"known: {open_clip.list_pretrained_tags_by_model(cfg.arch)}")
                if tag:  # download (or find in the cache) first: a missing file fails fast, before the model is built
                    source = (tag.get("hf_hub") or tag.get("url") or "").rstrip("/")
                    from_hub(lambda: open_clip.download_pretrained(tag), source or f"{cfg.arch} {cfg.pretrained}",
                             f"the {cfg.arch} '{cfg.pretrained}' weights", "vision", (OSError, RuntimeError))
                # the openai weights were trained with QuickGELU; the tag says so
                model, _, self._preprocess = _seeded(lambda: open_clip.create_model_and_transforms(
                    cfg.arch, pretrained=cfg.pretrained, force_quick_gelu=bool(tag.get("quick_gelu"))), cfg.seed)
            self._clip = model.to(self.device).eval()
        return self._clip

    @property
    def text_tokenizer(self):
        """open_clip's BPE tokenizer for the text encoder (shipped with open_clip: no download)."""
        import open_clip

        return open_clip.get_tokenizer("ViT-B-32" if self.tiny else self.config.arch)

    def build_body(self) -> nn.Module:
        """A copy of CLIP's image encoder (the exact architecture the weights were loaded into)."""
        return copy.deepcopy(self.clip.visual)

    def load_pretrained(self) -> StateDict:
        return {n: t.detach().cpu().clone() for n, t in self.clip.visual.state_dict().items()}

    def trainable(self, name: str) -> bool:
        return _matches(name, self.merge_patterns)

    def merge_names(self) -> list[str]:
        """The body tensors a merge combines: the whole image encoder."""
        return [n for n in self.pretrained() if self.trainable(n)]

    # --- data -------------------------------------------------------------------------------

    def classnames(self, task: str) -> tuple[str, ...]:
        return self.task(task).classes

    def load_task(self, task: str) -> TaskData:
        if self._injected is not None:
            return self._injected[task]
        import datasets

        spec, cfg = CLIP_TASKS[task], self.config
        where = spec.hub + (f" ({spec.hub_config})" if spec.hub_config else "")
        ds = from_hub(lambda: datasets.load_dataset(spec.hub, spec.hub_config), where, f"the {task} images", "vision")
        self._hub[task] = ds
        train, test = ds[spec.train_split], ds[spec.test_split]
        feature = train.features[spec.label_column]
        n_classes = feature.num_classes if hasattr(feature, "num_classes") else int(max(train[spec.label_column])) + 1
        if spec.classnames is not None:
            if len(spec.classnames) != n_classes:
                raise ValueError(f"{task} ({where}) has {n_classes} classes, but its config names "
                                 f"{len(spec.classnames)}")
            classes = spec.classnames
        else:
            classes = tuple(_clean_classname(n) for n in feature.names)
        labels = _hub_labels(train, spec.label_column)
        tr, va = holdout_indices(labels, cfg.val_fraction, cfg.max_val, cfg.seed)
        te = _subsample(len(test), cfg.max_test, cfg.seed)
        test_labels = _hub_labels(test, spec.label_column)

        def rows(which: str, idx: torch.Tensor, lab: torch.Tensor) -> Split:
            return Split([HubRow(which, int(i)) for i in idx], lab[idx])

        return TaskData(task, classes, rows(spec.train_split, tr, labels), rows(spec.train_split, va, labels),
                        rows(spec.test_split, te, test_labels), source=where)

    def finetune_config_for(self, task: str) -> FinetuneConfig:
        """``config.finetune`` with task_vectors' epochs for ``task`` and ``config.warmup_steps`` as a fraction."""
        cfg = self.config.finetune
        epochs = self.config.epochs.get(task, cfg.epochs)
        steps = epochs * math.ceil(len(self.train_split(task)) / cfg.batch_size)
        return cfg.replace(epochs=epochs, warmup=min(0.9, self.config.warmup_steps / steps))

    def _images(self, task: str, inputs: Sequence) -> torch.Tensor:
        self.clip  # noqa: B018 -- sets the preprocess transform
        if all(isinstance(x, HubRow) for x in inputs):
            spec = CLIP_TASKS[task]
            if task not in self._hub:
                self.load_task(task)
            by_split: dict[str, list[int]] = {}
            for x in inputs:
                by_split.setdefault(x.split, []).append(x.index)
            pics = {s: dict(zip(ix, self._hub[task][s][ix][spec.image_column])) for s, ix in by_split.items()}
            inputs = [pics[x.split][x.index] for x in inputs]
        return torch.stack([self._preprocess(x) for x in inputs])

    def batches(self, task: str, split: Split, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(images [B, 3, H, W], labels)`` on ``self.device``; hub images are decoded and preprocessed per batch."""
        _check_batch_size(batch_size)
        order = _order(len(split), shuffle, generator)
        for s in range(0, len(split), batch_size):
            idx = order[s:s + batch_size]
            if isinstance(split.inputs, torch.Tensor):
                images = split.inputs[idx]
            else:
                images = self._images(task, [split.inputs[int(i)] for i in idx])
            yield images.to(self.device), split.labels[idx].to(self.device)

    def features(self, forward: Forward, batch) -> torch.Tensor:
        """L2-normalised image embeddings ``[B, embed_dim]`` (CLIP compares directions)."""
        return F.normalize(forward(batch[0]).float(), dim=-1)

    def _fit_head(self, task: str):
        """The zero-shot head (not fitted on data): ``{"weight": [classes, embed_dim], "bias": zeros}``."""
        spec = CLIP_TASKS[task]
        w = zero_shot_weights(self.clip, self.text_tokenizer, self.classnames(task), spec.templates, self.device).cpu()
        return {"weight": w, "bias": torch.zeros(len(w))}, {"templates": len(spec.templates), "classes": len(w)}


# ============================================================================= 3. GPT2-XL and its public fine-tunes


@dataclass(frozen=True)
class LLMTask:
    """One skill of the GPT2-XL setup: the public fine-tune that has it, and the lm-eval benchmark that scores it.

    ``finetune`` is the hub id of a GPT2-XL fine-tuned for the skill (None
    where no id is known); ``benchmark``, ``metric`` and ``num_fewshot`` say
    how lm-eval scores it. ``hub`` / ``hub_config`` / the splits are the
    benchmark's own dataset, read as multiple-choice items
    ``{"prompt", "options"}`` (the format of the laptop causal-LM setup) for
    our own scoring and for trained localization; ``rows`` names the reader.
    """

    finetune: str | None
    benchmark: str
    metric: str
    num_fewshot: int
    hub: str
    hub_config: str | None
    rows: Literal["mmlu", "arc", "truthfulqa"]
    train_split: str | None
    val_split: str | None
    test_split: str


#: The three skills of Localize-and-Stitch's GPT2-XL experiment. Benchmarks and few-shot counts follow the Open LLM
#: Leaderboard protocol that these fine-tunes' model cards report (MMLU 5-shot acc, ARC-Challenge 25-shot acc_norm,
#: TruthfulQA 0-shot mc2). The fine-tune ids are *our* picks of public GPT2-XL fine-tunes for each skill, both
#: LoRA fine-tunes merged into full gpt2-xl weights, checked against their hub pages on 2026-11-30:
#: huggingface.co/lgaalves/gpt2-xl_lima (GAIR/lima) and huggingface.co/lgaalves/gpt-2-xl_camel-ai-physics (the
#: repository is spelled "gpt-2-xl", its card says "gpt2-xl"). The paper's exact checkpoints are not named in the
#: material we have, and no public GPT2-XL truthfulness fine-tune is known to us, so ``truthfulness`` has none
#: (pass ``GPT2XLConfig(finetunes={...})`` with the one you use).
GPT2XL_TASKS: dict[str, LLMTask] = {
    "instruction": LLMTask("lgaalves/gpt2-xl_lima", "mmlu", "acc,none", 5, "cais/mmlu", "all", "mmlu",
                           "dev", "validation", "test"),
    "science": LLMTask("lgaalves/gpt-2-xl_camel-ai-physics", "arc_challenge", "acc_norm,none", 25, "allenai/ai2_arc",
                       "ARC-Challenge", "arc", "train", "validation", "test"),
    "truthfulness": LLMTask(None, "truthfulqa_mc2", "acc,none", 0, "truthfulqa/truthful_qa", "multiple_choice",
                            "truthfulqa", None, None, "validation"),
}


def mc_item(kind: str, row: Mapping[str, Any]) -> tuple[dict, int]:
    """``({"prompt", "options"}, answer index)`` of a benchmark row, with lm-eval's prompt and answer format."""
    if kind == "mmlu":
        letters = "ABCD"
        prompt = row["question"].strip() + "".join(f"\n{l}. {c}" for l, c in zip(letters, row["choices"]))
        return {"prompt": prompt + "\nAnswer:", "options": [f" {l}" for l in letters]}, int(row["answer"])
    if kind == "arc":
        ch = row["choices"]
        return ({"prompt": f"Question: {row['question']}\nAnswer:", "options": [f" {t}" for t in ch["text"]]},
                list(ch["label"]).index(row["answerKey"]))
    if kind == "truthfulqa":
        t = row["mc1_targets"]
        return {"prompt": f"Q: {row['question']}\nA:", "options": [f" {c}" for c in t["choices"]]}, list(
            t["labels"]).index(1)
    raise ValueError(f"unknown row kind {kind!r}; use 'mmlu', 'arc' or 'truthfulqa'")


def load_llm_task(name: str, spec: LLMTask, max_train: int, seed: int) -> TaskData:
    """A benchmark as multiple-choice TaskData (train capped at ``max_train``, seeded).

    TruthfulQA has one split of 817 questions: it is cut 50/10/40 into
    train/val/test with ``seed``. lm-eval scores all 817, so a *trained*
    localization on its train half has seen questions lm-eval then scores:
    use dataless localization for this skill, or ``GPT2XLConfig(lm_eval=False)``
    to score only the held-out 40%.
    """
    import datasets

    where = spec.hub + (f" ({spec.hub_config})" if spec.hub_config else "")
    ds = from_hub(lambda: datasets.load_dataset(spec.hub, spec.hub_config), where, f"the {name} benchmark",
                  "causal_lm")

    def read(split_name: str, cap: int | None = None) -> tuple[list, list]:
        dset = ds[split_name]
        pairs = [mc_item(spec.rows, dset[int(i)]) for i in _subsample(len(dset), cap, seed)]
        return [p for p, _ in pairs], [y for _, y in pairs]

    if spec.train_split is None:
        items, labels = read(spec.test_split)
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(items), generator=g)
        n_tr, n_va = len(items) // 2, len(items) // 10
        cut = (perm[:n_tr], perm[n_tr:n_tr + n_va], perm[n_tr + n_va:])
        train, val, test = (Split([items[int(i)] for i in ix], [labels[int(i)] for i in ix]) for ix in cut)
    else:
        train, val, test = (Split(*read(s, max_train if s == spec.train_split else None))
                            for s in (spec.train_split, spec.val_split, spec.test_split))
    width = max(len(it["options"]) for s in (train, val, test) for it in s.inputs)
    return TaskData(name, tuple(str(i) for i in range(width)), train, val, test, source=where)


def run_lm_eval(model: nn.Module, tokenizer, spec: LLMTask, *, batch_size: int = 8, limit: int | float | None = None,
                max_length: int = 1024, seed: int = 0) -> dict:
    """lm-eval's ``simple_evaluate`` of ``spec.benchmark`` on an in-memory model; returns its results dict.

    ``HFLM(pretrained=model, tokenizer=tokenizer)`` wraps the module as it is
    (merged weights included), so nothing is written to disk. Seeds are
    fixed; ``bootstrap_iters=0`` skips the stderr bootstrap. The benchmark
    data comes from the hub: offline, :class:`AssetMissing`.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    return from_hub(lambda: lm_eval.simple_evaluate(
        model=lm, tasks=[spec.benchmark], num_fewshot=spec.num_fewshot, limit=limit, log_samples=False,
        bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
        fewshot_random_seed=seed), spec.hub, f"the data of lm-eval task {spec.benchmark}", "causal_lm")


def lm_eval_accuracies(results: Mapping[str, Any], tasks: Mapping[str, LLMTask]) -> dict[str, float]:
    """``{skill: accuracy}`` from an lm-eval results dict: ``results["results"][benchmark][metric]`` per skill.

    ValueError naming the benchmark or metric that is missing, and the ones
    that are there (a results dict from another task list, or a metric name
    of another lm-eval version).
    """
    if not isinstance(results, Mapping) or not isinstance(results.get("results"), Mapping):
        raise ValueError("results must be lm_eval.simple_evaluate's dict, with a 'results' entry per task")
    out = {}
    for skill, spec in tasks.items():
        table = results["results"].get(spec.benchmark)
        if table is None:
            raise ValueError(f"lm-eval results have no task {spec.benchmark!r} (for {skill!r}); "
                             f"they have {sorted(results['results'])}")
        if spec.metric not in table:
            raise ValueError(f"lm-eval results of {spec.benchmark!r} have no metric {spec.metric!r}; "
                             f"they have {sorted(k for k in table if k != 'alias')}")
        acc = float(table[spec.metric])
        if not 0.0 <= acc <= 1.0:
            raise ValueError(f"{spec.benchmark} {spec.metric} = {acc} is not an accuracy in [0, 1]")
        out[skill] = acc
    return out


@dataclass(frozen=True)
class GPT2XLConfig:
    """Every number of the GPT2-XL setup (all of it enters the cache keys).

    * ``finetunes``: hub id of the public fine-tune per skill
      (:data:`GPT2XL_TASKS`); :meth:`GPT2XL.finetune` downloads it.
    * ``max_train``: items of a benchmark's train split kept for trained
      localization (seeded); ``max_length``: tokens per request.
    * ``lm_eval``: score ``evaluate(body, task)`` (test split) with lm-eval,
      as the paper; False scores our own test split with the same
      log-likelihood rule. ``lm_eval_batch_size`` / ``lm_eval_limit`` pass to lm-eval.
    * ``finetune``: used only where a skill has no public fine-tune and the
      model is trained here (``tiny``).
    """

    model: str = "openai-community/gpt2-xl"
    finetunes: dict[str, str | None] = field(default_factory=lambda: {t: s.finetune for t, s in GPT2XL_TASKS.items()})
    seed: int = 0
    max_train: int = 1000
    max_length: int = 1024
    lm_eval: bool = True
    lm_eval_batch_size: int = 8
    lm_eval_limit: int | float | None = None
    finetune: FinetuneConfig = FinetuneConfig(epochs=1, lr=1e-5, batch_size=4, seed=0)

    def __post_init__(self):
        for f in ("max_train", "max_length", "lm_eval_batch_size"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"GPT2XLConfig.{f} must be a positive int, got {v!r}")
        if not isinstance(self.lm_eval, bool):
            raise TypeError(f"GPT2XLConfig.lm_eval must be True or False, got {self.lm_eval!r}")
        unknown = set(self.finetunes) - set(GPT2XL_TASKS)
        if unknown:
            raise ValueError(f"GPT2XLConfig.finetunes has unknown skill(s) {sorted(unknown)}; "
                             f"skills: {list(GPT2XL_TASKS)}")
        if not isinstance(self.finetune, FinetuneConfig):
            raise TypeError(f"GPT2XLConfig.finetune must be a FinetuneConfig, got {type(self.finetune).__name__}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> GPT2XLConfig:
        return dataclasses.replace(self, **changes)


#: The toy GPT-2 of ``tiny=True``: ``GPT2LMHeadModel`` with 2 blocks of width 64.
TINY_GPT2 = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 256}


class GPT2XL(Setup):
    """GPT2-XL, its public fine-tunes for three skills, and lm-eval scores on MMLU, ARC and TruthfulQA.

    Here a "task" is a skill (``instruction``, ``science``, ``truthfulness``):
    :meth:`finetune` returns the **downloaded** public fine-tune's weights
    (nothing is trained; the hub caches the download), and
    ``evaluate(body, task)`` is the lm-eval accuracy of the skill's benchmark
    (:data:`GPT2XL_TASKS`) for the model holding ``body``. The task data are
    the benchmarks as multiple-choice items, for trained localization and
    for ``evaluate(..., split="train" | "val")``, scored like lm-eval (the
    sum of the option's token log-probabilities; ``acc_norm`` per character)
    with the laptop causal-LM functions.

    The body is the ``GPT2LMHeadModel`` state dict with the tied output
    layer listed once (:func:`~lsedu.zoo.causal_lm.tie_aware`); merges cover
    the transformer blocks (:data:`merge_patterns`).

    ``GPT2XL(device=None, progress=True, *, config=None, tasks=None,
    tiny=False, data=None, tokenizer=None)``: ``tiny=True`` is a random
    2-block GPT-2 (:data:`TINY_GPT2`) with a tokenizer trained on ``data``;
    a random model has no public fine-tunes, so there :meth:`finetune` trains
    on the task's train split with the shared trainer.
    """

    name = "causal_lm"
    track = "paper"
    tasks = tuple(GPT2XL_TASKS)
    merge_patterns: tuple[str, ...] = ("transformer.h.*",)

    def __init__(self, device: str | torch.device | None = None, progress: bool = True, *,
                 config: GPT2XLConfig | None = None, tasks: Sequence[str] | None = None,
                 tiny: bool = False, data: Mapping[str, TaskData] | None = None, tokenizer=None):
        super().__init__(device, progress)
        self.config = _check_config(config, GPT2XLConfig)
        self.tiny = _check_flag(tiny, "tiny")
        self._injected = _check_data(data, GPT2XL_TASKS, "GPT2XL")
        if self.tiny and self._injected is None and tokenizer is None:
            raise ValueError("tiny=True trains its tokenizer on the injected data: pass data={task: TaskData}")
        self.tasks = _pick_tasks(tasks, tuple(GPT2XL_TASKS), self._injected, GPT2XL_TASKS)
        self.finetune_config = self.config.finetune
        self._tokenizer = tokenizer
        self._model_config = None

    # --- model ------------------------------------------------------------------------------

    def identity(self) -> dict:
        return {"model": "tiny random GPT2LMHeadModel" if self.tiny else self.config.model,
                "tiny": TINY_GPT2 if self.tiny else None, "config": self.config.to_dict(),
                "tasks": {t: dataclasses.asdict(GPT2XL_TASKS[t]) for t in self.tasks},
                "data": data_fingerprint(self._injected) if self._injected else "hub",
                "tokenizer": _vocab_hash(self.tokenizer) if self.tiny else self.config.model}

    @property
    def tokenizer(self):
        """gpt2-xl's tokenizer from the hub (pad = eos); with ``tiny``, a BPE tokenizer trained on the data."""
        if self._tokenizer is None:
            if self.tiny:
                texts = [it["prompt"] + "".join(it["options"]) for td in self._injected.values()
                         for w in ("train", "val", "test") for it in td.split(w).inputs]
                self._tokenizer = tiny_bpe_tokenizer(texts, "gpt2")
            else:
                from transformers import AutoTokenizer

                tok = from_hub(lambda: AutoTokenizer.from_pretrained(self.config.model), self.config.model,
                               "its tokenizer", "causal_lm")
                if tok.pad_token is None:
                    tok.pad_token = tok.eos_token
                self._tokenizer = tok
        return self._tokenizer

    @property
    def model_config(self):
        if self._model_config is None:
            from transformers import GPT2Config

            if self.tiny:
                tok = self.tokenizer
                self._model_config = GPT2Config(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                                eos_token_id=tok.eos_token_id, **TINY_GPT2)
            else:
                self._model_config = from_hub(lambda: GPT2Config.from_pretrained(self.config.model),
                                              self.config.model, "its config", "causal_lm")
        return self._model_config

    def build_body(self) -> nn.Module:
        from transformers import GPT2LMHeadModel

        with torch.device(self.device):  # a 1.5B-parameter random init is fast on the GPU, slow on the CPU
            return tie_aware(GPT2LMHeadModel(self.model_config))

    def _load(self, hub_id: str, what: str) -> StateDict:
        from transformers import GPT2LMHeadModel

        model = from_hub(lambda: GPT2LMHeadModel.from_pretrained(hub_id, dtype=torch.float32), hub_id, what,
                         "causal_lm")
        return {n: t.detach().cpu() for n, t in tie_aware(model).state_dict().items()}

    def load_pretrained(self) -> StateDict:
        if self.tiny:
            return {n: t.detach().cpu() for n, t in _seeded(self.build_body, self.config.seed).state_dict().items()}
        return self._load(self.config.model, "the pretrained weights")

    def trainable(self, name: str) -> bool:
        return _matches(name, self.merge_patterns)

    def merge_names(self) -> list[str]:
        """The body tensors a merge combines: every tensor of the transformer blocks."""
        return [n for n in self.pretrained() if self.trainable(n)]

    def finetune_record(self, task: str, cfg: FinetuneConfig | None = None, refresh: bool = False):
        """The public fine-tune of ``task`` from the hub, ``(state_dict, {"source": hub id})``; ``tiny``: trained here.

        The fine-tune must have gpt2-xl's tensors and shapes: one with an
        extended vocabulary (an added pad token) has no task vector against
        the base, and the error names the tensor.
        """
        if self.tiny:
            return super().finetune_record(task, cfg, refresh)
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r} for setup {self.name!r}; its tasks are {list(self.tasks)}")
        hub_id = self.config.finetunes.get(task)
        if hub_id is None:
            raise ValueError(f"no public GPT2-XL fine-tune is configured for {task!r}; pass "
                             f"GPT2XL(config=GPT2XLConfig(finetunes={{{task!r}: '<hub id>', ...}}))")
        sd = self._load(hub_id, f"the {task} fine-tune")
        base = self.pretrained()
        for n, t in base.items():
            if n not in sd or sd[n].shape != t.shape:
                got = "missing" if n not in sd else f"shape {tuple(sd[n].shape)}"
                raise ValueError(f"fine-tune {hub_id} does not match {self.config.model}: tensor {n!r} is {got}, "
                                 f"expected {tuple(t.shape)} (a different vocabulary or architecture)")
        return {n: sd[n] for n in base}, {"source": hub_id, "kind": "public fine-tune (downloaded, not trained)"}

    # --- data -------------------------------------------------------------------------------

    def load_task(self, task: str) -> TaskData:
        if self._injected is not None:
            td = self._injected[task]
            for w in ("train", "val", "test"):
                check_items(td.split(w).inputs, td.split(w).labels, arg=f"data[{task!r}].{w}.inputs")
            return td
        return load_llm_task(task, GPT2XL_TASKS[task], self.config.max_train, self.config.seed)

    def batches(self, task: str, split: Split, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[ChoiceBatch]:
        """Multiple-choice batches: the right options (for the loss) and every option (for scoring)."""
        _check_batch_size(batch_size)
        order = _order(len(split), shuffle, generator)
        for s in range(0, len(split), batch_size):
            idx = order[s:s + batch_size]
            items = [split.inputs[int(i)] for i in idx]
            labels = split.labels[idx]
            answer = encode_choices(self.tokenizer, [it["prompt"] for it in items],
                                    [it["options"][int(y)] for it, y in zip(items, labels)], self.device)
            flat = [(it["prompt"], o) for it in items for o in it["options"]]
            choices = encode_choices(self.tokenizer, [c for c, _ in flat], [o for _, o in flat], self.device)
            yield ChoiceBatch(items, labels, answer, choices, [len(it["options"]) for it in items])

    def loss(self, task: str, forward: Forward, batch: ChoiceBatch) -> torch.Tensor:
        """Causal LM loss of the right option's tokens (what scoring compares)."""
        return answer_loss(forward, batch.answer)

    def predict(self, task: str, forward: Forward, batch: ChoiceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        scores = continuation_logprobs(forward, batch.choices).detach().cpu().split(batch.counts)
        norm = GPT2XL_TASKS[task].metric.startswith("acc_norm")
        return choose(scores, batch.items, norm=norm), batch.labels

    def evaluate(self, body: Mapping[str, torch.Tensor], task: str, split: str = "test", batch_size: int = 8) -> float:
        """Accuracy of ``body`` on ``task``: lm-eval's score of its benchmark (test split, full model), else ours."""
        if split == "test" and self.config.lm_eval and not self.tiny:
            self.task(task)
            spec = GPT2XL_TASKS[task]
            results = run_lm_eval(self.module(body), self.tokenizer, spec, batch_size=self.config.lm_eval_batch_size,
                                  limit=self.config.lm_eval_limit, max_length=self.config.max_length,
                                  seed=self.config.seed)
            return lm_eval_accuracies(results, {task: spec})[task]
        return super().evaluate(body, task, split, batch_size)
