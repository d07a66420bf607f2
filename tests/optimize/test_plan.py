"""Recipe [optimize] tables: bundled recipes parse; bad tables are RecipeErrors naming the file."""

from __future__ import annotations

import pytest

from onnxopt.core.recipe import bundled_recipes, load_recipe
from onnxopt.errors import RecipeError
from onnxopt.optimize.plan import plan_from_recipe


@pytest.mark.parametrize("name", ["cpu", "cuda"], ids=["cpu-recipe", "gpu-recipe"])
def test_bundled_optimize_recipes(name):
    plan = plan_from_recipe(load_recipe(name))
    kinds = [c.kind for c in plan.candidates]
    assert kinds[0] == "fp32"
    assert ("fp16" in kinds) == (name == "cuda")
    assert [p.key for p in plan.preprocess][0] == "simplify"


def test_every_bundled_recipe_gives_a_plan():
    for name in bundled_recipes():
        plan = plan_from_recipe(load_recipe(name))
        assert plan.candidates[0].kind == "fp32"


def _write(tmp_path, body):
    p = tmp_path / "r.toml"
    p.write_text('name = "r"\n[[steps]]\npass = "simplify"\n' + body)
    return p


@pytest.mark.parametrize(
    "body, match",
    [
        ('[optimize]\ncandidates = ["int2"]\n', "unknown candidate"),
        ("[optimize]\nmin_ratio = 0\n", "min_ratio"),
        ('[optimize]\nbatch = "x"\n', "wrong type"),
        (
            "[optimize]\n[optimize.int8-static]\nper_channel = [true]\nfoo = 1\n",
            "unknown parameter",
        ),
        ('[optimize]\n[optimize.int8-static]\nmethod = "histo"\n', "not one of"),
        ("[optimize]\n[optimize.bogus]\nx = 1\n", "unknown table"),
        ('[optimize]\ncandidates = ["int4"]\n[optimize.int4]\nblock_size = 24\n', "power of 2"),
    ],
)
def test_bad_tables(tmp_path, body, match):
    path = _write(tmp_path, body)
    with pytest.raises(RecipeError, match=match) as err:
        plan_from_recipe(load_recipe(path))
    assert err.value.path == str(path)


def test_recipe_without_optimize_table_is_one_candidate(tmp_path):
    plan = plan_from_recipe(load_recipe(_write(tmp_path, "")))
    assert [c.kind for c in plan.candidates] == ["fp32"]
    assert [p.key for p in plan.preprocess] == ["simplify"]


def test_fp32_always_compared(tmp_path):
    plan = plan_from_recipe(
        load_recipe(_write(tmp_path, '[optimize]\ncandidates = ["int8-dynamic"]\n'))
    )
    assert [c.kind for c in plan.candidates] == ["fp32", "int8-dynamic"]
