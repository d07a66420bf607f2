"""ensemble(): bad input, parity failure, determinism, fitting, and the digits models."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import numpy_helper

from onnxopt.core.provenance import read_provenance
from onnxopt.ensemble import parity
from onnxopt.ensemble.api import ensemble
from onnxopt.errors import DataError, UsageError, VerificationError
from tests.conftest import MODELS
from tests.ensemble.ensemble_models import labelled_data, mlp

DIGITS = [MODELS / "digits_mlp.onnx", MODELS / "digits_cnn.onnx", MODELS / "digits_resnet.onnx"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"models": 1}, "at least 2 models"),
        ({"fusion": "weighted", "weights": [1, 2]}, "2 values for 3 members"),
        ({"fusion": "weighted", "weights": [1, -1, 1]}, "must not be negative"),
        ({"fusion": "vote", "weights": [0, 0, 0]}, "all zero"),
        ({"fusion": "weighted"}, "needs --weights"),
        ({"fusion": "stack"}, "needs --fit"),
        ({"fusion": "mean", "weights": [1, 1, 1]}, "applies to 'weighted' and 'vote'"),
        ({"fusion": "median"}, "unknown fusion"),
        ({"fusion": "stack", "fit": "x.npz", "l2": -1.0}, "positive"),
    ],
)
def test_bad_options_are_usage_errors(kwargs, match):
    n = kwargs.pop("models", 3)
    with pytest.raises(UsageError, match=match) as exc:
        ensemble([mlp(s) for s in range(n)], **kwargs)
    assert exc.value.exit_code == 2


def test_fit_data_without_labels(tmp_path):
    data = labelled_data(tmp_path / "nolabels.npz", labels=False)
    with pytest.raises(DataError, match="no 'labels'") as exc:
        ensemble([mlp(0), mlp(1)], fusion="stack", fit=data)
    assert exc.value.exit_code == 2 and str(data) in str(exc.value)
    with pytest.raises(UsageError, match="applies to 'weighted' and 'stack'"):
        ensemble([mlp(0), mlp(1)], fusion="mean", fit=data)


def test_labels_outside_the_class_range(tmp_path):
    x = np.zeros((10, 6), np.float32)
    np.savez(tmp_path / "d.npz", x=x, labels=np.full(10, 7))
    with pytest.raises(DataError, match="4 classes"):
        ensemble([mlp(0), mlp(1)], fusion="stack", fit=tmp_path / "d.npz")


def test_parity_mismatch_is_exit_3(monkeypatch):
    real = parity.reference

    def off_by_a_bit(fusion, arrays):
        return [r + np.asarray(0.01, r.dtype) if r.dtype.kind == "f" else r for r in real(fusion, arrays)]

    monkeypatch.setattr(parity, "reference", off_by_a_bit)
    with pytest.raises(VerificationError, match="parity check failed: output 'y' differs from the numpy mean") as exc:
        ensemble([mlp(0), mlp(1)], fusion="mean")
    assert exc.value.exit_code == 3


def test_fitted_weights_and_stack_on_learnable_data(tmp_path):
    fit = labelled_data(tmp_path / "fit.npz", n=160, seed=1)
    test = labelled_data(tmp_path / "test.npz", n=120, seed=2)
    members = [mlp(s, hidden=16) for s in range(3)]
    res = ensemble(members, fusion="weighted", fit=fit, softmax=True, data=test)
    w = res.report["fusion"]["weights"]
    assert sum(w) == pytest.approx(1.0) and min(w) >= 0
    assert res.report["fit"]["nll"] <= res.report["fit"]["nll_uniform"]
    res = ensemble(members, fusion="stack", fit=fit, data=test, head="ridge", l2=0.1)
    assert res.report["fit"]["kind"] == "ridge" and res.report["fit"]["l2"] == 0.1
    acc = res.report["accuracy"]
    # random members know nothing; the fitted head learns the linear rule through them
    assert acc["ensemble"] > acc["best_member"] + 10
    assert res.report["fit_accuracy"]["note"].startswith("in-sample")
    assert [o.name for o in res.model.graph.output] == ["probabilities"]


def test_deterministic_bytes_and_provenance(tmp_path):
    fit = labelled_data(tmp_path / "fit.npz", n=80)
    kw = {"fusion": "stack", "fit": fit, "keep_member_outputs": True, "parallel": False}  # carried options are a timing choice
    a = ensemble([mlp(0), mlp(1)], **kw)
    b = ensemble([mlp(0), mlp(1)], **kw)
    assert a.model.SerializeToString(deterministic=True) == b.model.SerializeToString(deterministic=True)
    prov = read_provenance(a.model)
    assert prov["command"] == "ensemble" and prov["parity"]["ok"]
    (step,) = prov["steps"]  # the merge pass's record: members named, weights shared, the head, the parity check
    assert step["name"] == "merge" and step["params"]["models"] == ["m", "m"] and step["params"]["fit"] == "fit.npz"
    assert set(step["details"]["shared_initializers"]) == {"initializers_merged", "bytes_saved"} and step["details"]["fusion"]["kind"] == "stack"
    assert step["verification"]["check"]["ort_loaded"] and step["verification"]["parity"]["ok"]
    json.dumps(a.report, default=str)
    out = a.save(tmp_path / "e.onnx")
    assert out.read_bytes() == b.model.SerializeToString(deterministic=True)


def test_digits_vote_and_stack_beat_or_match_the_best_member():
    """The demo's path: fit on digits_calib, evaluate on digits_test (all 400 samples)."""
    vote = ensemble(DIGITS, fusion="vote", data=MODELS / "digits_test.npz")
    acc = vote.report["accuracy"]
    assert acc["samples"] == 400 and set(acc["members"]) == {p.name for p in DIGITS}
    assert acc["ensemble"] >= acc["best_member"]
    assert [o.name for o in vote.model.graph.output] == ["label", "votes"]
    stack = ensemble(DIGITS, fusion="stack", fit=MODELS / "digits_calib.npz", data=MODELS / "digits_test.npz")
    sacc = stack.report["accuracy"]
    assert sacc["ensemble"] >= sacc["best_member"]
    assert stack.report["parity"]["ok"] and stack.report["parity"]["samples"] == 400
    assert stack.report["fit"]["converged"]


def test_parity_on_outputs_that_are_all_zero_says_so():
    # values within 1e-6 of 0 pass on the absolute floor: the report must not pretend that proves much
    tiny = [mlp(s) for s in (0, 1)]
    for m in tiny:
        for t in m.graph.initializer:
            if t.name.startswith("fc2"):
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(1e-9), t.name))
    res = ensemble(tiny, fusion="mean")
    assert res.report["parity"]["ok"] and res.report["parity"]["weak"] == ["y"]
    assert any("says little about member output(s) y:" in n for n in res.report["notes"])
    assert not ensemble([mlp(0), mlp(1)]).report["parity"]["weak"]
