"""Ensemble recipes: the ``[ensemble]`` table, explicit arguments over it, the recipe's steps
verified on the merged model, provenance, the CLI, and the bundled ``ensemble-*`` recipes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxopt.core.provenance import read_provenance
from onnxopt.core.recipe import bundled_recipes, load_recipe
from onnxopt.ensemble.api import ensemble
from onnxopt.ensemble.recipe import resolve_settings
from onnxopt.errors import RecipeError, UsageError
from tests.conftest import MODELS, save
from tests.ensemble.ensemble_models import labelled_data, mlp

DIGITS = [MODELS / "digits_mlp.onnx", MODELS / "digits_cnn.onnx", MODELS / "digits_resnet.onnx"]
CALIB, TEST = MODELS / "digits_calib.npz", MODELS / "digits_test.npz"
BUNDLED = ("ensemble-cpu", "ensemble-stack", "ensemble-vote")
EXACT_STEPS = '[[steps]]\npass = "remove-unused"\n[[steps]]\npass = "infer-shapes"\n'


def _recipe(tmp_path, table: str, steps: str = EXACT_STEPS, name: str = "mine.toml"):
    p = tmp_path / name
    p.write_text(f'name = "mine"\ndescription = "test"\n{table}\n{steps}')
    return p


def _members(tmp_path, *models):
    return [save(m, tmp_path / f"m{i}.onnx") for i, m in enumerate(models)]


# --- the table ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table, message",
    [
        ('[ensemble]\nfusoin = "mean"\n', r"\[ensemble\]: unknown parameter\(s\) fusoin"),
        ('[ensemble]\nfusion = "median"\n', "parameter 'fusion' = 'median' is not one of mean, weighted, vote, stack"),
        ('[ensemble]\nsoftmax = "yes"\n', "parameter 'softmax' has the wrong type"),
        ('[ensemble]\nhead = "svm"\n', "parameter 'head' = 'svm' is not one of"),
        ('[ensemble]\nfusion = "weighted"\nweights = [1.0, -1.0]\n', "weights must be finite numbers >= 0"),
        ('[ensemble]\nfusion = "vote"\nweights = [0, 0]\n', "weights are all zero"),
        ("[ensemble]\nweights = [1, 2]\n", "weights apply to fusion 'weighted' and 'vote', not 'mean'"),
        ("[ensemble]\nl2 = 0.0\n", "l2 must be a positive number"),
        ("[ensemble]\nmax_accuracy_drop = -1\n", "max_accuracy_drop must be a number >= 0"),
        ('[ensemble]\nmetric = "f1"\n', "parameter 'metric' = 'f1' is not one of"),
        ("[ensemble]\noutput = true\n", "parameter 'output' has the wrong type"),
        ("[ensemble.input_map]\nx = 3\n", "input_map must map input names"),
        ("ensemble = 3\n", r"'ensemble' must be a table \(\[ensemble\]\)"),
    ],
)
def test_bad_tables_are_recipe_errors_naming_the_file(tmp_path, table, message):
    path = _recipe(tmp_path, table)
    with pytest.raises(RecipeError, match=message) as exc:
        resolve_settings({}, path, members=2)
    assert exc.value.path == str(path) and exc.value.exit_code == 2


def test_weight_count_is_checked_against_the_members(tmp_path):
    path = _recipe(tmp_path, '[ensemble]\nfusion = "weighted"\nweights = [1, 2]\n')
    with pytest.raises(RecipeError, match=r"\[ensemble\]: weights has 2 values for 3 members") as exc:
        ensemble([mlp(0), mlp(1), mlp(2)], recipe=path)
    assert exc.value.path == str(path)


def test_cli_table_errors_exit_2_on_one_line_without_output(invoke, tmp_path):
    paths = _members(tmp_path, mlp(0), mlp(1))
    out = tmp_path / "out.onnx"
    cases = {
        "unknown-key": ('[ensemble]\nfusoin = "mean"\n', EXACT_STEPS, "unknown parameter(s) fusoin"),
        "bad-value": ('[ensemble]\nfusion = "median"\n', EXACT_STEPS, "is not one of"),
        "bad-step": ("[ensemble]\n", '[[steps]]\npass = "make-it-fast"\n', "step 1 'make-it-fast': unknown step"),
        "step-param": ("[ensemble]\n", '[[steps]]\npass = "simplify"\nspeed = 3\n', "unknown parameter(s) speed"),
    }
    for name, (table, steps, message) in cases.items():
        path = _recipe(tmp_path, table, steps, name=f"{name}.toml")
        r = invoke("ensemble", *paths, "-o", out, "--recipe", path)
        assert r.exit_code == 2, (name, r.output)
        assert r.output.count("\n") == 1 and r.output.startswith(f"error: {path}: ") and message in r.output, (name, r.output)
        assert not out.exists()
    r = invoke("ensemble", *paths, "-o", out, "--recipe", "no-such-recipe")
    assert r.exit_code == 2 and "unknown recipe 'no-such-recipe'" in r.output and not out.exists()


# --- precedence -------------------------------------------------------------------------------


def test_explicit_arguments_override_the_table_key_by_key(tmp_path):
    path = _recipe(tmp_path, '[ensemble]\nfusion = "vote"\nsoftmax = true\nkeep_member_outputs = true\n')
    members = [mlp(0), mlp(1)]
    res = ensemble(members, recipe=path)
    assert res.report["fusion"]["kind"] == "vote" and [o.name for o in res.model.graph.output] == ["label", "votes", "m0/y", "m1/y"]
    res = ensemble(members, recipe=path, fusion="mean", keep_member_outputs=False)
    rec = res.report["recipe"]
    assert res.report["fusion"] == {**res.report["fusion"], "kind": "mean", "softmax": True}  # softmax still the table's
    assert rec["overridden"] == ["fusion", "keep_member_outputs"] and rec["settings"] == {"softmax": True}
    assert [o.name for o in res.model.graph.output] == ["y"]
    assert ensemble(members, recipe=path, fusion="mean", softmax=False).report["fusion"]["softmax"] is False


def test_table_weights_give_way_to_fit_and_to_a_fusion_without_weights(tmp_path):
    path = _recipe(tmp_path, '[ensemble]\nfusion = "weighted"\nweights = [3.0, 1.0]\n')
    members = [mlp(0), mlp(1)]
    assert ensemble(members, recipe=path).report["fusion"]["weights"] == [0.75, 0.25]
    fit = labelled_data(tmp_path / "fit.npz", n=60)
    res = ensemble(members, recipe=path, fit=fit)
    assert "fit" in res.report and "weights" not in res.report["recipe"]["settings"]
    assert any("its weights are not used" in n for n in res.report["notes"])
    res = ensemble(members, recipe=path, fusion="mean")
    assert res.report["fusion"]["kind"] == "mean" and any("fusion 'mean' takes none" in n for n in res.report["notes"])


def test_option_errors_name_the_recipe_setting_they_come_from(tmp_path):
    path = _recipe(tmp_path, '[ensemble]\nfusion = "stack"\n')
    with pytest.raises(UsageError, match=r"needs --fit DATA .*\(recipe 'mine' sets fusion = \"stack\"; --fusion overrides it\)"):
        ensemble([mlp(0), mlp(1)], recipe=path)


def test_input_map_and_output_from_the_table(tmp_path):
    path = _recipe(tmp_path, '[ensemble]\noutput = "y"\n[ensemble.input_map]\ninp = "x"\n')
    res = ensemble([mlp(0), mlp(1, in_name="inp")], recipe=path)
    assert [i.name for i in res.model.graph.input] == ["x"] and res.report["recipe"]["settings"]["input_map"] == {"inp": "x"}


# --- the steps --------------------------------------------------------------------------------


def test_steps_run_on_the_merged_model_verified_with_provenance(tmp_path):
    path = _recipe(tmp_path, '[ensemble]\nfusion = "mean"\nsoftmax = true\n')
    data = labelled_data(tmp_path / "d.npz", n=40)
    # parallel=False: a session-options step, carried when timing says so, is tested in test_ensemble_concurrent
    res = ensemble([mlp(0), mlp(1), mlp(2)], recipe=path, data=data, parallel=False)
    steps = res.report["steps"]
    assert [s["name"] for s in steps] == ["remove-unused", "infer-shapes"]
    for s in steps:  # each verified against the merged model on --data, within 1e-4 (exact)
        comp = s["verification"]["comparison"]
        assert comp["data"] == str(data) and comp["samples"] == 40 and all(o["rel_l2"] <= 1e-4 for o in comp["outputs"])
    prov = read_provenance(res.model)
    assert prov["command"] == "ensemble" and "history" not in prov
    assert [s["name"] for s in prov["steps"]] == ["merge", "remove-unused", "infer-shapes"]
    settings = {"fusion": "mean", "softmax": True}
    assert prov["recipe"] == {"name": "mine", "file": "mine.toml", "settings": settings, "overridden": [], "steps": ["remove-unused", "infer-shapes"]}
    onnx.checker.check_model(res.model, full_check=True)


def test_recipe_without_a_table_uses_the_defaults_plus_its_steps():
    res = ensemble([mlp(0), mlp(1)], recipe="simplify")
    rec = res.report["recipe"]
    assert rec["table"] is False and rec["settings"] == {} and rec["steps"] == ["simplify", "infer-shapes"]
    assert res.report["fusion"]["kind"] == "mean" and [s["name"] for s in res.report["steps"]] == ["simplify", "infer-shapes"]


def test_settings_only_recipe_runs_no_steps(tmp_path, invoke):
    path = _recipe(tmp_path, '[ensemble]\nfusion = "vote"\n', steps="")
    res = ensemble([mlp(0), mlp(1)], recipe=path)
    assert res.report["steps"] == [] and res.report["recipe"]["steps"] == [] and read_provenance(res.model)["recipe"]["name"] == "mine"
    r = invoke("run", path, save(mlp(0), tmp_path / "m.onnx"), "-o", tmp_path / "o.onnx")
    assert r.exit_code == 2 and "no [[steps]]" in r.output  # `run` still refuses it


def _perturbing(monkeypatch, cls, scale):
    """Make ``cls``'s pass scale every float weight by ``scale`` (a broken transform)."""

    def call(self, model, ctx):
        for t in model.graph.initializer:
            a = numpy_helper.to_array(t)
            if a.dtype == np.float32:
                t.CopyFrom(numpy_helper.from_array(a * np.float32(scale), t.name))
        return self.result(model, True)

    monkeypatch.setattr(cls, "call", call)


