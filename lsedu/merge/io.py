"""The I/O of ``lsedu merge``: checkpoints read lazily, merged ones written tensor by tensor, both overlapped with the merge.

* :class:`Checkpoint` is a read-only ``Mapping`` of name -> tensor over a
  ``.safetensors`` file, a Hugging Face folder (sharded or not) or a pickled
  ``.bin``/``.pt`` file (loaded with ``weights_only=True`` and memory-mapped).
  Names, shapes and dtypes come from the headers; a tensor is read only when
  it is asked for. Every lsedu function accepts it where it accepts a dict.
* :class:`ShardedWriter` writes safetensors shards *as the tensors arrive*:
  the layout is known in advance (it is the base model's), so each shard's
  header is written first and each tensor's bytes follow, and nothing is
  buffered. The result is what ``transformers``' ``from_pretrained`` reads.
* :func:`save_masks` / :func:`load_masks` store boolean masks bit-packed
  (one bit per entry) in a safetensors file.
* :class:`Reader`, :func:`prefetch` and :class:`WriteBehind` keep the disk
  busy while the cores merge: the next unit is read, and the last one
  written, in threads (reads and the merge kernels release the GIL).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import sys
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from .._checks import Mask, all_finite, check_tensor_dict

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
#: The output head's name where ``transformers`` ties it to the input embedding (``lm_head.weight`` otherwise),
#: and the endings of the input embeddings' names: see :meth:`Checkpoint.tied_weights`.
TIED_HEADS = {"roberta": "lm_head.decoder.weight", "xlm-roberta": "lm_head.decoder.weight",
              "camembert": "lm_head.decoder.weight", "bert": "cls.predictions.decoder.weight"}
EMBEDDING_SUFFIXES = ("wte.weight", "embed_tokens.weight", "word_embeddings.weight", "shared.weight",
                      "tok_embeddings.weight", "embed_in.weight")
LM_HEADS = ("LMHeadModel", "ForCausalLM", "ForMaskedLM", "ForConditionalGeneration", "ForPreTraining")
#: Checkpoint.read reads safetensors bytes with os.preadv (POSIX), into tensors of this machine's byte
#: order, which must be the format's little-endian one; elsewhere it copies out of safetensors' map.
_PREADV = hasattr(os, "preadv") and sys.byteorder == "little"
#: With ``Checkpoint.direct``, reads of at least this many bytes bypass the page cache (O_DIRECT), given
#: a buffer with ``READ_SLACK`` bytes to spare (:meth:`Checkpoint.read`'s ``into``); smaller ones, a
#: sample's rows say, are buffered.
DIRECT_MIN_BYTES = 1 << 20
_PAGE = 4096
#: O_DIRECT reads whole pages into a page-aligned buffer: up to a page to align the buffer's start,
#: and a page each for the partial pages at both ends of the span.
READ_SLACK = 3 * _PAGE


def _one_line(e: BaseException) -> str:
    """An exception's message on one line: its first non-empty line (torch's and yaml's run to several)."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def _load_error(e: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, on one line: the weights-only unpickler's reason
    (an unsupported operand, a global it will not import), not its advice to load with weights_only=False."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    elif text.startswith("Weights only load failed"):
        text = "\n".join(text.splitlines()[1:])
    else:
        return _one_line(e)
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.strip().startswith("Check the documentation")]
    reason = lines[0][:300] if lines else "an object it does not load"
    return f"the weights-only unpickler refused it: {reason}; lsedu never runs code from a checkpoint"


def _short(value) -> str:
    """A value in an error message: its repr, cut short, and its type."""
    r = repr(value)
    return f"{r[:60] + '...' if len(r) > 60 else r} ({type(value).__name__})"


def _check_file(f: Path, what: str) -> None:
    """``f`` is a regular file that this process can read, and not empty; errors name it (one line, no errno)."""
    if f.is_dir():
        raise ValueError(f"{f}: the {what} is a folder, not a file")
    if not f.exists():
        raise FileNotFoundError(f"{what} not found: {f}")
    try:
        with open(f, "rb") as fh:
            empty = not fh.read(1)
    except OSError as e:
        raise ValueError(f"{f}: the {what} cannot be read ({e.strerror or e})") from e
    if empty:
        raise ValueError(f"{f}: the {what} is empty (0 bytes)")


def _storable() -> str:
    """The dtypes that lsedu reads and writes, the ones a pickled checkpoint may hold, as a list for a message."""
    return ", ".join(str(d).removeprefix("torch.") for d in DTYPE_NAMES)


