"""``onnxopt.adapt``: transfer learning on the ONNX graph.

Cut a classifier at a feature tensor, extract features on labelled DATA, fit a new linear
head in numpy (``heads``) and emit it as ``Gemm`` (+ ``Softmax``).  The written model keeps
the input model's inputs and the adapted output's name, so it drops into ``ensemble``.

Verified before it is returned:
1. the cut model reproduces the input model's feature tensor on every sample of DATA
   (exact-transform tolerance; usually bit for bit), see ``features``;
2. the adapted model passes ``onnx.checker`` and loads in onnxruntime;
3. its outputs on every sample match the numpy head applied to the extracted features
   (``|onnx - numpy| <= 1e-4 + 1e-3 |numpy|``).
The reported accuracies are those of the adapted ONNX model's own outputs.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import helper

from ..core.provenance import write_provenance
from ..core.result import Result
from ..data import Dataset, load_data
from ..errors import (
    DataError,
    ModelError,
    OnnxoptError,
    UnsupportedError,
    UsageError,
    VerificationError,
    blaming,
)
from ..io import resolve_model
from ..linear import HEADS, cross_validate, fit_head, stratified_split
from ..linear import softmax as _softmax
from ..runtime import create_session, resolve_provider, run_dataset
from ..verify import check_model, compare_outputs
from .cut import (
    FLOAT_TYPES,
    POOLS,
    TensorInfo,
    add_pooling,
    cut_at,
    find_head,
    tensor_info,
    with_outputs,
)
from .emit import append_head
from .features import DEFAULT_BATCH, extract, predictions, probe

__all__ = ["adapt", "evaluate", "Evaluation"]

log = logging.getLogger(__name__)


@contextmanager
def _about(path):
    """Errors raised inside name ``path`` when they name no file themselves."""
    try:
        yield
    except OnnxoptError as exc:
        if exc.path is None and path is not None:
            exc.path = str(path)
        raise


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


@contextmanager
def _blas_one_thread():
    """Run the numpy fit with one BLAS thread when ``threadpoolctl`` is installed: the
    matrices are small, and multi-threaded OpenBLAS on a busy machine was measured 10x
    slower; one thread also makes the result independent of the core count."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield False
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield True


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
    with _about(path):
        sess = create_session(m if path is None else path, resolve_provider(provider))
        out = run_dataset(sess, ds, batch_size=batch_size)[0]
        pred = predictions(out)
        if pred is None:
            raise UnsupportedError(f"output '{m.graph.output[0].name}' has shape {list(np.shape(out))}: neither [N, C] class scores nor [N] labels")
    labels = ds.labels[: len(pred)]
    classes = int(out.shape[1]) if out.ndim == 2 and out.dtype.kind == "f" else None
    return _accuracy(pred, labels, classes)


def _check_options(head, pool, holdout, l2, classes, class_names, batch_size):
    if head not in HEADS:
        raise UsageError(f"unknown head '{head}' (choose from {', '.join(HEADS)})")
    if pool not in POOLS:
        raise UsageError(f"unknown pool '{pool}' (choose from {', '.join(POOLS)})")
    if not (isinstance(holdout, (int, float)) and 0 <= holdout < 1):
        raise UsageError(f"holdout must be in [0, 1), got {holdout!r}")
    if l2 is not None and not (isinstance(l2, (int, float)) and math.isfinite(l2) and l2 > 0):
        raise UsageError(f"l2 must be a positive number, got {l2!r}")
    if batch_size is not None and int(batch_size) <= 0:
        raise UsageError(f"batch size must be positive, got {batch_size!r}")
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(set(class_names)) != len(class_names):
            dup = sorted({c for c in class_names if class_names.count(c) > 1})
            raise UsageError(f"class names repeat: {', '.join(dup)}")
        if classes is not None and int(classes) != len(class_names):
            raise UsageError(f"{len(class_names)} class names for {classes} classes")
        classes = len(class_names)
    if classes is not None and int(classes) < 2:
        raise UsageError(f"need at least 2 classes, got {classes}")
    return (int(classes) if classes is not None else None), class_names


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


def _batch_dim(model: onnx.ModelProto):
    dims = model.graph.output[0].type.tensor_type.shape.dim if model.graph.output else []
    if dims:
        d = dims[0]
        if d.HasField("dim_param") and d.dim_param:
            return d.dim_param
        if d.HasField("dim_value") and d.dim_value > 0:
            return int(d.dim_value)
    return "N"


