"""Tiny models for the prune tests, built in code (each under ~20 nodes)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _model(nodes, inits, inp_shape, out_shape, name="toy", extra_outputs=()):
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, inp_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)] + list(extra_outputs),
        initializer=[
            numpy_helper.from_array(
                np.asarray(
                    v, dtype=np.float32 if np.asarray(v).dtype.kind == "f" else np.asarray(v).dtype
                ),
                k,
            )
            for k, v in inits.items()
        ],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def conv_bn_net(rng, c1=8, c2=8, classes=4, reshape=False) -> onnx.ModelProto:
    """Conv-BN-Relu-Conv-Relu-(Flatten|Reshape)-Gemm on [N,2,4,4]: the flatten maps each
    channel to 16 consecutive features."""
    inits = {
        "w1": rng.standard_normal((c1, 2, 3, 3)),
        "b1": rng.standard_normal(c1),
        "g": rng.uniform(0.5, 1.5, c1),
        "beta": rng.standard_normal(c1),
        "mean": rng.standard_normal(c1) * 0.1,
        "var": rng.uniform(0.5, 1.5, c1),
        "w2": rng.standard_normal((c2, c1, 3, 3)) * 0.3,
        "b2": rng.standard_normal(c2),
        "wf": rng.standard_normal((classes, c2 * 16)) * 0.1,
        "bf": rng.standard_normal(classes),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["n1"], name="bn1"
        ),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
    ]
    if reshape:
        inits["shape"] = np.array([-1, c2 * 16], dtype=np.int64)
        nodes.append(helper.make_node("Reshape", ["r2", "shape"], ["f"], name="flat"))
    else:
        nodes.append(helper.make_node("Flatten", ["r2"], ["f"], name="flat", axis=1))
    nodes.append(helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1))
    return _model(nodes, inits, ["N", 2, 4, 4], ["N", classes])


def residual_net(rng, c=8, classes=3, projection=False) -> onnx.ModelProto:
    """stem -> y = relu(x + conv(relu(conv(x)))) -> GAP -> Flatten -> Gemm; with
    ``projection`` the shortcut is a 1x1 conv (not a removable block)."""
    inits = {
        "ws": rng.standard_normal((c, 1, 3, 3)),
        "bs": rng.standard_normal(c) * 0.1,
        "wa": rng.standard_normal((c, c, 3, 3)) * 0.2,
        "ba": rng.standard_normal(c) * 0.1,
        "wb": rng.standard_normal((c, c, 3, 3)) * 0.2,
        "bb": rng.standard_normal(c) * 0.1,
        "wf": rng.standard_normal((classes, c)),
        "bf": rng.standard_normal(classes),
    }
    nodes = [
        helper.make_node("Conv", ["x", "ws", "bs"], ["s"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s"], ["sr"], name="stem_relu"),
        helper.make_node("Conv", ["sr", "wa", "ba"], ["a"], name="block_conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"], name="block_relu"),
        helper.make_node("Conv", ["ar", "wb", "bb"], ["b"], name="block_conv2", pads=[1, 1, 1, 1]),
    ]
    skip = "sr"
    if projection:
        inits["wp"] = rng.standard_normal((c, c, 1, 1))
        nodes.append(helper.make_node("Conv", ["sr", "wp"], ["p"], name="proj"))
        skip = "p"
    nodes += [
        helper.make_node("Add", [skip, "b"], ["sum"], name="block_add"),
        helper.make_node("Relu", ["sum"], ["out"], name="block_out"),
        helper.make_node("GlobalAveragePool", ["out"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, inits, ["N", 1, 6, 6], ["N", classes])


def concat_net(rng, c=8, with_input=False, unknown_op=False) -> onnx.ModelProto:
    """Two branches concatenated on channels, then a 1x1 conv; optionally the input joins
    the Concat (a fixed run of channels) or an op the analysis does not know reads a branch."""
    inits = {
        "wa": rng.standard_normal((c, 2, 3, 3)),
        "wb": rng.standard_normal((c, 2, 1, 1)),
        "bb": rng.standard_normal(c),
        "wc": rng.standard_normal((4, 2 * c + (2 if with_input else 0), 1, 1)) * 0.3,
    }
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb", "bb"], ["b"], name="conv_b"),
    ]
    b = "b"
    if unknown_op:
        nodes.append(helper.make_node("LpNormalization", ["b"], ["bn"], name="lpnorm", axis=1))
        b = "bn"
    ins = ["a", b] + (["x"] if with_input else [])
    nodes += [
        helper.make_node("Concat", ins, ["cat"], name="cat", axis=1),
        helper.make_node("Relu", ["cat"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "wc"], ["y"], name="conv_c"),
    ]
    return _model(nodes, inits, ["N", 2, 5, 5], ["N", 4, 5, 5])


def depthwise_net(rng, c=8) -> onnx.ModelProto:
    """Conv -> depthwise Conv -> Relu -> Conv (mobile-style)."""
    inits = {
        "w1": rng.standard_normal((c, 3, 1, 1)),
        "wd": rng.standard_normal((c, 1, 3, 3)),
        "bd": rng.standard_normal(c),
        "w2": rng.standard_normal((5, c, 1, 1)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="pw1"),
        helper.make_node("Conv", ["a", "wd", "bd"], ["d"], name="dw", group=c, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="pw2"),
    ]
    return _model(nodes, inits, ["N", 3, 4, 4], ["N", 5, 4, 4])


def grouped_net(rng) -> onnx.ModelProto:
    """Conv -> grouped Conv (group 2) -> Conv: the grouped conv blocks its neighbours."""
    inits = {
        "w1": rng.standard_normal((8, 3, 1, 1)),
        "wg": rng.standard_normal((8, 4, 3, 3)),
        "w2": rng.standard_normal((5, 8, 1, 1)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"),
        helper.make_node("Conv", ["a", "wg"], ["g"], name="gconv", group=2, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["g", "w2"], ["y"], name="conv2"),
    ]
    return _model(nodes, inits, ["N", 3, 4, 4], ["N", 5, 4, 4])


def mlp(rng, hidden=16) -> onnx.ModelProto:
    """MatMul + Add bias -> Relu -> Gemm on [N, 6]."""
    inits = {
        "w1": rng.standard_normal((6, hidden)),
        "b1": rng.standard_normal(hidden),
        "w2": rng.standard_normal((3, hidden)),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2", transB=1),
    ]
    return _model(nodes, inits, ["N", 6], ["N", 3])


def no_weights(rng) -> onnx.ModelProto:
    """Relu + Add of the input with itself: nothing to prune."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "x"], ["y"], name="add"),
    ]
    return _model(nodes, {}, ["N", 4], ["N", 4])


