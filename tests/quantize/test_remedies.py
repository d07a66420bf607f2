"""The budget search tries remedies (per-channel weights, per-tensor chosen ranges) before
leaving a node in float, and the decision table says which remedy each node got."""

from __future__ import annotations

import json

import numpy as np

from onnxopt.data import Dataset
from onnxopt.quantize.api import quantize
from tests.conftest import save
from tests.quantize.quant_models import data_for, mlp

KW = dict(mode="static", max_accuracy_drop=0.5, metric="cosine", allow_slower=True, timing=False, equalize="off", preprocess=False)


def _ds(m):
    return Dataset("<x>", arrays={"x": data_for(m, 256)["x"]})


def test_a_node_that_breaks_the_budget_is_remedied_per_channel():
    """fc2 holds one weight 20x the others: per-tensor INT8 breaks the budget there; the
    search would leave it in float, the per-channel remedy keeps it quantized."""
    m = mlp(hidden=32, outlier=20.0)
    r = quantize(m, calibration=_ds(m), **KW)
    c = r.report["candidates"][0]
    assert c["status"] == "ok" and c["within_budget"] and c["drop"] <= 0.5
    assert [(e["node"], e["remedy"]) for e in c["remedied"]] == [("fc2", "per-channel")]
    assert c["excluded"] == [] and c["quantized_nodes"] == c["quantizable_nodes"]
    # fc2's weight is quantized per channel (a scale per output row) in the written model
    dq = [n for n in r.model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("w2")]
    scales = {t.name: t for t in r.model.graph.initializer}
    assert dq and list(scales[dq[0].input[1]].dims) == [4]


def test_a_node_no_remedy_saves_stays_in_float_with_what_was_tried(tmp_path, invoke):
    m = mlp(hidden=32, outlier=200.0)
    r = quantize(m, calibration=_ds(m), **KW)
    c = r.report["candidates"][0]
    assert [(e["node"], e["remedy"], e["remedies_tried"]) for e in c["excluded"]] == [("fc2", "float", ["per-channel"])]
    assert c["remedied"] == []
    src, out, cal = save(m, tmp_path / "m.onnx"), tmp_path / "q.onnx", tmp_path / "d.npz"
    np.savez(cal, x=data_for(m, 256)["x"])
    static = ["--mode", "static", "--calibration", cal, "--metric", "cosine", "--max-accuracy-drop", "0.5"]
    static += ["--allow-slower", "--equalize", "off", "--no-preprocess"]
    res = invoke("quantize", src, "-o", out, *static, "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["candidates"][0]["excluded"][0]["remedies_tried"] == ["per-channel"]
    m20 = mlp(hidden=32, outlier=20.0)
    src2 = save(m20, tmp_path / "m20.onnx")
    res = invoke("quantize", src2, "-o", tmp_path / "q20.onnx", *static)
    assert res.exit_code == 0 and "fc2 (Gemm) kept quantized with remedy per-channel instead of float" in res.output, res.output
