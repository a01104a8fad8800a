"""The merge methods of lsedu, one registry row each: name, function, parameters, data, label, grid.

Every place that names a method reads it here: the ``lsedu merge`` recipe
(:mod:`lsedu.merge.recipe`), the tests, and the table of ``book/methods.md``
(:func:`markdown_table`; ``python -m lsedu.methods --update book/methods.md``
rewrites it). A row records, once:

* ``name``, the recipe's ``merge_method``, and the other names a recipe may
  use (mergekit's ``linear`` for averaging, the Python function's name);
  ``key`` is the method's key in the case studies (``lsedu.casestudy``);
* ``function``, the readable in-memory function that defines the method, and
  ``fast_path``, what ``lsedu merge`` runs in its place: a numba kernel of
  :mod:`lsedu.merge.fused`, tested equal to the function bit for bit;
* ``params``: one :class:`Param` per parameter, under the Python keyword
  (``lam``, ``trim_scope``), with its default, its check (a
  :class:`lsedu.config.Check`) and the aliases recipe writers expect
  (``lambda``, mergekit's ``weight``, ``trim``); each default says why it
  is that value, and equals the default of the Python function;
* ``data``: what the method needs besides the checkpoints: ``"none"``,
  ``"unlabeled"`` inputs or ``"labeled"`` examples;
* ``label``, the method's row in the case-study tables, and ``grid``, the
  values its parameters are searched over on validation data there;
  ``case_study`` is False for a method the case studies do not run yet.

>>> from lsedu import methods
>>> methods.get("ties").function.__name__
'ties_merge'
>>> methods.get("ties").defaults
{'density': 0.2, 'lam': 1.0, 'trim_scope': 'global'}
>>> methods.get("ties").resolve({"lambda": 0.9, "trim": "per_tensor"})
{'density': 0.2, 'lam': 0.9, 'trim_scope': 'per_tensor'}
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from . import _pages
from .adamerging import adamerging
from .arithmetic import task_arithmetic
from .consensus import consensus_merge
from .data_aware import fisher_merge, regmean_merge
from .config import Check, boolean, choice, integer, number
from .drop_rescale import dare_merge
from .isotropic import iso_c_merge
from .localize_stitch import localize_trained, stitch_dataless
from .soups import uniform_soup
from .ties import ties_merge

__all__ = ["DATA", "METHODS", "Method", "Param", "book_block", "get", "labels", "markdown_table", "names",
           "stitch_dataless"]

#: What a method needs besides the checkpoints.
DATA = ("none", "unlabeled", "labeled")


@dataclass(frozen=True)
class Param:
    """One parameter of a method: its Python keyword, default, check and recipe aliases.

    ``doc`` says what it is; ``why`` why the default is what it is.

    Not called in a notebook: the registry's rows, rendered on the page Merge methods; see book/methods.md.
    """

    name: str
    default: Any
    check: Check
    aliases: tuple[str, ...] = ()
    doc: str = ""
    why: str = ""

    @property
    def spellings(self) -> tuple[str, ...]:
        """The names a recipe may give it: the keyword first, then the aliases."""
        return (self.name, *self.aliases)


@dataclass(frozen=True, eq=False)
class Method:
    """One merge method: a registry row (see the module docstring for each field).

    Not called in a notebook: the registry's rows, rendered on the page Merge methods; see book/methods.md.
    """

    name: str
    key: str
    label: str
    function: Callable
    inputs: str
    params: tuple[Param, ...]
    data: str
    grid: Mapping[str, tuple]
    doc: str
    aliases: tuple[str, ...] = ()
    fast_path: str = "not in a recipe"
    recipe: bool = True
    masks: bool = False
    not_in_recipe: str = ""
    case_study: bool = True

    def __post_init__(self):
        if self.data not in DATA:
            raise ValueError(f"Method {self.name!r}: data must be one of {list(DATA)}, got {self.data!r}")
        unknown = set(self.grid) - {p.name for p in self.params}
        if unknown:
            raise ValueError(f"Method {self.name!r}: grid names {sorted(unknown)}, which are not its parameters")
        object.__setattr__(self, "grid", MappingProxyType({k: tuple(v) for k, v in self.grid.items()}))

    @property
    def names(self) -> tuple[str, ...]:
        """Every name that selects this method: ``name``, ``key`` and ``aliases``."""
        return tuple(dict.fromkeys((self.name, self.key, *self.aliases)))

    @property
    def defaults(self) -> dict[str, Any]:
        """``{keyword: default}`` of every parameter."""
        return {p.name: p.default for p in self.params}

    def param(self, name: str) -> Param:
        """The parameter ``name`` (its keyword or an alias); ValueError naming the method's parameters."""
        for p in self.params:
            if name in p.spellings:
                return p
        raise ValueError(f"merge_method {self.name!r} has no parameter {name!r}; it takes {self._takes()}")

    def resolve(self, given: Mapping[str, Any], where: str = "parameters") -> dict[str, Any]:
        """``given`` (a recipe's parameters, any spelling) under the keywords, defaults filled in, each checked.

        An unknown name, or one parameter given under two names, is a
        ValueError; a bad value is the error of the parameter's check, naming
        ``where.<the name given>``.
        """
        unknown = sorted(n for n in given if not any(n in p.spellings for p in self.params))
        if unknown:
            raise ValueError(f"{where} {unknown} do not apply to merge_method {self.name!r}; "
                             f"it takes {self._takes()}")
        out = {}
        for p in self.params:
            used = [s for s in p.spellings if s in given]
            if len(used) > 1:
                raise ValueError(f"{where} gives {p.name} twice, as {used}: give one of them")
            out[p.name] = p.check(given[used[0]], f"{where}.{used[0]}") if used else p.default
        return out

    def usage(self) -> str:
        """The Python call this method is, e.g. ``lsedu.ties_merge(base, task_vectors, density=0.2, ...)``."""
        import lsedu

        fn = self.function.__name__
        where = "lsedu" if getattr(lsedu, fn, None) is self.function else self.function.__module__
        args = [self.inputs, *(f"{p.name}={p.default!r}" for p in self.params)]
        return f"{where}.{fn}({', '.join(args)})"

    def _takes(self) -> str:
        if not self.params:
            return "no parameters"
        return ", ".join(p.name + (f" (also {', '.join(p.aliases)})" if p.aliases else "") for p in self.params)


