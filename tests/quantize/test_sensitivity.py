"""Per-node sensitivity and the budget search, on a model with one sensitive node."""

from __future__ import annotations

import onnx
import pytest

from onnxopt.data import Dataset
from onnxopt.metrics import Budget, Evaluator
from onnxopt.quantize.config import QuantConfig
from onnxopt.quantize.engine import CandidateBuilder
from onnxopt.quantize.preprocess import gemm_to_matmul, infer_shapes
from onnxopt.quantize.sensitivity import fit_budget, measure_sensitivity, reuse_ranking
from tests.quantize.quant_models import data_for, drifted, mlp


def _setup(outlier=30.0, n=300):
    m = mlp(outlier=outlier, hidden=64, classes=8)
    d = data_for(m, n, labels=True)
    ds = Dataset("<t>", arrays={"x": d["x"]}, labels=d["labels"])
    ds.validate(m)
    base = onnx.ModelProto()
    base.CopyFrom(m)
    gemm_to_matmul(base)
    base = infer_shapes(base)
    b = CandidateBuilder(base, QuantConfig(mode="dynamic"))
    return m, ds, b


def test_the_outlier_layer_is_the_most_sensitive_and_is_excluded():
    m, ds, b = _setup()
    ev = Evaluator(m, ds)
    assert ev.metric == "top1" and ev.reference_score == 100.0
    full = ev.score(b(frozenset()))
    assert 100.0 - full > 1.0  # quantizing everything breaks the budget
    effects = measure_sensitivity(b, ["fc1", "fc2"], ev)
    assert effects[0].nodes == ["fc2"] and effects[0].gain > 1.0
    search = Evaluator(m, ds, limit=150)
    fit = fit_budget(b, ["fc1", "fc2"], Budget(1.0), ev, search_evaluator=search, max_evals=10)
    assert fit.met and fit.drop <= 1.0
    assert [e["node"] for e in fit.excluded] == ["fc2"]
    assert fit.excluded[0]["gain"] > 1.0
    assert fit.evaluations <= 10 and fit.search_samples == 150 and fit.samples == 300
    # fc1 is still quantized in the returned model, fc2 is a float MatMul again
    ops = {n.name: n.op_type for n in fit.model.graph.node}
    assert ops.get("fc2") == "MatMul" and "fc1" not in ops


def test_quantize_one_ranks_the_same_node_first():
    m, ds, b = _setup()
    ev = Evaluator(m, ds)
    effects = measure_sensitivity(b, ["fc1", "fc2"], ev, how="quantize-one")
    assert effects[0].nodes == ["fc2"]


def test_unmeetable_budget_returns_the_best_reached():
    m, ds, b = _setup()
    ev = Evaluator(m, ds)
    fit = fit_budget(b, ["fc2"], Budget(0.0), ev, max_evals=6)
    assert not fit.met  # excluding the only candidate is not a quantized model
    assert fit.drop > 0


def test_groups_when_there_are_many_nodes():
    from onnxopt.quantize.sensitivity import _units

    units = _units([f"n{i}" for i in range(50)], 18)
    assert len(units) <= 18 and sum(len(u) for u in units) == 50


def test_static_search_can_leave_an_activation_only_node_in_float(tmp_path):
    """The collapse comes from the Softmax output's QDQ, not from a weight: the static
    search considers every quantized node."""
    import numpy as np

    from onnxopt.quantize.api import quantize
    from tests.quantize.quant_models import wide_softmax

    m = wide_softmax()
    np.savez(tmp_path / "d.npz", **data_for(m, 64))
    r = quantize(m, mode="static", calibration=tmp_path / "d.npz", max_accuracy_drop=1.0, metric="cosine", allow_slower=True, timing=False, preprocess=False)
    c = r.report["candidates"][0]
    assert c["budget_search"]["history"][0]["search_score"] < 50  # collapsed when fully quantized
    assert [e["node"] for e in c["excluded"]] == ["softmax"] and c["drop"] <= 1.0


