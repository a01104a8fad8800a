"""The paper track's vision setup: CLIP ViT-B/32 (open_clip, ``openai``) on the 8 image tasks of Task Arithmetic.

Ilharco et al. 2023 (task arithmetic) and Localize-and-Stitch (He et al.
2025, Sec. 4.1) fine-tune CLIP's image encoder on eight image tasks, each
with a frozen zero-shot head built from the text encoder. A task is one
:class:`VisionTask` row of :data:`CLIP_TASKS`: its hub dataset, its prompt
templates and, where the hub's label names are not words CLIP knows, its
class names (task_vectors' ``templates.py``; hub ids from FusionBench).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...config import Config, checked, integer, number, optional
from ..base import ClassificationSetup, FinetuneConfig, Forward, Split, TaskData, instance_of, mapping_of, text
from ..base import register_setup
from ..cache import StateDict
from .base import PaperSetup, batch_order, check_batch_size, from_hub, hub_labels, seeded, subsample

# ----------------------------------------------------------------------------- the 8 tasks


@dataclass(frozen=True)
class VisionTask:
    """One image task: its hub dataset, its CLIP prompt templates (``{c}`` is the class name) and class names.

    ``classnames`` overrides the dataset's label names where those are not
    words CLIP knows (digits, EuroSAT's CamelCase folders, GTSRB's numbers).

    Not called in a notebook: the CLIP setup of the paper track (``TRACK = "paper"`` in notebooks 07 and 09) uses it;
    see the book's page on the two tracks (book/tracks.md).
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

    Not called in a notebook: the CLIP setup of the paper track (``TRACK = "paper"`` in notebooks 07 and 09) uses it;
    see the book's page on the two tracks (book/tracks.md).
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
    """A lazy image: row ``index`` of split ``split`` of a task's hub dataset (decoded only when batched).

    Not called in a notebook: the CLIP setup of the paper track (``TRACK = "paper"`` in notebooks 07 and 09) uses it;
    see the book's page on the two tracks (book/tracks.md).
    """

    split: str
    index: int


def holdout_indices(labels: torch.Tensor, fraction: float, cap: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` row indices: a seeded, class-stratified ``fraction`` of the rows (at most ``cap``) is val.

    Not called in a notebook: the CLIP setup of the paper track (``TRACK = "paper"`` in notebooks 07 and 09) uses it;
    see the book's page on the two tracks (book/tracks.md).
    """
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
class ClipViTB32Config(Config):
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

    Not called in a notebook: the CLIP setup (``TRACK = "paper"`` in notebooks 07 and 09) is configured with it; see the
    book's page on the two tracks (book/tracks.md).
    """

    arch: str = checked("ViT-B-32", text())
    pretrained: str | None = checked("openai", optional(text()))
    seed: int = checked(0, integer(low=0))
    val_fraction: float = checked(0.1, number(0, 0.5, low_open=True, high_open=True))
    max_val: int = checked(5000, integer(low=1))
    max_test: int | None = checked(None, optional(integer(low=1)))
    epochs: dict[str, int] = checked(check=mapping_of(integer(low=1)),
                                     default_factory=lambda: dict(TASK_VECTORS_EPOCHS))
    warmup_steps: int = checked(500, integer(low=0))
    finetune: FinetuneConfig = checked(FinetuneConfig(epochs=1, lr=1e-5, batch_size=128, weight_decay=0.1, seed=0),
                                       instance_of(FinetuneConfig))


#: The toy CLIP of ``tiny=True``: open_clip's ``CLIP`` with a 2-layer ``VisionTransformer`` on 32x32 images, and
#: the real BPE tokenizer's vocabulary (49408) and context length (77). ViT-B/32 itself (151M parameters) takes
#: seconds per CPU forward, too slow for the test suite; ``tiny=False, pretrained=None`` builds it randomly.
TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32,
                            "mlp_ratio": 2.0},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@register_setup
class ClipViTB32(PaperSetup, ClassificationSetup):
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

    Explained in notebooks 07 and 09 (07_case_vision.ipynb, 09_what_matters_at_scale.ipynb) with ``TRACK = "paper"``;
    the paper track is described on the page Two tracks (book/tracks.md).
    """

    name = "vision"
    merge_patterns: tuple[str, ...] = ("*",)
    config_class = ClipViTB32Config
    task_table = CLIP_TASKS
    tiny_model = TINY_CLIP
    tiny_name = "tiny random open_clip CLIP"

    def __init__(self, device: str | torch.device | None = None, progress: bool = True, *,
                 config: ClipViTB32Config | None = None, tasks: Sequence[str] | None = None,
                 tiny: bool = False, data: Mapping[str, TaskData] | None = None):
        super().__init__(device, progress, config=config, tasks=tasks, tiny=tiny, data=data)
        self._clip = None
        self._preprocess = None
        self._hub: dict[str, Any] = {}

    # --- model ------------------------------------------------------------------------------

    def model_name(self) -> str:
        return self.tiny_name if self.tiny else f"open_clip {self.config.arch}"

    def identity(self) -> dict:
        """:meth:`PaperSetup.identity` and the open_clip weights tag."""
        return {**super().identity(), "pretrained": None if self.tiny else self.config.pretrained}

    @property
    def clip(self) -> nn.Module:
        """The whole CLIP model (image and text encoders) on ``self.device``, in eval mode; loaded once."""
        if self._clip is None:
            import open_clip

            cfg = self.config
            if self.tiny:
                model = seeded(lambda: open_clip.model.CLIP(**copy.deepcopy(TINY_CLIP)), cfg.seed)
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
                model, _, self._preprocess = seeded(lambda: open_clip.create_model_and_transforms(
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

    # --- data -------------------------------------------------------------------------------

    def classnames(self, task: str) -> tuple[str, ...]:
        return self.task(task).classes

    def load_hub_task(self, task: str) -> TaskData:
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
        labels = hub_labels(train, spec.label_column)
        tr, va = holdout_indices(labels, cfg.val_fraction, cfg.max_val, cfg.seed)
        te = subsample(len(test), cfg.max_test, cfg.seed)
        test_labels = hub_labels(test, spec.label_column)

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
        check_batch_size(batch_size)
        order = batch_order(len(split), shuffle, generator)
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


