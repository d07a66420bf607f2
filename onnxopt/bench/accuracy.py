"""Accuracy of each benchmarked model, so that a faster model is never read without it.

- With ``labels`` in DATA and ``[N, C]`` class scores: ``top1`` (percent, through
  ``onnxopt.metrics.score``).
- Always, against the baseline model on the same inputs (DATA, or the synthesized feed):
  ``agreement`` = 100 * mean(argmax(c_i) == argmax(r_i)) over ``[N, C]`` outputs, and
  ``rel_l2`` = max over outputs of ||c - r|| / ||r|| (0 for the baseline itself).  Outputs
  are matched by position; when their count or shapes differ from the baseline's, these
  are None with a note.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DataError
from ..metrics import is_class_scores, score

__all__ = ["rel_l2_error", "agreement", "top1", "evaluate"]


def rel_l2_error(ref: Sequence[np.ndarray], out: Sequence[np.ndarray]) -> float:
    """Worst ||c - r|| / ||r|| over outputs (an all-zero reference: 0 if equal, else inf)."""
    worst = 0.0
    for r, c in zip(ref, out, strict=True):
        r, c = np.asarray(r, dtype=np.float64), np.asarray(c, dtype=np.float64)
        diff, denom = float(np.linalg.norm(c - r)), float(np.linalg.norm(r))
        worst = max(worst, diff / denom if denom > 0 else (0.0 if diff == 0 else float("inf")))
    return worst


def agreement(ref: Sequence[np.ndarray], out: Sequence[np.ndarray]) -> float | None:
    """Top-1 agreement in percent (worst over ``[N, C]`` outputs), None when there are none."""
    vals = [
        float(100.0 * np.mean(np.argmax(c, axis=1) == np.argmax(r, axis=1)))
        for r, c in zip(ref, out, strict=True)
        if is_class_scores(np.asarray(r))
    ]
    return min(vals) if vals else None


def top1(outputs: Sequence[np.ndarray], labels: np.ndarray) -> float | None:
    if not any(is_class_scores(np.asarray(o)) for o in outputs):
        return None
    try:
        return score("top1", outputs, outputs, labels)
    except DataError:
        return None


def _comparable(ref: Sequence[np.ndarray], out: Sequence[np.ndarray]) -> str | None:
    if len(ref) != len(out):
        return f"{len(out)} outputs vs the baseline's {len(ref)}"
    for k, (r, c) in enumerate(zip(ref, out, strict=True)):
        if np.shape(r) != np.shape(c):
            return f"output {k} has shape {list(np.shape(c))}, the baseline's {list(np.shape(r))}"
        if np.asarray(r).dtype.kind not in "fiub" or np.asarray(c).dtype.kind not in "fiub":
            return f"output {k} is not numeric"
    return None


def evaluate(
    outputs: Sequence[Sequence[np.ndarray] | None],
    baseline: int,
    labels: np.ndarray | None,
    source: str,
) -> list[dict]:
    """One accuracy block per model from its outputs on the evaluation inputs.

    ``outputs[i]`` is None when model ``i`` could not be run on them (its note says why
    elsewhere); ``baseline`` indexes the reference; ``source`` describes the inputs.
    """
    ref = outputs[baseline]
    res = []
    for out in outputs:
        entry = {"data": source, "top1": None, "agreement": None, "rel_l2": None, "note": None}
        if out is None:
            entry["note"] = "not evaluated on these inputs"
            res.append(entry)
            continue
        if labels is not None:
            t = top1(out, labels)
            entry["top1"] = t
            if t is None:
                entry["note"] = "labels given but no [N, C] class-score output (or counts differ)"
        if ref is None:
            entry["note"] = entry["note"] or "baseline not evaluated on these inputs"
        else:
            why = _comparable(ref, out)
            if why:
                entry["note"] = f"not comparable with the baseline: {why}"
            else:
                entry["agreement"] = agreement(ref, out)
                entry["rel_l2"] = rel_l2_error(ref, out)
        res.append(entry)
    return res
