"""Pre-processing: Constant / ConstantOfShape weights, opset upgrade, Gemm -> MatMul."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxopt.quantize.config import QuantConfig
from onnxopt.quantize.ort_backend import quantize_with_ort, touched_nodes
from onnxopt.quantize.preprocess import (
    gemm_to_matmul,
    materialize_weights,
    name_nodes,
    prepare,
)
from onnxopt.runtime import create_session
from onnxopt.simplify.opset import upgrade_opset
from onnxopt.verify import check_model
from tests.quantize.quant_models import constant_weight_mlp, conv_net, data_for, mlp


def _run(model, feed):
    return create_session(model).run(None, feed)


def test_ort_alone_leaves_constant_weights_in_float_and_prepare_fixes_it(tmp_path):
    m = constant_weight_mlp()
    # the claim: ORT's dynamic quantizer skips weights that are not initializers
    from onnxruntime.quantization import quantize_dynamic

    onnx.save(m, str(tmp_path / "m.onnx"))
    quantize_dynamic(str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"))
    raw = onnx.load(str(tmp_path / "q.onnx"))
    assert [n.name for n in raw.graph.node if n.op_type == "MatMul"] == ["mm1", "mm2"]  # both left in float
    assert "MatMulInteger" not in [n.op_type for n in raw.graph.node]

    prep = prepare(m, use_ort_preprocess=False)
    ops = [n.op_type for n in prep.model.graph.node]
    assert "Constant" not in ops and "ConstantOfShape" not in ops
    assert {"w1", "w2"} <= {t.name for t in prep.model.graph.initializer}
    feed = {"x": data_for(m, 8)["x"]}
    np.testing.assert_allclose(_run(prep.model, feed)[0], _run(m, feed)[0], rtol=1e-6, atol=1e-6)
    q = quantize_with_ort(prep.model, QuantConfig(mode="dynamic"))
    assert touched_nodes(prep.model, q, ["mm1", "mm2"]) == ["mm1", "mm2"]
    check_model(q)


def test_materialize_counts_and_keeps_shared_producers():
    m = constant_weight_mlp()
    n, notes = materialize_weights(m)
    assert n == 2 and not notes
    onnx.checker.check_model(m, full_check=True)


def test_upgrade_opset_keeps_outputs():
    m = conv_net(opset=11)
    up, note = upgrade_opset(m, 13)
    assert note == "opset 11 -> 13"
    assert next(o.version for o in up.opset_import if o.domain in ("", "ai.onnx")) == 13
    feed = {"x": data_for(m, 2)["x"]}
    np.testing.assert_allclose(_run(up, feed)[0], _run(m, feed)[0], rtol=1e-6)
    same, note = upgrade_opset(conv_net(), 13)
    assert note is None


@pytest.mark.parametrize("trans_b, alpha, beta", [(1, 1.0, 1.0), (0, 0.5, 2.0), (1, 2.0, 0.0)])
def test_gemm_to_matmul_is_exact(trans_b, alpha, beta):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 16) if trans_b else (16, 8)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="gemm", transB=trans_b, alpha=alpha, beta=beta)],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "c")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    work = onnx.ModelProto()
    work.CopyFrom(m)
    assert gemm_to_matmul(work) == ["gemm"]
    assert [n.op_type for n in work.graph.node] == ["MatMul", "Add"]
    assert work.graph.node[0].name == "gemm"
    check_model(work)
    feed = {"x": rng.standard_normal((5, 16)).astype(np.float32)}
    np.testing.assert_allclose(_run(work, feed)[0], _run(m, feed)[0], rtol=1e-5, atol=1e-5)


def test_name_nodes_and_prepare_with_ort_preprocess():
    m = mlp()
    for n in m.graph.node:
        n.name = ""
    assert name_nodes(m) == 3
    assert len({n.name for n in m.graph.node}) == 3
    seen = []
    prep = prepare(m, check=lambda cand, label, limit: seen.append(label) or None)
    assert seen == ["ORT quant_pre_process result"]
    assert any("quant_pre_process" in n for n in prep.notes)
    assert all(n.name for n in prep.model.graph.node)
