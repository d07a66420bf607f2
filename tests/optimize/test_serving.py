"""optimize and serving: --objective, the offline-optimized candidate, carried session options."""

from __future__ import annotations

import pytest

from onnxopt.core.provenance import read_provenance
from onnxopt.errors import UsageError
from onnxopt.optimize.api import optimize, render_decision_table
from onnxopt.serving.carry import carried_options, check_carried
from onnxopt.session_options import SessionConfig
from tests.conftest import MODELS


def _recipe(tmp_path, body: str):
    p = tmp_path / "r.toml"
    p.write_text('name = "r"\ntarget = "cpu"\n[[steps]]\npass = "simplify"\n[optimize]\n' + body)
    return p


def test_objective_validation(invoke, tmp_path):
    with pytest.raises(UsageError, match="unknown objective"):
        optimize(MODELS / "digits_mlp.onnx", objective="speed")
    out = tmp_path / "o.onnx"
    r = invoke("optimize", MODELS / "digits_mlp.onnx", "-o", out, "--objective", "speed")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and not out.exists()


def test_cold_start_objective_offline_candidate_and_carried_options(tmp_path):
    recipe = _recipe(tmp_path, 'candidates = ["fp32", "ort-offline"]\ncold_start_repeats = 2\n')
    res = optimize(MODELS / "digits_cnn.onnx", recipe=recipe, eval_data=MODELS / "digits_test.npz", objective="cold-start", threads=1, time_budget=0.3)
    d = res.report["decision"]
    rows = {r["name"]: r for r in d["rows"]}
    assert set(rows) == {"fp32", "ort-offline"} and d["objective"] == "cold-start"
    off = rows["ort-offline"]
    assert off["verified"] and off["source"] == "onnxruntime"
    assert any("bound to the provider" in n for n in off["notes"])
    assert d["input_cold_start_ms"] > 0
    assert all(r["cold_start_ms"] > 0 for r in rows.values() if r["status"] in ("chosen", "eligible"))
    # the written model carries verified options, mirrored in provenance
    cfg = carried_options(res.model)
    assert cfg is not None and check_carried(res.model) == cfg
    assert SessionConfig.from_dict(read_provenance(res.model)["session_options"]) == cfg
    assert d["session_options"]["rows"] and d["session_options"]["chosen"] == cfg.to_dict()
    if d["chosen"] == "ort-offline":
        assert cfg.optimization_level == "disable"
        assert any("bound to the provider" in n for n in res.report["notes"])
    text = render_decision_table(res.report)
    assert "cold start ms" in text and "options: " in text and "session options carried" in text


def test_size_objective_and_no_session_options(tmp_path):
    recipe = _recipe(tmp_path, 'candidates = ["fp32", "int8-dynamic"]\nmin_gain = 0.05\nmax_accuracy_drop = 100.0\n')
    res = optimize(
        MODELS / "digits_mlp.onnx", recipe=recipe, eval_data=MODELS / "digits_test.npz", objective="size", session_options=False, threads=1, time_budget=0.3
    )
    d = res.report["decision"]
    assert d["session_options"] is None and carried_options(res.model) is None
    rows = {r["name"]: r for r in d["rows"]}
    if d["chosen"] == "int8-dynamic":  # smaller by far; chosen unless slower than the input
        assert rows["int8-dynamic"]["size_bytes"] < rows["fp32"]["size_bytes"]
        assert rows["int8-dynamic"]["confirm_ratio"] >= 0.97
