"""``optimize`` keeps its candidates on disk: each is checked as soon as it is built, then
spilled; timing loads the files one pair of sessions at a time, with the options carried."""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.core.recipe import load_recipe
from onnxopt.data import Dataset
from onnxopt.metrics import Budget, Evaluator
from onnxopt.optimize.candidates import BuildEnv, Candidate, build_candidates
from onnxopt.optimize.plan import plan_from_recipe
from onnxopt.optimize.select import Timer, time_candidates, verify_candidate
from onnxopt.serving.carry import carried_options, carry_options
from onnxopt.session_options import SessionConfig
from tests.optimize.opt_models import matmul_stack


def _env(model, tmp_path):
    x = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    ds = Dataset("<x>", arrays={"x": x})
    env = BuildEnv("cpu", "cpu", ds, Evaluator(model, ds, "cosine"), Budget(1.0, "cosine"), reference=model, feed={"x": x[:1]}, threads=1)
    env.store = tmp_path
    return env


def test_spill_keeps_the_model_and_its_options(tmp_path):
    m = matmul_stack(2, 64)
    carry_options(m, SessionConfig(intra_op_threads=1))
    c = Candidate("a", "fp32", m)
    c.spill(tmp_path)
    assert c.model is None and c.stored.parent == tmp_path
    back = c.load()
    assert back.graph.SerializeToString() == m.graph.SerializeToString()
    assert c.carried() == carried_options(m) and c.carried().intra_op_threads == 1
    assert Candidate("refused", "fp32", None, refused="no").load() is None


def test_candidates_are_checked_while_in_memory_then_timed_from_disk(tmp_path):
    m = matmul_stack(3, 64)
    env = _env(m, tmp_path)
    specs = [s for s in plan_from_recipe(load_recipe("cpu")).candidates if s.kind in ("fp32", "int8-dynamic")]
    rows, seen = [], []

    def check(c):
        seen.append(c.model is not None or c.refused is not None)
        rows.append(verify_candidate(c, env))

    cands = build_candidates(m, env, specs, check=check)
    assert all(seen) and {c.name for c in cands} >= {"fp32", "int8-dynamic"}
    assert all(c.model is None for c in cands) and all(c.stored is not None for c in cands if not c.refused)
    timer = Timer(m, env.feed, "cpu", threads=1, runs=20, duration=0.5, min_seconds=0.1)
    time_candidates(rows, {c.name: c for c in cands}, timer)
    by = {r.name: r for r in rows}
    assert by["fp32"].same_as_input and by["fp32"].ratio == 1.0  # the spilled fp32 is the input's graph
    assert by["int8-dynamic"].timed and by["int8-dynamic"].ratio > 0 and by["int8-dynamic"].latency_ms > 0
    assert isinstance(cands[0].load(), onnx.ModelProto)


def test_the_input_waits_on_disk_while_the_candidates_are_built(tmp_path, monkeypatch):
    import onnxopt.optimize.api as api
    from tests.conftest import MODELS

    seen = {}
    real = api.build_candidates

    def spy(base, env, *a, **k):
        seen["reference"] = env.reference
        return real(base, env, *a, **k)

    monkeypatch.setattr(api, "build_candidates", spy)
    res = api.optimize(MODELS / "digits_mlp.onnx", eval_data=MODELS / "digits_test.npz", recipe="cpu", time_budget=0.2, session_options=False)
    assert not isinstance(seen["reference"], onnx.ModelProto) and seen["reference"].suffix == ".onnx"  # a file, not a proto
    rows = {r["name"]: r for r in res.report["decision"]["rows"]}
    assert rows["fp32"]["verified"] and res.report["before"]["nodes"] > 0  # the input is back in memory after the build
