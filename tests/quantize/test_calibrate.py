"""Streaming calibration statistics, on arrays alone."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from onnxopt.quantize.calibrate import (
    Histogram,
    MinMax,
    RangeStats,
    entropy_range,
    kl_divergence,
    percentile_range,
    smooth_distribution,
)


def test_minmax_streams_to_the_global_range_and_skips_nan():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(10_000).astype(np.float32)
    x[17] = np.nan
    mm = MinMax()
    for part in np.array_split(x, 13):
        mm.update(part)
    finite = x[np.isfinite(x)]
    assert mm.range() == (float(finite.min()), float(finite.max()))
    assert mm.count == finite.size


def test_histogram_doubling_merge_is_exact():
    """Counts built batch by batch (bound doubling on the way) equal a one-shot histogram
    over the final bound."""
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal(5000).astype(np.float32) * s for s in (0.5, 1.0, 3.0, 9.0)]
    h = Histogram(256)
    for p in parts:
        h.update(p)
    allx = np.concatenate(parts)
    assert h.bound >= np.abs(allx).max()
    ref, _ = np.histogram(allx, bins=256, range=(-h.bound, h.bound))
    # a value within float rounding of an edge may land in the neighbouring bin
    assert np.abs(h.counts - ref).sum() <= 4
    assert h.total == allx.size
    assert h.counts.size == 256  # fixed state whatever the number of batches


def test_histogram_of_zeros_then_values():
    h = Histogram(64)
    h.update(np.zeros(10, np.float32))
    h.update(np.array([1.0, -1.0], np.float32))
    assert h.total == 12
    assert h.counts[32] >= 10  # the zeros sit in the bin right of zero


def test_percentile_range_matches_numpy_within_a_bin():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(200_000).astype(np.float32)
    h = Histogram(2048)
    for part in np.array_split(x, 20):
        h.update(part)
    lo, hi = percentile_range(h, 99.9)
    width = 2 * h.bound / h.bins
    want_lo, want_hi = np.percentile(x, [0.05, 99.95])
    assert abs(lo - want_lo) <= 2 * width
    assert abs(hi - want_hi) <= 2 * width
    assert percentile_range(h, 100.0) == (pytest.approx(float(x.min())), pytest.approx(float(x.max())))


def test_entropy_clips_outliers_but_keeps_the_bulk():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(100_000), [60.0, -55.0]]).astype(np.float32)
    h = Histogram(2048)
    for part in np.array_split(x, 10):
        h.update(part)
    lo, hi = entropy_range(h)
    assert 2.0 < hi < 20.0 and -20.0 < lo < -2.0  # far inside the outliers, beyond the bulk
    mm_lo, mm_hi = float(x.min()), float(x.max())
    assert lo >= mm_lo and hi <= mm_hi


def test_smoothing_and_kl():
    p = np.array([0.0, 2.0, 2.0, 0.0])
    s = smooth_distribution(p)
    assert np.all(s > 0) and s.sum() == pytest.approx(p.sum())
    assert smooth_distribution(np.zeros(3)) is None
    assert kl_divergence([1, 1], [1, 1]) == pytest.approx(0.0)
    assert kl_divergence([1, 0], [0, 1]) == float("inf")


def test_range_stats_per_method():
    rng = np.random.default_rng(4)
    for method in ("minmax", "percentile", "entropy"):
        rs = RangeStats(method)
        for _ in range(3):
            rs.update("a", rng.standard_normal(1000).astype(np.float32))
        rs.update("empty", np.array([np.nan], np.float32))
        r = rs.ranges()
        assert set(r) == {"a"}
        lo, hi = r["a"]
        assert lo < 0 < hi
    with pytest.raises(ValueError):
        RangeStats("kl")


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.integers(1, 300), elements=st.floats(-1e4, 1e4, width=32)), st.integers(1, 5))
def test_histogram_properties(x, splits):
    h = Histogram(64)
    for part in np.array_split(x, min(splits, x.size)):
        h.update(part)
    assert h.total == x.size
    lo, hi = percentile_range(h, 99.0)
    assert float(x.min()) <= lo <= hi <= float(x.max())
    elo, ehi = entropy_range(h, 16)
    assert float(x.min()) <= elo <= ehi <= float(x.max())
