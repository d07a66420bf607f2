"""heads.py: each fusion head in ONNX Runtime equals its numpy reference; vote ties."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxopt.ensemble.fit import StackHead, softmax
from onnxopt.ensemble.heads import Fusion, HeadIO, build_head, output_names, reference


def _run_head(fusion: Fusion, arrays: list[np.ndarray], shapes=None):
    M = len(arrays)
    C = arrays[0].shape[-1]
    names = [f"x{i}" for i in range(M)]
    shapes = shapes or [("N", a.shape[-1]) for a in arrays]
    io = HeadIO(names, TensorProto.FLOAT, shapes, output_names(fusion.kind, "y", 1))
    nodes, inits, outs = build_head(fusion, io, prefix="ens/", taken=set(names))
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", a.shape[-1]]) for n, a in zip(names, arrays, strict=True)]
    model = helper.make_model(helper.make_graph(nodes, "head", inputs, outs, initializer=inits), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    del C
    return [o.name for o in outs], sess.run(None, {n: a for n, a in zip(names, arrays, strict=True)})


def _members(M=3, N=16, C=5, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((N, C)) * 3).astype(np.float32) for _ in range(M)]


@pytest.mark.parametrize("soft", [False, True])
def test_mean_and_weighted_match_numpy(soft):
    xs = _members()
    for fusion in (Fusion("mean", softmax=soft), Fusion("weighted", [0.5, 0.3, 0.2], softmax=soft)):
        names, got = _run_head(fusion, xs)
        assert names == ["y"]
        ref = reference(fusion, xs)
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-6)
    if soft:
        np.testing.assert_allclose(got[0].sum(axis=1), 1.0, rtol=1e-5)
    # the formula itself, independent of heads.reference
    np.testing.assert_allclose(reference(Fusion("weighted", [0.5, 0.3, 0.2]), xs)[0], 0.5 * xs[0] + 0.3 * xs[1] + 0.2 * xs[2], rtol=1e-5, atol=1e-6)


def test_vote_counts_and_ties_go_to_the_lowest_class():
    # sample 0: member argmaxes 2, 2, 1 -> class 2 with 2 votes
    # sample 1: argmaxes 3, 1, 0 -> three-way tie -> lowest index 0
    # sample 2: member 0 has equal top scores at classes 1 and 3 -> it votes 1; others vote 3, 1 -> class 1
    xs = [np.zeros((3, 4), np.float32) for _ in range(3)]
    xs[0][0, 2] = xs[1][0, 2] = xs[2][0, 1] = 1
    xs[0][1, 3] = xs[1][1, 1] = xs[2][1, 0] = 1
    xs[0][2, 1] = xs[0][2, 3] = 1
    xs[1][2, 3] = xs[2][2, 1] = 1
    names, (label, votes) = _run_head(Fusion("vote"), xs)
    assert names == ["label", "votes"]
    np.testing.assert_array_equal(label, [2, 0, 1])
    np.testing.assert_array_equal(votes, [[0, 1, 2, 0], [1, 1, 0, 1], [0, 2, 0, 1]])
    ref = reference(Fusion("vote"), xs)
    np.testing.assert_array_equal(ref[0], label)
    np.testing.assert_array_equal(ref[1], votes)


def test_weighted_vote_and_dynamic_class_count():
    xs = _members(M=3, N=32, C=6, seed=3)
    fusion = Fusion("vote", weights=[3.0, 1.0, 1.0])
    _, (label, votes) = _run_head(fusion, xs, shapes=[("N", None)] * 3)  # depth from Shape at run time
    ref = reference(fusion, xs)
    np.testing.assert_array_equal(label, ref[0])
    np.testing.assert_allclose(votes, ref[1])
    np.testing.assert_array_equal(label, np.argmax(xs[0], axis=1))  # weight 3 outvotes the other two
    np.testing.assert_allclose(votes.sum(axis=1), 5.0)


def test_stack_head_matches_numpy():
    xs = _members(M=2, N=10, C=4)
    rng = np.random.default_rng(5)
    head = StackHead(rng.standard_normal((8, 4)), rng.standard_normal(4), "logistic", 0.1)
    fusion = Fusion("stack", head=head)
    names, got = _run_head(fusion, xs)
    assert names == ["probabilities"]
    expect = softmax(np.concatenate(xs, axis=1).astype(np.float64) @ head.W.astype(np.float32) + head.b.astype(np.float32))
    np.testing.assert_allclose(got[0], expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reference(fusion, xs)[0], expect, rtol=1e-6, atol=1e-7)


def test_output_names():
    assert output_names("mean", "logits", 1) == ["logits"]
    assert output_names("vote", "logits", 1) == ["label", "votes"]
    assert output_names("vote", "a", 2) == ["a_label", "a_votes"]
    assert output_names("stack", "a", 2) == ["a_probabilities"]


@pytest.mark.parametrize("dtype", [TensorProto.DOUBLE, TensorProto.FLOAT16])
@pytest.mark.parametrize(
    "fusion,kw",
    [("mean", {}), ("mean", {"softmax": True}), ("weighted", {"weights": [1, 3]}), ("vote", {}), ("vote", {"weights": [0.3, 0.7]}), ("stack", {"fit": True})],
)
def test_float64_and_float16_members(tmp_path, dtype, fusion, kw):
    # ORT's CPU provider has no float64 Mean / OneHot kernels; float16 heads round per op
    from onnxopt.ensemble.api import ensemble
    from onnxopt.ensemble.parity import FP16_REL_L2
    from tests.ensemble.ensemble_models import labelled_data, mlp

    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    labelled_data(tmp_path / "d.npz", n=64)
    d = dict(np.load(tmp_path / "d.npz"))
    np.savez(tmp_path / "d.npz", x=d["x"].astype(np_dtype), labels=d["labels"])
    kw = dict(kw, fit=tmp_path / "d.npz") if kw.get("fit") else kw
    members = [mlp(0, dtype=dtype), mlp(1, dtype=dtype)]
    res = ensemble(members, fusion=fusion, data=tmp_path / "d.npz", **kw)
    out = res.model.graph.output
    assert out[-1].type.tensor_type.elem_type == dtype  # scores / votes / probabilities keep the members' dtype
    par = res.report["parity"]
    assert par["ok"] and par["samples"] == 64
    limit = FP16_REL_L2 if dtype == TensorProto.FLOAT16 else 1e-12
    assert all(o.get("rel_l2", 0.0) <= limit for o in par["fused"]), par["fused"]
    # the fused output against numpy on the members run on their own
    sess = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": d["x"].astype(np_dtype)})
    if fusion != "stack":
        xs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": d["x"].astype(np_dtype)})[0] for m in members]
        ref = reference(
            Fusion(fusion, [w / sum(kw["weights"]) for w in kw["weights"]] if fusion == "weighted" else kw.get("weights"), kw.get("softmax", False)), xs
        )
        np.testing.assert_allclose(
            got[-1].astype(np.float64),
            ref[-1].astype(np.float64),
            rtol=4e-3 if dtype == TensorProto.FLOAT16 else 1e-12,
            atol=1e-3 if dtype == TensorProto.FLOAT16 else 1e-12,
        )
        if fusion == "vote":
            np.testing.assert_array_equal(got[0], ref[0])
