"""Layer-wise divergence: matching (names, Q/DQ, structure), the first diverging node,
error attribution and bounded slices."""

from __future__ import annotations

import math

import numpy as np
import pytest

import onnxopt
from onnxopt.diagnose.layerwise import LayerwiseConfig, TensorError, attribute, plan_slices
from onnxopt.diagnose.match import TensorPair, match_tensors
from onnxopt.errors import ModelError
from tests.diagnose.diag_models import feeds, qdq, renamed, scaled
from tests.toy_models import tiny_cnn

SHAPES = {"x": (4, 3, 8, 8)}


def _tensors(d):
    return {t.ref: t for t in d.layerwise.tensors}


def test_planted_fault_is_the_first_diverging_node():
    ref = tiny_cnn()
    d = onnxopt.diagnose(ref, scaled(ref, "bn.scale", 1.5, channel=1), shapes=SHAPES)
    lw = d.layerwise
    assert lw.first is not None and lw.first.node == "bn" and lw.first.op == "BatchNormalization"
    t = _tensors(d)
    assert t["c"].rel_l2 == 0.0 and not t["c"].diverged  # upstream of the fault: identical
    assert t["bn"].rel_l2 > 0.05 and t["bn"].error_in == 0.0 and t["bn"].added == pytest.approx(t["bn"].rel_l2)
    assert all(t[x].inputs_diverged for x in ("r", "p", "f", "logits"))  # downstream: inherited
    assert lw.top[0].ref == "bn"
    assert [p.how for p in lw.matching.pairs] == ["input"] + ["name"] * 6
    # figures agree with a direct comparison of the graph output
    comp = onnxopt.verify(ref, scaled(ref, "bn.scale", 1.5, channel=1), shapes=SHAPES)
    assert t["logits"].rel_l2 == pytest.approx(comp.outputs[0].rel_l2, rel=1e-6)


def test_identical_models_diverge_nowhere():
    ref = tiny_cnn()
    lw = onnxopt.diagnose(ref, tiny_cnn(), shapes=SHAPES).layerwise
    assert lw.first is None and lw.top == []
    assert all(t.rel_l2 == 0.0 and t.cosine == pytest.approx(1.0) for t in lw.tensors)


def test_qdq_model_is_matched_through_dequantize_outputs():
    ref = tiny_cnn()
    q = qdq(ref)
    m = match_tensors(ref, q)
    by = {p.ref: (p.cand, p.how) for p in m.pairs}
    assert by["c"] == ("c_DequantizeLinear_Output", "qdq")  # what the consumers of c see
    assert by["r"] == ("r_DequantizeLinear_Output", "qdq")
    assert by["bn"] == ("r", "structure")  # the quantizer named BN's output after the Relu it dropped
    assert m.unmatched_ref == []
    lw = onnxopt.diagnose(ref, q, shapes=SHAPES).layerwise
    assert lw.first.ref == "c"  # the first quantized tensor
    assert 1e-4 < lw.first.rel_l2 < 0.1


def test_renamed_graph_is_matched_by_structure():
    ref = tiny_cnn()
    cand = renamed(scaled(ref, "fc.w", 1.5, channel=0))
    lw = onnxopt.diagnose(ref, cand, shapes=SHAPES).layerwise
    hows = {p.ref: p.how for p in lw.matching.pairs}
    assert hows["c"] == hows["bn"] == hows["f"] == "structure" and hows["logits"] == "name"
    assert lw.first.node == "fc"


def test_nan_in_candidate_diverges():
    ref = tiny_cnn()
    bad = scaled(ref, "conv.w", float("nan"), channel=0)
    lw = onnxopt.diagnose(ref, bad, shapes=SHAPES).layerwise
    assert lw.first.node == "conv" and lw.first.nan_cand > 0 and lw.first.note


def test_slices_bound_tensors_and_bytes():
    pairs = [TensorPair(f"t{i}", f"t{i}", "name") for i in range(10)]
    cfg = LayerwiseConfig(slice_tensors=4, slice_bytes=1000)
    sl = plan_slices(pairs, {p.ref: 10 for p in pairs}, 10, cfg)  # 100 bytes each
    assert [len(s) for s in sl] == [4, 4, 2]
    sl = plan_slices(pairs, {p.ref: 40 for p in pairs}, 10, cfg)  # 400 bytes each
    assert [len(s) for s in sl] == [2] * 5
    # several slices give the same figures as one
    ref = tiny_cnn()
    cand = scaled(ref, "conv.w", 1.5, channel=2)
    one = onnxopt.diagnose(ref, cand, shapes=SHAPES).layerwise
    from onnxopt.diagnose.api import DiagnoseConfig

    many = onnxopt.diagnose(ref, cand, shapes=SHAPES, config=DiagnoseConfig(slice_tensors=2)).layerwise
    assert many.slices == 3 and one.slices == 1
    assert [t.rel_l2 for t in many.tensors] == pytest.approx([t.rel_l2 for t in one.tensors])


