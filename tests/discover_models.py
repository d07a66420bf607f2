"""Tiny models whose inputs only run when discovered: a detector needing H/W divisible by
32, a Gather on a 5-row table, a scalar sample rate an If branches on, a mask input."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["strided_detector", "gather_ids", "scalar_rate", "masked_mean", "runs_on_nothing", "position_encoder"]

OPSET = [helper.make_opsetid("", 17)]


def _model(nodes, name, inputs, outputs, inits=()) -> onnx.ModelProto:
    m = helper.make_model(helper.make_graph(nodes, name, inputs, outputs, list(inits)), opset_imports=OPSET, producer_name="onnxopt-tests")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def strided_detector(seed: int = 0) -> onnx.ModelProto:
    """images[N,3,H,W] -> five stride-2 1x1 Convs (stride 32) -> Resize x32 -> Concat with
    the input on channels -> Reshape [N, 6, -1]: runs only when H and W divide by 32."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((3, 3, 1, 1)) * 0.5).astype(np.float32), f"w{i}") for i in range(5)]
    inits += [numpy_helper.from_array(np.array([1, 1, 32, 32], np.float32), "scales"), numpy_helper.from_array(np.array([0, 6, -1], np.int64), "shape")]
    nodes, prev = [], "images"
    for i in range(5):
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], strides=[2, 2]))
        prev = f"c{i}"
    nodes += [
        helper.make_node("Resize", [prev, "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Concat", ["up", "images"], ["cat"], axis=1),
        helper.make_node("Reshape", ["cat", "shape"], ["out"]),
    ]
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 6, "cells"])
    return _model(nodes, "strided_detector", [x], [y], inits)


def gather_ids(rows: int = 5) -> onnx.ModelProto:
    """ids int64[batch, seq] -> Gather from a [rows, 4] table -> ReduceMean over seq."""
    table = numpy_helper.from_array(np.arange(rows * 4, dtype=np.float32).reshape(rows, 4), "table")
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"]),
        helper.make_node("ReduceMean", ["emb"], ["y"], axes=[1], keepdims=0),
    ]
    x = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    return _model(nodes, "gather_ids", [x], [y], [table])


def scalar_rate(seed: int = 0) -> onnx.ModelProto:
    """audio[batch, 64], sr int64 scalar: h = Relu(audio @ W1) @ W2; If(sr == 16000) h * 2, else
    a Reshape that fails (runs only with sr = 16000)."""
    rng = np.random.default_rng(seed)
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    w1 = numpy_helper.from_array((rng.standard_normal((64, 64)) * 0.2).astype(np.float32), "W1")
    w2 = numpy_helper.from_array((rng.standard_normal((64, 8)) * 0.2).astype(np.float32), "W2")
    bad = numpy_helper.from_array(np.array([7, -1], np.int64), "bad")
    then = helper.make_graph(
        [helper.make_node("Mul", ["h", "two"], ["t_out"])], "then", [], [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, ["batch", 8])]
    )
    other = helper.make_graph(
        [helper.make_node("Reshape", ["h", "bad"], ["e_out"])], "else", [], [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, ["batch", 8])]
    )
    nodes = [
        helper.make_node("MatMul", ["audio", "W1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "W2"], ["h"]),
        helper.make_node("Constant", [], ["rate"], value=numpy_helper.from_array(np.array(16000, np.int64))),
        helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
        helper.make_node("If", ["is16k"], ["y"], then_branch=then, else_branch=other),
    ]
    inputs = [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", 64]), helper.make_tensor_value_info("sr", TensorProto.INT64, [])]
    return _model(nodes, "scalar_rate", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], [two, bad, w1, w2])


def masked_mean() -> onnx.ModelProto:
    """x[batch, seq, 4], attention_mask int64[batch, seq] -> Cast -> Mul -> ReduceSum."""
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]),
        helper.make_node("Mul", ["x", "m3"], ["xm"]),
        helper.make_node("ReduceSum", ["xm", "axes"], ["y"], keepdims=0),
    ]
    inits = [numpy_helper.from_array(np.array([2], np.int64), "axis"), numpy_helper.from_array(np.array([1], np.int64), "axes")]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
    ]
    return _model(nodes, "masked_mean", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)


def runs_on_nothing() -> onnx.ModelProto:
    """x[batch, n] -> Reshape [3, 2000]: needs n = 6000 / batch, which nothing probes."""
    shape = numpy_helper.from_array(np.array([3, 2000], np.int64), "shape")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])
    return _model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "runs_on_nothing",
        [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2000])],
        [shape],
    )


def position_encoder(max_len: int = 16, vocab: int = 50) -> onnx.ModelProto:
    """input_ids[batch, seq] -> word embedding + position embedding of the first seq rows of
    a [max_len, 4] table (positions sliced to the sequence length): seq <= max_len."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((vocab, 4)).astype(np.float32), "words"),
        numpy_helper.from_array(rng.standard_normal((max_len, 4)).astype(np.float32), "positions"),
        numpy_helper.from_array(np.arange(max_len, dtype=np.int64)[None, :], "position_ids"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
    ]
    nodes = [
        helper.make_node("Gather", ["words", "input_ids"], ["w"]),
        helper.make_node("Shape", ["input_ids"], ["shape"]),
        helper.make_node("Slice", ["shape", "one", "two_ends"], ["seq"]),
        helper.make_node("Slice", ["position_ids", "zero", "seq", "one"], ["pos"]),
        helper.make_node("Gather", ["positions", "pos"], ["p"]),
        helper.make_node("Add", ["w", "p"], ["y"]),
    ]
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "two_ends"))
    x = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])
    return _model(nodes, "position_encoder", [x], [y], inits)
