"""What the three paper setups share: the hub (and what to do without it), tiny test models, injected data.

:class:`PaperSetup` holds a setup's config, its ``tiny`` flag (a random
model of the real architecture class, for tests without the hub), injected
task data (``data=``, in place of the hub datasets), the tasks picked from
the setup's task table, and the :meth:`~PaperSetup.identity` in every cache
key. :class:`TransformersLM` adds what RoBERTa and GPT-2 share: a
tokenizer (the hub's, or a byte-level BPE one trained on the injected data)
and a transformers config. The three setups are in
:mod:`~lsedu.zoo.paper.text`, :mod:`~lsedu.zoo.paper.vision` and
:mod:`~lsedu.zoo.paper.causal_lm`.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

import torch

from ...config import Config, boolean, check_arg
from ..assets import AssetMissing
from ..base import Setup, TaskData, matches
from ..cache import StateDict

T = TypeVar("T")

# ----------------------------------------------------------------------------- the hub, and what to do without it


def from_hub(load: Callable[[], T], hub_id: str, what: str, laptop: str,
             errors: tuple[type[BaseException], ...] = (OSError,)) -> T:
    """``load()``, or :class:`AssetMissing` saying that ``hub_id`` needs the hub and naming the laptop setup.

    transformers, datasets and huggingface_hub raise ``OSError`` subclasses
    (``ConnectionError``, ``FileNotFoundError``, "couldn't connect") when a
    file is neither downloadable nor cached; open_clip raises ``RuntimeError``
    (pass it in ``errors``). The message keeps the library's first line.

    Not called in a notebook: the setups of the paper track (``TRACK = "paper"`` in notebooks 06 to 09) use it; see the
    book's page on the two tracks (book/tracks.md).
    """
    try:
        return load()
    except errors as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise AssetMissing(
            f"the paper track needs internet access to download {hub_id} ({what}) from the Hugging Face hub, "
            f"and it is not in the local cache ({type(e).__name__}: {first[:200]}). Run it on a machine with "
            f"internet access (and a GPU), or use the laptop track: lsedu.zoo.load({laptop!r})") from None


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
    """A 16-hex-digit hash of injected task data (classes, labels and inputs of every split), for cache keys.

    Not called in a notebook: the paper setups key their cache with it when given injected data (the tests' tiny
    setups); see the book's page on the two tracks (book/tracks.md).
    """
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

    Not called in a notebook: the tiny language setups of the paper track (the tests) train their tokenizers with it;
    see the book's page on the two tracks (book/tracks.md).
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


def vocab_hash(tokenizer) -> str:
    """A 16-hex-digit hash of a tokenizer's vocabulary (the tiny tokenizers are trained, so it is in the key).

    Not called in a notebook: the tiny language setups of the paper track (the tests) key their cache with it; see the
    book's page on the two tracks (book/tracks.md).
    """
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:16]


def seeded(build: Callable[[], T], seed: int) -> T:
    """``build()`` with torch's global RNG seeded, then restored: a random init that is the same every call.

    Not called in a notebook: the CLIP setup of the paper track (``TRACK = "paper"`` in notebooks 07 and 09) builds its
    model with it; see the book's page on the two tracks (book/tracks.md).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def check_batch_size(batch_size) -> None:
    """ValueError unless ``batch_size`` is a positive int.

    Not called in a notebook: the setups of the paper track (``TRACK = "paper"`` in notebooks 06 to 09) use it; see the
    book's page on the two tracks (book/tracks.md).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def batch_order(n: int, shuffle: bool, generator: torch.Generator | None) -> torch.Tensor:
    """A seeded random order of ``0..n-1`` with ``shuffle``, else ``0..n-1``.

    Not called in a notebook: the setups of the paper track (``TRACK = "paper"`` in notebooks 06 to 09) use it; see the
    book's page on the two tracks (book/tracks.md).
    """
    return torch.randperm(n, generator=generator) if shuffle else torch.arange(n)


def subsample(n: int, cap: int | None, seed: int) -> torch.Tensor:
    """Row indices ``0..n-1``, or a seeded sorted random ``cap`` of them.

    Not called in a notebook: the setups of the paper track (``TRACK = "paper"`` in notebooks 06 to 09) use it; see the
    book's page on the two tracks (book/tracks.md).
    """
    if cap is None or cap >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:cap].sort().values


def hub_labels(dset, column: str) -> torch.Tensor:
    """Column ``column`` of a hub dataset as a long tensor.

    Not called in a notebook: the roberta-base and CLIP setups of the paper track (``TRACK = "paper"`` in notebooks 06,
    07 and 09) use it; see the book's page on the two tracks (book/tracks.md).
    """
    return torch.as_tensor(list(dset[column]), dtype=torch.long)


# ----------------------------------------------------------------------------- the shared base


class PaperSetup(Setup):
    """A paper-track setup: ``config``, ``tiny``, injected ``data``, tasks from :attr:`task_table`, identity.

    ``Subclass(device=None, progress=True, *, config=None, tasks=None,
    tiny=False, data=None)``: ``config`` is a :attr:`config_class` (its
    default if None); ``data`` is ``{task: TaskData}`` replacing the hub
    datasets, and then ``tasks`` defaults to the injected ones. Fine-tuning
    updates, and merges combine, the tensors matching :attr:`merge_patterns`.

    Not called in a notebook: the setups of the paper track (``TRACK = "paper"`` in notebooks 06 to 09) are ones; see
    the book's page on the two tracks (book/tracks.md).
    """

    track = "paper"
    config_class: ClassVar[type[Config]]
    task_table: ClassVar[Mapping[str, Any]]  # task name -> its record (PromptTask, VisionTask, LLMTask)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "task_table" in cls.__dict__:  # the class's tasks are its table's, in the table's order
            cls.tasks = tuple(cls.task_table)
    tiny_model: ClassVar[dict]  # the architecture's arguments at a test size
    tiny_name: ClassVar[str]  # the model's name in the identity of a tiny setup

    def __init__(self, device: str | torch.device | None = None, progress: bool = True, *, config=None,
                 tasks: Sequence[str] | None = None, tiny: bool = False, data: Mapping[str, TaskData] | None = None):
        super().__init__(device, progress)
        self.config = _check_config(config, self.config_class)
        self.tiny = check_arg(tiny, "tiny", boolean())
        self._injected = _check_data(data, self.task_table, type(self).__name__)
        self.tasks = _pick_tasks(tasks, tuple(self.task_table), self._injected, self.task_table)
        self.finetune_config = self.config.finetune
        # Setup.correct remembers scores for the real models and the hub's data, which the identity pins down;
        # injected data and tiny random models (the offline tests) are scored afresh
        self.remember_scores = self._injected is None and not self.tiny

    def model_name(self) -> str:
        """The model in :meth:`identity`: the config's hub id, or :attr:`tiny_name`."""
        return self.tiny_name if self.tiny else self.config.model

    def identity(self) -> dict:
        """The model, the tiny architecture, the config, the tasks' records and the injected data's hash."""
        return {"model": self.model_name(), "tiny": self.tiny_model if self.tiny else None,
                "config": self.config.to_dict(),
                "tasks": {t: dataclasses.asdict(self.task_table[t]) for t in self.tasks},
                "data": data_fingerprint(self._injected) if self._injected else "hub"}

    def trainable(self, name: str) -> bool:
        """Whether ``name`` matches :attr:`merge_patterns`: fine-tunes change exactly the tensors merges combine."""
        return matches(name, self.merge_patterns)

    def load_task(self, task: str) -> TaskData:
        """The injected data of ``task`` (checked by :meth:`check_injected`), else :meth:`load_hub_task`."""
        if self._injected is not None:
            td = self._injected[task]
            self.check_injected(task, td)
            return td
        return self.load_hub_task(task)

    def check_injected(self, task: str, data: TaskData) -> None:
        """A ValueError if injected ``data`` does not fit ``task`` (nothing to check by default)."""

    @abc.abstractmethod
    def load_hub_task(self, task: str) -> TaskData:
        """``task``'s data from the hub (:class:`AssetMissing` offline)."""

    def seeded_body(self) -> StateDict:
        """The state dict of a random :meth:`build_body`, seeded with ``config.seed`` (the tiny pretrained body)."""
        return {n: t.detach().cpu() for n, t in seeded(self.build_body, self.config.seed).state_dict().items()}