def test_attribute_walks_back_through_unmatched_tensors():
    import onnx
    from onnx import helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"], name="n1"), helper.make_node("Neg", ["a"], ["b"], name="n2"), helper.make_node("Abs", ["b"], ["y"], name="n3")],
        "g", [helper.make_tensor_value_info("x", 1, [2])], [helper.make_tensor_value_info("y", 1, [2])],
    )
    pairs = [TensorPair("a", "a", "name", "n1", "Relu", ["x"]), TensorPair("y", "y", "name", "n3", "Abs", ["b"])]
    ts = [TensorError("a", "a", "name", "n1", "Relu", [2], 0.5, 1.0, 0.9), TensorError("y", "y", "name", "n3", "Abs", [2], 0.7, 1.0, 0.9)]
    first, top = attribute(ts, pairs, g, 1e-4, 5)
    assert first.ref == "a" and ts[1].error_in == 0.5 and ts[1].added == pytest.approx(0.2) and ts[1].inputs_diverged
    assert [t.ref for t in top] == ["a", "y"]
    assert isinstance(onnx.helper.make_model(g), onnx.ModelProto)


def test_models_with_different_inputs_have_nothing_to_match():
    other = tiny_cnn()
    other.graph.input[0].name = "image"
    other.graph.node[0].input[0] = "image"
    with pytest.raises(ModelError, match="nothing to match.*only the reference has x.*only the candidate has image"):
        onnxopt.diagnose(tiny_cnn(), other)


def test_data_is_compared_on_many_samples(tmp_path):
    ref = tiny_cnn()
    np.savez(tmp_path / "d.npz", **feeds(40))
    lw = onnxopt.diagnose(ref, scaled(ref, "conv.w", 1.5, channel=0), tmp_path / "d.npz").layerwise
    assert lw.samples == 40 and math.isfinite(lw.first.rel_l2)


def test_two_qdq_models_are_matched_tensor_for_tensor():
    q = qdq(tiny_cnn())
    m = match_tensors(q, q)
    assert all(p.ref == p.cand for p in m.pairs) and m.unmatched_ref == [] and m.unmatched_cand == []
    assert {"c", "c_DequantizeLinear_Output", "logits"} <= {p.ref for p in m.pairs}


def test_large_models_are_streamed_to_a_weights_file(tmp_path, monkeypatch):
    import onnx

    from onnxopt.io import is_lazy, load_offloaded, materialize

    q = qdq(tiny_cnn())
    onnx.save(q, str(tmp_path / "q.onnx"))
    (tmp_path / "o").mkdir()
    lazy = load_offloaded(tmp_path / "q.onnx", tmp_path / "o", min_bytes=16)
    assert is_lazy(lazy) and (tmp_path / "o" / "weights.bin").stat().st_size > 0
    full = materialize(lazy)
    from onnx.numpy_helper import to_array

    assert [(t.name, to_array(t).tolist()) for t in full.graph.initializer] == [(t.name, to_array(t).tolist()) for t in q.graph.initializer]
    full.graph.ClearField("initializer")
    q.graph.ClearField("initializer")
    assert full.SerializeToString(deterministic=True) == q.SerializeToString(deterministic=True)
    (tmp_path / "o2").mkdir()
    assert load_offloaded(tmp_path / "o" / "model.onnx", tmp_path / "o2") is None  # already external
    # diagnose takes that route above OFFLOAD_BYTES, with the same figures
    ref, cand = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(tiny_cnn(), str(ref))
    onnx.save(scaled(tiny_cnn(), "bn.scale", 1.5, channel=1), str(cand))
    direct = onnxopt.diagnose(ref, cand, shapes=SHAPES).layerwise
    monkeypatch.setattr("onnxopt.diagnose.api.OFFLOAD_BYTES", 100)
    streamed = onnxopt.diagnose(ref, cand, shapes=SHAPES).layerwise
    assert streamed.first.node == "bn" and [t.rel_l2 for t in streamed.tensors] == [t.rel_l2 for t in direct.tensors]


