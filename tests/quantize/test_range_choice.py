"""Ranges per tensor (``--method auto``): MinMax, percentile or entropy chosen per activation
by its quantization error, the clipped fraction reported, and the percentile refused (with a
warning naming the tensor) where there are too few values for it."""

from __future__ import annotations

import numpy as np

from onnxopt.data import Dataset
from onnxopt.quantize.api import quantize
from onnxopt.quantize.calibrate import (
    Histogram,
    RangeStats,
    choose_range,
    clipped_fraction,
    percentile_needs,
    quant_error,
)
from onnxopt.quantize.collect import collect_ranges
from tests.quantize.quant_models import mlp


def _hist(values) -> Histogram:
    h = Histogram(2048)
    h.update(np.asarray(values, dtype=np.float32))
    return h


def test_quant_error_rounding_and_clipping():
    h = _hist(np.linspace(0, 255, 100_000))
    # inside: step^2 / 12 with step 1
    assert quant_error(h, 0, 255) == np.float64(quant_error(h, 0, 255))
    assert abs(quant_error(h, 0, 255) - 1 / 12) < 0.02
    # half the values clipped at 127.5: their squared distance dominates
    assert quant_error(h, 0, 127.5) > 100 * quant_error(h, 0, 255)
    assert abs(clipped_fraction(h, 0, 127.5) - 0.5) < 0.01 and clipped_fraction(h, 0, 255) == 0


def test_choose_range_per_distribution():
    rng = np.random.default_rng(0)
    uniform = _hist(rng.uniform(-1, 1, 300_000))
    c = choose_range(uniform)
    assert c["method"] == "minmax" and c["clipped"] == 0
    # a heavy tail: cutting the outermost values costs less than the coarser steps
    c = choose_range(_hist(rng.laplace(0, 1, 300_000)))
    assert c["method"] != "minmax" and c["error"] < 0.95 * c["errors"]["minmax"]
    assert c["error"] == min(c["errors"].values()) and 0 < c["clipped"] < 1e-4
    # a Relu output: the entropy window is far too narrow for it (error, not KL, decides)
    c = choose_range(_hist(np.maximum(rng.laplace(0, 1, 300_000), 0)))
    assert c["method"] != "entropy" and c["errors"]["entropy"] > 10 * c["error"]


def test_percentile_needs_enough_values_else_minmax_with_a_warning():
    assert percentile_needs(99.999) == 200_000 and percentile_needs(99.0) == 200 and percentile_needs(100) == 1
    st = RangeStats("percentile", percentile=99.999)
    x = np.random.default_rng(1).standard_normal(5000).astype(np.float32)
    st.update("small", x)
    r = st.ranges()
    assert r["small"] == (float(x.min()), float(x.max()))
    assert len(st.warnings) == 1 and "'small' (5000 values)" in st.warnings[0] and "MinMax range used" in st.warnings[0]
    ok = RangeStats("percentile", percentile=99.0)
    ok.update("big", x)
    lo, hi = ok.ranges()["big"]
    assert lo > x.min() and hi < x.max() and not ok.warnings and ok.choices["big"]["method"] == "percentile"


def test_auto_ranges_through_collect_and_quantize():
    m = mlp(hidden=32)
    x = np.random.default_rng(2).standard_normal((256, 16)).astype(np.float32)
    x[0, 0] = 300.0  # one outlier in the input
    ds = Dataset("<x>", arrays={"x": x})
    cr = collect_ranges(m, ds, method="auto")
    assert set(cr.choices) == set(cr.ranges)
    # 4096 values per tensor: too few for the 99.999 percentile, so MinMax or entropy
    assert {c["method"] for c in cr.choices.values()} <= {"minmax", "entropy"}
    summary = cr.summary()["range_choice"]
    assert sum(summary["methods"].values()) == len(cr.ranges) and 0 < summary["clipped_max"] < 0.01
    assert any(n.startswith("warning:") and "percentile needs (200000)" in n for n in cr.notes)
    assert any(n.startswith("ranges (auto): ") for n in cr.notes)
    r = quantize(m, mode="static", method="auto", calibration=ds, allow_slower=True, timing=False)
    assert r.report["calibration"]["range_choice"]["methods"] and r.report["candidates"][0]["status"] == "ok"
