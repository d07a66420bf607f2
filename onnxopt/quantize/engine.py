"""Building one quantized candidate: quantizable nodes, ORT builds, validity repair, budget.

``CandidateBuilder(base, config, ...)`` is callable as ``builder(excluded) -> ModelProto``:
ORT's quantizer run with those nodes left in float, repaired by ``validity.build_valid``
until valid, cached per exclusion set.  ``evaluate_candidate`` adds the accuracy figures
(and the budget search when a budget is given).  Both are what ``api.quantize`` runs for
each candidate of ``auto`` and what ``optimize`` may call directly.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import onnx

from ..errors import OnnxoptError
from ..io import exceeds_protobuf, is_lazy, load_model, model_nbytes, save_model, weights_on_disk
from ..metrics import Budget, Evaluator
from .config import WEIGHTED_OP_TYPES, QuantConfig
from .ort_backend import quantize_with_ort, touched_nodes
from .preprocess import WEIGHT_INPUTS
from .sensitivity import BudgetFit, SearchStopped, apply_remedies, fit_budget, score_model
from .speed import SpeedRow
from .validity import Fallback, build_valid, validate_candidate

__all__ = ["CandidateBuilder", "CandidateResult", "SharedWork", "evaluate_candidate", "CACHED_MODELS", "CANNOT_WIN"]

# quantized models a CandidateBuilder keeps (the last built or asked for).  Measured on a
# 65 MB encoder's budget searches (62 builds): no build was asked for again once another
# had been made, and keeping older ones on disk cost 4.6 s of writing for nothing
CACHED_MODELS = 1
# a base model with this many bytes of weights is kept on disk while its candidates are built
LAZY_BASE_BYTES = 16 * 2**20

log = logging.getLogger(__name__)

CANNOT_WIN = "cannot win"  # the status of a candidate the speed gate stopped (optimize reads it in the message)


@dataclass
class CandidateResult:
    """One row of the candidates table."""

    config: QuantConfig
    status: str = "pending"
    model: onnx.ModelProto | None = None
    quantizable: int = 0
    quantized: list[str] = field(default_factory=list)
    fallbacks: list[Fallback] = field(default_factory=list)
    fit: BudgetFit | None = None
    score: float | None = None
    drop: float | None = None
    rel_l2: float | None = None
    within_budget: bool | None = None
    speed: SpeedRow | None = None
    size_bytes: int | None = None
    size_ratio: float | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.config.label

    def to_dict(self) -> dict:
        d = {
            "label": self.label,
            "config": self.config.to_dict(),
            "status": self.status,
            "quantizable_nodes": self.quantizable,
            "quantized_nodes": len(self.quantized),
            "fallbacks": [f.to_dict() for f in self.fallbacks],
            "score": self.score,
            "drop": self.drop,
            "rel_l2": self.rel_l2,
            "within_budget": self.within_budget,
            "size_bytes": self.size_bytes,
            "size_ratio": self.size_ratio,
            "notes": list(self.notes),
        }
        if self.fit is not None:
            d.update(budget_search=self.fit.to_dict(), excluded=self.fit.excluded, remedied=self.fit.remedied)
        d.update(seconds=round(self.seconds, 3), speed=self.speed.to_dict() if self.speed else None)
        return d


@dataclass
class SharedWork:
    """What the candidates of one model share within a run (``optimize`` builds several):
    the pre-processed model, the calibration ranges per method, the search evaluator and
    the static sensitivity ranking, each computed once, on first use.  Keyed by the
    model object: a run holds one ``SharedWork`` per input model."""

    prepared: dict = field(default_factory=dict)  # (preprocess,) -> Prepared
    ranges: dict = field(default_factory=dict)  # method -> {tensor: (lo, hi)}
    search: dict = field(default_factory=dict)  # samples -> Evaluator on the first samples
    rankings: dict = field(default_factory=dict)  # mode -> [NodeEffect] (most sensitive first)
    reused: list[str] = field(default_factory=list)  # what was taken from here, for the notes
    parked: dict = field(default_factory=dict)  # prepared key -> the folder its model waits in (``park``)
    folder: str | None = field(default=None, repr=False)  # where parked models wait (removed with this object)

    def get(self, table: str, key, make):
        """``self.<table>[key]``, made by ``make()`` the first time (a parked prepared model
        is read back)."""
        store = getattr(self, table)
        if key in store:
            self.reused.append(f"{table}:{key}")
            if table == "prepared" and key in self.parked:
                folder = self.parked.pop(key)
                store[key].model = load_model(Path(folder) / "prepared.onnx")
                shutil.rmtree(folder, ignore_errors=True)
        else:
            store[key] = make()
        return store[key]

    def park(self, key) -> None:
        """Write the prepared model at ``key`` to a temporary file and let go of it until the
        next ``get``: a dynamic candidate quantizes its own copy (Gemm rewritten as MatMul),
        and the static candidates after it need the prepared model again."""
        prep = self.prepared.get(key)
        if prep is None or prep.model is None or key in self.parked or exceeds_protobuf(prep.model, margin=2**24):
            return
        if self.folder is None:
            self.folder = tempfile.mkdtemp(prefix="onnxopt-shared-")
            weakref.finalize(self, shutil.rmtree, self.folder, True)
        # with external data: ``io.save_model`` writes the weights from the proto, where
        # serializing it whole would hold a second copy of them (the peak of ``optimize``
        # on a 68 MB encoder)
        folder = tempfile.mkdtemp(prefix="prepared-", dir=self.folder)
        save_model(prep.model, Path(folder) / "prepared.onnx", external_data=True)
        self.parked[key], prep.model = folder, None


class CandidateBuilder:
    """``builder(excluded)``: a valid quantized model of ``base`` under ``config``.

    ``base`` is the prepared model (for dynamic mode, after ``gemm_to_matmul``); ``ranges``
    are the calibration ranges (static mode); ``feed`` / ``reference`` are a small input and
    the FP32 outputs on it for the run-time validity check.
    """

    def __init__(
        self,
        base: onnx.ModelProto,
        config: QuantConfig,
        *,
        ranges=None,
        provider: str = "cpu",
        feed=None,
        reference=None,
        converted_gemms: frozenset = frozenset(),
        calibration=None,
        alt_ranges=None,
    ):
        self._base_folder = None
        if not is_lazy(base) and model_nbytes(base) >= LAZY_BASE_BYTES:
            # the weights wait in a file: ORT's quantizer reads them from there (``ort_lazy``)
            # and writes its result to a file too, so that the run holds no in-memory copy of
            # the weights per build (the peak of ``optimize`` on a 68 MB encoder)
            base, self._base_folder = weights_on_disk(base, "onnxopt-base-")
        self.base = base
        self.calibration = calibration  # Dataset: per-channel input means for bias correction
        self._means: dict | None = None
        self._hessians: dict | None = None  # GPTQ's input statistics, per layer
        self._rounded_ints: dict = {}  # GPTQ's integers per layer and grid (rounding.round_weights' cache)
        self.alt_ranges = alt_ranges  # callable -> {tensor: (lo, hi)}: the "range" remedy's ranges
        self._alt: dict | None = None
        self.config = config
        self.ranges = ranges
        self.provider = provider
        self.feed = feed
        self.reference = reference
        types = set(config.op_types_for(provider))

        def wanted(n: onnx.NodeProto) -> bool:
            # a Gemm rewritten as MatMul (dynamic mode) is quantized when Gemm is asked for
            return ("Gemm" in types) if n.name in converted_gemms else n.op_type in types

        self.op_types = {n.name: n.op_type for n in base.graph.node}
        # reports name the input's op type: a Gemm rewritten as MatMul is still a Gemm there
        self.op_types.update({n: "Gemm" for n in converted_gemms if n in self.op_types})
        self.candidates = [n.name for n in base.graph.node if wanted(n) and n.name not in config.exclude]
        if config.mode == "int4":  # only a MatMul with a constant 2-D weight becomes MatMulNBits
            from .int4 import nbits_weight_nodes

            nbits = set(nbits_weight_nodes(base))
            self.candidates = [c for c in self.candidates if c in nbits]
        self.ort_op_types = sorted(types | ({"MatMul"} if converted_gemms and "Gemm" in types else set()))
        self.implicit_exclude = frozenset(n.name for n in base.graph.node if n.op_type in self.ort_op_types and not wanted(n))
        self._inits = inits = {t.name for t in base.graph.initializer}
        self._by_name = {n.name: n for n in base.graph.node}  # the remedies' lookups
        wanted_names = set(self.candidates)
        self.node_tensors = {
            n.name: {x for i, x in enumerate(n.input) if x in inits and i in WEIGHT_INPUTS.get(n.op_type, (1,))}
            for n in base.graph.node
            if n.name in wanted_names
        }
        self.notes: list[str] = []
        # the last CACHED_MODELS builds (least recently used dropped): a budget search on a
        # large model must not hold every model it tried
        self._cache: OrderedDict = OrderedDict()  # key -> (model, fallbacks)
        self._kept: tuple | None = None  # (model, the session its validity check loaded): ``take_session``

    def raw(self, exclude: frozenset, per_tensor: frozenset, only: frozenset | None, remedies: dict | None = None) -> onnx.ModelProto:
        remedies = remedies or {}
        ranges = self.ranges
        ranged = [n for n, r in remedies.items() if r == "range"]
        if ranged:
            alt = self._alt_ranges()
            ranges = {**ranges, **{t: alt[t] for n in ranged for t in self._activations(n) if t in alt}}
        model = quantize_with_ort(
            self.base,
            self.config,
            ranges=ranges,
            provider=self.provider,
            nodes_to_quantize=set(only) if only else None,
            exclude=exclude | self.implicit_exclude,
            per_tensor=per_tensor,
            op_types=self.ort_op_types,
            notes=self.notes,
            per_channel_nodes=frozenset(n for n, r in remedies.items() if r == "per-channel"),
        )
        floated = [n for n, r in remedies.items() if r == "float-output"]
        if floated:
            from .emulate import keep_outputs_float

            keep_outputs_float(model, floated)
        return model

    def _activations(self, node: str) -> list[str]:
        n = self._by_name.get(node)
        return [] if n is None else [t for t in list(n.input) + list(n.output) if t and t not in self._inits]

    def _alt_ranges(self) -> dict:
        if self._alt is None:
            self._alt = dict(self.alt_ranges()) if self.alt_ranges is not None else {}
        return self._alt

    def remedy_options(self, node: str) -> list[str]:
        """What the budget search may try for ``node`` before leaving it in float: its weight
        per-channel (a per-tensor static QDQ model), its activations' per-tensor chosen
        ranges (``--method auto``) where they differ from the model's; in QDQ format, a
        MatMul / Gemm keeps INT8 compute with its output left float (``float-output``: a
        range a few outlier channels stretch, as a transformer's residual stream; the
        MiniLM encoder's layer-0 FFN output).  Not for Conv: on PP-OCRv4 rec it was tried
        for every Conv left in float, never kept, and cost 12 s of ``optimize``."""
        if self.config.mode != "static":
            return []
        out = []
        if self.config.format == "qdq" and not self.config.per_channel and self.op_types.get(node) in WEIGHTED_OP_TYPES and self.node_tensors.get(node):
            out.append("per-channel")
        if self.alt_ranges is not None and self.ranges:
            alt = self._alt_ranges()
            for t in self._activations(node):
                a, b = alt.get(t), self.ranges.get(t)
                if a and b and (abs(a[0] - b[0]) + abs(a[1] - b[1])) > 0.01 * max(b[1] - b[0], 1e-12):
                    out.append("range")
                    break
        if self.config.format == "qdq" and self.op_types.get(node) in ("MatMul", "Gemm") and not self._folds_activation(node):
            out.append("float-output")
        return out

    def _folds_activation(self, node: str) -> bool:
        """True when ``node``'s output feeds a Relu or Clip in the base model: ONNX Runtime's
        quantizer folds those into the output's Q/DQ range, so that pair cannot be dropped."""
        n = self._by_name.get(node)
        outs = set(n.output) if n is not None else set()
        return n is None or any(c.op_type in ("Relu", "Clip") and outs & set(c.input) for c in self.base.graph.node)

    def build(self, excluded: frozenset = frozenset(), remedies: dict | None = None) -> tuple[onnx.ModelProto, list[Fallback]]:
        rem = tuple(sorted((remedies or {}).items()))
        key = (frozenset(excluded), rem) if rem else frozenset(excluded)
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            self._kept = None  # an unscored build's session must not live beside the next build
            can_per_tensor = self.config.mode == "static" and self.config.format == "qdq"
            raw = self.raw if not rem else (lambda ex, pt, only: self.raw(ex, pt, only, dict(rem)))
            self._cache[key] = build_valid(
                raw,
                [c for c in self.candidates if c not in excluded],
                validate=partial(validate_candidate, provider=self.provider, feed=self.feed, reference=self.reference, keep=self._keep),
                node_tensors=self.node_tensors,
                op_types=self.op_types,
                per_channel=self.config.per_channel,
                can_per_tensor=can_per_tensor,
                exclude=frozenset(excluded),
                label=self.config.label,
            )
            model, fallbacks = self._cache[key]
            adjusted = self.config.bias_correction or self.config.weight_rounding != "nearest"
            self._cache[key] = (self._corrected(model) if adjusted else model, fallbacks)
            if self._kept is not None and self._kept[0] is not self._cache[key][0]:
                self._kept = None  # the session of a trial build, or of the model before bias correction
        while len(self._cache) > CACHED_MODELS:
            self._cache.popitem(last=False)
        return self._cache[key]

    def emulator(self):
        """``excluded -> model`` for the budget search's ranking and bisection: the fully
        quantized build with ``excluded`` left in float by graph surgery (``emulate``: the
        model ONNX Runtime's quantizer writes with them excluded) instead of one quantizer
        run each (1.5-1.7 s on a 10 MB recognizer, 0.9 s on a 65 MB encoder); static models
        through ``leave_in_float``, dynamic and INT4 ones through ``restore_float``."""
        from .emulate import FloatReference, activation_params, leave_in_float, restore_float

        ops, held = set(self.ort_op_types), {}
        static = self.config.mode == "static"
        qparams = activation_params(self.ranges or {}, self.config.activation_type) if static and self.config.format == "qdq" else None

        def emulated(excluded: frozenset) -> onnx.ModelProto:
            if not held:
                held.update(ref=FloatReference(self.base))
                # the weights in a file: each emulated copy is a small proto whose session reads
                # them from it (copying and serializing a 65 MB encoder cost 0.3-0.4 s a trial)
                held["full"], held["folder"] = weights_on_disk(self.build(frozenset())[0], "onnxopt-emulate-")
            if static:
                return leave_in_float(held["full"], excluded, held["ref"], ops, qparams)[0]
            return restore_float(held["full"], excluded, held["ref"])

        return emulated

    def _keep(self, model: onnx.ModelProto, session) -> None:
        self._kept = (model, session)

    def take_session(self, model: onnx.ModelProto, provider: str):
        """The session the validity check loaded for ``model`` (the last build), once; None
        when it is another model's or another provider's.  Scoring the build then loads it
        no second time (0.16 s for a 50 MB INT8 encoder, 60 builds in a budget search)."""
        kept, self._kept = self._kept, None
        return kept[1] if kept is not None and kept[0] is model and provider == self.provider else None

    def _corrected(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """``model`` with its weights rounded again (``weight_rounding``) and then its biases
        corrected (``bias_correction``), on a copy."""
        import copy

        from ..data import dataset_for
        from .bias_correction import correct_biases, inputs_to_correct
        from .collect import collect_channel_stats

        if self.calibration is None:
            raise ValueError("weight rounding and bias correction need the calibration Dataset (CandidateBuilder(calibration=...))")
        out = copy.deepcopy(model)
        if self.config.weight_rounding == "gptq":
            self._rounded(out)
        if not self.config.bias_correction:
            return out
        if self._means is None:
            ds = dataset_for(self.base, self.calibration.view())
            stats = collect_channel_stats(self.base, ds, inputs_to_correct(self.base, self.candidates), provider=self.provider, limit=256)
            self._means = {k: v.mean for k, v in stats.items()}
        done, notes = correct_biases(out, self.base, self._means)
        line = f"bias correction: {done} layer(s) corrected" + (f"; {len(notes)} left alone ({notes[0]}{' ...' if len(notes) > 1 else ''})" if notes else "")
        if line not in self.notes:
            self.notes.append(line)
        return out

    def _rounded(self, out: onnx.ModelProto) -> None:
        """GPTQ rounding (``rounding``) of ``out``'s quantized weights, in place; the layers'
        input statistics are measured once, on up to 256 calibration samples."""
        from ..data import dataset_for
        from .rounding import inputs_to_round, layer_hessians, round_weights

        if self._hessians is None:
            layers = inputs_to_round(self.base, self.candidates)
            ds = dataset_for(self.base, self.calibration.view())
            self._hessians = layer_hessians(self.base, ds, layers, provider=self.provider, limit=256) if layers else {}
        done, notes = round_weights(out, self.base, self._hessians, self._rounded_ints)
        line = f"GPTQ weight rounding: {done} layer(s) rounded" + (f"; {len(notes)} left alone ({notes[0]}{' ...' if len(notes) > 1 else ''})" if notes else "")
        if line not in self.notes:
            self.notes.append(line)

    def __call__(self, excluded: frozenset = frozenset()) -> onnx.ModelProto:
        return self.build(excluded)[0]

    def weightless(self, nodes: list[str]) -> frozenset:
        """The budget search's first group to leave in float (``sensitivity._scoped``): in a
        static model, the ``nodes`` with no weights to quantize (not Conv, MatMul, Gemm, ...,
        nor a Gather of a constant table)."""
        if self.config.mode != "static":
            return frozenset()

        def weighted(n: str) -> bool:
            return self.op_types.get(n) in WEIGHTED_OP_TYPES or (self.op_types.get(n) == "Gather" and bool(self.node_tensors.get(n)))

        return frozenset(n for n in nodes if not weighted(n))

    def search_nodes(self, quantized: list[str]) -> list[str]:
        """The quantized nodes the budget search may leave in float, in graph order.

        Dynamic mode: the nodes with weights (the only ones it quantizes).  Static mode: every
        quantized node, since an activation-only node can be the culprit (a 1000-class
        Softmax output quantized in steps of 1/255 is all zeros)."""
        if self.config.mode == "dynamic":
            return [n for n in quantized if self.op_types.get(n) in WEIGHTED_OP_TYPES] or list(quantized)
        return list(quantized)


def evaluate_candidate(
    builder: CandidateBuilder,
    evaluator: Evaluator,
    *,
    budget: Budget | None = None,
    search_evaluator: Evaluator | None = None,
    max_evals: int = 40,
    how: str = "float-one",
    reference_bytes: int | None = None,
    ranking: list | None = None,
    gate=None,
) -> CandidateResult:
    """Build, validate, score (and fit to ``budget``) one candidate; never raises for a
    candidate-level failure (the row's status says what happened).  ``ranking``: another
    candidate's sensitivity ranking of the same nodes, reused by the budget search.
    ``gate(model) -> reason | None``: asked with the fully quantized model when it misses the
    budget, before the search; a reason stops the candidate there (status ``cannot win``: leaving nodes in
    float only makes it slower, so a caller that already holds a faster model within the
    budget need not search)."""
    res = CandidateResult(builder.config, quantizable=len(builder.candidates))
    t0 = time.perf_counter()
    if not builder.candidates:
        return _stopped(res, "nothing to quantize", f"no node of the op types {', '.join(builder.config.op_types_for(builder.provider))}", t0)
    try:
        model, fallbacks = builder.build(frozenset())
        res.quantized = touched_nodes(builder.base, model, builder.candidates)
        if not res.quantized:
            return _stopped(res, "nothing to quantize", "ONNX Runtime's quantizer left every node in float", t0)
        if budget is not None:
            full = model
            search = dict(search_evaluator=search_evaluator, max_evals=max_evals, how=how, ranking=ranking, gate=gate and (lambda: gate(full)))
            model, fallbacks = _fit_to_budget(builder, res, budget, evaluator, search)
        else:
            res.score, res.rel_l2 = score_model(evaluator, model)
            res.drop = evaluator.reference_score - res.score
    except OnnxoptError as exc:
        return _stopped(res, "invalid", str(exc), t0)
    except SearchStopped as stop:
        return _stopped(res, CANNOT_WIN, str(stop), t0)
    res.model = model
    res.fallbacks = list(fallbacks)
    res.size_bytes = model_nbytes(model)
    if reference_bytes:
        res.size_ratio = res.size_bytes / reference_bytes
    res.status = "over budget" if res.within_budget is False else "ok"
    res.notes.extend(n for n in builder.notes[:5] if n not in res.notes)
    res.seconds = time.perf_counter() - t0
    return res


def _stopped(res: CandidateResult, status: str, note: str, t0: float) -> CandidateResult:
    """The candidate stops here with ``status`` (no model): the row says why."""
    res.status = status
    res.notes.append(note)
    res.seconds = time.perf_counter() - t0
    return res


def _fit_to_budget(builder: CandidateBuilder, res: CandidateResult, budget: Budget, evaluator: Evaluator, search: dict):
    """The budget search (nodes left in float), then remedies for those nodes; fills ``res``'s
    scores and returns the fitted model and its fallbacks."""
    nodes = builder.search_nodes(res.quantized)
    fit = fit_budget(builder, nodes, budget, evaluator, op_types=builder.op_types, emulate=builder.emulator(), scope=builder.weightless(nodes), **search)
    if fit.excluded:
        fit = apply_remedies(fit, lambda ex, rem: builder.build(ex, rem)[0], builder.remedy_options, budget, evaluator,
                             session_for=lambda m: builder.take_session(m, evaluator.provider), search_evaluator=search.get("search_evaluator"))
    res.fit = fit
    fallbacks = builder.build(frozenset(e["node"] for e in fit.excluded), fit.remedies)[1]
    res.quantized = touched_nodes(builder.base, fit.model, builder.candidates)
    res.score, res.drop, res.within_budget = fit.score, fit.drop, fit.met
    res.rel_l2 = fit.rel_l2 if fit.rel_l2 is not None else score_model(evaluator, fit.model)[1]  # measured by the search's last scoring
    return fit.model, fallbacks
