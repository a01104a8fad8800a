"""The fault suite, ``lsedu merge``'s paths and runs: no file is ever lost, and every failure is one line.

Each case runs the command line as a user would (``lsedu.cli.main``) and
asserts three things: the exit status and a single ``lsedu merge: error:``
line that names the culprit (the recipe key, folder or file at fault), no
traceback, and nothing lost or left behind: every file under the test's
folder is byte for byte what it was, and no output or hidden temporary
folder appeared.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch as st
import torch
import yaml

import lsedu.merge.io
import lsedu.merge.plan
import lsedu.merge.run
from lsedu import cli
from lsedu.merge import Checkpoint, load_recipe
from lsedu.merge.plan import plan

BASE = {"h.0.w": torch.ones(4, 3), "h.1.w": torch.ones(3)}
FT = {"h.0.w": torch.full((4, 3), 2.0), "h.1.w": torch.tensor([1.0, 3.0, 1.0])}


def make(root: Path, base=BASE, fts=(FT,), method="localize_stitch", **recipe) -> Path:
    """A base folder, fine-tunes ft0, ft1, ... and a recipe ``r.yaml`` with ``recipe``'s fields."""
    (root / "base").mkdir(parents=True, exist_ok=True)
    st.save_file(base, root / "base" / "model.safetensors")
    for i, ft in enumerate(fts):
        (root / f"ft{i}").mkdir(exist_ok=True)
        st.save_file(ft, root / f"ft{i}" / "model.safetensors")
    r = {"merge_method": method, "base_model": "base", "models": [f"ft{i}" for i in range(len(fts))],
         "output": "out", "parameters": {"density": 0.5} if method in ("localize_stitch", "ties") else {}, **recipe}
    (root / "r.yaml").write_text(yaml.safe_dump(r))
    return root / "r.yaml"


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: its content's hash, or 'dir'."""
    out = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        out[key] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def fails(capsys, root: Path, argv: list[str], culprit: str, status: int = 2, command: str = "merge") -> str:
    """``lsedu ARGV`` exits ``status`` with one error line naming ``culprit``; nothing under ``root`` changed."""
    before = tree(root)
    capsys.readouterr()
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc == status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"lsedu {command}: "), lines[0]
    assert re.search(culprit, lines[0]), f"{culprit!r} not in {lines[0]!r}"
    after = tree(root)
    assert after == before, f"files changed: {sorted(set(after.items()) ^ set(before.items()))}"
    return lines[0]


def edit(recipe: Path, **fields) -> Path:
    raw = yaml.safe_load(recipe.read_text())
    raw.update(fields)
    recipe.write_text(yaml.safe_dump(raw))
    return recipe


# ----------------------------------------------------------------------------- the paths a merge writes


def test_masks_save_naming_an_existing_folder_is_refused_without_overwrite(tmp_path, capsys):
    r = make(tmp_path, masks={"save": "kept"})
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("a week of work")
    fails(capsys, tmp_path, ["merge", str(r)], r"masks\.save .*kept already exists; remove it or pass --overwrite")


def test_masks_save_equal_to_output_is_refused(tmp_path, capsys):
    r = make(tmp_path, masks={"save": "out"})
    fails(capsys, tmp_path, ["merge", str(r)], r"output and masks\.save are the same folder .*out")


def test_masks_save_inside_output_is_refused(tmp_path, capsys):
    r = make(tmp_path, masks={"save": "out/masks"})
    fails(capsys, tmp_path, ["merge", str(r)], r"masks\.save .*out/masks lies inside output .*out")


def test_output_inside_masks_save_is_refused(tmp_path, capsys):
    r = make(tmp_path, masks={"save": "m"}, output="m/model")
    fails(capsys, tmp_path, ["merge", str(r)], r"output .*m/model lies inside masks\.save .*m")


def test_masks_save_naming_an_input_folder_is_refused_even_with_overwrite(tmp_path, capsys):
    r = make(tmp_path, masks={"save": "ft0"})
    fails(capsys, tmp_path, ["merge", str(r), "--overwrite"], r"masks\.save .*ft0 would overwrite the input .*ft0")


def test_masks_save_naming_a_file_is_refused(tmp_path, capsys):
    r = make(tmp_path, masks={"save": "r.yaml"})
    fails(capsys, tmp_path, ["merge", str(r), "--overwrite"], r"masks\.save .*r\.yaml exists and is a file")


def test_output_naming_an_input_file_is_refused(tmp_path, capsys):
    r = make(tmp_path)
    fails(capsys, tmp_path, ["merge", str(r), "-o", str(tmp_path / "ft0" / "model.safetensors"), "--overwrite"],
          r"output .*ft0/model\.safetensors would overwrite the input")


