"""Tiny models built in code for tests/optimize."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def bert_like(hidden: int = 32, heads: int = 2, ffn: int = 64, seed: int = 0) -> onnx.ModelProto:
    """One BERT encoder layer as PyTorch exports it (opset 17): Q/K/V MatMul + bias, scaled
    dot-product attention with Softmax, output projection, residual Add + LayerNormalization,
    feed-forward with exact (erf) GELU, residual Add + LayerNormalization.
    Input ``x`` float[B, S, hidden], output ``y`` float[B, S, hidden]."""
    rng = np.random.default_rng(seed)
    h, dh = hidden, hidden // heads
    inits = []

    def w(name, *shape, scale=0.1):
        inits.append(
            numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)
        )
        return name

    def c(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    c("split_shape", [0, 0, heads, dh], np.int64)
    c("merge_shape", [0, 0, h], np.int64)
    c("scale", np.sqrt(dh))
    c("sqrt2", np.sqrt(2.0))
    c("one", 1.0)
    c("half", 0.5)
    for ln in ("ln1", "ln2"):
        c(f"{ln}.g", np.ones(h))
        c(f"{ln}.b", np.zeros(h))
    nodes = []

    def node(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    heads_out = {}
    for p in ("q", "k", "v"):
        mm = node("MatMul", ["x", w(f"{p}.w", h, h)], f"{p}_mm")
        b = node("Add", [mm, w(f"{p}.b", h)], f"{p}_b")
        r = node("Reshape", [b, "split_shape"], f"{p}_r")
        perm = [0, 2, 3, 1] if p == "k" else [0, 2, 1, 3]
        heads_out[p] = node("Transpose", [r], f"{p}_t", perm=perm)
    s = node("MatMul", [heads_out["q"], heads_out["k"]], "scores")
    s = node("Div", [s, "scale"], "scores_scaled")
    pr = node("Softmax", [s], "probs", axis=-1)
    ctx = node("MatMul", [pr, heads_out["v"]], "ctx")
    ctx = node("Transpose", [ctx], "ctx_t", perm=[0, 2, 1, 3])
    ctx = node("Reshape", [ctx, "merge_shape"], "ctx_r")
    o = node("MatMul", [ctx, w("o.w", h, h)], "o_mm")
    o = node("Add", [o, w("o.b", h)], "o_b")
    r1 = node("Add", [o, "x"], "res1")
    l1 = node("LayerNormalization", [r1, "ln1.g", "ln1.b"], "ln1", axis=-1, epsilon=1e-12)
    f = node("MatMul", [l1, w("f1.w", h, ffn)], "f1_mm")
    f = node("Add", [f, w("f1.b", ffn)], "f1_b")
    d = node("Div", [f, "sqrt2"], "gelu_div")
    e = node("Erf", [d], "gelu_erf")
    e = node("Add", [e, "one"], "gelu_add")
    g = node("Mul", [f, e], "gelu_mul")
    g = node("Mul", [g, "half"], "gelu")
    f = node("MatMul", [g, w("f2.w", ffn, h)], "f2_mm")
    f = node("Add", [f, w("f2.b", h)], "f2_b")
    r2 = node("Add", [f, l1], "res2")
    nodes.append(
        helper.make_node(
            "LayerNormalization", [r2, "ln2.g", "ln2.b"], ["y"], name="ln2", axis=-1, epsilon=1e-12
        )
    )
    graph = helper.make_graph(
        nodes,
        "bert_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", h])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", h])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def matmul_stack(layers: int = 4, width: int = 64, seed: int = 0, last: str = "Identity") -> onnx.ModelProto:
    """x[N,width] -> (MatMul -> Relu) x layers, the last activation ``last``: every weight is
    a MatMul's (more layers: slower, same interface)."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        out = "y" if i == layers - 1 else f"r{i}"
        nodes.append(helper.make_node("Relu" if i < layers - 1 else last, [f"h{i}"], [out], name=f"act{i}"))
        prev = out
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])
    g = helper.make_graph(nodes, "g", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
