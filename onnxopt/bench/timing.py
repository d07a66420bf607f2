"""Interleaved latency measurement and speed ratios with bootstrap confidence intervals.

Models are timed in round-robin blocks (A x k, B x k, C x k, A x k, ...) so that machine
noise hits all of them alike.  ``speedup(base, other)`` is ``median(base) / median(other)``
(> 1: ``other`` is faster); its 95% CI comes from a seeded bootstrap over both samples.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Speedup", "time_interleaved", "speedup", "percentiles"]


def time_interleaved(sessions: Sequence, feeds: Sequence[dict], *, runs: int = 50, warmup: int = 5, block: int = 5, duration: float | None = None, io_runner=None) -> list[np.ndarray]:
    """Latencies in seconds, one array per session, measured in interleaved blocks.

    ``feeds[i]`` is the feed of ``sessions[i]``.  ``duration`` (seconds) caps the total
    time; at least ``block`` runs per session are always measured.  ``io_runner(i)``, if
    given, replaces ``sessions[i].run(None, feeds[i])`` (e.g. for I/O binding).
    """
    run_one = io_runner or (lambda i: sessions[i].run(None, feeds[i]))
    for i in range(len(sessions)):
        for _ in range(max(warmup, 1)):
            run_one(i)
    lat: list[list[float]] = [[] for _ in sessions]
    start = time.perf_counter()
    while True:
        for i in range(len(sessions)):
            for _ in range(block):
                t0 = time.perf_counter()
                run_one(i)
                lat[i].append(time.perf_counter() - t0)
        done = min(len(x) for x in lat)
        if done >= runs or (duration is not None and time.perf_counter() - start >= duration and done >= block):
            break
    return [np.asarray(x) for x in lat]


@dataclass(frozen=True)
class Speedup:
    """``ratio = median(base) / median(other)`` with a bootstrap 95% CI (> 1: faster)."""

    ratio: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "ci95": [self.low, self.high]}


def speedup(base: np.ndarray, other: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> Speedup:
    base, other = np.asarray(base, dtype=np.float64), np.asarray(other, dtype=np.float64)
    ratio = float(np.median(base) / np.median(other))
    rng = np.random.default_rng(seed)
    bi = rng.integers(0, len(base), size=(n_boot, len(base)))
    oi = rng.integers(0, len(other), size=(n_boot, len(other)))
    boots = np.median(base[bi], axis=1) / np.median(other[oi], axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return Speedup(ratio, float(lo), float(hi))


def percentiles(lat: np.ndarray) -> dict:
    """min, mean, std, p50, p90, p95, p99, p99.9 in milliseconds."""
    ms = np.asarray(lat, dtype=np.float64) * 1e3
    q = np.percentile(ms, [50, 90, 95, 99, 99.9])
    return {"min": float(ms.min()), "mean": float(ms.mean()), "std": float(ms.std()), "p50": float(q[0]), "p90": float(q[1]), "p95": float(q[2]), "p99": float(q[3]), "p99.9": float(q[4])}