def duplicated_convt_net(rng, c=8, transpose=True) -> onnx.ModelProto:
    """Conv (2c channels, the second half half the first) -> Relu -> ConvTranspose (stride 2,
    pads 1, output_padding 1) or Conv -> y.  Removing the second half and adding half of its
    consumer weights to the kept channels reproduces the model exactly, so the least squares
    refit of the consumer must reach (almost) zero error."""
    w = rng.standard_normal((c, 2, 3, 3))
    b = rng.standard_normal(c) * 0.1
    # the copy is scaled by 0.5 (relu(z / 2) = relu(z) / 2): lower L1, so it is the one removed
    inits = {"w1": np.concatenate([w, 0.5 * w]), "b1": np.concatenate([b, 0.5 * b])}
    if transpose:
        inits["wt"] = rng.standard_normal((2 * c, 3, 3, 3)) * 0.3
        inits["bt"] = rng.standard_normal(3) * 0.1
        last = helper.make_node(
            "ConvTranspose",
            ["r", "wt", "bt"],
            ["y"],
            name="up",
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            output_padding=[1, 1],
        )
        out_shape = ["N", 3, 10, 10]
    else:
        inits["wt"] = rng.standard_normal((3, 2 * c, 3, 3)) * 0.3
        last = helper.make_node("Conv", ["r", "wt"], ["y"], name="conv2", pads=[1, 1, 1, 1])
        out_shape = ["N", 3, 5, 5]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        last,
    ]
    return _model(nodes, inits, ["N", 2, 5, 5], out_shape)


def computed_params_net(rng, c=8) -> onnx.ModelProto:
    """PaddlePaddle-style bias ``Add(conv, Reshape(b, [1, C, 1, 1]))`` and a BatchNorm-like
    scale ``Mul(x, Unsqueeze(ConstantOfShape fill))``, both computed from constants."""
    inits = {
        "w1": rng.standard_normal((c, 2, 3, 3)),
        "b1": rng.standard_normal(c),
        "bshape": np.array([1, c, 1, 1], dtype=np.int64),
        "sshape": np.array([c], dtype=np.int64),
        "axes": np.array([1, 2], dtype=np.int64),
        "w2": rng.standard_normal((3, c, 1, 1)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["b1", "bshape"], ["b4"], name="bias_shape"),
        helper.make_node("Add", ["a", "b4"], ["ab"], name="bias"),
        helper.make_node(
            "ConstantOfShape",
            ["sshape"],
            ["s"],
            name="scale_fill",
            value=numpy_helper.from_array(np.array([0.5], dtype=np.float32)),
        ),
        helper.make_node("Unsqueeze", ["s", "axes"], ["s3"], name="scale_unsq"),
        helper.make_node("Mul", ["ab", "s3"], ["m"], name="scale"),
        helper.make_node("Relu", ["m"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2"),
    ]
    return _model(nodes, inits, ["N", 2, 5, 5], ["N", 3, 5, 5])


def gelu_like(rng) -> onnx.ModelProto:
    """Gemm -> ``h + 0.044715 * h^3`` (the Add of tanh-GELU: x + f(x) without weights) -> Gemm."""
    inits = {
        "w1": rng.standard_normal((6, 8)),
        "c": np.array(0.044715, dtype=np.float32),
        "p": np.array(3.0, dtype=np.float32),
        "w2": rng.standard_normal((8, 3)),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Pow", ["h", "p"], ["h3"], name="cube"),
        helper.make_node("Mul", ["h3", "c"], ["ch3"], name="scale"),
        helper.make_node("Add", ["h", "ch3"], ["g"], name="inner"),
        helper.make_node("Gemm", ["g", "w2"], ["y"], name="fc2"),
    ]
    return _model(nodes, inits, ["N", 6], ["N", 3])


def symbolic_residual_net(rng, c=8) -> onnx.ModelProto:
    """``residual_net`` with symbolic spatial dims (input ``[N, 1, H, W]``)."""
    m = residual_net(rng, c=c)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].Clear()
    dims[2].dim_param = "H"
    dims[3].Clear()
    dims[3].dim_param = "W"
    onnx.checker.check_model(m, full_check=True)
    return m


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.astype(np.float32)})[0]
