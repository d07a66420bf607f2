"""Tiny models for the bench tests (built in code, seeded, checked)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["mlp", "fixed_batch_mlp", "two_input"]


def mlp(
    seed: int = 0, batch="N", width: int = 16, classes: int = 4, name: str = "x"
) -> onnx.ModelProto:
    """``x float32[batch, width] -> MatMul -> Relu -> MatMul -> logits float32[batch, classes]``."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((width, classes)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", [name, "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["logits"]),
    ]
    g = helper.make_graph(
        nodes,
        f"mlp{seed}",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        [w1, w2],
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxopt-tests"
    )
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def fixed_batch_mlp(batch: int = 1, seed: int = 0) -> onnx.ModelProto:
    return mlp(seed, batch=batch)


def two_input(seed: int = 0) -> onnx.ModelProto:
    """``a float32[N, 8] + b float32[N, 8] -> y``: two inputs sharing the batch axis."""
    g = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "two_input",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 8]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m