def _bundled_cnn():
    import onnx

    from tests.conftest import MODELS

    return onnx.load(str(MODELS / "digits_cnn.onnx")), MODELS / "digits_test.npz"


def test_folded_batchnorm_is_matched_to_the_fold_not_by_name():
    """onnxsim folds each BatchNormalization into its Conv and keeps the Conv's output name:
    that tensor holds the BN output now, so it is matched there (``folded``) and the
    simplified model diverges nowhere."""
    from onnxopt.diagnose.api import diagnose
    from onnxopt.simplify.api import simplify

    ref, x = _bundled_cnn()
    sim = simplify(ref).model
    m = match_tensors(ref, sim)
    folded = [p for p in m.pairs if p.how == "folded"]
    assert len(folded) == 3 and all(p.op == "BatchNormalization" and p.cand.endswith("Conv_output_0") for p in folded)
    assert sum(r.endswith("Conv_output_0") for r in m.unmatched_ref) == 3
    lw = diagnose(ref, sim, data=x).layerwise
    assert lw.first is None


def test_a_conv_with_its_batchnorm_folded_in_is_matched_to_the_fold():
    """A static QDQ model of ``quantize`` (ORT's pre-processing folds each
    BatchNormalization into its Conv; the QDQ quantizer drops the Relu into the
    quantization, so the Conv writes the Relu's name): the Conv's raw output is the BN
    output, its DequantizeLinear view the Relu output.  No pair compares a pre-BN tensor
    with a post-BN one, so the first divergence is a quantization error, not the fold."""
    from onnxopt.diagnose.api import diagnose
    from onnxopt.quantize.api import quantize

    ref, x = _bundled_cnn()
    q = quantize(ref, mode="static", calibration=x, allow_slower=True).model
    m = match_tensors(ref, q)
    pairs = {p.ref: p for p in m.pairs}
    assert not any(r.endswith("Conv_output_0") for r in pairs)
    hows = sorted((r.rsplit("/", 1)[-1], p.how) for r, p in pairs.items() if "features" in r)
    assert hows == [("BatchNormalization_output_0", "folded")] * 3 + [("Relu_output_0", "qdq")] * 3
    first = diagnose(ref, q, data=x).layerwise.first
    assert first is not None and first.rel_l2 < 0.1 and not first.ref.endswith("Conv_output_0")


def test_a_conv_that_took_over_the_name_of_its_folded_affine_is_not_compared_before_it():
    """fold-conv-affine leaves the Conv writing the Add's output name, and in a QDQ model a
    Mul reads its DequantizeLinear view (the hard swish ORT writes as HardSigmoid * x).
    The Conv's raw output in the reference is not paired with the candidate's folded one
    by structure (PP-OCRv4 rec: 'rel L2 7.3' at every learnable affine, the scale itself)."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxopt.data import Dataset
    from onnxopt.diagnose.api import diagnose
    from onnxopt.simplify.conv_affine import fold_conv_affines

    rng = np.random.default_rng(0)
    consts = (("w", rng.standard_normal((4, 3, 3, 3))), ("bias", rng.standard_normal(4)), ("s", np.array([0.2])), ("b", np.array([0.5])))
    nodes = [
        helper.make_node("Conv", ["x", "w", "bias"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c", "s"], ["m"], name="scale"),
        helper.make_node("Add", ["m", "b"], ["a"], name="shift"),
        helper.make_node("HardSigmoid", ["a"], ["h"], name="hsig", alpha=1 / 6),
        helper.make_node("Mul", ["a", "h"], ["y"], name="swish"),
    ]
    io = [helper.make_tensor_value_info(k, TensorProto.FLOAT, ["N", 3 if k == "x" else 4, 8, 8]) for k in "xy"]
    g = helper.make_graph(nodes, "g", io[:1], io[1:], [numpy_helper.from_array(a.astype(np.float32), k) for k, a in consts])
    ref = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    x = rng.standard_normal((32, 3, 8, 8)).astype(np.float32)
    cand = qdq(fold_conv_affines(ref)[0], x)
    pairs = {p.ref: (p.cand, p.how) for p in match_tensors(ref, cand).pairs}
    assert pairs["a"][1] == "qdq" and "c" not in pairs and "m" not in pairs
    first = diagnose(ref, cand, data=Dataset("<t>", arrays={"x": x})).layerwise.first
    assert first is None or first.ref != "c"
