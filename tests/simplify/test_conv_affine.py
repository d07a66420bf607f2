"""simplify.conv_affine: scales and shifts by constants after a Conv folded into it."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.core.passes import Context
from onnxopt.core.registry import make_pass
from onnxopt.data import Dataset
from onnxopt.runtime import create_session
from onnxopt.simplify.conv_affine import fold_conv_affines
from onnxopt.verify import check_model

RNG = np.random.default_rng(3)
C = 4


def _t(name, a):
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def _conv(after: list[tuple[str, np.ndarray, bool]], bias=True, opset=13, readers=1):
    """x -> Conv(3 -> C, 3x3) -> each (op, constant, constant first) in turn -> Relu -> y;
    ``readers=2`` adds a second graph output reading the Conv's output."""
    inits = [_t("w", RNG.standard_normal((C, 3, 3, 3)))] + ([_t("b", RNG.standard_normal(C))] if bias else [])
    nodes = [helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["c0"], name="conv", pads=[1, 1, 1, 1])]
    for i, (op, const, first) in enumerate(after):
        inits.append(_t(f"k{i}", const))
        ins = [f"k{i}", f"c{i}"] if first else [f"c{i}", f"k{i}"]
        nodes.append(helper.make_node(op, ins, [f"c{i + 1}"], name=f"{op.lower()}{i}"))
    nodes.append(helper.make_node("Relu", [f"c{len(after)}"], ["y"], name="relu"))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", C, 8, 8])]
    if readers == 2:
        outs.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, ["N", C, 8, 8]))
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])], outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _run(m, x):
    return create_session(m).run(None, {"x": x})[0]


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


X = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)


def test_a_scalar_scale_then_a_per_channel_shift_fold_into_the_conv():
    """paddle2onnx's PP-LCNetV3 writes its learnable affine as Mul and Add by shape-[1]
    constants: both go into the Conv's weight and bias."""
    m = _conv([("Mul", np.array([1.7]), False), ("Add", RNG.standard_normal((C, 1, 1)), True)])
    out, n, notes = fold_conv_affines(m)
    assert n == 2 and notes == []
    assert [node.op_type for node in out.graph.node] == ["Conv", "Relu"]
    assert [node.op_type for node in m.graph.node] == ["Conv", "Mul", "Add", "Relu"]  # the input is untouched
    check_model(out)
    assert _rel(_run(out, X), _run(m, X)) < 1e-6


def test_a_division_and_a_subtraction_fold_into_a_conv_without_bias():
    m = _conv([("Div", RNG.uniform(0.5, 2, (1, C, 1, 1)), False), ("Sub", np.array(0.3), False)], bias=False)
    out, n, _ = fold_conv_affines(m)
    conv = out.graph.node[0]
    assert n == 2 and conv.op_type == "Conv" and len(conv.input) == 3 and conv.output[0] == "c2"
    check_model(out)
    assert _rel(_run(out, X), _run(m, X)) < 1e-6


@pytest.mark.parametrize(
    "after, readers, why",
    [
        ([("Mul", RNG.standard_normal((1, 1, 1, 8)), False)], 1, "not one value per output channel"),
        ([("Sub", np.array([1.0]), True)], 1, "the constant is on the left"),
        ([("Mul", np.array([2.0]), False)], 2, None),  # the Conv's output is also a graph output
    ],
)
def test_what_does_not_fold_is_left_alone_and_says_why(after, readers, why):
    m = _conv(after, readers=readers)
    out, n, notes = fold_conv_affines(m)
    assert n == 0 and out is m
    assert (why is None and notes == []) or (len(notes) == 1 and why in notes[0])


def test_the_pass_is_registered_and_verified():
    m = _conv([("Mul", np.array([0.5]), False), ("Add", np.array([0.1]), False)])
    p = make_pass("fold-conv-affine")
    res = p(m, Context(data=Dataset("<mem>", arrays={"x": X})))
    assert res.modified and res.report.counts == {"ops_folded": 2}
    assert len(res.model.graph.node) == 2 and not p(res.model, Context(data=Dataset("<mem>", arrays={"x": X}))).modified
