"""Tiny members built in code for tests/ensemble (each under ~20 nodes)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F32 = TensorProto.FLOAT


def _t(rng, shape, name, scale=0.5):
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _model(nodes, inputs, outputs, inits, opset=17, functions=(), name="m"):
    g = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", opset)] + ([helper.make_opsetid("local", 1)] if functions else []), functions=list(functions)
    )
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def mlp(
    seed: int = 0,
    *,
    features: int = 6,
    hidden: int = 8,
    classes: int = 4,
    in_name: str = "x",
    out_name: str = "y",
    dtype=F32,
    opset: int = 17,
    head_seed: int | None = None,
) -> onnx.ModelProto:
    """x[N,features] -> Gemm -> Relu -> Gemm -> y[N,classes]; ``head_seed`` re-draws only the last Gemm."""
    rng = np.random.default_rng(seed)
    inits = [_t(rng, (hidden, features), "fc1.w"), _t(rng, (hidden,), "fc1.b", 0.1)]
    hrng = np.random.default_rng(head_seed) if head_seed is not None else rng
    inits += [_t(hrng, (classes, hidden), "fc2.w"), _t(hrng, (classes,), "fc2.b", 0.1)]
    if dtype != F32:
        np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
        inits = [numpy_helper.from_array(numpy_helper.to_array(t).astype(np_dtype), t.name) for t in inits]
    nodes = [
        helper.make_node("Gemm", [in_name, "fc1.w", "fc1.b"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
        helper.make_node("Gemm", ["a", "fc2.w", "fc2.b"], [out_name], name="fc2", transB=1),
    ]
    return _model(
        nodes, [helper.make_tensor_value_info(in_name, dtype, ["N", features])], [helper.make_tensor_value_info(out_name, dtype, ["N", classes])], inits, opset
    )


def convnet(seed: int = 0, *, channels: int = 4, classes: int = 3, head_seed: int | None = None) -> onnx.ModelProto:
    """x[N,2,5,5] -> Conv-BN-Relu -> Conv -> Add(skip) -> Relu -> GAP -> Flatten -> Gemm -> y[N,classes]."""
    rng = np.random.default_rng(seed)
    c = channels
    inits = [
        _t(rng, (c, 2, 3, 3), "c1.w"), _t(rng, (c,), "c1.b", 0.1),
        numpy_helper.from_array((1 + 0.1 * rng.standard_normal(c)).astype(np.float32), "bn.scale"),
        _t(rng, (c,), "bn.bias", 0.1), _t(rng, (c,), "bn.mean", 0.1),
        numpy_helper.from_array((1 + 0.1 * rng.random(c)).astype(np.float32), "bn.var"),
        _t(rng, (c, c, 3, 3), "c2.w", 0.3), _t(rng, (c,), "c2.b", 0.1),
    ]  # fmt: skip
    hrng = np.random.default_rng(head_seed) if head_seed is not None else rng
    inits += [_t(hrng, (classes, c), "fc.w"), _t(hrng, (classes,), "fc.b", 0.1)]
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["r1", "c2"], ["s"], name="skip"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", F32, ["N", 2, 5, 5])], [helper.make_tensor_value_info("y", F32, ["N", classes])], inits)


def with_if_and_function(seed: int = 0, *, act: str = "Relu") -> onnx.ModelProto:
    """x[N,6] -> Gemm -> h; If(sum(x) > 0): then h*scale (reads outer h), else local.Act(h); -> y[N,4].

    The local function ``local.Act`` is ``act`` (different members can give it different bodies
    under the same name), the then-branch reads ``h`` and the initializer ``scale`` from the
    outer scope.
    """
    rng = np.random.default_rng(seed)
    inits = [_t(rng, (4, 6), "w"), _t(rng, (4,), "b", 0.1), numpy_helper.from_array(np.float32(1.5 + seed), "scale")]
    then_g = helper.make_graph(
        [helper.make_node("Mul", ["h", "scale"], ["t_out"], name="then_mul")], "then", [], [helper.make_tensor_value_info("t_out", F32, ["N", 4])]
    )
    else_g = helper.make_graph(
        [helper.make_node("Act", ["h"], ["e_out"], name="else_act", domain="local")], "else", [], [helper.make_tensor_value_info("e_out", F32, ["N", 4])]
    )
    fn = helper.make_function("local", "Act", ["X"], ["Y"], [helper.make_node(act, ["X"], ["Y"])], [helper.make_opsetid("", 17)])
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1),
        helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g),
    ]
    inits.append(numpy_helper.from_array(np.float32(0.0), "zero"))
    return _model(nodes, [helper.make_tensor_value_info("x", F32, ["N", 6])], [helper.make_tensor_value_info("y", F32, ["N", 4])], inits, functions=[fn])


def reduce_mean_model(seed: int = 0, *, opset: int = 13) -> onnx.ModelProto:
    """x[N,6] -> Gemm -> [N,4,1] -> ReduceMean over axis 2 -> y[N,4]; ReduceMean's axes moved
    from an attribute (opset 13) to an input (opset 18), so converting changes the node."""
    rng = np.random.default_rng(seed)
    inits = [_t(rng, (4, 6), "w"), _t(rng, (4,), "b", 0.1), numpy_helper.from_array(np.array([0, 4, 1], np.int64), "shape3")]
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1),
        helper.make_node("Reshape", ["h", "shape3"], ["h3"], name="reshape"),
    ]
    if opset >= 18:
        inits.append(numpy_helper.from_array(np.array([2], np.int64), "axes"))
        nodes.append(helper.make_node("ReduceMean", ["h3", "axes"], ["y"], name="mean", keepdims=0))
    else:
        nodes.append(helper.make_node("ReduceMean", ["h3"], ["y"], name="mean", axes=[2], keepdims=0))
    return _model(nodes, [helper.make_tensor_value_info("x", F32, ["N", 6])], [helper.make_tensor_value_info("y", F32, ["N", 4])], inits, opset)


def two_outputs(seed: int = 0) -> onnx.ModelProto:
    """x[N,6] -> y[N,4] (scores) and feat[N,8] (hidden features)."""
    rng = np.random.default_rng(seed)
    inits = [_t(rng, (8, 6), "w1"), _t(rng, (8,), "b1", 0.1), _t(rng, (4, 8), "w2"), _t(rng, (4,), "b2", 0.1)]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["feat"], name="fc1", transB=1),
        helper.make_node("Gemm", ["feat", "w2", "b2"], ["y"], name="fc2", transB=1),
    ]
    outs = [helper.make_tensor_value_info("y", F32, ["N", 4]), helper.make_tensor_value_info("feat", F32, ["N", 8])]
    return _model(nodes, [helper.make_tensor_value_info("x", F32, ["N", 6])], outs, inits)


def reduce_head(seed: int = 0) -> onnx.ModelProto:
    """x[N,6] -> Gemm -> [N,4,2] -> CumSum(axis 2) -> ReduceMax(axis 2) -> y[N,4]: CumSum has no
    stacked form, so it and the ReduceMax after it run per member."""
    rng = np.random.default_rng(seed)
    inits = [
        _t(rng, (8, 6), "w"),
        _t(rng, (8,), "b", 0.1),
        numpy_helper.from_array(np.array([0, 4, 2], np.int64), "shape3"),
        numpy_helper.from_array(np.array([2], np.int64), "axes"),
        numpy_helper.from_array(np.array(2, np.int64), "axis"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1),
        helper.make_node("Reshape", ["h", "shape3"], ["h3"], name="reshape"),
        helper.make_node("CumSum", ["h3", "axis"], ["cs"], name="cumsum"),
        helper.make_node("ReduceMax", ["cs", "axes"], ["y"], name="max", keepdims=0),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", F32, ["N", 6])], [helper.make_tensor_value_info("y", F32, ["N", 4])], inits, 18)


def labelled_data(path, n: int = 120, features: int = 6, classes: int = 4, seed: int = 0, *, labels: bool = True, name: str = "x"):
    """Inputs with labels a linear model can learn; saved as .npz at ``path``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    w = np.random.default_rng(99).standard_normal((features, classes))
    arrays = {name: x}
    if labels:
        arrays["labels"] = np.argmax(x @ w, axis=1).astype(np.int64)
    np.savez(path, **arrays)
    return path


