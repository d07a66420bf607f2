"""Accuracy-budget search: the strongest pruning setting whose accuracy drop stays in budget.

Settings (ratios, sparsities or numbers of blocks) are tried in increasing order; each
candidate is scored with the metric against the input model on the evaluation data and
measured (parameters, FLOPs, bytes, and latency when a probe is given).  The chosen
setting is the largest one within the budget.  Accuracy is not always monotonic, so the
search only stops early after ``patience`` consecutive candidates over budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import onnx

from ..core.progress import progress
from ..errors import OnnxoptError
from .measure import figures

__all__ = ["Point", "SearchOutcome", "search"]

log = logging.getLogger(__name__)


@dataclass
class Point:
    value: float
    score: float | None = None
    drop: float | None = None
    within: bool = False
    params: int | None = None
    flops: int | None = None
    file_bytes: int | None = None
    latency_ms: float | None = None
    speedup: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchOutcome:
    points: list[Point]
    chosen: Point | None
    model: onnx.ModelProto | None
    reference_score: float
    metric: str
    max_drop: float
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "reference_score": self.reference_score,
            "max_drop": self.max_drop,
            "chosen": self.chosen.value if self.chosen else None,
            "stopped_early": self.stopped_early,
            "curve": [p.to_dict() for p in self.points],
        }


def search(
    values: Sequence[float],
    build: Callable[[float], onnx.ModelProto],
    evaluator,
    max_drop: float,
    *,
    probe=None,
    patience: int = 2,
    label: str = "prune search",
) -> SearchOutcome:
    """Try ``build(v)`` for each ``v`` (ascending); keep the largest within ``max_drop``."""
    points: list[Point] = []
    best: tuple[Point, onnx.ModelProto] | None = None
    misses = 0
    stopped = False
    for v in progress(sorted(values), desc=label, unit="point"):
        pt = Point(value=v)
        try:
            model = build(v)
        except OnnxoptError as exc:
            pt.error = " ".join(str(getattr(exc, "message", exc)).split())
            points.append(pt)
            log.info("%s: %g failed: %s", label, v, exc)
            continue
        pt.score = float(evaluator.score(model))
        pt.drop = float(evaluator.reference_score - pt.score)
        pt.within = pt.drop <= max_drop + 1e-9
        fig = figures(model)
        pt.params, pt.flops, pt.file_bytes = fig["params"], fig["flops"], fig["file_bytes"]
        if probe is not None:
            lat = probe(model)
            pt.latency_ms, pt.speedup = lat["ms"], lat["speedup"]
        points.append(pt)
        log.info("%s: %g -> %s %.2f (drop %.2f)", label, v, evaluator.metric, pt.score, pt.drop)
        if pt.within:
            best = (pt, model)
            misses = 0
        else:
            misses += 1
            if patience and misses >= patience and v != max(values):
                stopped = True
                break
    return SearchOutcome(
        points,
        best[0] if best else None,
        best[1] if best else None,
        float(evaluator.reference_score),
        evaluator.metric,
        float(max_drop),
        stopped,
    )