def _stored_tensor(f: Path, name, t) -> torch.Tensor:
    """A pickled state dict's entry as the plain tensor lsedu stores (an ``nn.Parameter`` detached), or an error
    naming the tensor and the file: a name that is not a string, a value that is not a tensor, a sparse,
    quantized or meta tensor, a dtype the safetensors writer cannot store (complex, uint16-64, float8...)."""
    if not isinstance(name, str):
        raise ValueError(f"{f}: the state dict has a key {name!r} ({type(name).__name__}); tensor names are strings")
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{f}: entry {name!r} is a {type(t).__name__}, not a tensor (a state dict maps names to "
                         "tensors)")
    if isinstance(t, torch.nn.Parameter):
        t = t.detach()
    if t.layout != torch.strided or t.is_quantized or t.is_meta:
        kind = "meta" if t.is_meta else "quantized" if t.is_quantized else str(t.layout).removeprefix("torch.")
        raise ValueError(f"{f}: tensor {name!r} is a {kind} tensor; lsedu reads dense tensors with data")
    if t.dtype not in DTYPE_NAMES:
        raise ValueError(f"{f}: tensor {name!r} has dtype {str(t.dtype).removeprefix('torch.')}, which lsedu "
                         f"cannot store (it stores {_storable()})")
    return t


