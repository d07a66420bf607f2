"""merge.py through the API: namespacing (subgraphs, functions), shared inputs, outputs, opsets."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxopt.ensemble.api import ensemble
from onnxopt.errors import InputError, UsageError
from onnxopt.graph import iter_graphs
from onnxopt.verify import check_model
from tests.ensemble.ensemble_models import (
    mlp,
    paddle_like,
    reduce_mean_model,
    two_outputs,
    with_if_and_function,
)


def _defined(model):
    names = []
    for g in iter_graphs(model.graph):
        names += [t.name for t in g.initializer] + [o for n in g.node for o in n.output if o]
    return names


def test_identical_members_are_namespaced_apart():
    a = mlp(0)
    res = ensemble([a, a], fusion="mean", keep_member_outputs=True)
    m = res.model
    names = _defined(m)
    assert len(names) == len(set(names))
    assert {o.name for o in m.graph.output} == {"y", "m0/y", "m1/y"}
    assert [i.name for i in m.graph.input] == ["x"]
    assert all(n.name.startswith(("m0/", "m1/", "ensemble/")) for n in m.graph.node)
    check_model(m)  # checker (strict shape inference) + ORT load
    assert res.report["parity"]["ok"]


def test_subgraphs_and_local_functions_keep_their_meaning(tmp_path):
    # same function name 'local.Act' with different bodies; If branches read outer-scope values
    a, b = with_if_and_function(0, act="Relu"), with_if_and_function(1, act="Sigmoid")
    x = np.random.default_rng(0).standard_normal((64, 6)).astype(np.float32)
    x[:32] = np.abs(x[:32])  # first batch (32 samples) takes the then-branch,
    x[32:] = -np.abs(x[32:])  # the second the else-branch
    np.savez(tmp_path / "d.npz", x=x)
    res = ensemble([a, b], fusion="mean", data=tmp_path / "d.npz")
    m = res.model
    assert sorted(f.name for f in m.functions) == ["m0_Act", "m1_Act"]
    calls = sorted(n.op_type for g in iter_graphs(m.graph) for n in g.node if n.domain == "local")
    assert calls == ["m0_Act", "m1_Act"]
    then_reads = {x for g in iter_graphs(m.graph) for n in g.node if n.op_type == "Mul" for x in n.input}
    assert {"m0/h", "m0/scale", "m1/h", "m1/scale"} <= then_reads
    assert res.report["parity"]["ok"] and res.report["parity"]["samples"] == 64
    assert all(o["max_abs"] <= 1e-6 for o in res.report["parity"]["members"])


def test_input_map_renames_member_inputs():
    a, b = mlp(0), mlp(1, in_name="features")
    with pytest.raises(InputError, match="--input-map"):
        ensemble([a, b])
    res = ensemble([a, b], input_map={"features": "x"})
    assert [i.name for i in res.model.graph.input] == ["x"]
    with pytest.raises(UsageError, match="names no input"):
        ensemble([a, b], input_map={"features": "x", "nothing": "x"})


def test_incompatible_input_dtypes_and_shapes():
    with pytest.raises(InputError, match="incompatible dtypes"):
        ensemble([mlp(0), mlp(1, dtype=onnx.TensorProto.DOUBLE)])
    with pytest.raises(InputError, match="incompatible shapes"):
        ensemble([mlp(0), mlp(1, features=7)])


def test_output_selection():
    a, b = mlp(0), two_outputs(1)
    with pytest.raises(UsageError, match="different numbers of outputs"):
        ensemble([a, b])
    res = ensemble([a, b], output="y", keep_member_outputs=True)
    assert [o.name for o in res.model.graph.output] == ["y", "m0/y", "m1/y"]
    assert res.report["members"][1]["selected_outputs"] == ["y"]
    with pytest.raises(InputError, match="has no output 'nope'"):
        ensemble([a, b], output="nope")
    # position-wise fusion of two outputs each
    res = ensemble([two_outputs(1), two_outputs(2)], fusion="vote")
    assert [o.name for o in res.model.graph.output] == ["y_label", "y_votes", "feat_label", "feat_votes"]


def test_output_shapes_must_agree():
    with pytest.raises(InputError, match="incompatible with"):
        ensemble([mlp(0, classes=4), mlp(1, classes=5)])


def test_opset_reconciliation_converts_and_reports():
    old, new = reduce_mean_model(0, opset=13), reduce_mean_model(1, opset=18)
    res = ensemble([old, new])
    assert res.report["opset"] == {"": 18}
    (conv,) = res.report["conversions"]
    assert (conv["member"], conv["from"], conv["to"]) == ("member0", 13, 18)
    assert conv["ops_changed"]["ReduceMean"] == "since 13 -> since 18"
    assert conv["nodes_after"] > conv["nodes_before"]  # axes became a Constant input
    assert {o.version for o in res.model.opset_import if o.domain in ("", "ai.onnx")} == {18}
    # parity compares with the members as given (the opset-13 original), so conversion is verified
    assert res.report["parity"]["ok"]


def test_old_opsets_are_raised_to_the_head_minimum():
    res = ensemble([mlp(0, opset=11), mlp(1, opset=11)], fusion="vote")
    assert res.report["opset"][""] == 13
    assert len(res.report["conversions"]) == 2


def test_local_functions_survive_opset_conversion(tmp_path):
    # onnx.version_converter drops model.functions: the merge must carry them over
    fn, new = with_if_and_function(0), reduce_mean_model(1, opset=18)
    x = -np.abs(np.random.default_rng(1).standard_normal((16, 6)).astype(np.float32))  # else-branch: calls local.Act
    np.savez(tmp_path / "d.npz", x=x)
    res = ensemble([fn, new], data=tmp_path / "d.npz", keep_member_outputs=True)
    assert res.report["opset"][""] == 18 and res.report["conversions"][0]["member"] == "member0"
    assert [f.name for f in res.model.functions] == ["m0_Act"]
    check_model(res.model)
    assert res.report["parity"]["ok"] and all(o["max_abs"] <= 1e-6 for o in res.report["parity"]["members"])


def test_weights_in_constant_nodes_are_stored_once():
    # PaddlePaddle-style members (every weight a Constant node, opset 11, batch dim -1)
    a = paddle_like(0, channels=16)
    res = ensemble([a, a, a])
    m = res.model
    consts = [n for n in m.graph.node if n.op_type == "Constant"]
    assert len(consts) == sum(1 for n in a.graph.node if n.op_type == "Constant")  # one copy, not three
    sh = res.report["shared_initializers"]
    assert sh["initializers_merged"] == 2 * len(consts) and sh["bytes_saved"] > 20_000
    assert res.report["size"]["ratio"] < 0.45
    # every reader of a removed copy reads the kept one, which comes before it
    defined = {i.name for i in m.graph.input} | {t.name for t in m.graph.initializer}
    for n in m.graph.node:
        assert all(x in defined for x in n.input if x), n.name
        defined.update(n.output)
    check_model(m)
    assert res.report["parity"]["ok"] and all(o["max_abs"] == 0.0 for o in res.report["parity"]["members"])


def test_negative_dim_value_is_a_dynamic_dim():
    # PaddlePaddle writes dim_value -1 for a dynamic batch: it is not a fixed size -1
    from onnx import helper

    from onnxopt.ensemble.merge import value_shape

    assert value_shape(paddle_like(0).graph.input[0]) == (None, 2, 5, 5)
    fixed = paddle_like(1)
    fixed.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 2, 5, 5]))
    res = ensemble([paddle_like(0), fixed])
    assert res.report["inputs"] == [{"name": "x", "dtype": "float32", "shape": "[3,2,5,5]"}]
    assert res.report["parity"]["ok"] and res.report["parity"]["samples"] == 3
