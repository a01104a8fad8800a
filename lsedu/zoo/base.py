"""The shape every setup of the zoo shares: tasks, a pretrained body, fine-tuning, evaluation.

A *setup* is one pretrained model with its tasks: MiniLM on text tasks,
EfficientNet-Lite0 on image tasks, SmolLM2 on skills (the laptop track), or
roberta-base, CLIP ViT-B/32 and GPT2-XL (the paper track). The *body* is the
part that is fine-tuned and merged, as a state dict; task vectors live in its
space. What else a task needs (a classification head, a prompt) belongs to
the setup and is never merged, as in the papers: Localize-and-Stitch masks the
encoder, and CLIP's heads stay frozen.

A subclass gives the model, the data and two functions of a batch (its loss,
and its predictions); this module does the rest the same way for every setup:
seeded fine-tuning with a progress bar, cached on disk (:mod:`lsedu.zoo.cache`)
under :meth:`Setup.cache_key`, accuracy of any body on any task (or on a
split's first ``limit`` examples), the tensors a merge combines
(:meth:`Setup.merge_names`), the multi-task baseline, a loss for
:func:`lsedu.localize_trained`, and result tables as pandas DataFrames.
:func:`register_setup` lists a setup in :data:`SETUPS`, which
:func:`lsedu.zoo.load` reads. The zoo's configs are :class:`lsedu.config.Config`
dataclasses; the checks they add to :mod:`lsedu.config` are here
(:func:`instance_of`, :func:`distinct`, :func:`mapping_of`, :func:`rows`, :func:`text`).
"""

from __future__ import annotations

import abc
import dataclasses
import fnmatch
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import Check, Config, check_arg, checked, integer, number, optional
from ..utils import get_device
from .cache import StateDict, body_digest, cached, load_record, partial_path, save_atomic, save_record

# ----------------------------------------------------------------------------- data


@dataclass
class Split:
    """Inputs and integer labels of one split. ``inputs`` is a list (texts, items) or a tensor (images).

    Not called in a notebook: every setup's tasks (notebooks 01 to 09) hold their splits in it; see notebook 01
    (01_weights_as_vectors.ipynb).
    """

    inputs: Any
    labels: torch.Tensor

    def __post_init__(self):
        if not isinstance(self.labels, torch.Tensor):
            self.labels = torch.as_tensor(self.labels, dtype=torch.long)
        if len(self.inputs) != len(self.labels):
            raise ValueError(f"split has {len(self.inputs)} inputs but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int] | torch.Tensor) -> Split:
        idx = torch.as_tensor(index, dtype=torch.long)
        if isinstance(self.inputs, torch.Tensor):
            inputs = self.inputs[idx]
        else:
            inputs = [self.inputs[int(i)] for i in idx]
        return Split(inputs, self.labels[idx])

    def per_class(self, n: int, seed: int) -> Split:
        """``n`` examples of each class (all of a class that has fewer), drawn with ``seed``, in class order."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n (examples per class) must be a positive int, got {n!r}")
        g = torch.Generator().manual_seed(seed)
        picks = []
        for c in torch.unique(self.labels):
            where = torch.nonzero(self.labels == c).flatten()
            picks.append(where[torch.randperm(len(where), generator=g)[:n]])
        return self.subset(torch.cat(picks))


@dataclass
class TaskData:
    """A labelled task with fixed train / validation / test splits.

    Not called in a notebook: every setup's tasks (notebooks 01 to 09) are given as one; see notebook 01
    (01_weights_as_vectors.ipynb).
    """

    name: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    source: str = ""

    def split(self, which: str) -> Split:
        if which not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {which!r}")
        return getattr(self, which)


def split_fixed(inputs: Any, labels: Sequence[int] | torch.Tensor, *, val: float | int, test: float | int,
                seed: int) -> tuple[Split, Split, Split]:
    """Shuffle once with ``seed`` (stratified by label) and cut into train / val / test.

    ``val`` and ``test`` are fractions (< 1) or counts per class (>= 1).
    Stratified, so each split keeps the class balance of the data.

    Not called in a notebook: the laptop setups cut their tasks into fixed splits with it; see notebook 01
    (01_weights_as_vectors.ipynb).
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}
    for c in torch.unique(labels):
        where = torch.nonzero(labels == c).flatten()
        where = where[torch.randperm(len(where), generator=g)]
        n_val = int(val) if val >= 1 else round(val * len(where))
        n_test = int(test) if test >= 1 else round(test * len(where))
        if n_val + n_test >= len(where):
            raise ValueError(f"class {int(c)} has {len(where)} examples, too few for {n_val} val + {n_test} test")
        parts["test"].append(where[:n_test])
        parts["val"].append(where[n_test:n_test + n_val])
        parts["train"].append(where[n_test + n_val:])
    whole = Split(inputs, labels)
    out = []
    for k in ("train", "val", "test"):
        idx = torch.cat(parts[k])
        out.append(whole.subset(idx[torch.randperm(len(idx), generator=g)]))
    return out[0], out[1], out[2]


