"""``onnxopt diagnose``: help, rendering, the report and plot files, bad input -> exit 2."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.diagnose.diag_models import feeds, scaled
from tests.toy_models import tiny_cnn


@pytest.fixture
def pair(tmp_path):
    ref = tiny_cnn()
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(ref, str(a))
    onnx.save(scaled(ref, "conv.w", 1.5, channel=1), str(b))
    np.savez(tmp_path / "d.npz", **feeds(12))
    return a, b, tmp_path / "d.npz"


def test_help(invoke):
    r = invoke("diagnose", "--help")
    assert r.exit_code == 0 and "--recipe" in r.output and "--ort-optimizers" in r.output and "--plot" in r.output
    assert "diagnose" in invoke("--help").output


def test_pair_names_the_first_diverging_node_and_writes_report(invoke, pair, tmp_path):
    a, b, d = pair
    rep = tmp_path / "r.json"
    r = invoke("diagnose", a, b, "--data", d, "--report", rep)
    assert r.exit_code == 0, r.output
    assert "first diverging node: conv (Conv)" in r.output and "CPU instruction sets:" in r.output
    doc = json.loads(rep.read_text())
    assert doc["layerwise"]["first_diverging"]["node"] == "conv" and doc["layerwise"]["samples"] == 12
    assert [t["ref"] for t in doc["layerwise"]["tensors"]] == ["c", "bn", "r", "p", "f", "logits"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx", "d.npz", "r.json"]  # no model written


def test_json(invoke, pair):
    a, b, d = pair
    r = invoke("diagnose", a, b, "--data", d, "--json", "--top", "2")
    doc = json.loads(r.stdout)
    assert doc["mode"] == "pair" and len(doc["layerwise"]["top"]) == 2


def test_plot(invoke, pair, tmp_path):
    pytest.importorskip("matplotlib")
    a, b, d = pair
    out = tmp_path / "p.png"
    r = invoke("diagnose", a, b, "--data", d, "--profile", "--plot", out)
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:4] == b"\x89PNG" and "kernel time per run" in r.output


@pytest.mark.parametrize(
    "args, code, text",
    [
        (["{a}", "{missing}"], 2, "no such file"),
        (["{a}", "{garbage}"], 2, "not an ONNX model"),
        (["{a}", "{other}"], 2, "nothing to match"),
        (["{a}", "{b}", "--data", "{bad_data}"], 2, "error: "),
        (["{a}", "{b}", "--report", "{a}"], 2, "refusing to overwrite the input model"),
        (["{a}", "{b}", "--plot", "{tmp}/p.txt"], 2, "plot file must end in"),
        (["{a}", "{b}", "--report", "{tmp}/r.json", "--plot", "{tmp}/r.json"], 2, "must differ"),
        (["{a}"], 2, "give exactly one of"),
        (["{a}", "{b}", "--fp16"], 2, "give exactly one of"),
        (["{a}", "--ort-optimizers", "--profile"], 2, "--profile compares two models"),
    ],
)
def test_bad_input_exits_2_with_one_line(invoke, pair, tmp_path, args, code, text):
    a, b, _ = pair
    (tmp_path / "g.onnx").write_bytes(b"not a model")
    other = tiny_cnn()
    other.graph.input[0].name = "image"
    other.graph.node[0].input[0] = "image"
    onnx.save(other, str(tmp_path / "o.onnx"))
    np.savez(tmp_path / "bad.npz", y=np.zeros((2, 3), np.float32))
    subs = {
        "a": a,
        "b": b,
        "missing": tmp_path / "nope.onnx",
        "garbage": tmp_path / "g.onnx",
        "other": tmp_path / "o.onnx",
        "bad_data": tmp_path / "bad.npz",
        "tmp": tmp_path,
    }
    before = sorted(p.name for p in tmp_path.iterdir())
    r = invoke("diagnose", *[x.format(**subs) for x in args])
    assert r.exit_code == code, r.output
    assert text in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_plot_without_matplotlib_is_refused_before_any_work(invoke, pair, tmp_path, monkeypatch):
    import sys

    a, b, d = pair
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    r = invoke("diagnose", a, b, "--data", d, "--plot", tmp_path / "p.png")
    assert r.exit_code == 2 and "--plot needs matplotlib" in r.stderr and not (tmp_path / "p.png").exists()
