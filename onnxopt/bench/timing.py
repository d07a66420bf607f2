"""Interleaved latency measurement and speed ratios with bootstrap confidence intervals.

Models are timed in round-robin blocks (A x k, B x k, C x k, A x k, ...) so that machine
noise hits all of them alike; ``shuffle`` reorders the models in every round (seeded) so
that no model always runs right after the same neighbour.  The garbage collector is off
while timing (as ``timeit`` does) so that a collection is not billed to whichever model
happened to be running.

``speedup(base, other)`` is ``median(base) / median(other)`` (> 1: ``other`` is faster).
Its 95% CI is a seeded percentile bootstrap.  With ``block=k`` the bootstrap is *paired by
block*: it resamples whole rounds (block ``j`` of both samples, measured back to back), so
that drift common to both models cancels and the correlation between neighbouring runs is
kept, instead of pretending that every run is independent.

With few rounds the paired interval alone is far too narrow: resampling ``R`` rounds can
only produce a handful of distinct medians, and A-vs-A coverage of 1.0 measured on
simulated samples (iid lognormal noise, blocks of 5) was 51% with 2 rounds, 85% with 4,
91% with 6 and 94% with 20 (95% nominal).  Below ``MIN_PAIRED_BLOCKS`` complete rounds the
CI is therefore the union of the paired and the independent (iid) bootstrap intervals,
which held 95-98% on the same simulations (iid noise, drift shared by both models, 5%
10x outliers); from ``MIN_PAIRED_BLOCKS`` rounds on the paired interval is used alone
(93-100%).  Noise correlated within a block but not across models cannot be rescued with
2-4 rounds (67-88%): the bench report says when a configuration had fewer rounds.
``Speedup.method`` says which interval was used.
"""

from __future__ import annotations

import gc
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Speedup",
    "Measurement",
    "time_interleaved",
    "measure_interleaved",
    "speedup",
    "percentiles",
    "latency_summary",
    "MIN_PAIRED_BLOCKS",
]

# bootstrap work is chunked so that one chunk holds at most this many float64 values
_BOOT_CHUNK_VALUES = 4_000_000
# complete rounds from which the paired block bootstrap is trusted on its own (see above)
MIN_PAIRED_BLOCKS = 30


@dataclass
class Measurement:
    """Latencies in seconds (one array per model, in measurement order), the block size,
    the number of complete rounds, whether Ctrl-C stopped it, and the wall time."""

    latencies: list[np.ndarray]
    block: int
    rounds: int
    interrupted: bool = False
    seconds: float = 0.0
    order: list[list[int]] = field(default_factory=list)


def measure_interleaved(
    run_one: Callable[[int], object],
    n: int,
    *,
    runs: int | None = 50,
    warmup: int = 0,
    block: int = 5,
    duration: float | None = None,
    shuffle_seed: int | None = None,
    catch_interrupt: bool = False,
    progress_desc: str | None = None,
) -> Measurement:
    """Time ``run_one(i)`` for ``i in range(n)`` in interleaved rounds of ``block`` runs each.

    Stops once every model has ``runs`` samples, or once ``duration`` seconds have passed
    (at least one full round is always measured); with both, whichever comes first.  With
    ``catch_interrupt`` a Ctrl-C ends the measurement and the samples taken so far are
    returned (``interrupted=True``).
    """
    if n <= 0:
        raise ValueError("nothing to time")
    if runs is None and duration is None:
        raise ValueError("give runs or duration")
    block = max(int(block), 1)
    lat: list[list[float]] = [[] for _ in range(n)]
    orders: list[list[int]] = []
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    interrupted = False
    gc_was_enabled = gc.isenabled()
    perf = time.perf_counter
    rounds_iter: object = itertools.count()
    if progress_desc is not None:
        from ..core.progress import progress

        rounds_iter = progress(
            rounds_iter,
            desc=progress_desc,
            total=math.ceil(runs / block) if runs else None,
            unit="round",
        )
    start = perf()
    try:
        for i in range(n):
            for _ in range(max(warmup, 0)):
                run_one(i)
        start = perf()
        gc.disable()
        for _ in rounds_iter:
            order = list(range(n))
            if rng is not None:
                rng.shuffle(order)
            orders.append(order)
            for i in order:
                dst = lat[i]
                for _ in range(block):
                    t0 = perf()
                    run_one(i)
                    dst.append(perf() - t0)
            done = min(len(x) for x in lat)
            if (runs is not None and done >= runs) or (duration is not None and perf() - start >= duration and done >= block):
                break
    except KeyboardInterrupt:
        if not catch_interrupt:
            raise
        interrupted = True
    finally:
        if gc_was_enabled:
            gc.enable()
        close = getattr(rounds_iter, "close", None)
        if close is not None:
            close()
    rounds = min(len(x) for x in lat) // block
    return Measurement(
        [np.asarray(x) for x in lat], block, rounds, interrupted, perf() - start, orders
    )


