"""Decomposed layer norms fused into LayerNormalization (``onnxopt.simplify.layernorm``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.core.passes import Context
from onnxopt.core.registry import make_pass
from onnxopt.data import Dataset
from onnxopt.runtime import create_session
from onnxopt.simplify.layernorm import find_layernorms, fuse_layernorms
from onnxopt.verify import REASSOCIATED_REL_L2, check_model

RNG = np.random.default_rng(0)


def _t(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def _flax(opset=15, scale=1 / 8, gamma_shape=(1, 8, 1)) -> onnx.ModelProto:
    """jax2tf's layer norm over axis 1 of [N, 8, 6]: sums scaled by 1/8, the "fast variance"
    ``mean(x*x) - mean(x)**2`` clamped at 0, keepdims=0 reductions put back by Unsqueeze."""
    inits = [
        _t("ax", np.array([1], np.int64)), _t("inv_n", np.float32(scale)), _t("zero", np.float32(0)), _t("eps", np.float32(1e-6)),
        _t("gamma", (RNG.standard_normal(gamma_shape) + 1).astype(np.float32)), _t("beta", RNG.standard_normal(gamma_shape).astype(np.float32)),
    ]  # fmt: skip
    nodes = [
        helper.make_node("ReduceSum", ["x", "ax"], ["s"], name="Sum", keepdims=0),
        helper.make_node("Mul", ["x", "x"], ["xx"], name="Square"),
        helper.make_node("ReduceSum", ["xx", "ax"], ["s2"], name="Sum_1", keepdims=0),
        helper.make_node("Mul", ["s", "inv_n"], ["m"], name="truediv"),
        helper.make_node("Mul", ["s2", "inv_n"], ["m2"], name="truediv_1"),
        helper.make_node("Mul", ["m", "m"], ["mm"], name="Square_1"),
        helper.make_node("Sub", ["m2", "mm"], ["v"], name="Sub"),
        helper.make_node("Max", ["zero", "v"], ["vc"], name="Maximum"),
        helper.make_node("Unsqueeze", ["vc", "ax"], ["vb"], name="Reshape_1"),
        helper.make_node("Add", ["vb", "eps"], ["ve"], name="AddV2"),
        helper.make_node("Sqrt", ["ve"], ["sd"], name="Rsqrt"),
        helper.make_node("Reciprocal", ["sd"], ["r"], name="Rsqrt_recip"),
        helper.make_node("Mul", ["r", "gamma"], ["rg"], name="Mul"),
        helper.make_node("Unsqueeze", ["m", "ax"], ["mb"], name="Reshape"),
        helper.make_node("Sub", ["x", "mb"], ["d"], name="Sub_1"),
        helper.make_node("Mul", ["d", "rg"], ["n"], name="Mul_1"),
        helper.make_node("Add", ["n", "beta"], ["ln"], name="AddV2_1"),
        helper.make_node("Relu", ["ln"], ["y"], name="relu"),
    ]
    io = [helper.make_tensor_value_info(k, TensorProto.FLOAT, ["N", 8, 6]) for k in "xy"]
    g = helper.make_graph(nodes, "flax", io[:1], io[1:], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _torch(opset=13) -> onnx.ModelProto:
    """torch.onnx's decomposed layer norm over the last axis: ReduceMean, Sub, Pow 2, Div."""
    inits = [_t("two", np.float32(2)), _t("eps", np.float32(1e-5))]
    inits += [_t(k, RNG.standard_normal(16).astype(np.float32)) for k in ("gamma", "beta")]
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], name="mean", axes=[-1]),
        helper.make_node("Sub", ["x", "m"], ["d"], name="sub"),
        helper.make_node("Pow", ["d", "two"], ["dd"], name="pow"),
        helper.make_node("ReduceMean", ["dd"], ["v"], name="var", axes=[-1]),
        helper.make_node("Add", ["v", "eps"], ["ve"], name="add_eps"),
        helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
        helper.make_node("Div", ["d", "sd"], ["n"], name="div"),
        helper.make_node("Mul", ["n", "gamma"], ["ng"], name="mul_gamma"),
        helper.make_node("Add", ["ng", "beta"], ["y"], name="add_beta"),
    ]
    io = [helper.make_tensor_value_info(k, TensorProto.FLOAT, ["N", 4, 16]) for k in "xy"]
    g = helper.make_graph(nodes, "torch", io[:1], io[1:], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    return m


def _run(m, x):
    return create_session(m).run(None, {"x": x})[0]


def _layernorm64(x, axes, gamma, beta, eps):
    x = x.astype(np.float64)
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * gamma + beta


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_flax_fast_variance_over_a_middle_axis_becomes_one_layernorm_between_transposes():
    m = _flax()
    x = (RNG.standard_normal((5, 8, 6)) * 3 + 2).astype(np.float32)
    out, n, notes = fuse_layernorms(m)
    assert n == 1 and any("opset 15 converted to 17" in s for s in notes)
    ops = [node.op_type for node in out.graph.node]
    assert ops == ["Transpose", "LayerNormalization", "Transpose", "Relu"]
    assert [o.version for o in out.opset_import if o.domain == ""] == [17]
    assert [node.op_type for node in m.graph.node][:2] == ["ReduceSum", "Mul"]  # the input is untouched
    check_model(out)
    inits = {t.name: t for t in m.graph.initializer}
    gamma, beta = (numpy_helper.to_array(inits[k]) for k in ("gamma", "beta"))
    want = np.maximum(_layernorm64(x, (1,), gamma, beta, 1e-6), 0)
    assert _rel(_run(out, x), want) < 1e-6
    assert _rel(_run(out, x), _run(m, x)) < REASSOCIATED_REL_L2


def test_torch_two_pass_form_over_the_last_axis_needs_no_transpose():
    m = _torch()
    x = RNG.standard_normal((3, 4, 16)).astype(np.float32)
    out, n, _ = fuse_layernorms(m)
    assert n == 1 and [node.op_type for node in out.graph.node] == ["LayerNormalization"]
    ln = out.graph.node[0]
    assert {a.name: helper.get_attribute_value(a) for a in ln.attribute} == {"axis": -1, "epsilon": pytest.approx(1e-5)}
    check_model(out)
    assert _rel(_run(out, x), _run(m, x)) < 1e-5


def test_a_tensor_of_unknown_rank_is_normalized_over_its_last_axes_sized_by_gamma():
    """paddle2onnx's reshapes leave shape inference without a rank: ``axes=[-1]`` and a
    16-wide gamma still make a LayerNormalization over the last axis."""
    m = _torch()
    g = m.graph
    g.node[0].input[0] = g.node[1].input[0] = "xr"
    g.node.insert(0, helper.make_node("Reshape", ["x", "s"], ["xr"], name="reshape"))
    g.input.append(helper.make_tensor_value_info("s", TensorProto.INT64, ["k"]))
    del g.output[0].type.tensor_type.shape.dim[:]
    g.input[0].type.tensor_type.shape.dim.pop()  # x: [N, 64]
    g.input[0].type.tensor_type.shape.dim[1].dim_value = 64
    out, n, _ = fuse_layernorms(m)
    assert n == 1 and [node.op_type for node in out.graph.node] == ["Reshape", "LayerNormalization"]
    assert [numpy_helper.to_array(t).shape for t in out.graph.initializer if "LayerNorm" in t.name] == [(16,), (16,)]
    check_model(out)
    x, shape = RNG.standard_normal((3, 64)).astype(np.float32), np.array([3, 4, 16], np.int64)
    want = create_session(m).run(None, {"x": x, "s": shape})[0]
    assert _rel(create_session(out).run(None, {"x": x, "s": shape})[0], want) < 1e-5


@pytest.mark.parametrize(
    "model, why",
    [
        (_flax(scale=1 / 7), "scales the sum by 0.142857, not by the mean's 0.125"),
        (_flax(gamma_shape=(1, 8, 6)), "gamma [1, 8, 6] varies along axes that are not normalized [-2]"),
    ],
)
def test_what_is_not_a_layer_norm_is_left_alone_and_says_why(model, why):
    out, n, notes = fuse_layernorms(model)
    assert n == 0 and out is model
    assert len(notes) == 1 and why in notes[0] and "'Rsqrt' not fused" in notes[0]
    assert find_layernorms(model)[0] == []


def test_the_pass_is_registered_and_verified_within_its_own_limit():
    m = _flax()
    ds = Dataset("<t>", arrays={"x": (RNG.standard_normal((16, 8, 6)) * 3 + 2).astype(np.float32)})
    p = make_pass("fuse-layernorm")
    assert p.limit == REASSOCIATED_REL_L2
    res = p(m, Context(data=ds))
    assert res.modified and res.report.counts == {"layernorms_fused": 1}
    again = p(res.model, Context(data=ds))
    assert not again.modified and again.report.notes == []


def test_static_quantization_prepares_a_fused_layer_norm():
    """Before static INT8, the decomposed layer norm is fused: ORT's quantizer then puts
    Q/DQ around the LayerNormalization only, none between its elementwise ops."""
    from onnxopt.quantize.api import prepare_model

    m = _flax()
    ds = Dataset("<t>", arrays={"x": (RNG.standard_normal((16, 8, 6)) * 3 + 2).astype(np.float32)})
    prep = prepare_model(m, ds)
    assert prep.counts["layernorms_fused"] == 1 and prep.limit == REASSOCIATED_REL_L2
    assert "LayerNormalization" in [n.op_type for n in prep.model.graph.node]
    assert not {"ReduceSum", "Sqrt", "Reciprocal"} & {n.op_type for n in prep.model.graph.node}


def test_a_recipe_step_is_held_to_the_pass_limit(tmp_path):
    """``onnxopt run`` with a ``fuse-layernorm`` step: the step's outputs are compared with
    the input's within the pass's limit, reported in the step's verification."""
    from click.testing import CliRunner

    from onnxopt.cli.main import cli

    src, out, recipe = tmp_path / "m.onnx", tmp_path / "out.onnx", tmp_path / "r.toml"
    onnx.save(_flax(), src)
    recipe.write_text('name = "ln"\ntarget = "cpu"\n[[steps]]\npass = "fuse-layernorm"\n')
    r = CliRunner().invoke(cli, ["run", str(recipe), str(src), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "LayerNormalization" in [n.op_type for n in onnx.load(out).graph.node]


def test_check_comparison_takes_the_pass_limit():
    from onnxopt.errors import VerificationError
    from onnxopt.verify import check_comparison, compare_outputs

    a = np.linspace(1, 2, 100, dtype=np.float32)
    comp = compare_outputs(["y"], [a], [a * (1 + 4e-4)])
    with pytest.raises(VerificationError, match="limit 0.0001"):
        check_comparison(comp, "step", exact=True)
    check_comparison(comp, "step", exact=True, limit=REASSOCIATED_REL_L2)
    assert comp.inexact(REASSOCIATED_REL_L2) == [] and len(comp.inexact()) == 1


def test_the_offline_optimized_graph_of_an_opset_13_layer_norm_passes_the_checker():
    """ORT's own fusion writes LayerNormalization at the model's opset 13, which onnx.checker
    does not know (PP-OCRv4 rec's ort-offline candidate failed so): the layer norm is fused
    by us first, the opset converted to 17."""
    from onnxopt.serving.offline import ort_optimized

    m = _torch(opset=13)
    out = ort_optimized(m)
    assert [o.version for o in out.opset_import if o.domain == ""] == [17]
    assert "LayerNormalization" in {n.op_type for n in out.graph.node}
    check_model(out)
    x = RNG.standard_normal((3, 4, 16)).astype(np.float32)
    assert _rel(_run(out, x), _run(m, x)) < 1e-5
