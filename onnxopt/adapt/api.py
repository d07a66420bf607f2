"""``onnxopt.adapt``: transfer learning on the ONNX graph.

Cut a classifier at a feature tensor, extract features on labelled DATA, fit a new linear
head in numpy (``linear``) and emit it as ``Gemm`` (+ ``Softmax``): one pass,
``passes.AdaptHeadPass``, run by ``core.run_pipeline``.  The written model keeps the input
model's inputs and the adapted output's name, so it drops into ``ensemble``.

Verified before it is returned:
1. the cut model reproduces the input model's feature tensor on every sample of DATA
   (exact-transform tolerance; usually bit for bit), see ``features`` (inside the pass);
2. the adapted model passes ``onnx.checker`` and loads in onnxruntime;
3. its outputs on every sample match the numpy head applied to the extracted features
   (``|onnx - numpy| <= 1e-4 + 1e-3 |numpy|``): the pass's ``Expected`` outputs, checked
   by the pipeline, which also writes the provenance.
The reported accuracies are those of the adapted ONNX model's own outputs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..core.passes import Context
from ..core.pipeline import run_pipeline
from ..core.public import check_options
from ..core.result import Result
from ..data import Dataset, load_data
from ..errors import DataError, ModelError, UnsupportedError, UsageError, blaming
from ..io import resolve_model
from ..runtime import create_session, resolve_provider, run_dataset
from ..verify import check_model
from .features import DEFAULT_BATCH, predictions
from .passes import AdaptConfig, AdaptHeadPass, about

__all__ = ["adapt", "evaluate", "AdaptConfig", "Evaluation"]

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Top-1 accuracy (percent) of a classifier on labelled DATA.

    ``classes``: the model's number of output classes.  When some labels are ``>=
    classes`` (a model that cannot predict them), ``in_label_space`` gives the accuracy
    on the samples whose label it can predict.
    """

    accuracy: float
    samples: int
    correct: int
    classes: int | None
    in_label_space: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _accuracy(pred: np.ndarray, labels: np.ndarray, classes: int | None) -> Evaluation:
    correct = int(np.sum(pred == labels))
    n = int(len(labels))
    ev = Evaluation(100.0 * correct / n if n else float("nan"), n, correct, classes)
    if classes is not None and n and int(labels.max()) >= classes:
        mask = labels < classes
        m = int(mask.sum())
        ev.in_label_space = {"samples": m, "accuracy": 100.0 * float(np.mean(pred[mask] == labels[mask])) if m else None}
    return ev


def evaluate(model, data, *, provider: str = "cpu", batch_size: int = DEFAULT_BATCH) -> Evaluation:
    """Top-1 accuracy of ``model`` (path or proto; first output ``[N, C]`` scores or
    ``[N]`` labels) on DATA with ``labels``.  Labels the model has no class for count as
    errors; ``in_label_space`` then holds the accuracy on the others."""
    m, path = resolve_model(model)
    ds = data.validate(m) if isinstance(data, Dataset) else load_data(data, m)
    if ds.labels is None:
        raise DataError("no 'labels' array: accuracy needs one integer label per sample", ds.source)
    with about(path):
        sess = create_session(m if path is None else path, resolve_provider(provider))
        out = run_dataset(sess, ds, batch_size=batch_size)[0]
        pred = predictions(out)
        if pred is None:
            raise UnsupportedError(f"output '{m.graph.output[0].name}' has shape {list(np.shape(out))}: neither [N, C] class scores nor [N] labels")
    labels = ds.labels[: len(pred)]
    classes = int(out.shape[1]) if out.ndim == 2 and out.dtype.kind == "f" else None
    return _accuracy(pred, labels, classes)


def _check_labels(labels, classes, source) -> int:
    if labels is None:
        raise DataError("no 'labels' array: adapt needs one integer label per sample", source)
    if len(labels) == 0:
        raise DataError("no samples", source)
    if int(labels.min()) < 0:
        raise DataError(f"labels must be >= 0, found {int(labels.min())}", source)
    if classes is not None and int(labels.max()) >= classes:
        bad = sorted({int(v) for v in labels[labels >= classes]})
        raise DataError(f"labels outside [0, {classes}): {', '.join(map(str, bad[:8]))}{' ...' if len(bad) > 8 else ''}", source)
    present = np.unique(labels)
    if len(present) < 2:
        raise DataError(f"labels hold fewer than 2 classes (only class {int(present[0])}); a classifier needs at least 2", source)
    return classes if classes is not None else int(labels.max()) + 1


