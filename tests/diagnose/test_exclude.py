"""Ranking nodes by the outputs: leaving nodes of a QDQ model in float, emulated
(``onnxopt.diagnose.exclude``), and the greedy pick ``diagnose`` and ``quantize`` report."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxopt.diagnose import exclude
from onnxopt.diagnose.api import DiagnoseConfig, diagnose
from onnxopt.diagnose.exclude import candidate_nodes, is_qdq
from onnxopt.quantize.config import static_op_types
from onnxopt.quantize.emulate import FloatReference, leave_in_float
from tests.diagnose.diag_models import feeds, qdq
from tests.quantize.quant_models import drifted, mlp
from tests.toy_models import tiny_cnn


def _run(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _rel(a, b):
    return float(np.linalg.norm(b - a) / np.linalg.norm(a))


def test_every_node_in_float_is_the_float_model():
    ref = tiny_cnn()
    cand = qdq(ref)
    ops = set(static_op_types())
    quantized = [n.name for n in cand.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    out, notes = leave_in_float(cand, quantized, FloatReference(ref), ops)
    onnx.checker.check_model(out, full_check=True)
    x = feeds(16, seed=3)["x"]
    assert is_qdq(cand) and _rel(_run(ref, x), _run(cand, x)) > 1e-3
    assert _rel(_run(ref, x), _run(out, x)) < 1e-5  # no Q/DQ pair and no quantized weight left in use
    assert {k: v for k, v in notes.items() if v != "none"} == {"conv": "float", "bn": "float", "fc": "float"}
    assert len(cand.graph.node) == len(qdq(ref).graph.node)  # the candidate itself is untouched


def test_a_folded_batchnorm_weight_is_found_by_its_channel_scale():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    s = np.array([0.5, 2.0, 1.5, 0.25], np.float32)
    folded = w * s[:, None, None, None]
    scale = np.abs(folded).reshape(4, -1).max(1) / 127
    q = np.round(folded / scale[:, None, None, None]).astype(np.int8)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])], "r", [], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    finder = FloatReference(helper.make_model(graph))
    arrays = {"wq": q, "ws": scale.astype(np.float32), "wz": np.zeros(4, np.int8)}
    inits = {k: numpy_helper.from_array(v, k) for k, v in arrays.items()}
    dq = helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["conv.w_dq"], axis=0)
    got = finder.find(dq, inits)
    dequantized = (q.astype(np.float32)) * scale[:, None, None, None]
    assert got is not None and got.shape == w.shape
    assert _rel(folded, got) < _rel(folded, dequantized) / 4  # the float weight (a channel scale off by ~1e-3), not the rounded one
    other = FloatReference(
        helper.make_model(helper.make_graph([], "r", [], [], [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "v")])),
    )
    assert other.find(dq, inits) is None  # nothing of that shape fits: the weight stays quantized


@pytest.fixture(scope="module")
def outlier_pair():
    """An MLP whose second layer holds one huge weight: per-tensor INT8 ruins that layer."""
    ref = mlp(hidden=64, classes=8, outlier=30.0)
    x = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    return ref, qdq(ref, x), {"x": x}


def test_diagnose_names_the_node_whose_quantization_hurts_the_outputs(outlier_pair, tmp_path):
    ref, cand, data = outlier_pair
    np.savez(tmp_path / "d.npz", **data)
    d = diagnose(ref, cand, tmp_path / "d.npz", config=DiagnoseConfig(top=2, metric="cosine"))
    assert d.sensitive, d.layerwise.top
    first = d.sensitive[0]
    assert (first.node, first.op, first.weights, first.reference_node) == ("fc2", "Gemm", "float", "fc2")
    assert first.gain > 0 and first.metric == "cosine"
    base = 1 - np.mean([np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(_run(ref, data["x"]), _run(cand, data["x"]), strict=True)])
    assert 100 - first.score < 100 * base  # the outputs are closer with fc2 in float
    assert [e.node for e in d.sensitive] == list(dict.fromkeys(e.node for e in d.sensitive))
    assert d.to_dict()["sensitive"][0]["node"] == "fc2"
    assert "fc2" in candidate_nodes(ref, cand, d.layerwise.tensors)


def test_cli_lists_nodes_by_the_outputs(outlier_pair, invoke, tmp_path):
    ref, cand, data = outlier_pair
    onnx.save(ref, str(tmp_path / "a.onnx"))
    onnx.save(cand, str(tmp_path / "b.onnx"))
    np.savez(tmp_path / "d.npz", **data)
    r = invoke("diagnose", tmp_path / "a.onnx", tmp_path / "b.onnx", "--data", tmp_path / "d.npz", "--top", "2", "--metric", "cosine")
    assert r.exit_code == 0, r.output
    assert "left in float" in r.output and "onnxopt quantize ... --exclude-nodes fc2" in r.output


def test_not_a_qdq_model_has_no_output_ranking(tmp_path):
    from tests.diagnose.diag_models import scaled

    np.savez(tmp_path / "d.npz", **feeds(8))
    d = diagnose(tiny_cnn(), scaled(tiny_cnn(), "conv.w", 1.5), tmp_path / "d.npz")
    assert d.layerwise.first is not None and d.sensitive == [] and "sensitive" not in d.to_dict()


def test_quantize_report_ranks_static_nodes_by_the_outputs(outlier_pair, tmp_path):
    from onnxopt import quantize

    ref, _, data = outlier_pair
    np.savez(tmp_path / "d.npz", **data)
    r = quantize(ref, mode="static", calibration=tmp_path / "d.npz", metric="cosine", allow_slower=True, timing=False, preprocess=False)
    nodes = r.report["sensitive_nodes"]
    assert nodes and nodes[0]["how"].startswith("diagnose: outputs") and nodes[0]["nodes"] == ["fc2"] and nodes[0]["gain"] > 0


@pytest.mark.parametrize("net, node", [("cnn", "conv"), ("cnn", "fc"), ("mlp", "fc1"), ("mlp", "fc2")])
def test_a_qoperator_node_in_float_is_what_the_quantizer_writes_without_it(net, node):
    """QLinearConv / QGemm left in float, emulated, runs exactly as ONNX Runtime's QOperator
    quantizer's own model with that node excluded (same calibration)."""
    ref = tiny_cnn() if net == "cnn" else mlp(hidden=64, classes=8, outlier=30.0)
    x = feeds(32)["x"] if net == "cnn" else np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    cand = qdq(ref, x, qoperator=True)
    assert not is_qdq(cand) and exclude.is_static_int8(cand)
    emulated, notes = leave_in_float(cand, [f"{node}_quant"], FloatReference(ref), set(static_op_types()))
    onnx.checker.check_model(emulated, full_check=True)
    real = _run(qdq(ref, x, qoperator=True, exclude=[node]), x)
    assert _rel(real, _run(emulated, x)) < 1e-6 < _rel(real, _run(cand, x))
    assert notes == {f"{node}_quant": "float"}


