"""Work shared by the INT8 candidates of one run (``engine.SharedWork``): pre-processing,
ranges and the sensitivity ranking measured once; a reused ranking skips the measurement."""

from __future__ import annotations

import math
import os

import onnx

from onnxopt.data import Dataset
from onnxopt.metrics import Budget, Evaluator
from onnxopt.quantize.candidates import dynamic_candidate, static_candidate
from onnxopt.quantize.config import QuantConfig
from onnxopt.quantize.engine import CandidateBuilder, SharedWork
from onnxopt.quantize.preprocess import gemm_to_matmul, infer_shapes
from onnxopt.quantize.sensitivity import NodeEffect, fit_budget, reuse_ranking
from onnxopt.verify import check_model
from tests.quantize.quant_models import data_for, mlp


def test_reuse_ranking_keeps_order_drops_unknown_and_appends_unmeasured():
    ranking = [NodeEffect(["b", "x"], 90.0, 5.0, 0.1), NodeEffect(["a"], 86.0, 1.0, 0.2)]
    out = reuse_ranking(ranking, ["a", "b", "c"])
    assert [e.nodes for e in out] == [["b"], ["a"], ["c"]]
    assert out[0].gain == 5.0 and out[1].score == 86.0
    assert out[2].gain == 0.0 and math.isnan(out[2].score)  # never measured


def _dynamic_setup():
    m = mlp(outlier=30.0, hidden=64, classes=8)
    d = data_for(m, 300, labels=True)
    ds = Dataset("<t>", arrays={"x": d["x"]}, labels=d["labels"])
    ds.validate(m)
    base = onnx.ModelProto()
    base.CopyFrom(m)
    gemm_to_matmul(base)
    return m, ds, CandidateBuilder(infer_shapes(base), QuantConfig(mode="dynamic"))


def test_fit_budget_with_a_ranking_measures_no_sensitivity():
    m, ds, b = _dynamic_setup()
    ev = Evaluator(m, ds)
    measured = fit_budget(b, ["fc1", "fc2"], Budget(1.0), ev, max_evals=10)
    assert measured.met and [e["node"] for e in measured.excluded] == ["fc2"]
    reused = fit_budget(b, ["fc1", "fc2"], Budget(1.0), ev, max_evals=10, ranking=measured.sensitivity)
    assert reused.met and [e["node"] for e in reused.excluded] == ["fc2"]
    # the measured run scored each unit alone; the reused one only the bisection and confirmation
    assert reused.evaluations == measured.evaluations - len(measured.sensitivity)
    assert reused.score == measured.score


def test_static_candidates_share_preprocessing_ranges_and_ranking():
    m = mlp(outlier=30.0, hidden=64, classes=8)
    d = data_for(m, 300, labels=True)
    cal = Dataset("<cal>", arrays={"x": d["x"][:100]})
    ev_ds = Dataset("<ev>", arrays={"x": d["x"]}, labels=d["labels"])
    for ds in (cal, ev_ds):
        ds.validate(m)
    ev = Evaluator(m, ev_ds)
    work = SharedWork()
    kw = dict(calibration=cal, eval_data=ev_ds, max_accuracy_drop=1.0, shared=work, evaluator=ev, search_samples=64, preprocess=False)
    first, notes1 = static_candidate(m, per_channel=False, **kw)
    assert "static" in work.rankings and work.reused == []
    second, notes2 = static_candidate(m, per_channel=True, **kw)
    # top-1 with a 1-point budget: the 64 asked for cannot resolve it, the subset is 200 (search_size)
    assert set(work.reused) == {"prepared:(False,)", "ranges:minmax", "search:200"}
    assert any("sensitivity ranking measured for an earlier static candidate reused" in n for n in notes2)
    assert not any("reused" in n for n in notes1)
    for q in (first, second):
        check_model(q)
        assert ev.drop(q) <= 1.0
    # the dynamic candidate takes the same pre-processed model, and ranks its own nodes; it
    # quantizes a copy (Gemm as MatMul), so the shared model waits on disk meanwhile
    prepared = work.prepared[(False,)]
    kept = prepared.model.SerializeToString()
    dynamic_candidate(m, eval_data=ev_ds, max_accuracy_drop=1.0, shared=work, evaluator=ev, preprocess=False)
    assert work.reused.count("prepared:(False,)") == 2
    assert prepared.model is None and os.path.isfile(os.path.join(work.parked[(False,)], "prepared.onnx"))
    parked = work.parked[(False,)]
    third, _ = static_candidate(m, per_channel=True, **kw)  # read back for the next static candidate
    assert prepared.model.SerializeToString() == kept and not work.parked and not os.path.exists(parked)
    assert third.SerializeToString() == second.SerializeToString()


def test_check_model_can_hand_back_its_session_and_validation_uses_it():
    import numpy as np

    from onnxopt.quantize.validity import validate_candidate

    m = mlp(hidden=8, classes=4)
    rec = check_model(m, keep_session=True)
    feed = {"x": data_for(m, 4)["x"]}
    assert rec.session is not None and rec.session.run(None, feed)[0].shape[0] == 4
    assert "session" not in rec.to_dict() and check_model(m).session is None
    ref = rec.session.run(None, feed)
    assert validate_candidate(m, feed=feed, reference=ref) is None
    bad = [np.full_like(ref[0], np.nan)]  # NaN in the reference: not blamed on the candidate
    assert validate_candidate(m, feed=feed, reference=bad) is None


def test_a_gate_reason_stops_the_candidate_before_the_search():
    import pytest

    from onnxopt.errors import BudgetError

    m = mlp(outlier=30.0, hidden=64, classes=8)
    d = data_for(m, 200, labels=True)
    ds = Dataset("<ev>", arrays={"x": d["x"]}, labels=d["labels"])
    ds.validate(m)
    seen = []

    def gate(full):
        seen.append(full)
        return "slower than the rival"

    with pytest.raises(BudgetError, match="static per-tensor: cannot win: slower than the rival"):
        static_candidate(m, calibration=ds, eval_data=ds, max_accuracy_drop=1.0, gate=gate, preprocess=False)
    assert len(seen) == 1 and any(n.op_type == "QuantizeLinear" for n in seen[0].graph.node)
    # without a budget there is no search to skip: the gate is not asked
    static_candidate(m, calibration=ds, gate=gate, preprocess=False)
    assert len(seen) == 1


def test_the_gate_is_not_asked_when_the_fully_quantized_model_meets_the_budget():
    m = mlp(hidden=32, classes=8)  # no outlier: static INT8 within a loose budget
    d = data_for(m, 64, labels=True)
    ds = Dataset("<ev>", arrays={"x": d["x"]}, labels=d["labels"])
    ds.validate(m)
    seen = []
    model, _ = static_candidate(m, calibration=ds, eval_data=ds, max_accuracy_drop=50.0, gate=lambda full: seen.append(full) or "slower", preprocess=False)
    assert seen == [] and any(n.op_type == "QuantizeLinear" for n in model.graph.node)  # no search to skip, no timing spent
