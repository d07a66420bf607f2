"""Streaming calibration statistics: pure numpy, one batch at a time, constant memory.

Every statistic is updated batch by batch and keeps a fixed amount of state per tensor, so
memory does not grow with the number of calibration samples.

- ``MinMax``: running ``min`` / ``max`` over all finite values seen.
- ``Histogram``: ``bins`` (divisible by 4) equal-width bins over the symmetric range
  ``[-T, T]``.  ``T`` starts at the first batch's ``max |x|``; when a later batch holds a
  value ``|x| > T``, ``T`` doubles (as often as needed) and the old counts are merged pair by
  pair into the middle half of the bins.  The merge is exact: the old edges are a subset of
  the new ones, so no count moves across an edge (up to values within float rounding of
  an edge, binned against edges computed from a different bound).
- ``percentile_range``: with the cumulative distribution ``F`` of the merged histogram and
  the tail ``t = (100 - p) / 200``, the range is ``[left edge of the bin where F >= t,
  right edge of the bin where F >= 1 - t]``, clipped to the observed ``[min, max]``.
- ``entropy_range`` (TensorRT's KL-divergence calibration, as in ONNX Runtime): for each
  symmetric window ``[-e_i, e_i]`` of ``2i`` bins around zero (``i >= q/2``, ``q`` =
  ``num_quantized_bins``), the reference ``P`` is the window's counts with the outliers
  added to its two end bins, and the candidate ``Q`` is the window quantized to ``q`` bins
  and expanded back (each quantized bin's mass spread evenly over its non-empty source
  bins).  Both are smoothed (zeros get ``eps``, taken from the non-zero bins) and
  normalized; the window minimizing ``KL(P || Q) = sum P log(P / Q)`` gives the range,
  clipped to the observed ``[min, max]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "METHODS",
    "MinMax",
    "Histogram",
    "percentile_range",
    "entropy_range",
    "smooth_distribution",
    "kl_divergence",
    "RangeStats",
]

METHODS = ("minmax", "percentile", "entropy")
DEFAULT_BINS = 2048
DEFAULT_PERCENTILE = 99.999
DEFAULT_QUANTIZED_BINS = 128
_MIN_BOUND = 1e-30


def _finite(x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind != "f":
        a = a.astype(np.float32)
    a = a.ravel()
    if a.size and not np.isfinite(a).all():
        a = a[np.isfinite(a)]
    return a


@dataclass
class MinMax:
    """Running minimum and maximum of the finite values seen (``None`` before any)."""

    min: float | None = None
    max: float | None = None
    count: int = 0

    def update(self, x) -> None:
        a = _finite(x)
        if not a.size:
            return
        lo, hi = float(a.min()), float(a.max())
        self.update_range(lo, hi, a.size)

    def update_range(self, lo: float, hi: float, count: int = 1) -> None:
        """Merge an already reduced ``(min, max)`` pair (e.g. from ReduceMin/ReduceMax)."""
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)
        self.count += int(count)

    def range(self) -> tuple[float, float] | None:
        return None if self.min is None else (self.min, self.max)


@dataclass
class Histogram:
    """Fixed-size histogram over ``[-bound, bound]``; the bound doubles when data exceeds it."""

    bins: int = DEFAULT_BINS
    counts: np.ndarray | None = None
    bound: float = 0.0
    minmax: MinMax = field(default_factory=MinMax)
    _pending_zeros: int = 0

    def __post_init__(self):
        if self.bins < 8 or self.bins % 4:
            raise ValueError(f"bins must be a multiple of 4 and >= 8, got {self.bins}")

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.bound, self.bound, self.bins + 1)

    @property
    def total(self) -> int:
        return int(self.counts.sum()) if self.counts is not None else self._pending_zeros

    def _grow(self, amax: float) -> None:
        while amax > self.bound:
            merged = self.counts.reshape(-1, 2).sum(axis=1)
            grown = np.zeros_like(self.counts)
            q = self.bins // 4
            grown[q : q + merged.size] = merged
            self.counts = grown
            self.bound *= 2.0

    def update(self, x) -> None:
        a = _finite(x)
        if not a.size:
            return
        self.minmax.update(a)
        amax = float(np.abs(a).max())
        if self.counts is None:
            if amax == 0.0:
                self._pending_zeros += a.size  # all zeros so far: no scale to pick yet
                return
            self.counts = np.zeros(self.bins, dtype=np.int64)
            # a floor keeps the bin width a normal float32 (subnormal data is ~0 for INT8)
            self.bound = max(amax, _MIN_BOUND)
            self.counts[self.bins // 2] += self._pending_zeros
            self._pending_zeros = 0
        elif amax > self.bound:
            self._grow(amax)
        hist, _ = np.histogram(a, bins=self.bins, range=(-self.bound, self.bound))
        self.counts += hist


def percentile_range(hist: Histogram, percentile: float = DEFAULT_PERCENTILE) -> tuple[float, float] | None:
    """``[lo, hi]`` holding ``percentile`` % of the values (half the rest cut on each side)."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    rng = hist.minmax.range()
    if rng is None:
        return None
    if hist.counts is None or hist.total == 0:
        return rng
    cdf = np.cumsum(hist.counts) / hist.total
    tail = (100.0 - percentile) / 200.0
    edges = hist.edges
    i_lo = int(np.searchsorted(cdf, tail, side="left")) if tail > 0 else 0
    i_hi = int(np.searchsorted(cdf, 1.0 - tail, side="left")) if tail > 0 else hist.bins - 1
    lo = float(edges[min(i_lo, hist.bins - 1)])
    hi = float(edges[min(i_hi, hist.bins - 1) + 1])
    return max(lo, rng[0]), min(hi, rng[1])