def test_unmet_budget_reports_the_best_exclusion_reached():
    """Both layers hold an outlier and a 0-point budget cannot be met: the result is the
    best-scoring exclusion set measured (one layer in float), not the fully quantized model."""
    m = mlp(outlier=30.0, hidden=64, classes=8)
    w1 = onnx.numpy_helper.to_array(m.graph.initializer[0]).copy()
    w1[0, 0] = 30.0
    m.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w1, "w1"))
    d = data_for(m, 300)
    ds = Dataset("<t>", arrays={"x": d["x"]})
    ds.validate(m)
    base = onnx.ModelProto()
    base.CopyFrom(m)
    gemm_to_matmul(base)
    b = CandidateBuilder(infer_shapes(base), QuantConfig(mode="dynamic"))
    ev = Evaluator(m, ds, "agreement")
    full = ev.score(b(frozenset()))
    alone = {n: ev.score(b(frozenset([n]))) for n in ("fc1", "fc2")}
    assert max(alone.values()) > full and max(alone.values()) < 100.0  # better, still over budget
    fit = fit_budget(b, ["fc1", "fc2"], Budget(0.0), ev, max_evals=10)
    assert not fit.met
    best = max(alone, key=alone.get)
    assert fit.score == alone[best] and [e["node"] for e in fit.excluded] == [best]
    assert fit.drop == ev.reference_score - alone[best]
    # the model returned is that one: the best node is a float MatMul again
    assert {n.name: n.op_type for n in fit.model.graph.node}[best] == "MatMul"
    # on a search subset the best set is confirmed on the full data
    fit2 = fit_budget(b, ["fc1", "fc2"], Budget(0.0), ev, search_evaluator=Evaluator(m, ds, "agreement", limit=100), max_evals=10)
    assert not fit2.met and fit2.score == ev.score(fit2.model) and fit2.score > full


def test_search_subset_resolves_the_budget_for_per_sample_metrics():
    from onnxopt.metrics import Budget
    from onnxopt.quantize.sensitivity import search_size

    # one sample of top-1 / agreement is 100/n points: n must resolve half the budget
    assert search_size(32, "agreement", Budget(1.0, "agreement")) == 200
    assert search_size(32, "top1", Budget(0.5, "top1")) == 400
    assert search_size(500, "top1", Budget(1.0, "top1")) == 500
    # continuous metrics and a zero budget keep the requested subset
    assert search_size(32, "cosine", Budget(1.0, "cosine")) == 32
    assert search_size(32, "agreement", Budget(0.0, "agreement")) == 32


def test_builder_keeps_its_last_build_only(monkeypatch):
    import onnxopt.quantize.engine as engine

    _, _, b = _setup()
    sets = [frozenset(), frozenset(["fc1"]), frozenset(["fc2"])]
    first = {ex: b(ex).SerializeToString() for ex in sets}
    assert list(b._cache) == [sets[2]] and engine.CACHED_MODELS == 1
    calls = []
    raw = b.raw
    monkeypatch.setattr(b, "raw", lambda *a, **k: calls.append(1) or raw(*a, **k))
    assert b(sets[2]).SerializeToString() == first[sets[2]] and not calls  # the last one: not built again
    assert b(sets[0]).SerializeToString() == first[sets[0]] and calls  # an older one: built again, the same bytes


