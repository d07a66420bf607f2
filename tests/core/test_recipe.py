"""Recipes: the bundled ones load; every malformed recipe is a RecipeError naming file and step."""

from __future__ import annotations

import pytest

from onnxopt.core.recipe import bundled_dir, bundled_recipes, find_recipe, load_recipe
from onnxopt.errors import RecipeError


def _write(tmp_path, text, name="r.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_bundled_recipes_all_load():
    found = bundled_recipes()
    assert "simplify" in found and bundled_dir().is_dir()
    for name, path in found.items():
        rec = load_recipe(path)
        assert rec.steps, name
        assert rec.description, f"{name} has no description"
    rec = load_recipe("simplify")
    assert [s.key for s in rec.steps] == ["simplify", "infer-shapes"]
    assert [p.key for p in rec.build()] == ["simplify", "infer-shapes"]


def test_recipe_with_parameters(tmp_path):
    p = _write(tmp_path, 'name = "mine"\ndescription = "d"\n[[steps]]\npass = "simplify"\nonnxsim = false\nmax_fold_bytes = 1024\n')
    rec = load_recipe(p)
    (step,) = rec.build()
    assert rec.name == "mine" and step.config.onnxsim is False and step.config.max_fold_bytes == 1024


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[steps]]\npass = "no-such-pass"\n', r"step 1 'no-such-pass': unknown step 'no-such-pass' \(known: "),
        ('[[steps]]\npass = "simplify"\n[[steps]]\npass = "simplify"\nspeed = 3\n', r"step 2 'simplify': unknown parameter\(s\) speed"),
        ('[[steps]]\npass = "simplify"\nonnxsim = "yes"\n', "parameter 'onnxsim' has the wrong type"),
        ('[[steps]]\npass = "simplify"\nmax_fold_bytes = 0\n', "max_fold_bytes must be positive"),
        ("[[steps]\n", "not valid TOML"),
        ('colour = "red"\n', "unknown top-level key"),
        ('steps = "simplify"\n', "array of tables"),
        ("[[steps]]\nonnxsim = true\n", "step 1: missing 'pass'"),
        ('target = "tpu"\n[[steps]]\npass = "simplify"\n', "target must be"),
    ],
    ids=["unknown-step", "unknown-param", "param-type", "param-value", "bad-toml", "top-key", "steps-type", "no-pass", "target"],
)
def test_bad_recipes(tmp_path, text, message):
    p = _write(tmp_path, text)
    with pytest.raises(RecipeError, match=message) as exc:
        load_recipe(p)
    assert exc.value.path == str(p)
    assert "\n" not in str(exc.value)


def test_not_utf8_and_missing(tmp_path):
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.toml")
    with pytest.raises(RecipeError, match=r"unknown recipe 'nonsense' \(bundled: .*simplify"):
        find_recipe("nonsense")


def test_listing_does_not_need_valid_steps(tmp_path):
    p = _write(tmp_path, 'description = "later"\n[[steps]]\npass = "not-yet-registered"\n')
    rec = load_recipe(p, validate=False)
    assert rec.name == "r" and [s.key for s in rec.steps] == ["not-yet-registered"]
    with pytest.raises(RecipeError):
        rec.build()
