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
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import helper

from ..core.provenance import write_provenance
from ..core.public import check_options
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
from ..linear import HEADS, cross_validate, fit_head, one_blas_thread, stratified_split
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

__all__ = ["adapt", "evaluate", "AdaptConfig", "Evaluation"]

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


@dataclass
class AdaptConfig:
    """The options of ``adapt`` (see its docstring); ``validate`` checks them (exit 2)."""

    features: str | None = None
    head: str = "logistic"
    classes: int | None = None
    l2: float | None = None
    holdout: float = 0.2
    pool: str = "mean"
    standardize: bool = True
    class_names: list[str] | None = None
    softmax: bool | None = None
    seed: int = 0
    provider: str = "cpu"
    batch_size: int = DEFAULT_BATCH

    def validate(self) -> AdaptConfig:
        if self.head not in HEADS:
            raise UsageError(f"unknown head '{self.head}' (choose from {', '.join(HEADS)})")
        if self.pool not in POOLS:
            raise UsageError(f"unknown pool '{self.pool}' (choose from {', '.join(POOLS)})")
        if not (isinstance(self.holdout, (int, float)) and 0 <= self.holdout < 1):
            raise UsageError(f"holdout must be in [0, 1), got {self.holdout!r}")
        l2 = self.l2
        if l2 is not None and not (isinstance(l2, (int, float)) and math.isfinite(l2) and l2 > 0):
            raise UsageError(f"l2 must be a positive number, got {l2!r}")
        if self.batch_size is not None and int(self.batch_size) <= 0:
            raise UsageError(f"batch size must be positive, got {self.batch_size!r}")
        names, classes = self.class_names, self.classes
        if names is not None:
            names = [str(c) for c in names]
            if len(set(names)) != len(names):
                dup = sorted({c for c in names if names.count(c) > 1})
                raise UsageError(f"class names repeat: {', '.join(dup)}")
            if classes is not None and int(classes) != len(names):
                raise UsageError(f"{len(names)} class names for {classes} classes")
            classes = len(names)
        if classes is not None and int(classes) < 2:
            raise UsageError(f"need at least 2 classes, got {classes}")
        self.class_names, self.classes = names, (int(classes) if classes is not None else None)
        self.provider = resolve_provider(self.provider)
        return self


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


@dataclass
class _Site:
    """Where the cut goes: the feature tensor, a probed sample of it and the head found."""

    name: str
    feat: TensorInfo
    sample: np.ndarray
    width: int
    match: object  # cut.HeadMatch or None
    ref_sess: object


