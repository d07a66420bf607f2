"""Decomposed GELUs fused into ORT's FastGelu / Gelu (``onnxopt.simplify.gelu``)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.core.passes import Context
from onnxopt.core.registry import make_pass
from onnxopt.data import Dataset
from onnxopt.runtime import create_session
from onnxopt.simplify.gelu import find_gelus, fuse_gelus
from onnxopt.verify import REASSOCIATED_REL_L2, check_model

RNG = np.random.default_rng(1)


def _c(name, v):
    return numpy_helper.from_array(np.float32(v), name)


def _model(nodes, inits) -> onnx.ModelProto:
    """``x [N, 8] @ w + b`` (the GELU's input is made by an Add of a bias), then ``nodes``."""
    w, b = RNG.standard_normal((8, 8)).astype(np.float32), RNG.standard_normal(8).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"), *inits]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"], name="mm"), helper.make_node("Add", ["xw", "b"], ["h"], name="bias"), *nodes]
    io = [helper.make_tensor_value_info(k, TensorProto.FLOAT, ["N", 8]) for k in "xy"]
    m = helper.make_model(helper.make_graph(nodes, "g", io[:1], io[1:], inits), opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    return m


def _jax(b=0.044715) -> onnx.ModelProto:
    """jax2tf's tanh GELU: the cube as x * (x * (b * x)), the constants on either side."""
    inits = [_c("b3", b), _c("a", math.sqrt(2 / math.pi)), _c("one", 1.0), _c("half", 0.5)]
    nodes = [
        helper.make_node("Mul", ["b3", "h"], ["t1"], name="Mul"),
        helper.make_node("Mul", ["h", "t1"], ["t2"], name="Mul_1"),
        helper.make_node("Mul", ["h", "t2"], ["t3"], name="Mul_2"),
        helper.make_node("Add", ["h", "t3"], ["t4"], name="AddV2"),
        helper.make_node("Mul", ["a", "t4"], ["t5"], name="Mul_3"),
        helper.make_node("Tanh", ["t5"], ["t6"], name="Tanh"),
        helper.make_node("Add", ["one", "t6"], ["t7"], name="AddV2_1"),
        helper.make_node("Mul", ["half", "t7"], ["t8"], name="Mul_4"),
        helper.make_node("Mul", ["h", "t8"], ["y"], name="Mul_5"),
    ]
    return _model(nodes, inits)


def _torch_erf() -> onnx.ModelProto:
    """torch.onnx's exact GELU: x * 0.5 * (1 + erf(x / sqrt(2)))."""
    inits = [_c("r2", math.sqrt(2)), _c("one", 1.0), _c("half", 0.5)]
    nodes = [
        helper.make_node("Div", ["h", "r2"], ["t1"], name="div"),
        helper.make_node("Erf", ["t1"], ["t2"], name="erf"),
        helper.make_node("Add", ["t2", "one"], ["t3"], name="add"),
        helper.make_node("Mul", ["h", "t3"], ["t4"], name="mul"),
        helper.make_node("Mul", ["t4", "half"], ["y"], name="mul_half"),
    ]
    return _model(nodes, inits)


def _run(m, x):
    return create_session(m).run(None, {"x": x})[0]


@pytest.mark.parametrize("build, kind", [(_jax, "FastGelu"), (_torch_erf, "Gelu")])
def test_a_decomposed_gelu_becomes_one_ort_op(build, kind):
    m = build()
    x = RNG.standard_normal((16, 8)).astype(np.float32)
    out, n, notes = fuse_gelus(m)
    assert n == 1 and notes == []
    assert [(node.op_type, node.domain) for node in out.graph.node] == [("MatMul", ""), ("Add", ""), (kind, "com.microsoft")]
    assert out.graph.node[-1].input[0] == "h" and len(m.graph.node) > 3  # the input is untouched
    check_model(out)
    a, b = _run(m, x), _run(out, x)
    assert float(np.linalg.norm(a - b) / np.linalg.norm(a)) < 1e-5


def test_another_constant_is_not_a_gelu_and_says_why():
    m = _jax(b=0.05)
    out, n, notes = fuse_gelus(m)
    assert n == 0 and out is m and find_gelus(m)[0] == []
    assert notes == ["'Tanh' not fused as a GELU: its argument 0.797885*x^1 + 0.0398942*x^3 is not sqrt(2/pi)*(x + 0.044715*x^3)"]


def test_the_pass_is_registered_with_its_own_limit():
    ds = Dataset("<t>", arrays={"x": RNG.standard_normal((16, 8)).astype(np.float32)})
    p = make_pass("fuse-gelu")
    res = p(_jax(), Context(data=ds))
    assert p.limit == REASSOCIATED_REL_L2 and res.modified and res.report.counts == {"gelus_fused": 1}
    assert not p(res.model, Context(data=ds)).modified


def test_static_quantization_prepares_a_fused_gelu():
    from onnxopt.quantize.api import prepare_model

    ds = Dataset("<t>", arrays={"x": RNG.standard_normal((16, 8)).astype(np.float32)})
    prep = prepare_model(_jax(), ds)
    assert prep.counts["gelus_fused"] == 1 and prep.counts["layernorms_fused"] == 0
    assert "FastGelu" in [n.op_type for n in prep.model.graph.node] and "Tanh" not in [n.op_type for n in prep.model.graph.node]


def test_a_fused_node_named_as_reports_name_it_can_be_excluded():
    """Reports name a fused GELU ``<node>/FastGeluFusion`` (as ORT names its fusions):
    ``--exclude-nodes`` takes that name; a name no node or fusion has is still an error."""
    import onnxopt
    from onnxopt.errors import UsageError

    ds = Dataset("<t>", arrays={"x": RNG.standard_normal((32, 8)).astype(np.float32)})
    kw = dict(mode="static", calibration=ds, allow_slower=True, allow_collapse=True, timing=False)
    r = onnxopt.quantize(_jax(), exclude_nodes=["Mul_5/FastGeluFusion", "mm"], **kw)
    assert "mm" in [n.name for n in r.model.graph.node]  # left in float: still the MatMul
    with pytest.raises(UsageError, match="no node named 'Mul_5/Nothing'"):
        onnxopt.quantize(_jax(), exclude_nodes=["Mul_5/Nothing"], **kw)


def test_a_plain_tanh_activation_is_not_a_candidate_and_makes_no_note():
    m = _model([helper.make_node("Tanh", ["h"], ["y"], name="act")], [])
    m.graph.node[1].op_type = "MatMul"  # h made by a MatMul: no arithmetic to read
    m.graph.node[1].input[1] = "w"
    assert fuse_gelus(m) == (m, 0, [])
