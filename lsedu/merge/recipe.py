"""The ``lsedu merge`` recipe: its YAML schema, read into a checked :class:`MergeRecipe`.

A recipe names a base model, its fine-tunes, a ``merge_method`` and its
``parameters``, in the style mergekit's users know. What a method name and
its parameters mean is one row of the registry, :mod:`lsedu.methods`
(rendered in ``book/methods.md``): the recipe accepts the method's name or
an alias (mergekit's ``linear``), each parameter under its Python keyword or
an alias (``lambda`` for ``lam``, ``trim`` for ``trim_scope``), fills in the
registry's defaults, which are the Python functions' defaults, and checks
each value with the registry's check. How the tool then runs the method is
:data:`lsedu.merge.blocks.STREAMED`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import methods
from ..config import Config, boolean, check_arg, checked, integer
from .blocks import STREAMED, Steps, steps_of

RECIPE_FIELDS = {"merge_method", "base_model", "models", "parameters", "include", "exclude", "masks", "output",
                 "shard_size", "copy_files"}


@dataclass(frozen=True)
class MergeRecipe(Config):
    """A merge, as ``lsedu merge`` reads it from YAML (see :func:`load_recipe`).

    After checking, ``merge_method`` is the method's registry name and
    ``parameters`` hold every parameter under its keyword, defaults filled in.

    Not called in a notebook: ``lsedu merge`` uses it to hold the YAML recipe; see the appendix
    (appendix_streaming_merge.ipynb).
    """

    merge_method: str
    base_model: Path
    models: list[Path]
    output: Path | None = None
    parameters: dict = field(default_factory=dict)
    include: list[str] | None = None
    exclude: list[str] | None = None
    save_masks: Path | None = None
    load_masks: list[Path] | None = None
    shard_size: int = checked(2 * 1024**3, integer(low=1))
    copy_files: bool = checked(True, boolean())

    def __post_init__(self):
        super().__post_init__()
        method = methods.get(self.merge_method)
        if not method.recipe:
            raise ValueError(f"merge_method {self.merge_method!r} cannot run from a recipe: {method.not_in_recipe}")
        object.__setattr__(self, "merge_method", method.name)
        object.__setattr__(self, "parameters", method.resolve(self.parameters, "parameters"))
        if not self.models:
            raise ValueError("models is empty: list at least one fine-tuned model")
        if (self.save_masks or self.load_masks) and not method.masks:
            with_masks = " or ".join(repr(m.name) for m in methods.METHODS if m.masks and m.recipe)
            raise ValueError(f"masks: save/load applies to merge_method {with_masks} only")
        if self.load_masks is not None and len(self.load_masks) != len(self.models):
            raise ValueError(f"masks.load lists {len(self.load_masks)} files for {len(self.models)} models")

    @property
    def method(self) -> methods.Method:
        """The registry row of ``merge_method``."""
        return methods.get(self.merge_method)

    @property
    def steps(self) -> Steps:
        """What the streamed merge does to each block (:data:`lsedu.merge.blocks.STREAMED`)."""
        return steps_of(self.merge_method, self.parameters, masks_loaded=self.load_masks is not None)

    @property
    def global_threshold(self) -> bool:
        """Whether the method needs each task vector's exact global top-k (a sample and one extra read pass)."""
        return self.steps.trim == "global"


def parse_size(value) -> int:
    """``2GB``, ``500MB``, ``1.5GiB`` or a number of bytes.

    Not called in a notebook: ``lsedu merge`` uses it to read a recipe's ``shard_size``; see the appendix
    (appendix_streaming_merge.ipynb).
    """
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).upper() not in units or float(m.group(1)) <= 0:
        raise ValueError(f"shard_size must be a size such as '2GB' or '500MB', got {value!r}")
    return int(float(m.group(1)) * units[m.group(2).upper()])


