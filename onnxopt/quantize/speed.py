"""Speed of quantized candidates against the FP32 model, measured side by side.

All sessions (FP32 first) run the same feed in interleaved blocks
(``onnxopt.bench.timing.time_interleaved``), so machine noise hits every model alike; a
candidate's ratio is ``median(FP32) / median(candidate)`` (> 1: faster) with a 95% CI from a
bootstrap paired by interleaved round (``speedup(..., block=...)``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx

from ..bench.timing import speedup, time_interleaved
from ..errors import VerificationError
from ..runtime import create_session

__all__ = ["SpeedRow", "timing_feed", "measure_speed"]

log = logging.getLogger(__name__)


@dataclass
class SpeedRow:
    ratio: float
    low: float
    high: float
    median_ms: float
    fp32_median_ms: float
    runs: int

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "ci95": [self.low, self.high], "median_ms": self.median_ms, "fp32_median_ms": self.fp32_median_ms, "runs": self.runs}


def timing_feed(dataset, batch: int) -> dict[str, np.ndarray]:
    """One feed of ``batch`` samples from ``dataset`` (repeated when it holds fewer; a model
    with a fixed batch size gets that size)."""
    feed = dataset.first_batch(batch)
    first = next((v for v in feed.values() if v.ndim), None)
    n = first.shape[0] if first is not None else 1
    sizes = {s.batch_fixed for s in dataset.specs or ()}
    if (len(sizes) == 1 and sizes.pop()) or n >= batch or getattr(dataset, "whole", False):
        return feed
    # 0-d inputs (a sample rate) are fed as they are
    return {k: np.ascontiguousarray(np.concatenate([v] * -(-batch // n), axis=0)[:batch]) if v.ndim else v for k, v in feed.items()}


def measure_speed(
    fp32: onnx.ModelProto,
    candidates: dict[str, onnx.ModelProto],
    feed: dict[str, np.ndarray],
    *,
    provider: str = "cpu",
    runs: int = 30,
    warmup: int = 3,
    block: int = 5,
    duration: float | None = None,
    threads: int | None = None,
) -> dict[str, SpeedRow]:
    """Interleaved timing of ``fp32`` and every candidate on ``feed``; label -> SpeedRow.

    ``threads``: intra-op threads of every session (None: ONNX Runtime's default).  On a
    loaded machine, 1 avoids the spin-wait stalls of a thread pool whose threads get
    descheduled, which can inflate one model's median many-fold."""
    if not candidates:
        return {}
    labels = list(candidates)
    sessions = [create_session(m, provider, threads=threads, error=VerificationError) for m in [fp32, *candidates.values()]]
    lat = time_interleaved(sessions, [feed] * len(sessions), runs=runs, warmup=warmup, block=block, duration=duration, shuffle_seed=0)
    base = lat[0]
    out = {}
    for label, lt in zip(labels, lat[1:], strict=True):
        sp = speedup(base, lt, block=block)
        out[label] = SpeedRow(sp.ratio, sp.low, sp.high, float(np.median(lt) * 1e3), float(np.median(base) * 1e3), len(lt))
    return out