# --- the parameters ----------------------------------------------------------------------------------
_ANY = number()
_DENSITY = number(0, 1, low_open=True)
_LAM_ALIASES = ("lambda", "scaling", "scaling_factor")

LAM_TASK_ARITHMETIC = Param(
    "lam", 0.3, _ANY, (*_LAM_ALIASES, "weight"),
    doc="lambda in theta_pre + lambda * sum_i tau_i; negative forgets",
    why="One value for Python and recipes (a recipe used to get 1.0). lambda = 1 adds every task vector whole, "
        "so merging N tasks moves the model N fine-tunes' displacements from the base; Ilharco et al. 2023 "
        "choose lambda on held-out validation data in [0, 1], and small values win once several vectors are "
        "added. 0.3 is what `lsedu.task_arithmetic` and the notebooks have always used; tune it with "
        "`lsedu.pick_lambda`. mergekit's `weight` at the top level of a recipe is this lambda for every model.")
LAM_TIES = Param(
    "lam", 1.0, _ANY, _LAM_ALIASES,
    doc="lambda in theta_pre + lambda * tau_m (tau_m: the disjoint mean)",
    why="The TIES paper takes lambda = 1 when there is no validation data to tune it on: the disjoint mean "
        "averages the agreeing task vectors instead of adding them, so it does not grow with the number of tasks.")
DENSITY_TIES = Param(
    "density", 0.2, _DENSITY,
    doc="fraction of each task vector's entries kept by the trim (the top-k of |tau|)",
    why="The TIES paper's k = 20%.")
TRIM_SCOPE = Param(
    "trim_scope", "global", choice("global", "per_tensor"), ("trim", "scope"),
    doc="rank |tau| over the whole task vector (global) or within each tensor (per_tensor)",
    why="The TIES paper ranks the whole task vector at once; per_tensor is the trim of mergekit and peft, "
        "a different method that keeps other entries.")
