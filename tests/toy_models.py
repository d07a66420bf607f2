"""Tiny models built in code for the foundation tests (core, io, verify, simplify, CLI).

Each builder returns a checked ``onnx.ModelProto`` with seeded weights.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["ROOT", "MODELS", "tiny_cnn", "messy_mlp", "if_model", "two_outputs", "save_external", "light_model"]

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
OPSET = [helper.make_opsetid("", 17)]


def _w(rng, *shape, scale=0.5) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def tiny_cnn(seed: int = 0, classes: int = 5) -> onnx.ModelProto:
    """x float32[N,3,8,8] -> Conv(4, 3x3, pad 1) -> BatchNormalization -> Relu ->
    GlobalAveragePool -> Flatten -> Gemm -> logits float32[N,classes]."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_w(rng, 4, 3, 3, 3), "conv.w"),
        numpy_helper.from_array(_w(rng, 4), "conv.b"),
        numpy_helper.from_array(np.abs(_w(rng, 4)) + 0.5, "bn.scale"),
        numpy_helper.from_array(_w(rng, 4), "bn.bias"),
        numpy_helper.from_array(_w(rng, 4), "bn.mean"),
        numpy_helper.from_array(np.abs(_w(rng, 4)) + 0.5, "bn.var"),
        numpy_helper.from_array(_w(rng, classes, 4), "fc.w"),
        numpy_helper.from_array(_w(rng, classes), "fc.b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    m = helper.make_model(g, opset_imports=OPSET, producer_name="onnxopt-tests")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def messy_mlp(seed: int = 0) -> onnx.ModelProto:
    """x float32[N,4] -> y float32[N,3], with everything simplify removes: Constant nodes,
    a foldable Add of two constants, a dead node, a duplicate and an unused initializer.

    y = Relu(x @ W1 + (b1 + b2)) @ W2 + b_dup, where b_dup duplicates b_keep.
    """
    rng = np.random.default_rng(seed)
    b = _w(rng, 3)
    inits = [
        numpy_helper.from_array(_w(rng, 4, 8), "W1"),
        numpy_helper.from_array(_w(rng, 8, 3), "W2"),
        numpy_helper.from_array(b, "b_keep"),
        numpy_helper.from_array(b.copy(), "b_dup"),
        numpy_helper.from_array(_w(rng, 16), "unused_junk"),
    ]
    nodes = [
        helper.make_node("Constant", [], ["b1"], name="const_b1", value=numpy_helper.from_array(_w(rng, 8), "b1v")),
        helper.make_node("Constant", [], ["b2"], name="const_b2", value=numpy_helper.from_array(_w(rng, 8), "b2v")),
        helper.make_node("Add", ["b1", "b2"], ["bias"], name="fold_me"),
        helper.make_node("MatMul", ["x", "W1"], ["h0"], name="mm1"),
        helper.make_node("Add", ["h0", "bias"], ["h1"], name="add1"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("Mul", ["h2", "h2"], ["dead"], name="dead_node"),
        helper.make_node("MatMul", ["h2", "W2"], ["h3"], name="mm2"),
        helper.make_node("Add", ["h3", "b_keep"], ["h4"], name="add2"),
        helper.make_node("Add", ["h4", "b_dup"], ["y"], name="add3"),
    ]
    g = helper.make_graph(
        nodes,
        "messy_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    m = helper.make_model(g, opset_imports=OPSET, producer_name="onnxopt-tests")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def if_model(seed: int = 0) -> onnx.ModelProto:
    """x float32[2,4], flag bool[] -> y float32[2,4]: If(flag) then x * W else x + W, where
    both branches read the outer initializer W (an outer-scope read)."""
    rng = np.random.default_rng(seed)
    out_vi = helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, [2, 4])
    then_g = helper.make_graph([helper.make_node("Mul", ["x", "W"], ["branch_out"])], "then", [], [out_vi])
    else_g = helper.make_graph([helper.make_node("Add", ["x", "W"], ["branch_out"])], "else", [], [out_vi])
    nodes = [helper.make_node("If", ["flag"], ["y"], name="choose", then_branch=then_g, else_branch=else_g)]
    g = helper.make_graph(
        nodes,
        "if_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(_w(rng, 2, 4), "W")],
    )
    m = helper.make_model(g, opset_imports=OPSET, producer_name="onnxopt-tests")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def two_outputs(seed: int = 0) -> onnx.ModelProto:
    """x float32[N,4] -> (a = x @ W float32[N,2], b = Relu(x) float32[N,4])."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("Relu", ["x"], ["b"])]
    g = helper.make_graph(
        nodes,
        "two_outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2]), helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(_w(rng, 4, 2), "W")],
    )
    m = helper.make_model(g, opset_imports=OPSET)
    m.ir_version = 8
    return m


def save_external(model: onnx.ModelProto, path: Path, location: str = "weights.data") -> Path:
    """Save with every initializer in one external-data file next to the model (``model``
    itself is left as it was: onnx.save would move its tensors out in place)."""
    model = copy.deepcopy(model)
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=0)
    return path


def light_model(name: str) -> Path:
    """Path of an architecture model shipped in the onnx wheel (``light_<name>.onnx``)."""
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
