"""Tiny models built in code for the quantize tests (each under ~10 nodes)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inits, x_shape, y_shape, opset: int = 17, x_name: str = "x") -> onnx.ModelProto:
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(x_name, TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        initializer=inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = min(m.ir_version, 8)
    onnx.checker.check_model(m, full_check=True)
    return m


def mlp(rng=None, *, hidden: int = 32, classes: int = 4, opset: int = 17, outlier: float | None = None) -> onnx.ModelProto:
    """x[N,16] -> Gemm(transB) -> Relu -> Gemm -> y[N,classes].  ``outlier`` puts one huge
    weight in the second layer, which per-tensor INT8 cannot represent together with the
    others (that node becomes the sensitive one)."""
    rng = rng or np.random.default_rng(0)
    w1 = rng.standard_normal((hidden, 16)).astype(np.float32) * 0.5
    w2 = rng.standard_normal((classes, hidden)).astype(np.float32) * 0.5
    if outlier is not None:
        w2[0, 0] = outlier
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1),
    ]
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(np.zeros(hidden, np.float32), "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "b2"),
    ]
    return _model(nodes, inits, ["N", 16], ["N", classes], opset)


def drifted(d: float, direction: np.ndarray) -> onnx.ModelProto:
    """``y = x + x @ (d * direction)`` for ``x [N, 4]``: a stand-in for a model quantized with
    error ``d`` (its top-1 and cosine against ``drifted(0)`` fall as ``d`` grows)."""
    nodes = [helper.make_node("MatMul", ["x", "p"], ["e"], name="err"), helper.make_node("Add", ["x", "e"], ["y"], name="add")]
    return _model(nodes, [numpy_helper.from_array((d * direction).astype(np.float32), "p")], ["N", 4], ["N", 4])


def constant_weight_mlp(rng=None) -> onnx.ModelProto:
    """MatMul whose weight is a Constant node and a second whose weight is ConstantOfShape
    (as in Paddle / TF exports and the onnx wheel's architecture models)."""
    rng = rng or np.random.default_rng(1)
    w1 = rng.standard_normal((16, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w1"], name="const_w1", value=numpy_helper.from_array(w1)),
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Constant", [], ["shape"], name="const_shape", value=numpy_helper.from_array(np.array([8, 4], np.int64))),
        helper.make_node("ConstantOfShape", ["shape"], ["w2"], name="cos_w2", value=numpy_helper.from_array(np.array([0.05], np.float32))),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    return _model(nodes, [], ["N", 16], ["N", 4])


def conv_net(rng=None, *, opset: int = 17) -> onnx.ModelProto:
    """x[N,2,6,6] -> Conv -> Relu -> Conv -> y[N,4,6,6]."""
    rng = rng or np.random.default_rng(2)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 2, 3, 3)).astype(np.float32) * 0.3, "wc1"),
        numpy_helper.from_array(np.zeros(8, np.float32), "bc1"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32) * 0.3, "wc2"),
        numpy_helper.from_array(np.zeros(4, np.float32), "bc2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wc1", "bc1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wc2", "bc2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    return _model(nodes, inits, ["N", 2, 6, 6], ["N", 4, 6, 6], opset)


def grouped_conv_transpose(rng=None) -> onnx.ModelProto:
    """Conv -> ConvTranspose(group=2): per-channel QDQ crashes ORT's quantizer on the latter."""
    rng = rng or np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32) * 0.3, "wc"),
        numpy_helper.from_array(np.zeros(4, np.float32), "bc"),
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3, "wt"),
        numpy_helper.from_array(np.zeros(6, np.float32), "bt"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wc", "bc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c", "wt", "bt"], ["y"], name="deconv", group=2),
    ]
    return _model(nodes, inits, ["N", 2, 5, 5], ["N", 6, 7, 7])


