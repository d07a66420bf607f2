"""FP16 conversion: structure (what runs in FP16, what stays FP32), validity, numbers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator

from onnxopt.errors import UnsupportedError
from onnxopt.optimize.fp16 import convert_to_fp16, to_fp16_array

# MatMul -> Add -> Softmax -> ReduceMean, with a weight read by two nodes
TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 3] y, float[N, 1] m) {
    h = MatMul(x, w)
    z = Add(h, b)
    y = Softmax<axis = 1>(z)
    m = ReduceMean<keepdims = 1>(z)
}
"""


def _model() -> onnx.ModelProto:
    m = onnx.parser.parse_model(TEXT)
    rng = np.random.default_rng(0)
    m.graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w"),
            onnx.numpy_helper.from_array(np.array([0.1, 1e5, -2.0], np.float32), "b"),
        ]
    )
    return m


def _elem(model, name):
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.name == name:
            return vi.type.tensor_type.elem_type
    raise KeyError(name)


def test_sensitive_ops_stay_fp32_and_io_types_kept():
    src = _model()
    out, rep = convert_to_fp16(src)
    onnx.checker.check_model(out, full_check=True)
    ops = {n.op_type: n for n in out.graph.node}
    assert rep.nodes_fp16 == 2 and rep.nodes_fp32 == 2
    assert rep.kept_fp32 == {"ReduceMean": 1, "Softmax": 1}
    assert _elem(out, "x") == TensorProto.FLOAT and _elem(out, "y") == TensorProto.FLOAT
    # Softmax reads the FP32 name written back by a Cast; MatMul reads a Cast of x
    assert ops["Softmax"].input[0] == "z" and ops["MatMul"].input[0] != "x"
    inits = {t.name: t.data_type for t in out.graph.initializer}
    assert inits["w/fp16"] == TensorProto.FLOAT16 and "w" not in inits
    assert rep.values_clipped == 1  # 1e5 > 65504
    assert [n.op_type for n in src.graph.node] == [
        "MatMul",
        "Add",
        "Softmax",
        "ReduceMean",
    ]  # input untouched


def test_numbers_close_on_reference_evaluator():
    src = _model()
    # keep the bias within FP16 range for the numeric check
    src.graph.initializer[1].CopyFrom(
        onnx.numpy_helper.from_array(np.array([0.1, 0.5, -2.0], np.float32), "b")
    )
    out, _ = convert_to_fp16(src)
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    ref = ReferenceEvaluator(src).run(None, {"x": x})
    new = ReferenceEvaluator(out).run(None, {"x": x})
    for a, b in zip(ref, new, strict=True):
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, a, rtol=1e-2, atol=1e-2)


def test_deterministic():
    a, _ = convert_to_fp16(_model())
    b, _ = convert_to_fp16(_model())
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def test_keep_by_name_and_refusal():
    m = _model()
    for i, n in enumerate(m.graph.node):
        n.name = f"n{i}"
    out, rep = convert_to_fp16(m, keep_fp32={"n0"})
    assert rep.kept_fp32.get("MatMul") == 1
    only_sensitive = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]> g (float[N, 3] x) => (float[N, 3] y) { y = Softmax<axis = 1>(x) }'
    )
    with pytest.raises(UnsupportedError, match="no node can run in FP16"):
        convert_to_fp16(only_sensitive)


def test_clip_array():
    arr, n = to_fp16_array(np.array([0.0, 1e-9, -1e6, 3.0], np.float32))
    assert arr.dtype == np.float16 and n == 2
    assert arr[0] == 0 and arr[1] > 0 and arr[2] == -65504 and arr[3] == 3


def test_bundled_cnn_converts(models_dir):
    m = onnx.load(str(models_dir / "digits_cnn.onnx"))
    out, rep = convert_to_fp16(m)
    onnx.checker.check_model(out, full_check=True)
    x = np.load(models_dir / "digits_test.npz")["image"][:8]
    a = ReferenceEvaluator(m).run(None, {"image": x})[0]
    b = ReferenceEvaluator(out).run(None, {"image": x})[0]
    assert (a.argmax(1) == b.argmax(1)).all()


