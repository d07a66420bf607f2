"""Verification, the product's heart: every transform's output goes through here.

``check_model``: ``onnx.checker`` full check (strict shape inference when the model allows
it, plain otherwise, and the record says which), then an ONNX Runtime session that loads.
``compare``: run two models on the same inputs and report per output the max / mean abs
error, the relative L2 error ``||b - a|| / ||a||``, the mean cosine similarity and, for
``[N, C]`` class scores, the top-1 agreement.  A ``Comparison`` is truthy when every output
is within ``|b - a| <= atol + rtol * |a|`` elementwise (and shapes/dtypes agree).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from .data import check_shapes, dataset_for
from .errors import DataError, ModelError, OnnxoptError, VerificationError, blame
from .graph import real_inputs
from .metrics import is_class_scores
from .runtime import create_session, run_dataset

__all__ = [
    "blaming_members",
    "EXACT_REL_L2",
    "EXACT_MAX_ABS",
    "is_exact",
    "frozen_dims",
    "verify_other_shapes",
    "CheckRecord",
    "OutputComparison",
    "Comparison",
    "check_model",
    "compare",
    "compare_arrays",
    "compare_outputs",
    "check_comparison",
    "REASSOCIATED_REL_L2",
    "paired_datasets",
    "verify",
]

log = logging.getLogger(__name__)

# an "exact" transform (simplify, fusion, dead-code removal) may move outputs by at most this
EXACT_REL_L2 = 1e-4
# ... or, for outputs so close to zero that relative L2 measures float rounding, this max abs error
EXACT_MAX_ABS = 1e-6
# a transform that computes the same function with other kernels in another order (decomposed
# layer norms fused into one ``LayerNormalization``: ORT's kernel sums in one float pass where
# the exporter's ReduceSum/ReduceMean sum pairwise) may move outputs by at most this: measured
# 1.5e-4 on magika's two fused layer norms, each closer to a float64 layer norm or as close
REASSOCIATED_REL_L2 = 1e-3


def is_exact(rel_l2: float, max_abs: float, *, limit: float = EXACT_REL_L2) -> bool:
    """The one exact-transform rule: ``rel_l2 <= limit`` (default ``EXACT_REL_L2``, 1e-4) or
    ``max_abs <= EXACT_MAX_ABS`` (1e-6).  Every exact step, parity check and cut uses it."""
    return rel_l2 <= limit or max_abs <= EXACT_MAX_ABS


def _dims(vi) -> list | None:
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
        return None
    return [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?") for d in tt.shape.dim]


def frozen_dims(reference: onnx.ModelProto, model: onnx.ModelProto, *, fixed: frozenset | set = frozenset()) -> str:
    """Why ``model`` no longer has ``reference``'s dynamic axes ("" when it keeps them): a
    symbolic dim of a graph input or output of ``reference`` that ``model`` declares as a
    number.  Inputs named in ``fixed`` (the user's ``--fix-shapes``) may be fixed, and then
    so may the outputs."""
    def table(m):
        return [("input", vi.name, _dims(vi)) for vi in real_inputs(m.graph)] + [("output", vi.name, _dims(vi)) for vi in m.graph.output]

    new = {(kind, name): dims for kind, name, dims in table(model)}
    for kind, name, dims in table(reference):
        if name in fixed or (kind == "output" and fixed):
            continue
        got = new.get((kind, name))
        if not dims or not got or len(got) != len(dims):
            continue
        for axis, (want, have) in enumerate(zip(dims, got, strict=True)):
            if isinstance(want, str) and isinstance(have, int):
                label = "" if want == "?" else f" ({want})"
                return f"{kind} '{name}' axis {axis}{label} was dynamic and is now fixed to {have} (give --fix-shapes {name}:... to ask for static shapes)"
    return ""


@dataclass
class CheckRecord:
    checker: bool = False
    strict_shape_inference: bool = False
    ort_loaded: bool = False
    provider: str = "cpu"
    notes: list[str] = field(default_factory=list)
    session: object | None = field(default=None, repr=False, compare=False)  # check_model(keep_session=True)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(replace(self, session=None)).items() if k != "session"}


def _checker(model: onnx.ModelProto, notes: list[str], strict: bool = True) -> bool:
    """Full check with strict shape inference (``strict=False``: without that last pass);
    falls back to non-strict with a note.  Both run on the model's skeleton (``_skeleton``):
    its large tensors point at sparse files of their sizes, so neither the checker nor shape
    inference copies the weights (on a 68 MB encoder, strict inference of the whole proto held
    four copies of them at once: the peak of ``optimize``)."""
    from .io import exceeds_protobuf, is_lazy

    if exceeds_protobuf(model, margin=2**24) and not is_lazy(model):
        with tempfile.TemporaryDirectory(prefix="onnxopt-check-") as tmp:
            from .io import save_model

            p = Path(tmp) / "m.onnx"
            save_model(model, p, external_data=True)
            onnx.checker.check_model(str(p), full_check=False)
            notes.append("model over 2 GB: checked by path, shape inference skipped")
            return False
    with tempfile.TemporaryDirectory(prefix="onnxopt-check-") as tmp:
        skeleton, lazy = _skeleton(model, Path(tmp))
        p = Path(tmp) / "skeleton.onnx"
        p.write_bytes(skeleton.SerializeToString())
        if not _full_check(str(p), notes):
            return False
    if lazy:
        notes.append("large model: checked with its weights left in their files")
    return strict and _strict_inference(skeleton, notes)


def _full_check(target, notes: list[str]) -> bool:
    """``onnx.checker`` full check of ``target`` (a model or a path); when shape inference
    fails, the structural check only, with a note (False)."""
    try:
        onnx.checker.check_model(target, full_check=True)
    except onnx.checker.ValidationError:
        raise
    except Exception as exc:  # InferenceError from full_check
        onnx.checker.check_model(target, full_check=False)
        notes.append(f"shape inference failed ({' '.join(str(exc).split())[:200]}); structural check only")
        return False
    return True


def _strict_inference(model: onnx.ModelProto, notes: list[str]) -> bool:
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        return True
    except Exception as exc:
        notes.append(f"strict shape inference refused ({' '.join(str(exc).split())[:160]}); non-strict check passed")
        return False


SKELETON_MIN_BYTES = 1 << 16  # smaller tensors stay inline: shape inference reads shapes and axes from them


def _skeleton(model: onnx.ModelProto, folder: Path) -> tuple[onnx.ModelProto, bool]:
    """A copy of ``model`` for the checker, built without copying its weights: each tensor of
    at least ``SKELETON_MIN_BYTES`` (in memory, or lazy in its file) is replaced by an
    external-data reference to a sparse file of the same length in ``folder`` (the checker
    looks at files and sizes, not at values).  Returns the skeleton and whether ``model`` had
    lazy tensors."""
    from .io import BASEPATH, external_info, inline_nbytes, set_external_data, with_tensors

    count, lazy = [0], [False]

    def stub(t: onnx.TensorProto) -> onnx.TensorProto:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = external_info(t)
            if BASEPATH not in info:
                return t
            lazy[0], length = True, int(info.get("length", 0) or 0)
        elif t.data_type == onnx.TensorProto.STRING or inline_nbytes(t) < SKELETON_MIN_BYTES:
            return t
        else:
            length = inline_nbytes(t)
        out = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims, doc_string=t.doc_string)
        name = f"t{count[0]}.bin"
        count[0] += 1
        with open(folder / name, "wb") as fh:
            fh.truncate(length)
        out.data_location = onnx.TensorProto.EXTERNAL
        set_external_data(out, (("location", name), ("offset", "0"), ("length", str(length))))
        return out

    return with_tensors(model, stub), lazy[0]


def check_model(
    model: onnx.ModelProto, *, provider: str = "cpu", error=VerificationError, label: str | None = None, keep_session: bool = False, strict: bool = True
) -> CheckRecord:
    """Checker + ORT load (+ the session options the model carries, ``serving.carry``).
    Raises ``error`` naming ``label`` on failure.  ``keep_session``: the session ORT loaded
    is returned in ``record.session`` (a caller that runs the model next needs no second one).
    ``strict=False`` leaves out the strict shape-inference pass (a search's trial models,
    whose final model gets the whole check)."""
    rec = CheckRecord(provider=provider)
    prefix = f"{label}: " if label else ""
    try:
        rec.strict_shape_inference = _checker(model, rec.notes, strict)
        rec.checker = True
    except Exception as exc:
        raise error(f"{prefix}onnx.checker rejects the model: {' '.join(str(exc).split())[:400]}") from exc
    # loaded as an application loads it: with the session options the model carries
    # (ort_config), which ONNX Runtime must accept and apply as written
    from .serving.carry import carried_session

    sess = carried_session(model, provider, error=error)[0]
    rec.ort_loaded, rec.session = True, sess if keep_session else None
    del sess
    if label:
        log.debug("%s: checker ok (strict=%s), ORT loaded", label, rec.strict_shape_inference)
    return rec


@dataclass
class OutputComparison:
    name: str
    shape: list
    max_abs: float
    mean_abs: float
    rel_l2: float
    cosine: float
    top1_agreement: float | None
    ok: bool
    note: str = ""
    median_abs: float = 0.0  # quantiles of |b - a| over the finite elements (Polygraphy-style)
    p90_abs: float = 0.0
    p99_abs: float = 0.0
    nonfinite: int = 0  # NaN/Inf elements in B

    @property
    def exact(self) -> bool:
        """Within the exact-transform rule (``is_exact``), with the same shape and NaN/Inf pattern."""
        return self.within(EXACT_REL_L2)

    def within(self, limit: float) -> bool:
        """``exact`` with relative L2 ``limit`` (``REASSOCIATED_REL_L2`` for a reassociating transform)."""
        return not self.note.startswith("shape") and self.note != "NaN/Inf pattern differs" and is_exact(self.rel_l2, self.max_abs, limit=limit)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Comparison:
    """Per-output error statistics of B against A; truthy when all are within tolerance."""

    outputs: list[OutputComparison]
    atol: float
    rtol: float
    samples: int
    source: str = ""
    others: list = field(default_factory=list)  # Comparisons at further discovered shapes

    def __bool__(self) -> bool:
        return all(o.ok for o in self.outputs) and all(self.others)

    @property
    def worst_rel_l2(self) -> float:
        return max((o.rel_l2 for o in self.outputs), default=0.0)

    def inexact(self, limit: float = EXACT_REL_L2) -> list[OutputComparison]:
        """The outputs that break the exact-transform rule (relative L2 ``limit``), worst first."""
        return sorted((o for o in self.outputs if not o.within(limit)), key=lambda o: -o.rel_l2)

    def to_dict(self) -> dict:
        return {
            "ok": bool(self),
            "atol": self.atol,
            "rtol": self.rtol,
            "samples": self.samples,
            "data": self.source,
            "outputs": [o.to_dict() for o in self.outputs],
            **({"other_shapes": [o.to_dict() for o in self.others]} if self.others else {}),
        }


CHUNK_ELEMENTS = 1 << 20  # compare_arrays works on blocks of samples of about this many values


@np.errstate(all="ignore")  # inf/NaN/overflow are figures in the report, not warnings on stderr
def compare_arrays(name: str, a, b, *, atol: float = 1e-4, rtol: float = 1e-3) -> OutputComparison:
    """Error statistics of ``b`` against the reference ``a``: max / mean / median / p90 / p99
    absolute error, relative L2 ``||b - a|| / ||a||``, mean per-sample cosine, top-1
    agreement for ``[N, C]`` scores, NaN/Inf count; ``ok`` when every element satisfies
    ``|b - a| <= atol + rtol * |a|`` with the same NaN/Inf pattern.

    Computed in float64 on blocks of samples (``CHUNK_ELEMENTS`` values), so the temporaries
    stay small: only the finite absolute errors (for the quantiles) are held whole."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return OutputComparison(name, list(b.shape), float("inf"), float("inf"), float("inf"), 0.0, None, False, f"shape {list(b.shape)} != {list(a.shape)}")
    if a.dtype.kind not in "fiub":
        same = bool(np.array_equal(a, b))
        return OutputComparison(
            name, list(a.shape), 0.0 if same else float("inf"), 0.0, 0.0 if same else 1.0, 100.0, None, same, f"dtype {a.dtype} compared for equality"
        )
    fa = a.reshape(a.shape[0], -1) if a.ndim >= 1 and a.shape[0] else a.reshape(1, -1)
    fb = b.reshape(fa.shape)
    step = max(1, CHUNK_ELEMENTS // max(fa.shape[1], 1))
    errors = np.empty(fa.size, dtype=np.float64)  # the finite |b - a|, for the quantiles
    n = 0
    max_abs = sum_abs = sq_diff = sq_ref = cos_sum = 0.0
    nan_mismatch, ok, nonfinite = False, True, 0
    for s in range(0, fa.shape[0], step):
        x, y = fa[s : s + step].astype(np.float64), fb[s : s + step].astype(np.float64)
        finite = np.isfinite(x) & np.isfinite(y)
        nan_mismatch = nan_mismatch or bool(np.any(np.isnan(x) != np.isnan(y)) or np.any(np.isinf(x) != np.isinf(y)))
        diff = np.abs(np.where(finite, y - x, 0.0))
        ref = np.where(finite, x, 0.0)
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
        sum_abs += float(diff.sum())
        sq_diff += float(np.vdot(diff, diff))
        sq_ref += float(np.vdot(ref, ref))
        kept = diff[finite]
        errors[n : n + kept.size] = kept
        n += kept.size
        ok = ok and bool(np.all(diff <= atol + rtol * np.abs(ref)))
        nonfinite += int((~np.isfinite(y)).sum())
        x, y = np.nan_to_num(x), np.nan_to_num(y)
        nrm = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        cos_sum += float(np.where(nrm > 0, (x * y).sum(axis=1) / np.maximum(nrm, 1e-300), 1.0).sum())
    mean_abs = sum_abs / fa.size if fa.size else 0.0
    q50, q90, q99 = (float(v) for v in np.quantile(errors[:n], [0.5, 0.9, 0.99], overwrite_input=True)) if n else (0.0, 0.0, 0.0)
    na = float(np.sqrt(sq_ref))
    rel = float(np.sqrt(sq_diff) / na) if na > 0 else (0.0 if max_abs == 0 else float("inf"))
    cos = cos_sum / fa.shape[0]
    top1 = float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1))) if is_class_scores(a) else None
    note = "NaN/Inf pattern differs" if nan_mismatch else ""
    return OutputComparison(name, list(a.shape), max_abs, mean_abs, rel, cos, top1, ok and not nan_mismatch, note, q50, q90, q99, nonfinite)