class Checkpoint(Mapping):
    """A checkpoint on disk as a lazy ``name -> tensor`` mapping.

    ``path`` may be a ``.safetensors`` file; a folder holding
    ``model.safetensors``, ``model.safetensors.index.json`` (shards) or a
    single ``*.safetensors``; or a ``.bin``/``.pt`` file or a folder with
    ``pytorch_model.bin``. Pickled files are opened with
    ``torch.load(weights_only=True, mmap=True)``: no code in them runs, and
    their pages are read on demand.

    Explained in the appendix (appendix_streaming_merge.ipynb), which reads the merged folder with it.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"checkpoint not found: {self.path}")
        self._where: dict[str, Path] = {}  # name -> file holding it
        self._info: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self._handles: dict[Path, object] = {}
        self._spans: dict[str, tuple[int, int]] = {}  # name -> (first byte, end byte) in its safetensors file
        self._fds: dict[tuple[Path, bool], int | None] = {}
        #: read() big blocks past the page cache (O_DIRECT): worth it when the inputs cannot stay cached anyway.
        self.direct = False
        self._pickled: dict[str, torch.Tensor] | None = None
        self._index: tuple[Path, dict[str, Path]] | None = None  # the index file and its weight_map, if any
        try:
            files = self._resolve()
            for f in files:
                _check_file(f, "checkpoint file")
                if f.suffix in PICKLE_SUFFIXES:
                    self._load_pickle(f)
                else:
                    self._read_header(f)
        except OSError as e:  # a folder that cannot be listed, a file that vanished: one line naming it
            if e.errno is None:  # one of ours (a missing shard), already one line
                raise
            raise ValueError(f"{e.filename or self.path}: cannot be read ({e.strerror or e})") from e
        if self._index is not None:
            self._check_index()
        if not self._info:
            raise ValueError(f"checkpoint {self.path} holds no tensors")

    # --- locating files --------------------------------------------------
    def _resolve(self) -> list[Path]:
        p = self.path
        if p.is_file():
            if p.suffix == ".safetensors" or p.suffix in PICKLE_SUFFIXES:
                return [p]
            if p.name.endswith(".index.json"):
                return self._from_index(p)
            raise ValueError(f"{p}: not a checkpoint (expected .safetensors, .bin, .pt or an index .json)")
        for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (p / index).exists():
                return self._from_index(p / index)
        for single in ("model.safetensors", "pytorch_model.bin"):
            if (p / single).exists():
                return [p / single]
        found = sorted(p.glob("*.safetensors"))
        if len(found) == 1:
            return found
        raise ValueError(
            f"{p}: no checkpoint found in this folder (looked for model.safetensors, "
            f"model.safetensors.index.json, pytorch_model.bin; found {len(found)} other .safetensors files)"
        )

    def _from_index(self, index: Path) -> list[Path]:
        """The shards that ``index`` lists: each one a file inside the index's folder; errors name the index."""
        _check_file(index, "checkpoint index")
        try:
            raw = json.loads(index.read_bytes().decode("utf-8"))
        except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ValueError(f"{index}: not a valid checkpoint index ({_one_line(e)})") from e
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            got = type(raw).__name__ if not isinstance(raw, dict) else \
                "no 'weight_map'" if "weight_map" not in raw else f"weight_map {_short(weight_map)}"
            raise ValueError(f"{index}: not a valid checkpoint index (it must be a JSON object whose 'weight_map' "
                             f"maps each tensor name to a shard file; got {got})")
        shards: dict[str, Path] = {}
        for name, shard in weight_map.items():
            if not isinstance(shard, str) or not shard:
                raise ValueError(f"{index}: weight_map[{name!r}] must be a shard's file name, got {_short(shard)}")
            if shard not in shards:
                f = index.parent / shard
                # lexically inside the folder (a shard may be a symlink, as in the Hugging Face cache)
                if Path(shard).is_absolute() or os.path.normpath(shard).split(os.sep)[0] in ("..", "."):
                    raise ValueError(f"{index}: weight_map[{name!r}] names {shard!r}, which is not a file "
                                     f"inside the index's folder {index.parent}")
                if f.is_dir():
                    raise ValueError(f"{index} lists the shard {shard}, which is a folder, not a file")
                if not (f.suffix == ".safetensors" or f.suffix in PICKLE_SUFFIXES):
                    raise ValueError(f"{index} lists the shard {shard}, which is not a .safetensors or "
                                     f".bin file")
                if not f.exists():
                    raise FileNotFoundError(f"{index} lists the shard {shard}, which is missing")
                shards[shard] = f
        self._index = (index, {name: shards[shard] for name, shard in weight_map.items()})
        return sorted(set(shards.values()))

    def _check_index(self) -> None:
        """Every tensor the index names is in the shard it names (a stale index is refused, not half-trusted)."""
        index, where = self._index
        for name, f in where.items():
            if self._where.get(name) != f:
                held = f"is in {self._where[name].name}" if name in self._where else "is in no shard"
                raise ValueError(f"{index}: weight_map puts tensor {name!r} in {f.name}, but it {held}")

    def _read_header(self, f: Path) -> None:
        try:  # safe_open checks the header: its length, its JSON, every tensor's offsets within the file
            handle = safe_open(str(f), framework="pt")
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise ValueError(f"{f}: not a readable safetensors file ({_one_line(e)})") from e
        self._handles[f] = handle
        with open(f, "rb") as fh:  # the data offsets, for read(); safe_open has checked the header
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, entry in header.items():
            if name != "__metadata__":
                self._spans[name] = (8 + n + entry["data_offsets"][0], 8 + n + entry["data_offsets"][1])
        for name in handle.keys():
            sl = handle.get_slice(name)
            dtype = SAFETENSORS_DTYPES.get(sl.get_dtype())
            if dtype is None:
                raise ValueError(f"{f}: tensor {name!r} has dtype {sl.get_dtype()}, which lsedu does not merge "
                                 f"(it reads {', '.join(SAFETENSORS_DTYPES)})")
            self._add(name, f, (tuple(sl.get_shape()), dtype))

    def _load_pickle(self, f: Path) -> None:
        try:
            sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # a file in torch's legacy (pre-1.6) format cannot be memory-mapped: load it
            if "mmap" not in str(e):
                raise ValueError(f"{f}: could not be loaded with torch.load(weights_only=True) ({_one_line(e)})") \
                    from e
            try:
                sd = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e2:
                raise ValueError(f"{f}: could not be loaded with torch.load(weights_only=True) "
                                 f"({_load_error(e2)})") from e2
        except Exception as e:
            raise ValueError(f"{f}: could not be loaded with torch.load(weights_only=True) ({_load_error(e)})") from e
        if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
            sd = sd["state_dict"]
        if not isinstance(sd, Mapping):
            raise ValueError(f"{f}: does not hold a state dict (a dict of name -> tensor), but a {type(sd).__name__}")
        clean = {}
        for name, t in sd.items():
            clean[name] = t = _stored_tensor(f, name, t)
            self._add(name, f, (tuple(t.shape), t.dtype))
        self._pickled = {**(self._pickled or {}), **clean}

    def _add(self, name: str, f: Path, info) -> None:
        if name in self._where:
            raise ValueError(f"tensor {name!r} appears twice: in {self._where[name]} and in {f}")
        self._where[name], self._info[name] = f, info

    # --- Mapping ---------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        f = self._where[name]
        if self._pickled is not None and name in self._pickled:
            return self._pickled[name]
        return self._handles[f].get_tensor(name)

    def read(self, name: str, rows: tuple[int, int] | None = None, into: torch.Tensor | None = None) -> torch.Tensor:
        """A copy of the tensor ``name``, or of its rows ``rows[0]:rows[1]`` along the first dimension.

        From a safetensors file the bytes are read with ``preadv`` into a new
        tensor, or into ``into`` (a uint8 tensor of at least
        :meth:`part_nbytes` bytes, plus ``READ_SLACK`` for a direct read; the
        result is a view of it): the disk is read here and now, sequentially,
        and only those bytes (whole pages around them for a direct read). (The tensors
        that ``safe_open`` hands out are views of the memory-mapped file, read
        later, a page fault at a time, on first touch: about half as fast.)
        Reusing ``into`` also spares the kernel zeroing fresh pages, which
        costs more than reading from the page cache.
        """
        if self._pickled is not None and name in self._pickled:
            t = self._pickled[name]
            return (t if rows is None else t[rows[0] : rows[1]]).clone()
        if not _PREADV:
            t = self[name] if rows is None else self._handles[self._where[name]].get_slice(name)[rows[0] : rows[1]]
            return t.clone()
        shape, dtype = self._info[name]
        start, end = self._spans[name]
        if rows is not None:
            row_bytes = (end - start) // shape[0] if shape and shape[0] else 0
            start, end = start + rows[0] * row_bytes, start + rows[1] * row_bytes
            shape = (rows[1] - rows[0], *shape[1:])
        f, n = self._where[name], end - start
        direct = self.direct and n >= DIRECT_MIN_BYTES and (start % _PAGE) % dtype.itemsize == 0
        if into is None:
            into = torch.empty(n + (READ_SLACK if direct else 0), dtype=torch.uint8)
        data = self._read_direct(f, start, end, into) if direct and into.numel() >= n + READ_SLACK else None
        if data is None:
            skip = (-into.data_ptr()) % 64  # a 64-byte aligned start suits every dtype
            if into.numel() < skip + n:
                into, skip = torch.empty(n, dtype=torch.uint8), 0
            data = into[skip : skip + n]
            self._pread(self._fd(f), data, start, n, name)
        return data.view(dtype).reshape(shape)

    def _pread(self, fd: int, data: torch.Tensor, offset: int, n: int, name: str) -> None:
        buf, done = memoryview(data.numpy()), 0
        while done < n:
            got = os.preadv(fd, [buf[done:n]], offset + done)
            if got == 0:
                raise ValueError(f"{self._where[name]}: ends before the bytes of tensor {name!r} (truncated file?)")
            done += got

    def _read_direct(self, f: Path, start: int, end: int, into: torch.Tensor) -> torch.Tensor | None:
        """Read bytes ``start:end`` with O_DIRECT: the disk writes straight into ``into``, with no copy
        through the page cache (whose copying and reclaiming cost a core when a model is larger than
        memory). O_DIRECT wants whole, aligned pages, so the pages around the span are read; returns
        None where the file system refuses it."""
        fd = self._fd(f, direct=True)
        if fd is None:
            return None
        first, last = start - start % _PAGE, -(-end // _PAGE) * _PAGE
        skip = (-into.data_ptr()) % _PAGE  # the buffer's first page-aligned byte
        buf, done = memoryview(into[skip : skip + last - first].numpy()), 0
        try:
            while first + done < end:
                got = os.preadv(fd, [buf[done:]], first + done)
                if got == 0:
                    return None  # a short file: let the buffered read report it
                done += got
        except OSError:  # EINVAL: this file system does not do O_DIRECT after all
            self._fds[(f, True)] = None
            return None
        return into[skip + start - first : skip + end - first]

    def part_nbytes(self, name: str, rows: tuple[int, int] | None = None) -> int:
        """The bytes of tensor ``name``, or of its rows ``rows`` (``into`` for :meth:`read` wants ``READ_SLACK`` more)."""
        shape, dtype = self._info[name]
        numel = math.prod(shape) if rows is None else (rows[1] - rows[0]) * math.prod(shape[1:])
        return numel * dtype.itemsize

    def _fd(self, f: Path, direct: bool = False) -> int | None:
        """An open descriptor of ``f`` (O_DIRECT if ``direct``: None where the system cannot)."""
        key = (f, direct)
        if key not in self._fds:
            if direct:
                try:
                    self._fds[key] = os.open(f, os.O_RDONLY | os.O_DIRECT) if hasattr(os, "O_DIRECT") else None
                except OSError:
                    self._fds[key] = None
            else:
                self._fds[key] = os.open(f, os.O_RDONLY)
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(self._fds[key], 0, 0, os.POSIX_FADV_SEQUENTIAL)  # a larger readahead
        return self._fds[key]

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            try:
                if fd is not None:
                    os.close(fd)
            except Exception:  # noqa: BLE001  (at interpreter exit, os may already be gone)
                pass

    def __iter__(self) -> Iterator[str]:
        return iter(self._info)

    def __contains__(self, name) -> bool:  # Mapping's default would read the tensor to find out
        return name in self._info

    def __len__(self) -> int:
        return len(self._info)

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {len(self)} tensors)"

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info[name][0]

    def dtype(self, name: str) -> torch.dtype:
        return self._info[name][1]

    def file_of(self, name: str) -> Path:
        return self._where[name]

    def nbytes_of(self, name: str) -> int:
        return self.part_nbytes(name)

    def nbytes(self) -> int:
        return sum(self.nbytes_of(n) for n in self._info)

    @property
    def folder(self) -> Path:
        """The folder that holds the checkpoint (and its config.json, if any)."""
        return self.path if self.path.is_dir() else self.path.parent

    def files(self) -> list[Path]:
        return sorted(set(self._where.values()))

    def config(self) -> dict:
        """The model's ``config.json`` next to the checkpoint, as a dict; ``{}`` if there is none.

        A config.json that is not a readable JSON object is an error naming it.
        """
        path = self.folder / "config.json"
        if not path.is_file():
            return {}
        try:
            cfg = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable JSON config ({_one_line(e)})") from e
        if not isinstance(cfg, dict):
            raise ValueError(f"{path}: a model config is a JSON object, got a {type(cfg).__name__}")
        return cfg

    def tied_weights(self) -> dict[str, str]:
        """``{absent name: saved name}``: the output head that is tied to the input embedding and saved once.

        The rule: a tied weight is one tensor under two names, and a
        checkpoint saves it once, under the input embedding's name
        (``transformers`` drops ``lm_head.weight`` of GPT-2, Llama, SmolLM2;
        ``lm_head.decoder.weight`` of RoBERTa). A merge sees the saved name
        only: merging or excluding the embedding does the same to the head,
        and a pattern that names only the absent head matches nothing (an
        error, whose message says this). Tied means: the base's config.json
        says ``tie_word_embeddings`` (true when the key is absent, as in
        ``transformers``), the head's name is not in the checkpoint, and one
        2-D embedding is (of ``vocab_size`` rows where the config gives it).
        Without a config.json, nothing is known to be tied: ``{}``.

        Not called in a notebook: ``lsedu merge`` names the tied head in its errors and its plan; see the appendix
        (appendix_streaming_merge.ipynb).
        """
        cfg = self.config()
        if not cfg or cfg.get("tie_word_embeddings", True) is not True:
            return {}
        arch = cfg.get("architectures")
        if isinstance(arch, list) and not any(isinstance(a, str) and a.endswith(LM_HEADS) for a in arch):
            return {}  # a model without an output head over the vocabulary (a classifier, a bare encoder)
        head = TIED_HEADS.get(cfg.get("model_type"), "lm_head.weight")
        if head in self._info:
            return {}
        vocab = cfg.get("vocab_size")
        found = [n for n in self._info if len(self.shape(n)) == 2 and n.endswith(EMBEDDING_SUFFIXES)
                 and (not isinstance(vocab, int) or self.shape(n)[0] == vocab)]
        return {head: found[0]} if len(found) == 1 else {}