DARE_P = Param(
    "p", 0.9, number(0, 1, high_open=True), ("drop_rate",),
    doc="probability of dropping each entry of a task vector; the kept ones are divided by 1 - p",
    why="Yu et al. 2024 drop 90% of the delta parameters of fine-tuned language models (and more) with little "
        "loss. Not mergekit's DARE `density`, which is 1 - p.")
LAM_DARE = Param(
    "lam", 1.0, _ANY, _LAM_ALIASES,
    doc="lambda of the merge that follows the drop (task arithmetic's or TIES's)",
    why="`lsedu.dare_merge`'s default, and what a recipe got before: the rescaled vectors are merged as "
        "given. Unlike task arithmetic's 0.3 it is not tuned for many tasks; the case studies search it on "
        "validation (its grid in the table). Change it in lsedu/drop_rescale.py: the registry's test makes recipes follow.")
DARE_SEED = Param(
    "seed", 0, integer(),
    doc="seed of the drops; task vector i uses seed + i",
    why="Any fixed seed makes a merge repeatable; 0 as everywhere in lsedu.")
DARE_THEN = Param(
    "then", "task_arithmetic", choice("task_arithmetic", "ties"),
    doc="the merge of the dropped vectors; with ties, density and trim_scope apply",
    why="Task arithmetic is the merge the DARE paper applies after the drop first (the case studies' row "
        "is DARE + task arithmetic); ties is mergekit's dare_ties.")
# DARE then TIES passes these on to lsedu.ties_merge: TIES's own parameters, defaults and reasons.
DENSITY_TIES_AFTER_DARE = replace(DENSITY_TIES, doc="with then: ties, " + DENSITY_TIES.doc)
TRIM_SCOPE_AFTER_DARE = replace(TRIM_SCOPE, doc="with then: ties, " + TRIM_SCOPE.doc)
DENSITY_STITCH = Param(
    "density", 0.01, _DENSITY,
    doc="fraction of each task vector kept by its mask (the top-k of |tau|, or the trained mask's size)",
    why="He et al. 2025 localize about 1% of the entries of each task vector.")
TRAINED = (
    Param("sigmoid_bias", 3.0, number(0, low_open=True), doc="mask logits start at +-sigmoid_bias",
          why="The paper's initialisation."),
    Param("l1", 1e-5, number(0), doc="weight of the L1 term sum sigmoid(S)",
          why="`lsedu.localize_trained`'s default; it has to be set per model (the notebooks calibrate it)."),
    Param("lr", 0.1, number(0, low_open=True), doc="step size of the mask logits",
          why="With Adam a logit moves about lr a step whatever its gradient's scale."),
    Param("epochs", 10, integer(1), doc="passes over the examples",
          why="`lsedu.localize_trained`'s default; the case studies take fewer, cheap steps (their own config)."),
    Param("optimizer", "adam", choice("adam", "sgd"), doc="adam or sgd",
          why="The task gradients are tiny; Adam's step does not depend on their scale, SGD's does."),
)

FISHER_SMOOTH = Param(
    "smooth", 1e-10, number(0), doc="added to every entry of every Fisher before the weighting",
    why="The authors' code adds 1e-10 (its fisher_smooth), so an entry that no fine-tune's examples reach gets "
        "the plain average of the fine-tunes instead of 0/0.")
REGMEAN_ALPHA = Param(
    "alpha", 1.0, number(0, 1), doc="scale of the off-diagonal entries of each Gram matrix (diagonal kept)",
    why="1, no scaling, is the authors' code's default (regmean_reduce_nondiag: -1); Jin et al. 2023 lower it "
        "when the summed Gram matrix is badly conditioned, as with few inputs.")

CONSENSUS_K = Param(
    "k", 2, integer(0), doc="how many tasks' TALL masks must hold an entry for it to stay",
    why="The authors' default: it drops the entries that one task alone claims (selfish) and those that no task "
        "claims (catastrophic). 0 is task arithmetic; more than the number of tasks is the pretrained model.")
