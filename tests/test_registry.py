"""The method registry (``lsedu.methods``): one name, one default and one check per parameter, read everywhere."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
import yaml

import lsedu
from lsedu import methods
from lsedu.merge import blocks, load_recipe

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "methods.md"


def test_the_book_page_holds_the_registry_table():
    text = PAGE.read_text()
    assert methods.generated_part(text) == methods.book_block(), (
        "book/methods.md's table differs from lsedu.methods; regenerate it with: "
        "python -m lsedu.methods --update book/methods.md")
    assert methods.markdown_table() in text


def test_the_book_page_is_in_the_table_of_contents():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    assert "book/methods" in files


@pytest.mark.parametrize("method", methods.METHODS, ids=methods.names())
def test_each_default_is_the_python_functions_default(method):
    """One default per parameter: the recipe's is the Python function's (a change in either shows here)."""
    signature = inspect.signature(method.function).parameters
    passed_on = inspect.signature(lsedu.ties_merge).parameters  # dare_merge(then="ties", **ties_kwargs)
    for p in method.params:
        owner = signature if p.name in signature or method.name != "dare" else passed_on
        assert p.name in owner, f"{method.function.__name__} has no parameter {p.name}"
        assert owner[p.name].default == p.default, (method.name, p.name)
        assert p.check(p.default, p.name) == p.default


def test_dataless_stitch_density_is_localize_dataless_default():
    assert inspect.signature(lsedu.localize_dataless).parameters["density"].default == \
        methods.get("localize_stitch").defaults["density"]


def test_the_decided_task_arithmetic_lambda_is_one_value():
    """0.3 in Python and in a recipe (a recipe used to get 1.0)."""
    ta = methods.get("task_arithmetic")
    assert ta.defaults == {"lam": 0.3}
    assert inspect.signature(lsedu.task_arithmetic).parameters["lam"].default == 0.3
    assert ta.resolve({}) == {"lam": 0.3}


@pytest.mark.parametrize("method", methods.METHODS, ids=methods.names())
def test_grids_hold_values_their_parameters_accept(method):
    for name, values in method.grid.items():
        p = method.param(name)
        assert values and all(p.check(v, name) == v for v in values), (method.name, name)


def test_labels_keys_and_grids_are_the_case_studies():
    """The case studies' row labels and validation grids, unchanged (their cached results depend on them)."""
    from lsedu.casestudy import LABELS, STOCHASTIC, CaseStudyConfig

    assert {k: LABELS[k] for k in methods.labels()} == methods.labels()
    assert list(methods.labels()) == ["averaging", "task_arithmetic", "ties", "dare", "stitch_dataless",
                                      "stitch_trained"]
    c = CaseStudyConfig()
    assert methods.get("task_arithmetic").grid == {"lam": c.lambda_grid}
    assert methods.get("ties").grid == {"density": c.ties_densities, "lam": c.ties_lambdas}
    assert methods.get("dare").grid == {"p": (c.dare_p,), "lam": c.lambda_grid}
    assert methods.get("stitch_dataless").grid == {"density": c.stitch_densities}
    assert methods.get("stitch_trained").grid == {"density": c.stitch_densities}
    assert set(STOCHASTIC) <= {m.key for m in methods.METHODS}


def test_names_and_spellings_are_unique():
    every = [n for m in methods.METHODS for n in m.names]
    assert len(every) == len(set(every))
    for m in methods.METHODS:
        spellings = [s for p in m.params for s in p.spellings]
        assert len(spellings) == len(set(spellings)), m.name
        assert m.data in methods.DATA


@pytest.mark.parametrize(("given", "method"), [("average", "average"), ("linear", "average"),
                                               ("averaging", "average"), ("ties_merge", "ties"),
                                               ("stitch_dataless", "localize_stitch"),
                                               ("stitch_trained", "localize_stitch_trained")])
def test_a_method_is_found_by_name_key_or_alias(given, method):
    assert methods.get(given).name == method


def test_an_unknown_method_lists_the_names():
    with pytest.raises(ValueError, match=r"merge_method must be one of \['average', 'task_arithmetic', 'ties'"):
        methods.get("tie")


