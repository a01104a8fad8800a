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

import fnmatch
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import methods
from ..config import Config, boolean, check_arg, checked, integer
from ..task_vectors import select
from .blocks import STREAMED, Steps, steps_of
from .io import Checkpoint

#: The largest ``shard_size``: a shard's size must fit safetensors' 64-bit offsets with room to spare.
MAX_SHARD_SIZE = 2**62
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


def parse_size(value, name: str = "shard_size") -> int:
    """``2GB``, ``500MB``, ``1.5GiB`` or a number of bytes: at least 1 byte, at most 2**62.

    Anything else (0, a negative size, ``"10XB"``, a bool, an overflowing
    number) is a ValueError naming ``name``.

    Not called in a notebook: ``lsedu merge`` uses it to read a recipe's ``shard_size``; see the appendix
    (appendix_streaming_merge.ipynb).
    """
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    size = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        size = int(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).upper() in units and math.isfinite(float(m.group(1))):
            size = int(float(m.group(1)) * units[m.group(2).upper()])
    if size is None or not 1 <= size <= MAX_SHARD_SIZE:
        why = "" if size is None else " (too large)" if size > MAX_SHARD_SIZE else " (less than 1 byte)"
        raise ValueError(f"{name} must be a size such as '2GB' or '500MB' (1 byte to 2**62), got {value!r}{why}")
    return size


def load_recipe(path: str | os.PathLike) -> MergeRecipe:
    """Read a YAML recipe; relative paths in it are relative to the recipe's folder.

    .. code-block:: yaml

        merge_method: ties            # a name of lsedu.methods (book/methods.md): average, ties, ...
        base_model: gpt2-base/        # a folder (sharded or not) or a .safetensors/.bin file
        models:
          - model: gpt2-instruct/
          - model: gpt2-science/
        parameters: {density: 0.2, lambda: 1.0, trim: global}   # the method's parameters, any alias
        exclude: ["*wte.weight"]      # tensors copied from the base, unmerged (GPT-2's lm_head is tied to it)
        output: merged/
        shard_size: 2GB

    Not called in a notebook: ``lsedu merge`` uses it to read the YAML recipes; see the appendix
    (appendix_streaming_merge.ipynb).
    """
    path = Path(path)
    raw = _read_mapping(path)
    resolve = _Resolver(path)
    save, load = _masks(raw, path, resolve)
    parameters = raw.get("parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise TypeError(f"{path}: parameters must be a mapping, got {_short(parameters)}")
    if not all(isinstance(k, str) for k in parameters):
        raise TypeError(f"{path}: parameters' names must be strings, got {sorted(map(repr, parameters))}")
    method = raw["merge_method"]
    if not isinstance(method, str):
        raise TypeError(f"{path}: merge_method must be a method's name, got {_short(method)}")
    return MergeRecipe(
        merge_method=method,
        base_model=resolve(raw["base_model"], "base_model"),
        models=_model_paths(raw["models"], resolve),
        output=resolve(raw["output"], "output") if raw.get("output") is not None else None,
        parameters=parameters,
        include=_patterns(raw, "include", path),
        exclude=_patterns(raw, "exclude", path),
        save_masks=save,
        load_masks=load,
        shard_size=parse_size(raw.get("shard_size", 2 * 1024**3), f"{path}: shard_size"),
        copy_files=check_arg(raw.get("copy_files", True), f"{path}: copy_files", boolean()),
    )


def _short(value) -> str:
    """A value in an error message: its repr, cut short, and its type."""
    r = repr(value)
    return f"{r[:60] + '...' if len(r) > 60 else r} ({type(value).__name__})"


def _masks(raw: dict, path: Path, resolve: _Resolver) -> tuple[Path | None, list[Path] | None]:
    """``masks: {save: FOLDER, load: [FILE, ...]}``, either or both; every other shape is an error naming the key."""
    masks = raw.get("masks")
    if masks is None:
        return None, None
    if not isinstance(masks, dict) or not masks or set(masks) - {"save", "load"}:
        raise ValueError(f"{path}: masks must be a mapping with 'save: FOLDER' and/or 'load: [FILES]', "
                         f"got {_short(masks)}")
    save = resolve(masks["save"], "masks.save") if "save" in masks else None
    load = None
    if "load" in masks:
        files = masks["load"]
        if not isinstance(files, list) or not files:
            raise TypeError(f"{path}: masks.load must be a non-empty list of mask files, one a model, "
                            f"got {_short(files)}")
        load = [resolve(p, f"masks.load[{i}]") for i, p in enumerate(files)]
    return save, load


def _read_mapping(path: Path) -> dict:
    """The recipe file as a mapping with the required fields and no unknown one."""
    if not path.exists():
        raise FileNotFoundError(f"recipe not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path}: the recipe is a folder, not a YAML file")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ValueError(f"{path}: the recipe cannot be read ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: the recipe is not UTF-8 text (byte {e.start}: {e.object[e.start]:#04x})") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({_yaml_error(e)})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping with merge_method, base_model and models, "
                         f"got {_short(raw)}")
    unknown = [k for k in raw if k not in RECIPE_FIELDS]
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {sorted(map(str, unknown))}; a recipe has {sorted(RECIPE_FIELDS)}")
    for required in ("merge_method", "base_model", "models"):
        if required not in raw:
            raise ValueError(f"{path}: the recipe has no {required!r}")
    return raw


