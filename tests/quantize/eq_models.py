"""Tiny models for the equalization passes (each under ~10 nodes)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inits, x_shape, y_shapes: dict, opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in y_shapes.items()],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def outlier_block(c: int = 16, seed: int = 0) -> onnx.ModelProto:
    """x[B,4,c] -> LayerNorm (gamma 40 on channel 3: an outlier channel) -> MatMul q / MatMul k,
    the LN output also feeding a residual Add; q -> Add bias -> MatMul o (a linear fold site);
    k -> Sigmoid -> MatMul f (a site skipped: a Sigmoid has no weight to fold into)."""
    rng = np.random.default_rng(seed)
    gamma = np.ones(c, np.float32)
    gamma[3] = 40.0
    inits = {
        "gamma": gamma,
        "beta": rng.standard_normal(c).astype(np.float32) * 0.1,
        "wq": rng.standard_normal((c, c)).astype(np.float32) * 0.2,
        "wk": rng.standard_normal((c, c)).astype(np.float32) * 0.2,
        "bq": rng.standard_normal(c).astype(np.float32),
        "wo": rng.standard_normal((c, c)).astype(np.float32) * 0.2,
        "wf": rng.standard_normal((c, c)).astype(np.float32) * 0.2,
    }
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="ln", axis=-1),
        helper.make_node("MatMul", ["ln", "wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["ln", "wk"], ["k"], name="k"),
        helper.make_node("Add", ["q", "bq"], ["qb"], name="q_bias"),
        helper.make_node("MatMul", ["qb", "wo"], ["o"], name="o"),
        helper.make_node("Sigmoid", ["k"], ["g"], name="act"),
        helper.make_node("MatMul", ["g", "wf"], ["f"], name="f"),
        helper.make_node("Add", ["ln", "o"], ["r"], name="residual"),
        helper.make_node("Add", ["r", "f"], ["y"], name="out"),
    ]
    return _model(nodes, inits, ["B", 4, c], {"y": ["B", 4, c]})


def conv_pair(seed: int = 1, *, pads: int = 0) -> onnx.ModelProto:
    """x[N,2,6,6] -> Conv(8, one output channel 30x larger) -> Relu -> Conv(4) -> Sigmoid ->
    Conv(4) -> y: one equalizable pair, one site skipped (Sigmoid), and a Conv whose weight is
    shared with a second Conv (skipped: shared weights)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 2, 3, 3)).astype(np.float32) * 0.3
    w1[5] *= 30.0
    inits = {
        "w1": w1,
        "b1": np.abs(rng.standard_normal(8)).astype(np.float32) + 3.0,
        "w2": rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3,
        "b2": rng.standard_normal(4).astype(np.float32) * 0.1,
        "w3": rng.standard_normal((4, 4, 1, 1)).astype(np.float32) * 0.3,
    }
    p = [pads] * 4
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=p),
        helper.make_node("Sigmoid", ["c2"], ["s2"], name="sig"),
        helper.make_node("Conv", ["s2", "w3"], ["c3"], name="conv3"),
        helper.make_node("Conv", ["c3", "w3"], ["y"], name="conv4"),
    ]
    return _model(nodes, inits, ["N", 2, 6, 6], {"y": ["N", 4, "H", "W"]})


def gemm_chain(seed: int = 2) -> onnx.ModelProto:
    """x[N,8] -> Gemm(transB, bias 5 + ...) -> LeakyRelu -> Gemm -> y: pre-activations stay
    well above 0, so bias absorption applies."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": rng.standard_normal((16, 8)).astype(np.float32) * 0.1,
        "b1": (5.0 + rng.random(16)).astype(np.float32),
        "w2": rng.standard_normal((16, 4)).astype(np.float32),
        "b2": np.zeros(4, np.float32),
    }
    inits["w1"][2] *= 20.0
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("LeakyRelu", ["h"], ["a"], name="act", alpha=0.1),
        helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], name="fc2"),
    ]
    return _model(nodes, inits, ["N", 8], {"y": ["N", 4]})


def ln_matmul(c: int = 32, outlier: float = 300.0, seed: int = 3) -> onnx.ModelProto:
    """x[B,8,c] -> LayerNorm (gamma ``outlier`` on channel 3) -> MatMul -> y, the weight's row 3
    small: per-tensor INT8 of the LayerNorm output rounds every other channel to a few steps,
    so plain static quantization loses the output; SmoothQuant moves the outlier into W."""
    rng = np.random.default_rng(seed)
    gamma = np.ones(c, np.float32)
    gamma[3] = outlier
    w = rng.standard_normal((c, c)).astype(np.float32) * 0.3
    w[3] /= outlier
    inits = {"gamma": gamma, "beta": np.zeros(c, np.float32), "w": w}
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="ln", axis=-1),
        helper.make_node("MatMul", ["ln", "w"], ["y"], name="mm"),
    ]
    return _model(nodes, inits, ["B", 8, c], {"y": ["B", 8, c]})


def ln_reshape_gemm(c: int = 16, seed: int = 4) -> onnx.ModelProto:
    """x[2,4,c] -> LayerNorm (outlier channel) -> Reshape [-1, c] -> Gemm q, Gemm k (as
    exporters feed a Gemm), the LayerNorm output also read by a residual Add."""
    rng = np.random.default_rng(seed)
    gamma = np.ones(c, np.float32)
    gamma[5] = 50.0
    inits = {
        "gamma": gamma,
        "beta": np.zeros(c, np.float32),
        "flat": np.array([-1, c], np.int64),
        "back": np.array([2, 4, c], np.int64),
        "wq": rng.standard_normal((c, c)).astype(np.float32) * 0.2,
        "wk": rng.standard_normal((c, c)).astype(np.float32) * 0.2,
        "bq": rng.standard_normal(c).astype(np.float32) * 0.1,
    }
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="ln", axis=-1),
        helper.make_node("Reshape", ["ln", "flat"], ["ln2d"], name="flatten"),
        helper.make_node("Gemm", ["ln2d", "wq", "bq"], ["q"], name="q"),
        helper.make_node("Gemm", ["ln2d", "wk"], ["k"], name="k"),
        helper.make_node("Add", ["q", "k"], ["qk"], name="sum"),
        helper.make_node("Reshape", ["qk", "back"], ["qk3"], name="unflatten"),
        helper.make_node("Add", ["qk3", "ln"], ["y"], name="residual"),
    ]
    return _model(nodes, inits, [2, 4, c], {"y": [2, 4, c]})
