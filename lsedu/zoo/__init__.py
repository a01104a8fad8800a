"""The zoo: pretrained models, tasks, fine-tunes and evaluation for both tracks.

    import lsedu.zoo
    text = lsedu.zoo.load("text")                  # laptop track: MiniLM on offline text tasks
    text = lsedu.zoo.load("text", track="paper")   # roberta-base on the 12 LM-BFF tasks (GPU, internet)
    body = text.pretrained()
    ft = {t: text.finetune(t) for t in text.tasks}     # cached under $LSEDU_CACHE
    text.evaluate_all(ft["sentiment"])

Every setup is a :class:`~lsedu.zoo.base.Setup`; one API for both tracks.
Each setup module describes its tasks in one table of records:
``text.TEXT_TASKS``, ``vision.IMAGE_TASKS`` and ``causal_lm.SKILLS`` on the
laptop, ``paper.LMBFF_TASKS``, ``paper.CLIP_TASKS`` and
``paper.GPT2XL_TASKS`` on the paper track.

=============  ===========================================  ============================================
setup          laptop track (default, offline, CPU)         paper track (GPU, internet)
=============  ===========================================  ============================================
``text``       all-MiniLM-L6-v2, 6 offline text tasks        roberta-base, 12 LM-BFF tasks, 64 shots
``vision``     EfficientNet-Lite0, offline image tasks       CLIP ViT-B/32 ``openai``, 8 tasks
``causal_lm``  SmolLM2-135M, skill fine-tunes                GPT2-XL and its public fine-tunes, lm-eval
=============  ===========================================  ============================================
"""

from __future__ import annotations

from .assets import ASSETS, AssetCorrupt, AssetMissing, asset_path
from .base import (
    ClassificationSetup,
    FinetuneConfig,
    HeadConfig,
    SETUPS,
    Setup,
    Split,
    TaskData,
    normalized_accuracy,
    register_setup,
    results_table,
    split_fixed,
)
from .cache import cache_root, cached, config_key

# Importing a setup module registers its setups in SETUPS (lsedu.zoo.base.register_setup). They import torch,
# and transformers, open_clip, lm_eval and datasets only inside the functions that need them.
from . import causal_lm, paper, text, vision  # noqa: E402, F401, I001


def load(name: str, track: str = "laptop", **kwargs) -> Setup:
    """The setup ``name`` (``"text"``, ``"vision"``, ``"causal_lm"``) of ``track`` (``"laptop"`` or ``"paper"``).

    Explained in notebook 01 (01_weights_as_vectors.ipynb); every chapter from 01 to 09 starts with it.
    """
    if track not in ("laptop", "paper"):
        raise ValueError(f"track must be 'laptop' or 'paper', got {track!r}")
    if (name, track) not in SETUPS:
        raise ValueError(f"unknown setup {name!r}; choose one of {sorted({n for n, _ in SETUPS})}")
    return SETUPS[(name, track)](**kwargs)


__all__ = [
    "ASSETS", "AssetCorrupt", "AssetMissing", "ClassificationSetup", "FinetuneConfig", "HeadConfig", "SETUPS",
    "Setup", "Split", "TaskData", "asset_path", "cache_root", "cached", "config_key", "load",
    "normalized_accuracy", "register_setup", "results_table", "split_fixed",
]
