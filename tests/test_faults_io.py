"""The fault suite of ``lsedu merge``'s files: checkpoints, indexes, mask files and recipes.

In the style of tests/test_faults.py, every case asserts three things: the
error is one line that names its culprit (the file, tensor or recipe key),
no traceback reaches the user, and nothing was lost or left behind (every
input file hashes the same before and after, and neither the output folder
nor its hidden temporary folder exists). Checkpoint and mask faults are
driven through the Python API and through ``lsedu merge``; recipe faults
through ``lsedu merge``, whose errors go to stderr as
``lsedu merge: error: <message>`` with exit status 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch as st
import torch
import yaml

from lsedu.cli import main
from lsedu.merge import Checkpoint, load_masks, merge, save_masks
from lsedu.merge.recipe import parse_size, select_tensors

ROOT = Path(__file__).resolve().parents[1]
BASE = {"h.0.w": torch.arange(12.0).reshape(4, 3), "h.1.w": torch.ones(3)}
FT = {n: t + 1 for n, t in BASE.items()}
RECIPE = {"merge_method": "ties", "base_model": "base", "models": ["ft0"], "output": "out"}
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NOT_AS_ROOT = pytest.mark.skipif(AS_ROOT, reason="root reads files whatever their permissions")


# ----------------------------------------------------------------------------- helpers


def pair(root: Path, change: dict | None = None, **changes) -> Path:
    """A base and one fine-tune as safetensors folders, and ``r.yaml`` (RECIPE with the changes); the recipe's path."""
    change = {**(change or {}), **changes}
    for name, sd in (("base", BASE), ("ft0", FT)):
        (root / name).mkdir(parents=True, exist_ok=True)
        st.save_file(sd, root / name / "model.safetensors")
    recipe = root / "r.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, **change}))
    return recipe


def hashes(root: Path) -> dict[str, str]:
    """Every file under ``root`` (permissions allowing) and its sha256."""
    out = {}
    for f in sorted(root.rglob("*")):
        if f.is_file() and os.access(f, os.R_OK):
            out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def nothing_left(root: Path, before: dict[str, str]) -> None:
    """The inputs under ``root`` are unchanged, and no output, mask folder or temporary folder was written."""
    assert hashes(root) == before, "an input was modified, or a file was written"
    assert not (root / "out").exists()
    assert not list(root.glob(".*.tmp-*")) and not list(root.glob(".*.old-*")), "a temporary folder was left"


def raises_naming(exc, culprit: str, root: Path, fn, *args) -> str:
    """``fn(*args)`` raises ``exc`` with a one-line message matching ``culprit``; nothing under ``root`` changes."""
    before = hashes(root)
    with pytest.raises(exc) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message, message
    assert re.search(culprit, message), f"{culprit!r} not in {message!r}"
    nothing_left(root, before)
    return message


