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

One module per setup: :mod:`lsedu.zoo.paper.text` (``RobertaLMBFF``),
:mod:`lsedu.zoo.paper.vision` (``ClipViTB32``) and
:mod:`lsedu.zoo.paper.causal_lm` (``GPT2XL``), each with its task table
(``LMBFF_TASKS``, ``CLIP_TASKS``, ``GPT2XL_TASKS``), under the shared
:class:`~lsedu.zoo.paper.base.PaperSetup` of :mod:`lsedu.zoo.paper.base`.
Every name is importable from ``lsedu.zoo.paper`` too.

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


from .base import (
    PaperSetup,
    TransformersLM,
    data_fingerprint,
    from_hub,
    tiny_bpe_tokenizer,
)
from .causal_lm import (
    GPT2XL,
    GPT2XL_TASKS,
    TINY_GPT2,
    GPT2XLConfig,
    LLMTask,
    lm_eval_accuracies,
    load_llm_task,
    mc_item,
    run_lm_eval,
)
from .text import (
    LMBFF_TASKS,
    TINY_ROBERTA,
    PromptTask,
    RobertaLMBFF,
    RobertaLMBFFConfig,
    encode_prompt,
    few_shot_indices,
    label_word_ids,
    load_prompt_task,
    prompt_pieces,
)
from .vision import (
    CLIP_TASKS,
    EUROSAT_CLASSNAMES,
    GTSRB_CLASSNAMES,
    TASK_VECTORS_EPOCHS,
    TINY_CLIP,
    ClipViTB32,
    ClipViTB32Config,
    HubRow,
    VisionTask,
    holdout_indices,
    zero_shot_weights,
)

__all__ = [
    "CLIP_TASKS", "EUROSAT_CLASSNAMES", "GPT2XL", "GPT2XL_TASKS", "GTSRB_CLASSNAMES", "LMBFF_TASKS",
    "TASK_VECTORS_EPOCHS", "TINY_CLIP", "TINY_GPT2", "TINY_ROBERTA", "ClipViTB32", "ClipViTB32Config", "GPT2XLConfig",
    "HubRow", "LLMTask", "PaperSetup", "PromptTask", "RobertaLMBFF", "RobertaLMBFFConfig", "TransformersLM",
    "VisionTask", "data_fingerprint", "encode_prompt", "few_shot_indices", "from_hub", "holdout_indices",
    "label_word_ids", "lm_eval_accuracies", "load_llm_task", "load_prompt_task", "mc_item", "prompt_pieces",
    "run_lm_eval", "tiny_bpe_tokenizer", "zero_shot_weights",
]