def test_scoring_a_build_runs_the_session_its_validity_check_loaded(monkeypatch):
    import onnxopt.runtime as runtime

    m, ds, b = _setup()
    model = b(frozenset())
    assert b.take_session(model, "cuda") is None  # another provider: not handed
    model = b(frozenset(["fc1"]))
    assert b.take_session(onnx.ModelProto(), "cpu") is None  # another model: not handed (and dropped)
    b(frozenset())  # a new build keeps its session again
    model = b(frozenset(["fc2"]))
    sess = b.take_session(model, "cpu")
    assert sess is not None and b.take_session(model, "cpu") is None  # once
    assert [o.shape for o in sess.run(None, next(ds.batches(2)))] == [(2, 8)]
    # the budget search scores each build on that session: no session is created for scoring
    ev = Evaluator(m, ds, "agreement")
    created = []  # sessions loaded to score a model (the validity checks load their own)
    real = runtime.run_dataset
    monkeypatch.setattr(runtime, "run_dataset", lambda m, *a, **k: real(m, *a, **k) if hasattr(m, "run") or created.append(1) is None else None)
    _, _, b2 = _setup()
    fit = fit_budget(b2, ["fc1", "fc2"], Budget(0.0), ev, max_evals=6)
    # scorings of a new build ran its kept session; only a set scored again loads the model
    assert fit.evaluations >= 3 and len(created) < fit.evaluations, (len(created), fit.evaluations)


def test_the_fit_carries_the_relative_l2_its_last_full_scoring_measured():
    from onnxopt.quantize.sensitivity import score_model

    m, ds, b = _setup()
    ev = Evaluator(m, ds, "agreement")
    for search in (None, Evaluator(m, ds, "agreement", limit=150)):
        fit = fit_budget(b, ["fc1", "fc2"], Budget(1.0), ev, search_evaluator=search, max_evals=10)
        assert fit.rel_l2 is not None
        assert fit.rel_l2 == pytest.approx(score_model(ev, fit.model)[1], rel=1e-9)