@blaming("model")
def adapt(
    model,
    data,
    *,
    features: str | None = None,
    head: str = "logistic",
    classes: int | None = None,
    l2: float | None = None,
    holdout: float = 0.2,
    pool: str = "mean",
    standardize: bool = True,
    class_names: Sequence[str] | None = None,
    softmax: bool | None = None,
    seed: int = 0,
    provider: str = "cpu",
    batch_size: int = DEFAULT_BATCH,
    eval_data=None,
) -> Result:
    """Fit a new classification head on ``model``'s features (see the module docstring).

    ``model``: path or ModelProto; ``data``: DATA path or ``Dataset`` with ``labels``.
    ``features``: the tensor to cut at (default: the input of the last Gemm/MatMul before
    the first output); spatial features are pooled with ``pool`` (mean | max | flatten).
    ``head``: ``logistic`` or ``linear``; ``l2``: penalty, chosen by stratified k-fold CV
    on the training split when None.  ``holdout``: fraction of each class kept out of the
    fit to measure accuracy (seeded, stratified; 0 fits on everything).  ``classes``: K
    (default ``max(label) + 1``).  ``softmax``: end with Softmax (default: as the
    input model's head did).  ``eval_data``: optional labelled DATA on which the adapted
    and the input model are also scored.

    Raises ``UsageError`` / ``DataError`` / ``UnsupportedError`` (exit 2) for bad input and
    ``VerificationError`` (exit 3) when the emitted model fails verification.
    """
    t_start = time.perf_counter()
    classes, class_names = _check_options(head, pool, holdout, l2, classes, class_names, batch_size)
    m, path = resolve_model(model)
    provider = resolve_provider(provider)
    if not m.graph.output:
        raise ModelError("the model has no outputs", path)
    notes: list[str] = []
    with _about(path):
        check_model(m, provider=provider, label="input model", error=ModelError)
    ds = data.validate(m) if isinstance(data, Dataset) else load_data(data, m)
    num_classes = _check_labels(ds.labels, classes, ds.source)
    out = m.graph.output[0]
    if len(m.graph.output) > 1:
        notes.append(f"adapted output '{out.name}'; the other outputs ({', '.join(o.name for o in m.graph.output[1:])}) are dropped")

    # --- where to cut
    with _about(path):
        match = None
        if features is None:
            match = find_head(m)
            name = match.feature
        else:
            name = features
            if name == out.name:
                raise UsageError(f"--features '{name}' is the output being replaced; choose a tensor before the head")
        info = tensor_info(m, name)
        flag = f"--features '{name}'" if features is not None else f"the head's input '{name}'"
        ref_sess = create_session(with_outputs(m, [info]), provider)
        sample = probe(ref_sess, ds, name)
        if sample.dtype.kind != "f" or helper.np_dtype_to_tensor_dtype(sample.dtype) not in FLOAT_TYPES:
            cls = UsageError if features is not None else UnsupportedError
            raise cls(f"{flag} is {sample.dtype}, not a float tensor")
        feed_n = next(iter(ds.first_batch(8).values())).shape[0]
        if sample.ndim < 2 or sample.shape[0] != feed_n:
            cls = UsageError if features is not None else UnsupportedError
            raise cls(f"{flag} has shape {list(sample.shape)} on a batch of {feed_n}: its first axis is not the batch")
        if features is None and sample.ndim != 2:
            raise UnsupportedError(f"{flag} has shape {['N'] + list(sample.shape[1:])}, not [N, features]; pass --features NAME")
    elem_type = helper.np_dtype_to_tensor_dtype(sample.dtype)
    dims = info.dims if info.dims is not None and len(info.dims) == sample.ndim else [None] * sample.ndim
    feat = TensorInfo(name, elem_type, dims)
    width = int(sample.shape[1]) if pool != "flatten" or sample.ndim == 2 else int(np.prod(sample.shape[1:]))
    batch_dim = _batch_dim(m)

    # --- cut, pool, extract (the cut verified against the input model on every sample)
    extractor, cut_counts = cut_at(m, feat)
    pooled = add_pooling(extractor, name, sample.ndim, pool)
    if pooled != name:
        extractor.graph.output.insert(0, helper.make_tensor_value_info(pooled, elem_type, [batch_dim, width]))
        notes.append(f"features {['N'] + list(sample.shape[1:])} pooled to [N, {width}] ({pool})")
    t0 = time.perf_counter()
    with _about(path):
        ext = extract(ref_sess, extractor, ds, feature=name, pooled=pooled, provider=provider, batch_size=batch_size)
    extract_seconds = time.perf_counter() - t0
    x = ext.features.astype(np.float64)
    labels = ds.labels[: ext.samples]
    if ext.samples < len(ds.labels):
        notes.append(f"{len(ds.labels) - ext.samples} samples not used: the model's batch size is fixed")
    if not np.all(np.isfinite(x)):
        raise DataError(f"the features '{name}' hold NaN or Inf on this DATA", ds.source)

    # --- fit
    train_idx, hold_idx = stratified_split(labels, float(holdout), seed)
    t0 = time.perf_counter()
    cv = None
    with _blas_one_thread():
        if l2 is None:
            cv = cross_validate(x[train_idx], labels[train_idx], num_classes, kind=head, standardize=standardize, seed=seed)
            l2 = cv.l2
        fitted = fit_head(x[train_idx], labels[train_idx], num_classes, kind=head, l2=float(l2), standardize=standardize)
    fit_seconds = time.perf_counter() - t0
    if fitted.info.get("absent_classes"):
        notes.append(f"classes {fitted.info['absent_classes']} have no training sample: score fixed at {fitted.bias[fitted.info['absent_classes'][0]]:g}, never predicted")
    if fitted.info.get("converged") is False:
        notes.append(f"the solver stopped before convergence (max |grad| {fitted.info['grad_max']:.2g})")
    use_softmax = bool(match.softmax) if softmax is None and match is not None else bool(softmax)
    if softmax is None and match is not None and match.softmax:
        notes.append("the input model's head ended in Softmax: so does the new one")

    # --- emit and verify
    adapted = copy.deepcopy(extractor)
    append_head(adapted, pooled, elem_type, fitted, output=out.name, batch_dim=batch_dim, softmax=use_softmax, class_names=class_names)
    head32 = fitted.as_float32()
    expected = head32.scores(x)
    if use_softmax:
        expected = _softmax(expected)
    cut_report = {
        "feature": name,
        "feature_shape": ["N"] + [int(d) for d in sample.shape[1:]],
        "auto": match.to_dict() if match else None,
        "pool": pool if pooled != name else None,
        "width": width,
        **cut_counts,
    }
    head_report = {
        "kind": head,
        "classes": num_classes,
        "l2": float(l2),
        "l2_source": "cv" if cv is not None else "given",
        "cv": cv.to_dict() if cv is not None else None,
        "standardize": bool(standardize),
        "softmax": use_softmax,
        "solver": {k: v for k, v in fitted.info.items() if k in ("solver", "iterations", "converged", "grad_max", "objective")},
        "class_names": list(class_names) if class_names else None,
        "seed": seed,
        "holdout": float(holdout),
    }
    write_provenance(
        adapted,
        "adapt",
        [{"name": "cut", "params": {"features": features, "pool": pool}, "counts": cut_counts}, {"name": "head", "params": {k: head_report[k] for k in ("kind", "classes", "l2", "l2_source", "standardize", "softmax", "seed", "holdout")}}],
        {"adapt": {"feature": name, "samples": int(len(labels)), "train": int(len(train_idx)), "holdout_samples": int(len(hold_idx))}},
    )
    check = check_model(adapted, provider=provider, label="adapted model")
    got = run_dataset(adapted, ds, provider=provider, batch_size=batch_size, error=VerificationError)[0]
    comp = compare_outputs([out.name], [expected], [got], samples=len(got), source=ds.source)
    if not comp:
        o = comp.outputs[0]
        raise VerificationError(f"adapted model: output '{out.name}' differs from the numpy head (max abs {o.max_abs:.3g}, relative L2 {o.rel_l2:.3g}) {o.note}".strip())

    # --- report
    pred = np.argmax(got, axis=1)
    train_acc = _accuracy(pred[train_idx], labels[train_idx], num_classes)
    hold_acc = _accuracy(pred[hold_idx], labels[hold_idx], num_classes) if len(hold_idx) else None
    original = None
    if ext.reference_predictions is not None:
        idx = hold_idx if len(hold_idx) else train_idx
        ev = _accuracy(ext.reference_predictions[idx], labels[idx], ext.reference_classes)
        original = {"split": "holdout" if len(hold_idx) else "train", "classes": ext.reference_classes, "same_label_space": ext.reference_classes == num_classes, **ev.to_dict()}
    report = {
        "command": "adapt",
        "input": str(path) if path else None,
        "data": ds.source,
        "output_name": out.name,
        "samples": int(len(labels)),
        "train_samples": int(len(train_idx)),
        "holdout_samples": int(len(hold_idx)),
        "cut": cut_report,
        "head": head_report,
        "accuracy": {
            "train": train_acc.accuracy,
            "holdout": hold_acc.accuracy if hold_acc else None,
            "original": original,
        },
        "seconds": {"extract": round(extract_seconds, 4), "fit": round(fit_seconds, 4)},
        "verification": {"features": ext.agreement.to_dict(), "check": check.to_dict(), "head": comp.to_dict()},
        "notes": notes,
    }
    if eval_data is not None:
        report["evaluation"] = {
            "data": getattr(eval_data, "source", str(eval_data)),
            "adapted": evaluate(adapted, eval_data, provider=provider, batch_size=batch_size).to_dict(),
            "original": evaluate(m, eval_data, provider=provider, batch_size=batch_size).to_dict(),
        }
    report["seconds"]["total"] = round(time.perf_counter() - t_start, 4)
    log.info("adapt: %d classes, l2=%g, holdout accuracy %s", num_classes, l2, report["accuracy"]["holdout"])
    return Result(adapted, report, True)
