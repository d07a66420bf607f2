"""``onnxopt prune`` through click's CliRunner: help, exit codes, no output after failure."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from . import builders


def test_help(invoke):
    res = invoke("prune", "--help")
    assert res.exit_code == 0
    for opt in (
        "--method",
        "--ratio",
        "--sparsity",
        "--blocks",
        "--calibration",
        "--max-accuracy-drop",
        "--plot",
    ):
        assert opt in res.output


def test_channels_writes_a_verified_model(invoke, models_dir, tmp_path):
    out, rep = tmp_path / "p.onnx", tmp_path / "r.json"
    res = invoke(
        "prune",
        models_dir / "digits_cnn.onnx",
        "-o",
        out,
        "--ratio",
        "0.5",
        "--calibration",
        models_dir / "digits_calib.npz",
        "--eval",
        models_dir / "digits_test.npz",
        "--timing-runs",
        "3",
        "--report",
        rep,
    )
    assert res.exit_code == 0, res.output
    assert "channel group(s) pruned" in res.output and "reconstruction" in res.output
    assert "left intact: its channels reach graph output 'logits'" in res.output
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    report = json.loads(rep.read_text())
    assert report["figures"]["after"]["flops"] < 0.4 * report["figures"]["before"]["flops"]
    assert any(p.key == "onnxopt" for p in m.metadata_props)


def test_blocks_by_number(invoke, models_dir, tmp_path):
    out = tmp_path / "b.onnx"
    res = invoke(
        "prune",
        models_dir / "digits_resnet.onnx",
        "-o",
        out,
        "--method",
        "blocks",
        "--blocks",
        "2",
        "--eval",
        models_dir / "digits_test.npz",
        "--timing-runs",
        "0",
    )
    assert res.exit_code == 0, res.output
    assert "least harmful first" in res.output
    assert sum(n.op_type == "Add" for n in onnx.load(str(out)).graph.node) == 2


@pytest.mark.parametrize(
    "args,code,text",
    [
        (["--ratio", "1.5"], 2, "outside (0, 1)"),
        (["--ratio", "0"], 2, "outside (0, 1)"),
        (["--method", "blocks"], 3, "no residual blocks"),
        (["--method", "magnitude", "--ratio", "0.3"], 2, "does not apply"),
        (["--plot", "x.png"], 2, "--max-accuracy-drop"),
        (["--grid", "0,0.5", "--max-accuracy-drop", "1"], 2, "--grid values must be in (0, 1)"),
        (["--scope", "layer"], 2, "--scope does not apply to --method channels"),
        (
            ["--max-accuracy-drop", "0", "--metric", "cosine", "--grid", "0.5", "--align", "1"],
            3,
            "budget",
        ),
    ],
)
def test_errors_exit_codes_and_no_output(invoke, models_dir, tmp_path, args, code, text):
    out = tmp_path / "never.onnx"
    res = invoke("prune", models_dir / "digits_cnn.onnx", "-o", out, "--timing-runs", "0", *args)
    assert res.exit_code == code, res.output
    assert text in res.output
    assert res.output.count("\n") <= 2  # one-line error
    assert not out.exists()


def test_no_prunable_weights_exit_3(invoke, rng, tmp_path):
    src = builders.no_weights(rng)
    path = tmp_path / "plain.onnx"
    onnx.save(src, str(path))
    res = invoke("prune", path, "-o", tmp_path / "o.onnx", "--timing-runs", "0")
    assert res.exit_code == 3 and "no prunable channel group" in res.output
    assert str(path) in res.output
    assert not (tmp_path / "o.onnx").exists()


def test_calibration_not_matching_exit_2(invoke, models_dir, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, other=np.zeros((2, 1, 8, 8), np.float32))
    res = invoke(
        "prune", models_dir / "digits_cnn.onnx", "-o", tmp_path / "o.onnx", "--calibration", bad
    )
    assert res.exit_code == 2 and "missing key 'image'" in res.output
    assert not (tmp_path / "o.onnx").exists()


def test_refuses_to_overwrite_input(invoke, models_dir):
    src = models_dir / "digits_cnn.onnx"
    res = invoke("prune", src, "-o", src, "--timing-runs", "0")
    assert res.exit_code == 2 and "overwrite" in res.output


def test_convtranspose_consumer_with_calibration(invoke, rng, tmp_path):
    """A ConvTranspose reading pruned channels is refitted (it used to crash the command)."""
    src = tmp_path / "up.onnx"
    onnx.save(builders.duplicated_convt_net(rng), str(src))
    calib = tmp_path / "c.npz"
    np.savez(calib, x=rng.standard_normal((16, 2, 5, 5)).astype(np.float32))
    out = tmp_path / "p.onnx"
    res = invoke(
        "prune", src, "-o", out, "--ratio", "0.5", "--align", "1", "--calibration", calib,
        "--timing-runs", "0",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "reconstruction" in res.output and "\nup " in res.output
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