class TransformersLM(PaperSetup):
    """A paper setup around a transformers language model: its tokenizer and its config, real or tiny.

    With ``tiny=True`` the tokenizer is a byte-level BPE one
    (:func:`tiny_bpe_tokenizer`, :attr:`tokenizer_kind`) trained on
    :meth:`tiny_corpus`, the injected data (required then, unless a
    ``tokenizer`` is passed), and the config is :attr:`tiny_model` around it.

    Not called in a notebook: the language setups of the paper track (``TRACK = "paper"`` in notebooks 06 to 09) are
    ones; see the book's page on the two tracks (book/tracks.md).
    """

    tokenizer_kind: ClassVar[Literal["roberta", "gpt2"]]
    tiny_special_tokens: ClassVar[tuple[str, ...]]  # the tiny config's <x>_token_id arguments, from the tokenizer

    def __init__(self, device: str | torch.device | None = None, progress: bool = True, *, config=None,
                 tasks: Sequence[str] | None = None, tiny: bool = False, data: Mapping[str, TaskData] | None = None,
                 tokenizer=None):
        super().__init__(device, progress, config=config, tasks=tasks, tiny=tiny, data=data)
        if self.tiny and self._injected is None and tokenizer is None:
            raise ValueError("tiny=True trains its tokenizer on the injected data: pass data={task: TaskData}")
        self._tokenizer = tokenizer
        self._model_config = None

    def identity(self) -> dict:
        return {**super().identity(), "tokenizer": vocab_hash(self.tokenizer) if self.tiny else self.config.model}

    @abc.abstractmethod
    def hf_config_class(self) -> type:
        """The transformers config class (``RobertaConfig``, ``GPT2Config``)."""

    @abc.abstractmethod
    def tiny_corpus(self) -> list[str]:
        """The texts a tiny tokenizer is trained on (from the injected data)."""

    def hub_tokenizer(self):
        """The model's tokenizer from the hub."""
        from transformers import AutoTokenizer

        return from_hub(lambda: AutoTokenizer.from_pretrained(self.config.model), self.config.model,
                        "its tokenizer", self.name)

    @property
    def tokenizer(self):
        """The hub's tokenizer (:meth:`hub_tokenizer`); with ``tiny``, a BPE tokenizer trained on the injected data."""
        if self._tokenizer is None:
            self._tokenizer = (tiny_bpe_tokenizer(self.tiny_corpus(), self.tokenizer_kind) if self.tiny
                               else self.hub_tokenizer())
        return self._tokenizer

    @property
    def model_config(self):
        """The transformers config: from the hub, or :attr:`tiny_model` around the tiny tokenizer."""
        if self._model_config is None:
            cls = self.hf_config_class()
            if self.tiny:
                tok = self.tokenizer
                ids = {f"{k}_token_id": getattr(tok, f"{k}_token_id") for k in self.tiny_special_tokens}
                self._model_config = cls(vocab_size=len(tok), **ids, **self.tiny_model)
            else:
                self._model_config = from_hub(lambda: cls.from_pretrained(self.config.model), self.config.model,
                                              "its config", self.name)
        return self._model_config