def test_output_holding_the_inputs_is_refused(tmp_path, capsys):
    r = make(tmp_path)
    fails(capsys, tmp_path, ["merge", str(r), "-o", str(tmp_path), "--overwrite"],
          r"output .* would overwrite the input .*base/model\.safetensors")


def test_an_existing_output_needs_overwrite(tmp_path, capsys):
    r = make(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_bytes(b"yesterday's merge")
    fails(capsys, tmp_path, ["merge", str(r)], r"output .*out already exists; remove it or pass --overwrite")


def test_an_output_that_is_a_file_is_never_replaced(tmp_path, capsys):
    r = make(tmp_path)
    (tmp_path / "out").write_text("not a folder")
    fails(capsys, tmp_path, ["merge", str(r), "--overwrite"], r"output .*out exists and is a file")


def test_an_output_under_a_regular_file_is_named(tmp_path, capsys):
    r = make(tmp_path)
    fails(capsys, tmp_path, ["merge", str(r), "-o", str(tmp_path / "r.yaml" / "out")],
          r"output .*r\.yaml/out cannot be created: .*r\.yaml is a file, not a folder")


def test_an_output_in_a_folder_without_write_permission_is_named(tmp_path, capsys, monkeypatch):
    r = make(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(lsedu.merge.plan.os, "access",
                        lambda p, mode: False if Path(p) == locked else real(p, mode))
    fails(capsys, tmp_path, ["merge", str(r), "-o", str(locked / "out")],
          r"output .*locked/out cannot be created: no permission to write in .*locked")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write in a read-only folder")
def test_a_read_only_output_folder_is_named(tmp_path, capsys):
    r = make(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        fails(capsys, tmp_path, ["merge", str(r), "-o", str(locked / "out")], r"no permission to write in .*locked")
    finally:
        locked.chmod(0o755)


def test_not_enough_disk_space_is_found_before_writing(tmp_path, capsys, monkeypatch):
    r = make(tmp_path)
    real = lsedu.merge.plan.shutil.disk_usage
    monkeypatch.setattr(lsedu.merge.plan.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    fails(capsys, tmp_path, ["merge", str(r)], r"not enough disk space: output need .* in .*, which has 1\.0 KB free")


# ----------------------------------------------------------------------------- failures in the middle of a merge


class Full:
    """A ShardedWriter whose disk fills up after ``after`` writes, and whose closing fails again."""

    def __init__(self, monkeypatch, after: int, err=errno.ENOSPC, on_close=False):
        self.calls = 0
        w = lsedu.merge.io.ShardedWriter
        real_write, real_close = w.write, w.close

        def write(writer, name, tensor):
            self.calls += 1
            if not on_close and self.calls > after:
                raise OSError(err, os.strerror(err))
            return real_write(writer, name, tensor)

        def close(writer):
            if on_close:
                raise OSError(err, os.strerror(err))
            return real_close(writer)

        def abort(writer):  # closing a file on a full disk fails too
            raise OSError(err, os.strerror(err))

        monkeypatch.setattr(w, "write", write)
        monkeypatch.setattr(w, "close", close)
        monkeypatch.setattr(w, "abort", abort)


def test_a_full_disk_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    r = make(tmp_path, masks={"save": "masks"})
    Full(monkeypatch, after=1)
    fails(capsys, tmp_path, ["merge", str(r), "--no-progress"], r"no space left on the device while writing .*out")


def test_a_disk_that_fills_while_closing_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    r = make(tmp_path)
    Full(monkeypatch, after=0, on_close=True)
    fails(capsys, tmp_path, ["merge", str(r), "--no-progress"], r"no space left on the device")


def test_an_input_output_error_while_writing_is_one_line(tmp_path, capsys, monkeypatch):
    r = make(tmp_path)
    Full(monkeypatch, after=0, err=errno.EIO)
    fails(capsys, tmp_path, ["merge", str(r), "--no-progress"], r"Input/output error")


def test_a_failed_overwrite_keeps_the_old_output(tmp_path, capsys):
    r = make(tmp_path, fts=({"h.0.w": torch.ones(4, 3), "h.1.w": torch.tensor([1.0, float("nan"), 1.0])},))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_bytes(b"the merge that worked")
    fails(capsys, tmp_path, ["merge", str(r), "--overwrite", "--no-progress"],
          r"tensor 'h\.1\.w' in .*ft0.*has 1 non-finite")


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    r = make(tmp_path, masks={"save": "masks"})

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lsedu.merge.run, "_stream", interrupted)
    fails(capsys, tmp_path, ["merge", str(r), "--no-progress"], r"interrupted; nothing was written", status=130)


def test_a_real_sigint_prints_one_line_and_cleans_up(tmp_path):
    """SIGINT to a running ``lsedu merge``: exit 130, one line, no output and no temporary folder."""
    g = torch.Generator().manual_seed(0)
    big = {f"layer.{i}.w": torch.randn(1000, 1000, generator=g) for i in range(16)}  # 64 MB a model
    r = make(tmp_path, base=big, fts=({k: v + 0.01 for k, v in big.items()},), method="ties")
    before = tree(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "lsedu.cli", "merge", str(r), "--no-progress"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".out.tmp-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)  # until the merge has started writing
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    if proc.returncode == 0:
        pytest.skip("the merge finished before the signal arrived")
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [
        "lsedu merge: interrupted; nothing was written under a final name (temporary files removed)"], err
    assert tree(tmp_path) == before


# ----------------------------------------------------------------------------- the preflight checks


def test_different_vocabularies_are_named(tmp_path, capsys):
    r = make(tmp_path)
    (tmp_path / "base" / "config.json").write_text(json.dumps({"vocab_size": 50257}))
    (tmp_path / "ft0" / "config.json").write_text(json.dumps({"vocab_size": 50258}))
    fails(capsys, tmp_path, ["merge", str(r)],
          r"vocabulary sizes differ: 50257 in .*base/config\.json, 50258 in .*ft0/config\.json")


def test_an_embedding_with_added_tokens_is_named_as_a_vocabulary_mismatch(tmp_path, capsys):
    base = {"model.embed_tokens.weight": torch.ones(10, 4), "h.w": torch.ones(4)}
    r = make(tmp_path, base=base, fts=({"model.embed_tokens.weight": torch.ones(12, 4), "h.w": torch.ones(4)},))
    fails(capsys, tmp_path, ["merge", str(r)], r"shape mismatch at tensor 'model\.embed_tokens\.weight': .*the "
                                               r"embeddings have 10 and 12 rows, so the vocabularies differ")


def save_tokenizer(folder: Path, extra: tuple[str, ...] = ()) -> None:
    """A real fast tokenizer (byte-level BPE trained here), with ``extra`` tokens added, saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.train_from_iterator(["merge the models, not the tokens"] * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t.add_tokens(list(extra))
    t.save(str(folder / "tokenizer.json"))


def test_tokenizers_that_map_tokens_to_other_ids_are_named(tmp_path, capsys):
    """Same vocabulary size, same shapes, but a fine-tune whose added token takes an id the base gives another."""
    r = make(tmp_path, method="ties")
    save_tokenizer(tmp_path / "base", ("<base_tool>",))
    save_tokenizer(tmp_path / "ft0", ("<chat>",))
    fails(capsys, tmp_path, ["merge", str(r)], r"tokenizers differ: token '<base_tool>' is id \d+ in .*base/tokenizer"
                                               r"\.json and absent in .*ft0/tokenizer\.json \(2 token\(s\) differ\)")


def test_the_same_tokenizer_merges(tmp_path):
    r = make(tmp_path, method="ties")
    for d in ("base", "ft0"):
        save_tokenizer(tmp_path / d, ("<tool>",))
    assert cli.main(["merge", str(r)]) == 0
    assert (tmp_path / "out" / "tokenizer.json").exists()  # the base's, copied next to the weights


@pytest.mark.parametrize("name, base, ft, match", [
    ("vocab.json", {"a": 0, "b": 1}, {"a": 1, "b": 0}, r"token 'a' is id 0 in .*base/vocab\.json and id 1 in .*ft0"),
    ("vocab.txt", "[PAD]\nhello\nworld\n", "[PAD]\nworld\nhello\n", r"token 'hello' is id 1 in .*base/vocab\.txt"),
    ("tokenizer.json", "{not json", "{}", r"base/tokenizer\.json: not a readable tokenizer file"),
])
def test_other_tokenizer_files_are_compared(tmp_path, capsys, name, base, ft, match):
    r = make(tmp_path, method="ties")
    for d, content in (("base", base), ("ft0", ft)):
        text = content if isinstance(content, str) else json.dumps(content)
        (tmp_path / d / name).write_text(text)
    fails(capsys, tmp_path, ["merge", str(r)], match)


def test_a_config_that_is_not_json_is_named(tmp_path, capsys):
    r = make(tmp_path)
    (tmp_path / "base" / "config.json").write_text("{vocab_size: 3")
    fails(capsys, tmp_path, ["merge", str(r)], r"base/config\.json: not a readable JSON config")


def test_excluding_everything_is_nothing_to_merge(tmp_path, capsys):
    r = make(tmp_path, method="ties", exclude=["*"])
    fails(capsys, tmp_path, ["merge", str(r)], r"nothing to merge: include/exclude leave no floating-point tensor")


def test_integer_only_checkpoints_are_nothing_to_merge(tmp_path, capsys):
    ints = {"ids": torch.arange(4)}
    r = make(tmp_path, base=ints, fts=(ints,), method="task_arithmetic")
    fails(capsys, tmp_path, ["merge", str(r)], r"nothing to merge: .*\(0 of 1 are floating-point\)")


def test_the_plan_reads_no_tensor_data(tmp_path, monkeypatch):
    """Every check runs from headers and paths: a merge's plan with the reads broken still passes."""
    r = make(tmp_path, masks={"save": "masks"})

    def no_reads(*args, **kwargs):
        raise AssertionError("the plan read tensor data")

    monkeypatch.setattr(Checkpoint, "read", no_reads)
    monkeypatch.setattr(Checkpoint, "__getitem__", no_reads)
    p = plan(load_recipe(r))
    assert p.names == ["h.0.w", "h.1.w"] and set(p.outputs) == {"output", "masks.save"}


def test_plan_prints_the_checks_and_estimates_and_writes_nothing(tmp_path, capsys):
    r = make(tmp_path, masks={"save": "masks"})
    before = tree(tmp_path)
    assert cli.main(["merge", str(r), "--plan"]) == 0
    text = capsys.readouterr().out
    assert "localize_stitch of 1 model(s)" in text and "merged: 2 tensors (15 entries)" in text
    assert re.search(r"writes masks\.save: .*masks", text)
    assert re.search(r"estimate: peak memory about [\d.]+ [KMG]B, time about \d+ s", text)
    assert tree(tmp_path) == before


def test_plan_finds_what_the_merge_would_fail_on(tmp_path, capsys):
    r = make(tmp_path, fts=({"h.0.w": torch.ones(3, 4), "h.1.w": torch.ones(3)},))
    fails(capsys, tmp_path, ["merge", str(r), "--plan"], r"shape mismatch at tensor 'h\.0\.w'")


def test_a_merge_writes_what_its_plan_said(tmp_path, capsys):
    """The positive case: output and masks appear, and no temporary folder is left."""
    r = make(tmp_path, masks={"save": "masks"})
    p = plan(load_recipe(r))
    assert cli.main(["merge", str(r), "--no-progress"]) == 0
    assert {f.name for f in (tmp_path / "masks").iterdir()} == {"mask_0.safetensors"}
    assert (tmp_path / "out" / "model.safetensors").stat().st_size <= p.write_bytes["output"]
    assert not list(tmp_path.glob(".*.tmp-*")) and not list(tmp_path.glob(".*.old-*"))
    (tmp_path / "out" / "extra.txt").write_text("x")  # --overwrite replaces both, whole
    assert cli.main(["merge", str(r), "--no-progress", "--overwrite"]) == 0
    assert not (tmp_path / "out" / "extra.txt").exists()


# ----------------------------------------------------------------------------- the course tools' arguments


@pytest.mark.parametrize("timeout", ["nan", "inf", "0", "-1"])
def test_grade_refuses_a_timeout_that_is_not_a_positive_number(tmp_path, capsys, timeout):
    fails(capsys, tmp_path, ["grade", str(tmp_path / "src"), str(tmp_path / "subs"), "--out",
                             str(tmp_path / "g.csv"), "--timeout", timeout],
          rf"--timeout must be a positive number of seconds, got {timeout if timeout != '0' else '0.0'}",
          command="grade")


def test_student_edition_under_a_regular_file_is_one_line(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.ipynb").write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    (tmp_path / "file").write_text("x")
    fails(capsys, tmp_path, ["student-edition", str(src), str(tmp_path / "file" / "out")],
          r"cannot create .*file/out: .*file is a file, not a folder", command="student-edition")
    fails(capsys, tmp_path, ["student-edition", str(src), str(tmp_path / "file"), "--overwrite"],
          r"file exists and is a file, not a folder", command="student-edition")


def test_excluding_a_tied_head_says_it_is_saved_as_the_embedding(tmp_path, capsys):
    """GPT-2 saves its tied lm_head once, as the embedding: the error and the plan both say so."""
    import transformers

    cfg = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8)
    for name in ("base", "ft0"):
        transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / name)
    r = tmp_path / "r.yaml"
    r.write_text(yaml.safe_dump({"merge_method": "task_arithmetic", "base_model": "base", "models": ["ft0"],
                                 "output": "out", "exclude": ["lm_head.*"]}))
    fails(capsys, tmp_path, ["merge", str(r)],
          r"exclude pattern 'lm_head\.\*' matches no tensor .*'lm_head\.weight' is tied to the input embedding .*"
          r"saved once, as 'transformer\.wte\.weight'")
    edit(r, exclude=["*wte.weight"])
    assert cli.main(["merge", str(r), "--plan"]) == 0
    assert "tied: lm_head.weight is transformer.wte.weight" in capsys.readouterr().out
