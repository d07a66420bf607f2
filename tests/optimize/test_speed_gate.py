"""``optimize``'s speed gate: a static candidate whose fully quantized model is clearly
slower than a candidate already fitted to the budget skips its budget search."""

from __future__ import annotations

import numpy as np

from onnxopt.data import Dataset
from onnxopt.metrics import Budget, Evaluator
from onnxopt.optimize.candidates import BuildEnv, Candidate, speed_gate
from tests.optimize.opt_models import matmul_stack


def _env(reference, rivals):
    x = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    ds = Dataset("<x>", arrays={"x": x})
    env = BuildEnv("cpu", "cpu", ds, Evaluator(reference, ds, "cosine"), Budget(1.0, "cosine"), reference=reference, feed={"x": x}, threads=1)
    env.built = rivals
    return env


def test_a_clearly_slower_candidate_cannot_win_and_a_faster_one_goes_on():
    small, large = matmul_stack(2, 256, last="Relu"), matmul_stack(24, 256, last="Relu")
    fast_rival = Candidate("int8-dynamic", "int8-dynamic", small, source="onnxopt.quantize")
    why = speed_gate(_env(small, [fast_rival]), "int8-static")(large)
    assert why is not None and why.startswith("fully quantized it runs") and "int8-dynamic (within budget)" in why
    slow_rival = Candidate("int8-dynamic", "int8-dynamic", large, source="onnxopt.quantize")
    assert speed_gate(_env(large, [slow_rival]), "int8-static")(small) is None


def test_no_gate_without_a_rival_fitted_to_the_budget_or_a_lossless_one():
    m = matmul_stack(2, 256, last="Relu")
    assert speed_gate(_env(m, []), "int8-static") is None
    ort_plain = Candidate("int8-dynamic-ort", "int8-dynamic", m, source="onnxruntime.quantization")
    assert speed_gate(_env(m, [ort_plain]), "int8-static") is None
    fp16 = Candidate("fp16", "fp16", m, lossless=True, timeable=False)
    assert speed_gate(_env(m, [ort_plain, fp16]), "int8-static") is None


def test_a_lossy_model_must_beat_the_lossless_one_by_min_gain():
    """decide() chooses a lossy candidate only when it is ``min_gain`` faster than the best
    lossless one: a fully quantized model below that bar cannot win either."""
    small, large = matmul_stack(2, 256, last="Relu"), matmul_stack(24, 256, last="Relu")
    fp32 = Candidate("fp32", "fp32", small, lossless=True)
    why = speed_gate(_env(large, [fp32]), "int8-static")(large)  # about as fast as the input; fp32 far faster
    assert why is not None and "fp32 (lossless)" in why and "to beat by 5%" in why
    slow_fp32 = Candidate("fp32", "fp32", large, lossless=True)
    assert speed_gate(_env(large, [slow_fp32]), "int8-static")(small) is None  # far faster than the bar


def test_no_gate_when_the_choice_does_not_weigh_latency():
    small = matmul_stack(2, 256, last="Relu")
    rival = Candidate("int8-dynamic", "int8-dynamic", small, source="onnxopt.quantize")
    for objective in ("size", "cold-start"):
        env = _env(small, [rival])
        env.objective = objective
        assert speed_gate(env, "int8-static") is None  # a slower static model may still be the smallest


def test_the_table_reason_of_a_candidate_that_cannot_win():
    from onnxopt.errors import BudgetError
    from onnxopt.optimize.candidates import _why

    assert _why(BudgetError("static per-tensor: cannot win: fully quantized it runs 1.2x")) == "static per-tensor: cannot win: fully quantized it runs 1.2x"
    assert _why(BudgetError("static: accuracy budget not met")).startswith("over budget: ")


def test_a_rival_is_timed_once_per_run_and_a_spilled_one_from_its_file(tmp_path):
    small, large = matmul_stack(2, 256, last="Relu"), matmul_stack(24, 256, last="Relu")
    rival = Candidate("int8-dynamic", "int8-dynamic", small, source="onnxopt.quantize")
    rival.spill(tmp_path)
    assert rival.model is None and rival.stored.is_file() and rival.built
    env = _env(small, [rival])
    assert speed_gate(env, "int8-static")(large) is not None
    first = env.gate_ratios["int8-dynamic"]
    assert speed_gate(env, "int8-static-per-channel")(large) is not None
    assert env.gate_ratios["int8-dynamic"] is first  # not timed again for the second static candidate