@blaming("model")
def adapt(model, data, *, eval_data=None, **options) -> Result:
    """Fit a new classification head on ``model``'s features (see the module docstring).

    ``model``: path or ModelProto; ``data``: DATA path or ``Dataset`` with ``labels``.
    Options (``AdaptConfig``): ``features``: the tensor to cut at (default: the input of the
    last Gemm/MatMul before the first output); spatial features are pooled with ``pool``
    (mean | max | flatten).  ``head``: ``logistic`` or ``linear``; ``l2``: penalty, chosen by
    stratified k-fold CV on the training split when None.  ``holdout``: fraction of each
    class kept out of the fit to measure accuracy (seeded, stratified; 0 fits on
    everything).  ``classes``: K (default ``max(label) + 1``).  ``softmax``: end with Softmax
    (default: as the input model's head did).  ``class_names``, ``standardize``, ``seed``,
    ``provider``, ``batch_size``.  ``eval_data``: optional labelled DATA on which the adapted
    and the input model are also scored.

    Stages: check the input model and DATA, run ``AdaptHeadPass`` through the pipeline
    (locate, cut and extract, fit, emit; verified against the numpy head), report.  Raises
    ``UsageError`` / ``DataError`` / ``UnsupportedError`` (exit 2) for bad input and
    ``VerificationError`` (exit 3) when the emitted model fails verification.
    """
    cfg = AdaptConfig(**check_options(AdaptConfig, "adapt", options)).validate()
    t_start = time.perf_counter()
    m, path = resolve_model(model)
    if not m.graph.output:
        raise ModelError("the model has no outputs", path)
    with about(path):
        check_model(m, provider=cfg.provider, label="input model", error=ModelError)
    ds = data.validate(m) if isinstance(data, Dataset) else load_data(data, m)
    num_classes = _check_labels(ds.labels, cfg.classes, ds.source)
    step = AdaptHeadPass(_where="adapt", _error=UsageError, **asdict(cfg))
    ctx = Context(data=ds, provider=cfg.provider, path=str(path) if path is not None else None)
    res = run_pipeline(m, [step], ctx, command="adapt", check_input=False)
    rep, d, x = res.steps[0], res.steps[0].details, res.steps[0].extras
    report = {
        "command": "adapt",
        "input": str(path) if path else None,
        "data": ds.source,
        "output_name": m.graph.output[0].name,
        **{k: d[k] for k in ("samples", "train_samples", "holdout_samples", "cut", "head")},
        "accuracy": _accuracies(res.expected.verified[0], x["labels"], x["fit"], num_classes, x["extraction"]),
        "seconds": dict(x["seconds"]),
        "verification": {"features": d["features"], "check": rep.verification["check"], "head": rep.verification["comparison"]},
        "notes": rep.notes,
    }
    if eval_data is not None:
        report["evaluation"] = {
            "data": getattr(eval_data, "source", str(eval_data)),
            "adapted": evaluate(res.model, eval_data, provider=cfg.provider, batch_size=cfg.batch_size).to_dict(),
            "original": evaluate(m, eval_data, provider=cfg.provider, batch_size=cfg.batch_size).to_dict(),
        }
    report["seconds"]["total"] = round(time.perf_counter() - t_start, 4)
    log.info("adapt: %d classes, l2=%g, holdout accuracy %s", num_classes, x["fit"].l2, report["accuracy"]["holdout"])
    return Result(res.model, report, True)


def _accuracies(got: np.ndarray, labels: np.ndarray, fit, num_classes: int, ext) -> dict:
    """Train / holdout accuracy of the adapted model's own outputs, and the input model's
    on the same split."""
    pred = np.argmax(got, axis=1)
    train_acc = _accuracy(pred[fit.train_idx], labels[fit.train_idx], num_classes)
    hold_acc = _accuracy(pred[fit.hold_idx], labels[fit.hold_idx], num_classes) if len(fit.hold_idx) else None
    original = None
    if ext.reference_predictions is not None:
        idx = fit.hold_idx if len(fit.hold_idx) else fit.train_idx
        ev = _accuracy(ext.reference_predictions[idx], labels[idx], ext.reference_classes)
        original = {
            "split": "holdout" if len(fit.hold_idx) else "train",
            "classes": ext.reference_classes,
            "same_label_space": ext.reference_classes == num_classes,
            **ev.to_dict(),
        }
    return {"train": train_acc.accuracy, "holdout": hold_acc.accuracy if hold_acc else None, "original": original}