def cli_fails(capsys, recipe: Path, culprit: str, root: Path | None = None) -> str:
    """``lsedu merge RECIPE`` exits 2 with one stderr line ``lsedu merge: error: ...`` naming ``culprit``."""
    root = root or recipe.parent
    before = hashes(root)
    capsys.readouterr()
    status = main(["merge", str(recipe), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lsedu merge: error: "), err
    assert re.search(culprit, lines[0]), f"{culprit!r} not in {lines[0]!r}"
    nothing_left(root, before)
    return lines[0]


def cli_merges(capsys, recipe: Path) -> Path:
    capsys.readouterr()
    status = main(["merge", str(recipe), "--no-progress"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return recipe.parent / "out"


# ----------------------------------------------------------------------------- checkpoints


def _pickled(sd) -> callable:
    def make(root: Path) -> Path:
        torch.save(sd, root / "ft.bin")
        return root / "ft.bin"
    return make


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def _pickled_code(root: Path) -> Path:
    """A zip-format torch checkpoint whose pickle calls a function on load (weights_only must refuse it)."""
    torch.save({"h.0.w": FT["h.0.w"], "evil": _Evil()}, root / "ft.bin")
    return root / "ft.bin"


def _raw(data: bytes, name: str = "ft.safetensors") -> callable:
    def make(root: Path) -> Path:
        (root / name).write_bytes(data)
        return root / name
    return make


def _safetensors_bytes(sd=FT, edit=None) -> bytes:
    """FT as safetensors bytes, its header changed by ``edit(header)`` (kept a valid length)."""
    raw = st.save(sd)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    if edit is None:
        return raw
    edit(header)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + raw[8 + n :]


def _lie(header):  # the last tensor's bytes end a megabyte past the end of the file
    header["h.1.w"]["data_offsets"] = [header["h.1.w"]["data_offsets"][0], 1 << 20]
    header["h.1.w"]["shape"] = [(1 << 20) // 4 - 12]


UNSTORABLE = [d for d in ("complex64", "complex128", "uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2")
              if hasattr(torch, d)]

BAD_CHECKPOINTS = [
    *[(f"pickled-{d}", _pickled({**FT, "h.1.w": torch.ones(3).to(getattr(torch, d))}),
       rf"ft\.bin: tensor 'h\.1\.w' has dtype {d}, which lsedu cannot store \(it stores float64, float32.*bool\)")
      for d in UNSTORABLE],
    ("pickled-int-entry", _pickled({**FT, "step": 3}), r"ft\.bin: entry 'step' is a int, not a tensor"),
    ("pickled-int-key", _pickled({**FT, 7: torch.ones(1)}), r"ft\.bin: the state dict has a key 7 \(int\)"),
    ("pickled-sparse", _pickled({**FT, "h.1.w": torch.ones(3).to_sparse()}),
     r"ft\.bin: tensor 'h\.1\.w' is a sparse_coo tensor"),
    ("pickled-meta", _pickled({**FT, "h.1.w": torch.empty(3, device="meta")}), r"ft\.bin: tensor 'h\.1\.w' is a meta"),
    ("pickled-list", _pickled([FT["h.0.w"]]), r"ft\.bin: does not hold a state dict .* but a list"),
    ("pickled-garbage", _raw(b"not a pickle at all", "ft.bin"),
     r"ft\.bin: could not be loaded with torch\.load\(weights_only=True\) \(the weights-only "
     r"unpickler refused it: Unsupported operand"),
    ("pickled-code", _raw(pickle.dumps(os.getcwd), "ft.bin"), r"ft\.bin: could not be loaded .*\(the weights-only "
     r"unpickler refused it: .*; lsedu never runs code from a checkpoint"),
    ("pickled-code-zip", _pickled_code, r"ft\.bin: could not be loaded .* refused it: .*GLOBAL posix\.getcwd"),
    ("safetensors-float8", lambda root: (st.save_file({**FT, "h.1.w": torch.ones(3).to(torch.float8_e4m3fn)},
                                                      root / "ft.safetensors"), root / "ft.safetensors")[1],
     r"ft\.safetensors: tensor 'h\.1\.w' has dtype F8_E4M3, which lsedu does not merge \(it reads F64, F32"),
    ("zero-bytes", _raw(b""), r"ft\.safetensors: the checkpoint file is empty \(0 bytes\)"),
    ("three-bytes", _raw(b"abc"), r"ft\.safetensors: not a readable safetensors file \(.*header too small"),
    ("truncated-header", _raw(_safetensors_bytes()[:40]), r"ft\.safetensors: not a readable safetensors file"),
    ("truncated-data", _raw(_safetensors_bytes()[:-4]), r"ft\.safetensors: not a readable safetensors file"),
    ("offsets-past-the-end", _raw(_safetensors_bytes(edit=_lie)), r"ft\.safetensors: not a readable safetensors"),
    ("header-not-json", _raw(struct.pack("<Q", 8) + b"{{{{{{{{" + b"\0" * 16),
     r"ft\.safetensors: not a readable safetensors file"),
    ("wrong-suffix", _raw(b"x" * 16, "ft.txt"), r"ft\.txt: not a checkpoint"),
    ("empty-folder", lambda root: (root / "ftdir").mkdir() or root / "ftdir",
     r"ftdir: no checkpoint found in this folder"),
    ("folder-named-model.safetensors", lambda root: (root / "m").mkdir() or (root / "m" / "model.safetensors").mkdir()
     or root / "m", r"model\.safetensors: the checkpoint file is a folder, not a file"),
]


@pytest.mark.parametrize(("make", "culprit"), [c[1:] for c in BAD_CHECKPOINTS], ids=[c[0] for c in BAD_CHECKPOINTS])
def test_bad_checkpoints_are_refused_at_open(tmp_path, make, culprit):
    path = make(tmp_path)
    raises_naming(ValueError, culprit, tmp_path, Checkpoint, path)


@pytest.mark.parametrize(("make", "culprit"), [c[1:] for c in BAD_CHECKPOINTS[:3] + BAD_CHECKPOINTS[-8:]],
                         ids=[c[0] for c in BAD_CHECKPOINTS[:3] + BAD_CHECKPOINTS[-8:]])
def test_bad_checkpoints_through_the_cli(tmp_path, capsys, make, culprit):
    path = make(tmp_path)
    recipe = pair(tmp_path, models=[path.name])
    cli_fails(capsys, recipe, culprit)


@NOT_AS_ROOT
@pytest.mark.parametrize("what", ["file", "folder"])
def test_unreadable_checkpoints_are_named(tmp_path, capsys, what):
    recipe = pair(tmp_path)
    target = tmp_path / "ft0" / "model.safetensors" if what == "file" else tmp_path / "ft0"
    target.chmod(0)
    try:
        raises_naming(ValueError, r"ft0.*cannot be read \(Permission denied\)", tmp_path, Checkpoint, tmp_path / "ft0")
        cli_fails(capsys, recipe, r"ft0.*cannot be read \(Permission denied\)")
    finally:
        target.chmod(0o755 if what == "folder" else 0o644)


def test_a_permission_error_is_named_even_as_root(tmp_path, capsys, monkeypatch):
    """As root, chmod denies nothing: the refusal is simulated where lsedu opens the file."""
    import lsedu.merge.io as io

    recipe = pair(tmp_path)
    denied = tmp_path / "ft0" / "model.safetensors"

    def fake_open(f, *args, **kwargs):
        if Path(f) == denied:
            raise PermissionError(13, "Permission denied", str(f))
        return open(f, *args, **kwargs)

    monkeypatch.setattr(io, "open", fake_open, raising=False)
    culprit = r"ft0/model\.safetensors: the checkpoint file cannot be read \(Permission denied\)"
    raises_naming(ValueError, culprit, tmp_path, Checkpoint, tmp_path / "ft0")
    cli_fails(capsys, recipe, culprit)


def test_pickled_parameters_are_read_as_tensors(tmp_path, capsys):
    """``torch.load(weights_only=True)`` of a saved module's parameters gives ``nn.Parameter``s: they merge."""
    params = {n: torch.nn.Parameter(t.clone()) for n, t in FT.items()}
    torch.save(params, tmp_path / "ft.bin")
    ckpt = Checkpoint(tmp_path / "ft.bin")
    assert all(type(ckpt[n]) is torch.Tensor and torch.equal(ckpt[n], FT[n]) for n in FT)
    out = cli_merges(capsys, pair(tmp_path, models=["ft.bin"], merge_method="average"))
    merged = Checkpoint(out)
    assert all(torch.equal(merged[n], FT[n]) for n in BASE)  # the average of the fine-tunes


def test_legacy_pickles_load_without_mmap(tmp_path):
    """A ``.bin`` in torch's pre-1.6 format cannot be memory-mapped: it is loaded whole, not refused."""
    torch.save(FT, tmp_path / "ft.bin", _use_new_zipfile_serialization=False)
    ckpt = Checkpoint(tmp_path / "ft.bin")
    assert all(torch.equal(ckpt[n], FT[n]) for n in FT)


# ----------------------------------------------------------------------------- indexes of sharded checkpoints


def _index(weight_map, text: str | bytes | None = None, shards=True) -> callable:
    """A folder ``ft`` with two shards and ``model.safetensors.index.json`` holding ``weight_map`` (or ``text``)."""
    def make(root: Path) -> Path:
        folder = root / "ft"
        folder.mkdir()
        if shards:
            st.save_file({"h.0.w": FT["h.0.w"]}, folder / "a.safetensors")
            st.save_file({"h.1.w": FT["h.1.w"]}, folder / "b.safetensors")
        index = folder / "model.safetensors.index.json"
        body = text if text is not None else json.dumps({"metadata": {}, "weight_map": weight_map})
        index.write_bytes(body if isinstance(body, bytes) else body.encode())
        return folder
    return make


def _outside(root: Path) -> Path:
    st.save_file({"h.1.w": FT["h.1.w"]}, root / "outside.safetensors")
    return _index({"h.0.w": "a.safetensors", "h.1.w": "../outside.safetensors"})(root)


def _shard_folder(root: Path) -> Path:
    folder = _index({"h.0.w": "a.safetensors", "h.1.w": "sub"})(root)
    (folder / "sub").mkdir()
    return folder


def _two_shards(root: Path) -> Path:
    folder = _index({"h.0.w": "a.safetensors", "h.1.w": "b.safetensors"})(root)
    st.save_file(FT, folder / "a.safetensors")  # a holds h.1.w too
    return folder


def _index_folder(root: Path) -> Path:
    (root / "ft").mkdir()
    st.save_file(FT, root / "ft" / "model.safetensors")
    (root / "ft" / "model.safetensors.index.json").mkdir()
    return root / "ft"


GOOD_MAP = {"h.0.w": "a.safetensors", "h.1.w": "b.safetensors"}
IDX = r"ft/model\.safetensors\.index\.json"
BAD_INDEXES = [
    ("weight_map-list", _index(["a.safetensors", "b.safetensors"]), rf"{IDX}: not a valid checkpoint index .*got "
                                                                     r"weight_map \['a"),
    ("weight_map-string", _index("a.safetensors"), rf"{IDX}: not a valid checkpoint index .*weight_map 'a"),
    ("weight_map-null", _index(None), rf"{IDX}: not a valid checkpoint index .*weight_map None"),
    ("weight_map-empty", _index({}), rf"{IDX}: not a valid checkpoint index .*weight_map \{{\}}"),
    ("no-weight_map", _index(None, text='{"metadata": {}}'), rf"{IDX}: not a valid checkpoint index .*no 'weight_map'"),
    ("index-a-list", _index(None, text="[1, 2]"), rf"{IDX}: not a valid checkpoint index .*got list"),
    ("index-not-json", _index(None, text="{weight_map: "), rf"{IDX}: not a valid checkpoint index \(Expecting"),
    ("index-not-utf8", _index(None, text=b"\xff\xfe{}"), rf"{IDX}: not a valid checkpoint index \('utf-8' codec"),
    ("index-empty", _index(None, text=""), rf"{IDX}: the checkpoint index is empty"),
    ("shard-an-int", _index({"h.0.w": "a.safetensors", "h.1.w": 3}), rf"{IDX}: weight_map\['h\.1\.w'\] must be a "
                                                                     r"shard's file name, got 3 \(int\)"),
    ("shard-null", _index({"h.0.w": "a.safetensors", "h.1.w": None}), rf"{IDX}: weight_map\['h\.1\.w'\] must be"),
    ("shard-outside", _outside, rf"{IDX}: weight_map\['h\.1\.w'\] names '\.\./outside\.safetensors', which is not a "
                                r"file inside the index's folder"),
    ("shard-absolute", _index({"h.0.w": "a.safetensors", "h.1.w": "/etc/passwd"}),
     rf"{IDX}: weight_map\['h\.1\.w'\] names '/etc/passwd', which is not a file inside"),
    ("shard-a-folder", _shard_folder, rf"{IDX} lists the shard sub, which is a folder"),
    ("shard-missing", _index({"h.0.w": "a.safetensors", "h.1.w": "c.safetensors"}),
     rf"{IDX} lists the shard c\.safetensors, which is missing"),
    ("shard-not-a-checkpoint", _index({"h.0.w": "a.safetensors", "h.1.w": "notes.txt"}),
     rf"{IDX} lists the shard notes\.txt, which is not a \.safetensors or \.bin file"),
    ("stale-entry", _index({"h.0.w": "a.safetensors", "h.1.w": "a.safetensors"}),
     rf"{IDX}: weight_map puts tensor 'h\.1\.w' in a\.safetensors, but it is in no shard"),
    ("stale-entry-other-shard", _index({"h.0.w": "b.safetensors", "h.1.w": "b.safetensors", "x": "a.safetensors"}),
     rf"{IDX}: weight_map puts tensor 'h\.0\.w' in b\.safetensors, but it is in a\.safetensors"),
    ("shard-the-folder-itself", _index({"h.0.w": "a.safetensors", "h.1.w": "."}),
     rf"{IDX}: weight_map\['h\.1\.w'\] names '\.', which is not a file inside"),
    ("tensor-in-two-shards", _two_shards,
     r"tensor 'h\.1\.w' appears twice: in .*a\.safetensors and in .*b\.safetensors"),
    ("index-a-folder", _index_folder, r"ft/model\.safetensors\.index\.json: the checkpoint index is a folder"),
]


@pytest.mark.parametrize(("make", "culprit"), [c[1:] for c in BAD_INDEXES], ids=[c[0] for c in BAD_INDEXES])
def test_bad_indexes_are_named(tmp_path, capsys, make, culprit):
    folder = make(tmp_path)
    exc = FileNotFoundError if "missing" in culprit else ValueError
    raises_naming(exc, culprit, tmp_path, Checkpoint, folder)
    cli_fails(capsys, pair(tmp_path, models=[folder.name]), culprit)


def test_a_good_index_and_symlinked_shards_are_read(tmp_path):
    """Shards that are symlinks (as in the Hugging Face cache, whose snapshots link to blobs/) are inside the folder."""
    folder = _index(GOOD_MAP)(tmp_path)
    (tmp_path / "blobs").mkdir()
    os.replace(folder / "b.safetensors", tmp_path / "blobs" / "b")
    (folder / "b.safetensors").symlink_to(tmp_path / "blobs" / "b")
    ckpt = Checkpoint(folder)
    assert all(torch.equal(ckpt[n], FT[n]) for n in FT)


# ----------------------------------------------------------------------------- mask files


def _mask_file(root: Path, tensors=None, meta=None) -> Path:
    """A mask file for BASE's shapes, its tensors or metadata changed."""
    shapes = {n: list(t.shape) for n, t in BASE.items()}
    packed = {n: torch.from_numpy(np.packbits(np.ones(t.numel(), dtype=np.uint8))) for n, t in BASE.items()}
    meta = {"lsedu_mask": "packbits", "shapes": json.dumps(shapes), **(meta or {})}
    meta = {k: v for k, v in meta.items() if v is not None}
    tensors = {**packed, **(tensors or {})}
    path = root / "mask.safetensors"
    st.save_file({k: v for k, v in tensors.items() if v is not None}, path, metadata=meta)
    return path


def _mask(tensors=None, meta=None):
    return lambda root: _mask_file(root, tensors, meta)


MASKF = r"mask file .*mask\.safetensors"
BAD_MASKS = [
    ("short-data", _mask({"h.0.w": torch.zeros(1, dtype=torch.uint8)}),
     rf"{MASKF}: tensor 'h\.0\.w' holds 1 bytes, its shape \(4, 3\) needs 2"),
    ("long-data", _mask({"h.1.w": torch.zeros(5, dtype=torch.uint8)}),
     rf"{MASKF}: tensor 'h\.1\.w' holds 5 bytes, its shape \(3,\) needs 1"),
    ("missing-tensor", _mask({"h.1.w": None}),
     rf"{MASKF}: tensor 'h\.1\.w' is listed in its 'shapes' metadata but missing"),
    ("extra-tensor", _mask({"x": torch.zeros(1, dtype=torch.uint8)}),
     rf"{MASKF}: tensor 'x' is not listed in its 'shapes' metadata"),
    ("int8-data", _mask({"h.1.w": torch.zeros(1, dtype=torch.int8)}), rf"{MASKF}: tensor 'h\.1\.w' is I8 of shape"),
    ("bool-data", _mask({"h.1.w": torch.ones(3, dtype=torch.bool)}), rf"{MASKF}: tensor 'h\.1\.w' is BOOL"),
    ("2d-data", _mask({"h.0.w": torch.zeros(1, 2, dtype=torch.uint8)}),
     rf"{MASKF}: tensor 'h\.0\.w' is U8 of shape \(1, 2\)"),
    ("no-lsedu-metadata", _mask(meta={"lsedu_mask": None}), r"mask\.safetensors is not an lsedu mask file"),
    ("no-shapes", _mask(meta={"shapes": None}), rf"{MASKF}: its metadata has no 'shapes'"),
    ("shapes-not-json", _mask(meta={"shapes": "{h.0.w: [4, 3]"}), rf"{MASKF}: its 'shapes' metadata is not valid JSON"),
    ("shapes-a-list", _mask(meta={"shapes": "[[4, 3], [3]]"}),
     rf"{MASKF}: its 'shapes' metadata must be a JSON object"),
    ("shape-negative", _mask(meta={"shapes": json.dumps({"h.0.w": [-4, -3], "h.1.w": [3]})}),
     rf"{MASKF}: the shape of tensor 'h\.0\.w' in its 'shapes' metadata must be a list of non-negative ints, got \[-4"),
    ("shape-floats", _mask(meta={"shapes": json.dumps({"h.0.w": [4.0, 3.0], "h.1.w": [3]})}),
     rf"{MASKF}: the shape of tensor 'h\.0\.w'"),
    ("shape-a-string", _mask(meta={"shapes": json.dumps({"h.0.w": "4x3", "h.1.w": [3]})}),
     rf"{MASKF}: the shape of tensor 'h\.0\.w'.*got '4x3'"),
    ("shape-bools", _mask(meta={"shapes": json.dumps({"h.0.w": [True, 3], "h.1.w": [3]})}),
     rf"{MASKF}: the shape of tensor 'h\.0\.w'"),
    ("not-safetensors", _raw(b"\x08" + b"\0" * 7 + b"garbage!", "mask.safetensors"),
     rf"{MASKF}: not a readable safetensors file"),
    ("zero-bytes", _raw(b"", "mask.safetensors"), r"mask\.safetensors: the mask file is empty \(0 bytes\)"),
    ("a-folder", lambda root: (root / "mask.safetensors").mkdir() or root / "mask.safetensors",
     r"mask\.safetensors: the mask file is a folder, not a file"),
]


@pytest.mark.parametrize(("make", "culprit"), [c[1:] for c in BAD_MASKS], ids=[c[0] for c in BAD_MASKS])
def test_bad_mask_files_are_named(tmp_path, make, culprit):
    path = make(tmp_path)
    raises_naming(ValueError, culprit, tmp_path, load_masks, path)


@pytest.mark.parametrize("case", ["short-data", "missing-tensor", "a-folder"])
def test_bad_mask_files_through_the_cli(tmp_path, capsys, case):
    _, make, culprit = next(c for c in BAD_MASKS if c[0] == case)
    make(tmp_path)
    recipe = pair(tmp_path, merge_method="localize_stitch", parameters={"density": 0.5},
                  masks={"load": ["mask.safetensors"]})
    cli_fails(capsys, recipe, culprit)


def test_good_mask_files_round_trip_and_saving_onto_a_folder_is_refused(tmp_path):
    mask = {"a": torch.tensor([[True, False, True], [False, False, True]]), "b": torch.zeros(0, dtype=torch.bool)}
    back = load_masks(save_masks(mask, tmp_path / "m.safetensors"))
    assert all(torch.equal(back[n], mask[n]) for n in mask)
    (tmp_path / "d").mkdir()
    raises_naming(ValueError, r"d: the mask file to save is an existing folder", tmp_path, save_masks, mask,
                  tmp_path / "d")


# ----------------------------------------------------------------------------- recipes


BAD_RECIPES = [
    *[(f"copy_files={v!r}", {"copy_files": v}, rf"r\.yaml: copy_files must be True or False, got {re.escape(repr(v))}")
      for v in ("false", "true", "no", "False", 0, 1, None, [])],
    ("models-a-string", {"models": "ft0"}, r"r\.yaml: models must be a list of \{model: PATH\} entries, got 'ft0'"),
    ("models-a-mapping", {"models": {"model": "ft0"}}, r"r\.yaml: models must be a list"),
    ("models-null", {"models": None}, r"r\.yaml: models must be a list.*None"),
    ("models-empty", {"models": []}, r"r\.yaml: models is empty"),
    ("models-an-int", {"models": [3]}, r"r\.yaml: models\[0\] must be a path, got 3 \(int\)"),
    ("models-weight-true", {"models": [{"model": "ft0", "parameters": {"weight": True}}]},
     r"r\.yaml: models\[0\]\.parameters"),
    ("models-empty-path", {"models": [""]}, r"r\.yaml: models\[0\] must be a path, got an empty string"),
    ("base-null", {"base_model": None}, r"r\.yaml: base_model must be a path, got None"),
    ("masks-save-an-int", {"merge_method": "localize_stitch", "masks": {"save": 3}},
     r"r\.yaml: masks\.save must be a path, got 3"),
    ("masks-save-empty", {"merge_method": "localize_stitch", "masks": {"save": ""}},
     r"r\.yaml: masks\.save must be a path, got an empty string"),
    ("masks-save-a-list", {"merge_method": "localize_stitch", "masks": {"save": ["m"]}},
     r"r\.yaml: masks\.save must be a path, got \['m'\]"),
    ("masks-load-a-string", {"merge_method": "localize_stitch", "masks": {"load": "m.safetensors"}},
     r"r\.yaml: masks\.load must be a non-empty list of mask files, one a model, got 'm\.safetensors'"),
    ("masks-load-empty", {"merge_method": "localize_stitch", "masks": {"load": []}}, r"r\.yaml: masks\.load must be"),
    ("masks-load-a-mapping", {"merge_method": "localize_stitch", "masks": {"load": {"a": "b"}}},
     r"r\.yaml: masks\.load must be"),
    ("masks-load-an-int", {"merge_method": "localize_stitch", "masks": {"load": [7]}},
     r"r\.yaml: masks\.load\[0\] must be a path, got 7"),
    ("masks-a-list", {"merge_method": "localize_stitch", "masks": ["m"]}, r"r\.yaml: masks must be a mapping"),
    ("masks-empty", {"merge_method": "localize_stitch", "masks": {}}, r"r\.yaml: masks must be a mapping"),
    ("masks-unknown-key", {"merge_method": "localize_stitch", "masks": {"store": "m"}},
     r"r\.yaml: masks must be a mapping.*'store'"),
    *[(f"shard_size={v!r}", {"shard_size": v}, rf"r\.yaml: shard_size must be a size.*got {re.escape(repr(v))}")
      for v in (0, -1, "10XB", "0B", "-5MB", "0.1B", "1.2.3GB", "1" * 400, 2**70, True, 1.5, "", [1])],
    ("output-an-int", {"output": 5}, r"r\.yaml: output must be a path, got 5 \(int\)"),
    ("output-a-list", {"output": ["a"]}, r"r\.yaml: output must be a path, got \['a'\]"),
    ("output-false", {"output": False}, r"r\.yaml: output must be a path, got False"),
    ("output-empty", {"output": ""}, r"r\.yaml: output must be a path, got an empty string"),
    ("parameters-a-list", {"parameters": [1]}, r"r\.yaml: parameters must be a mapping, got \[1\]"),
    ("merge_method-an-int", {"merge_method": 3}, r"r\.yaml: merge_method must be a method's name, got 3"),
    ("merge_method-a-list", {"merge_method": ["ties"]}, r"r\.yaml: merge_method must be a method's name"),
    ("include-empty", {"include": []}, r"r\.yaml: include is an empty list"),
    ("exclude-an-int", {"exclude": 3}, r"r\.yaml: exclude must be a glob pattern or a list of them, got 3"),
    ("unknown-int-key", {7: "x", "other": 1}, r"r\.yaml: unknown field\(s\) \['7', 'other'\]"),
]


@pytest.mark.parametrize(("change", "culprit"), [c[1:] for c in BAD_RECIPES], ids=[c[0] for c in BAD_RECIPES])
def test_bad_recipes_are_named(tmp_path, capsys, change, culprit):
    cli_fails(capsys, pair(tmp_path, change), culprit)


def _text(body: bytes) -> callable:
    def make(root: Path) -> Path:
        pair(root)
        (root / "r.yaml").write_bytes(body)
        return root / "r.yaml"
    return make


def _recipe_folder(root: Path) -> Path:
    pair(root)
    (root / "recipe.yaml").mkdir()
    return root / "recipe.yaml"


BAD_RECIPE_FILES = [
    ("a-folder", _recipe_folder, r"recipe\.yaml: the recipe is a folder, not a YAML file"),
    ("missing", lambda root: pair(root).parent / "nowhere.yaml", r"recipe not found: .*nowhere\.yaml"),
    ("not-utf8", _text(b"merge_method: ties\nbase_model: \xff\xfe\n"), r"r\.yaml: the recipe is not UTF-8 text \(byte"),
    ("invalid-yaml", _text(b"merge_method: ties\nmodels: [ft0\n"), r"r\.yaml: not valid YAML \(.* at line \d+, column"),
    ("tab-indented", _text(b"merge_method: ties\n\tmodels: x\n"), r"r\.yaml: not valid YAML"),
    ("a-list", _text(b"- ties\n- base\n"), r"r\.yaml: a recipe is a YAML mapping .*got \['ties'"),
    ("a-string", _text(b"ties\n"), r"r\.yaml: a recipe is a YAML mapping .*got 'ties'"),
    ("empty", _text(b""), r"r\.yaml: a recipe is a YAML mapping .*got None"),
    ("no-models", _text(b"merge_method: ties\nbase_model: base\n"), r"r\.yaml: the recipe has no 'models'"),
]


@pytest.mark.parametrize(("make", "culprit"), [c[1:] for c in BAD_RECIPE_FILES], ids=[c[0] for c in BAD_RECIPE_FILES])
def test_bad_recipe_files_are_named(tmp_path, capsys, make, culprit):
    cli_fails(capsys, make(tmp_path), culprit)


@NOT_AS_ROOT
def test_an_unreadable_recipe_is_named(tmp_path, capsys):
    recipe = pair(tmp_path)
    recipe.chmod(0)
    try:
        cli_fails(capsys, recipe, r"r\.yaml: the recipe cannot be read \(Permission denied\)")
    finally:
        recipe.chmod(0o644)


@pytest.mark.parametrize(("value", "size"), [("2GB", 2 * 10**9), ("1.5GiB", 3 * 2**29), (" 500 mb ", 5 * 10**8),
                                             (1, 1), (2**62, 2**62), (1e9, 10**9), (".5KB", 500)])
def test_good_shard_sizes(value, size):
    assert parse_size(value) == size


def test_yaml_booleans_are_booleans(tmp_path, capsys):
    """``copy_files: no`` (YAML 1.1's false, as PyYAML reads it) copies nothing; ``copy_files: "no"`` is refused."""
    recipe = pair(tmp_path)
    (tmp_path / "base" / "config.json").write_text("{}")
    recipe.write_text(recipe.read_text() + "copy_files: no\n")
    out = cli_merges(capsys, recipe)
    assert not (out / "config.json").exists()


def test_the_same_model_twice_is_merged_twice(tmp_path, capsys):
    """Duplicate model paths are allowed (mergekit allows them): the model counts twice, as it would in memory."""
    out = cli_merges(capsys, pair(tmp_path, merge_method="task_arithmetic", parameters={"lambda": 0.5},
                                  models=["ft0", "ft0", {"model": "./ft0"}]))
    merged = Checkpoint(out)
    assert all(torch.equal(merged[n], BASE[n] + 1.5) for n in BASE)  # three task vectors of 1, at lambda 0.5


# ----------------------------------------------------------------------------- tied weights (GPT-2's lm_head)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A tiny GPT-2 and one fine-tune, saved by transformers: no lm_head.weight, it is tied to transformer.wte."""
    import transformers

    root = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=8)
    model = transformers.GPT2LMHeadModel(cfg)
    model.save_pretrained(root / "base")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    model.save_pretrained(root / "ft0")
    return root


def test_tied_weights_are_read_from_the_config(gpt2, tmp_path):
    base = Checkpoint(gpt2 / "base")
    assert "lm_head.weight" not in base
    assert base.tied_weights() == {"lm_head.weight": "transformer.wte.weight"}
    cfg = json.loads((gpt2 / "base" / "config.json").read_text())
    for change, tied in (({"tie_word_embeddings": False}, {}),
                         ({"architectures": ["GPT2ForSequenceClassification"]}, {}),
                         ({"tie_word_embeddings": True}, {"lm_head.weight": "transformer.wte.weight"})):
        (tmp_path / "m").mkdir(exist_ok=True)
        st.save_file({n: base[n].contiguous() for n in base}, tmp_path / "m" / "model.safetensors")
        (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, **change}))
        assert Checkpoint(tmp_path / "m").tied_weights() == tied, change
    (tmp_path / "m" / "config.json").unlink()
    assert Checkpoint(tmp_path / "m").tied_weights() == {}  # no config: nothing is known to be tied
    (tmp_path / "m" / "config.json").write_text("[1]")
    raises_naming(ValueError, r"m/config\.json: a model config is a JSON object", tmp_path,
                  Checkpoint(tmp_path / "m").tied_weights)


def test_a_pattern_naming_the_tied_head_says_what_it_is_saved_as(gpt2):
    base = Checkpoint(gpt2 / "base")
    names = [n for n in base if base.dtype(n).is_floating_point]
    raises_naming(ValueError, r"exclude pattern 'lm_head\.\*' matches no tensor of .*base: 'lm_head\.weight' is tied "
                              r"to the input embedding \(.*config\.json has tie_word_embeddings\) and saved once, as "
                              r"'transformer\.wte\.weight'; exclude 'transformer\.wte\.weight', which is the head too, "
                              r"or nothing", gpt2, select_tensors, base, names, None, ["lm_head.*"])
    raises_naming(ValueError, r"include pattern 'lm_head\.weight' matches no tensor .* saved once, as 'transformer",
                  gpt2, select_tensors, base, names, ["lm_head.weight"], None)
    raises_naming(ValueError, r"exclude pattern 'lm_haed\.\*' matches no parameter name", gpt2, select_tensors,
                  base, names, None, ["lm_haed.*"])  # a typo is still a typo
    assert "transformer.wte.weight" not in select_tensors(base, names, None, ["transformer.wte.weight"])


def _readme_recipe() -> dict:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(merge_method:.*?)```", text, re.S).group(1)
    return yaml.safe_load(block)


def test_the_readme_recipe_runs_on_gpt2(gpt2, tmp_path, capsys):
    """The README's example names GPT-2: its exclude must match GPT-2's saved tensors (lm_head is not one)."""
    raw = {**_readme_recipe(), "base_model": str(gpt2 / "base"), "models": [str(gpt2 / "ft0")], "output": "out"}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    out = cli_merges(capsys, recipe)
    merged, base = Checkpoint(out), Checkpoint(gpt2 / "base")
    assert torch.equal(merged["transformer.wte.weight"], base["transformer.wte.weight"])  # copied, and the head with it
    assert not torch.equal(merged["transformer.h.0.mlp.c_fc.weight"], base["transformer.h.0.mlp.c_fc.weight"])
    (tmp_path / "old").mkdir()  # the README's old example: an error naming the pattern, nothing written
    recipe = tmp_path / "old" / "r.yaml"
    recipe.write_text(yaml.safe_dump({**raw, "exclude": ["lm_head.*"]}))
    cli_fails(capsys, recipe, r"exclude pattern 'lm_head\.\*' matches no")