def _ort_loads(model):
    import onnxruntime as ort

    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_layernorm_statistics_stay_fp32():
    # LayerNormalization's Mean / InvStdDev are typed float even for FP16 inputs: an FP16
    # consumer must read them through a Cast, not as if they were FP16
    m = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 4] y) {
            ln, mean, inv = LayerNormalization<axis = -1>(x, s, b)
            y = Add(ln, mean)
        }"""
    )
    m.graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(np.ones(4, np.float32), "s"),
            onnx.numpy_helper.from_array(np.zeros(4, np.float32), "b"),
        ]
    )
    out, rep = convert_to_fp16(m)
    onnx.checker.check_model(out, full_check=True)
    _ort_loads(out)
    ln = next(n for n in out.graph.node if n.op_type == "LayerNormalization")
    assert ln.output[0] != "ln" and list(ln.output[1:]) == ["mean", "inv"]
    add = next(n for n in out.graph.node if n.op_type == "Add")
    cast = next(n for n in out.graph.node if n.output[0] == add.input[1])
    assert cast.op_type == "Cast" and cast.input[0] == "mean"
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    a = ReferenceEvaluator(m).run(None, {"x": x})[0]
    b = ReferenceEvaluator(out).run(None, {"x": x})[0]
    np.testing.assert_allclose(b, a, rtol=1e-2, atol=1e-2)


def test_resize_scales_stay_fp32_in_opset_10():
    # opset 10 Resize has no roi input: its scales are input 1 and must stay float
    m = onnx.parser.parse_model(
        """<ir_version: 5, opset_import: ["" : 10]>
        g (float[1, 1, 4, 4] x) => (float[1, 1, 8, 8] y) {
            r = Relu(x)
            y = Resize<mode = "nearest">(r, sc)
        }"""
    )
    m.graph.initializer.append(
        onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc")
    )
    out, rep = convert_to_fp16(m)
    onnx.checker.check_model(out, full_check=True)
    _ort_loads(out)
    resize = next(n for n in out.graph.node if n.op_type == "Resize")
    assert resize.input[1] == "sc" and rep.nodes_fp16 == 2
    assert {t.name: t.data_type for t in out.graph.initializer}["sc"] == TensorProto.FLOAT


def test_shape_reads_the_fp16_tensor_and_subgraphs_read_fp32():
    # Shape of an FP16 tensor needs no Cast back; an If branch reading the same tensor from
    # the outer scope gets the FP32 name, written back by a Cast
    m = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4] x, bool c) => (int64[2] s, float[N, 3] y) {
            h = MatMul(x, w)
            s = Shape(h)
            y = If(c) <
                then_branch = t () => (float[N, 3] a) { a = Relu(h) },
                else_branch = e () => (float[N, 3] b) { b = Neg(h) }
            >
        }"""
    )
    m.graph.initializer.append(
        onnx.numpy_helper.from_array(
            np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w"
        )
    )
    out, rep = convert_to_fp16(m)
    onnx.checker.check_model(out, full_check=True)
    _ort_loads(out)
    nodes = {n.op_type: n for n in out.graph.node}
    mm_out = nodes["MatMul"].output[0]
    assert mm_out != "h" and nodes["Shape"].input[0] == mm_out  # FP16 tensor, no Cast
    back = [n for n in out.graph.node if n.op_type == "Cast" and n.output[0] == "h"]
    assert len(back) == 1 and back[0].input[0] == mm_out  # for the If's outer-scope read
    assert rep.kept_fp32 == {"If": 1}
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    for c in (True, False):
        feed = {"x": x, "c": np.array(c)}
        a = ReferenceEvaluator(m).run(None, feed)
        b = ReferenceEvaluator(out).run(None, feed)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_allclose(b[1], a[1], rtol=1e-2, atol=1e-2)
