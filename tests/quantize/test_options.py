"""Options that must have an effect: op types per mode, node exclusion through
pre-processing, the warning without a budget, --model-type, the calibration progress count."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.data import Dataset, load_data
from onnxopt.errors import BudgetError, UsageError
from onnxopt.quantize.api import quantize
from onnxopt.quantize.collect import _batch_count
from onnxopt.quantize.preprocess import map_node_names, node_names, prepare
from onnxopt.verify import check_model
from tests.conftest import MODELS, save
from tests.quantize.quant_models import (
    bn_conv,
    data_for,
    ffn_block,
    matmul_add_mlp,
    mlp,
    wide_softmax,
)

FAST = dict(allow_slower=True, timing=False)


def _ops(model) -> dict[str, str]:
    return {n.name: n.op_type for n in model.graph.node}


def test_op_types_a_mode_cannot_quantize_are_refused():
    with pytest.raises(UsageError, match="not quantizable in dynamic mode") as exc:
        quantize(mlp(), mode="dynamic", op_types=["Relu"], **FAST)
    assert exc.value.exit_code == 2
    cal = Dataset("<c>", arrays=data_for(mlp(), 16))
    with pytest.raises(UsageError, match="not quantizable in static mode"):
        quantize(mlp(), mode="static", calibration=cal, op_types=["LSTM"], **FAST)
    # auto without calibration: Relu leaves no candidate to try
    with pytest.raises(UsageError, match="no candidate to try"):
        quantize(mlp(), op_types=["Relu"], **FAST)
    # auto with calibration: the dynamic candidate is skipped, the static ones quantize Relu
    r = quantize(mlp(), op_types=["Relu"], calibration=cal, **FAST)
    assert [c["label"] for c in r.report["candidates"]] == ["static per-tensor", "static per-channel"]
    assert any("dynamic candidate skipped" in n for n in r.report["notes"])
    assert all(c["config"]["op_types"] == ["Relu"] for c in r.report["candidates"])


def test_node_names_are_those_of_the_input():
    m = matmul_add_mlp()
    assert node_names(m) == ["mm", "bias", "Relu_2", "mm2"]
    prep = prepare(m)
    assert _ops(prep.model) == {"mm/MatMulAddFusion": "Gemm", "Relu_2": "Relu", "mm2": "MatMul"}
    found, missing = map_node_names(prep.model, ["mm", "Relu_2", "bias"], node_names(m))
    assert found == {"mm": ["mm/MatMulAddFusion"], "Relu_2": ["Relu_2"]} and missing == ["bias"]


def test_exclude_a_node_that_ort_fused_keeps_the_fused_node_in_float():
    m = matmul_add_mlp()
    plain = quantize(m, mode="dynamic", **FAST)
    assert [op for op in _ops(plain.model).values()].count("MatMulInteger") == 2
    r = quantize(m, mode="dynamic", exclude_nodes=["mm"], **FAST)
    ops = _ops(r.model)
    assert list(ops.values()).count("MatMulInteger") == 1
    assert ops["mm/MatMulAddFusion"] == "MatMul"  # the fused Gemm (as MatMul + Add) stayed float
    assert any("fused it into mm/MatMulAddFusion" in n for n in r.report["notes"])
    assert r.report["candidates"][0]["config"]["exclude"] == ["mm/MatMulAddFusion"]
    check_model(r.model)


def test_exclude_a_node_ort_folds_away_drops_ort_preprocessing():
    m = bn_conv()
    cal = Dataset("<c>", arrays=data_for(m, 16))
    r = quantize(m, mode="static", calibration=cal, exclude_nodes=["bn"], **FAST)
    assert any("ORT quant_pre_process not used" in n for n in r.report["preprocess"]["notes"])
    assert _ops(r.model)["bn"] == "BatchNormalization"
    # the BN's output is not quantized
    bn = next(n for n in r.model.graph.node if n.name == "bn")
    consumers = [n.op_type for n in r.model.graph.node if bn.output[0] in n.input]
    assert consumers and "QuantizeLinear" not in consumers
    assert r.report["candidates"][0]["quantized_nodes"] >= 1  # the Conv is quantized
    check_model(r.model)


def test_generated_node_names_can_be_excluded():
    m = matmul_add_mlp()
    m.graph.node[3].name = ""  # mm2, nameless: reports call it MatMul_3
    assert node_names(m)[3] == "MatMul_3"
    r = quantize(m, mode="dynamic", exclude_nodes=["MatMul_3"], **FAST)
    ops = _ops(r.model)
    assert ops["MatMul_3"] == "MatMul" and list(ops.values()).count("MatMulInteger") == 1
    with pytest.raises(UsageError, match="no node named 'MatMul_9'"):
        quantize(m, mode="dynamic", exclude_nodes=["MatMul_9"], **FAST)


def test_a_collapse_is_refused_unless_allowed(tmp_path, invoke):
    """Static INT8 of a 1000-class Softmax collapses (cosine < 0.5 against FP32 on the
    calibration data): refused with exit 3 and the score named, written with a warning
    under --allow-collapse; within a budget the Softmax stays in float instead."""
    m = wide_softmax()
    np.savez(tmp_path / "d.npz", **data_for(m, 32))
    with pytest.raises(BudgetError, match=r"collapsed: cosine against FP32 on the calibration data static per-tensor 0\.[0-4]\d") as err:
        quantize(m, mode="static", calibration=tmp_path / "d.npz", metric="cosine", preprocess=False, **FAST)
    rep = err.value.details["report"]
    assert rep["candidates"][0]["status"] == "collapsed" and rep["collapse_check"]["scores"]["static per-tensor"] < 0.5
    r = quantize(m, mode="static", calibration=tmp_path / "d.npz", metric="cosine", preprocess=False, allow_collapse=True, **FAST)
    assert r.report["candidates"][0]["drop"] > 50
    assert any(n.startswith("warning: static per-tensor has collapsed") for n in r.report["notes"])
    assert any(n.startswith("warning: static per-tensor loses") for n in r.report["notes"])
    src, out = save(m, tmp_path / "m.onnx"), tmp_path / "q.onnx"
    args = ("quantize", src, "-o", out, "--mode", "static", "--calibration", tmp_path / "d.npz", "--metric", "cosine", "--allow-slower", "--no-preprocess")
    res = invoke(*args)
    assert res.exit_code == 3 and "collapsed" in res.output and "--allow-collapse" in res.output, res.output
    assert not out.exists()
    res = invoke(*args, "--allow-collapse")
    assert res.exit_code == 0 and "warning: static per-tensor has collapsed" in res.output, res.output
    assert out.exists()
    # within a budget: no warning (the Softmax stays in float instead)
    ok = quantize(m, mode="static", calibration=tmp_path / "d.npz", metric="cosine", max_accuracy_drop=1.0, preprocess=False, **FAST)
    assert not any(n.startswith("warning:") for n in ok.report["notes"])
    assert ok.report["collapse_check"]["scores"]["static per-tensor"] >= 0.99


def test_model_type_fuses_before_quantizing():
    m = ffn_block()
    x = np.random.default_rng(0).standard_normal((6, 4, 16)).astype(np.float32)
    r = quantize(m, mode="dynamic", calibration=Dataset("<x>", arrays={"x": x}), model_type="bert", **FAST)
    tf = r.report["transformer_fusion"]
    assert tf["modified"] and tf["counts"]["fused_SkipLayerNormalization"] == 1
    ops = [n.op_type for n in r.model.graph.node]
    assert {"BiasGelu", "SkipLayerNormalization", "MatMulInteger"} <= set(ops)
    assert r.report["candidates"][0]["drop"] < 1.0  # scored against the unfused input
    check_model(r.model)
    with pytest.raises(UsageError, match="model type must be one of"):
        quantize(m, mode="dynamic", model_type="resnet", **FAST)


def test_cli_model_types_match_the_pass():
    from onnxopt.cli.quantize import MODEL_TYPES as CLI_TYPES
    from onnxopt.quantize.transformer import MODEL_TYPES

    assert CLI_TYPES == MODEL_TYPES


def test_progress_total_is_the_number_of_batches():
    ds = load_data(MODELS / "digits_calib.npz")
    for size, limit in ((None, None), (7, 50), (64, None)):
        assert _batch_count(ds, size, limit) == sum(1 for _ in ds.batches(size, limit))
