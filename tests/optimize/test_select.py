"""The decision rules on hand-made rows (no timing): eligibility, min_gain, fallbacks."""

from __future__ import annotations

from onnxopt.optimize.select import Row, decide, render_decision_table


def _row(name, ratio, *, lossless=False, drop=0.0, budget=1.0, verified=True):
    r = Row(
        name,
        name,
        lossless,
        verified=verified,
        timed=ratio is not None,
        ratio=ratio,
        ci95=[ratio, ratio] if ratio else None,
    )
    r.score, r.drop = 90.0 - drop, drop
    r.within_budget = drop <= budget
    if not r.within_budget:
        r.reason = "over budget"
    return r


class FakeTimer:
    def __init__(self, confirm):
        self._confirm = confirm

    def confirm(self, name, floor=1.0):
        return self._confirm[name]


def test_fastest_lossy_within_budget_wins():
    rows = [
        _row("fp32", 1.0, lossless=True),
        _row("a", 1.5),
        _row("b", 1.8, drop=2.0),
        _row("c", 1.3),
    ]
    chosen = decide(rows, FakeTimer({"a": 1.45}))
    assert chosen.name == "a" and chosen.confirm_ratio == 1.45
    status = {r.name: r.status for r in rows}
    assert status == {"fp32": "eligible", "a": "chosen", "b": "rejected", "c": "eligible"}


def test_lossy_needs_min_gain_over_fp32():
    rows = [_row("fp32", 1.02, lossless=True), _row("a", 1.05)]
    chosen = decide(rows, None, min_gain=0.05)
    assert chosen.name == "fp32"
    assert "not 5% faster" in rows[1].reason
    assert "nothing beat the input" in rows[0].reason


def test_slower_candidates_rejected_and_confirmation_falls_through():
    rows = [_row("fp32", 1.0, lossless=True), _row("a", 0.9), _row("b", 1.6)]
    chosen = decide(rows, FakeTimer({"b": 0.8, "fp32": 1.0}))
    assert chosen.name == "fp32"
    assert rows[1].status == "rejected" and "slower" in rows[1].reason
    assert rows[2].status == "rejected" and "confirmation" in rows[2].reason
    assert "failed confirmation (b)" in rows[0].reason


def test_nothing_confirmed_means_input():
    rows = [_row("fp32", 1.0, lossless=True)]
    assert decide(rows, FakeTimer({"fp32": 0.5})) is None
    assert rows[0].status == "rejected"


def test_render_table_names_every_row():
    rows = [_row("fp32", 1.0, lossless=True), _row("int8-dynamic", 1.4)]
    decide(rows, None)
    text = render_decision_table(
        {
            "decision": {
                "rows": [r.to_dict() for r in rows],
                "target": "cpu",
                "provider": "cpu",
                "batch": 1,
                "metric": "top1",
                "data": "d.npz",
                "reference_score": 90.0,
                "max_accuracy_drop": 1.0,
                "input_latency_ms": 0.1,
                "summary": "chosen: int8-dynamic",
            }
        }
    )
    assert (
        "int8-dynamic" in text
        and "chosen" in text
        and "1.40x" in text
        and "budget 1 points" in text
    )


def test_lossy_must_keep_margin_in_confirmation():
    rows = [_row("fp32", 1.0, lossless=True), _row("a", 1.5)]
    chosen = decide(rows, FakeTimer({"a": 1.02, "fp32": 1.0}), min_gain=0.05)
    assert chosen.name == "fp32"
    assert "confirmation run: 1.02x < 1.05" in rows[1].reason


def test_confirmation_repeats_only_a_run_the_caller_would_reject():
    """A first run at or above the floor decides alone; one below it is pooled with a second."""
    import numpy as np

    from onnxopt.bench.timing import speedup
    from onnxopt.optimize.select import Timer

    class Scripted(Timer):
        def __init__(self, ratios):
            self.ratios, self.runs_done = list(ratios), 0

        def measure(self, names, **kw):
            r = self.ratios[self.runs_done]
            self.runs_done += 1
            base, lat = np.full(50, 1.0), np.full(50, 1.0 / r)
            return {names[0]: (speedup(base, lat), lat, base)}

    once = Scripted([0.98, 1.2])
    assert abs(once.confirm("a", floor=0.97) - 0.98) < 1e-6 and once.runs_done == 1
    twice = Scripted([0.95, 1.05])
    ratio = twice.confirm("a", floor=0.97)
    assert twice.runs_done == 2 and 0.95 < ratio < 1.05