# ----------------------------------------------------------------------------- fine-tuning config


def instance_of(cls: type) -> Check:
    """An instance of ``cls`` (a nested config); anything else is a TypeError.

    Not called in a notebook: the setups' configs check their fields with it; see the book's page on the two tracks
    (book/tracks.md).
    """
    return Check(f"a {cls.__name__}", lambda v: isinstance(v, cls), error=TypeError)


def distinct(known: Sequence | None = None, *, item: Check | None = None, at_least: int = 1) -> Check:
    """A tuple (or any sequence but a string) of at least ``at_least`` distinct values, each one of ``known``
    (or accepted by ``item``); stored as a tuple.

    Not called in a notebook: the setups' configs check their fields with it; see the book's page on the two tracks
    (book/tracks.md).
    """
    def accept(v) -> bool:
        if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(set(v)) != len(v) or len(v) < at_least:
            return False
        return all((known is None or x in known) and (item is None or item.accept(x)) for x in v)

    what = f"a tuple of at least {at_least} distinct " + (f"names from {sorted(known)}" if known is not None
                                                          else f"values, each {item.what}" if item else "values")
    return Check(what, accept, tuple)


def mapping_of(value: Check, keys: Sequence[str] | None = None) -> Check:
    """A dict whose keys are from ``keys`` (any key if None) and whose values ``value`` accepts; stored as a dict.

    Not called in a notebook: the paper setups' configs check their fields with it; see the book's page on the two
    tracks (book/tracks.md).
    """
    def accept(v) -> bool:
        return isinstance(v, Mapping) and all((keys is None or k in keys) and value.accept(x) for k, x in v.items())

    what = "a dict" + (f" with keys from {list(keys)}" if keys is not None else "") + f", each value {value.what}"
    return Check(what, accept, dict)


def rows(*columns: Check, at_least: int = 0) -> Check:
    """A sequence of at least ``at_least`` rows, each a tuple whose i-th entry ``columns[i]`` accepts;
    stored as a tuple of tuples (``(("mnist", 150, 50, 100), ...)``).

    Not called in a notebook: the setups' configs check their fields with it; see the book's page on the two tracks
    (book/tracks.md).
    """
    def accept(v) -> bool:
        return isinstance(v, Sequence) and not isinstance(v, str) and len(v) >= at_least and all(
            isinstance(r, Sequence) and not isinstance(r, str) and len(r) == len(columns)
            and all(c.accept(x) for c, x in zip(columns, r)) for r in v)

    row = "(" + ", ".join(c.what for c in columns) + ")"
    return Check(f"at least {at_least} rows {row}" if at_least else f"rows {row}", accept,
                 lambda v: tuple(tuple(r) for r in v))


def text() -> Check:
    """A string.

    Not called in a notebook: the setups' configs check their fields with it; see the book's page on the two tracks
    (book/tracks.md).
    """
    return Check("a string", lambda v: isinstance(v, str), error=TypeError)


@dataclass(frozen=True)
class FinetuneConfig(Config):
    """Hyperparameters of one fine-tune. Every field goes into the cache key.

    Not called in a notebook: every setup's fine-tunes (notebooks 01 to 09) are configured with it; see notebook 02
    (02_model_soups.ipynb).
    """

    epochs: int = checked(5, integer(low=1))
    lr: float = checked(1e-4, number(low=0, low_open=True))
    batch_size: int = checked(16, integer(low=1))
    seed: int = checked(0, integer(low=0))
    weight_decay: float = checked(0.0, number(low=0))
    # fraction of the steps with a linear warm-up of the learning rate
    warmup: float = checked(0.0, number(low=0, high=1, high_open=True))


# ----------------------------------------------------------------------------- setups

Forward = Callable[..., Any]

#: Every setup of the zoo by ``(name, track)``: filled by :func:`register_setup` as the setup modules are imported.
SETUPS: dict[tuple[str, str], type[Setup]] = {}