@dataclass
class _Fit:
    head: object  # linear.LinearHead
    cv: object  # linear.CVResult or None
    l2: float
    train_idx: np.ndarray
    hold_idx: np.ndarray
    seconds: float


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

    Stages: locate the feature tensor, cut and extract (the cut verified against the input
    model), fit, emit and verify (against the numpy head), report.  Raises ``UsageError`` /
    ``DataError`` / ``UnsupportedError`` (exit 2) for bad input and ``VerificationError``
    (exit 3) when the emitted model fails verification.
    """
    cfg = AdaptConfig(**check_options(AdaptConfig, "adapt", options)).validate()
    t_start = time.perf_counter()
    m, path = resolve_model(model)
    if not m.graph.output:
        raise ModelError("the model has no outputs", path)
    notes: list[str] = []
    with _about(path):
        check_model(m, provider=cfg.provider, label="input model", error=ModelError)
    ds = data.validate(m) if isinstance(data, Dataset) else load_data(data, m)
    num_classes = _check_labels(ds.labels, cfg.classes, ds.source)
    out = m.graph.output[0]
    if len(m.graph.output) > 1:
        notes.append(f"adapted output '{out.name}'; the other outputs ({', '.join(o.name for o in m.graph.output[1:])}) are dropped")
    with _about(path):
        site = _locate(m, ds, cfg)
        extractor, pooled, cut_counts = _cut(m, site, cfg, notes)
        t0 = time.perf_counter()
        ext = extract(site.ref_sess, extractor, ds, feature=site.name, pooled=pooled, provider=cfg.provider, batch_size=cfg.batch_size)
    extract_seconds = time.perf_counter() - t0
    x = ext.features.astype(np.float64)
    labels = ds.labels[: ext.samples]
    if ext.samples < len(ds.labels):
        notes.append(f"{len(ds.labels) - ext.samples} samples not used: the model's batch size is fixed")
    if not np.all(np.isfinite(x)):
        raise DataError(f"the features '{site.name}' hold NaN or Inf on this DATA", ds.source)
    fit = _fit(x, labels, num_classes, cfg, notes)
    use_softmax = bool(site.match.softmax) if cfg.softmax is None and site.match is not None else bool(cfg.softmax)
    if cfg.softmax is None and site.match is not None and site.match.softmax:
        notes.append("the input model's head ended in Softmax: so does the new one")
    adapted = copy.deepcopy(extractor)
    append_head(adapted, pooled, site.feat.elem_type, fit.head, output=out.name, batch_dim=_batch_dim(m), softmax=use_softmax, class_names=cfg.class_names)
    cut_report = {
        "feature": site.name,
        "feature_shape": ["N"] + [int(d) for d in site.sample.shape[1:]],
        "auto": site.match.to_dict() if site.match else None,
        "pool": cfg.pool if pooled != site.name else None,
        "width": site.width,
        **cut_counts,
    }
    head_report = _head_report(cfg, fit, num_classes, use_softmax)
    write_provenance(
        adapted,
        "adapt",
        [{"name": "cut", "params": {"features": cfg.features, "pool": cfg.pool}, "counts": cut_counts}, {"name": "head", "params": {k: head_report[k] for k in ("kind", "classes", "l2", "l2_source", "standardize", "softmax", "seed", "holdout")}}],
        {"adapt": {"feature": site.name, "samples": int(len(labels)), "train": int(len(fit.train_idx)), "holdout_samples": int(len(fit.hold_idx))}},
    )
    got, verification = _verify(adapted, ds, x, fit.head, use_softmax, out.name, cfg)
    verification = {"features": ext.agreement.to_dict(), **verification}
    report = {
        "command": "adapt",
        "input": str(path) if path else None,
        "data": ds.source,
        "output_name": out.name,
        "samples": int(len(labels)),
        "train_samples": int(len(fit.train_idx)),
        "holdout_samples": int(len(fit.hold_idx)),
        "cut": cut_report,
        "head": head_report,
        "accuracy": _accuracies(got, labels, fit, num_classes, ext),
        "seconds": {"extract": round(extract_seconds, 4), "fit": round(fit.seconds, 4)},
        "verification": verification,
        "notes": notes,
    }
    if eval_data is not None:
        report["evaluation"] = {
            "data": getattr(eval_data, "source", str(eval_data)),
            "adapted": evaluate(adapted, eval_data, provider=cfg.provider, batch_size=cfg.batch_size).to_dict(),
            "original": evaluate(m, eval_data, provider=cfg.provider, batch_size=cfg.batch_size).to_dict(),
        }
    report["seconds"]["total"] = round(time.perf_counter() - t_start, 4)
    log.info("adapt: %d classes, l2=%g, holdout accuracy %s", num_classes, fit.l2, report["accuracy"]["holdout"])
    return Result(adapted, report, True)


def _locate(m: onnx.ModelProto, ds: Dataset, cfg: AdaptConfig) -> _Site:
    """The feature tensor (given, or the head's input), probed on a batch of DATA: a float
    tensor with a batch axis (``[N, D]`` when found automatically)."""
    out = m.graph.output[0]
    match = None
    if cfg.features is None:
        match = find_head(m)
        name = match.feature
    else:
        name = cfg.features
        if name == out.name:
            raise UsageError(f"--features '{name}' is the output being replaced; choose a tensor before the head")
    info = tensor_info(m, name)
    flag = f"--features '{name}'" if cfg.features is not None else f"the head's input '{name}'"
    refuse = UsageError if cfg.features is not None else UnsupportedError
    ref_sess = create_session(with_outputs(m, [info]), cfg.provider)
    sample = probe(ref_sess, ds, name)
    if sample.dtype.kind != "f" or helper.np_dtype_to_tensor_dtype(sample.dtype) not in FLOAT_TYPES:
        raise refuse(f"{flag} is {sample.dtype}, not a float tensor")
    feed_n = next(iter(ds.first_batch(8).values())).shape[0]
    if sample.ndim < 2 or sample.shape[0] != feed_n:
        raise refuse(f"{flag} has shape {list(sample.shape)} on a batch of {feed_n}: its first axis is not the batch")
    if cfg.features is None and sample.ndim != 2:
        raise UnsupportedError(f"{flag} has shape {['N'] + list(sample.shape[1:])}, not [N, features]; pass --features NAME")
    elem_type = helper.np_dtype_to_tensor_dtype(sample.dtype)
    dims = info.dims if info.dims is not None and len(info.dims) == sample.ndim else [None] * sample.ndim
    width = int(sample.shape[1]) if cfg.pool != "flatten" or sample.ndim == 2 else int(np.prod(sample.shape[1:]))
    return _Site(name, TensorInfo(name, elem_type, dims), sample, width, match, ref_sess)


def _cut(m: onnx.ModelProto, site: _Site, cfg: AdaptConfig, notes: list[str]):
    """The extractor (everything up to the feature tensor, pooled): ``(model, pooled name, counts)``."""
    extractor, cut_counts = cut_at(m, site.feat)
    pooled = add_pooling(extractor, site.name, site.sample.ndim, cfg.pool)
    if pooled != site.name:
        extractor.graph.output.insert(0, helper.make_tensor_value_info(pooled, site.feat.elem_type, [_batch_dim(m), site.width]))
        notes.append(f"features {['N'] + list(site.sample.shape[1:])} pooled to [N, {site.width}] ({cfg.pool})")
    return extractor, pooled, cut_counts


def _fit(x: np.ndarray, labels: np.ndarray, num_classes: int, cfg: AdaptConfig, notes: list[str]) -> _Fit:
    """Split (stratified, seeded), choose l2 by CV when not given, fit the head."""
    train_idx, hold_idx = stratified_split(labels, float(cfg.holdout), cfg.seed)
    t0 = time.perf_counter()
    cv, l2 = None, cfg.l2
    with one_blas_thread():
        if l2 is None:
            cv = cross_validate(x[train_idx], labels[train_idx], num_classes, kind=cfg.head, standardize=cfg.standardize, seed=cfg.seed)
            l2 = cv.l2
        head = fit_head(x[train_idx], labels[train_idx], num_classes, kind=cfg.head, l2=float(l2), standardize=cfg.standardize)
    seconds = time.perf_counter() - t0
    if head.info.get("absent_classes"):
        notes.append(f"classes {head.info['absent_classes']} have no training sample: score fixed at {head.bias[head.info['absent_classes'][0]]:g}, never predicted")
    if head.info.get("converged") is False:
        notes.append(f"the solver stopped before convergence (max |grad| {head.info['grad_max']:.2g})")
    return _Fit(head, cv, float(l2), train_idx, hold_idx, seconds)


def _head_report(cfg: AdaptConfig, fit: _Fit, num_classes: int, use_softmax: bool) -> dict:
    return {
        "kind": cfg.head,
        "classes": num_classes,
        "l2": fit.l2,
        "l2_source": "cv" if fit.cv is not None else "given",
        "cv": fit.cv.to_dict() if fit.cv is not None else None,
        "standardize": bool(cfg.standardize),
        "softmax": use_softmax,
        "solver": {k: v for k, v in fit.head.info.items() if k in ("solver", "iterations", "converged", "grad_max", "objective")},
        "class_names": list(cfg.class_names) if cfg.class_names else None,
        "seed": cfg.seed,
        "holdout": float(cfg.holdout),
    }


def _verify(adapted: onnx.ModelProto, ds: Dataset, x: np.ndarray, head, use_softmax: bool, output: str, cfg: AdaptConfig):
    """Checker + ORT session, then the model's outputs on every sample against the numpy
    head (float32 parameters) on the extracted features: ``(outputs, verification dict)``."""
    expected = head.as_float32().scores(x)
    if use_softmax:
        expected = _softmax(expected)
    check = check_model(adapted, provider=cfg.provider, label="adapted model")
    got = run_dataset(adapted, ds, provider=cfg.provider, batch_size=cfg.batch_size, error=VerificationError)[0]
    comp = compare_outputs([output], [expected], [got], samples=len(got), source=ds.source)
    if not comp:
        o = comp.outputs[0]
        raise VerificationError(f"adapted model: output '{output}' differs from the numpy head (max abs {o.max_abs:.3g}, relative L2 {o.rel_l2:.3g}) {o.note}".strip())
    return got, {"check": check.to_dict(), "head": comp.to_dict()}


def _accuracies(got: np.ndarray, labels: np.ndarray, fit: _Fit, num_classes: int, ext) -> dict:
    """Train / holdout accuracy of the adapted model's own outputs, and the input model's
    on the same split."""
    pred = np.argmax(got, axis=1)
    train_acc = _accuracy(pred[fit.train_idx], labels[fit.train_idx], num_classes)
    hold_acc = _accuracy(pred[fit.hold_idx], labels[fit.hold_idx], num_classes) if len(fit.hold_idx) else None
    original = None
    if ext.reference_predictions is not None:
        idx = fit.hold_idx if len(fit.hold_idx) else fit.train_idx
        ev = _accuracy(ext.reference_predictions[idx], labels[idx], ext.reference_classes)
        original = {"split": "holdout" if len(fit.hold_idx) else "train", "classes": ext.reference_classes, "same_label_space": ext.reference_classes == num_classes, **ev.to_dict()}
    return {"train": train_acc.accuracy, "holdout": hold_acc.accuracy if hold_acc else None, "original": original}
