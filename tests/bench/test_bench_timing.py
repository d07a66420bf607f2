"""Interleaved timing and bootstrap ratios, tested on counters and synthetic samples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxopt.bench.timing import (
    MIN_PAIRED_BLOCKS,
    latency_summary,
    measure_interleaved,
    percentiles,
    speedup,
    time_interleaved,
)


def test_rounds_are_interleaved_blocks_and_stop_at_runs():
    calls = []
    m = measure_interleaved(calls.append, 3, runs=10, block=5, warmup=2)
    # 2 warm-up calls per model first, then rounds of 5 runs per model, in order (no shuffle)
    assert calls[:6] == [0, 0, 1, 1, 2, 2]
    assert calls[6:21] == [0] * 5 + [1] * 5 + [2] * 5
    assert [len(x) for x in m.latencies] == [10, 10, 10]
    assert m.rounds == 2 and not m.interrupted
    assert all((x >= 0).all() for x in m.latencies)


def test_shuffle_changes_order_but_each_round_holds_every_model_once():
    m = measure_interleaved(lambda i: None, 4, runs=50, block=1, shuffle_seed=3)
    assert all(sorted(o) == [0, 1, 2, 3] for o in m.order)
    assert len({tuple(o) for o in m.order}) > 1


def test_duration_caps_measurement():
    m = measure_interleaved(lambda i: None, 2, runs=None, duration=0.05, block=5)
    assert 0.05 <= m.seconds < 1.0
    assert min(len(x) for x in m.latencies) >= 5


def test_needs_runs_or_duration():
    with pytest.raises(ValueError):
        measure_interleaved(lambda i: None, 1, runs=None, duration=None)


def test_ctrl_c_returns_partial_samples():
    count = {"n": 0}

    def run(i):
        count["n"] += 1
        if count["n"] == 23:
            raise KeyboardInterrupt

    m = measure_interleaved(run, 2, runs=1000, block=5, catch_interrupt=True)
    assert m.interrupted
    assert sum(len(x) for x in m.latencies) == 22
    count["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        measure_interleaved(run, 2, runs=1000, block=5)


def test_time_interleaved_keeps_its_contract():
    class Fake:
        def __init__(self):
            self.calls = 0

        def run(self, names, feed):
            self.calls += 1

    a, b = Fake(), Fake()
    lat = time_interleaved([a, b], [{}, {}], runs=7, warmup=1, block=3)
    assert len(lat) == 2 and all(len(x) == 9 for x in lat)
    assert a.calls == b.calls == 10


def test_speedup_ratio_and_ci_on_known_samples():
    rng = np.random.default_rng(0)
    fast = 1.0 + 0.01 * rng.standard_normal(400)
    slow = 2.0 + 0.02 * rng.standard_normal(400)
    s = speedup(slow, fast)
    assert s.ratio == pytest.approx(2.0, rel=0.01)
    assert s.low < s.ratio < s.high and s.high - s.low < 0.05
    assert s.verdict == "faster"
    assert speedup(fast, slow).verdict == "slower"
    assert s.to_dict() == {"ratio": s.ratio, "ci95": [s.low, s.high]}


def test_paired_block_bootstrap_cancels_shared_drift():
    """Two equal models measured while the machine slows down: pairing rounds keeps the CI
    tight around 1 (and containing it); the iid bootstrap sees only the spread."""
    rng = np.random.default_rng(1)
    drift = np.repeat(np.linspace(1.0, 3.0, 60), 5)  # 60 rounds of 5 runs
    a = drift * (1 + 0.01 * rng.standard_normal(300))
    b = drift * (1 + 0.01 * rng.standard_normal(300))
    paired = speedup(a, b, block=5)
    iid = speedup(a, b)
    assert paired.low <= 1.0 <= paired.high
    assert paired.high - paired.low < 0.5 * (iid.high - iid.low)


def test_block_bootstrap_falls_back_with_one_block():
    s = speedup(np.array([1.0, 1.1, 1.2]), np.array([1.0, 1.1, 1.2]), block=5)
    assert s.ratio == 1.0


def test_large_samples_are_chunked():
    rng = np.random.default_rng(0)
    a = rng.random(60_000) + 1
    s = speedup(a, a * 0.5, n_boot=100)
    assert s.ratio == pytest.approx(2.0) and s.low <= 2.0 <= s.high


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(1e-5, 1.0), min_size=10, max_size=200), st.sampled_from([None, 2, 5]))
def test_a_vs_identical_a_is_exactly_one(xs, block):
    x = np.asarray(xs)
    s = speedup(x, x.copy(), block=block)
    assert s.ratio == 1.0
    rounds = len(x) // block if block else 0
    if rounds >= MIN_PAIRED_BLOCKS:  # paired resampling of identical samples: every ratio is 1
        assert s.low == s.high == 1.0 and s.method == "paired-block"
    elif rounds >= 2:
        assert s.method == "paired-block+iid"
    else:
        assert s.method == "iid"
    assert s.low <= 1.0 <= s.high


def test_few_rounds_widen_the_paired_interval_to_cover_one(monkeypatch):
    """A-vs-A with 2 rounds of 5 runs: the paired interval alone covers 1.0 about half the
    time (too few distinct resamples); the union with the iid interval keeps ~95%."""
    from onnxopt.bench import timing

    rng = np.random.default_rng(0)
    samples = [(rng.lognormal(0, 0.2, 10), rng.lognormal(0, 0.2, 10)) for _ in range(200)]
    union = [speedup(a, b, block=5, seed=r) for r, (a, b) in enumerate(samples)]
    assert {s.method for s in union} == {"paired-block+iid"}
    monkeypatch.setattr(timing, "MIN_PAIRED_BLOCKS", 2)  # the paired interval on its own
    paired = [speedup(a, b, block=5, seed=r) for r, (a, b) in enumerate(samples)]
    assert {s.method for s in paired} == {"paired-block"}
    for u, p in zip(union, paired, strict=True):
        assert u.ratio == p.ratio and u.low <= p.low and u.high >= p.high

    def cover(xs):
        return sum(s.low <= 1.0 <= s.high for s in xs) / len(xs)

    assert cover(paired) < 0.75 and cover(union) >= 0.9


def test_percentiles_and_summary_in_ms():
    lat = np.arange(1, 1001) / 1e3  # 1..1000 ms
    p = percentiles(lat)
    assert (
        p["min"] == pytest.approx(1.0)
        and p["p50"] == pytest.approx(500.5)
        and p["p99"] == pytest.approx(990.01)
    )
    s = latency_summary(lat)
    assert s["n"] == 1000 and s["max"] == pytest.approx(1000.0) and set(p) <= set(s)