TALL_LAMBDA = Param(
    "tall_lambda", 0.4, number(0), doc="lambda_t of the TALL masks |tau_t| > lambda_t * |tau_MTL - tau_t|",
    why="The authors choose each task's lambda from 0.2 to 0.6 on its validation data; 0.4, the middle of that "
        "range, serves without data.")
LAM_CONSENSUS = replace(LAM_TASK_ARITHMETIC, doc="lambda in theta_pre + lambda * (m * sum_i tau_i)",
                        why="Task arithmetic's lambda, for the same sum with the entries outside the consensus "
                            "mask set to 0; tune it the same way.")

LAM_ISO_C = Param(
    "lam", 1.0, _ANY, _LAM_ALIASES, doc="alpha in theta_pre + alpha * mean(S) U V^T",
    why="Marczak et al. 2025 choose alpha on validation data; 1 adds the flattened sum at its own scale, the "
        "mean singular value of the summed task vectors.")

ADAMERGING = (
    Param("layer_wise", True, boolean(), doc="one lambda per task and tensor (True) or per task (False)",
          why="Layer-wise AdaMerging is the paper's stronger variant (its CLIP ViT-B/32 row the paper compares with)."),
    Param("init", 0.3, number(0, 1), doc="the value every lambda starts from",
          why="Yang et al. 2024 start from 0.3, task arithmetic's usual lambda."),
    Param("lr", 1e-3, number(0, low_open=True), doc="Adam's step size for the lambdas",
          why="The paper's learning rate."),
)

# --- the validation grids of the case studies (their cached results depend on these values) -----------
LAMBDA_GRID = (0.2, 0.4, 0.6, 0.8, 1.0)
STITCH_DENSITIES = (0.01, 0.05, 0.2)

