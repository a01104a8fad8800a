"""The paper track's text setup: roberta-base with prompt-based fine-tuning (LM-BFF) on 12 language tasks.

Localize-and-Stitch (He et al. 2025, Sec. 4.1) fine-tunes roberta-base on
the 12 tasks of LM-BFF (Gao et al. 2021, arXiv 2012.15723) with 64 shots
per class. A task is one :class:`PromptTask` row of :data:`LMBFF_TASKS`:
its hub dataset, its template with a ``{mask}`` and its label words
(LM-BFF's ``run_experiment.sh``); the MLM head's logits of the label words
at the mask are the class scores.
"""

from __future__ import annotations

import math
import string
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...config import Config, checked, integer, optional
from ..base import FinetuneConfig, Forward, Split, TaskData, instance_of, register_setup, text
from ..cache import StateDict
from ..lm_scoring import tie_aware
from .base import TransformersLM, batch_order, check_batch_size, from_hub, hub_labels, subsample

def few_shot_indices(labels: Sequence[int] | torch.Tensor, shots: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` row indices: ``shots`` per class each, disjoint, drawn with ``seed`` (LM-BFF's K-shot sets).

    LM-BFF samples its few-shot training set and a development set of the
    same size from the original training data. Labels below 0 (unlabelled
    rows, e.g. SNLI's -1) are never drawn. A class with fewer than
    ``2 * shots`` rows is an error that names it.

    Not called in a notebook: the roberta-base setup of the paper track (``TRACK = "paper"`` in notebook 06) uses it;
    see the book's page on the two tracks (book/tracks.md).
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


# ----------------------------------------------------------------------------- the 12 tasks


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

    Not called in a notebook: the roberta-base setup of the paper track (``TRACK = "paper"`` in notebook 06) uses it;
    see the book's page on the two tracks (book/tracks.md).
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

    Not called in a notebook: the roberta-base setup of the paper track (``TRACK = "paper"`` in notebook 06) uses it;
    see the book's page on the two tracks (book/tracks.md).
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

    Not called in a notebook: the roberta-base setup of the paper track (``TRACK = "paper"`` in notebook 06) uses it;
    see the book's page on the two tracks (book/tracks.md).
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
    """The token id of ``" " + word`` for each label word; ValueError if a word is not one token (LM-BFF's rule).

    Not called in a notebook: the roberta-base setup of the paper track (``TRACK = "paper"`` in notebook 06) uses it;
    see the book's page on the two tracks (book/tracks.md).
    """
    out = []
    for w in words:
        ids = tokenizer.encode(" " + w, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"label word {w!r} is {len(ids)} tokens ({tokenizer.convert_ids_to_tokens(ids)}) for "
                             f"this tokenizer; prompt-based fine-tuning scores one vocabulary entry per class")
        out.append(ids[0])
    return out


def load_prompt_task(name: str, spec: PromptTask, shots: int, seed: int, max_test: int | None) -> TaskData:
    """An LM-BFF task from the hub: ``shots`` per class for train and for val (disjoint, seeded), and the test set.

    Not called in a notebook: the roberta-base setup of the paper track (``TRACK = "paper"`` in notebook 06) uses it;
    see the book's page on the two tracks (book/tracks.md).
    """
    import datasets

    where = f"{spec.hub}" + (f" ({spec.hub_config})" if spec.hub_config else "")
    ds = from_hub(lambda: datasets.load_dataset(spec.hub, spec.hub_config), where, f"the {name} data", "text")
    train, test = ds[spec.train_split], ds[spec.test_split]
    classes = _label_names(train, spec.label_column, spec.name_column, spec.class_names, f"{name} ({where})")
    spec.words(classes)  # every class has a label word

    def split(dset, idx: torch.Tensor) -> Split:
        rows = dset.select(idx.tolist())
        inputs = list(zip(*(rows[c] for c in spec.text_columns)))
        return Split(inputs, hub_labels(rows, spec.label_column))

    tr, va = few_shot_indices(hub_labels(train, spec.label_column), shots, seed)
    test_labels = hub_labels(test, spec.label_column)
    labelled = torch.nonzero(test_labels >= 0).flatten()
    te = labelled[subsample(len(labelled), max_test, seed)]
    return TaskData(name, classes, split(train, tr), split(train, va), split(test, te), source=where)


@dataclass(frozen=True)
class RobertaLMBFFConfig(Config):
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

    Not called in a notebook: the roberta-base setup (``TRACK = "paper"`` in notebook 06) is configured with it; see the
    book's page on the two tracks (book/tracks.md).
    """

    model: str = checked("FacebookAI/roberta-base", text())
    shots: int = checked(64, integer(low=1))
    seed: int = checked(13, integer(low=0))
    max_test: int | None = checked(None, optional(integer(low=1)))
    steps: int = checked(1000, integer(low=1))
    finetune: FinetuneConfig = checked(FinetuneConfig(epochs=1, lr=1e-5, batch_size=8, seed=13),
                                       instance_of(FinetuneConfig))


#: The toy RoBERTa of ``tiny=True``: the real class at a test size.
TINY_ROBERTA = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                "max_position_embeddings": 260}


@register_setup
class RobertaLMBFF(TransformersLM):
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

    Explained in notebook 06 (06_case_language.ipynb) with ``TRACK = "paper"``; the paper track is described on the page
    Two tracks (book/tracks.md).
    """

    name = "text"
    merge_patterns: tuple[str, ...] = ("roberta.encoder.layer.*",)
    config_class = RobertaLMBFFConfig
    task_table = LMBFF_TASKS
    tiny_model = TINY_ROBERTA
    tiny_name = "tiny random RobertaForMaskedLM"
    tokenizer_kind = "roberta"
    tiny_special_tokens = ("pad", "bos", "eos")

    def __init__(self, device: str | torch.device | None = None, progress: bool = True, *,
                 config: RobertaLMBFFConfig | None = None, tasks: Sequence[str] | None = None,
                 tiny: bool = False, data: Mapping[str, TaskData] | None = None, tokenizer=None):
        super().__init__(device, progress, config=config, tasks=tasks, tiny=tiny, data=data, tokenizer=tokenizer)
        self._label_ids: dict[str, list[int]] = {}

    # --- model ------------------------------------------------------------------------------

    def hf_config_class(self) -> type:
        from transformers import RobertaConfig

        return RobertaConfig

    def tiny_corpus(self) -> list[str]:
        """The injected texts, the templates and (many times) the label words, so each becomes one token."""
        texts = []
        for t, td in self._injected.items():
            spec = LMBFF_TASKS[t]
            for which in ("train", "val", "test"):
                texts += [" ".join(x) if not isinstance(x, str) else x for x in td.split(which).inputs]
            texts += [spec.template.replace("{", " ").replace("}", " ")]
            texts += [" " + w for _, w in spec.label_words] * 50  # label words become single tokens
        return texts

    def build_body(self) -> nn.Module:
        from transformers import RobertaForMaskedLM

        return tie_aware(RobertaForMaskedLM(self.model_config))

    def load_pretrained(self) -> StateDict:
        """roberta-base's weights with its MLM head (hub); with ``tiny``, a random init seeded with ``config.seed``."""
        from transformers import RobertaForMaskedLM

        if self.tiny:
            return self.seeded_body()
        model = tie_aware(from_hub(lambda: RobertaForMaskedLM.from_pretrained(self.config.model),
                                   self.config.model, "the pretrained weights", "text"))
        return {n: t.detach().cpu() for n, t in model.state_dict().items()}

    # --- data -------------------------------------------------------------------------------

    def check_injected(self, task: str, data: TaskData) -> None:
        """Every class of the injected ``data`` has a label word."""
        LMBFF_TASKS[task].words(data.classes)

    def load_hub_task(self, task: str) -> TaskData:
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
        check_batch_size(batch_size)
        spec, tok = LMBFF_TASKS[task], self.tokenizer
        order = batch_order(len(split), shuffle, generator)
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


