"""A disk cache of trained weights: safetensors plus a JSON record, keyed by a hash of the config.

Fine-tunes are the slow part of every chapter, and several notebooks need
the same ones. Each cached entry is two files in ``$LSEDU_CACHE`` (default
``~/.cache/lsedu``): ``KIND/KEY.safetensors`` and ``KIND/KEY.json``, where
KEY hashes the whole config (model, task, data, hyperparameters, seed). The
JSON keeps the config, the metrics and the library versions next to the
weights, so every cached number can be traced to the run that made it.
Both files are written to temporary names and renamed, so an interrupted
run never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

StateDict = dict[str, torch.Tensor]


def cache_root() -> Path:
    """The cache folder: ``$LSEDU_CACHE`` if set, else ``~/.cache/lsedu``.

    Not called in a notebook: the zoo's cache of fine-tunes (notebooks 01 to 09) lives there; see the book's page on the
    two tracks (book/tracks.md).
    """
    return Path(os.environ.get("LSEDU_CACHE") or Path.home() / ".cache" / "lsedu").expanduser()


def config_key(config: Mapping[str, Any]) -> str:
    """A 16-hex-digit hash of ``config`` as canonical JSON (sorted keys): equal configs, equal keys.

    Not called in a notebook: the zoo's cache keys its entries with it; see the book's page on the two tracks
    (book/tracks.md).
    """
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"config must hold only JSON values (str, int, float, bool, None, lists, dicts): {e}") from None
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _versions() -> dict[str, str]:
    import lsedu

    # The thread count too: it changes float reductions, hence the last bits of a fine-tune.
    out = {"lsedu": lsedu.__version__, "torch": torch.__version__, "torch_threads": str(torch.get_num_threads())}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:
        pass
    return out


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def entry_paths(kind: str, config: Mapping[str, Any]) -> tuple[Path, Path]:
    """The ``(weights, record)`` paths of the cache entry for ``config``.

    Not called in a notebook: the zoo's cache (``cached``, ``load_cached``) uses it; see the book's page on the two
    tracks (book/tracks.md).
    """
    if not kind or "/" in kind or kind.startswith("."):
        raise ValueError(f"kind must be a plain folder name, got {kind!r}")
    folder = cache_root() / kind
    key = config_key(config)
    return folder / f"{key}.safetensors", folder / f"{key}.json"


def partial_path(kind: str, config: Mapping[str, Any]) -> Path:
    """Where an unfinished build of the entry for ``config`` keeps its progress: ``KIND/KEY.partial.pt``.

    Training writes its state there from time to time (weights, optimizer,
    scheduler, random state, steps done), so an interrupted fine-tune resumes
    where it stopped; the file is removed once the entry is complete.

    Not called in a notebook: the setups' training (``Setup.finetune``, ``Setup.multitask``) resumes from it; see the
    book's page on the two tracks (book/tracks.md).
    """
    weights, _ = entry_paths(kind, config)
    return weights.with_name(weights.name.removesuffix(".safetensors") + ".partial.pt")


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)`` under a temporary name, then renamed: ``path`` is whole or absent.

    Not called in a notebook: the setups' resumable training writes its progress with it; see the book's page on the
    two tracks (book/tracks.md).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_cached(kind: str, config: Mapping[str, Any]) -> tuple[StateDict, dict] | None:
    """The cached ``(state_dict, record)`` for ``config``, or None if there is none.

    Not called in a notebook: the zoo's cache (``cached``) uses it; see the book's page on the two tracks
    (book/tracks.md).
    """
    weights, record = entry_paths(kind, config)
    if not (weights.exists() and record.exists()):
        return None
    rec = json.loads(record.read_text())
    if rec.get("config") != json.loads(json.dumps(config)):  # a hash collision, or a hand-edited file
        return None
    return load_file(weights), rec


def body_digest(body: Mapping[str, torch.Tensor]) -> str:
    """A sha256 of a state dict's names, dtypes, shapes and bytes: equal weights, equal digests.

    Any change to any entry changes it, so a cached score keyed by it belongs
    to exactly these weights. Hashing runs at about 1.5 GB/s: 10 ms for the
    vision encoder, 0.3 s for SmolLM2.

    Not called in a notebook: ``Setup.correct`` keys what it remembers with it; see the book's page on the two tracks
    (book/tracks.md).
    """
    h = hashlib.sha256()
    for name in sorted(body):
        t = body[name].detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}\0{t.dtype}\0{tuple(body[name].shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().data)
    return h.hexdigest()


def load_record(kind: str, config: Mapping[str, Any]) -> dict | None:
    """The metrics kept by :func:`save_record` for ``config``, or None if there are none.

    Not called in a notebook: ``Setup.correct`` reads the scores it remembered with it; see the book's page on the two
    tracks (book/tracks.md).
    """
    _, path = entry_paths(kind, config)
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
    except ValueError:  # not JSON (a damaged disk, a hand-edited file): a miss, rebuilt and written over atomically
        return None
    if not isinstance(rec, dict) or rec.get("config") != json.loads(json.dumps(config)) or "metrics" not in rec:
        return None  # a hash collision, or a hand-edited file
    return rec["metrics"]


def save_record(kind: str, config: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
    """Keep ``metrics`` (JSON values) for ``config``: a cache entry with a record and no weights, written atomically.

    Not called in a notebook: ``Setup.correct`` remembers its scores with it; see the book's page on the two tracks
    (book/tracks.md).
    """
    _, path = entry_paths(kind, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"config": json.loads(json.dumps(config)), "metrics": dict(metrics), "versions": _versions()}
    _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, sort_keys=True) + "\n"))


def cached(
    kind: str,
    config: Mapping[str, Any],
    build: Callable[[], tuple[Mapping[str, torch.Tensor], Mapping[str, Any]]],
    refresh: bool = False,
) -> tuple[StateDict, dict]:
    """``build()`` once for ``config`` and keep its ``(state_dict, metrics)``; later calls load them.

    Returns ``(state_dict, record)`` where ``record`` holds ``config``,
    ``metrics``, ``seconds`` (how long the build took) and ``versions``.
    ``refresh=True`` builds again and overwrites the entry.

    Not called in a notebook: the setups cache their fine-tunes with it (trained on first use, then cached); see
    notebook 03 (03_task_arithmetic.ipynb).
    """
    if not refresh:
        hit = load_cached(kind, config)
        if hit is not None:
            return hit
    start = time.perf_counter()
    state_dict, metrics = build()
    sd = {n: t.detach().to("cpu").contiguous() for n, t in state_dict.items()}
    record = {"config": json.loads(json.dumps(config)), "metrics": dict(metrics),
              "seconds": round(time.perf_counter() - start, 3), "versions": _versions()}
    weights, rec_path = entry_paths(kind, config)
    weights.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(weights, lambda tmp: save_file(sd, tmp))
    _atomic_write(rec_path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n"))
    return sd, record
