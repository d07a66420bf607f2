"""``adapt``'s model-changing step as a pass: cut at the feature tensor, fit, emit the head.

``AdaptHeadPass`` locates the feature tensor (given, or the input of the head found by
``cut.find_head``), cuts the model there (``cut``), extracts the features on the context's
DATA (``features.extract``: the cut model must reproduce the input model's feature tensor,
exact rule), fits the head in numpy (``linear``) and emits it (``emit``).  Its outputs no
longer mean the input model's (``own_reference``): its ``Expected`` outputs are the numpy
head applied to the extracted features, which ``core.run_pipeline`` checks the adapted
model against on every sample (``|onnx - numpy| <= 1e-4 + 1e-3 |numpy|``).  ``extras``:
the fit, the extraction and the seconds each took, for ``adapt``'s report.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..core.passes import Context, Expected, Pass, PassResult
from ..data import Dataset
from ..errors import DataError, OnnxoptError, UnsupportedError, UsageError, first_failure
from ..graph import FLOAT_TYPES
from ..linear import HEADS, cross_validate, fit_head, one_blas_thread, stratified_split
from ..linear import softmax as _softmax
from ..runtime import create_session, resolve_provider
from .cut import POOLS, TensorInfo, add_pooling, cut_at, find_head, tensor_info, with_outputs
from .emit import append_head
from .features import DEFAULT_BATCH, extract, probe

__all__ = ["AdaptConfig", "AdaptHeadPass", "about", "batch_dim"]

HEAD_MISMATCH = "adapted model: output '{name}' differs from the numpy head (max abs {max_abs:.3g}, relative L2 {rel_l2:.3g}) {note}"


@contextmanager
def about(path):
    """Errors raised inside name ``path`` when they name no file themselves."""
    try:
        yield
    except OnnxoptError as exc:
        if exc.path is None and path is not None:
            exc.path = str(path)
        raise


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
        l2 = self.l2
        problem = first_failure(
            (self.head not in HEADS, f"unknown head '{self.head}' (choose from {', '.join(HEADS)})"),
            (self.pool not in POOLS, f"unknown pool '{self.pool}' (choose from {', '.join(POOLS)})"),
            (not (isinstance(self.holdout, (int, float)) and 0 <= self.holdout < 1), f"holdout must be in [0, 1), got {self.holdout!r}"),
            (l2 is not None and not (isinstance(l2, (int, float)) and math.isfinite(l2) and l2 > 0), f"l2 must be a positive number, got {l2!r}"),
        )
        if problem:
            raise UsageError(problem)
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


def batch_dim(model: onnx.ModelProto):
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


def _locate(m: onnx.ModelProto, ds: Dataset, cfg: AdaptConfig) -> _Site:
    """The feature tensor (given, or the head's input), probed on a batch of DATA: a float
    tensor with a batch axis (``[N, D]`` when found automatically)."""
    out = m.graph.output[0]
    match = find_head(m) if cfg.features is None else None
    name = cfg.features if match is None else match.feature
    if name == out.name and match is None:
        raise UsageError(
            f"--features '{name}' is the output being replaced; choose a tensor before the head"
        )
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
        extractor.graph.output.insert(0, helper.make_tensor_value_info(pooled, site.feat.elem_type, [batch_dim(m), site.width]))
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
        notes.append(
            f"classes {head.info['absent_classes']} have no training sample: score fixed at {head.bias[head.info['absent_classes'][0]]:g}, never predicted"
        )
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


class AdaptHeadPass(Pass):
    """Replace the classifier head: cut at the feature tensor, fit a linear head on the
    context's labelled DATA, emit it (see the module docstring)."""

    key = "adapt-head"
    needs = ("labels",)
    exact = False
    idempotent = False
    own_reference = True
    Config = AdaptConfig

    def call(self, m: onnx.ModelProto, ctx: Context) -> PassResult:
        cfg, ds = self.config, ctx.data
        out = m.graph.output[0]
        notes: list[str] = []
        if len(m.graph.output) > 1:
            notes.append(f"adapted output '{out.name}'; the other outputs ({', '.join(o.name for o in m.graph.output[1:])}) are dropped")
        with about(ctx.path):
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
        num_classes = cfg.classes if cfg.classes is not None else int(ds.labels.max()) + 1
        fit = _fit(x, labels, num_classes, cfg, notes)
        use_softmax = bool(site.match.softmax) if cfg.softmax is None and site.match is not None else bool(cfg.softmax)
        if cfg.softmax is None and site.match is not None and site.match.softmax:
            notes.append("the input model's head ended in Softmax: so does the new one")
        adapted = extractor  # not used again after extract()
        append_head(adapted, pooled, site.feat.elem_type, fit.head, output=out.name, batch_dim=batch_dim(m), softmax=use_softmax, class_names=cfg.class_names)
        expected = fit.head.as_float32().scores(x)
        if use_softmax:
            expected = _softmax(expected)
        details = {
            "cut": _cut_report(site, cfg, pooled, cut_counts),
            "head": _head_report(cfg, fit, num_classes, use_softmax),
            "features": ext.agreement.to_dict(),
            "samples": int(len(labels)),
            "train_samples": int(len(fit.train_idx)),
            "holdout_samples": int(len(fit.hold_idx)),
        }
        res = self.result(adapted, True, counts=cut_counts, notes=notes, details=details)
        res.report.extras = {"fit": fit, "extraction": ext, "labels": labels, "seconds": {"extract": round(extract_seconds, 4), "fit": round(fit.seconds, 4)}}
        res.expected = Expected(ds, [expected], "adapted model", failure=HEAD_MISMATCH, exact=False, batch_size=cfg.batch_size)
        return res


def _cut_report(site: _Site, cfg: AdaptConfig, pooled: str, cut_counts: dict) -> dict:
    return {
        "feature": site.name,
        "feature_shape": ["N"] + [int(d) for d in site.sample.shape[1:]],
        "auto": site.match.to_dict() if site.match else None,
        "pool": cfg.pool if pooled != site.name else None,
        "width": site.width,
        **cut_counts,
    }