def compare_outputs(names, ref, new, *, atol: float = 1e-4, rtol: float = 1e-3, samples: int = 0, source: str = "") -> Comparison:
    """Compare two lists of arrays output by output (``compare_arrays`` for each)."""
    comps = [compare_arrays(name, a, b, atol=atol, rtol=rtol) for name, a, b in zip(names, ref, new, strict=True)]
    return Comparison(comps, atol, rtol, samples, source)


def check_comparison(comp: Comparison, label: str, *, exact: bool, limit: float = EXACT_REL_L2) -> None:
    """Raise ``VerificationError`` (prefixed with ``label``) when an output of ``comp``
    changed shape or, for an ``exact`` transform, broke the exact-transform rule (relative L2
    ``limit``)."""
    for o in comp.outputs:
        if o.note.startswith("shape"):
            raise VerificationError(f"{label}: output '{o.name}' changed {o.note}")
    bad = comp.inexact(limit) if exact else []
    if bad:
        raise VerificationError(f"{label}: output '{bad[0].name}' moved by {bad[0].rel_l2:.3g} relative L2 (limit {limit:g} for an exact transform)")


def verify_other_shapes(
    reference: onnx.ModelProto,
    model: onnx.ModelProto,
    dataset,
    *,
    exact: bool,
    label: str,
    provider: str = "cpu",
    seed: int = 0,
    cache: dict | None = None,
    limit: float = EXACT_REL_L2,
) -> list[dict]:
    """Run ``model`` against ``reference`` at each further shape input discovery found for
    synthesized ``dataset`` (``Dataset.alternatives``; none for DATA or ``--shape``), so
    that every symbolic axis is checked at two values at least.  Raises VerificationError
    naming the shape when ``model`` fails to run there, changes an output's shape, or, for
    an ``exact`` transform, breaks the exact rule (relative L2 ``limit``).  ``cache`` keeps the reference outputs
    between calls.  Returns one record per shape."""
    from .data import synthesize

    cache = {} if cache is None else cache
    names = _output_names(reference)
    records = []
    for i, shapes in enumerate(getattr(dataset, "alternatives", None) or []):
        if i not in cache:
            ds = synthesize(reference, shapes, seed=seed + 1)
            cache[i] = (ds, run_dataset(reference, ds, provider=provider, error=ModelError))
        ds, ref = cache[i]
        try:
            outputs = run_dataset(model, ds, provider=provider, error=VerificationError)
        except OnnxoptError as exc:
            raise VerificationError(f"{label}: at {ds.describe()}: {exc.message}") from exc
        comp = compare_outputs(names, ref, outputs, source=ds.describe())
        check_comparison(comp, f"{label}: at {ds.describe()}", exact=exact, limit=limit)
        records.append({"data": ds.describe(), "worst_rel_l2": comp.worst_rel_l2})
    return records


