"""The ``int4`` candidate of ``optimize``: built for MatMul-heavy models, refused (with the
reason) for the others."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.data import Dataset
from onnxopt.metrics import Budget, Evaluator
from onnxopt.optimize.candidates import BuildEnv, matmul_weight_share, produce_int4
from onnxopt.optimize.plan import Int4Config
from tests.optimize.opt_models import matmul_stack
from tests.quantize.quant_models import mlp

pytest.importorskip("onnx_ir", reason="ORT's MatMulNBitsQuantizer imports onnx_ir (the int4 extra)")


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
