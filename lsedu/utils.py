"""Small helpers every notebook uses: one seed, one device, one file hash."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch in one place; returns a torch generator with that seed.

    Record the seed next to every cached result so that it can be reproduced.

    Explained in notebook 00 (00_quickstart.ipynb).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    return torch.Generator().manual_seed(seed)


def get_device(prefer: str | None = None) -> torch.device:
    """The device to compute on: ``prefer`` if it is available, else CUDA, else the CPU.

    ``LSEDU_DEVICE=cpu`` forces a device for every notebook. Never fails:
    a machine without a GPU gets the CPU, so every page runs everywhere.

    Not called in a notebook: every ``lsedu.zoo`` setup picks its device with it (``LSEDU_DEVICE``); see the
    book's page Two tracks (book/tracks.md).
    """
    prefer = prefer or os.environ.get("LSEDU_DEVICE")
    if prefer:
        dev = torch.device(prefer)
        if dev.type == "cpu" or (dev.type == "cuda" and torch.cuda.is_available()):
            return dev
        if dev.type == "mps" and torch.backends.mps.is_available():
            return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


_HASHED: dict[tuple[str, int, float], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MB blocks; remembered per (path, size, mtime) for this process.

    Not called in a notebook: the asset checks of ``lsedu.zoo.load`` and the model card of ``lsedu merge`` use it;
    see notebook 01 (01_weights_as_vectors.ipynb) and the appendix (appendix_streaming_merge.ipynb).
    """
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime)
    if key not in _HASHED:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHED[key] = h.hexdigest()
    return _HASHED[key]


def glue(name: str, value, display: bool = False):
    """Make ``value`` available to the notebook's prose as ``{glue:text}`name```: myst-nb's ``glue``.

    The book is built by myst-nb, which replaces each ``{glue:text}`name``` in
    a markdown cell with the value this run glued under ``name``, so a number
    or a verdict in the prose is the one the code computed. Where myst-nb is
    not installed (a plain Jupyter session), nothing is shown and ``value`` is
    returned, so a notebook runs either way. Returns ``value``.

    Explained in notebook 02 (02_model_soups.ipynb).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be an identifier (letters, digits, _), got {name!r}")
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return value
    myst_glue(name, value, display=display)
    return value


def track_note(track: str):
    """The note a chapter shows when it runs on a track other than the laptop's; None on the laptop track.

    A case-study chapter's tables, plots and glued values come from the run,
    whichever the track, but its discussion was written about the laptop
    track's results, and its guards run only there. On the paper track the
    note says so at the top of the page, so that the laptop prose is not read
    as a description of other numbers. Returns an IPython Markdown object (a
    notebook shows it) or None.

    Explained in notebook 06 (06_case_language.ipynb).
    """
    if not isinstance(track, str) or not track:
        raise ValueError(f"track must be a track name such as 'laptop' or 'paper', got {track!r}")
    if track == "laptop":
        return None
    from IPython.display import Markdown

    return Markdown(
        f"> **This page is running on the `{track}` track.** Its tables, plots and the values pasted into the text "
        f"come from this run; the discussion around them describes the laptop track's results, and the guards at "
        f"the end of the page (which check those results) are skipped. Read the text as an account of the laptop "
        f"run, and the tables as yours.")
