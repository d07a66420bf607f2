"""`onnxopt ensemble` and `onnxopt chain` through click's CliRunner."""

from __future__ import annotations

import json

import numpy as np
import onnx

from onnxopt.ensemble import parity
from tests.conftest import save
from tests.ensemble.ensemble_models import labelled_data, mlp, two_outputs


def _members(tmp_path, *models):
    return [save(m, tmp_path / f"m{i}.onnx") for i, m in enumerate(models)]


def test_help(invoke):
    for cmd in ("ensemble", "chain"):
        r = invoke(cmd, "--help")
        assert r.exit_code == 0 and "Example" in r.output


def test_vote_writes_a_verified_model(invoke, tmp_path):
    paths = _members(tmp_path, mlp(0), mlp(1), mlp(2))
    data = labelled_data(tmp_path / "d.npz", n=40)
    out = tmp_path / "vote.onnx"
    r = invoke("ensemble", *paths, "-o", out, "--fusion", "vote", "--data", data, "--weights", "2,1,1")
    assert r.exit_code == 0, r.output
    assert "parity vs members run separately" in r.output and "ensemble top1" in r.output
    m = onnx.load(str(out))
    assert [o.name for o in m.graph.output] == ["label", "votes"]


def test_stack_json_and_report(invoke, tmp_path):
    paths = _members(tmp_path, mlp(0), mlp(1))
    fit = labelled_data(tmp_path / "fit.npz", n=60)
    out, rep = tmp_path / "s.onnx", tmp_path / "r.json"
    r = invoke("ensemble", *paths, "-o", out, "--fusion", "stack", "--fit", fit, "--l2", "0.01", "--json", "--report", rep)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["fit"]["l2"] == 0.01 and report["parity"]["ok"]
    assert json.loads(rep.read_text())["fusion"]["kind"] == "stack"


def test_output_and_input_map_options(invoke, tmp_path):
    paths = _members(tmp_path, mlp(0, in_name="inp"), two_outputs(1))
    out = tmp_path / "e.onnx"
    r = invoke("ensemble", *paths, "-o", out, "--output", "y", "--input-map", "inp:x", "--keep-member-outputs", "--fuse-members")
    assert r.exit_code == 0, r.output
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["y", "m0/y", "m1/y"]
    assert "no two members share an architecture" in r.output


def test_user_errors_exit_2_without_output(invoke, tmp_path):
    paths = _members(tmp_path, mlp(0), mlp(1, in_name="z"), mlp(2, classes=5))
    nolabels = labelled_data(tmp_path / "n.npz", labels=False)
    out = tmp_path / "out.onnx"
    cases = [
        ([paths[0]], "at least 2 models"),
        ([paths[0], paths[1]], "--input-map"),
        ([paths[0], paths[2]], "incompatible with"),
        ([paths[0], paths[0], "--fusion", "weighted", "--weights", "1,2,3"], "3 values for 2 members"),
        ([paths[0], paths[0], "--fusion", "stack"], "needs --fit"),
        ([paths[0], paths[0], "--fusion", "stack", "--fit", nolabels], "no 'labels'"),
        ([paths[0], tmp_path / "missing.onnx"], "no such file"),
    ]
    for args, msg in cases:
        r = invoke("ensemble", *args, "-o", out)
        assert r.exit_code == 2, (args, r.output)
        assert msg in r.output and r.output.count("\n") == 1
        assert not out.exists()
    r = invoke("ensemble", paths[0], paths[0], "-o", paths[0])
    assert r.exit_code == 2 and "refusing to overwrite" in r.output


def test_parity_failure_exits_3_without_output(invoke, tmp_path, monkeypatch):
    paths = _members(tmp_path, mlp(0), mlp(1))
    real = parity.reference
    monkeypatch.setattr(parity, "reference", lambda f, a: [r * np.float32(1.5) for r in real(f, a)])
    out = tmp_path / "out.onnx"
    r = invoke("ensemble", *paths, "-o", out)
    assert r.exit_code == 3 and "parity check failed" in r.output
    assert not out.exists()


def test_chain_command(invoke, tmp_path):
    a = two_outputs(0)
    b = mlp(3, features=8, in_name="hidden", out_name="logits")
    paths = _members(tmp_path, a, b)
    out = tmp_path / "c.onnx"
    r = invoke("chain", *paths, "-o", out)
    assert r.exit_code == 2 and "--map" in r.output and not out.exists()
    r = invoke("chain", *paths, "-o", out, "--map", "feat:hidden")
    assert r.exit_code == 0, r.output
    assert "parity vs the stages" in r.output
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["logits"]


def test_written_model_gets_the_usual_file_mode(invoke, tmp_path):
    import os

    paths = _members(tmp_path, mlp(0), mlp(1))
    old = os.umask(0o022)
    try:
        r = invoke("ensemble", *paths, "-o", tmp_path / "e.onnx")
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "e.onnx").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600


def test_output_names_one_per_member(invoke, tmp_path):
    renamed = two_outputs(2)
    renamed.graph.node[1].output[0] = "scores"
    renamed.graph.output[0].name = "scores"
    paths = _members(tmp_path, two_outputs(1), renamed)
    out = tmp_path / "e.onnx"
    r = invoke("ensemble", *paths, "-o", out, "--output", "y,scores", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert [m["selected_outputs"] for m in rep["members"]] == [["y"], ["scores"]]
    assert rep["outputs"] == ["output0"]  # the members' names differ
    r = invoke("ensemble", *paths, "-o", tmp_path / "f.onnx", "--output", "y,scores,feat")
    assert r.exit_code == 2 and "3 names for 2 members" in r.output and not (tmp_path / "f.onnx").exists()