def offset_mlp(seed: int = 0) -> onnx.ModelProto:
    """x[N,6] -> Sub(x, per-member mean) -> Gemm -> Relu -> Gemm -> y[N,4] (a member-specific normalizer first)."""
    m = mlp(seed)
    rng = np.random.default_rng(100 + seed)
    g = m.graph
    g.initializer.append(_t(rng, (6,), "mean", 0.3))
    g.node.insert(0, helper.make_node("Sub", ["x", "mean"], ["xc"], name="center"))
    g.node[1].input[0] = "xc"
    onnx.checker.check_model(m, full_check=True)
    return m


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"const_{name}", value=numpy_helper.from_array(np.asarray(value), name))


def paddle_like(seed: int = 0, *, channels: int = 4, classes: int = 3, opset: int = 11) -> onnx.ModelProto:
    """What PaddlePaddle exports look like: every weight in a ``Constant`` node, a ``-1`` batch
    dim, biases reshaped to ``[1, C, 1, 1]`` before an ``Add``, and a classifier whose
    ``Reshape`` target is computed from ``Shape``::

        x[-1,2,5,5] -> Conv -> Add(Reshape(b1)) -> Relu -> Conv -> Add(Reshape(b2)) -> Relu -> GAP
          -> Reshape(., Concat(Slice(Shape(.), 0, 1), [-1])) -> MatMul -> Add -> y[-1,classes]
    """
    rng = np.random.default_rng(seed)
    c = channels
    f32 = np.float32
    nodes = [
        _const("w1", (rng.standard_normal((c, 2, 3, 3)) * 0.5).astype(f32)),
        _const("b1", (rng.standard_normal(c) * 0.1).astype(f32)),
        _const("w2", (rng.standard_normal((c, c, 3, 3)) * 0.3).astype(f32)),
        _const("b2", (rng.standard_normal(c) * 0.1).astype(f32)),
        _const("bshape", np.array([1, c, 1, 1], np.int64)),
        _const("wfc", (rng.standard_normal((c, classes)) * 0.5).astype(f32)),
        _const("bfc", (rng.standard_normal(classes) * 0.1).astype(f32)),
        _const("zero", np.array([0], np.int64)),
        _const("one", np.array([1], np.int64)),
        _const("minus1", np.array([-1], np.int64)),
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["b1", "bshape"], ["b1r"], name="b1_reshape"),
        helper.make_node("Add", ["c1", "b1r"], ["a1"], name="add1"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["b2", "bshape"], ["b2r"], name="b2_reshape"),
        helper.make_node("Add", ["c2", "b2r"], ["a2"], name="add2"),
        helper.make_node("Relu", ["a2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Shape", ["p"], ["pshape"], name="shape"),
        helper.make_node("Slice", ["pshape", "zero", "one", "zero"], ["batch"], name="slice"),
        helper.make_node("Concat", ["batch", "minus1"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["p", "target"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "wfc"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "bfc"], ["y"], name="fc_bias"),
    ]
    g = helper.make_graph(
        nodes, "paddle_like", [helper.make_tensor_value_info("x", F32, [-1, 2, 5, 5])], [helper.make_tensor_value_info("y", F32, [-1, classes])]
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    onnx.checker.check_model(m)
    return m


def matmul_mlp(seed: int = 0, *, features: int = 6, hidden: int = 8, classes: int = 4) -> onnx.ModelProto:
    """x[N,features] -> MatMul + Add -> Relu -> MatMul + Add -> y[N,classes] (tf2onnx's dense layers)."""
    rng = np.random.default_rng(seed)
    inits = [_t(rng, (features, hidden), "w1"), _t(rng, (hidden,), "b1", 0.1), _t(rng, (hidden, classes), "w2"), _t(rng, (classes,), "b2", 0.1)]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
        helper.make_node("Relu", ["hb"], ["a"], name="relu"),
        helper.make_node("MatMul", ["a", "w2"], ["o"], name="mm2"),
        helper.make_node("Add", ["o", "b2"], ["y"], name="add2"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", F32, ["N", features])], [helper.make_tensor_value_info("y", F32, ["N", classes])], inits)


def norm_block(seed: int = 0, *, opset: int = 17) -> onnx.ModelProto:
    """tf2onnx-like ops around a normalisation, each with a batched stacked form::

        x[N,6] -> MatMul -> Reshape[N,2,4] -> ReduceMean(-1) -> Sub -> ReduceSum(all but batch)
          -> Expand[N,2,4] ... Unsqueeze(1) -> Squeeze(1) -> Slice(axis 2, int32 indices)
          -> Reshape[N,6] -> Gemm -> y[N,3]
    """
    rng = np.random.default_rng(seed)
    i64 = np.int64
    inits = [
        _t(rng, (6, 8), "w"), _t(rng, (6, 3), "fc.w"), _t(rng, (3,), "fc.b", 0.1),
        numpy_helper.from_array(np.array([0, 2, 4], i64), "shape3"),
        numpy_helper.from_array(np.array([-1], i64), "last"),
        numpy_helper.from_array(np.array([1, 2], i64), "rest"),
        numpy_helper.from_array(np.array([1], i64), "axis1"),
        numpy_helper.from_array(np.array([1, 2, 4], i64), "bshape"),
        numpy_helper.from_array(np.array([1], np.int32), "start"),
        numpy_helper.from_array(np.array([4], np.int32), "end"),
        numpy_helper.from_array(np.array([2], np.int32), "saxis"),
        numpy_helper.from_array(np.array([0, 6], i64), "shape2"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
        helper.make_node("Reshape", ["h", "shape3"], ["h3"], name="split_heads"),
        helper.make_node("ReduceMean", ["h3", "last"], ["mu"], name="mean", keepdims=1)
        if opset >= 18
        else helper.make_node("ReduceMean", ["h3"], ["mu"], name="mean", axes=[-1], keepdims=1),
        helper.make_node("Sub", ["h3", "mu"], ["c"], name="center"),
        helper.make_node("ReduceSum", ["c", "rest"], ["tot"], name="total", keepdims=1),
        helper.make_node("Expand", ["tot", "bshape"], ["tb"], name="broadcast"),
        helper.make_node("Add", ["c", "tb"], ["s"], name="add"),
        helper.make_node("Unsqueeze", ["s", "axis1"], ["u"], name="unsq"),
        helper.make_node("Squeeze", ["u", "axis1"], ["q"], name="sq"),
        helper.make_node("Slice", ["q", "start", "end", "saxis"], ["sl"], name="slice"),
        helper.make_node("Reshape", ["sl", "shape2"], ["flat"], name="merge_heads"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", F32, ["N", 6])], [helper.make_tensor_value_info("y", F32, ["N", 3])], inits, opset)