def test_a_step_that_fails_verification_exits_3_and_writes_nothing(invoke, tmp_path, monkeypatch):
    from onnxopt.simplify.passes import RemoveUnusedPass

    paths = _members(tmp_path, mlp(0), mlp(1))
    path = _recipe(tmp_path, "[ensemble]\n")
    _perturbing(monkeypatch, RemoveUnusedPass, 1.5)
    out = tmp_path / "out.onnx"
    r = invoke("ensemble", *paths, "-o", out, "--recipe", path)
    assert r.exit_code == 3 and "recipe 'mine' step 1 'remove-unused': output 'y' moved by" in r.output
    assert r.output.count("\n") == 1 and not out.exists()


def test_a_lossy_step_outside_the_budget_exits_3(invoke, tmp_path, monkeypatch):
    from onnxopt.quantize.passes import QuantizePass

    paths = _members(tmp_path, mlp(0), mlp(1))
    data = labelled_data(tmp_path / "d.npz", n=60)
    path = _recipe(tmp_path, "[ensemble]\nmax_accuracy_drop = 0.5\n", '[[steps]]\npass = "quantize"\n')
    _perturbing(monkeypatch, QuantizePass, 0.0)  # every weight zeroed: a constant prediction
    out = tmp_path / "out.onnx"
    r = invoke("ensemble", *paths, "-o", out, "--recipe", path, "--data", data, "--metric", "agreement")
    assert r.exit_code == 3 and "recipe 'mine' step 1 'quantize': agreement dropped" in r.output and "(budget 0.5)" in r.output
    assert not out.exists()
    # --max-accuracy-drop overrides the table's budget
    r = invoke("ensemble", *paths, "-o", out, "--recipe", path, "--data", data, "--metric", "agreement", "--max-accuracy-drop", "100", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    budget = rep["recipe"]["budget"]
    assert rep["recipe"]["overridden"] == ["max_accuracy_drop"] and budget["metric"] == "agreement" and budget["max_accuracy_drop"] == 100
    assert rep["steps"][0]["verification"]["metric"]["drop"] > 0.5


def test_budget_without_a_recipe_has_no_effect_and_says_so():
    res = ensemble([mlp(0), mlp(1)], max_accuracy_drop=1.0)
    assert any("without --recipe they have no effect" in n for n in res.report["notes"])


def test_cli_renders_the_recipe_and_its_steps(invoke, tmp_path):
    paths = _members(tmp_path, mlp(0), mlp(1))
    path = _recipe(tmp_path, "[ensemble]\nsoftmax = true\n")
    out = tmp_path / "e.onnx"
    r = invoke("ensemble", *paths, "-o", out, "--recipe", path, "--no-softmax", "--fuse-members")
    assert r.exit_code == 0, r.output
    assert "recipe mine (mine.toml): no setting applied; overridden by options: softmax" in r.output
    assert "recipe steps on the merged model, each verified against it:" in r.output and "remove-unused" in r.output
    assert "fusion: mean\n" in r.output and f"wrote {out}" in r.output
    assert read_provenance(onnx.load(str(out)))["recipe"]["overridden"] == ["softmax"]


# --- the bundled recipes ----------------------------------------------------------------------


def test_bundled_ensemble_recipes_are_listed_and_load(invoke):
    for name in BUNDLED:
        assert name in bundled_recipes()
        rec = load_recipe(name)
        assert rec.description and rec.steps and "ensemble" in rec.sections
        assert resolve_settings({}, name, fit="x.npz", members=3).recipe.name == name
    info = json.loads(invoke("passes", "--json").stdout)
    listed = {r["name"]: r for r in info["recipes"]}
    assert all(listed[n]["description"] for n in BUNDLED)


def test_bundled_cpu_recipe_on_the_digits_models(invoke, tmp_path):
    out = tmp_path / "cpu.onnx"
    r = invoke("ensemble", *DIGITS, "-o", out, "--recipe", "ensemble-cpu", "--data", TEST, "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["fusion"]["kind"] == "mean" and rep["fusion"]["softmax"] is True
    assert [s["name"] for s in rep["steps"]] == ["simplify", "quantize"] and rep["recipe"]["budget"]["max_accuracy_drop"] == 1.0
    quant = rep["steps"][1]
    assert quant["modified"] and quant["verification"]["metric"]["name"] == "top1"
    assert quant["verification"]["metric"]["drop"] <= 1.0
    acc = rep["accuracy"]
    assert acc["ensemble"] >= acc["before_steps"] - 1.0 and acc["samples"] == 400
    m = onnx.load(str(out))
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in m.graph.node)
    assert read_provenance(m)["recipe"]["name"] == "ensemble-cpu"


def test_bundled_stack_recipe_needs_fit_and_beats_the_members(invoke, tmp_path):
    out = tmp_path / "stack.onnx"
    r = invoke("ensemble", *DIGITS, "-o", out, "--recipe", "ensemble-stack", "--data", TEST)
    assert r.exit_code == 2 and "needs --fit DATA" in r.output and "recipe 'ensemble-stack'" in r.output and not out.exists()
    res = ensemble(DIGITS, recipe="ensemble-stack", fit=CALIB, data=TEST)
    acc = res.report["accuracy"]
    assert res.report["fusion"]["kind"] == "stack" and acc["ensemble"] >= acc["best_member"]
    assert [s["name"] for s in res.report["steps"]] == ["simplify"]


def test_bundled_vote_recipe_on_the_digits_models():
    res = ensemble(DIGITS, recipe="ensemble-vote", data=TEST)
    assert [o.name for o in res.model.graph.output] == ["label", "votes"]
    assert res.report["accuracy"]["ensemble"] >= res.report["accuracy"]["best_member"] - 0.5


def test_run_with_an_ensemble_recipe_runs_only_its_steps(invoke, tmp_path):
    out = tmp_path / "mlp.onnx"
    r = invoke("run", "ensemble-cpu", DIGITS[0], "-o", out, "--eval", TEST, "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert [s["name"] for s in rep["steps"]] == ["simplify", "quantize"] and rep["recipe"] == "ensemble-cpu"


def test_recipe_output_is_deterministic(tmp_path):
    path = _recipe(tmp_path, '[ensemble]\nfusion = "mean"\n', '[[steps]]\npass = "simplify"\n')
    # parallel=False: whether parallel-execution options are carried is decided by timing
    runs = [ensemble([mlp(0), mlp(1)], recipe=path, parallel=False).save(tmp_path / f"e{i}.onnx").read_bytes() for i in range(2)]
    assert runs[0] == runs[1]