METHODS: tuple[Method, ...] = (
    Method(
        name="average", key="averaging", label="uniform averaging", aliases=("linear", "uniform_soup"),
        function=uniform_soup, inputs="finetuned", params=(), data="none", grid={},
        doc="theta = (1/n) sum_i theta_i (Wortsman et al. 2022). mergekit's linear with equal weights.",
        fast_path="`lsedu.uniform_soup` itself"),
    Method(
        name="task_arithmetic", key="task_arithmetic", label="task arithmetic",
        function=task_arithmetic, inputs="base, task_vectors", params=(LAM_TASK_ARITHMETIC,), data="none",
        grid={"lam": LAMBDA_GRID},
        doc="theta = theta_pre + lambda * sum_i tau_i (Ilharco et al. 2023).",
        fast_path="`lsedu.merge.fused.task_arithmetic`"),
    Method(
        name="ties", key="ties", label="TIES", aliases=("ties_merge",),
        function=ties_merge, inputs="base, task_vectors", params=(DENSITY_TIES, LAM_TIES, TRIM_SCOPE),
        data="none", grid={"density": (0.1, 0.2, 0.5), "lam": (0.6, 1.0, 1.4)},
        doc="trim, elect the sign, disjoint mean, theta_pre + lambda * tau_m (Yadav et al. 2023).",
        fast_path="`lsedu.merge.fused.ties`"),
    Method(
        name="dare", key="dare", label="DARE + task arithmetic", aliases=("dare_merge",),
        function=dare_merge, inputs="base, task_vectors",
        params=(DARE_P, LAM_DARE, DARE_SEED, DARE_THEN, DENSITY_TIES_AFTER_DARE, TRIM_SCOPE_AFTER_DARE),
        data="none", grid={"p": (0.5,), "lam": LAMBDA_GRID},
        doc="drop and rescale each task vector, then task arithmetic or TIES (Yu et al. 2024). "
            "The case studies fix p at 0.5 and search lambda.",
        fast_path="`lsedu.drop_rescale.drop_and_rescale` itself, then the fast path of `then`"),
    Method(
        name="localize_stitch", key="stitch_dataless", label="Localize-and-Stitch (dataless)",
        aliases=("localize_and_stitch",), function=stitch_dataless, inputs="base, task_vectors",
        params=(DENSITY_STITCH,), data="none", grid={"density": STITCH_DENSITIES}, masks=True,
        doc="masks: the top-density of |tau_i|; theta_pre + sum_i gamma'_i tau_i, overlaps averaged "
            "(He et al. 2025, Sec. 3).",
        fast_path="`lsedu.merge.fused.stitch`"),
    Method(
        name="localize_stitch_trained", key="stitch_trained", label="Localize-and-Stitch (trained)",
        function=localize_trained, inputs="model, base, task_vector, loss_fn, loader",
        params=(DENSITY_STITCH, *TRAINED), data="labeled", grid={"density": STITCH_DENSITIES}, masks=True,
        recipe=False,
        doc="train each task's mask on its labeled examples (He et al. 2025, Sec. 3.1), then lsedu.stitch. "
            "The case studies keep the density chosen for the dataless masks.",
        not_in_recipe="it trains each task's mask on labeled examples, which a recipe cannot give; train the "
                      "masks in Python (lsedu.localize_trained), save them with lsedu.merge.save_masks and "
                      "merge with merge_method: localize_stitch and masks: {load: [...]}"),
    Method(
        name="consensus", key="consensus", label="Consensus merging (TALL masks)",
        aliases=("consensus_merge", "tall_masks"), function=consensus_merge, inputs="base, task_vectors",
        params=(CONSENSUS_K, TALL_LAMBDA, LAM_CONSENSUS), data="none", grid={}, recipe=False, case_study=False,
        doc="TALL masks m_t = |tau_t| > lambda_t |tau_MTL - tau_t|; keep the entries at least k masks hold, then "
            "task arithmetic on what is kept (Wang et al. 2024). Localize-and-Stitch's nearest relative.",
        not_in_recipe="lsedu merge does not stream it yet; call lsedu.consensus.consensus_merge in Python"),
    Method(
        name="iso_c", key="iso_c", label="Iso-C", aliases=("iso_c_merge",), function=iso_c_merge,
        inputs="base, task_vectors", params=(LAM_ISO_C,), data="none", grid={}, recipe=False, case_study=False,
        doc="per weight matrix, the sum of the task vectors with every singular value set to their mean; other "
            "tensors get the mean task vector (Marczak et al. 2025).",
        not_in_recipe="lsedu merge does not stream it yet; call lsedu.isotropic.iso_c_merge in Python"),
    Method(
        name="adamerging", key="adamerging", label="AdaMerging (layer-wise)", function=adamerging,
        inputs="base, task_vectors, entropy, batches", params=ADAMERGING, data="unlabeled", grid={}, recipe=False,
        case_study=False,
        doc="theta_l = theta_pre,l + sum_t lambda_{t,l} tau_{t,l}, the lambdas minimising the entropy of the merged "
            "model's predictions on unlabeled inputs (Yang et al. 2024).",
        not_in_recipe="it learns its coefficients from the merged model's predictions on unlabeled inputs, which "
                      "a recipe cannot give; call lsedu.adamerging.adamerging in Python"),
    Method(
        name="fisher", key="fisher", label="Fisher merging", aliases=("fisher_merge",),
        function=fisher_merge, inputs="finetuned, fishers", params=(FISHER_SMOOTH,), data="labeled", grid={},
        recipe=False, case_study=False,
        doc="theta = sum_i F_i theta_i / sum_i F_i per entry, F_i the diagonal Fisher of fine-tune i on its "
            "labeled examples (Matena & Raffel 2022, Eq. 3); tensors without a Fisher are averaged.",
        not_in_recipe="it weighs each fine-tune by its Fisher, computed from labeled examples, which a recipe "
                      "cannot give; compute them in Python (lsedu.data_aware.diagonal_fisher) and call "
                      "lsedu.data_aware.fisher_merge"),
    Method(
        name="regmean", key="regmean", label="RegMean", aliases=("regmean_merge",),
        function=regmean_merge, inputs="finetuned, grams", params=(REGMEAN_ALPHA,), data="unlabeled", grid={},
        recipe=False, case_study=False,
        doc="each linear layer W = (sum_i W_i G_i)(sum_i G_i)^-1, G_i the Gram matrix of the inputs fine-tune i's "
            "layer sees on its task (Jin et al. 2023, Eq. 2); every other tensor averaged.",
        not_in_recipe="it needs each fine-tune's input Gram matrices, computed from its task's inputs, which a "
                      "recipe cannot give; compute them in Python (lsedu.data_aware.gram_matrices) and call "
                      "lsedu.data_aware.regmean_merge"),
)


