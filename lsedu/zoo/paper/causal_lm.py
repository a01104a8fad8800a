"""The paper track's causal LM: GPT2-XL, its public fine-tunes for three skills, and lm-eval's scores.

Localize-and-Stitch (He et al. 2025, Sec. 4) merges public GPT2-XL
fine-tunes for instruction following, science and truthfulness, and scores
the merges on MMLU, ARC and TruthfulQA with lm-eval-harness. A skill is one
:class:`LLMTask` row of :data:`GPT2XL_TASKS`: its fine-tune's hub id, its
benchmark, metric and few-shot count, and the benchmark's dataset read as
multiple-choice items (scored by :mod:`lsedu.zoo.lm_scoring`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ...config import Check, Config, boolean, check_arg, checked, integer, optional
from ..base import FinetuneConfig, Split, TaskData, instance_of, mapping_of, register_setup, text
from ..cache import StateDict
from ..lm_scoring import ChoiceBatch, MultipleChoiceLM, check_items, tie_aware
from .base import TransformersLM, batch_order, check_batch_size, from_hub, subsample

# ----------------------------------------------------------------------------- the 3 skills


@dataclass(frozen=True)
class LLMTask:
    """One skill of the GPT2-XL setup: the public fine-tune that has it, and the lm-eval benchmark that scores it.

    ``finetune`` is the hub id of a GPT2-XL fine-tuned for the skill (None
    where no id is known); ``benchmark``, ``metric`` and ``num_fewshot`` say
    how lm-eval scores it. ``hub`` / ``hub_config`` / the splits are the
    benchmark's own dataset, read as multiple-choice items
    ``{"prompt", "options"}`` (the format of the laptop causal-LM setup) for
    our own scoring and for trained localization; ``rows`` names the reader.

    Not called in a notebook: the GPT2-XL setup of the paper track (``TRACK = "paper"`` in notebook 08) uses it; see the
    book's page on the two tracks (book/tracks.md).
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
    """``({"prompt", "options"}, answer index)`` of a benchmark row, with lm-eval's prompt and answer format.

    Not called in a notebook: the GPT2-XL setup of the paper track (``TRACK = "paper"`` in notebook 08) uses it; see the
    book's page on the two tracks (book/tracks.md).
    """
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

    Not called in a notebook: the GPT2-XL setup of the paper track (``TRACK = "paper"`` in notebook 08) uses it; see the
    book's page on the two tracks (book/tracks.md).
    """
    import datasets

    where = spec.hub + (f" ({spec.hub_config})" if spec.hub_config else "")
    ds = from_hub(lambda: datasets.load_dataset(spec.hub, spec.hub_config), where, f"the {name} benchmark",
                  "causal_lm")

    def read(split_name: str, cap: int | None = None) -> tuple[list, list]:
        dset = ds[split_name]
        pairs = [mc_item(spec.rows, dset[int(i)]) for i in subsample(len(dset), cap, seed)]
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

    Not called in a notebook: the GPT2-XL setup of the paper track (``TRACK = "paper"`` in notebook 08) uses it; see the
    book's page on the two tracks (book/tracks.md).
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

    Not called in a notebook: the GPT2-XL setup of the paper track (``TRACK = "paper"`` in notebook 08) uses it; see the
    book's page on the two tracks (book/tracks.md).
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


def _limit() -> Check:
    """lm-eval's ``limit``: None, a number of examples (an int >= 1) or a fraction of them (a float in (0, 1])."""
    def accept(v) -> bool:
        if isinstance(v, bool):
            return False
        return (isinstance(v, int) and v >= 1) or (isinstance(v, float) and 0 < v <= 1)

    return optional(Check("an int >= 1 (examples) or a float in (0, 1] (a fraction)", accept))


