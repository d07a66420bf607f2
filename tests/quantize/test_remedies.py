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
    assert [(e["node"], e["remedy"], e["remedies_tried"]) for e in c["excluded"]] == [("fc2", "float", ["per-channel", "float-output"])]
    assert c["remedied"] == []
    src, out, cal = save(m, tmp_path / "m.onnx"), tmp_path / "q.onnx", tmp_path / "d.npz"
    np.savez(cal, x=data_for(m, 256)["x"])
    static = ["--mode", "static", "--calibration", cal, "--metric", "cosine", "--max-accuracy-drop", "0.5"]
    static += ["--allow-slower", "--equalize", "off", "--no-preprocess"]
    res = invoke("quantize", src, "-o", out, *static, "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["candidates"][0]["excluded"][0]["remedies_tried"] == ["per-channel", "float-output"]
    m20 = mlp(hidden=32, outlier=20.0)
    src2 = save(m20, tmp_path / "m20.onnx")
    res = invoke("quantize", src2, "-o", tmp_path / "q20.onnx", *static)
    assert res.exit_code == 0 and "fc2 (Gemm) kept quantized with remedy per-channel instead of float" in res.output, res.output


def _outlier_output_net():
    """x[N,16] -> MatMul (output channel 0 is 300x the others) -> Reshape -> MatMul -> y[N,4],
    channel 0 unread by the second MatMul: a per-tensor range on the first output rounds the
    other channels away."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((16, 16)).astype(np.float32)
    w1[:, 0] *= 300
    w2 = rng.standard_normal((16, 4)).astype(np.float32)
    w2[0] = 0
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Reshape", ["h", "shape"], ["r"], name="reshape"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.array([-1, 16], np.int64), "shape")]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_an_output_stretched_by_outlier_channels_is_left_float():
    """fc1's output range is 300x what most channels use: leaving fc1 or fc2 in float cannot
    help while the tensor between them is quantized; the float-output remedy keeps fc1 in
    INT8 and drops the Q/DQ pairs on its output and after the Reshape."""
    from onnxopt.quantize.emulate import keep_outputs_float
    from onnxopt.runtime import run_dataset
    from onnxopt.verify import check_model

    m = _outlier_output_net()
    x = np.random.default_rng(4).standard_normal((256, 16)).astype(np.float32)
    ds = Dataset("<x>", arrays={"x": x})
    full = quantize(
        m, mode="static", calibration=ds, metric="cosine", allow_slower=True, timing=False, equalize="off", preprocess=False, allow_collapse=True,
        per_channel=True,
    )  # fmt: skip
    import copy

    q = copy.deepcopy(full.model)
    pairs = sum(n.op_type == "QuantizeLinear" for n in q.graph.node)
    assert keep_outputs_float(q, ["fc1"]) == 2
    assert sum(n.op_type == "QuantizeLinear" for n in q.graph.node) == pairs - 2
    check_model(q)
    ref = run_dataset(m, ds)[0]

    def err(model):
        return float(np.linalg.norm(run_dataset(model, ds)[0] - ref) / np.linalg.norm(ref))

    assert err(q) < 0.1 * err(full.model)
    r = quantize(m, calibration=ds, per_channel=True, **{**KW, "max_accuracy_drop": 0.1})
    c = r.report["candidates"][0]
    assert c["within_budget"] and ("fc1", "float-output") in [(e["node"], e["remedy"]) for e in c["remedied"]]
