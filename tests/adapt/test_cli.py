"""``onnxopt adapt`` through click: help, success, JSON, and every refusal -> exit 2, no file."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxopt.adapt.emit import read_class_names


def test_help(invoke):
    res = invoke("adapt", "--help")
    assert res.exit_code == 0 and "--features" in res.output and "--holdout" in res.output


def test_adapt_writes_a_verified_model(invoke, tiny, tmp_path):
    mpath, dpath, _ = tiny
    out = tmp_path / "out.onnx"
    names = tmp_path / "names.txt"
    names.write_text("north\nsouth\neast\nwest\n")
    res = invoke("adapt", mpath, "--data", dpath, "-o", out, "--class-names", f"@{names}", "--eval", dpath)
    assert res.exit_code == 0, res.output
    assert "holdout" in res.output and "verified: cut reproduces 'feat' bit for bit" in res.output and f"wrote {out}" in res.output
    model = onnx.load(str(out))
    assert read_class_names(model) == ["north", "south", "east", "west"]
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 4
    again = tmp_path / "again.onnx"
    assert invoke("adapt", mpath, "--data", dpath, "-o", again, "--class-names", f"@{names}").exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_json_and_report(invoke, tiny, tmp_path):
    mpath, dpath, _ = tiny
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    res = invoke("adapt", mpath, "--data", dpath, "-o", out, "--head", "linear", "--l2", "0.01", "--holdout", "0", "--json", "--report", rep)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["head"]["kind"] == "linear" and data["holdout_samples"] == 0 and data["accuracy"]["holdout"] is None
    assert json.loads(rep.read_text())["head"]["l2"] == 0.01


def _npz(tmp_path, name, **arrays):
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


@pytest.mark.parametrize(
    "case, message",
    [
        ("no-labels", "no 'labels'"),
        ("one-class", "fewer than 2 classes"),
        ("out-of-range", "labels outside [0, 2)"),
        ("missing-features", "no such tensor"),
        ("int-features", "not a float tensor"),
        ("one-class-option", "at least 2 classes"),
        ("no-head", "no Gemm/MatMul head"),
        ("overwrite-input", "refusing to overwrite the input model"),
    ],
)
def test_refusals_exit_2_without_output(invoke, tiny, tmp_path, case, message):
    mpath, dpath, _ = tiny
    x = np.random.default_rng(0).standard_normal((12, 2, 4, 4)).astype(np.float32)
    out = tmp_path / "out.onnx"
    args = ["adapt", mpath, "--data", dpath, "-o", out]
    if case == "no-labels":
        args[3] = _npz(tmp_path, "nolab.npz", x=x)
    elif case == "one-class":
        args[3] = _npz(tmp_path, "one.npz", x=x, labels=np.ones(12, np.int64))
    elif case == "out-of-range":
        args += ["--classes", "2"]
    elif case == "missing-features":
        args += ["--features", "nope"]
    elif case == "int-features":
        from onnx import TensorProto, helper

        m = onnx.load(str(mpath))
        m.graph.node.append(helper.make_node("ArgMax", ["feat"], ["am"], axis=1))
        m.graph.output.append(helper.make_tensor_value_info("am", TensorProto.INT64, ["N"]))
        args[1] = tmp_path / "two.onnx"
        onnx.save(m, str(args[1]))
        args += ["--features", "am"]
    elif case == "one-class-option":
        args += ["--classes", "1"]
    elif case == "no-head":
        m = onnx.load(str(mpath))
        m.graph.node[-1].CopyFrom(onnx.helper.make_node("Identity", ["feat"], ["logits"]))
        args[1] = tmp_path / "nohead.onnx"
        onnx.save(m, str(args[1]))
    elif case == "overwrite-input":
        out = mpath
        args[5] = mpath
    before = mpath.read_bytes()
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    assert message in res.stderr and res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    if case != "overwrite-input":
        assert not out.exists()
    assert mpath.read_bytes() == before