def register_setup(cls: type[Setup]) -> type[Setup]:
    """Class decorator: list the setup ``cls`` in :data:`SETUPS` under ``(cls.name, cls.track)``.

    Not called in a notebook: every setup of both tracks registers itself with it; see the book's page on the two tracks
    (book/tracks.md).
    """
    key = (cls.name, cls.track)
    if SETUPS.get(key, cls) is not cls:
        raise ValueError(f"setup {key} is already registered as {SETUPS[key].__qualname__}")
    SETUPS[key] = cls
    return cls


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Whether tensor ``name`` matches one of the fnmatch ``patterns`` (case-sensitive).

    Not called in a notebook: ``Setup.merge_names`` (the tensors that casestudy merges in notebooks 06 to 09) uses it;
    see the book's page on the two tracks (book/tracks.md).
    """
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


class Setup(abc.ABC):
    """One pretrained model and its tasks. Subclasses fill in the abstract methods.

    Attributes every subclass sets: ``name`` (e.g. ``"text"``), ``track``
    (``"laptop"`` or ``"paper"``), ``tasks`` (task names), ``finetune_config``
    (the default :class:`FinetuneConfig`). ``merge_patterns`` (optional)
    names the tensors a merge combines (:meth:`merge_names`).

    Not called in a notebook: ``lsedu.zoo.load`` returns one of its subclasses (notebooks 01 to 09); see notebook 01
    (01_weights_as_vectors.ipynb).
    """

    name: str = "setup"
    track: str = "laptop"
    tasks: tuple[str, ...] = ()
    finetune_config: FinetuneConfig = FinetuneConfig()
    merge_patterns: tuple[str, ...] | None = None
    #: Whether :meth:`correct` remembers what it computed, on disk next to the fine-tunes (``$LSEDU_CACHE``, kind
    #: ``scores``), keyed by :func:`~lsedu.zoo.cache.body_digest` of the weights, the setup's identity, the task,
    #: the split, the limit, the batch size and the lsedu version: then no notebook evaluates the same model on the
    #: same examples twice, and a rebuilt book reads its evaluations back. The zoo's setups turn it on; a subclass
    #: whose predictions depend on more than its identity and its weights leaves it off.
    remember_scores: bool = False

    def __init__(self, device: str | torch.device | None = None, progress: bool = True):
        self.device = get_device(device)
        self.progress = progress
        self._data: dict[str, TaskData] = {}
        self._module: nn.Module | None = None
        self._merge_names: list[str] | None = None

    # --- what a subclass provides -------------------------------------------------

    @abc.abstractmethod
    def identity(self) -> dict:
        """JSON facts that pin down the model and the data (asset hashes, sizes, seeds): part of every cache key."""

    @abc.abstractmethod
    def build_body(self) -> nn.Module:
        """A fresh module holding the body's architecture (its weights are replaced before use)."""

    @abc.abstractmethod
    def load_pretrained(self) -> StateDict:
        """The pretrained body's state dict, read from its asset or the hub."""

    @abc.abstractmethod
    def load_task(self, task: str) -> TaskData:
        """The task's data with its fixed splits."""

    @abc.abstractmethod
    def batches(self, task: str, split: Split, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[Any]:
        """Batches of ``split`` ready for :meth:`loss` and :meth:`predict` (tokenized, on ``self.device``)."""

    @abc.abstractmethod
    def loss(self, task: str, forward: Forward, batch: Any) -> torch.Tensor:
        """The training loss of ``batch``, where ``forward`` runs the body."""

    @abc.abstractmethod
    def predict(self, task: str, forward: Forward, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(predicted labels, true labels)`` of ``batch``."""

    def train_split(self, task: str) -> Split:
        """The examples a fine-tune of ``task`` trains on (few-shot setups override this)."""
        return self.task(task).train

    def trainable(self, name: str) -> bool:
        """Whether fine-tuning updates body parameter ``name`` (e.g. not a frozen embedding)."""
        return True

    def finetune_config_for(self, task: str) -> FinetuneConfig:
        """The default fine-tuning config of ``task`` (setups whose recipe differs per task override this)."""
        return self.finetune_config

    # --- shared machinery -------------------------------------------------------------

    def task(self, task: str) -> TaskData:
        """:meth:`load_task`, loaded once per setup object."""
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r} for setup {self.name!r}; its tasks are {list(self.tasks)}")
        if task not in self._data:
            self._data[task] = self.load_task(task)
        return self._data[task]

    def pretrained(self) -> StateDict:
        """The pretrained body (a new dict each call; the tensors are shared, never modified)."""
        if not hasattr(self, "_pretrained"):
            self._pretrained = {n: t.detach().cpu() for n, t in self.load_pretrained().items()}
        return dict(self._pretrained)

    def module(self, body: Mapping[str, torch.Tensor]) -> nn.Module:
        """The body's module with the weights ``body`` loaded, on ``self.device``, in eval mode.

        One module is reused across calls: do not keep it between calls.
        """
        body = self._whole(body)
        self._module.load_state_dict(dict(body), strict=True)
        return self._module.eval()

    def _whole(self, body: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """``body`` with the tensors it lacks taken from the pretrained weights; ValueError on a foreign tensor."""
        if self._module is None:
            self._module = self.build_body().to(self.device)
        missing = set(self._module.state_dict()) - set(body)
        unknown = set(body) - set(self._module.state_dict())
        if unknown:
            raise ValueError(f"body has tensor(s) the {self.name} model does not: {sorted(unknown)[:5]}")
        if missing:
            # A body may cover only part of the model: the rest is the pretrained weights.
            body = {**{n: t for n, t in self.pretrained().items() if n in missing}, **body}
        return body

    def merge_names(self) -> list[str]:
        """The body tensors a merge combines, in the pretrained state dict's order (worked out once).

        With :attr:`merge_patterns` (the paper setups), the tensors whose
        names match one of them. Otherwise every floating-point *parameter*
        that fine-tuning updates (:meth:`trainable`): buffers such as
        batch-norm statistics are not weights and are left out. Task vectors,
        masks and storage cover these tensors only.
        """
        if getattr(self, "_merge_names", None) is None:
            pre = self.pretrained()
            if self.merge_patterns is not None:
                self._merge_names = [n for n in pre if matches(n, self.merge_patterns)]
            else:
                params = {n for n, _ in self.module(pre).named_parameters()}
                self._merge_names = [n for n, t in pre.items()
                                     if n in params and t.is_floating_point() and self.trainable(n)]
        return list(self._merge_names)

    def cache_key(self, kind: str, **extra) -> dict:
        """The JSON dict that names a cached result of this setup: setup, track, :meth:`identity`, ``kind``, ``extra``.

        :func:`~lsedu.zoo.cached` hashes it, so equal dicts find the same
        entry: ``cache_key("finetune", task=t, finetune=cfg.to_dict())`` is
        the key of a fine-tune.
        """
        return {"setup": self.name, "track": self.track, "identity": self.identity(), "kind": kind, **extra}

    @torch.no_grad()
    def evaluate(self, body: Mapping[str, torch.Tensor], task: str, split: str = "test",
                 batch_size: int = 64, limit: int | None = None) -> float:
        """Accuracy of the body ``body`` on ``task``'s ``split`` (its first ``limit`` examples if ``limit`` is set;
        a ``limit`` of the split's length or more is the whole split)."""
        right = self.correct(body, task, split, batch_size, limit)
        return int(right.sum()) / len(right)

    @torch.no_grad()
    def correct(self, body: Mapping[str, torch.Tensor], task: str, split: str = "test",
                batch_size: int = 64, limit: int | None = None) -> torch.Tensor:
        """``[examples]`` bool: whether ``body`` predicts each example of the split right (as :meth:`evaluate`).

        In the split's stored order, whatever order the batches ran in, so two
        bodies' vectors pair example by example (``lsedu.stats.paired_bootstrap``).
        With :attr:`remember_scores`, a body already scored on these examples
        is not run again: its vector is read back.
        """
        return self._correct(body, task, split, batch_size, limit)

    @torch.no_grad()
    def _correct(self, body, task, split, batch_size, limit, digest: str | None = None) -> torch.Tensor:
        """:meth:`correct`; ``digest``: :func:`~lsedu.zoo.cache.body_digest` of the whole body, if known."""
        data = self.task(task).split(split)
        check_arg(limit, "limit", optional(integer(low=1)))
        if limit is not None and limit < len(data):
            data = data.subset(range(limit))
        else:
            limit = None  # the whole split
        key = None
        if self.remember_scores:
            from .. import __version__

            digest = digest or body_digest(self._whole(body))
            key = self.cache_key("scores", task=task, split=split, limit=limit, batch_size=batch_size,
                                 device=self.device.type, body=digest, lsedu=__version__)
            hit = load_record("scores", key)
            if hit is not None and len(hit["correct"]) == len(data):
                return torch.tensor([c == "1" for c in hit["correct"]], dtype=torch.bool)
        right = self._run_correct(body, task, data, batch_size)
        if key is not None:
            save_record("scores", key, {"correct": "".join("1" if x else "0" for x in right.tolist())})
        return right

    def _run_correct(self, body, task: str, data: Split, batch_size: int) -> torch.Tensor:
        order = self.eval_order(task, data)
        if order is not None:  # accuracy counts the same examples in any order
            data = data.subset(order.tolist())
        model = self.module(body)
        right = []
        for batch in self.batches(task, data, batch_size):
            pred, true = self.predict(task, model, batch)
            right.append(pred.cpu() == true.cpu())
        right = torch.cat(right)
        if order is None:
            return right
        stored = torch.empty_like(right)
        stored[order] = right
        return stored

    def eval_order(self, task: str, split: Split) -> torch.Tensor | None:
        """The order :meth:`evaluate` batches ``split``'s examples in, or None for the stored order.

        Accuracy does not depend on it. Setups whose inputs vary in length
        (text, causal LMs) return the longest first, so that a batch pads its
        examples to about their own length, not to the split's longest.
        """
        return None

    @torch.no_grad()
    def evaluate_loss(self, body: Mapping[str, torch.Tensor], task: str, split: str = "test",
                      batch_size: int = 64) -> float:
        """Mean training loss (:meth:`loss`, e.g. cross-entropy) of the body ``body`` over ``task``'s ``split``.

        The mean is over examples: the split is cut into chunks of
        ``batch_size`` examples in its fixed order, and each chunk's mean loss
        counts as many times as it has examples. Accuracy only says whether
        the top guess is right; the loss also says how sure the model is,
        so it shows a model getting worse before its accuracy drops
        (notebook 01 plots both along a line in weight space).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        data = self.task(task).split(split)
        model = self.module(body)
        total = 0.0
        for start in range(0, len(data), batch_size):
            chunk = data.subset(range(start, min(start + batch_size, len(data))))
            losses = [float(self.loss(task, model, batch)) for batch in self.batches(task, chunk, batch_size)]
            total += len(chunk) * sum(losses) / len(losses)
        return total / len(data)

    def evaluate_all(self, body: Mapping[str, torch.Tensor], tasks: Sequence[str] | None = None,
                     split: str = "test", batch_size: int = 64, limit: int | None = None) -> dict[str, float]:
        """``{task: accuracy}`` of ``body`` on every task (or ``tasks``), as :meth:`evaluate` with ``limit``."""
        if type(self).evaluate is not Setup.evaluate:  # a subclass scores its own way
            return {t: self.evaluate(body, t, split, batch_size, limit=limit) for t in (tasks or self.tasks)}
        return {t: int(right.sum()) / len(right)
                for t, right in self.correct_all(body, tasks, split, batch_size, limit).items()}

    def correct_all(self, body: Mapping[str, torch.Tensor], tasks: Sequence[str] | None = None,
                    split: str = "test", batch_size: int = 64, limit: int | None = None) -> dict[str, torch.Tensor]:
        """``{task: [examples] bool}`` of ``body`` on every task (or ``tasks``), as :meth:`correct` with ``limit``."""
        tasks = tasks or self.tasks
        if type(self).correct is not Setup.correct:  # a subclass scores its own way
            return {t: self.correct(body, t, split, batch_size, limit=limit) for t in tasks}
        for t in tasks:
            self.task(t)  # an unknown task fails before the body is hashed
        digest = body_digest(self._whole(body)) if self.remember_scores else None
        return {t: self._correct(body, t, split, batch_size, limit, digest) for t in tasks}

    #: Training saves its progress (:func:`~lsedu.zoo.cache.partial_path`) at most this often, in seconds: an
    #: interruption loses at most this much work, and the weights with their Adam state (three copies of the
    #: trained weights) are written seldom, not at every step.
    CHECKPOINT_SECONDS = 300.0

    def _train(self, body: StateDict, steps: Sequence[tuple[str, Any]], cfg: FinetuneConfig, desc: str,
               resume: Path | None = None) -> StateDict:
        """Train ``body`` on ``steps``; with ``resume``, save progress there every CHECKPOINT_SECONDS and start from
        what an interrupted run saved. A resumed run gives the same weights, bit for bit, as one never stopped:
        the steps are fixed in advance, and weights, optimizer, scheduler and random state are all restored."""
        model = self.build_body().to(self.device)
        model.load_state_dict(body, strict=True)
        model.train()
        params = []
        for n, p in model.named_parameters():
            p.requires_grad_(self.trainable(n))
            if p.requires_grad:
                params.append(p)
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warm = max(1, round(cfg.warmup * len(steps)))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warm))
        done = 0
        if resume is not None and resume.exists():
            state = torch.load(resume, weights_only=True)
            if state.get("steps") == len(steps):  # else a stale file of another step plan: start afresh
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["opt"])
                sched.load_state_dict(state["sched"])
                torch.set_rng_state(state["rng"])
                if "cuda_rng" in state and torch.cuda.is_available():
                    torch.cuda.set_rng_state_all(state["cuda_rng"])
                done = int(state["done"])
        bar = tqdm(steps, desc=desc, disable=not self.progress, leave=False, initial=done, total=len(steps))
        saved = time.monotonic()
        for i, (task, batch) in enumerate(steps[done:], start=done):
            loss = self.loss(task, model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            if resume is not None and i + 1 < len(steps) and time.monotonic() - saved >= self.CHECKPOINT_SECONDS:
                state = {"steps": len(steps), "done": i + 1, "model": model.state_dict(), "opt": opt.state_dict(),
                         "sched": sched.state_dict(), "rng": torch.get_rng_state()}
                if torch.cuda.is_available():
                    state["cuda_rng"] = torch.cuda.get_rng_state_all()
                save_atomic(state, resume)
                saved = time.monotonic()
        bar.close()
        # contiguous: a model may keep its weights in another layout (channels-last), which safetensors cannot store
        return {n: t.detach().cpu().clone(memory_format=torch.contiguous_format) for n, t in model.state_dict().items()}

    def _resumable(self, key: dict, train: Callable[[Path], tuple[StateDict, dict]]) -> Callable[[], tuple]:
        """A build for :func:`~lsedu.zoo.cache.cached` that trains with progress kept at ``partial_path``, and
        removes that file once the entry is built."""
        path = partial_path(self.name, key)

        def build():
            out = train(path)
            path.unlink(missing_ok=True)
            return out

        return build

    def _steps(self, tasks: Sequence[str], cfg: FinetuneConfig) -> list[tuple[str, Any]]:
        """The seeded sequence of ``(task, batch)`` for ``cfg.epochs`` epochs, tasks interleaved in turn."""
        g = torch.Generator().manual_seed(cfg.seed)
        steps: list[tuple[str, Any]] = []
        for _ in range(cfg.epochs):
            per_task = [[(t, b) for b in self.batches(t, self.train_split(t), cfg.batch_size, shuffle=True,
                                                     generator=g)] for t in tasks]
            longest = max(len(x) for x in per_task)
            for i in range(longest):  # round robin: the multi-task model sees every task at every stage
                steps += [x[i] for x in per_task if i < len(x)]
        return steps

    def finetune(self, task: str, cfg: FinetuneConfig | None = None, refresh: bool = False) -> StateDict:
        """Fine-tune the pretrained body on ``task`` (cached). Returns the fine-tuned body."""
        return self.finetune_record(task, cfg, refresh)[0]

    def finetune_record(self, task: str, cfg: FinetuneConfig | None = None,
                        refresh: bool = False) -> tuple[StateDict, dict]:
        """:meth:`finetune`, and its cache record (config, validation accuracy, seconds)."""
        self.task(task)  # an unknown task fails here, before any work
        cfg = cfg or self.finetune_config_for(task)

        def train(resume):
            start = time.perf_counter()
            body = self._train(self.pretrained(), self._steps([task], cfg), cfg, f"{self.name}: fine-tune {task}",
                               resume)
            return body, {"val_accuracy": self.evaluate(body, task, "val"), "train_seconds": time.perf_counter() - start}

        key = self.cache_key("finetune", task=task, finetune=cfg.to_dict())
        return cached(self.name, key, self._resumable(key, train), refresh)

    def soup_configs(self, n: int = 6, cfg: FinetuneConfig | None = None) -> list[FinetuneConfig]:
        """``n`` fine-tuning configs for one task's soup: a hyperparameter sweep, as in the model-soups paper.

        Learning rates of 0.5x, 1x and 2x the default, crossed with seeds 0,
        1, ... in that order, so the first ``n`` are reproducible and the
        default config is one of them. (The paper sweeps learning rate, weight
        decay, epochs, augmentation and seed; two axes keep it cheap on a CPU.)
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n (how many fine-tunes) must be a positive int, got {n!r}")
        cfg = cfg or self.finetune_config
        out = []
        seed = cfg.seed
        while len(out) < n:
            out += [cfg.replace(lr=cfg.lr * f, seed=seed) for f in (1.0, 0.5, 2.0)]
            seed += 1
        return out[:n]

    def multitask(self, cfg: FinetuneConfig | None = None, tasks: Sequence[str] | None = None,
                  refresh: bool = False) -> StateDict:
        """The multi-task baseline: one body trained on every task's data at once, batches in turn (cached)."""
        cfg = cfg or self.finetune_config
        tasks = list(tasks or self.tasks)
        for t in tasks:
            self.task(t)

        def train(resume):
            body = self._train(self.pretrained(), self._steps(tasks, cfg), cfg, f"{self.name}: multi-task", resume)
            return body, {"val_accuracy": self.evaluate_all(body, tasks, "val")}

        key = self.cache_key("multitask", tasks=tasks, finetune=cfg.to_dict())
        return cached(self.name, key, self._resumable(key, train), refresh)[0]

    def localize(self, task: str, *, density: float = 0.01, l1: float = 1e-5, lr: float = 0.1,
                 sigmoid_bias: float = 3.0, passes: int = 4, batch_size: int = 32, seed: int = 0,
                 choose: str = "best", cfg: FinetuneConfig | None = None,
                 refresh: bool = False) -> tuple[dict[str, torch.Tensor], list[dict]]:
        """Trained localization of ``task``'s fine-tune, the paper's recipe, cached like a fine-tune.

        :func:`lsedu.localize_trained` on the task vector of :meth:`finetune`
        (``cfg``) over :meth:`merge_names`: logits at ``+-sigmoid_bias`` from
        the dataless top-``density``, the ``l1`` term on, one Adam step per
        training batch of ``batch_size`` (drawn in the order of ``seed``), for
        ``passes`` passes over the training split, the final mask
        round(sigmoid(S)); after every pass the mask is scored on the task's
        validation split, and ``choose="best"`` keeps the best pass's mask.
        Returns ``(mask, log)``, the log one dict per pass (steps, task loss,
        density, validation accuracy, chosen). The result is cached under the
        setup, the task, the fine-tune config and every argument above, so a
        second call (a rebuilt page, another chapter) reads it back.

        Explained in notebook 05 (05_localize_and_stitch.ipynb).
        """
        from ..localize_stitch import localize_trained, stitch
        from ..task_vectors import TaskVector

        self.task(task)  # an unknown task fails here, before any work
        cfg = cfg or self.finetune_config_for(task)
        recipe = {"density": density, "l1": l1, "lr": lr, "sigmoid_bias": sigmoid_bias, "passes": passes,
                  "batch_size": batch_size, "seed": seed, "choose": choose}

        def build():
            pre, ft = self.pretrained(), self.finetune(task, cfg)
            tau = TaskVector({n: ft[n] - pre[n] for n in self.merge_names()})
            mask, log = localize_trained(
                self.build_body().to(self.device), pre, tau, self.localization_loss(task),
                self.localization_batches(task, batch_size, seed=seed), density=density, sigmoid_bias=sigmoid_bias,
                l1=l1, lr=lr, epochs=passes, choose=choose, device=self.device, progress=self.progress,
                validate=lambda m: self.evaluate(stitch(pre, [tau], [m]), task, "val"))
            return mask, {"log": log}

        key = self.cache_key("localize", task=task, finetune=cfg.to_dict(), localize=recipe)
        mask, record = cached(self.name, key, build, refresh)
        return {n: m.to(torch.bool) for n, m in mask.items()}, record["metrics"]["log"]

    def localization_loss(self, task: str) -> Callable[[Forward, Any], torch.Tensor]:
        """``loss_fn(forward, batch)`` for :func:`lsedu.localize_trained` on ``task``."""
        return lambda forward, batch: self.loss(task, forward, batch)

    def localization_batches(self, task: str, batch_size: int = 32, seed: int = 0) -> list:
        """The training examples of ``task`` as a list of batches, for :func:`lsedu.localize_trained`."""
        g = torch.Generator().manual_seed(seed)
        return list(self.batches(task, self.train_split(task), batch_size, shuffle=True, generator=g))


# ----------------------------------------------------------------------------- classification with frozen heads


@dataclass(frozen=True)
class HeadConfig(Config):
    """How the frozen linear heads are fitted on the pretrained body's features.

    Not called in a notebook: the laptop text and vision setups fit their frozen heads with it; see notebook 01
    (01_weights_as_vectors.ipynb).
    """

    epochs: int = checked(100, integer(low=1))
    lr: float = checked(1e-2, number(low=0, low_open=True))
    weight_decay: float = checked(1e-4, number(low=0))
    seed: int = checked(0, integer(low=0))


class ClassificationSetup(Setup):
    """A body that maps a batch to feature vectors, plus one frozen linear head per task.

    As in the paper's CLIP setup, each task's head is fitted once on the
    *pretrained* body's features (a linear probe), then frozen: fine-tuning,
    merging and localization all concern the body only, and the pretrained
    accuracy a table reports is this linear probe's. Subclasses provide
    :meth:`features` instead of :meth:`loss` and :meth:`predict`.

    Not called in a notebook: the laptop text and vision setups (notebooks 01 to 07, 09) and the paper's CLIP setup are
    ones; see notebook 01 (01_weights_as_vectors.ipynb).
    """

    head_config: HeadConfig = HeadConfig()

    @abc.abstractmethod
    def features(self, forward: Forward, batch: Any) -> torch.Tensor:
        """``[batch, dim]`` features of ``batch``'s inputs, computed with ``forward`` (the body)."""

    @staticmethod
    def labels(batch: Any) -> torch.Tensor:
        """The labels of a batch (the default batch is ``(inputs, labels)``)."""
        return batch[-1]

    def head(self, task: str) -> dict[str, torch.Tensor]:
        """The frozen head of ``task``: ``{"weight": [classes, dim], "bias": [classes]}`` (cached)."""
        if not hasattr(self, "_heads"):
            self._heads: dict[str, dict[str, torch.Tensor]] = {}
        if task not in self._heads:
            key = self.cache_key("head", task=task, head=dataclasses.asdict(self.head_config))
            sd, _ = cached(self.name, key, lambda: self._fit_head(task))
            self._heads[task] = {n: t.to(self.device) for n, t in sd.items()}
        return self._heads[task]

    @torch.no_grad()
    def _features_of(self, task: str, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        # A module of its own: a head is often first asked for in the middle of an evaluation of another body,
        # whose weights the shared self.module(...) holds until that evaluation ends.
        model = self.build_body().to(self.device)
        model.load_state_dict(self.pretrained(), strict=True)
        model.eval()
        feats, labels = [], []
        for batch in self.batches(task, split, 64):
            feats.append(self.features(model, batch).float().cpu())
            labels.append(self.labels(batch).cpu())
        return torch.cat(feats), torch.cat(labels)

    @torch.enable_grad()  # heads are often first asked for inside an evaluation's no_grad
    def _fit_head(self, task: str):
        cfg = self.head_config
        x, y = self._features_of(task, self.train_split(task))
        n_classes = len(self.task(task).classes)
        g = torch.Generator().manual_seed(cfg.seed)
        w = (torch.randn(n_classes, x.shape[1], generator=g) * 0.01).requires_grad_()
        b = torch.zeros(n_classes, requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=cfg.lr, weight_decay=cfg.weight_decay)
        for _ in range(cfg.epochs):  # full batch: the features fit in memory
            loss = F.cross_entropy(x @ w.T + b, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_acc = float(((x @ w.T + b).argmax(-1) == y).float().mean())
        return {"weight": w.detach(), "bias": b.detach()}, {"train_accuracy": train_acc}

    def logits(self, task: str, forward: Forward, batch: Any) -> torch.Tensor:
        h = self.head(task)
        return self.features(forward, batch).float() @ h["weight"].T + h["bias"]

    def loss(self, task, forward, batch):
        return F.cross_entropy(self.logits(task, forward, batch), self.labels(batch).to(self.device))

    def predict(self, task, forward, batch):
        return self.logits(task, forward, batch).argmax(-1), self.labels(batch)


# ----------------------------------------------------------------------------- results


def normalized_accuracy(accuracy: Mapping[str, float], individual: Mapping[str, float]) -> float:
    """Mean over tasks of ``accuracy[t] / individual[t]``: 1.0 means every fine-tune's accuracy is kept.

    Not called in a notebook: casestudy's tables (the normalized column of notebooks 06 to 09) use it; see notebook 07
    (07_case_vision.ipynb).
    """
    missing = set(accuracy) - set(individual)
    if missing:
        raise ValueError(f"no individual fine-tune accuracy for task(s) {sorted(missing)}")
    for t in accuracy:
        if individual[t] <= 0:
            raise ValueError(f"individual accuracy of task {t!r} is {individual[t]}; normalizing needs it > 0")
    return sum(accuracy[t] / individual[t] for t in accuracy) / len(accuracy)


def results_table(rows: Mapping[str, Mapping[str, float]], individual: Mapping[str, float] | None = None):
    """A DataFrame of ``{method: {task: accuracy}}``, with ``average`` and (given ``individual``) ``normalized``.

    Explained in notebook 03 (03_task_arithmetic.ipynb), and used again in notebooks 04 and 05.
    """
    import pandas as pd

    df = pd.DataFrame({m: dict(acc) for m, acc in rows.items()}).T
    tasks = list(df.columns)
    df["average"] = df[tasks].mean(axis=1)
    if individual is not None:
        df["normalized"] = [normalized_accuracy(dict(rows[m]), individual) for m in df.index]
    return df
