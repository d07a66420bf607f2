"""Bias correction after weight quantization: the shift formula on arrays, and a static QDQ
model whose mean output shift against FP32 shrinks once the biases are corrected."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.data import Dataset
from onnxopt.errors import UsageError
from onnxopt.quantize.api import quantize
from onnxopt.quantize.bias_correction import weight_shift
from onnxopt.quantize.config import QuantConfig
from onnxopt.runtime import run_dataset
from onnxopt.verify import check_model


def test_weight_shift_on_arrays():
    rng = np.random.default_rng(0)
    dw, m = rng.standard_normal((4, 3)), rng.standard_normal(4)
    np.testing.assert_allclose(weight_shift("MatMul", dw, m), m @ dw)
    np.testing.assert_allclose(weight_shift("Gemm", dw.T, m, trans_b=True), m @ dw)
    dwc = rng.standard_normal((5, 4, 3, 3))
    x = np.broadcast_to(m[None, :, None, None], (1, 4, 3, 3))  # a 3x3 patch of constant channels
    np.testing.assert_allclose(weight_shift("Conv", dwc, m), np.einsum("oikl,bikl->o", dwc, x))


def shifted_gemm(seed: int = 0) -> onnx.ModelProto:
    """x[N,32] (inputs with mean 4) -> Gemm(transB) with one outlier weight (coarse
    per-tensor steps) -> Relu -> Gemm -> y[N,8]."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((32, 32)).astype(np.float32) * 0.05
    w1[0, 0] = 3.0
    w2 = rng.standard_normal((8, 32)).astype(np.float32) * 0.2
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(np.zeros(32, np.float32), "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.full(8, 0.5, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1),
    ]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_bias_correction_reduces_the_mean_output_shift():
    m = shifted_gemm()
    x = (np.random.default_rng(1).standard_normal((256, 32)) + 4.0).astype(np.float32)
    ds = Dataset("<x>", arrays={"x": x})
    kw = dict(mode="static", calibration=ds, metric="cosine", allow_slower=True, timing=False, equalize="off", preprocess=False)
    plain = quantize(m, **kw)
    fixed = quantize(m, bias_correction=True, **kw)
    assert fixed.report["chosen"] == "static per-tensor bias-corrected"
    assert any(n.startswith("bias correction: 2 layer(s) corrected") for n in fixed.report["candidates"][0]["notes"])
    check_model(fixed.model)
    ref = run_dataset(m, ds)[0]

    def shift(q):
        return np.abs((run_dataset(q, ds)[0] - ref).mean(axis=0)).mean()

    assert shift(fixed.model) < 0.5 * shift(plain.model)
    # the corrected biases are the INT32 ones of the QDQ graph
    names = {t.name for t in fixed.model.graph.initializer}
    assert any("b1" in n for n in names)


def test_bias_correction_needs_static_qdq():
    with pytest.raises(UsageError, match="static QDQ"):
        QuantConfig(mode="dynamic", bias_correction=True)
    with pytest.raises(UsageError, match="static QDQ"):
        QuantConfig(mode="static", format="qoperator", bias_correction=True)


def test_grouped_conv_is_left_alone():
    from onnxopt.quantize.bias_correction import correct_biases

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="dw", group=4, pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(4, np.float32), "b")]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = Dataset("<x>", arrays={"x": rng.standard_normal((16, 4, 6, 6)).astype(np.float32)})
    q = quantize(m, mode="static", calibration=x, allow_slower=True, timing=False, equalize="off", preprocess=False, allow_collapse=True)
    done, notes = correct_biases(q.model, m, {"x": np.ones(4)})
    assert done == 0 and any("grouped Conv" in n for n in notes)