def names() -> list[str]:
    """The public names of the methods, in table order.

    Not called in a notebook: the registry's tests use it; see book/methods.md.
    """
    return [m.name for m in METHODS]


def get(name: str) -> Method:
    """The method called ``name``: its public name, its case-study key or an alias; ValueError otherwise.

    Not called in a notebook: casestudy and ``lsedu merge`` look methods up with it; see book/methods.md.
    """
    for m in METHODS:
        if name in m.names:
            return m
    raise ValueError(f"merge_method must be one of {names()} (or an alias: "
                     f"{sorted(a for m in METHODS for a in m.names if a != m.name)}), got {name!r}")


def labels() -> dict[str, str]:
    """``{case-study key: table label}``, e.g. ``{"ties": "TIES", ...}``, of the methods the case studies run.

    Not called in a notebook: casestudy's tables (notebooks 06 to 09) take their row labels from it; see
    book/methods.md.
    """
    return {m.key: m.label for m in METHODS if m.case_study}


# --- the table of book/methods.md ------------------------------------------------------------------------
def _code(x) -> str:
    return f"`{x}`"


def _param_cell(p: Param) -> str:
    text = f"`{p.name}={p.default!r}`: {p.check.what}"
    return text + (f"; also {', '.join(map(_code, p.aliases))}" if p.aliases else "")


def markdown_table() -> str:
    """The registry as a Markdown table: one row per method.

    Not called in a notebook: ``python -m lsedu.methods`` prints it; see book/methods.md.
    """
    head = ["`merge_method`", "also accepted", "in Python", "parameters: default, range, aliases", "needs data",
            "fast path in `lsedu merge`", "case-study row", "validation grid"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in METHODS:
        grid = "<br>".join(f"`{k}` in {list(v)}" for k, v in m.grid.items()) or "none"
        cells = [_code(m.name), ", ".join(_code(a) for a in m.names[1:]) or "", _code(m.usage()),
                 "<br>".join(_param_cell(p) for p in m.params) or "none", m.data, m.fast_path,
                 m.label if m.case_study else "none yet", grid]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def markdown_reasons() -> str:
    """Why each default is what it is, as a Markdown list (one entry per method and parameter).

    Not called in a notebook: ``python -m lsedu.methods`` prints it; see book/methods.md.
    """
    out = []
    for m in METHODS:
        out.append(f"* **{m.name}**: {m.doc}")
        out += [f"  * `{p.name}={p.default!r}` ({p.doc}): {p.why}" for p in m.params]
    return "\n".join(out) + "\n"


BEGIN = "<!-- generated by `python -m lsedu.methods --update book/methods.md`: do not edit by hand -->"
END = _pages.END


def book_block() -> str:
    """What ``book/methods.md`` holds between :data:`BEGIN` and :data:`END`: the table, then the reasons.

    Not called in a notebook: ``python -m lsedu.methods --update`` writes it; see book/methods.md.
    """
    return f"{BEGIN}\n\n{markdown_table()}\n## The defaults, and why\n\n{markdown_reasons()}\n{END}"


def generated_part(text: str, path: str = "book/methods.md") -> str:
    """The part of ``text`` between :data:`BEGIN` and :data:`END`, markers included.

    Not called in a notebook: ``python -m lsedu.methods --update`` uses it; see book/methods.md.
    """
    return _pages.generated_part(text, BEGIN, path, END)


def main(argv=None) -> int:
    """``python -m lsedu.methods``: print the table and the reasons, or with ``--update PAGE`` rewrite PAGE's part.

    Not called in a notebook: ``python -m lsedu.methods --update book/methods.md`` writes the page Merge methods;
    see book/methods.md.
    """
    return _pages.page_main(argv, prog="python -m lsedu.methods", description="Print the table of merge methods.",
                            page="book/methods.md", block=book_block, begin=BEGIN)


if __name__ == "__main__":  # run the registry of lsedu.methods, not this file's copy of it named __main__
    from lsedu.methods import main as _main

    sys.exit(_main())