def smooth_distribution(p: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
    """Give zero bins ``eps`` of mass, taken evenly from the non-zero bins (None if all zero)."""
    p = np.asarray(p, dtype=np.float64)
    is_zero = p == 0
    n_zero = int(is_zero.sum())
    n_nonzero = p.size - n_zero
    if n_nonzero == 0:
        return None
    if n_zero == 0:
        return p
    eps1 = eps * n_zero / n_nonzero
    out = p + eps * is_zero - eps1 * ~is_zero
    if (out <= 0).any():
        # bins too light to give eps away: fall back to a tiny uniform floor
        out = p + eps * p.sum() / p.size
    return out


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """``sum p log(p / q)`` of the normalized distributions (inf when q lacks p's support)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = p / p.sum()
    q = q / q.sum()
    mask = p > 0
    if np.any(q[mask] <= 0):
        return math.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def entropy_range(hist: Histogram, num_quantized_bins: int = DEFAULT_QUANTIZED_BINS, max_candidates: int = 256) -> tuple[float, float] | None:
    """Symmetric window around zero minimizing the KL divergence (see the module docstring).

    At most ``max_candidates`` windows are scored (evenly strided), which bounds the cost
    per tensor whatever the bin count.
    """
    rng = hist.minmax.range()
    if rng is None:
        return None
    if hist.counts is None or hist.total == 0:
        return rng
    counts = hist.counts.astype(np.float64)
    nbins = hist.bins
    centre = nbins // 2
    half_q = max(1, num_quantized_bins // 2)
    if half_q >= centre:
        return rng
    edges = hist.edges
    cands = np.arange(half_q, centre + 1)
    stride = max(1, math.ceil(cands.size / max_candidates))
    cands = cands[::stride]
    if cands[-1] != centre:
        cands = np.append(cands, centre)
    cumsum = np.concatenate([[0.0], np.cumsum(counts)])
    best_i, best_kl = int(centre), math.inf
    for i in cands:
        start, stop = centre - int(i), centre + int(i)
        sliced = counts[start:stop]
        p = sliced.copy()
        p[0] += cumsum[start]
        p[-1] += cumsum[-1] - cumsum[stop]
        # map each of the 2i source bins to one of q quantized bins (uniform partition)
        idx = (np.arange(sliced.size) * num_quantized_bins) // sliced.size
        qsum = np.bincount(idx, weights=sliced, minlength=num_quantized_bins)
        nonzero = sliced != 0
        nz_count = np.bincount(idx, weights=nonzero.astype(np.float64), minlength=num_quantized_bins)
        q = np.where(nonzero, qsum[idx] / np.maximum(nz_count[idx], 1.0), 0.0)
        ps, qs = smooth_distribution(p), smooth_distribution(q)
        if ps is None or qs is None:
            continue
        kl = kl_divergence(ps, qs)
        if kl < best_kl:
            best_kl, best_i = kl, int(i)
    lo, hi = float(edges[centre - best_i]), float(edges[centre + best_i])
    return max(lo, rng[0]), min(hi, rng[1])


@dataclass
class RangeStats:
    """Per-tensor statistics for one calibration method; ``ranges()`` gives ``{name: (lo, hi)}``."""

    method: str = "minmax"
    bins: int = DEFAULT_BINS
    percentile: float = DEFAULT_PERCENTILE
    num_quantized_bins: int = DEFAULT_QUANTIZED_BINS
    stats: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown calibration method '{self.method}' (choose from {', '.join(METHODS)})")

    def _get(self, name: str):
        st = self.stats.get(name)
        if st is None:
            st = MinMax() if self.method == "minmax" else Histogram(self.bins)
            self.stats[name] = st
        return st

    def update(self, name: str, values) -> None:
        self._get(name).update(values)

    def update_range(self, name: str, lo: float, hi: float) -> None:
        st = self._get(name)
        target = st if isinstance(st, MinMax) else st.minmax
        target.update_range(lo, hi)

    def ranges(self) -> dict[str, tuple[float, float]]:
        out = {}
        for name in sorted(self.stats):
            st = self.stats[name]
            if isinstance(st, MinMax):
                r = st.range()
            elif self.method == "percentile":
                r = percentile_range(st, self.percentile)
            else:
                r = entropy_range(st, self.num_quantized_bins)
            if r is not None:
                out[name] = (float(r[0]), float(r[1]))
        return out