def _header(entries: Sequence[tuple[str, tuple[int, ...], torch.dtype]], metadata: dict[str, str]) -> tuple[bytes, int]:
    """A safetensors header for tensors laid out back to back in ``entries`` order, and the data size."""
    head: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, shape, dtype in entries:
        size = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        head[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to a multiple of 8 bytes
    return struct.pack("<Q", len(raw)) + raw, offset


class ShardedWriter:
    """Writes safetensors shards tensor by tensor, in a layout fixed in advance.

    ``layout`` lists ``(name, shape, dtype)`` in the order :meth:`write` will
    be called. Shards are cut before ``max_shard_bytes``; with one shard the
    file is ``model.safetensors``, with more they are
    ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``.

    Explained in the appendix (appendix_streaming_merge.ipynb), which writes its large test checkpoints with it.
    """

    def __init__(self, folder: Path, layout: Sequence[tuple[str, tuple[int, ...], torch.dtype]],
                 max_shard_bytes: int = 2 * 1024**3, metadata: dict[str, str] | None = None,
                 single_name: str = "model.safetensors", direct: bool = False):
        self.folder = Path(folder)
        #: Write past the page cache (O_DIRECT) where the file system allows: see :class:`_DirectFile`.
        self.direct = direct
        self.metadata = {"format": "pt", **(metadata or {})}
        shards: list[list] = [[]]
        size = 0
        for entry in layout:
            n = math.prod(entry[1]) * torch.empty(0, dtype=entry[2]).element_size()
            if shards[-1] and size + n > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(entry)
            size += n
        self.shards = shards
        count = len(shards)
        self.names = [single_name] if count == 1 else [
            f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)
        ]
        self._queue = [(i, e) for i, shard in enumerate(shards) for e in shard]
        self._pos = 0
        self._done = 0  # bytes of the current tensor written so far
        self._file = None
        self._shard = -1
        self.total_size = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append ``tensor``: a whole tensor, or the next rows of one (written in order, first dimension)."""
        if self._pos >= len(self._queue):
            raise ValueError(f"unexpected tensor {name!r}: every tensor of the layout is written")
        shard, (want, shape, dtype) = self._queue[self._pos]
        size = math.prod(shape) * torch.empty(0, dtype=dtype).element_size()
        # (an empty tensor made from numpy can have stride 0, which view(uint8) refuses: it has no bytes anyway)
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy() if tensor.numel() else \
            np.empty(0, np.uint8)
        rows_ok = tuple(tensor.shape) == tuple(shape) or (len(shape) > 0 and tuple(tensor.shape[1:]) == tuple(shape[1:]))
        if name != want or tensor.dtype != dtype or not rows_ok or self._done + data.nbytes > size:
            raise ValueError(f"expected (rows of) tensor {want!r} {tuple(shape)} {dtype}, got {name!r} "
                             f"{tuple(tensor.shape)} {tensor.dtype}")
        if shard != self._shard:
            self._open(shard)
        self._file.write(memoryview(data))
        self.total_size += data.nbytes
        self._done += data.nbytes
        if self._done == size:
            self._pos, self._done = self._pos + 1, 0

    def _open(self, shard: int) -> None:
        self._close_file()
        self._shard = shard
        path = self.folder / self.names[shard]
        self._file = (_DirectFile.open(path) if self.direct else None) or open(path, "wb")
        head, _ = _header(self.shards[shard], self.metadata)
        self._file.write(head)

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def close(self) -> None:
        """Finish the last shard and, if there are several, write the index."""
        if self._pos != len(self._queue):
            missing = self._queue[self._pos][1][0]
            raise ValueError(f"the merge stopped before tensor {missing!r}: the output is incomplete")
        self._close_file()
        if len(self.names) > 1:
            index = {"metadata": {"total_size": self.total_size},
                     "weight_map": {name: self.names[i] for i, (name, _, _) in self._queue}}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _DirectFile:
    """A file written sequentially with O_DIRECT: the bytes go from a page-aligned staging buffer to the
    disk, not through the page cache, whose copying costs a core when a merge writes gigabytes.

    O_DIRECT writes whole pages, so the last one is padded and the file then cut to its true length.
    Same interface as the subset of a binary file that :class:`ShardedWriter` uses.
    """

    STAGE = 16 << 20

    def __init__(self, fd: int):
        self._fd, self._stage, self._used, self._size = fd, mmap.mmap(-1, self.STAGE), 0, 0

    @classmethod
    def open(cls, path: Path) -> _DirectFile | None:
        """The file, created or emptied; None where the system cannot write it with O_DIRECT."""
        if not hasattr(os, "O_DIRECT"):
            return None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        except OSError:
            return None
        f = cls(fd)
        try:  # some file systems accept the flag and refuse the first write
            os.write(fd, memoryview(f._stage)[:_PAGE])  # (a slice of the mmap itself would be an unaligned copy)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        except OSError:
            os.close(fd)
            return None
        return f

    def write(self, data) -> None:
        data = memoryview(data).cast("B")
        while len(data):
            k = min(len(data), self.STAGE - self._used)
            self._stage[self._used : self._used + k] = data[:k]
            self._used, data = self._used + k, data[k:]
            if self._used == self.STAGE:
                self._flush_stage()

    def _flush_stage(self) -> None:
        whole = -(-self._used // _PAGE) * _PAGE  # the last page padded: the file is cut to size on close
        view, done = memoryview(self._stage)[:whole], 0
        while done < whole:
            done += os.write(self._fd, view[done:])
        self._size += self._used
        self._used = 0

    def flush(self) -> None:
        pass  # nothing is buffered by the kernel; the staged tail is written by fileno()/close()

    def fileno(self) -> int:
        """Write the staged tail (the file ends there), for the fsync that follows."""
        if self._used:
            self._flush_stage()
            os.ftruncate(self._fd, self._size)
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._stage.close()


# --- masks -------------------------------------------------------------------
class MaskWriter:
    """Writes bool masks bit-packed, one tensor at a time, into one safetensors file.

    Not called in a notebook: ``lsedu merge`` uses it to save Localize-and-Stitch masks; see the appendix
    (appendix_streaming_merge.ipynb).
    """

    def __init__(self, path: Path, layout: Sequence[tuple[str, tuple[int, ...]]], metadata: dict[str, str]):
        self.path = Path(path)
        shapes = {name: list(shape) for name, shape in layout}
        meta = {"lsedu_mask": "packbits", "shapes": json.dumps(shapes), **metadata}
        packed = [(name, (math.ceil(math.prod(shape) / 8),), torch.uint8) for name, shape in layout]
        self._writer = ShardedWriter(self.path.parent, packed, max_shard_bytes=2**62, metadata=meta,
                                     single_name=self.path.name)
        self._numel = {name: math.prod(shape) for name, shape in layout}
        self._carry = np.zeros(0, dtype=np.uint8)  # bits of the current tensor not yet packed into a byte
        self._seen = 0

    def write(self, name: str, mask: torch.Tensor) -> None:
        """Append a mask: a whole tensor's, or the next rows of one, in order."""
        bits = np.concatenate([self._carry, mask.reshape(-1).numpy().astype(np.uint8)])
        self._seen += mask.numel()
        last = self._seen == self._numel[name]
        whole = len(bits) if last else len(bits) // 8 * 8
        self._carry = bits[whole:]
        if whole or last:  # (a mask of no entries is a tensor of no bytes: written all the same)
            self._writer.write(name, torch.from_numpy(np.packbits(bits[:whole])))
        if last:
            self._seen = 0

    def close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        self._writer.abort()


