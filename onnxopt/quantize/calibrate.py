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
- ``auto`` (per tensor): the MinMax, percentile and entropy ranges of each tensor's
  histogram are scored by the expected squared error of 8-bit quantization with that range
  (``quant_error``): ``step^2 / 12`` for each value inside (``step = (hi - lo) / 255``, the
  range widened to hold 0) plus the squared distance to the range for each value clipped;
  the range with the smallest error wins.  For a layer that reads the tensor (``y = x W``),
  uniform quantization noise of variance ``e`` adds ``e * ||W||_F^2`` to its output's
  squared error, so this order is the order of the layer's output error under that model.
- A percentile needs ``ceil(200 / (100 - p))`` values to cut at least one value per side
  (``percentile_needs``); with fewer, the tensor gets its MinMax range and a warning.
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
    "percentile_needs",
    "quant_error",
    "clipped_fraction",
    "choose_range",
    "few_values_warning",
]

METHODS = ("minmax", "percentile", "entropy", "auto")
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
        self.update_range(float(a.min()), float(a.max()), a.size)

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
        self.counts += np.histogram(a, bins=self.bins, range=(-self.bound, self.bound))[0]


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


def percentile_needs(percentile: float) -> int:
    """Values a ``percentile`` range needs to cut at least one value on each side."""
    return 1 if percentile >= 100 else math.ceil(200.0 / (100.0 - percentile))


def _bins(hist: Histogram) -> tuple[np.ndarray, np.ndarray]:
    e = hist.edges
    return (e[:-1] + e[1:]) / 2.0, hist.counts.astype(np.float64)


def quant_error(hist: Histogram, lo: float, hi: float, levels: int = 256) -> float:
    """Expected squared error per value of quantizing ``hist``'s values to ``levels`` steps
    over ``[lo, hi]`` (widened to hold 0): rounding inside, clipping outside."""
    if hist.counts is None or hist.total == 0:
        return 0.0
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    step = (hi - lo) / (levels - 1)
    centers, counts = _bins(hist)
    clip = np.where(centers < lo, lo - centers, np.where(centers > hi, centers - hi, 0.0))
    inside = clip == 0
    err = counts[inside].sum() * step**2 / 12.0 + (counts * clip**2).sum()
    return float(err / counts.sum())


def clipped_fraction(hist: Histogram, lo: float, hi: float) -> float:
    """Share of ``hist``'s values outside ``[lo, hi]``."""
    if hist.counts is None or hist.total == 0:
        return 0.0
    centers, counts = _bins(hist)
    return float(counts[(centers < lo) | (centers > hi)].sum() / counts.sum())


def choose_range(hist: Histogram, percentile: float = DEFAULT_PERCENTILE, num_quantized_bins: int = DEFAULT_QUANTIZED_BINS) -> dict | None:
    """The MinMax, percentile or entropy range of ``hist`` with the smallest ``quant_error``:
    ``{"method", "range", "error", "clipped", "errors"}`` (None without values).  The
    percentile candidate is left out when the histogram has fewer values than it needs."""
    mm = hist.minmax.range()
    if mm is None:
        return None
    cands = {"minmax": mm, "percentile": percentile_range(hist, percentile) if hist.total >= percentile_needs(percentile) else None}
    cands["entropy"] = entropy_range(hist, num_quantized_bins) if hist.counts is not None else None
    errors = {k: quant_error(hist, *r) for k, r in cands.items() if r is not None}  # a missing candidate is None
    best = min(errors, key=lambda k: (errors[k], k != "minmax"))
    r = cands[best]
    return {"method": best, "range": (float(r[0]), float(r[1])), "error": errors[best], "clipped": clipped_fraction(hist, *r), "errors": errors}


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
    p, q = (a / a.sum() for a in (np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)))
    mask = p > 0
    return math.inf if np.any(q[mask] <= 0) else float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


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
    centre = hist.bins // 2
    half_q = max(1, num_quantized_bins // 2)
    if half_q >= centre:
        return rng
    edges = hist.edges
    cands = np.arange(half_q, centre + 1)
    cands = cands[:: max(1, math.ceil(cands.size / max_candidates))]
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
    warnings: list = field(default_factory=list)  # filled by ranges()
    choices: dict = field(default_factory=dict)  # auto / percentile: tensor -> what was chosen

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown calibration method '{self.method}' (choose from {', '.join(METHODS)})")

    def _get(self, name: str):
        if name not in self.stats:
            self.stats[name] = MinMax() if self.method == "minmax" else Histogram(self.bins)
        return self.stats[name]

    def update(self, name: str, values) -> None:
        self._get(name).update(values)

    def update_range(self, name: str, lo: float, hi: float) -> None:
        st = self._get(name)
        (st if isinstance(st, MinMax) else st.minmax).update_range(lo, hi)

    def ranges(self) -> dict[str, tuple[float, float]]:
        """``{name: (lo, hi)}``; fills ``warnings`` (tensors with too few values for the
        percentile) and, for ``auto`` / ``percentile``, ``choices`` (method and clipped
        fraction per tensor)."""
        out = {}
        self.choices, few = {}, {}
        need = percentile_needs(self.percentile)
        for name in sorted(self.stats):
            st = self.stats[name]
            if self.method in ("auto", "percentile") and 0 < st.total < need:
                few[name] = st.total  # auto: choose_range leaves the percentile out
            if isinstance(st, MinMax):
                r = st.range()
            elif self.method == "auto":
                c = choose_range(st, self.percentile, self.num_quantized_bins)
                r = None if c is None else c["range"]
                if c is not None:
                    self.choices[name] = {"method": c["method"], "clipped": c["clipped"]}
            elif self.method == "percentile":
                r, used = (st.minmax.range(), "minmax") if name in few else (percentile_range(st, self.percentile), "percentile")
                if r is not None:
                    self.choices[name] = {"method": used, "clipped": clipped_fraction(st, *r)}
            else:
                r = entropy_range(st, self.num_quantized_bins)
            if r is not None:
                out[name] = (float(r[0]), float(r[1]))
        self.warnings = [few_values_warning(few, self.percentile, self.method)] if few else []
        return out


def few_values_warning(few: dict[str, int], percentile: float, method: str) -> str:
    """One warning naming the tensors with fewer values than the percentile needs."""
    names = ", ".join(f"'{k}' ({v} values)" for k, v in list(few.items())[:5]) + (f", +{len(few) - 5} more" if len(few) > 5 else "")
    used = "MinMax or entropy range chosen instead" if method == "auto" else "MinMax range used"
    return (
        f"warning: {len(few)} tensor(s) have fewer calibration values than the {percentile:g} percentile needs "
        f"({percentile_needs(percentile)}): {used} for {names}"
    )
