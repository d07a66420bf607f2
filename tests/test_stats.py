"""onnxopt.stats: parameter counts, op histograms and FLOPs by their formulas."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxopt.graph import iter_graphs
from onnxopt.stats import count_params, flops_by_node, model_stats
from tests.toy_models import if_model, messy_mlp, tiny_cnn


def test_params_include_constants_and_subgraphs():
    total, per = count_params(messy_mlp())
    # W1 4x8, W2 8x3, b_keep 3, b_dup 3, unused 16, two Constant nodes of 8
    assert total == 32 + 24 + 3 + 3 + 16 + 8 + 8
    assert per == {"float32": {"params": total, "bytes": 4 * total}}
    m = if_model()
    then = m.graph.node[0].attribute[0].g
    then.initializer.append(numpy_helper.from_array(np.zeros(5, np.int64), "inner"))
    total, per = count_params(m)
    assert total == 8 + 5 and per["int64"] == {"params": 5, "bytes": 40}
    assert len(list(iter_graphs(m.graph))) == 3


def test_model_stats_histogram():
    st = model_stats(tiny_cnn(), flops=True)
    assert st["nodes"] == 6 and st["initializers"] == 8
    assert st["ops"] == {"BatchNormalization": 1, "Conv": 1, "Flatten": 1, "Gemm": 1, "GlobalAveragePool": 1, "Relu": 1}
    assert st["bytes"] == 4 * st["params"]
    # Conv: 2 * N * Cout * H * W * Cin * k * k with N = 1 (symbolic); Gemm: 2 * N * out * in
    assert st["flops"] == 2 * 4 * 8 * 8 * 3 * 3 * 3 + 2 * 5 * 4


def test_flops_grouped_conv_matmul_and_conv_transpose():
    inits = [
        numpy_helper.from_array(np.zeros((8, 2, 3, 3), np.float32), "wg"),  # 8 out, groups 2 -> 2 in per group
        numpy_helper.from_array(np.zeros((16, 10), np.float32), "wm"),
        numpy_helper.from_array(np.zeros((8, 3, 2, 2), np.float32), "wt"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wg"], ["c"], name="gconv", group=2, strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c", "wt"], ["t"], name="deconv", strides=[2, 2]),
        helper.make_node("MatMul", ["s", "wm"], ["m"], name="mm"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8, 8]), helper.make_tensor_value_info("s", TensorProto.FLOAT, [3, 5, 16])],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 3, 8, 8]), helper.make_tensor_value_info("m", TensorProto.FLOAT, [3, 5, 10])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)
    f = flops_by_node(m)
    assert f["gconv"] == 2 * (2 * 8 * 4 * 4) * (2 * 3 * 3)  # output [2,8,4,4], 2 in-channels per group
    assert f["deconv"] == 2 * (2 * 8 * 4 * 4) * (3 * 2 * 2)  # input [2,8,4,4], weight [8,3,2,2]
    assert f["mm"] == 2 * 3 * 5 * 16 * 10


def _chain(width: int, depth: int) -> onnx.ModelProto:
    """x -> Relu -> ... (depth nodes) plus one skip from x to the end: x lives throughout."""
    nodes, prev = [], "x"
    for i in range(depth):
        nodes.append(helper.make_node("Relu", [prev], [f"r{i}"], name=f"relu{i}"))
        prev = f"r{i}"
    nodes.append(helper.make_node("Add", [prev, "x"], ["y"], name="skip"))
    io = [helper.make_tensor_value_info(k, TensorProto.FLOAT, ["N", width]) for k in "xy"]
    return helper.make_model(helper.make_graph(nodes, "chain", io[:1], io[1:]), opset_imports=[helper.make_opsetid("", 17)])


def test_live_bytes_holds_each_tensor_from_its_node_to_its_last_reader():
    from onnxopt.stats import live_bytes

    feed = {"x": np.zeros((4, 100), np.float32)}
    # per sample 400 bytes a tensor; a chain frees each Relu output at its reader: two alive at once
    assert live_bytes(_chain(100, 6), feed) == 2 * 400
    m = _chain(100, 3)
    m.graph.output.append(helper.make_tensor_value_info("r0", TensorProto.FLOAT, ["N", 100]))
    assert live_bytes(m, feed) == 3 * 400  # a graph output is held to the end


def test_live_bytes_holds_a_tensor_an_if_body_reads_until_the_if():
    from onnxopt.stats import live_bytes

    vi = [helper.make_tensor_value_info(k, TensorProto.FLOAT, ["N", 100]) for k in ("x", "out", "y")]
    body = helper.make_graph([helper.make_node("Add", ["r0", "r2"], ["out"])], "body", [], [vi[1]])
    nodes = [helper.make_node("Relu", [a], [b]) for a, b in (("x", "r0"), ("r0", "r1"), ("r1", "r2"))]
    nodes.append(helper.make_node("If", ["flag"], ["y"], then_branch=body, else_branch=body))
    flag = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])
    m = helper.make_model(helper.make_graph(nodes, "g", [vi[0], flag], [vi[2]]), opset_imports=[helper.make_opsetid("", 17)])
    # r0 lives until the If (its body reads it): r0, r1 and r2 at once
    assert live_bytes(m, {"x": np.zeros((2, 100), np.float32), "flag": np.array(True)}) == 3 * 400
