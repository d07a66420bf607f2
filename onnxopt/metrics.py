"""Accuracy metrics shared by every command that has a budget (quantize, prune, optimize, bench).

Each metric is a score in percent; a budget ``max_drop`` allows that many points of loss
against the reference (FP32 / input) model.  With outputs ``r`` (reference) and ``c``
(candidate) per sample ``i``:

- ``top1``: 100 * mean(argmax(c_i) == label_i); needs ``labels`` and ``[N, C]`` outputs.
- ``agreement``: 100 * mean(argmax(c_i) == argmax(r_i)).
- ``cosine``: 100 * mean_i cos(r_i, c_i) over flattened samples.
- ``rel-l2``: 100 * (1 - ||c - r|| / ||r||).

Default: ``top1`` when the data has labels, else ``agreement`` when every output is
``[N, C]`` with C > 1, else ``cosine``.  All outputs are scored; the worst one counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import DataError, UsageError

__all__ = ["METRICS", "check_metric", "is_class_scores", "default_metric", "score", "row_dot", "Evaluator", "Budget"]

METRICS = ("top1", "agreement", "cosine", "rel-l2")


def check_metric(metric: str | None) -> None:
    """``UsageError`` for a metric name not in ``METRICS`` (None, the default, passes)."""
    if metric is not None and metric not in METRICS:
        raise UsageError(f"unknown metric '{metric}' (choose from {', '.join(METRICS)})")


def is_class_scores(arr: np.ndarray) -> bool:
    """2-D ``[N, C]`` float output with C > 1."""
    return arr.ndim == 2 and arr.shape[1] > 1 and arr.dtype.kind == "f"


def default_metric(ref_outputs: Sequence[np.ndarray], labels: np.ndarray | None = None) -> str:
    if labels is not None and any(is_class_scores(o) for o in ref_outputs):
        return "top1"
    return "agreement" if ref_outputs and all(is_class_scores(o) for o in ref_outputs) else "cosine"


def _flat(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    a = a if a.dtype.kind == "f" else a.astype(np.float64)
    return a.reshape(a.shape[0], -1) if a.ndim >= 1 and a.shape[0] > 0 else a.reshape(1, -1)


def row_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row dot products of two 2-D arrays, accumulated in float64 without a float64 copy
    of either (a recognizer's 60 x 40 x 6625 scores: 6x faster than converting first)."""
    return np.einsum("ij,ij->i", a, b, dtype=np.float64)


def _cosine(r: np.ndarray, c: np.ndarray) -> float:
    r, c = _flat(r), _flat(c)
    nr, nc = np.sqrt(row_dot(r, r)), np.sqrt(row_dot(c, c))
    both_zero = (nr == 0) & (nc == 0)
    cos = np.where(both_zero, 1.0, row_dot(r, c) / np.maximum(nr * nc, 1e-30))
    return float(100.0 * np.clip(cos, -1.0, 1.0).mean())


def _rel_l2(r: np.ndarray, c: np.ndarray) -> float:
    r, c = np.asarray(r, dtype=np.float64), np.asarray(c, dtype=np.float64)
    denom = np.linalg.norm(r)
    err = np.linalg.norm(c - r) / denom if denom > 0 else float(np.linalg.norm(c - r) > 0)
    return float(100.0 * (1.0 - err))


def score(metric: str, ref_outputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray], labels: np.ndarray | None = None) -> float:
    """Score ``outputs`` (candidate) against ``ref_outputs`` / ``labels``; worst output counts."""
    check_metric(metric)
    scores = []
    for r, c in zip(ref_outputs, outputs, strict=True):
        r, c = np.asarray(r), np.asarray(c)
        if r.dtype.kind not in "fiub" or c.shape != r.shape:
            if c.shape != r.shape:
                scores.append(0.0)
            continue
        if metric == "top1":
            if not is_class_scores(r):
                continue
            if labels is None:
                raise DataError("metric 'top1' needs 'labels' in the evaluation data")
            if len(labels) != len(c):
                raise DataError(f"'labels' has {len(labels)} entries, the model produced {len(c)} samples")
            scores.append(float(100.0 * np.mean(np.argmax(c, axis=1) == labels)))
        elif metric == "agreement":  # cosine for outputs that are not class scores
            scores.append(float(100.0 * np.mean(np.argmax(c, axis=1) == np.argmax(r, axis=1))) if is_class_scores(r) else _cosine(r, c))
        elif metric == "cosine":
            scores.append(_cosine(r, c))
        else:
            scores.append(_rel_l2(r, c))
    if not scores:
        raise DataError(f"metric '{metric}' applies to none of the model's outputs (shapes: {[tuple(np.shape(o)) for o in ref_outputs]})")
    return min(scores)


@dataclass(frozen=True)
class Budget:
    """An accuracy budget: at most ``max_drop`` points of ``metric`` lost (metric None = default)."""

    max_drop: float
    metric: str | None = None

    def __post_init__(self):
        if self.max_drop < 0:
            raise UsageError(f"--max-accuracy-drop must be >= 0, got {self.max_drop}")
        check_metric(self.metric)


class Evaluator:
    """Scores candidate models against a reference model on one dataset.

    The reference outputs are computed once; ``reference_score`` is the reference model's
    own score (its accuracy for ``top1``, 100 for the others).  ``drop(model)`` is the loss
    in points.  Candidates run on ``provider``, at the batch ``runtime.scoring_batch`` bounds
    for the reference.
    """

    def __init__(self, reference, dataset, metric: str | None = None, *, provider: str = "cpu", limit: int | None = None):
        from .runtime import run_dataset, scoring_batch

        self.dataset = dataset
        self.provider = provider
        self.limit = limit
        self.batch_size = scoring_batch(reference, dataset)  # candidates hold no more than the reference
        self.labels = dataset.label_array(limit)
        self.ref_outputs = run_dataset(reference, dataset, provider=provider, batch_size=self.batch_size, limit=limit)
        fed = getattr(dataset, "fed", 0)
        if self.labels is not None and fed and len(self.labels) > fed:
            self.labels = self.labels[:fed]  # a fixed model batch dropped a partial last batch
        self.metric = metric or default_metric(self.ref_outputs, self.labels)
        try:
            self.reference_score = score(self.metric, self.ref_outputs, self.ref_outputs, self.labels)
        except DataError as exc:  # about this dataset: name its file
            if exc.path is None and getattr(dataset, "source", "<synthesized>") != "<synthesized>":
                exc.path = dataset.source
            raise

    def outputs(self, model) -> list[np.ndarray]:
        from .errors import VerificationError
        from .runtime import run_dataset

        return run_dataset(model, self.dataset, provider=self.provider, batch_size=self.batch_size, limit=self.limit, error=VerificationError)

    def score_outputs(self, outputs: Sequence[np.ndarray]) -> float:
        return score(self.metric, self.ref_outputs, outputs, self.labels)

    def score(self, model) -> float:
        return self.score_outputs(self.outputs(model))

    def drop(self, model) -> float:
        return self.reference_score - self.score(model)

    def within(self, model, budget: Budget) -> tuple[bool, float]:
        s = self.score(model)
        return self.reference_score - s <= budget.max_drop + 1e-9, s