def test_diagnose_ranks_a_qoperator_model_by_the_outputs(outlier_pair, tmp_path):
    ref, _, data = outlier_pair
    cand = qdq(ref, data["x"], qoperator=True)
    np.savez(tmp_path / "d.npz", **data)
    d = diagnose(ref, cand, tmp_path / "d.npz", config=DiagnoseConfig(top=2, metric="cosine"))
    first = d.sensitive[0]
    assert (first.node, first.op, first.weights, first.reference_node) == ("fc2_quant", "QGemm", "float", "fc2") and first.gain > 0


def test_a_small_model_has_every_quantized_node_tried(outlier_pair, tmp_path):
    ref, cand, data = outlier_pair
    np.savez(tmp_path / "d.npz", **data)
    d = diagnose(ref, cand, tmp_path / "d.npz", config=DiagnoseConfig(top=2, metric="cosine"))
    by_error = candidate_nodes(ref, cand, d.layerwise.tensors, n=1)
    assert list(by_error)[0] == "fc2"  # the node adding the most error first, then the rest
    assert set(by_error) == {"fc1", "fc2"} and exclude.ALL_UP_TO >= 2


def test_with_ranges_measured_on_the_calibration_data_the_emulation_is_the_quantizers_build():
    """``diagnose`` has no calibration data; given the same samples, the parameters it
    measures for a pair whose node is left in float (``own_params``) are the quantizer's,
    and leaving a pass-through op (MaxPool, Reshape) or a Softmax in float is exact."""
    from onnxopt.data import Dataset
    from onnxopt.diagnose.api import own_params
    from onnxopt.quantize.collect import collect_ranges
    from onnxopt.quantize.config import QuantConfig
    from onnxopt.quantize.engine import CandidateBuilder
    from tests.quantize.test_emulate import _net

    ref = _net()
    x = np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32)
    ds = Dataset("<t>", arrays={"x": x})
    ds.validate(ref)
    builder = CandidateBuilder(ref, QuantConfig(mode="static"), ranges=collect_ranges(ref, ds, method="minmax").ranges)
    cand = builder(frozenset())
    qparams = own_params(ref, cand, ds, limit=None)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    for node in ("pool1", "flat1", "soft1"):
        emulated, _ = leave_in_float(cand, [node], FloatReference(ref), set(static_op_types()), qparams)
        assert np.array_equal(run(emulated), run(builder(frozenset([node])))), node


