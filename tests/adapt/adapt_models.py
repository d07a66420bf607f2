"""Tiny classifiers built in code, and labels a linear head can learn (shared by tests/adapt)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def conv_classifier(num_classes: int = 3, channels: int = 6, seed: int = 0, softmax: bool = False) -> onnx.ModelProto:
    """x[N,2,4,4] -> Conv(2->channels) -> Relu -> GlobalAveragePool -> Flatten -> Gemm (+Softmax)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((channels, 2, 3, 3)).astype(np.float32), "conv.w"),
        numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32) * 0.1, "conv.b"),
        numpy_helper.from_array(rng.standard_normal((num_classes, channels)).astype(np.float32), "fc.w"),
        numpy_helper.from_array(np.zeros(num_classes, np.float32), "fc.b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["feat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["feat", "fc.w", "fc.b"], ["scores" if softmax else "logits"], name="fc", transB=1),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["scores"], ["logits"], name="softmax", axis=1))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def features_of(model: onnx.ModelProto, x: np.ndarray, name: str = "feat") -> np.ndarray:
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_empty_tensor_value_info(name))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([name], {"x": x})[0]


def linear_labels(features: np.ndarray, classes: int, seed: int = 1) -> np.ndarray:
    """Labels from a hidden linear rule on the (standardized) features: learnable by a head."""
    rng = np.random.default_rng(seed)
    z = (features - features.mean(0)) / (features.std(0) + 1e-6)
    return np.argmax(z @ rng.standard_normal((z.shape[1], classes)), axis=1).astype(np.int64)