def time_interleaved(
    sessions: Sequence,
    feeds: Sequence[dict],
    *,
    runs: int = 50,
    warmup: int = 5,
    block: int = 5,
    duration: float | None = None,
    io_runner=None,
    shuffle_seed: int | None = None,
) -> list[np.ndarray]:
    """Latencies in seconds, one array per session, measured in interleaved blocks.

    ``feeds[i]`` is the feed of ``sessions[i]``.  ``duration`` (seconds) caps the total
    time; at least ``block`` runs per session are always measured.  ``io_runner(i)``, if
    given, replaces ``sessions[i].run(None, feeds[i])`` (e.g. for I/O binding).
    """
    run_one = io_runner or (lambda i: sessions[i].run(None, feeds[i]))
    m = measure_interleaved(
        run_one,
        len(sessions),
        runs=runs,
        warmup=max(warmup, 1),
        block=block,
        duration=duration,
        shuffle_seed=shuffle_seed,
    )
    return m.latencies


@dataclass(frozen=True)
class Speedup:
    """``ratio = median(base) / median(other)`` with a bootstrap 95% CI (> 1: faster).
    ``method``: ``paired-block``, ``paired-block+iid`` (union, few rounds) or ``iid``."""

    ratio: float
    low: float
    high: float
    method: str = "iid"

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "ci95": [self.low, self.high]}

    @property
    def verdict(self) -> str:
        """``faster`` / ``slower`` when the whole CI is on one side of 1, else ``same``."""
        if self.low > 1.0:
            return "faster"
        return "slower" if self.high < 1.0 else "same"


def _boot_medians_iid(x: np.ndarray, rng, n_boot: int) -> np.ndarray:
    out = np.empty(n_boot)
    chunk = max(1, _BOOT_CHUNK_VALUES // max(len(x), 1))
    for s in range(0, n_boot, chunk):
        c = min(chunk, n_boot - s)
        out[s : s + c] = np.median(x[rng.integers(0, len(x), size=(c, len(x)))], axis=1)
    return out


def speedup(
    base: np.ndarray,
    other: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    block: int | None = None,
) -> Speedup:
    """``median(base) / median(other)`` with a 95% percentile-bootstrap CI.

    ``block=None``: runs resampled independently in each sample.  ``block=k`` (the samples
    come from ``measure_interleaved`` with that block size): whole rounds are resampled,
    the same rounds for both samples (paired block bootstrap); with 2 to
    ``MIN_PAIRED_BLOCKS - 1`` complete blocks the CI is the union of that interval and the
    independent one (module docstring); with fewer than 2 it is the independent one.
    """
    base, other = np.asarray(base, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if base.size == 0 or other.size == 0:
        raise ValueError("speedup of an empty sample")
    ratio = float(np.median(base) / np.median(other))
    rng = np.random.default_rng(seed)
    nb = min(len(base), len(other)) // block if block else 0
    if block and nb >= 2:
        bb = base[: nb * block].reshape(nb, block)
        ob = other[: nb * block].reshape(nb, block)
        boots = np.empty(n_boot)
        chunk = max(1, _BOOT_CHUNK_VALUES // (nb * block))
        for s in range(0, n_boot, chunk):
            c = min(chunk, n_boot - s)
            idx = rng.integers(0, nb, size=(c, nb))
            boots[s : s + c] = np.median(bb[idx].reshape(c, -1), axis=1) / np.median(
                ob[idx].reshape(c, -1), axis=1
            )
        lo, hi = np.percentile(boots, [2.5, 97.5])
        if nb >= MIN_PAIRED_BLOCKS:
            return Speedup(ratio, float(lo), float(hi), "paired-block")
        ilo, ihi = np.percentile(_boot_ratios_iid(base, other, rng, n_boot), [2.5, 97.5])
        return Speedup(ratio, float(min(lo, ilo)), float(max(hi, ihi)), "paired-block+iid")
    lo, hi = np.percentile(_boot_ratios_iid(base, other, rng, n_boot), [2.5, 97.5])
    return Speedup(ratio, float(lo), float(hi), "iid")


def _boot_ratios_iid(base: np.ndarray, other: np.ndarray, rng, n_boot: int) -> np.ndarray:
    """``n_boot`` ratios of medians, each sample resampled on its own."""
    if n_boot * max(len(base), len(other)) <= _BOOT_CHUNK_VALUES:
        bi = rng.integers(0, len(base), size=(n_boot, len(base)))
        oi = rng.integers(0, len(other), size=(n_boot, len(other)))
        return np.median(base[bi], axis=1) / np.median(other[oi], axis=1)
    return _boot_medians_iid(base, rng, n_boot) / _boot_medians_iid(other, rng, n_boot)


def percentiles(lat: np.ndarray) -> dict:
    """min, mean, std, p50, p90, p95, p99, p99.9 in milliseconds."""
    ms = np.asarray(lat, dtype=np.float64) * 1e3
    q = np.percentile(ms, [50, 90, 95, 99, 99.9])
    return {
        "min": float(ms.min()),
        "mean": float(ms.mean()),
        "std": float(ms.std()),
        "p50": float(q[0]),
        "p90": float(q[1]),
        "p95": float(q[2]),
        "p99": float(q[3]),
        "p99.9": float(q[4]),
    }


def latency_summary(lat: np.ndarray) -> dict:
    """``percentiles`` plus ``max`` (ms) and ``n`` (the number of timed runs)."""
    return {**percentiles(lat), "max": float(np.max(lat) * 1e3), "n": int(np.size(lat))}