def _yaml_error(e: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (line and column, counted from 1)."""
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else what


class _Resolver:
    """Paths in a recipe, relative to the recipe's folder; a value that is not a path names the field."""

    def __init__(self, recipe: Path):
        self.recipe = recipe

    def __call__(self, p, what: str) -> Path:
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"{self.recipe}: {what} must be a path, got {_short(p)}")
        if not str(p).strip():
            raise ValueError(f"{self.recipe}: {what} must be a path, got an empty string")
        p = Path(p).expanduser()
        return p if p.is_absolute() else self.recipe.parent / p


def _model_paths(models, resolve: _Resolver) -> list[Path]:
    """``models: [{model: PATH}, ...]`` (or bare paths); per-model parameters other than weight 1 are refused."""
    path = resolve.recipe
    if not isinstance(models, list):
        raise TypeError(f"{path}: models must be a list of {{model: PATH}} entries, got {_short(models)}")
    if not models:
        raise ValueError(f"{path}: models is empty: list at least one fine-tuned model")
    out = []
    for i, entry in enumerate(models):
        if isinstance(entry, dict):
            extra = set(entry) - {"model", "parameters"}
            if "model" not in entry or extra:
                raise ValueError(f"{path}: models[{i}] must be {{model: PATH}}, got keys {sorted(map(str, entry))}")
            params = entry.get("parameters")
            weight = params.get("weight") if isinstance(params, dict) and set(params) == {"weight"} else None
            if params not in (None, {}) and not (type(weight) in (int, float) and weight == 1):
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
        raise TypeError(f"{path}: {key} must be a glob pattern or a list of them, got {_short(raw.get(key))}")
    if key == "include" and not v:
        raise ValueError(f"{path}: include is an empty list, which would merge nothing; leave it out to merge "
                         "every tensor")
    return v


def select_tensors(base: Checkpoint, names: Sequence[str], include: Sequence[str] | None = None,
                   exclude: Sequence[str] | None = None) -> list[str]:
    """The tensors a recipe merges: ``lsedu.task_vectors.select`` over ``names``, told about tied weights.

    The rule for tied and absent weights: a pattern that matches no tensor
    that the base saves is an error (a typo, or a model with other names),
    and a tied head is not saved, so a pattern that names only it is one too.
    Its message then says that the head is tied to the embedding and saved
    under the embedding's name (:meth:`lsedu.merge.io.Checkpoint.tied_weights`),
    so that the recipe names that tensor, which excluding excludes the head with
    it, or nothing.

    Not called in a notebook: ``lsedu merge`` chooses its tensors with it; see the appendix
    (appendix_streaming_merge.ipynb).
    """
    names = list(names)
    tied = None
    for key, patterns in (("include", include), ("exclude", exclude)):
        for p in ([patterns] if isinstance(patterns, str) else patterns or []):
            if not isinstance(p, str) or any(fnmatch.fnmatchcase(n, p) for n in names):
                continue
            tied = base.tied_weights() if tied is None else tied
            heads = [(head, saved) for head, saved in tied.items() if fnmatch.fnmatchcase(head, p)]
            if heads:
                head, saved = heads[0]
                raise ValueError(
                    f"{key} pattern {p!r} matches no tensor of {base.path}: {head!r} is tied to the input "
                    f"embedding ({base.folder / 'config.json'} has tie_word_embeddings) and saved once, as "
                    f"{saved!r}; {key} {saved!r}, which is the head too, or nothing")
    return select(names, include, exclude)


def _check_streamed() -> None:
    """Every method a recipe can run has its streamed steps, and no other (checked at import)."""
    runnable = {m.name for m in methods.METHODS if m.recipe}
    if runnable != set(STREAMED):
        raise RuntimeError(f"lsedu.merge.blocks.STREAMED covers {sorted(STREAMED)}, the registry's recipe methods "
                           f"are {sorted(runnable)}")


_check_streamed()
