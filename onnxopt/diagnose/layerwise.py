"""Layer-wise divergence: every matched tensor of two models compared on the same inputs.

The matched tensors (``match.match_tensors``) are exposed as extra graph outputs a slice at
a time (at most ``slice_tensors`` tensors and about ``slice_bytes`` of reference
activations per slice), so memory stays bounded and ONNX Runtime still fuses everything
outside the slice.  Per slice the reference runs first and its activations are kept; then
the candidate runs batch by batch and each batch is compared with
``verify.compare_outputs``.  One session exists at a time.

Per tensor, over all samples: relative L2 ``||b - a|| / ||a||`` (from the per-batch
figures: ``sqrt(sum_b (rel_b * ||a_b||)^2) / sqrt(sum_b ||a_b||^2)``), max abs error,
mean per-sample cosine, NaN/Inf counts in each model.

A tensor *diverges* when it breaks ``verify.is_exact`` with ``limit=threshold`` or its
NaN/Inf pattern differs.  Its *input error* is the largest error of the matched tensors its
reference producer reads (walking back through unmatched tensors; graph inputs count 0);
the *error it adds* is its error minus its input error.  The **first diverging node**
produces the first tensor, in graph order, that diverges while none of its inputs does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from ..errors import ModelError
from ..graph import producers
from ..runtime import create_session, run_batches
from ..stats import activation_bytes
from ..verify import EXACT_REL_L2, compare_outputs, is_exact
from .match import Matching, TensorPair

__all__ = ["LayerwiseConfig", "TensorError", "Divergence", "compare_layers", "attribute"]

log = logging.getLogger(__name__)


@dataclass
class LayerwiseConfig:
    threshold: float = EXACT_REL_L2
    top: int = 5
    limit: int | None = 64
    batch_size: int | None = None
    slice_tensors: int = 48
    slice_bytes: int = 128 * 2**20
    provider: str = "cpu"


@dataclass
class TensorError:
    ref: str
    cand: str
    how: str
    node: str
    op: str
    shape: list
    rel_l2: float
    max_abs: float
    cosine: float
    nan_ref: int = 0
    nan_cand: int = 0
    inf_ref: int = 0
    inf_cand: int = 0
    error_in: float = 0.0
    added: float = 0.0
    diverged: bool = False
    inputs_diverged: bool = False
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Divergence:
    """The per-tensor table (graph order), the first diverging node and the top-k by error added."""

    tensors: list[TensorError]
    matching: Matching
    threshold: float
    samples: int
    source: str
    first: TensorError | None = None
    top: list[TensorError] = field(default_factory=list)
    slices: int = 0

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "samples": self.samples,
            "data": self.source,
            "slices": self.slices,
            "first_diverging": self.first.to_dict() if self.first else None,
            "top": [t.to_dict() for t in self.top],
            "matching": self.matching.to_dict(),
            "tensors": [t.to_dict() for t in self.tensors],
        }


class _Acc:
    """Per-tensor figures summed over batches."""

    def __init__(self):
        self.sq_ref = self.sq_diff = self.max_abs = self.cos_sum = 0.0
        self.rows = 0
        self.nan_ref = self.nan_cand = self.inf_ref = self.inf_cand = 0
        self.shape: list = []
        self.note = ""

    @np.errstate(all="ignore")
    def add(self, comp, a: np.ndarray, b: np.ndarray) -> None:
        if comp.note.startswith("shape") or comp.note.startswith("dtype"):
            self.note = self.note or comp.note
            return
        a64 = a.astype(np.float64, copy=False)
        na = float(np.linalg.norm(np.where(np.isfinite(a64), a64, 0.0)))
        self.sq_ref += na * na
        self.sq_diff += (comp.rel_l2 * na) ** 2 if na > 0 else (0.0 if comp.max_abs == 0 else math.inf)
        self.max_abs = max(self.max_abs, comp.max_abs)
        rows = int(a.shape[0]) if a.ndim >= 1 and a.shape[0] else 1
        self.cos_sum += comp.cosine * rows
        self.rows += rows
        self.nan_ref += int(np.isnan(a64).sum())
        self.nan_cand += int(np.isnan(b.astype(np.float64, copy=False)).sum())
        self.inf_ref += int(np.isinf(a64).sum())
        self.inf_cand += int(np.isinf(b.astype(np.float64, copy=False)).sum())
        self.shape = [int(d) for d in a.shape[1:]]

    def result(self, pair: TensorPair) -> TensorError:
        rel = math.sqrt(self.sq_diff) / math.sqrt(self.sq_ref) if self.sq_ref > 0 else 0.0 if self.max_abs == 0 else math.inf
        t = TensorError(
            pair.ref,
            pair.cand,
            pair.how,
            pair.node,
            pair.op,
            self.shape,
            rel,
            self.max_abs,
            self.cos_sum / max(self.rows, 1),
            self.nan_ref,
            self.nan_cand,
            self.inf_ref,
            self.inf_cand,
            note=self.note,
        )
        if (t.nan_ref, t.inf_ref) != (t.nan_cand, t.inf_cand) and not t.note:
            t.note = "NaN/Inf count differs"
        return t


def plan_slices(pairs: list[TensorPair], per_sample: dict[str, int], samples: int, cfg: LayerwiseConfig) -> list[list[TensorPair]]:
    """Consecutive slices of at most ``slice_tensors`` tensors and ``slice_bytes`` of
    reference activations (a tensor larger than that alone gets a slice of its own)."""
    slices: list[list[TensorPair]] = [[]]
    used = 0
    for p in pairs:
        need = per_sample.get(p.ref, 0) * max(samples, 1)
        if slices[-1] and (len(slices[-1]) >= cfg.slice_tensors or used + need > cfg.slice_bytes):
            slices.append([])
            used = 0
        slices[-1].append(p)
        used += need
    return [s for s in slices if s]


def _session_with_outputs(model: onnx.ModelProto, names: list[str], provider: str):
    """A session of ``model`` whose outputs are ``names`` too (the proto is restored after)."""
    present = {o.name for o in model.graph.output}
    added = [n for n in names if n not in present]
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in added)
    try:
        return create_session(model, provider, error=ModelError)
    finally:
        del model.graph.output[len(model.graph.output) - len(added) :]


def _compare_slice(ref, cand, ds_ref, ds_cand, pairs: list[TensorPair], cfg: LayerwiseConfig) -> list[TensorError]:
    names_ref, names_cand = [p.ref for p in pairs], [p.cand for p in pairs]
    sess = _session_with_outputs(ref, names_ref, cfg.provider)
    kept = list(run_batches(sess, ds_ref.batches(cfg.batch_size, cfg.limit), names_ref))
    del sess
    sess = _session_with_outputs(cand, names_cand, cfg.provider)
    accs = [_Acc() for _ in pairs]
    for i, outs in enumerate(run_batches(sess, ds_cand.batches(cfg.batch_size, cfg.limit), names_cand)):
        ref_outs, kept[i] = kept[i], None  # freed as soon as compared
        for acc, c, a, b in zip(accs, compare_outputs(names_ref, ref_outs, outs).outputs, ref_outs, outs, strict=True):
            acc.add(c, np.asarray(a), np.asarray(b))
    return [acc.result(p) for acc, p in zip(accs, pairs, strict=True)]


def attribute(
    tensors: list[TensorError], pairs: list[TensorPair], ref_graph: onnx.GraphProto, threshold: float, top: int
) -> tuple[TensorError | None, list[TensorError]]:
    """Fill each tensor's input error, error added and divergence; return the first
    diverging tensor and the ``top`` tensors by error added."""
    by_ref = {t.ref: t for t in tensors}
    inputs_of = {p.ref: p.inputs for p in pairs}
    prod = producers(ref_graph)
    memo: dict[str, tuple[float, bool]] = {}

    def upstream(name: str, depth: int = 0) -> tuple[float, bool]:
        """(error, diverged) reaching ``name``: its own when compared, else its producer's inputs'."""
        if name in by_ref:
            t = by_ref[name]
            return t.rel_l2, t.diverged
        if name in memo:
            return memo[name]
        memo[name] = (0.0, False)
        node = prod.get(name)
        if node is None or depth > 500:
            return memo[name]
        errs = [upstream(x, depth + 1) for x in node.input if x]
        memo[name] = (max((e for e, _ in errs), default=0.0), any(d for _, d in errs))
        return memo[name]

    for t in tensors:  # graph order: inputs are settled before their consumers
        t.diverged = bool(t.note) or not is_exact(t.rel_l2, t.max_abs, limit=threshold)
        ins = [upstream(x) for x in inputs_of.get(t.ref, [])]
        t.error_in = max((e for e, _ in ins), default=0.0)
        t.inputs_diverged = any(d for _, d in ins)
        t.added = t.rel_l2 - t.error_in if math.isfinite(t.rel_l2) else math.inf
    first = next((t for t in tensors if t.diverged and not t.inputs_diverged), None)
    return first, sorted((t for t in tensors if t.diverged), key=lambda t: -t.added)[:top]


def compare_layers(ref: onnx.ModelProto, cand: onnx.ModelProto, ds_ref, ds_cand, matching: Matching, cfg: LayerwiseConfig) -> Divergence:
    """Compare every matched tensor (graph inputs excepted) of ``ref`` and ``cand``."""
    pairs = [p for p in matching.pairs if p.how != "input"]
    first_feed = next(iter(ds_ref.batches(cfg.batch_size, cfg.limit)), {})
    samples = len(ds_ref) if not cfg.limit else min(len(ds_ref), cfg.limit)
    batch = max((int(v.shape[0]) for v in first_feed.values() if v.ndim), default=1) or 1
    per_sample = activation_bytes(ref, first_feed, [p.ref for p in pairs]) if pairs else {}
    slices = plan_slices(pairs, per_sample, max(samples, batch), cfg)
    tensors: list[TensorError] = []
    for k, sl in enumerate(slices, 1):
        log.info("layer-wise slice %d/%d: %d tensor(s)", k, len(slices), len(sl))
        tensors.extend(_compare_slice(ref, cand, ds_ref, ds_cand, sl, cfg))
    first, top = attribute(tensors, pairs, ref.graph, cfg.threshold, cfg.top)
    return Divergence(tensors, matching, cfg.threshold, int(getattr(ds_ref, "fed", 0) or samples), ds_ref.source, first, top, len(slices))
