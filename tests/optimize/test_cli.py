"""``onnxopt optimize`` through click: output + report written, errors -> exit codes, no output."""

from __future__ import annotations

import json

import pytest

from onnxopt.runtime import cuda_available


def test_help(invoke):
    res = invoke("optimize", "--help")
    assert res.exit_code == 0 and "--max-accuracy-drop" in res.output and "--target" in res.output


def test_writes_model_and_report(invoke, models_dir, tmp_path):
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    res = invoke(
        "optimize",
        models_dir / "digits_mlp.onnx",
        "-o",
        out,
        "--calibration",
        models_dir / "digits_calib.npz",
        "--threads",
        "1",
        "--time-budget",
        "0.5",
        "--report",
        rep,
    )
    assert res.exit_code == 0, res.output
    assert out.is_file() and "wrote" in res.output and "speed vs input" in res.output
    data = json.loads(rep.read_text())
    assert data["decision"]["chosen"] in {r["name"] for r in data["decision"]["rows"]} | {"input"}


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--recipe", "nope"], 2, "unknown recipe"),
        (["--target", "tpu"], 2, "tpu"),
        (["--eval", "MISSING.npz"], 2, "no such file"),
        (["--max-accuracy-drop", "-1"], 2, "max-accuracy-drop"),
    ],
)
def test_errors_write_nothing(invoke, models_dir, tmp_path, extra, code, message):
    out = tmp_path / "o.onnx"
    res = invoke(
        "optimize",
        models_dir / "digits_mlp.onnx",
        "-o",
        out,
        *[str(tmp_path / e) if e.endswith(".npz") else e for e in extra],
    )
    assert res.exit_code == code, res.output
    assert message in res.output
    assert not out.exists()


def test_bad_model_and_same_output(invoke, models_dir, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    res = invoke("optimize", bad, "-o", tmp_path / "o.onnx")
    assert res.exit_code == 2 and "bad.onnx" in res.output
    res = invoke("optimize", bad, "-o", bad)
    assert res.exit_code == 2 and "refusing to overwrite" in res.output


@pytest.mark.skipif(cuda_available(), reason="checks the no-CUDA path")
def test_cuda_without_cuda_exit_2(invoke, models_dir, tmp_path):
    out = tmp_path / "o.onnx"
    res = invoke("optimize", models_dir / "digits_mlp.onnx", "-o", out, "--target", "cuda")
    assert res.exit_code == 2 and "CUDAExecutionProvider" in res.output and not out.exists()
