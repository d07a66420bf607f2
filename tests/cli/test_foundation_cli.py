"""The foundation commands from the command line: inspect, simplify, verify, run, passes.

Every command's --help; each command on the bundled models; every bad input exits 2 with a
single ``error:`` line on stderr and writes nothing; verify exits 3 out of tolerance."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from onnxopt.cli.main import COMMANDS
from tests.toy_models import MODELS, ROOT, save_external

CNN = MODELS / "digits_cnn.onnx"
MLP = MODELS / "digits_mlp.onnx"
TEST = MODELS / "digits_test.npz"


def _one_error_line(res, code: int = 2) -> str:
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr, res.exception)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def _importable(target: str) -> bool:
    try:
        return importlib.util.find_spec(target.partition(":")[0]) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(invoke, name):
    if not _importable(COMMANDS[name]):
        pytest.skip(f"{COMMANDS[name]} not written yet")
    res = invoke(name, "--help")
    assert res.exit_code == 0, res.output
    assert f"Usage: cli {name}" in res.stdout or f"Usage: onnxopt {name}" in res.stdout or "Usage:" in res.stdout
    assert "Traceback" not in res.output


def test_group_help_version_and_python_m():
    proc = subprocess.run([sys.executable, "-m", "onnxopt", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and "inspect" in proc.stdout and "simplify" in proc.stdout and "Exit codes" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "onnxopt", "inspect", str(ROOT / "nope.onnx")], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_version_and_unknown_command(invoke):
    res = invoke("--version")
    assert res.exit_code == 0 and "onnxopt, version" in res.stdout
    _one_error_line(invoke("no-such-command"))
    _one_error_line(invoke("simplify"))  # missing argument


# --- the commands on the bundled models --------------------------------------------------


def test_inspect_text_and_json(invoke):
    res = invoke("inspect", CNN)
    assert res.exit_code == 0, res.stderr
    for text in ("IR 8", "ai.onnx 17", "image", "float32[N,1,8,8]", "BatchNormalization 3", "parameters: 57,034", "FLOPs", "onnxopt provenance: none"):
        assert text in res.stdout, text
    res = invoke("inspect", CNN, "--json")
    rep = json.loads(res.stdout)
    assert rep["parameters"]["total"] == 57034 and rep["ops"]["Conv"] == 3


def test_simplify_then_verify_then_inspect(invoke, tmp_path):
    out = tmp_path / "cnn.sim.onnx"
    res = invoke("simplify", CNN, "-o", out, "--data", TEST)
    assert res.exit_code == 0, res.stderr
    assert "engine: onnxsim" in res.stdout and f"wrote {out}" in res.stdout
    res = invoke("verify", CNN, out, "--data", TEST)
    assert res.exit_code == 0, res.stderr
    assert "logits" in res.stdout and "400x10" in res.stdout and "100.00%" in res.stdout and "ok: all outputs within tolerance" in res.stdout
    comp = json.loads(invoke("verify", CNN, out, "--data", TEST, "--json").stdout)
    assert comp["ok"] and comp["samples"] == 400 and comp["outputs"][0]["rel_l2"] <= 1e-4
    res = invoke("inspect", out)
    assert "onnxopt provenance: simplify (steps: simplify)" in res.stdout


def test_verify_out_of_tolerance_exits_3_after_the_table(invoke):
    res = invoke("verify", CNN, MODELS / "digits_resnet.onnx", "--data", TEST)
    line = _one_error_line(res, 3)
    assert "output  " in res.stdout and " NO" in res.stdout  # the table came first
    assert "out of tolerance" in line and "digits_resnet.onnx" in line
    res = invoke("verify", CNN, MODELS / "digits_resnet.onnx", "--data", TEST, "--json")
    assert res.exit_code == 3 and json.loads(res.stdout)["ok"] is False
    # loose enough tolerances accept the same pair
    assert invoke("verify", CNN, MODELS / "digits_resnet.onnx", "--limit", "4", "--atol", "100").exit_code == 0


def test_verify_shape_mismatch_reports_inf_as_standard_json(invoke):
    res = invoke("verify", CNN, MODELS / "digits_cnn04.onnx", "--json")
    assert res.exit_code == 3
    out = json.loads(res.stdout)["outputs"][0]
    assert out["max_abs"] == "inf" and "shape" in out["note"]


def test_run_bundled_recipe_with_report(invoke, tmp_path):
    out, report = tmp_path / "r.onnx", tmp_path / "r.json"
    res = invoke("run", "simplify", CNN, "-o", out, "--eval", TEST, "--report", report)
    assert res.exit_code == 0, res.stderr
    for text in ("recipe simplify (simplify.toml)", "infer-shapes", "nodes before", "top1 99.50 (drop 0.00)", f"wrote {out}"):
        assert text in res.stdout, text
    rep = json.loads(report.read_text())
    assert [s["name"] for s in rep["steps"]] == ["simplify", "infer-shapes"] and rep["recipe"] == "simplify"
    prov = json.loads(next(p.value for p in onnx.load(str(out)).metadata_props if p.key == "onnxopt"))
    assert prov["command"] == "run simplify" and prov["recipe"] == "simplify"


def test_run_recipe_file_json_and_budget(invoke, tmp_path):
    out = tmp_path / "r.onnx"
    res = invoke(
        "run",
        ROOT / "passes" / "simplify.toml",
        MLP,
        "-o",
        out,
        "--calibration",
        TEST,
        "--eval",
        TEST,
        "--max-accuracy-drop",
        "0.5",
        "--metric",
        "top1",
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["steps"][0]["verification"]["metric"]["name"] == "top1"
    assert out.is_file()


def test_passes_lists_registry_and_recipes(invoke):
    res = invoke("passes")
    assert res.exit_code == 0, res.stderr
    for text in ("simplify", "fold-constants", "remove-unused", "exact", "simplify > infer-shapes"):
        assert text in res.stdout
    info = json.loads(invoke("passes", "--json").stdout)
    keys = {p["key"] for p in info["passes"]}
    assert {"simplify", "infer-shapes"} <= keys
    assert any(r["name"] == "simplify" and r["description"] for r in info["recipes"])


def test_verbosity_and_debug(invoke, tmp_path):
    res = invoke("-v", "simplify", MLP, "-o", tmp_path / "a.onnx")
    assert res.exit_code == 0 and "INFO" in res.stderr
    res = invoke("-q", "simplify", MLP, "-o", tmp_path / "b.onnx")
    assert res.exit_code == 0 and "INFO" not in res.stderr and "WARNING" not in res.stderr
    res = invoke("--debug", "inspect", tmp_path / "missing.onnx")
    assert res.exit_code == 2 and "Traceback" in res.stderr and res.stderr.strip().splitlines()[-1].startswith("error: ")


# --- bad inputs: exit 2, one error line, nothing written -----------------------------------


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("bad")
    (d / "text.onnx").write_text("this is a text file pretending to be a model\n")
    (d / "empty.onnx").write_bytes(b"")
    raw = CNN.read_bytes()
    (d / "truncated.onnx").write_bytes(raw[: len(raw) // 2])
    mlp = onnx.load(str(MLP))
    sub = d / "missing"
    sub.mkdir()
    save_external(mlp, sub / "m.onnx", "m.data")
    (sub / "m.data").unlink()
    inner = d / "inner"
    inner.mkdir()
    save_external(mlp, inner / "m.onnx", "m.data")
    (d / "x.data").write_bytes((inner / "m.data").read_bytes())
    m = onnx.load(str(inner / "m.onnx"), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../x.data"
    onnx.save(m, str(inner / "m.onnx"))
    x = np.load(TEST)["image"]
    np.savez(d / "missing_key.npz", pixels=x)
    np.savez(d / "wrong_dtype.npz", image=x.astype(np.float64))
    np.savez(d / "wrong_shape.npz", image=x.reshape(400, 1, 4, 16))
    (d / "unknown_step.toml").write_text('name = "bad"\n[[steps]]\npass = "simplify"\n[[steps]]\npass = "make-it-fast"\n')
    return {
        "text": d / "text.onnx",
        "empty": d / "empty.onnx",
        "truncated": d / "truncated.onnx",
        "missing-external": sub / "m.onnx",
        "external-outside": inner / "m.onnx",
        "missing-key": d / "missing_key.npz",
        "wrong-dtype": d / "wrong_dtype.npz",
        "wrong-shape": d / "wrong_shape.npz",
        "unknown-step": d / "unknown_step.toml",
    }


BAD_MODELS = ["text", "empty", "truncated", "missing-external", "external-outside"]
MODEL_MESSAGES = {
    "text": "not an ONNX model",
    "empty": "empty file",
    "truncated": "not an ONNX model",
    "missing-external": "'m.data'",
    "external-outside": "outside the model folder",
}


@pytest.mark.parametrize("kind", BAD_MODELS)
@pytest.mark.parametrize("command", ["inspect", "simplify", "verify-a", "verify-b", "run"])
def test_bad_models(invoke, bad, tmp_path, kind, command):
    model, out = bad[kind], tmp_path / "out.onnx"
    args = {
        "inspect": ["inspect", model],
        "simplify": ["simplify", model, "-o", out],
        "verify-a": ["verify", model, MLP],
        "verify-b": ["verify", MLP, model],
        "run": ["run", "simplify", model, "-o", out],
    }[command]
    line = _one_error_line(invoke(*args))
    assert str(model) in line and MODEL_MESSAGES[kind] in line
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["missing-key", "wrong-dtype", "wrong-shape"])
@pytest.mark.parametrize("command", ["simplify", "verify", "run-eval", "run-calibration"])
def test_bad_data(invoke, bad, tmp_path, kind, command):
    data, out = bad[kind], tmp_path / "out.onnx"
    args = {
        "simplify": ["simplify", CNN, "-o", out, "--data", data],
        "verify": ["verify", CNN, MLP, "--data", data],
        "run-eval": ["run", "simplify", CNN, "-o", out, "--eval", data],
        "run-calibration": ["run", "simplify", CNN, "-o", out, "--calibration", data],
    }[command]
    line = _one_error_line(invoke(*args))
    assert str(data) in line
    assert {"missing-key": "missing key 'image'", "wrong-dtype": "expected dtype float32", "wrong-shape": "expected shape"}[kind] in line
    assert not out.exists()


def test_output_equal_to_input_is_refused(invoke, tmp_path):
    src = tmp_path / "m.onnx"
    src.write_bytes(MLP.read_bytes())
    before = src.read_bytes()
    for args in (
        ["simplify", src, "-o", src],
        ["run", "simplify", src, "-o", tmp_path / "." / "m.onnx"],
        ["run", "simplify", src, "-o", tmp_path / "o.onnx", "--report", src],
    ):
        line = _one_error_line(invoke(*args))
        assert "refusing to overwrite the input model" in line
    assert src.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_recipe_with_unknown_step(invoke, bad, tmp_path):
    out = tmp_path / "out.onnx"
    line = _one_error_line(invoke("run", bad["unknown-step"], MLP, "-o", out))
    assert str(bad["unknown-step"]) in line and "step 2 'make-it-fast': unknown step" in line
    line = _one_error_line(invoke("run", "no-such-recipe", MLP, "-o", out))
    assert "unknown recipe 'no-such-recipe'" in line
    assert not out.exists()


def test_bad_options(invoke, tmp_path):
    out = tmp_path / "o.onnx"
    _one_error_line(invoke("verify", MLP, MLP, "--atol", "-1"))
    _one_error_line(invoke("simplify", MLP, "-o", out, "--shape", "image"))
    _one_error_line(invoke("run", "simplify", MLP, "-o", out, "--max-accuracy-drop", "-2"))
    _one_error_line(invoke("simplify", MLP, "-o", tmp_path))  # a folder
    assert not out.exists()


def test_unavailable_provider(invoke, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    line = _one_error_line(invoke("verify", MLP, MLP, "--provider", "cuda"))
    assert "CUDAExecutionProvider is not available" in line
    line = _one_error_line(invoke("run", "simplify", MLP, "-o", tmp_path / "o.onnx", "--provider", "cuda"))
    assert "CUDAExecutionProvider is not available" in line and not (tmp_path / "o.onnx").exists()


# every model-writing command, with arguments that would otherwise succeed quickly
_WRITERS = {
    "simplify": lambda src: ["simplify", src],
    "run": lambda src: ["run", "simplify", src],
    "quantize": lambda src: ["quantize", src, "--mode", "dynamic", "--allow-slower"],
    "prune": lambda src: ["prune", src, "--method", "magnitude", "--sparsity", "0.5"],
    "optimize": lambda src: ["optimize", src],
    "ensemble": lambda src: ["ensemble", src, MLP],
    "chain": lambda src: ["chain", src, ROOT / "tests" / "missing-second-stage.onnx"],
    "adapt": lambda src: ["adapt", src, "--data", MODELS / "digits_test.npz"],
}


@pytest.mark.parametrize("command", list(_WRITERS))
def test_report_over_the_input_or_the_output_is_refused(invoke, tmp_path, command):
    """--report is a written file too: never over the input model, never equal to -o; both
    are refused before any work, so nothing is written and the input is untouched."""
    src = tmp_path / "m.onnx"
    src.write_bytes(MLP.read_bytes())
    before = src.read_bytes()
    head = _WRITERS[command](src)
    line = _one_error_line(invoke(*head, "-o", tmp_path / "o.onnx", "--report", src))
    assert "refusing to overwrite the input model" in line
    line = _one_error_line(invoke(*head, "-o", tmp_path / "o.onnx", "--report", tmp_path / "o.onnx"))
    assert "must differ from -o" in line
    assert src.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("command", ["simplify", "verify", "run"])
def test_shape_for_no_input_is_refused(invoke, tmp_path, command):
    out = tmp_path / "o.onnx"
    args = {"simplify": ["simplify", MLP, "-o", out], "verify": ["verify", MLP, MLP], "run": ["run", "simplify", MLP, "-o", out]}[command]
    line = _one_error_line(invoke(*args, "--shape", "imgae:1,1,8,8"))
    assert str(MLP) in line and "--shape names 'imgae', not an input of the model (inputs: image)" in line
    assert not out.exists()


def test_recipe_without_steps_is_refused(invoke, tmp_path):
    recipe = tmp_path / "empty.toml"
    recipe.write_text('name = "empty"\n')
    line = _one_error_line(invoke("run", recipe, MLP, "-o", tmp_path / "o.onnx"))
    assert str(recipe) in line and "no [[steps]]" in line
    recipe.write_text("[[steps]]\npass = 3\n")
    assert "'pass' must be a string" in _one_error_line(invoke("run", recipe, MLP, "-o", tmp_path / "o.onnx"))
    assert not (tmp_path / "o.onnx").exists()


def test_run_with_external_data(invoke, tmp_path):
    out = tmp_path / "r.onnx"
    res = invoke("run", "simplify", MLP, "-o", out, "--external-data")
    assert res.exit_code == 0, res.stderr
    data = [p for p in tmp_path.iterdir() if p.name.endswith(".data")]
    assert len(data) == 1 and data[0].stat().st_size > 600_000 and out.stat().st_size < 100_000
    onnx.checker.check_model(str(out), full_check=True)
    assert invoke("verify", MLP, out, "--data", TEST).exit_code == 0


def test_model_that_cannot_run_on_synthesized_inputs(tmp_path):
    """A real process (ONNX Runtime's C++ logging goes to file descriptor 2): one error line
    that says what input discovery tried and points at --shape, exit 2, nothing written;
    with --shape it works."""
    from tests.discover_models import runs_on_nothing

    src = tmp_path / "reshape.onnx"
    onnx.save(runs_on_nothing(), str(src))
    out = tmp_path / "o.onnx"
    for args in (["verify", src, src], ["simplify", src, "-o", out]):
        proc = subprocess.run([sys.executable, "-m", "onnxopt", *map(str, args)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"error: {src}: the model runs on none of the probed inputs (tried x[1,1];") and "give --shape" in lines[0]
    assert not out.exists()
    proc = subprocess.run(
        [sys.executable, "-m", "onnxopt", "simplify", str(src), "-o", str(out), "--shape", "x:3,2000"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0 and out.is_file(), proc.stderr


def test_inspect_text_stays_one_line_per_field(invoke, tmp_path):
    m = onnx.load(str(MLP))
    m.metadata_props.add(key="classes", value="zero\none\ntwo")
    onnx.save(m, str(tmp_path / "m.onnx"))
    res = invoke("inspect", tmp_path / "m.onnx")
    assert res.exit_code == 0 and "metadata classes: zero one two" in res.stdout
    par = next(ln for ln in res.stdout.splitlines() if ln.startswith("parameters:"))
    assert par.endswith("in 6 initializers")  # no Constant nodes in this model: none named


def test_unwritable_output_or_report_is_refused_before_any_work(invoke, tmp_path):
    (tmp_path / "afile").write_text("x")
    for args in (["-o", tmp_path / "afile" / "o.onnx"], ["-o", tmp_path / "o.onnx", "--report", tmp_path / "afile" / "r.json"]):
        line = _one_error_line(invoke("simplify", MLP, *args))
        assert "is not a folder" in line
        line = _one_error_line(invoke("run", "simplify", MLP, *args))
        assert "is not a folder" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