def test_errors_that_add_up_are_searched_again_by_the_damage_each_node_does_alone():
    """Nodes A and B each ruin the outputs alone (leaving one of them in float gains nothing
    while the other is quantized), C costs little: no prefix of the float-one ranking short
    of every node meets the budget, the quantize-one ranking does ({A, B} in float)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 4)).astype(np.float32)
    direction = rng.standard_normal((4, 4)).astype(np.float32)

    def model(d: float) -> onnx.ModelProto:
        return drifted(d, direction)

    def build(excluded: frozenset) -> onnx.ModelProto:
        quantized = {"A", "B", "C"} - excluded
        return model((4.0 if quantized & {"A", "B"} else 0.0) + (0.002 if "C" in quantized else 0.0))

    ds = Dataset("<t>", arrays={"x": x}, labels=x.argmax(1))
    ev = Evaluator(model(0.0), ds)
    fit = fit_budget(build, ["A", "B", "C"], Budget(1.0), ev, max_evals=30)
    assert fit.met and sorted(e["node"] for e in fit.excluded) == ["A", "B"]
    assert fit.drop <= 1.0


def _scoped_search(weightless_cost: float):
    """Nodes A (ruins the outputs), B (costs little) and two nodes without weights s1, s2
    costing ``weightless_cost`` each when quantized; a 1-point budget."""
    import numpy as np

    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 4)).astype(np.float32)
    direction = rng.standard_normal((4, 4)).astype(np.float32)
    built = []

    def build(excluded: frozenset) -> onnx.ModelProto:
        built.append(excluded)
        q = {"A", "B", "s1", "s2"} - excluded
        return drifted((4.0 if "A" in q else 0.0) + (0.002 if "B" in q else 0.0) + weightless_cost * len(q & {"s1", "s2"}), direction)

    ds = Dataset("<t>", arrays={"x": x}, labels=x.argmax(1))
    ev = Evaluator(drifted(0.0, direction), ds)
    fit = fit_budget(build, ["A", "s1", "B", "s2"], Budget(1.0), ev, max_evals=30, scope=frozenset({"s1", "s2"}))
    return fit, built


def test_the_nodes_without_weights_are_left_in_float_together_first():
    """Leaving the scope in float scores better than quantizing everything: the search then
    ranks only the other nodes, every model it builds has the scope in float, and the
    result lists the scope's nodes (flagged, with the group's gain) before A."""
    fit, built = _scoped_search(0.4)
    assert fit.met and fit.drop <= 1.0
    assert [(e["node"], bool(e.get("scope"))) for e in fit.excluded] == [("s1", True), ("s2", True), ("A", False)]
    assert fit.excluded[0]["group_size"] == 2 and fit.excluded[0]["gain"] > 0
    assert all({"s1", "s2"} <= ex for ex in built[1:])  # after the fully quantized model, every build leaves the scope in float
    assert fit.history[1].get("scope") and fit.evaluations >= len(built)  # the outer search's two scorings counted with the inner's
    assert all(h["excluded"] >= 2 for h in fit.history[1:] if "excluded" in h)  # counted with the group
    # the ranking starts with the group as one measured unit: a candidate reusing it without
    # taking the group gets it whole, not as unmeasured single nodes
    assert fit.sensitivity[0].nodes == ["s1", "s2"] and fit.sensitivity[0].gain > 0
    assert [e.nodes for e in reuse_ranking(fit.sensitivity, ["A", "s1", "B", "s2"])][0] == ["s1", "s2"]


def test_a_scope_that_does_not_help_is_not_taken():
    fit, built = _scoped_search(0.0)
    assert fit.met and [e["node"] for e in fit.excluded] == ["A"]
    assert not any(e.get("scope") for e in fit.excluded)


def test_the_budget_search_leaves_the_softmax_in_float_as_the_scope(tmp_path, invoke):
    """From the API and the CLI: the 1000-class Softmax (no weights) collapses the static
    model; the scope step leaves it in float and the MatMul stays quantized."""
    import json

    import numpy as np

    from onnxopt.quantize.api import quantize
    from tests.conftest import save
    from tests.quantize.quant_models import wide_softmax

    m = wide_softmax()
    np.savez(tmp_path / "d.npz", **data_for(m, 64))
    r = quantize(m, mode="static", calibration=tmp_path / "d.npz", max_accuracy_drop=1.0, metric="cosine", allow_slower=True, timing=False, preprocess=False)
    c = r.report["candidates"][0]
    assert [(e["node"], e.get("scope")) for e in c["excluded"]] == [("softmax", True)] and c["quantized_nodes"] == 1 and c["drop"] <= 1.0
    assert any(h.get("scope") for h in c["budget_search"]["history"])
    assert r.report["sensitive_nodes"][0]["nodes"] == ["softmax"]
    assert r.report["sensitive_nodes"][0]["how"] == "budget search: the nodes without weights, left in float together"
    from onnxopt.quantize.candidates import static_candidate

    _, notes = static_candidate(m, calibration=tmp_path / "d.npz", eval_data=tmp_path / "d.npz", max_accuracy_drop=1.0, metric="cosine", preprocess=False)
    assert "1 node(s) without weights (softmax) left in float together for the budget" in " ".join(notes), notes
    res = invoke("quantize", save(m, tmp_path / "m.onnx"), "-o", tmp_path / "q.onnx", "--mode", "static", "--calibration", tmp_path / "d.npz", "--metric",
                 "cosine", "--max-accuracy-drop", "1", "--allow-slower", "--no-preprocess", "--report", tmp_path / "r.json")  # fmt: skip
    assert res.exit_code == 0 and "left the one node without weights in float (softmax)" in res.output, res.output
    assert json.loads((tmp_path / "r.json").read_text())["candidates"][0]["excluded"][0]["scope"] is True
    # QOperator: the group is scored on a real build (the emulation does not cover QLinearSoftmax)
    q = quantize(m, mode="static", format="qoperator", calibration=tmp_path / "d.npz", max_accuracy_drop=1.0, metric="cosine", allow_slower=True,
                 timing=False, preprocess=False)  # fmt: skip
    c = q.report["candidates"][0]
    assert [(e["node"], e.get("scope")) for e in c["excluded"]] == [("softmax", True)] and c["drop"] <= 1.0