def save_masks(mask: Mapping[str, torch.Tensor], path: str | os.PathLike, **metadata: str) -> Path:
    """Save one bool mask per tensor, bit-packed (1 bit an entry), as a safetensors file.

    Not called in a notebook: ``lsedu merge`` uses it (and ``lsedu.merge.MaskWriter`` writes the same format); see the
    appendix (appendix_streaming_merge.ipynb).
    """
    check_tensor_dict(mask, "mask")
    for n, m in mask.items():
        if m.dtype != torch.bool:
            raise TypeError(f"mask[{n!r}] must be a torch.bool mask, got dtype {m.dtype}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: the mask file to save is an existing folder; name a file")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = MaskWriter(tmp, [(n, tuple(m.shape)) for n, m in mask.items()], {k: str(v) for k, v in metadata.items()})
    try:
        for n, m in mask.items():
            writer.write(n, m)
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.abort()
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_masks(path: str | os.PathLike) -> Mask:
    """Load masks saved by :func:`save_masks` (or by ``lsedu merge``) as bool tensors.

    The file is checked before it is trusted: its metadata must say
    ``lsedu_mask: packbits`` and give ``shapes``, a JSON object of name ->
    list of non-negative ints; it must hold exactly those tensors, each a
    1-D uint8 tensor of the bytes its shape needs (one bit an entry, rounded
    up to a byte). Any other file is a ValueError that names it (and the tensor).

    Explained in the appendix (appendix_streaming_merge.ipynb), which loads the saved masks with it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"mask file not found: {path}")
    try:
        _check_file(path, "mask file")
        handle = safe_open(str(path), framework="pt")
    except OSError as e:
        raise ValueError(f"{path}: the mask file cannot be read ({e.strerror or e})") from e
    except ValueError:
        raise
    except Exception as e:  # safetensors' own error types
        raise ValueError(f"mask file {path}: not a readable safetensors file ({_one_line(e)})") from e
    with handle as f:
        shapes = _mask_shapes(path, f.metadata() or {})
        held = set(f.keys())
        missing, extra = [n for n in shapes if n not in held], sorted(held - set(shapes))
        if missing or extra:
            which = f"tensor {missing[0]!r} is listed in its 'shapes' metadata but missing" if missing else \
                f"tensor {extra[0]!r} is not listed in its 'shapes' metadata"
            raise ValueError(f"mask file {path}: {which}")
        out = {}
        for name, shape in shapes.items():
            sl = f.get_slice(name)
            n, dtype, stored = math.prod(shape), sl.get_dtype(), tuple(sl.get_shape())
            need = -(-n // 8)
            if dtype != "U8" or len(stored) != 1:
                raise ValueError(f"mask file {path}: tensor {name!r} is {dtype} of shape {stored}; packed bits "
                                 "are a 1-D U8 (uint8) tensor")
            if stored[0] != need:
                raise ValueError(f"mask file {path}: tensor {name!r} holds {stored[0]} bytes, its shape "
                                 f"{tuple(shape)} needs {need}")
            bits = np.unpackbits(f.get_tensor(name).numpy(), count=n)
            out[name] = torch.from_numpy(bits.astype(bool)).reshape(shape)
    return out


def _mask_shapes(path: Path, meta: dict) -> dict[str, list[int]]:
    """The ``shapes`` of a mask file's metadata, checked: a JSON object of name -> list of non-negative ints."""
    if meta.get("lsedu_mask") != "packbits":
        raise ValueError(f"{path} is not an lsedu mask file (no 'lsedu_mask: packbits' in its metadata)")
    if "shapes" not in meta:
        raise ValueError(f"mask file {path}: its metadata has no 'shapes'")
    try:
        shapes = json.loads(meta["shapes"])
    except ValueError as e:
        raise ValueError(f"mask file {path}: its 'shapes' metadata is not valid JSON ({_one_line(e)})") from e
    if not isinstance(shapes, dict):
        raise ValueError(f"mask file {path}: its 'shapes' metadata must be a JSON object of name -> shape, "
                         f"got {_short(shapes)}")
    for name, shape in shapes.items():
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise ValueError(f"mask file {path}: the shape of tensor {name!r} in its 'shapes' metadata must be a "
                             f"list of non-negative ints, got {_short(shape)}")
    return shapes