def batched_matmul(rng=None) -> onnx.ModelProto:
    """MatMul with a 3-D constant weight plus a 2-D one: per-channel QOperator builds a
    QLinearMatMul that ORT loads but refuses to run on the 3-D one."""
    rng = rng or np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(rng.standard_normal((2, 16, 8)).astype(np.float32), "w3"),
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w3"], ["h"], name="bmm"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm"),
    ]
    return _model(nodes, inits, [2, 4, 16], [2, 4, 8])


def no_weights() -> onnx.ModelProto:
    """Relu -> Sigmoid: nothing for dynamic quantization."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Sigmoid", ["r"], ["y"], name="sig")]
    return _model(nodes, [], ["N", 8], ["N", 8])


def data_for(model: onnx.ModelProto, n: int = 64, seed: int = 0, labels: bool = False) -> dict:
    """Random inputs (first axis: samples) for the model's single input; with ``labels`` the
    FP32 model's own top-1 (so that its top1 is 100%)."""
    rng = np.random.default_rng(seed)
    inp = model.graph.input[0]
    dims = [d.dim_value if d.dim_value > 0 else n for d in inp.type.tensor_type.shape.dim]
    x = rng.standard_normal(dims).astype(np.float32)
    out = {inp.name: x}
    if labels:
        import onnxruntime as ort

        y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {inp.name: x})[0]
        out["labels"] = y.argmax(axis=1).astype(np.int64)
    return out


def ffn_block(hidden: int = 16, seed: int = 5) -> onnx.ModelProto:
    """A BERT feed-forward tail: MatMul + bias, exact GELU (erf), residual Add,
    LayerNormalization: ORT's bert optimizer fuses it into BiasGelu + SkipLayerNormalization."""
    rng = np.random.default_rng(seed)
    h = hidden
    inits = [
        numpy_helper.from_array(rng.standard_normal((h, h)).astype(np.float32) * 0.2, "w"),
        numpy_helper.from_array(rng.standard_normal(h).astype(np.float32), "b"),
        numpy_helper.from_array(np.ones(h, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(h, np.float32), "beta"),
        numpy_helper.from_array(np.array(1.4142135, np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
        helper.make_node("Add", ["mm", "b"], ["mb"], name="bias"),
        helper.make_node("Div", ["mb", "sqrt2"], ["d"], name="div"),
        helper.make_node("Erf", ["d"], ["e"], name="erf"),
        helper.make_node("Add", ["e", "one"], ["e1"], name="add1"),
        helper.make_node("Mul", ["mb", "e1"], ["m1"], name="mul1"),
        helper.make_node("Mul", ["m1", "half"], ["g1"], name="mul2"),
        helper.make_node("Add", ["g1", "x"], ["res"], name="residual"),
        helper.make_node("LayerNormalization", ["res", "gamma", "beta"], ["y"], name="ln", axis=-1, epsilon=1e-5),
    ]
    return _model(nodes, inits, ["B", 4, h], ["B", 4, h])


def wide_softmax(classes: int = 1000, seed: int = 6) -> onnx.ModelProto:
    """MatMul -> Softmax over 1000 classes: static QDQ quantizes the Softmax output in steps
    of 1/255, so probabilities near 1/1000 all become 0 (the whole output collapses)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((16, classes)).astype(np.float32) * 0.01
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["logits"], name="fc"),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1),
    ]
    return _model(nodes, [numpy_helper.from_array(w, "w")], ["N", 16], ["N", classes])


def matmul_add_mlp(seed: int = 7) -> onnx.ModelProto:
    """MatMul + Add (bias) -> Relu (nameless) -> MatMul: ORT's quant_pre_process fuses the
    first two into one Gemm named ``mm/MatMulAddFusion``; the Relu gets a generated name."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Add", ["h", "b"], ["hb"], name="bias"),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    return _model(nodes, inits, ["N", 16], ["N", 4])


def bn_conv(seed: int = 8) -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu: ORT's quant_pre_process folds the BN into the Conv."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32) * 0.3, "wc"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "scale"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "shift"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 4).astype(np.float32), "var"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["y"], name="relu"),
    ]
    return _model(nodes, inits, ["N", 2, 6, 6], ["N", 4, 6, 6])