@pytest.mark.parametrize(("method", "given", "want"), [
    ("task_arithmetic", {"lambda": 0.5}, {"lam": 0.5}),
    ("task_arithmetic", {"weight": 0.5}, {"lam": 0.5}),  # mergekit's top-level weight
    ("task_arithmetic", {"scaling": 2}, {"lam": 2.0}),
    ("ties", {"trim": "per_tensor", "lambda": 0.9}, {"density": 0.2, "lam": 0.9, "trim_scope": "per_tensor"}),
    ("ties", {"scope": "per_tensor"}, {"density": 0.2, "lam": 1.0, "trim_scope": "per_tensor"}),
    ("dare", {"drop_rate": 0.5, "then": "ties"},
     {"p": 0.5, "lam": 1.0, "seed": 0, "then": "ties", "density": 0.2, "trim_scope": "global"}),
])
def test_aliases_resolve_to_the_keyword(method, given, want):
    assert methods.get(method).resolve(given) == want


def test_resolve_names_the_spelling_given():
    with pytest.raises(ValueError, match=r"parameters\.lambda must be a finite number, got 'big'"):
        methods.get("ties").resolve({"lambda": "big"})
    with pytest.raises(ValueError, match=r"parameters \['weight'\] do not apply to merge_method 'ties'; it takes "
                                         r"density, lam \(also lambda, scaling, scaling_factor\), trim_scope"):
        methods.get("ties").resolve({"weight": 1})


def test_recipe_methods_are_exactly_the_streamed_ones():
    assert {m.name for m in methods.METHODS if m.recipe} == set(blocks.STREAMED)


def write_recipe(tmp_path, **fields) -> Path:
    recipe = {"base_model": "base", "models": ["ft0"], "output": "out", **fields}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    return tmp_path / "r.yaml"


def test_a_recipe_reads_the_registry(tmp_path):
    r = load_recipe(write_recipe(tmp_path, merge_method="linear"))
    assert r.merge_method == "average" and r.method is methods.get("average") and r.parameters == {}
    r = load_recipe(write_recipe(tmp_path, merge_method="task_arithmetic", parameters={"weight": 0.5}))
    assert r.parameters == {"lam": 0.5} and r.steps.lam == 0.5 and r.steps.trim is None
    r = load_recipe(write_recipe(tmp_path, merge_method="dare", parameters={"then": "ties", "trim": "per_tensor"}))
    assert r.steps.combine is blocks.ties and r.steps.drop == blocks.Drop(0.9, 0) and r.steps.trim == "per_tensor"
    assert not r.global_threshold


def test_a_recipe_naming_the_trained_stitch_gets_one_clear_line(tmp_path):
    with pytest.raises(ValueError) as e:
        load_recipe(write_recipe(tmp_path, merge_method="localize_stitch_trained"))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("merge_method 'localize_stitch_trained' cannot run from a recipe: it trains each "
                              "task's mask on labeled examples")
    assert "masks: {load: [...]}" in message


@pytest.mark.parametrize("method", [m for m in methods.METHODS if "lsedu.merge.fused." in m.fast_path],
                         ids=lambda m: m.name)
def test_each_fast_path_names_its_readable_function(method):
    """The kernel in a row's fast path exists, and its docstring says whose fast path it is."""
    dotted = re.search(r"lsedu\.merge\.fused\.\w+", method.fast_path).group()
    module, name = dotted.rsplit(".", 1)
    kernel = getattr(importlib.import_module(module), name)
    fn = method.function
    assert f"Fast path of ``{fn.__module__}.{fn.__name__}``" in kernel.__doc__


def test_usage_names_a_real_function():
    for m in methods.METHODS:
        path = m.usage().split("(")[0]
        module, name = path.rsplit(".", 1)
        assert getattr(importlib.import_module(module), name) is m.function


def test_the_command_prints_the_page_block(capsys):
    assert methods.main([]) == 0
    assert capsys.readouterr().out == methods.book_block() + "\n"