# --- overlapping the disk and the cores ---------------------------------------------------------------
class Unit(list):
    """The tensors of one unit, one per checkpoint, and whether each is free of NaN and inf.

    Not called in a notebook: ``lsedu merge`` uses it (one unit's tensors, one per input); see the appendix
    (appendix_streaming_merge.ipynb).
    """

    finite: list[bool]


class Reader:
    """Reads tensor ``name`` (rows ``rows``) from every checkpoint, and counts the bytes: the I/O of one unit.

    It runs in :func:`prefetch`'s thread, so it also checks the tensors for
    NaN and inf there (:attr:`Unit.finite`), off the main thread. The tensors
    it returns live in its buffers, which it reuses round-robin: a unit is
    valid until the reader has been called ``ring - 1`` more times. That is
    enough for :func:`prefetch`, which reads one unit ahead: it asks for
    unit i + 1 only once the caller is done with unit i - 1. One reader
    serves one :func:`prefetch` loop at a time.

    Not called in a notebook: ``lsedu merge`` uses it (the lazy reads of every input); see the appendix
    (appendix_streaming_merge.ipynb).
    """

    def __init__(self, ring: int = 2):
        self.bytes = 0
        # Buffers reused round-robin: while one unit is merged, prefetch's thread reads the next one.
        self._ring: list[list[torch.Tensor]] = [[] for _ in range(ring)]
        self._slot = 0

    def __call__(self, name: str, rows, ckpts: Sequence[Checkpoint]) -> Unit:
        bufs = self._ring[self._slot]
        self._slot = (self._slot + 1) % len(self._ring)
        out = Unit()
        for j, c in enumerate(ckpts):
            need = c.part_nbytes(name, rows) + READ_SLACK  # room to align a direct read to whole pages
            if j == len(bufs):
                bufs.append(torch.empty(0, dtype=torch.uint8))
            if bufs[j].numel() < need:
                bufs[j] = torch.empty(need, dtype=torch.uint8)
            out.append(c.read(name, rows, into=bufs[j]))
        out.finite = [all_finite(t) for t in out]
        self.bytes += sum(t.numel() * t.element_size() for t in out)
        return out


