"""``lsedu merge``: the streaming merge equals the in-memory one, writes loadable shards, and loses nothing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch as st
import torch
import yaml

import lsedu
import lsedu.merge.blocks
import lsedu.merge.io
import lsedu.merge.plan
import lsedu.merge.run
import lsedu.merge.thresholds
from lsedu import methods
from lsedu.merge import Checkpoint, load_masks, load_recipe, merge, save_masks

import transformers  # noqa: E402  (a dependency: a missing one must fail, not skip)


# --- fixtures: a tiny GPT-2 and two fine-tunes, saved as Hugging Face folders ------------------------------
@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    base = transformers.GPT2LMHeadModel(cfg)
    base.save_pretrained(root / "base")
    g = torch.Generator().manual_seed(1)
    for i in range(3):
        ft = transformers.GPT2LMHeadModel(cfg)
        ft.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in ft.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g))
        ft.save_pretrained(root / f"ft{i}", max_shard_size="20KB")  # sharded input folders
    return root


def recipe_file(root: Path, method: str, params: dict, out="out", **extra) -> Path:
    r = {"merge_method": method, "base_model": "base", "models": [{"model": f"ft{i}"} for i in range(3)],
         "parameters": params, "output": out, "shard_size": "40KB", **extra}
    path = root / f"recipe-{method}.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def load_all(ckpt):
    return {n: ckpt[n] for n in ckpt}


def in_memory(root: Path, method: str, params: dict):
    """The same merge with the in-memory lsedu functions on fully loaded state dicts.

    The recipe's parameters (any alias) are read as the registry reads them, defaults filled in.
    """
    pre = load_all(Checkpoint(root / "base"))
    fts = [load_all(Checkpoint(root / f"ft{i}")) for i in range(3)]
    tvs = [lsedu.TaskVector.from_models(pre, ft) for ft in fts]
    p = methods.get(method).resolve(params)
    if method == "average":
        return lsedu.uniform_soup(fts)
    if method == "task_arithmetic":
        return lsedu.task_arithmetic(pre, tvs, p["lam"])
    if method == "ties":
        return lsedu.ties_merge(pre, tvs, p["density"], p["lam"], p["trim_scope"])
    if method == "dare":
        extra = {"density": p["density"], "trim_scope": p["trim_scope"]} if p["then"] == "ties" else {}
        return lsedu.dare_merge(pre, tvs, p["p"], p["lam"], p["seed"], p["then"], **extra)
    if method == "localize_stitch":
        return lsedu.stitch(pre, tvs, [lsedu.localize_dataless(t, p["density"]) for t in tvs])
    raise AssertionError(method)


CASES = [
    ("average", {}),
    ("task_arithmetic", {"lambda": 0.4}),
    ("task_arithmetic", {}),  # the registry's default lambda, the same as lsedu.task_arithmetic's
    ("ties", {"density": 0.2, "lambda": 0.9}),
    ("ties", {"density": 0.3, "trim": "per_tensor"}),
    ("dare", {"p": 0.5, "then": "task_arithmetic", "seed": 3}),
    ("dare", {"p": 0.5, "then": "ties", "density": 0.4}),
    ("localize_stitch", {"density": 0.05}),
]


def sha(path: Path) -> dict[str, str]:
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.rglob("*"))
            if f.is_file()}


@pytest.mark.parametrize(("method", "params"), CASES, ids=[f"{m}-{'-'.join(map(str, p.values()))}" for m, p in CASES])
def test_streaming_equals_in_memory_and_loads_in_transformers(gpt2_dir, method, params, tmp_path):
    before = {d: sha(gpt2_dir / d) for d in ("base", "ft0", "ft1", "ft2")}
    report = merge(recipe_file(gpt2_dir, method, params), tmp_path / "merged", progress=False)
    merged = Checkpoint(report.output)
    want = in_memory(gpt2_dir, method, params)
    assert set(merged) == set(want)
    for n in want:
        assert torch.equal(merged[n], want[n]), n
    assert (report.output / "config.json").exists()
    shards = sorted(p.name for p in report.output.glob("*.safetensors"))
    assert len(shards) > 1 and (report.output / "model.safetensors.index.json").exists()
    model = transformers.GPT2LMHeadModel.from_pretrained(report.output)
    for n, t in model.state_dict().items():
        if n in want:
            assert torch.equal(t, want[n]), n
    global_topk = method == "localize_stitch" or (method in ("ties", "dare") and params.get("then", "ties") == "ties"
                                                  and params.get("trim", "global") == "global")
    if global_topk:  # a sample (every 1-D tensor and one row in 256), the counting pass, the merge
        assert 2 < report.read_passes < 2.25, report.read_passes
    else:  # no tensor here is big enough to be cut
        assert report.read_passes == 1
    assert {d: sha(gpt2_dir / d) for d in before} == before  # inputs untouched


@pytest.mark.parametrize(("method", "params"), CASES, ids=[f"{m}-{'-'.join(map(str, p.values()))}" for m, p in CASES])
def test_chunked_tensors_merge_exactly_as_whole_ones(gpt2_dir, method, params, tmp_path, monkeypatch):
    """Big tensors are merged a block of rows at a time: with tiny chunks, every tensor is cut, and the
    result must not change (top-k ties and DARE draws included)."""
    whole = merge(recipe_file(gpt2_dir, method, params), tmp_path / "whole", progress=False)
    monkeypatch.setattr(lsedu.merge.blocks, "CHUNK_ENTRIES", 100)
    monkeypatch.setattr(lsedu.merge.plan, "PER_TENSOR_WHOLE_ENTRIES", 100)
    assert len(lsedu.merge.blocks.chunks((100, 32))) == 34  # 3 rows of 32 a chunk
    masks = {"save": str(tmp_path / "masks")} if method == "localize_stitch" else None
    extra = {"masks": masks} if masks else {}
    cut = merge(recipe_file(gpt2_dir, method, params, **extra), tmp_path / "cut", progress=False)
    a, b = Checkpoint(whole.output), Checkpoint(cut.output)
    for n in a:
        assert torch.equal(a[n], b[n]), n
    if masks:  # masks written in pieces, bit-packed across piece boundaries
        base = load_all(Checkpoint(gpt2_dir / "base"))
        tau = lsedu.TaskVector.from_models(base, load_all(Checkpoint(gpt2_dir / "ft0")))
        want, got = lsedu.localize_dataless(tau, params["density"]), load_masks(cut.masks[0])
        assert all(torch.equal(want[n], got[n]) for n in want)


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory):
    """Task vectors of a few exact values (multiples of 2**-8 on a base of multiples of 2**-10): the
    top-k threshold is shared by thousands of entries, so blocks keep all, some or none of their ties."""
    root = tmp_path_factory.mktemp("tied")
    g = torch.Generator().manual_seed(5)
    base = {"emb": torch.randint(-64, 64, (300, 40), generator=g) / 1024, "w": torch.randint(-64, 64, (40, 40), generator=g) / 1024,
            "bias": torch.randint(-64, 64, (40,), generator=g) / 1024}
    st.save_file(base, root / "base.safetensors")
    for i in range(3):
        ft = {n: t + torch.randint(-2, 3, t.shape, generator=g) / 256 for n, t in base.items()}
        st.save_file(ft, root / f"ft{i}.safetensors")
    return root


TIED = [("ties", {"density": 0.3}), ("ties", {"density": 0.45, "trim": "per_tensor"}),
        ("localize_stitch", {"density": 0.2}), ("dare", {"p": 0.3, "then": "ties", "density": 0.5, "seed": 1})]


@pytest.mark.parametrize(("method", "params"), TIED, ids=[f"{m}-{'-'.join(map(str, p.values()))}" for m, p in TIED])
@pytest.mark.parametrize("chunk", [None, 64], ids=["whole", "cut"])
def test_ties_at_the_threshold_keep_exactly_k(tied_dir, method, params, chunk, tmp_path, monkeypatch):
    """The fused kernels keep the ties of a block all or none at a time, and hand a block that keeps only
    some of its ties to the reference path: the result equals the in-memory merge, chunked or not, and the
    per-tensor trim of a tensor too big to rank whole (a sample brackets its threshold) too."""
    if chunk:
        monkeypatch.setattr(lsedu.merge.blocks, "CHUNK_ENTRIES", chunk)
        monkeypatch.setattr(lsedu.merge.plan, "PER_TENSOR_WHOLE_ENTRIES", 4000)  # emb is cut, w is ranked whole
    monkeypatch.setattr(lsedu.merge.thresholds, "SAMPLE_ENTRIES", 256)  # w (1,600 entries) is ranked from a sample
    recipe = {"merge_method": method, "base_model": "base.safetensors", "parameters": params, "output": "out",
              "models": [f"ft{i}.safetensors" for i in range(3)]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    for f in tied_dir.iterdir():
        (tmp_path / f.name).symlink_to(f)
    report = merge(tmp_path / "r.yaml", progress=False)
    pre = load_all(Checkpoint(tied_dir / "base.safetensors"))
    tvs = [lsedu.TaskVector.from_models(pre, load_all(Checkpoint(tied_dir / f"ft{i}.safetensors"))) for i in range(3)]
    if method == "ties":
        want = lsedu.ties_merge(pre, tvs, params["density"], 1.0, params.get("trim", "global"))
    elif method == "dare":
        want = lsedu.dare_merge(pre, tvs, params["p"], 1.0, params["seed"], "ties", density=params["density"])
    else:
        want = lsedu.stitch(pre, tvs, [lsedu.localize_dataless(t, params["density"]) for t in tvs])
    got = Checkpoint(report.output)
    for n in want:
        assert torch.equal(got[n], want[n]), n


@pytest.mark.parametrize("trim", ["global", "per_tensor"])
def test_a_missed_bracket_still_gives_the_exact_threshold(gpt2_dir, tmp_path, monkeypatch, trim):
    """If the sample's bracket misses the k-th value, a radix select finds it (for a global trim, in one
    more read pass): the same result."""
    params = {"density": 0.2, "lambda": 0.9, "trim": trim}
    monkeypatch.setattr(lsedu.merge.thresholds, "SAMPLE_ENTRIES", 64)  # per-tensor: every tensor is ranked from a sample
    good = merge(recipe_file(gpt2_dir, "ties", params), tmp_path / "good", progress=False)
    monkeypatch.setattr(lsedu.merge.thresholds, "bracket", lambda sample, n, k: (1e3, 2e3, 0.0))  # above every entry
    missed = merge(recipe_file(gpt2_dir, "ties", params), tmp_path / "missed", progress=False)
    if trim == "global":
        assert 3 < missed.read_passes < 3.25 and good.read_passes < 2.25
    else:
        assert missed.read_passes == good.read_passes == 1
    a, b = Checkpoint(good.output), Checkpoint(missed.output)
    assert all(torch.equal(a[n], b[n]) for n in a)
    want = in_memory(gpt2_dir, "ties", params)
    assert all(torch.equal(b[n], want[n]) for n in want)


def test_a_file_cut_short_is_named(tmp_path):
    """A safetensors file truncated before it is opened, or after (while a merge reads it), gives an error
    that names the file (and the tensor)."""
    st.save_file({"a": torch.randn(100, 10), "b": torch.randn(7)}, tmp_path / "m.safetensors")
    opened = Checkpoint(tmp_path / "m.safetensors")
    os.truncate(tmp_path / "m.safetensors", os.path.getsize(tmp_path / "m.safetensors") - 40)
    with pytest.raises(ValueError, match=r"m\.safetensors: not a readable safetensors file"):
        Checkpoint(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=r"m\.safetensors: ends before the bytes of tensor '.'"):
        for n in opened:
            opened.read(n)


def test_masks_saved_bitpacked_and_reused(gpt2_dir, tmp_path):
    params = {"density": 0.05}
    first = merge(recipe_file(gpt2_dir, "localize_stitch", params, masks={"save": str(tmp_path / "masks")}),
                  tmp_path / "a", progress=False)
    assert len(first.masks) == 3
    base = load_all(Checkpoint(gpt2_dir / "base"))
    tau = lsedu.TaskVector.from_models(base, load_all(Checkpoint(gpt2_dir / "ft1")))
    saved = load_masks(first.masks[1])
    expected = lsedu.localize_dataless(tau, 0.05)
    assert all(torch.equal(saved[n], expected[n]) for n in expected)
    n_entries = sum(m.numel() for m in expected.values())
    assert first.masks[1].stat().st_size < n_entries / 8 + 20_000  # one bit an entry, plus the header
    second = merge(recipe_file(gpt2_dir, "localize_stitch", params,
                               masks={"load": [str(p) for p in first.masks]}), tmp_path / "b", progress=False)
    assert second.read_passes == 1
    a, b = Checkpoint(first.output), Checkpoint(second.output)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_save_and_load_masks_roundtrip(tmp_path):
    g = torch.Generator().manual_seed(0)
    mask = {"a": torch.rand(3, 5, generator=g) > 0.5, "b": torch.rand(17, generator=g) > 0.9}
    path = save_masks(mask, tmp_path / "m.safetensors", note="x")
    back = load_masks(path)
    assert all(torch.equal(back[n], mask[n]) for n in mask)
    with pytest.raises(TypeError, match=r"mask\['a'\] must be a torch.bool"):
        save_masks({"a": torch.ones(2)}, tmp_path / "bad.safetensors")
    st.save_file({"a": torch.ones(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="not an lsedu mask file"):
        load_masks(tmp_path / "plain.safetensors")


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "refused"])
def test_checkpoint_reads_whole_tensors_and_rows_exactly(tmp_path, monkeypatch, direct):
    """Checkpoint.read (preadv, O_DIRECT for big reads, into a reused buffer) gives what safetensors gives,
    for any dtype and offset, whether the file system takes O_DIRECT or refuses it."""
    g = torch.Generator().manual_seed(0)
    sd = {"a": torch.randn(3, 5, generator=g).to(torch.bfloat16), "b": torch.randn(7, 3, generator=g),
          "c": torch.randint(0, 9, (5,), generator=g), "d": torch.randn(2000, 3, generator=g).to(torch.float16),
          "e": torch.randn(()), "f": torch.randn(0, 4)}
    st.save_file(sd, tmp_path / "m.safetensors")
    monkeypatch.setattr(lsedu.merge.io, "DIRECT_MIN_BYTES", 0)
    if not direct:
        real_open = os.open
        monkeypatch.setattr(lsedu.merge.io.os, "open", lambda f, flags, *a: (
            (_ for _ in ()).throw(OSError(22, "no O_DIRECT here")) if flags & getattr(os, "O_DIRECT", 0)
            else real_open(f, flags, *a)))
    ckpt = Checkpoint(tmp_path / "m.safetensors")
    ckpt.direct = True
    buf = torch.empty(1 << 16, dtype=torch.uint8)
    # The span's pages may need all the slack: a buffer that starts one byte past a page.
    odd = torch.empty(1 << 16, dtype=torch.uint8)
    odd = odd[(-odd.data_ptr()) % 4096 + 1 :]
    for n, t in sd.items():
        assert torch.equal(ckpt.read(n), t) and torch.equal(ckpt.read(n, into=buf), t), n
        assert torch.equal(ckpt.read(n, into=odd), t), n
        if t.dim() and len(t) > 2:
            assert torch.equal(ckpt.read(n, (1, 3), into=buf), t[1:3]), n
    assert ckpt.part_nbytes("d", (10, 20)) == 10 * 3 * 2
    if direct:
        assert all(fd is not None for fd in ckpt._fds.values())  # O_DIRECT was never given up


def test_inputs_larger_than_memory_are_read_past_the_page_cache(gpt2_dir, tmp_path, monkeypatch):
    """When the inputs would not fit in the page cache, blocks are read with O_DIRECT: same result."""
    params = {"density": 0.2, "lambda": 0.9}
    cached = merge(recipe_file(gpt2_dir, "ties", params), tmp_path / "cached", progress=False)
    monkeypatch.setattr(lsedu.merge.io, "DIRECT_MIN_BYTES", 0)
    monkeypatch.setattr(lsedu.merge.run.psutil, "virtual_memory", lambda: type("M", (), {"available": 1000})())
    direct_reads = []
    real = lsedu.merge.io.Checkpoint._read_direct
    monkeypatch.setattr(lsedu.merge.io.Checkpoint, "_read_direct",
                        lambda self, *a: direct_reads.append(real(self, *a)) or direct_reads[-1])
    direct = merge(recipe_file(gpt2_dir, "ties", params), tmp_path / "direct", progress=False)
    assert direct_reads and all(r is not None for r in direct_reads)  # every one went past the page cache
    a, b = Checkpoint(cached.output), Checkpoint(direct.output)
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("shard", [40_000, 10**9], ids=["shards", "one-file"])
def test_direct_writes_give_the_same_bytes(tmp_path, shard):
    """ShardedWriter with O_DIRECT (staged, page-padded, cut to size) writes the very bytes of a buffered write."""
    from lsedu.merge.io import ShardedWriter, _DirectFile

    g = torch.Generator().manual_seed(0)
    sd = {f"t{i}": torch.randn(int(n), generator=g) for i, n in enumerate([1, 5000, 777, 4096, 12_345, 3])}
    sd["half"] = torch.randn(3, 333, generator=g).half()
    layout = [(n, tuple(t.shape), t.dtype) for n, t in sd.items()]
    for direct in (False, True):
        w = ShardedWriter(tmp_path / str(direct), layout, max_shard_bytes=shard, direct=direct)
        (tmp_path / str(direct)).mkdir()
        for n, t in sd.items():
            w.write(n, t)
        w.close()
    plain, direct = sha(tmp_path / "False"), sha(tmp_path / "True")
    assert plain == direct and len(plain) == (1 if shard > 10**6 else 4)  # 3 shards and the index
    assert _DirectFile.open(tmp_path / "probe") is not None  # O_DIRECT really was used here
    back = Checkpoint(tmp_path / "True")
    assert all(torch.equal(back[n], t) for n, t in sd.items())


def test_pickled_checkpoints_load_with_weights_only(tmp_path):
    sd = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    torch.save(sd, tmp_path / "model.bin")
    ckpt = Checkpoint(tmp_path / "model.bin")
    assert torch.equal(ckpt["w"], sd["w"]) and ckpt.shape("b") == (3,)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"w": Evil()}, tmp_path / "evil.bin", _use_new_zipfile_serialization=True)
    with pytest.raises(ValueError, match=r"evil\.bin: could not be loaded with torch.load\(weights_only=True\)"):
        Checkpoint(tmp_path / "evil.bin")


# --- bad input: a clear error naming the tensor and the file, and nothing written --------------------------
def make_pair(root: Path, base: dict, ft: dict):
    (root / "base").mkdir(parents=True, exist_ok=True)
    (root / "ft0").mkdir(exist_ok=True)
    st.save_file(base, root / "base" / "model.safetensors")
    st.save_file(ft, root / "ft0" / "model.safetensors")
    r = {"merge_method": "ties", "base_model": "base", "models": ["ft0"], "output": "out"}
    (root / "r.yaml").write_text(yaml.safe_dump(r))
    return root / "r.yaml"


BASE = {"h.0.w": torch.ones(4, 3), "h.1.w": torch.ones(3)}
BAD_INPUTS = [
    ("missing", {"h.0.w": torch.ones(4, 3)}, r"tensor 'h\.1\.w' is in the base .*base.*model\.safetensors.* but not in .*ft0"),
    ("extra", {**BASE, "x": torch.ones(1)}, r"tensor 'x' is in .*ft0.*model\.safetensors but not in the base"),
    ("shape", {"h.0.w": torch.ones(3, 4), "h.1.w": torch.ones(3)},
     r"shape mismatch at tensor 'h\.0\.w': \(4, 3\) in .*base.*, \(3, 4\) in .*ft0"),
    ("dtype", {"h.0.w": torch.ones(4, 3), "h.1.w": torch.ones(3, dtype=torch.float16)},
     r"dtype mismatch at tensor 'h\.1\.w': torch\.float32 in .*base.*, torch\.float16 in .*ft0"),
    ("nan", {"h.0.w": torch.ones(4, 3), "h.1.w": torch.tensor([1.0, float("nan"), 1.0])},
     r"tensor 'h\.1\.w' in .*ft0.*model\.safetensors has 1 non-finite"),
]


@pytest.mark.parametrize(("ft", "match"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_checkpoints_are_named_and_nothing_is_written(tmp_path, ft, match):
    recipe = make_pair(tmp_path, BASE, ft)
    with pytest.raises(ValueError, match=match):
        merge(recipe, progress=False)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))  # no temporary folder left behind


BAD_RECIPES = [
    ({"merge_method": "tie"}, ValueError, r"merge_method must be one of"),
    ({"methd": "ties"}, ValueError, r"unknown field\(s\) \['methd'\]"),
    ({"parameters": {"density": 0}}, ValueError, r"parameters\.density must be a finite number in \(0, 1\], got 0"),
    ({"parameters": {"density": 0.2, "p": 0.5}}, ValueError, r"parameters \['p'\] do not apply to merge_method 'ties'"),
    ({"parameters": {"trim": "layer"}}, ValueError,
     r"parameters\.trim must be one of \['global', 'per_tensor'\], got 'layer'"),
    ({"merge_method": "dare", "parameters": {"p": 1.0}}, ValueError, r"parameters\.p must be a finite number in \[0, 1\), got 1\.0"),
    ({"parameters": {"lambda": 1.0, "lam": 0.5}}, ValueError, r"parameters gives lam twice, as \['lam', 'lambda'\]"),
    ({"merge_method": "dare", "parameters": {"seed": "0"}}, ValueError, r"parameters\.seed must be an int, got '0'"),
    ({"merge_method": "stitch_trained"}, ValueError,
     r"merge_method 'stitch_trained' cannot run from a recipe: it trains each task's mask on labeled examples"),
    ({"copy_files": "no"}, TypeError, r"r\.yaml: copy_files must be True or False, got 'no'"),
    ({"models": []}, ValueError, r"models is empty"),
    ({"models": [{"model": "ft0", "parameters": {"density": 0.5}}]}, ValueError, r"models\[0\]\.parameters"),
    ({"base_model": "nowhere"}, FileNotFoundError, r"checkpoint not found: .*nowhere"),
    ({"shard_size": "lots"}, ValueError, r"shard_size must be a size"),
    ({"masks": {"save": "m"}}, ValueError, r"masks: save/load applies to merge_method 'localize_stitch' only"),
    ({"include": ["nothing.*"]}, ValueError, r"include pattern 'nothing\.\*' matches no parameter"),
    ({"output": None}, ValueError, r"no output folder"),
]


@pytest.mark.parametrize(("change", "exc", "match"), BAD_RECIPES, ids=[str(c[0]) for c in BAD_RECIPES])
def test_bad_recipes(tmp_path, change, exc, match):
    recipe = make_pair(tmp_path, BASE, {k: v + 1 for k, v in BASE.items()})
    raw = {**yaml.safe_load(recipe.read_text()), **change}
    recipe.write_text(yaml.safe_dump(raw))
    with pytest.raises(exc, match=match):
        merge(recipe, progress=False)
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_an_input_or_an_existing_output(tmp_path):
    recipe = make_pair(tmp_path, BASE, {k: v + 1 for k, v in BASE.items()})
    with pytest.raises(ValueError, match=r"would overwrite the input"):
        merge(recipe, tmp_path / "ft0", progress=False, overwrite=True)
    with pytest.raises(ValueError, match=r"would overwrite the input"):
        merge(recipe, tmp_path, progress=False, overwrite=True)
    merge(recipe, progress=False)
    with pytest.raises(FileExistsError, match=r"already exists; remove it or pass --overwrite"):
        merge(recipe, progress=False)
    merge(recipe, progress=False, overwrite=True)
    out = Checkpoint(tmp_path / "out")  # TIES at density 0.2 keeps 3 of the 15 entries of tau = 1
    assert sum(float(out[n].sum()) for n in out) == 15 + 3


def test_cli_reports_errors_without_a_traceback(tmp_path):
    recipe = make_pair(tmp_path, BASE, {"h.0.w": torch.ones(3, 4), "h.1.w": torch.ones(3)})
    run = subprocess.run([sys.executable, "-m", "lsedu.cli", "merge", str(recipe), "--no-progress"],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "lsedu merge: error: shape mismatch at tensor 'h.0.w'" in run.stderr
    assert "Traceback" not in run.stderr


def test_killed_merge_leaves_no_partial_output(tmp_path):
    """SIGKILL in the middle of the merge: nothing appears under the output's name, and a rerun works."""
    g = torch.Generator().manual_seed(0)
    big = {f"layer.{i}.w": torch.randn(1000, 1000, generator=g) for i in range(24)}  # 96 MB a model
    (tmp_path / "base").mkdir()
    st.save_file(big, tmp_path / "base" / "model.safetensors")
    for j in range(2):
        (tmp_path / f"ft{j}").mkdir()
        st.save_file({n: t + 0.01 * j + 0.01 for n, t in big.items()}, tmp_path / f"ft{j}" / "model.safetensors")
    r = {"merge_method": "ties", "base_model": "base", "models": ["ft0", "ft1"], "output": "out",
         "parameters": {"density": 0.2}, "shard_size": "8MB"}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
    proc = subprocess.Popen([sys.executable, "-m", "lsedu.cli", "merge", str(tmp_path / "r.yaml"), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    shard = None
    while time.time() < deadline and proc.poll() is None:  # wait for the output's first shard to be written
        found = list(tmp_path.glob(".out.tmp-*/model-00002-of-*.safetensors"))
        if found:
            shard = found[0]
            break
        time.sleep(0.01)
    assert shard is not None, "the merge finished or failed before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out").exists()  # the partial output only ever lived under a temporary name
    report = merge(tmp_path / "r.yaml", progress=False)  # a rerun cleans up after the dead process
    assert (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
    assert len(Checkpoint(report.output)) == len(big)


def test_per_tensor_ties_agrees_with_mergekit(gpt2_dir, tmp_path):
    """Where the definitions coincide (per-tensor trim, weights 1, normalize, density * numel whole), the
    results agree. They differ elsewhere: mergekit keeps int(density * n) entries, lsedu round(density * n),
    and where the trimmed values sum to exactly 0 mergekit elects +1 and lsedu elects no sign."""
    import mergekit.config as mergekit_config  # in the test extra: never skipped
    import mergekit.merge as mergekit_merge
    density = 0.5  # every tensor of this GPT-2 has an even number of entries
    config = mergekit_config.MergeConfiguration.model_validate({
        "merge_method": "ties",
        "base_model": str(gpt2_dir / "base"),
        "models": [{"model": str(gpt2_dir / f"ft{i}"), "parameters": {"weight": 1.0, "density": density}}
                   for i in range(3)],
        "parameters": {"normalize": True},
        "dtype": "float32",
    })
    options = mergekit_merge.MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True)
    mergekit_merge.run_merge(config, str(tmp_path / "mergekit"), options=options)
    ours = merge(recipe_file(gpt2_dir, "ties", {"density": density, "trim": "per_tensor"}), tmp_path / "ours",
                 progress=False)
    theirs, mine = Checkpoint(tmp_path / "mergekit"), Checkpoint(ours.output)
    common = [n for n in mine if n in theirs]
    assert len(common) >= len(mine) - 1  # mergekit may drop the tied lm_head
    for n in common:
        torch.testing.assert_close(theirs[n], mine[n], rtol=1e-6, atol=1e-7, msg=n)


def test_recipe_paths_are_relative_to_the_recipe(gpt2_dir):
    r = load_recipe(recipe_file(gpt2_dir, "ties", {"density": 0.2}))
    assert r.base_model == gpt2_dir / "base" and r.models[2] == gpt2_dir / "ft2"
    assert r.parameters == {"density": 0.2, "lam": 1.0, "trim_scope": "global"}  # keywords; the registry's defaults


def test_every_output_carries_a_model_card(gpt2_dir, tmp_path):
    """README.md and lsedu_merge.json: the recipe, each input file with its sha256, the versions, time and memory."""
    report = merge(recipe_file(gpt2_dir, "ties", {"density": 0.3, "lambda": 0.8}), tmp_path / "carded", progress=False)
    record = json.loads((report.output / "lsedu_merge.json").read_text())
    want = {role: {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in Checkpoint(gpt2_dir / d).files()}
            for role, d in [("base_model", "base")] + [(f"models[{i}]", f"ft{i}") for i in range(3)]}
    assert record["inputs"] == want
    assert len(record["inputs"]["models[0]"]) > 1  # a sharded input: every shard is hashed
    assert record["merge_method"] == "ties" and record["parameters"]["lam"] == 0.8
    assert record["lsedu_version"] == lsedu.__version__ and record["torch_version"] == torch.__version__
    assert 0 < record["seconds"] <= report.seconds and record["peak_memory_bytes"] > 10 * 2**20
    card = (report.output / "README.md").read_text()
    assert card.startswith("---\nbase_model:") and "tags:\n- merge\n- lsedu" in card
    assert f"lsedu {lsedu.__version__}" in card and "**ties**" in card and "| `lam` | `0.8` |" in card
    for files in want.values():
        for f, sha in files.items():
            assert f"| `{f}` | `{sha}` |" in card
    recipe = yaml.safe_load(card.split("```yaml\n")[1].split("```")[0])
    assert recipe["merge_method"] == "ties" and recipe["parameters"]["density"] == 0.3
