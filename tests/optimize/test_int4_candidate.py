"""The ``int4`` candidate of ``optimize``: built for MatMul-heavy models, refused (with the
reason) for the others."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.data import Dataset
from onnxopt.metrics import Budget, Evaluator
from onnxopt.optimize.candidates import BuildEnv, matmul_weight_share, produce_int4
from onnxopt.optimize.plan import Int4Config
from tests.quantize.quant_models import mlp

pytest.importorskip("onnx_ir", reason="ORT's MatMulNBitsQuantizer imports onnx_ir (the int4 extra)")


def matmul_stack(layers: int = 4, width: int = 64, seed: int = 0) -> onnx.ModelProto:
    """x[N,64] -> (MatMul -> Relu) x layers: every weight is a MatMul's."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        out = "y" if i == layers - 1 else f"r{i}"
        nodes.append(helper.make_node("Relu" if i < layers - 1 else "Identity", [f"h{i}"], [out], name=f"act{i}"))
        prev = out
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _env(model, metric="cosine"):
    x = np.random.default_rng(1).standard_normal((32, model.graph.input[0].type.tensor_type.shape.dim[1].dim_value)).astype(np.float32)
    ds = Dataset("<x>", arrays={"x": x})
    return BuildEnv("cpu", "cpu", ds, Evaluator(model, ds, metric), Budget(5.0, metric))


def test_int4_candidate_for_a_matmul_heavy_model():
    m = matmul_stack()
    assert matmul_weight_share(m) == (4, 1.0)
    (c,) = produce_int4(m, _env(m), Int4Config(block_size=32))
    assert c.refused is None, c.refused
    assert [n.op_type for n in c.model.graph.node].count("MatMulNBits") == 4
    assert c.source == "onnxopt.quantize"


def test_int4_candidate_refused_for_a_small_mlp():
    m = mlp()
    (c,) = produce_int4(m, _env(m), Int4Config())
    assert c.model is None and c.refused.startswith("not MatMul-heavy: 2 MatMul/Gemm")
