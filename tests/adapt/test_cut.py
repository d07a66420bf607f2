"""Head detection, refusals, the cut and pooling on tiny graphs built in code."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.adapt.cut import add_pooling, cut_at, find_head, tensor_info
from onnxopt.errors import UnsupportedError, UsageError
from tests.adapt.adapt_models import conv_classifier


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "t", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _w(name, shape, seed=0, dtype=np.float32):
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(dtype), name)


def test_gemm_head_found():
    match = find_head(conv_classifier())
    assert (match.feature, match.op, match.removed_ops, match.softmax) == ("feat", "Gemm", ["Gemm"], False)


def test_softmax_after_the_gemm_is_part_of_the_head():
    match = find_head(conv_classifier(softmax=True))
    assert match.feature == "feat" and match.removed_ops == ["Gemm", "Softmax"] and match.softmax


def test_last_matmul_plus_bias_of_an_mlp():
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["mm"]),
        helper.make_node("Add", ["mm", "b2"], ["y"]),
    ]
    m = _model(nodes, [_f("x", ["N", 5])], [_f("y", ["N", 3])], [_w("w1", (5, 7)), _w("w2", (7, 3)), _w("b2", (3,))])
    match = find_head(m)
    assert match.feature == "r" and match.op == "MatMul" and match.removed_ops == ["MatMul", "Add"]


def test_quantized_head_is_followed_back_to_the_float_features(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(conv_classifier(), str(src))
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    q = onnx.load(str(dst))
    match = find_head(q)
    assert match.feature == "feat" and match.op == "MatMulInteger"
    assert "DynamicQuantizeLinear" in match.removed_ops
    cut, counts = cut_at(q, tensor_info(q, "feat"))
    ops = {n.op_type for n in cut.graph.node}
    assert "ConvInteger" in ops and "MatMulInteger" not in ops and counts["nodes_removed"] == len(match.removed_ops)


def test_qdq_head():
    nodes = [
        helper.make_node("Relu", ["x"], ["feat"]),
        helper.make_node("QuantizeLinear", ["feat", "s", "zp"], ["fq"]),
        helper.make_node("DequantizeLinear", ["fq", "s", "zp"], ["fdq"]),
        helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"]),
        helper.make_node("MatMul", ["fdq", "w"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "zp"),
        numpy_helper.from_array(np.ones((4, 3), np.int8), "wq"),
        numpy_helper.from_array(np.array(0.1, np.float32), "ws"),
    ]
    m = _model(nodes, [_f("x", ["N", 4])], [_f("y", ["N", 3])], inits)
    match = find_head(m)
    assert match.feature == "feat" and match.removed_ops == ["QuantizeLinear", "DequantizeLinear", "MatMul"]


def test_no_product_is_refused():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_f("x", ["N", 4])], [_f("y", ["N", 4])])
    with pytest.raises(UnsupportedError, match="no Gemm/MatMul head.*--features"):
        find_head(m)


def test_product_of_two_computed_tensors_is_refused():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Transpose", ["r"], ["t"]), helper.make_node("MatMul", ["r", "t"], ["y"])]
    m = _model(nodes, [_f("x", ["N", 4])], [_f("y", ["N", "N"])])
    with pytest.raises(UnsupportedError, match="no constant weights"):
        find_head(m)


def test_output_reading_another_input_is_refused():
    nodes = [helper.make_node("Gemm", ["x", "w"], ["g"], transB=1), helper.make_node("Add", ["g", "x2"], ["y"])]
    m = _model(nodes, [_f("x", ["N", 4]), _f("x2", ["N", 3])], [_f("y", ["N", 3])], [_w("w", (3, 4))])
    with pytest.raises(UnsupportedError, match="also reads 'x2'"):
        find_head(m)


def test_gemm_with_transposed_input_is_refused():
    m = _model([helper.make_node("Gemm", ["x", "w"], ["y"], transA=1)], [_f("x", [4, "N"])], [_f("y", ["N", 3])], [_w("w", (4, 3))])
    with pytest.raises(UnsupportedError, match="transA"):
        find_head(m)


def test_tensor_info_and_its_refusals():
    m = conv_classifier()
    info = tensor_info(m, "relu")
    assert info.elem_type == TensorProto.FLOAT and info.dims == ["N", 6, 4, 4]
    with pytest.raises(UsageError, match="no such tensor"):
        tensor_info(m, "nope")
    with pytest.raises(UsageError, match="initializer"):
        tensor_info(m, "fc.w")
    m.graph.node.insert(0, helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.ones(2, np.float32))))
    with pytest.raises(UsageError, match="constant"):
        tensor_info(m, "k")


def test_cut_removes_the_head_and_its_weights():
    m = conv_classifier()
    cut, counts = cut_at(m, tensor_info(m, "relu"))
    assert [o.name for o in cut.graph.output] == ["relu"]
    assert [n.op_type for n in cut.graph.node] == ["Conv", "Relu"]
    assert {t.name for t in cut.graph.initializer} == {"conv.w", "conv.b"}
    assert counts == {"nodes_removed": 3, "initializers_removed": 2, "value_info_removed": 0}
    assert len(m.graph.node) == 5  # the input is untouched


@pytest.mark.parametrize("pool, ops", [("mean", ["GlobalAveragePool", "Flatten"]), ("max", ["GlobalMaxPool", "Flatten"]), ("flatten", ["Flatten"])])
def test_pooling(pool, ops):
    m = conv_classifier()
    cut, _ = cut_at(m, tensor_info(m, "relu"))
    name = add_pooling(cut, "relu", 4, pool)
    assert [n.op_type for n in cut.graph.node[2:]] == ops and cut.graph.node[-1].output[0] == name
    assert add_pooling(cut, name, 2, pool) == name  # [N, C] needs nothing
    with pytest.raises(UsageError):
        add_pooling(cut, "relu", 4, "median")


def _shape_reading_head(decomposed_softmax: bool = False):
    """tf2onnx-style head: MatMul + bias, then a Reshape whose shape is rebuilt from
    Shape(x) (the head reads the input's shape, never its values); optionally the softmax
    as exporters decompose it, Exp(z - max) / ReduceSum(Exp(z - max))."""
    z = "z" if decomposed_softmax else "y"
    nodes = [
        helper.make_node("Relu", ["x"], ["feat"]),
        helper.make_node("MatMul", ["feat", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Gather", ["xs", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "k"], ["shp"], axis=0),
        helper.make_node("Reshape", ["logits", "shp"], [z]),
    ]
    if decomposed_softmax:
        nodes += [
            helper.make_node("ReduceMax", [z], ["mx"], axes=[1], keepdims=1),
            helper.make_node("Sub", [z, "mx"], ["zc"]),
            helper.make_node("Exp", ["zc"], ["e"]),
            helper.make_node("ReduceSum", ["e", "axes1"], ["se"], keepdims=1),
            helper.make_node("Div", ["e", "se"], ["y"]),
        ]
    inits = [
        _w("w", (5, 3)),
        _w("b", (3,), seed=1),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0], np.int64), "axes"),
        numpy_helper.from_array(np.array([1], np.int64), "axes1"),
        numpy_helper.from_array(np.array([3], np.int64), "k"),
    ]
    g = helper.make_graph(nodes, "t", [_f("x", ["N", 5])], [_f("y", ["N", 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("decomposed", [False, True])
def test_head_reading_only_the_input_shape_is_accepted(decomposed):
    m = _shape_reading_head(decomposed)
    match = find_head(m)
    assert match.feature == "feat" and match.op == "MatMul" and match.softmax == decomposed
    assert match.removed_ops[:2] == ["MatMul", "Add"] and "Shape" not in match.removed_ops
    cut, counts = cut_at(m, tensor_info(m, "feat"))
    assert [n.op_type for n in cut.graph.node] == ["Relu"]  # the Shape chain went with the head
    assert counts["nodes_removed"] == len(m.graph.node) - 1


def test_head_reading_the_input_values_is_still_refused():
    m = _shape_reading_head()
    # the head now also adds a slice of x itself (its values), not only its shape
    m.graph.node[-1].output[0] = "y0"
    m.graph.node.append(helper.make_node("Add", ["y0", "x3"], ["y"]))
    m.graph.node.insert(0, helper.make_node("Slice", ["x", "s0", "s3", "s1"], ["x3"]))
    m.graph.initializer.extend(
        [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("s0", 0), ("s3", 3), ("s1", 1))]
    )
    with pytest.raises(UnsupportedError, match="also reads 'x"):
        find_head(m)
