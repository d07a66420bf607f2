"""``onnxopt.quantize.api``: end to end on the bundled digits models and on tiny models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxopt.core.provenance import read_provenance
from onnxopt.errors import BudgetError, DataError, ModelError, ProviderError, UsageError
from onnxopt.metrics import Evaluator
from onnxopt.quantize.api import quantize, quantize_dynamic_candidate, quantize_static_candidate
from onnxopt.quantize.candidates import dynamic_candidate, static_candidate
from onnxopt.runtime import cuda_available
from onnxopt.verify import check_model
from tests.conftest import MODELS
from tests.quantize.quant_models import data_for, mlp, no_weights

MLP = MODELS / "digits_mlp.onnx"
CNN = MODELS / "digits_cnn.onnx"
CAL = MODELS / "digits_calib.npz"
TEST = MODELS / "digits_test.npz"


def test_auto_on_digits_mlp_is_valid_accurate_and_reports_every_candidate():
    r = quantize(MLP, calibration=CAL, eval_data=TEST, max_accuracy_drop=1.0, batch=64, timing_runs=5, timing_seconds=3, allow_slower=True)
    rep = r.report
    assert [c["label"] for c in rep["candidates"]] == ["dynamic", "static per-tensor", "static per-channel"]
    assert rep["metric"]["name"] == "top1" and rep["metric"]["reference"] == pytest.approx(96.75)
    assert rep["chosen"] in {c["label"] for c in rep["candidates"]}
    chosen = next(c for c in rep["candidates"] if c["label"] == rep["chosen"])
    assert chosen["drop"] <= 1.0 and chosen["quantized_nodes"] >= 3
    assert all(c["speed"] and c["speed"]["ratio"] > 0 for c in rep["candidates"])
    check_model(r.model)
    acc = Evaluator(onnx.load(str(MLP)), __import__("onnxopt.data", fromlist=["load_data"]).load_data(TEST)).score(r.model)
    assert acc >= 96.75 - 1.0
    assert rep["after"]["bytes"] < rep["before"]["bytes"] / 3  # INT8 weights
    prov = read_provenance(r.model)
    assert prov["command"] == "quantize" and prov["chosen"] == rep["chosen"]
    assert "seconds" not in str(prov)  # nothing time-dependent in the model


def test_dynamic_is_deterministic_and_rewrites_gemm():
    a = quantize(MLP, mode="dynamic", allow_slower=True, timing=False)
    b = quantize(MLP, mode="dynamic", allow_slower=True, timing=False)
    assert a.model.SerializeToString(deterministic=True) == b.model.SerializeToString(deterministic=True)
    assert any("Gemm node(s) rewritten" in n for n in a.report["notes"])
    assert "DynamicQuantizeLinear" in {n.op_type for n in a.model.graph.node}


def test_static_cnn_per_channel_with_entropy():
    r = quantize(
        CNN, mode="static", per_channel=True, method="entropy", calibration=CAL, eval_data=TEST, max_accuracy_drop=1.0, allow_slower=True, timing=False
    )
    c = r.report["candidates"][0]
    assert c["label"] == "static per-channel" and c["drop"] <= 1.0
    assert r.report["calibration"]["method"] == "entropy" and r.report["calibration"]["samples"] == 400
    check_model(r.model)


def test_budget_search_through_the_api(tmp_path):
    m = mlp(outlier=30.0, hidden=64, classes=8)
    d = data_for(m, 300, labels=True)
    np.savez(tmp_path / "ev.npz", **d)
    r = quantize(m, mode="dynamic", eval_data=tmp_path / "ev.npz", max_accuracy_drop=1.0, allow_slower=True, timing=False, preprocess=False)
    c = r.report["candidates"][0]
    assert c["within_budget"] and [e["node"] for e in c["excluded"]] == ["fc2"]
    with pytest.raises(BudgetError, match="budget of 0 points not met") as exc:
        w = mlp(outlier=30.0, hidden=64, classes=8)
        w.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(_with_outlier(onnx.numpy_helper.to_array(w.graph.initializer[0])), "w1"))
        quantize(w, mode="dynamic", eval_data=tmp_path / "ev.npz", max_accuracy_drop=0.0, metric="agreement", allow_slower=True, timing=False, preprocess=False)
    assert exc.value.exit_code == 3 and exc.value.details["report"]["candidates"]


def _with_outlier(w):
    w = w.copy()
    w[0, 0] = 30.0
    return w


def test_building_blocks_return_verified_models():
    m = onnx.load(str(MLP))
    q = quantize_dynamic_candidate(m, op_types=["Gemm"])
    check_model(q)
    assert [n.op_type for n in q.graph.node].count("MatMulInteger") == 3
    q2 = quantize_static_candidate(m, CAL, per_channel=True, eval_data=TEST, max_accuracy_drop=1.0)
    check_model(q2)
    model, notes = dynamic_candidate(m, op_types=["MatMul", "Gemm"])
    assert any("3 Gemm node(s) rewritten" in n for n in notes)
    check_model(model)
    model, notes = static_candidate(m, calibration=__import__("onnxopt.data", fromlist=["load_data"]).load_data(CAL), per_channel=False)
    check_model(model)


def test_bad_input():
    with pytest.raises(UsageError, match="needs calibration"):
        quantize(MLP, mode="static")
    with pytest.raises(UsageError, match="unknown op type"):
        quantize(MLP, mode="dynamic", op_types=["Foo"])
    with pytest.raises(UsageError, match="no node named 'nope'"):
        quantize(MLP, mode="dynamic", exclude_nodes=["nope"])
    with pytest.raises(UsageError, match="needs --eval"):
        quantize(MLP, mode="dynamic", max_accuracy_drop=1.0)
    with pytest.raises(ModelError):
        quantize(MODELS / "missing.onnx")
    if not cuda_available():
        with pytest.raises(ProviderError):
            quantize(MLP, provider="cuda")


def test_calibration_not_matching_the_inputs(tmp_path):
    np.savez(tmp_path / "bad.npz", image=np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(DataError, match="expected shape"):
        quantize(MLP, mode="static", calibration=tmp_path / "bad.npz")
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(DataError, match="missing key 'image'"):
        quantize(MLP, calibration=tmp_path / "wrong.npz")


def test_nothing_quantizable():
    m = no_weights()
    with pytest.raises(BudgetError, match="nothing to quantize") as exc:
        quantize(m, mode="dynamic")
    assert exc.value.exit_code == 3
    r = quantize(m, mode="dynamic", allow_slower=True)
    assert r.report["chosen"] is None
    assert [n.op_type for n in r.model.graph.node] == ["Relu", "Sigmoid"]


@pytest.mark.cuda
def test_auto_on_cuda_skips_dynamic_and_writes_a_valid_static_model():
    r = quantize(MLP, calibration=CAL, eval_data=TEST, max_accuracy_drop=1.0, provider="cuda", batch=64, timing_runs=5, timing_seconds=3, allow_slower=True)
    rep = r.report
    assert rep["provider"] == "cuda"
    assert [c["label"] for c in rep["candidates"]] == ["static per-tensor", "static per-channel"]
    assert any("no CUDA kernels" in n for n in rep["notes"])
    check_model(r.model, provider="cuda")
    assert next(c for c in rep["candidates"] if c["label"] == rep["chosen"])["drop"] <= 1.0
