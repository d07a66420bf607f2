"""Profiler trace grouping, the slowdown explanations, CPU instruction sets."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.bench.environment import cpu_isa, isa_summary
from onnxopt.diagnose.hints import diagnose_hint, int8_speed_note
from onnxopt.diagnose.profile import diff_profiles, parse_trace, profile_model
from tests.diagnose.diag_models import qdq
from tests.toy_models import tiny_cnn


def _ev(name, op, dur, ts, provider="CPUExecutionProvider"):
    return {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur, "ts": ts, "args": {"op_name": op, "provider": provider}}


def _run(ts):
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": 5}


TRACE = [
    {"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 50},
    _run(100), _ev("conv", "Conv", 900, 101), _ev("fc", "Gemm", 90, 110),  # warm-up: left out
    _run(200), _ev("conv", "Conv", 30, 201), _ev("fc", "Gemm", 10, 210), _ev("fc_fence_before", "Gemm", 99, 211) | {"name": "fc_fence_before"},
    _run(300), _ev("conv", "Conv", 50, 301), _ev("fc", "Gemm", 10, 310),
]  # fmt: skip


def test_parse_trace_groups_per_node_and_op_without_warmup():
    p = parse_trace(TRACE)
    assert p.runs == 2
    assert p.per_node == {"conv": pytest.approx(40.0), "fc": pytest.approx(10.0)}
    assert p.per_op == {"Conv": pytest.approx(40.0), "Gemm": pytest.approx(10.0)}
    assert p.count_op == {"Conv": 1, "Gemm": 1} and p.total_us == pytest.approx(50.0)


def _cand_trace():
    ev = [_run(100), _run(200)]
    ev += [_ev("conv_quant", "ConvInteger", 300, 201), _ev("x_dq", "DynamicQuantizeLinear", 40, 202), _ev("cast", "Cast", 20, 203), _ev("fc", "Gemm", 10, 204)]
    ev += [_ev("q1", "QuantizeLinear", 5, 205), _ev("d1", "DequantizeLinear", 5, 206), _ev("moved", "Relu", 7, 207, provider="CUDAExecutionProvider")]
    return ev


def test_explanations_name_what_a_user_acts_on():
    ref, cand = parse_trace(TRACE), parse_trace(_cand_trace())
    d = diff_profiles(ref, cand, {"vnni": False})
    text = "\n".join(d.explanations)
    assert "no VNNI: dynamic INT8 Conv runs as ConvInteger" in text and "vs 0.04 ms for Conv in the reference" in text
    assert "2 QuantizeLinear/DequantizeLinear kernel(s) ran on their own" in text
    assert "DynamicQuantizeLinear" in text and "1 Cast kernel(s) the reference does not have" in text
    assert "1 node(s) ran on CUDAExecutionProvider" in text
    assert d.rows[0]["op"] == "ConvInteger" and d.rows[0]["added_ms"] == pytest.approx(0.3)
    with_vnni = diff_profiles(ref, cand, {"vnni": True}).explanations
    assert not any("no VNNI" in e for e in with_vnni) and any("even with VNNI" in e for e in with_vnni)


def test_profile_model_on_a_real_session():
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    p = profile_model(tiny_cnn(), {"x": x}, runs=3)
    assert p.runs == 3 and p.per_op and all(v > 0 for v in p.per_op.values())
    q = profile_model(qdq(), {"x": x}, runs=3)
    assert any(op.startswith("QLinear") or op == "QuantizeLinear" for op in q.per_op)


def test_cpu_isa_is_read_once_and_summarized():
    isa = cpu_isa()
    assert set(isa) >= {"avx2", "avx512", "vnni", "amx", "arm_dotprod"} and cpu_isa() is isa
    assert isa_summary({"avx2": True, "vnni": False}) == "AVX2"
    assert isa_summary({"avx2": False}).startswith("none of ")


def test_bench_environment_shows_isa():
    from onnxopt.bench.environment import capture

    assert capture("cpu")["cpu_isa"] == isa_summary()


def test_hint_and_int8_note(monkeypatch):
    import onnx

    assert diagnose_hint("a.onnx", "b c.onnx", data="d.npz") == "; explain: onnxopt diagnose a.onnx 'b c.onnx' --data d.npz"
    assert diagnose_hint("m.onnx", recipe="cpu-int8") == "; explain: onnxopt diagnose --recipe cpu-int8 m.onnx"
    assert diagnose_hint(onnx.ModelProto(), "b.onnx") == ""  # a model in memory cannot be named
    from onnx import helper

    m = helper.make_model(helper.make_graph([helper.make_node("ConvInteger", ["x", "w"], ["y"])], "g", [], []))
    import onnxopt.diagnose.hints as hints

    monkeypatch.setattr("onnxopt.bench.environment.cpu_isa", lambda: {"vnni": False, "arm_dotprod": False})
    assert hints.int8_speed_note(m) == "no VNNI: dynamic INT8 Conv runs as ConvInteger, slower than FP32 here"
    monkeypatch.setattr("onnxopt.bench.environment.cpu_isa", lambda: {"vnni": True})
    assert int8_speed_note(m) == ""
