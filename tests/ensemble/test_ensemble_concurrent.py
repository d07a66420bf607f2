"""ensemble: members timed separately vs merged sequential / parallel / one thread; options carried."""

from __future__ import annotations

from onnxopt.ensemble.api import ensemble
from onnxopt.serving.carry import carried_options, check_carried
from onnxopt.session_options import SessionConfig, machine_cores
from tests.ensemble.ensemble_models import mlp


def test_three_ways_reported_and_parallel_carried_only_when_it_wins():
    res = ensemble([mlp(0), mlp(1), mlp(2)])
    c = res.report["concurrency"]
    assert c["branch_width"] >= 3 and c["reason"]
    if machine_cores() < 2:
        assert not c["carried"] and carried_options(res.model) is None
        return
    for k in ("separate_ms", "sequential_ms", "parallel_ms"):
        assert c[k] > 0
    assert {"parallel_vs_sequential", "parallel_vs_separate", "sequential_vs_separate"} <= set(c)
    cfg = SessionConfig.from_dict(c["options"])
    assert cfg.execution_mode == "parallel" and cfg.inter_op_threads >= 2
    assert c["one_thread_ms"] > 0 and "one_thread_vs_separate" in c
    if c["carried"]:
        way = c["carried_way"]
        assert way in ("parallel", "one_thread") and c[f"{way}_vs_sequential"]["ratio"] >= 1.03 and c["confirm_ratio"] >= 1.03
        carried = SessionConfig.from_dict(c["carried_options"])
        assert carried == (cfg if way == "parallel" else SessionConfig(intra_op_threads=1))
        assert carried_options(res.model) == carried and check_carried(res.model) == carried
    else:
        assert carried_options(res.model) is None


def test_no_parallel_and_fused_members():
    res = ensemble([mlp(0), mlp(1)], parallel=False)
    assert "concurrency" not in res.report and carried_options(res.model) is None
    fused = ensemble([mlp(0), mlp(1)], fuse_members=True)
    c = fused.report["concurrency"]
    if any(g["applied"] for g in fused.report["horizontal"]["groups"]):
        assert c["branch_width"] == 1 and not c["carried"] and "fused" in c["reason"]


def test_cli_reports_the_three(invoke, tmp_path):
    import onnx

    paths = []
    for k in range(3):
        p = tmp_path / f"m{k}.onnx"
        onnx.save(mlp(k), p)
        paths.append(p)
    out = tmp_path / "e.onnx"
    r = invoke("ensemble", *paths, "-o", out)
    assert r.exit_code == 0, r.output
    assert "session options:" in r.output
    if machine_cores() >= 2:
        assert "members in separate sessions" in r.output and "merged parallel" in r.output


def test_chosen_options_carried_by_the_session_options_step(monkeypatch):
    """Whatever the timing decides, what it decides is carried by the verified pass and recorded."""
    from onnxopt.core.provenance import read_provenance
    from onnxopt.ensemble import concurrent

    one = SessionConfig(intra_op_threads=1, allow_spinning=False)
    block = {"branch_width": 2, "carried": True, "carried_options": one.to_dict(), "carried_way": "one_thread", "reason": "chosen (test)"}
    monkeypatch.setattr(concurrent, "parallel_options", lambda *a, **k: dict(block))
    res = ensemble([mlp(0), mlp(1)])
    assert carried_options(res.model) == one and check_carried(res.model) == one
    prov = read_provenance(res.model)
    assert [s["name"] for s in prov["steps"]] == ["merge", "session-options"]
    assert prov["session_options"] == one.to_dict()
