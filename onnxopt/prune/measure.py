"""Figures of a model for the prune report: parameters, FLOPs, bytes, interleaved latency.

Parameters count initializers, Constant nodes and ConstantOfShape fills (``stats`` alone
does not see fills, which hold most weights of the onnx wheel's architecture models).
Latency is always measured interleaved against the input model on the same feed, so a
ratio compares like with like; it is the one non-deterministic figure and never goes into
the output file.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..stats import model_stats
from .weights import WeightStore

__all__ = ["figures", "LatencyProbe"]


def figures(model: onnx.ModelProto, *, zip_bytes: bool = False) -> dict:
    """Parameters (``ConstantOfShape`` fills included), FLOPs, nodes and file bytes (and the
    deflated size with ``zip_bytes``)."""
    st, ws = model_stats(model, flops=True), WeightStore(model)
    out = {
        "params": int(st["params"]) + sum(ws.fill(name).size for name in ws.fills),
        "flops": int(st.get("flops", 0)),
        "nodes": int(st["nodes"]),
        "file_bytes": int(model.ByteSize()),
    }
    if zip_bytes:
        from .magnitude import zip_size

        out["zip_bytes"] = zip_size(model)
    return out


class LatencyProbe:
    """Times candidates against one base model, interleaved, on one feed.

    ``probe(model)`` -> ``{"base_ms", "ms", "speedup", "ci95"}`` (medians over ``runs``).
    """

    def __init__(
        self,
        base: onnx.ModelProto,
        feed: dict,
        *,
        provider: str = "cpu",
        runs: int = 30,
        threads: int | None = None,
        max_seconds: float = 20.0,
    ):
        from ..runtime import create_session

        self.threads = threads
        self.base = create_session(base, provider, threads=threads)
        self.feed = feed
        self.provider = provider
        self.runs = max(int(runs), 1)
        self.max_seconds = max_seconds

    def __call__(self, model: onnx.ModelProto) -> dict:
        from ..bench.timing import speedup, time_interleaved
        from ..runtime import create_session

        sess = create_session(model, self.provider, threads=self.threads)
        lat = time_interleaved(
            [self.base, sess],
            [self.feed, self.feed],
            runs=self.runs,
            warmup=3,
            block=min(5, self.runs),
            duration=self.max_seconds,
        )
        sp = speedup(lat[0], lat[1])
        return {
            "base_ms": float(np.median(lat[0]) * 1e3),
            "ms": float(np.median(lat[1]) * 1e3),
            "speedup": sp.ratio,
            "ci95": [sp.low, sp.high],
            "runs": int(len(lat[1])),
        }
