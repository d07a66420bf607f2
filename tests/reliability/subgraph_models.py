"""Small models with control flow (If / Loop / Scan), built in code, that trip naive passes.

Each body reads tensors of the enclosing graph by name (outer-scope reads), and each model
carries what a pass must get right around bodies:

- an initializer used *only* inside a body (dead-code removal must keep it),
- two identical initializers, one used only inside a body (deduplication must rename the
  use inside the body too),
- a Constant node inside a body, and a foldable chain of constants in the main graph whose
  result is read only inside a body,
- MatMul weights inside bodies (what quantize / prune would like to touch),
- a dead node inside a body.

All models: input ``x`` float32 [N, 8] (N symbolic), one float32 output; opset 17.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["if_model", "loop_model", "scan_model", "SUBGRAPH_MODELS"]

OPSET = 17
F = 8


def _w(rng, *shape, name):
    return numpy_helper.from_array(
        (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name
    )


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    m = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="reliability-subgraphs"
    )
    m.ir_version = 8
    return m


def if_model(seed: int = 0) -> onnx.ModelProto:
    """y = If(sum(x) > 0, then: relu(x @ w_then + c) , else: (x @ w_else) * k)."""
    rng = np.random.default_rng(seed)
    w_then = _w(rng, F, F, name="w_then")
    w_else = _w(rng, F, F, name="w_else")
    w_copy = numpy_helper.from_array(
        numpy_helper.to_array(w_then).copy(), "w_then_copy"
    )  # identical to w_then
    then_g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w_then"], ["t0"], name="then_mm"),
            helper.make_node(
                "Constant",
                [],
                ["t_c"],
                value=numpy_helper.from_array(np.full(F, 0.5, np.float32)),
                name="then_const",
            ),
            helper.make_node("Add", ["t0", "t_c"], ["t1"], name="then_add"),
            helper.make_node("Relu", ["t1"], ["then_out"], name="then_relu"),
            helper.make_node("Neg", ["t0"], ["t_dead"], name="then_dead"),
        ],
        "then_body",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, ["N", F])],
    )
    else_g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w_then_copy"], ["e0"], name="else_mm0"),
            helper.make_node("MatMul", ["e0", "w_else"], ["e1"], name="else_mm1"),
            helper.make_node("Mul", ["e1", "k_folded"], ["else_out"], name="else_mul"),
        ],
        "else_body",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, ["N", F])],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="positive"),
        # constants only: foldable; the result is read only inside the else body
        helper.make_node("Add", ["k_a", "k_b"], ["k_folded"], name="fold_me"),
        helper.make_node(
            "If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="branch"
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "if_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", F])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", F])],
        [
            w_then,
            w_else,
            w_copy,
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array(0.75, np.float32), "k_a"),
            numpy_helper.from_array(np.array(0.5, np.float32), "k_b"),
        ],
    )
    return _model(graph)


def loop_model(seed: int = 0, trips: int = 3) -> onnx.ModelProto:
    """v_{i+1} = tanh(v_i @ w_loop + b); y = v_T, plus the scan output of every step summed."""
    rng = np.random.default_rng(seed)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="loop_cond"),
            helper.make_node("MatMul", ["v_in", "w_loop"], ["l0"], name="loop_mm"),
            helper.make_node("Add", ["l0", "b_loop"], ["l1"], name="loop_add"),
            helper.make_node("Tanh", ["l1"], ["v_out"], name="loop_tanh"),
            helper.make_node(
                "Constant",
                [],
                ["l_scale"],
                value=numpy_helper.from_array(np.array(2.0, np.float32)),
                name="loop_const",
            ),
            helper.make_node("Mul", ["v_out", "l_scale"], ["scan_out"], name="loop_scale"),
            helper.make_node("Sigmoid", ["l0"], ["l_dead"], name="loop_dead"),
        ],
        "loop_body",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["N", F]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["N", F]),
            helper.make_tensor_value_info("scan_out", TensorProto.FLOAT, ["N", F]),
        ],
    )
    nodes = [
        helper.make_node(
            "Loop", ["trips", "true", "x"], ["v_final", "scans"], body=body, name="loop"
        ),
        helper.make_node(
            "ReduceSum", ["scans", "axis0"], ["scan_sum"], keepdims=0, name="sum_steps"
        ),
        helper.make_node("Add", ["v_final", "scan_sum"], ["y"], name="combine"),
    ]
    graph = helper.make_graph(
        nodes,
        "loop_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", F])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", F])],
        [
            _w(rng, F, F, name="w_loop"),
            numpy_helper.from_array((rng.standard_normal(F) * 0.1).astype(np.float32), "b_loop"),
            numpy_helper.from_array(np.array(trips, np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "true"),
            numpy_helper.from_array(np.array([0], np.int64), "axis0"),
            numpy_helper.from_array(np.zeros((2, 2), np.float32), "unused_init"),
        ],
    )
    return _model(graph)


def scan_model(seed: int = 0) -> onnx.ModelProto:
    """Scan over the rows of x [N, 8]: s_{t+1} = s_t + relu(x_t @ w_scan); y = s_N + scan out."""
    rng = np.random.default_rng(seed)
    body = helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["x_t", "ax0"], ["x_row"], name="scan_unsq"),
            helper.make_node("MatMul", ["x_row", "w_scan"], ["r0"], name="scan_mm"),
            helper.make_node("Relu", ["r0"], ["r1"], name="scan_relu"),
            helper.make_node("Squeeze", ["r1", "ax0"], ["r2"], name="scan_sq"),
            helper.make_node("Add", ["s_in", "r2"], ["s_out"], name="scan_acc"),
            helper.make_node("Identity", ["r2"], ["step_out"], name="scan_step"),
        ],
        "scan_body",
        [
            helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [F]),
            helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [F]),
        ],
        [
            helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [F]),
            helper.make_tensor_value_info("step_out", TensorProto.FLOAT, [F]),
        ],
    )
    nodes = [
        helper.make_node(
            "Scan", ["s0", "x"], ["s_final", "steps"], body=body, num_scan_inputs=1, name="scan"
        ),
        helper.make_node("Add", ["steps", "s_final"], ["y"], name="combine"),
    ]
    graph = helper.make_graph(
        nodes,
        "scan_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", F])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", F])],
        [
            _w(rng, F, F, name="w_scan"),
            numpy_helper.from_array(np.zeros(F, np.float32), "s0"),
            numpy_helper.from_array(np.array([0], np.int64), "ax0"),
        ],
    )
    return _model(graph)


SUBGRAPH_MODELS = {"if": if_model, "loop": loop_model, "scan": scan_model}
