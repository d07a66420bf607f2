"""horizontal.py (--fuse-members) and share.py: structure of the fused graph, parity, refusals."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from onnxopt.ensemble.api import ensemble
from onnxopt.ensemble.horizontal import group_members, signature
from onnxopt.ensemble.merge import load_members, match_inputs, reconcile_opsets, select_outputs
from onnxopt.stats import model_stats
from tests.ensemble.ensemble_models import convnet, mlp, reduce_head


def _ops(model):
    return [n.op_type for n in model.graph.node]


def _exact(res):
    """Every member value inside the fused graph equals the member run alone (within 1e-5)."""
    par = res.report["parity"]
    assert par["ok"]
    for o in par["members"]:
        assert o["max_abs"] <= 1e-5, o


def test_conv_members_become_one_conv_then_grouped_convs():
    members = [convnet(s) for s in (0, 1, 2)]
    res = ensemble(members, fusion="mean", fuse_members=True, keep_member_outputs=True)
    convs = [n for n in res.model.graph.node if n.op_type == "Conv"]
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in convs]
    assert groups == [1, 3]  # stacked first conv on the shared input, then one grouped conv
    w = {t.name: t for t in res.model.graph.initializer}[convs[1].input[1]]
    assert list(w.dims) == [12, 4, 3, 3]
    assert _ops(res.model).count("BatchNormalization") == 1 and _ops(res.model).count("Gemm") == 1
    (grp,) = res.report["horizontal"]["groups"]
    assert grp["applied"] and grp["nodes_after"] < grp["nodes_before"]
    assert grp["counts"]["convs_grouped"] == 1 and grp["counts"]["gemms_block_diagonal"] == 1
    _exact(res)


def test_wide_gemms_run_per_member_on_cpu():
    members = [mlp(s, hidden=200, classes=120) for s in (0, 1, 2)]  # a 600x360 block diagonal is too big
    res = ensemble(members, fusion="weighted", weights=[1, 2, 1], fuse_members=True)
    ops = _ops(res.model)
    # first layer stacked into one Gemm on the shared input, then Split and one Gemm per member
    assert ops.count("Gemm") == 4 and ops.count("Split") == 1 and "MatMul" not in ops
    (grp,) = res.report["horizontal"]["groups"]
    assert grp["counts"]["gemms_stacked"] == 1 and grp["counts"]["wide_per_member"] == 1
    _exact(res)


def test_wide_gemms_as_one_batched_matmul():
    import onnxruntime as ort

    from onnxopt.ensemble.horizontal import fuse_group
    from onnxopt.ensemble.merge import assemble

    models = [mlp(s, hidden=200, classes=120) for s in (0, 1, 2)]
    ms = load_members(models)
    _, ir, _, _ = reconcile_opsets(ms)
    inputs = match_inputs(ms)
    select_outputs(ms)
    part, rep = fuse_group(ms, "g0/", wide="batched")
    assert rep["counts"]["batched_matmuls"] == 1 and rep["counts"]["layout_changes"] == 1
    outs = list(part.output_info.values())
    model = assemble([part], inputs, outs, {"": 17}, ir, name="fused")
    mm = next(n for n in model.graph.node if n.op_type == "MatMul")
    assert list({t.name: t for t in model.graph.initializer}[mm.input[1]].dims) == [3, 200, 120]
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for m, g in zip(models, got, strict=True):
        ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5)


def test_shared_backbone_is_computed_once_and_stored_once():
    members = [mlp(0, hidden=32, head_seed=s) for s in (1, 2, 3)]  # identical first layer
    plain = ensemble(members, fusion="mean")
    sh = plain.report["shared_initializers"]
    assert sh["initializers_merged"] == 4 and sh["tensors_shared_across_members"] == 2
    assert sh["bytes_saved"] == 2 * (32 * 6 + 32) * 4
    fused = ensemble(members, fusion="mean", fuse_members=True)
    (grp,) = fused.report["horizontal"]["groups"]
    assert grp["counts"]["computed_once"] == 2  # first Gemm and its Relu
    assert _ops(fused.model).count("Gemm") == 2
    first, head = (32 * 6 + 32) * 4, (4 * 32 + 4) * 4
    assert model_stats(members[0])["bytes"] == first + head
    assert model_stats(fused.model)["bytes"] <= first + 3 * head + 64  # + a few int64 Slice bounds
    _exact(fused)


def test_an_op_without_stacked_form_runs_per_member_from_there_on():
    res = ensemble([reduce_head(0), reduce_head(1)], fusion="mean", fuse_members=True)
    (grp,) = res.report["horizontal"]["groups"]
    assert grp["applied"] and any("CumSum" in n and "per member" in n for n in grp["notes"])
    ops = _ops(res.model)
    assert ops.count("Gemm") == 1 and ops.count("CumSum") == 2 and ops.count("ReduceMax") == 2  # stacked first layer, then per member
    assert any("CumSum" in n for n in res.report["horizontal"]["notes"])
    _exact(res)


def test_mixed_architectures_fuse_per_group():
    members = [mlp(0), mlp(1, hidden=9), mlp(2)]
    res = ensemble(members, fusion="vote", fuse_members=True)
    (grp,) = res.report["horizontal"]["groups"]
    assert grp["members"] == ["member0", "member2"]
    assert res.report["parity"]["ok"]


def test_signature_ignores_weights_but_not_structure():
    ms = load_members([mlp(0), mlp(5), mlp(0, hidden=9)])
    reconcile_opsets(ms)
    match_inputs(ms)
    select_outputs(ms)
    sigs = [signature(m.model, m.input_rename)[0] for m in ms]
    assert sigs[0] == sigs[1] != sigs[2]
    groups, reasons = group_members(ms)
    assert [len(g) for g in groups] == [2, 1] and not reasons


@pytest.mark.parametrize("fusion", ["mean", "vote"])
def test_fused_is_deterministic(fusion):
    members = [convnet(s) for s in (0, 1)]
    a = ensemble(members, fusion=fusion, fuse_members=True, parallel=False).model.SerializeToString(deterministic=True)
    b = ensemble(members, fusion=fusion, fuse_members=True, parallel=False).model.SerializeToString(deterministic=True)
    assert a == b


def test_fused_equals_plain_merge_numerically():
    import onnxruntime as ort

    members = [convnet(s) for s in (3, 4, 5)]
    plain = ensemble(members, fusion="mean").model
    fused = ensemble(members, fusion="mean", fuse_members=True).model
    x = np.random.default_rng(0).standard_normal((7, 2, 5, 5)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0] for m in (plain, fused)]
    np.testing.assert_allclose(run[0], run[1], rtol=1e-5, atol=1e-6)


def test_per_member_constant_on_the_shared_input_starts_a_batched_layout():
    from tests.ensemble.ensemble_models import offset_mlp

    res = ensemble([offset_mlp(s) for s in (0, 1, 2)], fusion="mean", fuse_members=True)
    (grp,) = res.report["horizontal"]["groups"]
    assert grp["applied"], grp
    sub = next(n for n in res.model.graph.node if n.op_type == "Sub")
    assert list({t.name: t for t in res.model.graph.initializer}[sub.input[1]].dims) == [3, 1, 6]  # [M, 1, F]: broadcast over the batch
    _exact(res)


def test_paddle_style_members_fuse_end_to_end(tmp_path):
    # weights in Constant nodes, per-member biases reshaped before the Add (folded per member
    # in numpy), a Reshape whose target comes from Shape (shared, computed once), a MatMul head
    from tests.ensemble.ensemble_models import paddle_like

    members = [paddle_like(s) for s in (0, 1, 2)]
    x = np.random.default_rng(0).standard_normal((6, 2, 5, 5)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    res = ensemble(members, fusion="mean", fuse_members=True, data=tmp_path / "d.npz", keep_member_outputs=True)
    (grp,) = res.report["horizontal"]["groups"]
    assert grp["applied"] and grp["notes"] == [], grp["notes"]  # nothing fell back to per-member nodes
    c = grp["counts"]
    assert c["folded_per_member"] == 2 and c["convs_stacked"] == 1 and c["convs_grouped"] == 1 and c["matmuls_block_diagonal"] == 1
    assert "per_member_nodes" not in c
    ops = _ops(res.model)
    assert ops.count("Conv") == 2 and ops.count("MatMul") == 1 and ops.count("Reshape") >= 1
    bias = {t.name: t for t in res.model.graph.initializer}
    add1 = next(n for n in res.model.graph.node if n.op_type == "Add")
    assert list(bias[add1.input[1]].dims) == [1, 12, 1, 1]  # three [1,4,1,1] biases, folded and stacked
    _exact(res)
    assert res.report["parity"]["samples"] == 6


def test_matmul_on_the_shared_input_is_stacked():
    from tests.ensemble.ensemble_models import matmul_mlp

    res = ensemble([matmul_mlp(s) for s in (0, 1, 2)], fusion="mean", fuse_members=True)
    (grp,) = res.report["horizontal"]["groups"]
    assert grp["counts"]["matmuls_stacked"] == 1 and grp["counts"]["matmuls_block_diagonal"] == 1, grp
    mm = [n for n in res.model.graph.node if n.op_type == "MatMul"]
    w = {t.name: t for t in res.model.graph.initializer}
    assert [list(w[n.input[1]].dims) for n in mm] == [[6, 24], [24, 12]]
    _exact(res)


@pytest.mark.parametrize("opset", [13, 18])  # ReduceMean's axes: attribute at 13, input at 18
def test_reduce_expand_squeeze_slice_stay_stacked(opset):
    from tests.ensemble.ensemble_models import norm_block

    members = [norm_block(s, opset=opset) for s in (0, 1, 2)]
    x = np.random.default_rng(2).standard_normal((5, 6)).astype(np.float32)
    res = ensemble(members, fusion="mean", fuse_members=True, keep_member_outputs=True)
    (grp,) = res.report["horizontal"]["groups"]
    assert grp["applied"] and grp["notes"] == [], grp["notes"]
    assert "per_member_nodes" not in grp["counts"], grp["counts"]
    ops = [n.op_type for n in res.model.graph.node if "/member" not in n.name]  # not the per-member output cuts
    for op in ("ReduceMean", "ReduceSum", "Expand", "Unsqueeze", "Squeeze", "Slice"):
        assert ops.count(op) == 1, (op, ops)
    _exact(res)
    sess = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x}), strict=True))
    for j, m in enumerate(members):
        ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(got[f"m{j}/y"], ref, rtol=1e-5, atol=1e-6)