def load_recipe(path: str | os.PathLike) -> MergeRecipe:
    """Read a YAML recipe; relative paths in it are relative to the recipe's folder.

    .. code-block:: yaml

        merge_method: ties            # a name of lsedu.methods (book/methods.md): average, ties, ...
        base_model: gpt2-base/        # a folder (sharded or not) or a .safetensors/.bin file
        models:
          - model: gpt2-instruct/
          - model: gpt2-science/
        parameters: {density: 0.2, lambda: 1.0, trim: global}   # the method's parameters, any alias
        exclude: ["lm_head.*"]        # tensors copied from the base, unmerged
        output: merged/
        shard_size: 2GB

    Not called in a notebook: ``lsedu merge`` uses it to read the YAML recipes; see the appendix
    (appendix_streaming_merge.ipynb).
    """
    path = Path(path)
    raw = _read_mapping(path)
    resolve = _Resolver(path)
    masks = raw.get("masks") or {}
    if not isinstance(masks, dict) or set(masks) - {"save", "load"}:
        raise ValueError(f"{path}: masks must be a mapping with 'save: FOLDER' and/or 'load: [FILES]'")
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise TypeError(f"{path}: parameters must be a mapping")
    return MergeRecipe(
        merge_method=raw["merge_method"],
        base_model=resolve(raw["base_model"], "base_model"),
        models=_model_paths(raw["models"], resolve),
        output=resolve(raw["output"], "output") if raw.get("output") else None,
        parameters=parameters,
        include=_patterns(raw, "include", path),
        exclude=_patterns(raw, "exclude", path),
        save_masks=resolve(masks["save"], "masks.save") if masks.get("save") else None,
        load_masks=[resolve(p, f"masks.load[{i}]") for i, p in enumerate(masks["load"])] if masks.get("load") else None,
        shard_size=parse_size(raw.get("shard_size", 2 * 1024**3)),
        copy_files=check_arg(raw.get("copy_files", True), f"{path}: copy_files", boolean()),
    )


def _read_mapping(path: Path) -> dict:
    """The recipe file as a mapping with the required fields and no unknown one."""
    if not path.exists():
        raise FileNotFoundError(f"recipe not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping with merge_method, base_model and models")
    unknown = set(raw) - RECIPE_FIELDS
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}; a recipe has {sorted(RECIPE_FIELDS)}")
    for required in ("merge_method", "base_model", "models"):
        if required not in raw:
            raise ValueError(f"{path}: the recipe has no {required!r}")
    return raw


class _Resolver:
    """Paths in a recipe, relative to the recipe's folder; a value that is not a path names the field."""

    def __init__(self, recipe: Path):
        self.recipe = recipe

    def __call__(self, p, what: str) -> Path:
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"{self.recipe}: {what} must be a path, got {type(p).__name__}")
        p = Path(p).expanduser()
        return p if p.is_absolute() else self.recipe.parent / p


def _model_paths(models, resolve: _Resolver) -> list[Path]:
    """``models: [{model: PATH}, ...]`` (or bare paths); per-model parameters other than weight 1 are refused."""
    path = resolve.recipe
    if not isinstance(models, list):
        raise TypeError(f"{path}: models must be a list of {{model: PATH}} entries")
    out = []
    for i, entry in enumerate(models):
        if isinstance(entry, dict):
            extra = set(entry) - {"model", "parameters"}
            if "model" not in entry or extra:
                raise ValueError(f"{path}: models[{i}] must be {{model: PATH}}, got keys {sorted(entry)}")
            if entry.get("parameters") not in (None, {}, {"weight": 1}, {"weight": 1.0}):
                raise ValueError(f"{path}: models[{i}].parameters: per-model parameters are not supported; "
                                 "put density, lambda and the like under the top-level parameters")
            entry = entry["model"]
        out.append(resolve(entry, f"models[{i}]"))
    return out


def _patterns(raw: dict, key: str, path: Path) -> list[str] | None:
    """``include`` / ``exclude``: a glob pattern or a list of them."""
    v = raw.get(key)
    if v is None:
        return None
    v = [v] if isinstance(v, str) else v
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise TypeError(f"{path}: {key} must be a glob pattern or a list of them")
    return v


def _check_streamed() -> None:
    """Every method a recipe can run has its streamed steps, and no other (checked at import)."""
    runnable = {m.name for m in methods.METHODS if m.recipe}
    if runnable != set(STREAMED):
        raise RuntimeError(f"lsedu.merge.blocks.STREAMED covers {sorted(STREAMED)}, the registry's recipe methods "
                           f"are {sorted(runnable)}")


_check_streamed()