@dataclass(frozen=True)
class GPT2XLConfig(Config):
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

    Not called in a notebook: the GPT2-XL setup (``TRACK = "paper"`` in notebook 08) is configured with it; see the
    book's page on the two tracks (book/tracks.md).
    """

    model: str = checked("openai-community/gpt2-xl", text())
    finetunes: dict[str, str | None] = checked(check=mapping_of(optional(text()), keys=tuple(GPT2XL_TASKS)),
                                               default_factory=lambda: {t: s.finetune for t, s in GPT2XL_TASKS.items()})
    seed: int = checked(0, integer(low=0))
    max_train: int = checked(1000, integer(low=1))
    max_length: int = checked(1024, integer(low=1))
    lm_eval: bool = checked(True, boolean())
    lm_eval_batch_size: int = checked(8, integer(low=1))
    lm_eval_limit: int | float | None = checked(None, _limit())
    finetune: FinetuneConfig = checked(FinetuneConfig(epochs=1, lr=1e-5, batch_size=4, seed=0),
                                       instance_of(FinetuneConfig))


#: The toy GPT-2 of ``tiny=True``: ``GPT2LMHeadModel`` with 2 blocks of width 64.
TINY_GPT2 = {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 256}


@register_setup
class GPT2XL(MultipleChoiceLM, TransformersLM):
    """GPT2-XL, its public fine-tunes for three skills, and lm-eval scores on MMLU, ARC and TruthfulQA.

    Here a "task" is a skill (``instruction``, ``science``, ``truthfulness``):
    :meth:`finetune` returns the **downloaded** public fine-tune's weights
    (nothing is trained; the hub caches the download), and
    ``evaluate(body, task)`` is the lm-eval accuracy of the skill's benchmark
    (:data:`GPT2XL_TASKS`) for the model holding ``body``. The task data are
    the benchmarks as multiple-choice items, for trained localization and
    for ``evaluate(..., split="train" | "val")``, scored like lm-eval (the
    sum of the option's token log-probabilities; ``acc_norm`` per character)
    with the shared functions of :mod:`lsedu.zoo.lm_scoring`.

    The body is the ``GPT2LMHeadModel`` state dict with the tied output
    layer listed once (:func:`~lsedu.zoo.lm_scoring.tie_aware`); merges cover
    the transformer blocks (:data:`merge_patterns`).

    ``GPT2XL(device=None, progress=True, *, config=None, tasks=None,
    tiny=False, data=None, tokenizer=None)``: ``tiny=True`` is a random
    2-block GPT-2 (:data:`TINY_GPT2`) with a tokenizer trained on ``data``;
    a random model has no public fine-tunes, so there :meth:`finetune` trains
    on the task's train split with the shared trainer.

    Explained in notebook 08 (08_case_causal_lm.ipynb) with ``TRACK = "paper"``; the paper track is described on the
    page Two tracks (book/tracks.md).
    """

    name = "causal_lm"
    merge_patterns: tuple[str, ...] = ("transformer.h.*",)
    config_class = GPT2XLConfig
    task_table = GPT2XL_TASKS
    tiny_model = TINY_GPT2
    tiny_name = "tiny random GPT2LMHeadModel"
    tokenizer_kind = "gpt2"
    tiny_special_tokens = ("bos", "eos")

    def __init__(self, device: str | torch.device | None = None, progress: bool = True, *,
                 config: GPT2XLConfig | None = None, tasks: Sequence[str] | None = None,
                 tiny: bool = False, data: Mapping[str, TaskData] | None = None, tokenizer=None):
        super().__init__(device, progress, config=config, tasks=tasks, tiny=tiny, data=data, tokenizer=tokenizer)

    # --- model ------------------------------------------------------------------------------

    def hf_config_class(self) -> type:
        from transformers import GPT2Config

        return GPT2Config

    def tiny_corpus(self) -> list[str]:
        """Every prompt with its options, of every injected split."""
        return [it["prompt"] + "".join(it["options"]) for td in self._injected.values()
                for w in ("train", "val", "test") for it in td.split(w).inputs]

    def hub_tokenizer(self):
        """gpt2-xl's tokenizer from the hub, with its eos as the pad token (GPT-2 has none)."""
        tok = super().hub_tokenizer()
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok

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
            return self.seeded_body()
        return self._load(self.config.model, "the pretrained weights")

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

    def check_injected(self, task: str, data: TaskData) -> None:
        """Every split of the injected ``data`` holds valid multiple-choice items and labels."""
        for w in ("train", "val", "test"):
            check_items(data.split(w).inputs, data.split(w).labels, arg=f"data[{task!r}].{w}.inputs")

    def load_hub_task(self, task: str) -> TaskData:
        return load_llm_task(task, GPT2XL_TASKS[task], self.config.max_train, self.config.seed)

    def batches(self, task: str, split: Split, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[ChoiceBatch]:
        """Multiple-choice batches: the right options (for the loss) and every option (for scoring)."""
        check_batch_size(batch_size)
        yield from self.choice_batches(split, batch_order(len(split), shuffle, generator), batch_size)

    def acc_norm(self, task: str) -> bool:
        """Whether the skill's benchmark metric is lm-eval's ``acc_norm`` (ARC) rather than ``acc``."""
        return GPT2XL_TASKS[task].metric.startswith("acc_norm")

    def evaluate(self, body: Mapping[str, torch.Tensor], task: str, split: str = "test", batch_size: int = 8,
                 limit: int | None = None) -> float:
        """Accuracy of ``body`` on ``task``: lm-eval's score of its benchmark (test split, full model), else ours.

        With a ``limit`` below the split's length, ours on the split's first ``limit`` items (lm-eval's own
        ``limit`` is ``config.lm_eval_limit``).
        """
        if self._scored_by_lm_eval(task, split, limit):
            spec = GPT2XL_TASKS[task]
            results = run_lm_eval(self.module(body), self.tokenizer, spec, batch_size=self.config.lm_eval_batch_size,
                                  limit=self.config.lm_eval_limit, max_length=self.config.max_length,
                                  seed=self.config.seed)
            return lm_eval_accuracies(results, {task: spec})[task]
        return super().evaluate(body, task, split, batch_size, limit=limit)

    def _scored_by_lm_eval(self, task: str, split: str, limit: int | None) -> bool:
        check_arg(limit, "limit", optional(integer(low=1)))
        whole = limit is None or limit >= len(self.task(task).split(split))
        return split == "test" and self.config.lm_eval and not self.tiny and whole

    def correct(self, body: Mapping[str, torch.Tensor], task: str, split: str = "test", batch_size: int = 8,
                limit: int | None = None) -> torch.Tensor:
        """Per item, whether ours scores it right; NotImplementedError where :meth:`evaluate` is lm-eval's score.

        lm-eval scores the benchmark's own documents, not this split's items, so
        there is no per-item vector to pair; the case studies then report that
        setup's rows without paired intervals.
        """
        if self._scored_by_lm_eval(task, split, limit):
            raise NotImplementedError(f"the test accuracy of {task!r} is lm-eval's score of {GPT2XL_TASKS[task].benchmark!r}"
                                      ", which gives no per-item vector here")
        return super().correct(body, task, split, batch_size, limit=limit)
