"""simplify.hardswish: x * relu6(x + 3) / 6 written as elementwise ops -> one HardSwish."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxopt.core.passes import Context
from onnxopt.core.registry import make_pass
from onnxopt.data import Dataset
from onnxopt.runtime import create_session
from onnxopt.simplify.hardswish import fuse_hardswishes
from onnxopt.verify import REASSOCIATED_REL_L2, check_model

RNG = np.random.default_rng(5)
X = (RNG.standard_normal((4, 16)) * 4).astype(np.float32)  # across both bends, -3 and 3


def _model(nodes, inits, opset):
    io = [helper.make_tensor_value_info(k, TensorProto.FLOAT, ["N", 16]) for k in "xy"]
    g = helper.make_graph(nodes, "hs", io[:1], io[1:], [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


def _paddle(last=("Div", 6.0), opset=12):
    """paddle2onnx: Add 3, Clip(0, 6) with bounds as inputs, Mul by x, Div by 6."""
    op, k = last
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),  # x made by a node, read by the Add and the Mul
        helper.make_node("Add", ["r", "three"], ["a"], name="add"),
        helper.make_node("Clip", ["a", "zero", "six"], ["c"], name="clip"),
        helper.make_node("Mul", ["r", "c"], ["m"], name="mul"),
    ]
    inits = {"three": [3.0], "zero": 0.0, "six": 6.0}
    if op:
        nodes.append(helper.make_node(op, ["m", "k"], ["y"], name="last"))
        inits["k"] = k
    else:
        nodes[-1].output[0] = "y"
    return _model(nodes, inits, opset)


def _run(m):
    return create_session(m).run(None, {"x": X})[0]


def _want():
    r = np.maximum(X.astype(np.float64), 0)
    return r * np.clip(r + 3, 0, 6) / 6


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_paddle2onnx_form_becomes_one_hardswish_at_opset_14():
    m = _paddle()
    out, n, notes = fuse_hardswishes(m)
    assert n == 1 and notes == ["opset 12 converted to 14 (HardSwish)"]
    assert [(node.op_type, node.name) for node in out.graph.node] == [("Relu", "relu"), ("HardSwish", "last/HardSwishFusion")]
    assert [o.version for o in out.opset_import if o.domain == ""] == [14]
    check_model(out)
    assert _rel(_run(out), _want()) < 1e-6 and _rel(_run(out), _run(m)) < REASSOCIATED_REL_L2


def test_torch_forms_scale_first_or_hardsigmoid_are_fused_too():
    scale_first = _model(
        [
            helper.make_node("Add", ["three", "x"], ["a"]),
            helper.make_node("Clip", ["a", "zero", "six"], ["c"]),
            helper.make_node("Mul", ["c", "sixth"], ["s"]),
            helper.make_node("Mul", ["s", "x"], ["y"]),
        ],
        {"three": 3.0, "zero": 0.0, "six": 6.0, "sixth": 1 / 6},
        14,
    )
    hsig = _model([helper.make_node("HardSigmoid", ["x"], ["h"], alpha=1 / 6), helper.make_node("Mul", ["x", "h"], ["y"])], {}, 14)
    want = X * np.clip(X + 3, 0, 6) / 6
    for m in (scale_first, hsig):
        out, n, _ = fuse_hardswishes(m)
        assert n == 1 and [node.op_type for node in out.graph.node] == ["HardSwish"]
        assert _rel(_run(out), want) < 1e-6


def test_what_is_not_a_hardswish_is_left_alone_and_says_why():
    no_sixth = _paddle(last=(None, None))
    out, n, notes = fuse_hardswishes(no_sixth)
    assert n == 0 and out is no_sixth
    assert notes == ["'clip' not fused as a hard swish: 'y' is read 0 times or is a graph output"]
    # a squeeze-excitation gate: HardSigmoid of one tensor times another is not a hard swish
    se = _model([helper.make_node("HardSigmoid", ["x"], ["h"], alpha=1 / 6), helper.make_node("Mul", ["h", "h"], ["y"])], {}, 14)
    assert fuse_hardswishes(se)[1:] == (0, [])
    nodes = [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["y"])]
    relu6 = _model(nodes, {"three": 3.0, "zero": 0.0, "six": 6.0}, 14)
    assert fuse_hardswishes(relu6)[1] == 0


def test_the_pass_is_registered_and_static_quantization_prepares_it():
    from onnxopt.quantize.api import prepare_model

    ds = Dataset("<t>", arrays={"x": X})
    p = make_pass("fuse-hardswish")
    res = p(_paddle(last=("Mul", 1 / 6)), Context(data=ds))
    assert p.limit == REASSOCIATED_REL_L2 and res.modified and res.report.counts == {"hardswishes_fused": 1}
    prep = prepare_model(_paddle(), ds)
    assert prep.counts["hardswishes_fused"] == 1
    # ORT's quant_pre_process inlines HardSwish as HardSigmoid * x: one quantized product
    # where there were an Add, a Mul and a Div
    assert [n.op_type for n in prep.model.graph.node] == ["Relu", "HardSigmoid", "Mul"]
    assert [n.op_type for n in prepare_model(_paddle(), ds, use_ort_preprocess=False).model.graph.node] == ["Relu", "HardSwish"]