def prefetch(units, load):
    """Yield ``(unit, load(unit))``, loading the next unit in a thread while the caller computes.

    Reading (a copy out of the memory-mapped file) and the merge kernels both
    release the GIL, so the disk and the cores work at the same time; one
    unit ahead keeps the extra memory to one unit.

    Not called in a notebook: ``lsedu merge`` uses it (reading ahead); see the appendix
    (appendix_streaming_merge.ipynb).
    """
    units = list(units)
    if not units:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(load, units[0])
        for i, unit in enumerate(units):
            data = ahead.result()
            if i + 1 < len(units):
                ahead = pool.submit(load, units[i + 1])
            yield unit, data


class WriteBehind:
    """Hands each output block to a thread that writes it while the next block is merged.

    One write is in flight at a time, and an error in it surfaces at the next
    call. The tensors handed over must not change afterwards (the merge's
    outputs are fresh; a copied input is cloned out of the reader's buffers).

    Not called in a notebook: ``lsedu merge`` uses it (writing behind); see the appendix
    (appendix_streaming_merge.ipynb).
    """

    def __init__(self, writer: ShardedWriter):
        self.writer = writer
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        self.wait()
        self._pending = self._pool.submit(self.writer.write, name, tensor)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        self.wait()
        self._pool.shutdown()
        self.writer.close()

    def abort(self) -> None:
        try:
            self.wait()
        except BaseException:  # noqa: BLE001  (the merge is failing already: report its error, not this one)
            pass
        self._pool.shutdown()
        self.writer.abort()