def test_errors_that_add_up_are_named_by_the_damage_each_node_does_alone(monkeypatch):
    """A and B each ruin the outputs alone: leaving either in float gains nothing while the
    other is quantized, so the greedy pick by the outputs stalls; ranked by the damage each
    does alone, A and B come first, and that set (scored together in float) is named."""

    from onnxopt.data import Dataset
    from onnxopt.metrics import Evaluator

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 4)).astype(np.float32)
    direction = rng.standard_normal((4, 4)).astype(np.float32)

    def model(d: float) -> onnx.ModelProto:
        return drifted(d, direction)

    damage = {"A": 4.0, "B": 4.0, "C": 0.002, "D": 0.001}

    def left_in_float(candidate, excluded, *args):
        quantized = set(damage) - set(excluded)
        return model((4.0 if quantized & {"A", "B"} else 0.0) + sum(damage[n] for n in quantized - {"A", "B"})), {}

    monkeypatch.setattr(exclude, "leave_in_float", left_in_float)
    cand = model(8.003)
    cand.graph.node.extend([helper.make_node("Identity", ["y"], [f"o{n}"], name=n) for n in damage])  # the node names the ranking looks up
    ev = Evaluator(model(0.0), Dataset("<t>", arrays={"x": x}), "cosine")
    got = exclude.rank_by_outputs(model(0.0), cand, ev, {n: n for n in damage}, top=3)
    assert [e.node for e in got] == ["A", "B", "C"] and "scored best together" in got[0].how
    assert got[0].score > 99.99  # only D left quantized
    assert got[0].gain > got[2].gain > 0  # lost alone: A ruins the outputs, C barely


def test_the_set_named_is_the_best_pair_of_the_pool_when_neither_ranking_finds_it(monkeypatch):
    """How nodes combine decides: the greedy pick by the outputs leaves {A, B} in float (A
    gains most alone, then B), the damage each does alone ranks C and D first, but {B, C}
    in float leaves the least error; every pair of the pool is scored, and {B, C} is named."""
    from onnxopt.data import Dataset
    from onnxopt.metrics import Evaluator

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 4)).astype(np.float32)
    direction = rng.standard_normal((4, 4)).astype(np.float32)
    nodes = "ABCD"
    drift = {  # error of the outputs by the set of nodes left quantized
        "ABCD": 10.0, "BCD": 5.0, "ACD": 6.0, "ABD": 7.0, "ABC": 8.0,
        "CD": 4.0, "BD": 4.5, "BC": 4.8, "AB": 4.2, "AD": 1.0, "AC": 3.0,
        "A": 1.0, "B": 1.0, "C": 3.5, "D": 3.4, "": 0.0,
    }

    def left_in_float(candidate, excluded, *args):
        return drifted(drift["".join(n for n in nodes if n not in excluded)], direction), {}

    monkeypatch.setattr(exclude, "leave_in_float", left_in_float)
    cand = drifted(drift["ABCD"], direction)
    cand.graph.node.extend([helper.make_node("Identity", ["y"], [f"o{n}"], name=n) for n in nodes])
    ev = Evaluator(drifted(0.0, direction), Dataset("<t>", arrays={"x": x}), "cosine")
    got = exclude.rank_by_outputs(drifted(0.0, direction), cand, ev, {n: n for n in nodes}, top=2)
    assert sorted(e.node for e in got) == ["B", "C"] and "scored best together" in got[0].how
    greedy = ev.score(drifted(drift["CD"], direction))
    assert got[0].score > greedy and got[0].score == pytest.approx(ev.score(drifted(drift["AD"], direction)))
    assert [e.node for e in got] == ["C", "B"]  # most damaging alone first


def test_a_node_fused_by_preprocessing_is_tried_by_its_own_name(outlier_pair):
    """A quantized node that pre-processing fused (``<node>/<...Fusion>``, not a node of the
    reference) is tried too, by the name ``quantize --exclude-nodes`` takes."""
    import copy

    ref, cand, _ = outlier_pair
    cand = copy.deepcopy(cand)
    next(n for n in cand.graph.node if n.name == "fc1").name = "fc1/MatMulAddFusion"
    got = candidate_nodes(ref, cand, [])
    assert got["fc1/MatMulAddFusion"] == "fc1/MatMulAddFusion" and got["fc2"] == "fc2"
    assert not exclude._named("fc1/Other", {"fc1"}) and not exclude._named("fcX/MatMulAddFusion", {"fc1"})


def test_a_node_matched_to_a_reference_node_of_another_op_is_not_offered(outlier_pair):
    """A quantized node that pre-processing made (ORT writes a hard swish as
    ``HardSigmoid(x) * x``: a ``Mul`` its tensor matching shows as the reference's ``Div``)
    is not offered under the reference node's name: excluding that node would not leave it
    in float.  The same op under another name (a QOperator ``fc_quant``) is."""
    import copy
    from types import SimpleNamespace

    ref, cand, _ = outlier_pair
    cand = copy.deepcopy(cand)
    node = next(n for n in cand.graph.node if n.name == "fc1")
    node.name = "Mul_9"
    t = SimpleNamespace(cand=node.output[0], node="fc1", diverged=True, added=1.0)
    assert candidate_nodes(ref, cand, [t])["Mul_9"] == "fc1"
    other = copy.deepcopy(ref)
    next(n for n in other.graph.node if n.name == "fc1").op_type = "Div"
    assert "Mul_9" not in candidate_nodes(other, cand, [t])