def _output_names(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def compare(
    a,
    b,
    data=None,
    *,
    shapes=None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    provider: str = "cpu",
    limit: int | None = 256,
    seed: int = 0,
    error=VerificationError,
) -> Comparison:
    """Run A and B on the same inputs (DATA, a Dataset, or synthesized) and compare outputs."""
    from .io import resolve_model

    ma, _ = resolve_model(a)
    mb, _ = resolve_model(b)
    ds = dataset_for(ma, data, shapes, seed=seed)
    names_a, names_b = _output_names(ma), _output_names(mb)
    if len(names_a) != len(names_b):
        raise error(f"models have different numbers of outputs ({len(names_a)} vs {len(names_b)})")
    ds_b = dataset_for(mb, ds.view()) if data is not None else ds
    ref = run_dataset(ma, ds, provider=provider, limit=limit, error=error)
    samples = _fed(ds, limit)
    new = run_dataset(mb, ds_b, provider=provider, limit=limit, error=error)
    return compare_outputs(names_a, ref, new, atol=atol, rtol=rtol, samples=samples, source=ds.describe())


def _fed(ds, limit: int | None) -> int:
    """Samples the last run of ``ds`` fed (a fixed model batch drops a partial last batch)."""
    fed = getattr(ds, "fed", None)
    if fed:
        return int(fed)
    return min(len(ds), limit) if limit else len(ds)


def _load_for_verify(src):
    """(proto for specs, what ORT loads, path): a path is loaded by ORT itself, so its
    external data is read once (here it is only validated)."""
    from .io import load_model

    if isinstance(src, onnx.ModelProto):
        return src, src, None
    path = Path(src)
    return load_model(path, load_external=False), path, path


def paired_datasets(ma: onnx.ModelProto, mb: onnx.ModelProto, data=None, shapes=None, *, seed: int = 0, paths=(None, None)):
    """(dataset of A, the same samples validated for B): DATA or inputs synthesized from A.
    DATA that fits neither is a ``DataError`` naming its file; synthesized inputs that B
    does not take are a ``ModelError`` on B (its inputs differ from A's)."""
    pa, pb = paths
    with blame(pa, data=True):
        check_shapes(ma, shapes, pa)
        ds = dataset_for(ma, data, shapes, seed=seed)
    try:
        with blame(pb):
            ds_b = dataset_for(mb, ds.view())
    except DataError as exc:
        if data is not None:
            raise
        raise ModelError(f"inputs differ from the first model's ({exc.message})", pb) from exc
    return ds, ds_b


def verify(
    a, b, data=None, *, shapes=None, atol: float = 1e-4, rtol: float = 1e-3, provider: str = "cpu", limit: int | None = None, seed: int = 0
) -> Comparison:
    """Public API of ``onnxopt verify``: run A and B on the same inputs and compare outputs.

    Inputs: DATA (validated against both models) or inputs synthesized from A's input specs
    (symbolic dims from ``shapes``, else 1; ``seed`` fixed).  Outputs are compared in order.
    Bad input (unreadable model, data that does not fit, models with different interfaces)
    raises ``InputError`` subclasses; the returned ``Comparison`` is falsy when an output is
    out of tolerance (``|b - a| <= atol + rtol * |a|`` elementwise).
    """
    from .runtime import resolve_provider

    provider = resolve_provider(provider)
    ma, load_a, pa = _load_for_verify(a)
    mb, load_b, pb = _load_for_verify(b)
    names_a, names_b = _output_names(ma), _output_names(mb)
    if len(names_a) != len(names_b):
        raise ModelError(f"has {len(names_b)} output(s), the first model has {len(names_a)}", pb)
    ds, ds_b = paired_datasets(ma, mb, data, shapes, seed=seed, paths=(pa, pb))
    with blame(pa):
        sess_a = create_session(load_a, provider, error=ModelError)
        ref = run_dataset(sess_a, ds, limit=limit, error=ModelError)
    samples = _fed(ds, limit)
    with blame(pb):
        sess_b = create_session(load_b, provider, error=ModelError)
        new = run_dataset(sess_b, ds_b, limit=limit, error=ModelError)
    comp = compare_outputs(names_a, ref, new, atol=atol, rtol=rtol, samples=samples, source=ds.describe())
    # synthesized inputs of a model with symbolic dims: also at discovery's further shapes
    for shapes_alt in ds.alternatives if data is None else []:
        from .data import synthesize

        with blame(pa, data=True):
            alt = synthesize(ma, shapes_alt, seed=seed + 1)
        with blame(pa):
            ref = run_dataset(sess_a, alt, error=ModelError)
        with blame(pb):
            new = run_dataset(sess_b, alt, error=ModelError)
        comp.others.append(compare_outputs(names_a, ref, new, atol=atol, rtol=rtol, samples=_fed(alt, None), source=alt.describe()))
    return comp


def blaming_members(param: str = "models"):
    """Decorator for a public function that takes several models (paths or protos) in
    argument ``param``: when it fails (with an ``OnnxoptError``, or an internal error that a
    broken member can cause), each member given as a path is checked on its own (``onnx.checker`` by path, then an ONNX Runtime session), and the
    first that fails is named instead (``error: MEMBER: invalid model: ...``).  A broken
    member otherwise surfaces late, as a failure of the merged model or of a valid member's
    opset conversion.  When every member is valid the original exception propagates
    unchanged (a bug stays a traceback).  Costs nothing when the call succeeds."""
    def wrap(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # an internal error caused by a broken member, too
                srcs = sig.bind_partial(*args, **kwargs).arguments.get(param)
                if isinstance(srcs, (str, os.PathLike)):
                    srcs = [srcs]
                culprit = _broken_member(srcs or [])
                if culprit is not None and culprit is not exc:
                    raise culprit from exc
                raise

        return inner

    return wrap


def _broken_member(srcs) -> OnnxoptError | None:
    from .io import load_model

    for src in srcs:
        if not isinstance(src, (str, os.PathLike)):
            continue
        try:
            load_model(src, load_external=False)
            try:
                onnx.checker.check_model(os.fspath(src))
            except Exception as exc:  # ValidationError, or protobuf errors from C++
                raise ModelError(f"invalid model: {' '.join(str(exc).split())[:300]}", src) from None
            create_session(src, "cpu", error=ModelError)
        except ModelError as exc:
            if exc.path is None:
                exc.path = os.fspath(src)
            return exc
    return None


# ``onnxopt.verify(...)`` is the public function even once this module is imported (imported
# last: onnxopt.core imports this module)
from .core.public import callable_module  # noqa: E402

callable_module(__name__, "onnxopt.verify:verify")
