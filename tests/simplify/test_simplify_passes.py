"""The simplification passes one by one: structure (what changed), validity, numbers."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.simplify import passes as sp
from onnxopt.simplify.constants import constants_to_initializers
from onnxopt.simplify.dead import remove_unused
from onnxopt.simplify.dedupe import dedupe_initializers
from onnxopt.simplify.fold import fold_constants
from onnxopt.verify import check_model, verify
from tests.toy_models import if_model, messy_mlp, tiny_cnn


def _ops(model):
    return [n.op_type for n in model.graph.node]


def _model(nodes, inputs, outputs, inits=(), ir=8):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = ir
    return m


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _assert_same_outputs(a, b):
    comp = verify(a, b)
    assert comp and comp.worst_rel_l2 <= 1e-6


def test_constants_to_initializers_all_forms():
    nodes = [
        helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(np.ones(2, np.float32))),
        helper.make_node("Constant", [], ["f"], value_float=2.0),
        helper.make_node("Constant", [], ["fs"], value_floats=[1.0, 2.0]),
        helper.make_node("Constant", [], ["i"], value_int=3),
        helper.make_node("Constant", [], ["is"], value_ints=[1, 2]),
        helper.make_node("Constant", [], ["s"], value_string="keep me"),
        helper.make_node("Add", ["x", "t"], ["a"]),
        helper.make_node("Mul", ["a", "f"], ["b"]),
        helper.make_node("Add", ["b", "fs"], ["y"]),
        helper.make_node("Add", ["i", "is"], ["z"]),
        helper.make_node("Identity", ["s"], ["w"]),
    ]
    m = _model(nodes, [_vi("x", [2])], [_vi("y", [2]), _vi("z", [2], TensorProto.INT64), _vi("w", [], TensorProto.STRING)])
    onnx.checker.check_model(m, full_check=True)
    out = copy.deepcopy(m)
    assert constants_to_initializers(out) == 5
    assert _ops(out) == ["Constant", "Add", "Mul", "Add", "Add", "Identity"]  # the string stays a node
    got = {t.name: numpy_helper.to_array(t).tolist() for t in out.graph.initializer}
    assert got == {"t": [1.0, 1.0], "f": 2.0, "fs": [1.0, 2.0], "i": 3, "is": [1, 2]}
    check_model(out)


def test_constants_to_initializers_ir3_adds_inputs():
    m = messy_mlp()
    m.ir_version = 3
    for t in m.graph.initializer:
        m.graph.input.append(_vi(t.name, list(t.dims)))
    assert constants_to_initializers(m) == 2
    inputs = {i.name for i in m.graph.input}
    assert {"b1", "b2"} <= inputs


def test_fold_constants_and_refusals():
    m = messy_mlp()
    constants_to_initializers(m)
    n, notes = fold_constants(m)
    assert n == 1 and "fold_me" not in [x.name for x in m.graph.node]
    assert "bias" in {t.name for t in m.graph.initializer}
    _assert_same_outputs(messy_mlp(), m)


def test_fold_refuses_bloat_random_overridable_and_graph_outputs():
    shape = numpy_helper.from_array(np.array([1024, 1024], np.int64), "shape")
    c = numpy_helper.from_array(np.ones(3, np.float32), "c")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"]),  # 4 MB out of 16 bytes
        helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
        helper.make_node("RandomNormal", [], ["r"], shape=[3], seed=1.0),
        helper.make_node("Add", ["c", "over"], ["co"]),  # 'over' is an initializer a graph input overrides
        helper.make_node("Add", ["c", "c"], ["out2"]),  # produces a graph output
        helper.make_node("Add", ["x", "s"], ["y0"]),
        helper.make_node("Add", ["y0", "co"], ["y1"]),
        helper.make_node("Mul", ["r", "zero"], ["rz"]),
        helper.make_node("Add", ["y1", "rz"], ["y"]),
    ]
    inits = [shape, c, numpy_helper.from_array(np.ones(3, np.float32), "over"), numpy_helper.from_array(np.zeros(3, np.float32), "zero")]
    m = _model(nodes, [_vi("x", [3]), _vi("over", [3])], [_vi("y", [3]), _vi("out2", [3])], inits)
    onnx.checker.check_model(m, full_check=True)
    out = copy.deepcopy(m)
    n, notes = fold_constants(out)
    assert n == 0, _ops(out)
    assert any("grow the file" in note for note in notes)
    assert _ops(out) == _ops(m)


def test_fold_static_shape_and_subgraph_note():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "sf"], ["y"]),
    ]
    m = _model(nodes, [_vi("x", [2])], [_vi("y", [2])])
    n, _ = fold_constants(m)
    assert n == 2 and _ops(m) == ["Add"]
    assert numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == "sf")).tolist() == [2.0]
    n, notes = fold_constants(if_model())
    assert n == 0 and any("If/Loop/Scan bodies left intact" in x for x in notes)


def test_remove_unused_keeps_outer_scope_reads():
    m = messy_mlp()
    counts = remove_unused(m)
    assert counts["nodes"] == 1 and counts["initializers"] == 1
    assert "dead_node" not in [n.name for n in m.graph.node] and "unused_junk" not in {t.name for t in m.graph.initializer}
    ifm = if_model()
    ifm.graph.initializer.append(numpy_helper.from_array(np.zeros(2, np.float32), "really_unused"))
    counts = remove_unused(ifm)
    assert counts["initializers"] == 1 and {t.name for t in ifm.graph.initializer} == {"W"}  # W read inside the branches
    check_model(ifm)


def test_remove_unused_functions():
    m = messy_mlp()
    unused_fn = helper.make_function("local", "Unused", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])], [helper.make_opsetid("", 17)])
    m.functions.append(unused_fn)
    m.opset_import.append(helper.make_opsetid("local", 1))
    counts = remove_unused(m)
    assert counts.get("functions") == 1 and not m.functions


def test_dedupe_initializers():
    m = messy_mlp()
    assert dedupe_initializers(m) == 1
    assert "b_dup" not in {t.name for t in m.graph.initializer}
    assert [n.input[1] for n in m.graph.node if n.name == "add3"] == ["b_keep"]
    _assert_same_outputs(messy_mlp(), m)
    # a graph-input-backed (overridable) initializer is never merged
    m = messy_mlp()
    m.graph.input.append(_vi("b_dup", [3]))
    assert dedupe_initializers(m) == 0


def test_dedupe_renames_reads_inside_subgraphs():
    m = if_model()
    w = numpy_helper.to_array(m.graph.initializer[0])
    m.graph.initializer.insert(0, numpy_helper.from_array(w.copy(), "W_first"))
    m.graph.node.insert(0, helper.make_node("Identity", ["W_first"], ["unused_copy"]))
    assert dedupe_initializers(m) == 1
    branch_inputs = {x for a in m.graph.node[-1].attribute for n in a.g.node for x in n.input}
    assert "W_first" in branch_inputs and "W" not in branch_inputs


def test_infer_shapes_pass():
    m = messy_mlp()
    res = sp.InferShapesPass()(m)
    assert res.modified and res.report.counts["value_info_added"] >= 5
    assert not sp.InferShapesPass()(res.model).modified


def test_simplify_pass_fuses_batchnorm_and_strips_onnxsim_metadata():
    res = sp.SimplifyPass()(tiny_cnn())
    assert res.modified and res.report.counts["engine"] == "onnxsim"
    assert "BatchNormalization" not in _ops(res.model)
    assert not [p.key for p in res.model.metadata_props if p.key.startswith("onnxsim")]
    _assert_same_outputs(tiny_cnn(), res.model)


def test_simplify_pass_leaves_overridable_initializers():
    m = tiny_cnn()
    m.graph.input.append(_vi("bn.scale", [4]))  # IR >= 4: the user may feed a new scale
    res = sp.SimplifyPass()(m)
    assert "BatchNormalization" in _ops(res.model) and "bn.scale" in {i.name for i in res.model.graph.input}


def test_simplify_pass_without_onnxsim_and_fallbacks(monkeypatch):
    res = sp.SimplifyPass(onnxsim=False)(messy_mlp())
    assert res.report.counts["engine"] == "onnxopt" and res.modified
    assert _ops(res.model) == ["MatMul", "Add", "Relu", "MatMul", "Add", "Add"]
    assert len(res.model.graph.initializer) == 4
    # onnxsim failing is a note, never an error
    monkeypatch.setattr(sp, "run_onnxsim", lambda model, **kw: (None, "onnxsim failed (RuntimeError: boom); used onnxopt's own passes"))
    res = sp.SimplifyPass()(messy_mlp())
    assert res.report.counts["engine"] == "onnxopt" and any("boom" in n for n in res.report.notes)


def test_simplify_pass_returns_input_when_no_candidate_verifies(monkeypatch):
    def corrupt(model, max_fold_bytes):
        for t in model.graph.initializer:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 2, t.name))
        return {}, []

    monkeypatch.setattr(sp, "run_onnxsim", lambda model, **kw: (None, "onnxsim skipped"))
    monkeypatch.setattr(sp, "own_simplify", corrupt)
    m = messy_mlp()
    res = sp.SimplifyPass()(m)
    assert not res.modified and res.report.counts["engine"] == "none"
    assert any("rejected" in n for n in res.report.notes)
    assert res.model.SerializeToString() == m.SerializeToString()


@pytest.mark.parametrize("key", ["fold-constants", "remove-unused", "dedupe-initializers", "constants-to-initializers", "simplify"])
def test_passes_keep_if_subgraphs_valid(key):
    from onnxopt.core.registry import make_pass

    res = make_pass(key)(if_model())
    check_model(res.model)
    assert "If" in _ops(res.model)
    _assert_same_outputs(if_model(), res.model)
