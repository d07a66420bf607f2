"""``onnxopt quantize`` through click's CliRunner: output, report, errors -> exit codes."""

from __future__ import annotations

import json

import numpy as np
import onnx

from tests.conftest import MODELS, save
from tests.quantize.quant_models import data_for, mlp, no_weights

MLP = MODELS / "digits_mlp.onnx"
CAL = MODELS / "digits_calib.npz"
TEST = MODELS / "digits_test.npz"


def test_help(invoke):
    r = invoke("quantize", "--help")
    assert r.exit_code == 0
    for opt in (
        "--mode",
        "--calibration",
        "--method",
        "--per-channel",
        "--op-types",
        "--exclude-nodes",
        "--max-accuracy-drop",
        "--allow-slower",
        "--batch",
        "--report",
        "--weight-type",
        "--activation-type",
        "--reduce-range",
        "--format",
        "--provider",
        "--eval",
        "--metric",
        "--model-type",
    ):
        assert opt in r.output


def test_dynamic_writes_a_model_and_a_report(invoke, tmp_path):
    out, rep = tmp_path / "q.onnx", tmp_path / "q.json"
    r = invoke("quantize", MLP, "-o", out, "--mode", "dynamic", "--eval", TEST, "--max-accuracy-drop", "1", "--batch", "64", "--allow-slower", "--report", rep)
    assert r.exit_code == 0, r.output
    assert "dynamic" in r.output and "speed vs FP32" in r.output and f"wrote {out}" in r.output
    onnx.checker.check_model(onnx.load(str(out)))
    report = json.loads(rep.read_text())
    assert report["chosen"] == "dynamic" and report["candidates"][0]["drop"] <= 1.0


def test_static_entropy_per_channel_json(invoke, tmp_path):
    out = tmp_path / "s.onnx"
    r = invoke("quantize", MLP, "-o", out, "--mode", "static", "--per-channel", "--method", "entropy", "--calibration", CAL, "--allow-slower", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["candidates"][0]["label"] == "static per-channel"
    assert out.exists()


def test_errors_map_to_exit_codes_and_write_nothing(invoke, tmp_path):
    out = tmp_path / "x.onnx"
    cases = [
        (("--mode", "static"), 2, "needs calibration"),
        (("--op-types", "Foo"), 2, "unknown op type"),
        (("--mode", "dynamic", "--op-types", "Relu"), 2, "not quantizable in dynamic mode"),
        (("--model-type", "resnet"), 2, "resnet"),
        (("--exclude-nodes", "nope"), 2, "no node named"),
        (("--calibration", tmp_path / "missing.npz"), 2, "no such file"),
        (("--mode", "bogus"), 2, "bogus"),
    ]
    for args, code, text in cases:
        r = invoke("quantize", MLP, "-o", out, *args)
        assert r.exit_code == code, (args, r.output)
        assert text in r.output, (args, r.output)
        assert not out.exists()
    r = invoke("quantize", MLP, "-o", MLP, "--mode", "dynamic")
    assert r.exit_code == 2 and "refusing to overwrite" in r.output


def test_nothing_quantizable_exits_3_unless_allow_slower(invoke, tmp_path):
    src = save(no_weights(), tmp_path / "nw.onnx")
    out = tmp_path / "o.onnx"
    r = invoke("quantize", src, "-o", out, "--mode", "dynamic")
    assert r.exit_code == 3 and "nothing to quantize" in r.output and not out.exists()
    r = invoke("quantize", src, "-o", out, "--mode", "dynamic", "--allow-slower")
    assert r.exit_code == 0 and out.exists()


def test_budget_failure_prints_the_table_and_exits_3(invoke, tmp_path):
    m = mlp(outlier=30.0, hidden=64, classes=8)
    w = onnx.numpy_helper.to_array(m.graph.initializer[0]).copy()
    w[0, 0] = 30.0
    m.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, "w1"))
    src = save(m, tmp_path / "m.onnx")
    np.savez(tmp_path / "ev.npz", **data_for(m, 200, labels=True))
    out = tmp_path / "o.onnx"
    r = invoke("quantize", src, "-o", out, "--mode", "dynamic", "--eval", tmp_path / "ev.npz", "--max-accuracy-drop", "0", "--allow-slower", "--no-preprocess")
    assert r.exit_code == 3, r.output
    assert "budget of 0 points not met" in r.output and "candidate" in r.output and "dynamic" in r.output
    # the best figures reached: one layer left in float (better than all quantized), still over
    assert "1 of 2 node(s) left in float" in r.output and "fc2 (Gemm) in float" in r.output
    assert not out.exists()


def test_provider_cuda_without_cuda_exits_2(invoke, tmp_path):
    import pytest

    from onnxopt.runtime import cuda_available

    if cuda_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "x.onnx"
    r = invoke("quantize", MLP, "-o", out, "--mode", "dynamic", "--provider", "cuda")
    assert r.exit_code == 2 and "CUDAExecutionProvider" in r.output and not out.exists()


def test_left_in_float_lines_are_grouped_and_capped():
    from onnxopt.cli.quantize import _excluded_lines

    single = [{"node": "fc2", "op_type": "Gemm", "gain": 3.5, "group_size": 1}, {"node": "fc1", "op_type": "Gemm", "gain": -0.5, "group_size": 1}]
    assert _excluded_lines("dynamic", single) == [
        "dynamic: left fc2 (Gemm) in float: +3.5 points when alone in float",
        "dynamic: left fc1 (Gemm) in float: -0.5 points when alone in float",
    ]
    groups = [{"node": f"n{i}", "op_type": "Conv", "gain": float(i // 4), "group_size": 4} for i in range(8)]
    lines = _excluded_lines("static", groups)
    assert lines == [
        "static: left 4 nodes (n0, n1, n2, ... n3) in float: +0 points when alone in float (measured as a group of 4)",
        "static: left 4 nodes (n4, n5, n6, ... n7) in float: +1 points when alone in float (measured as a group of 4)",
    ]
    many = [{"node": f"n{i}", "op_type": "Conv", "gain": float(i), "group_size": 1} for i in range(50)]
    lines = _excluded_lines("static", many, max_lines=5)
    assert len(lines) == 5 and "46 more line(s)" in lines[-1]
