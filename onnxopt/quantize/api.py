"""``onnxopt.quantize``: INT8 quantization that is valid, faster and within an accuracy budget.

``quantize(model, ...)`` pre-processes the model (``preprocess``), calibrates activation
ranges by streaming the calibration data (``collect`` / ``calibrate``), builds each
candidate with ONNX Runtime's quantizer (dynamic; static per-tensor; static per-channel for
``mode="auto"``), repairs invalid graphs per node (``validity``), fits each candidate to
the accuracy budget by excluding the most sensitive nodes (``sensitivity``), times the
candidates against the FP32 model side by side (``speed``) and returns the fastest valid
one within the budget.  It raises ``BudgetError`` (exit 3) when the budget cannot be met,
when nothing is quantizable or when no candidate is faster than FP32 (unless
``allow_slower``); the error's ``details["report"]`` holds the measured table.

Lower-level building blocks (for ``optimize`` and scripts): ``calibrate``,
``prepare_model``, ``quantize_dynamic_candidate``, ``quantize_static_candidate``,
``sensitivity.fit_budget``.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import onnx

from ..core.provenance import write_provenance
from ..core.result import Result
from ..data import check_shapes, dataset_for
from ..errors import BudgetError, ModelError, OnnxoptError, UsageError, VerificationError, blaming
from ..io import model_nbytes, resolve_model
from ..metrics import Budget, Evaluator
from ..runtime import resolve_provider, run_dataset
from ..simplify.fix_shapes import fix_shapes as apply_fix_shapes
from ..stats import model_stats
from ..verify import check_model, compare_outputs, frozen_dims, verify_other_shapes
from .calibrate import DEFAULT_PERCENTILE
from .collect import CalibrationRanges, collect_ranges
from .config import (
    FORMATS,
    INT_TYPES,
    MODES,
    QuantConfig,
    check_choice,
    op_types_for_mode,
    op_types_problem,
)
from .engine import CandidateBuilder, CandidateResult, evaluate_candidate
from .preprocess import Prepared, gemm_to_matmul, map_node_names, node_names, prepare
from .speed import measure_speed, timing_feed

__all__ = [
    "quantize",
    "check_collapse",
    "collapse_message",
    "COLLAPSE_SCORE",
    "EQUALIZE",
    "equalized_candidates",
    "calibrate",
    "prepare_model",
    "quantize_dynamic_candidate",
    "quantize_static_candidate",
    "candidate_configs",
]

log = logging.getLogger(__name__)

# points of the metric lost, without a budget, above which the report carries a warning
UNBUDGETED_WARN_DROP = 1.0
EQUALIZE = ("auto", "always", "off")


def dataset_view(ds):
    """A Dataset handed in by a caller is validated on a view, never mutated."""
    return ds.view() if hasattr(ds, "view") else ds


def as_name_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def calibrate(model, data, *, method: str = "minmax", batch_size: int | None = None, limit: int | None = None, provider: str = "cpu", percentile: float = DEFAULT_PERCENTILE) -> CalibrationRanges:
    """Activation ranges of ``model`` over DATA (path or Dataset), streamed batch by batch."""
    m, _ = resolve_model(model)
    ds = dataset_for(m, data)
    return collect_ranges(m, ds, method=method, batch_size=batch_size, limit=limit, provider=resolve_provider(provider), percentile=percentile)


def prepare_model(model: onnx.ModelProto, dataset=None, *, provider: str = "cpu", use_ort_preprocess: bool = True, shapes=None) -> Prepared:
    """``preprocess.prepare`` with every result verified against ``model`` (checker, ORT,
    outputs within 1e-4 relative L2 on up to 64 samples of ``dataset`` or synthesized
    inputs).  Falls back to the steps without ORT's pre-processing; raises
    ``VerificationError`` when even those change the outputs."""
    ds = dataset_for(model, dataset, shapes) if dataset is not None else dataset_for(model, None, shapes)
    names = [o.name for o in model.graph.output]
    ref = run_dataset(model, ds, provider=provider, limit=64)

    def check(candidate: onnx.ModelProto, label: str) -> str | None:
        try:
            check_model(candidate, provider=provider, error=VerificationError, label=label)
            out = run_dataset(candidate, ds, provider=provider, limit=64, error=VerificationError)
        except OnnxoptError as exc:
            return str(exc)
        comp = compare_outputs(names, ref, out)
        bad = comp.inexact()
        if bad:
            return f"output '{bad[0].name}' moved by {bad[0].rel_l2:.3g} relative L2"
        return None

    prep = prepare(model, use_ort_preprocess=use_ort_preprocess, check=check)
    why = check(prep.model, "pre-processed model")
    if why and prep.counts.get("ort_pre_process"):
        prep = prepare(model, use_ort_preprocess=False)
        prep.notes.append(f"ORT quant_pre_process result dropped: {why}")
        why = check(prep.model, "pre-processed model")
    if why:
        raise VerificationError(f"pre-processing for quantization changed the model: {why}")
    return prep


def _fuse(m: onnx.ModelProto, dataset, *, model_type: str, num_heads: int, hidden_size: int, provider: str, shapes, seed: int) -> tuple[onnx.ModelProto, dict]:
    """The ``transformer-fusion`` pass on ``m`` (it verifies itself against ``m`` and
    returns ``m`` unchanged when the fusion fails or moves the outputs)."""
    from ..core.passes import Context
    from ..core.registry import make_pass

    step = make_pass("transformer-fusion", {"model_type": model_type, "num_heads": num_heads, "hidden_size": hidden_size}, error=UsageError)
    res = step(m, Context(data=dataset, provider=provider, shapes=shapes, seed=seed))
    rep = res.report
    info = {"model_type": model_type, "modified": bool(res.modified), "counts": dict(rep.counts), "notes": list(rep.notes)}
    return (res.model if res.modified else m), info


def _check_exclusions(m: onnx.ModelProto, exclude, path=None) -> None:
    names = set(node_names(m))
    unknown = [n for n in exclude if n not in names]
    if unknown:
        raise UsageError(f"--exclude-nodes: no node named {', '.join(repr(u) for u in unknown)} in the model", path)


def _map_exclusions(m: onnx.ModelProto, prep: Prepared, exclude, dataset, *, provider: str, source: onnx.ModelProto | None = None) -> tuple[Prepared, frozenset, list[str]]:
    """``exclude`` (node names of ``m``) as node names of the pre-processed model.

    A node that ORT's ``quant_pre_process`` fused into another (MatMul + Add -> Gemm,
    Conv + BatchNormalization -> Conv) maps to the fused node; one it removed altogether
    makes ``prepare`` run again without ORT's step, so that the node asked to stay in
    float is kept as it is.  Nodes that onnxopt's own steps fold (constant computations,
    dead nodes) have nothing to quantize: a note says so.  ``source``: the model ``prep``
    was made from when it is not ``m`` (the transformer-fused model)."""
    if not exclude:
        return prep, frozenset(), []
    original = node_names(m)
    found, missing = map_node_names(prep.model, exclude, original)
    notes = []
    if missing and prep.counts.get("ort_pre_process"):
        alt = prepare_model(source if source is not None else m, dataset, provider=provider, use_ort_preprocess=False)
        found2, missing2 = map_node_names(alt.model, exclude, original)
        if len(missing2) < len(missing):
            alt.notes.append(f"ORT quant_pre_process not used: it removes --exclude-nodes {', '.join(sorted(set(missing) - set(missing2)))}")
            prep, found, missing = alt, found2, missing2
    for name in missing:
        notes.append(f"--exclude-nodes {name}: removed by pre-processing (a constant computation or dead node): nothing to quantize there")
    for name, nodes in found.items():
        if nodes != [name]:
            notes.append(f"--exclude-nodes {name}: pre-processing fused it into {', '.join(nodes)}, which stays in float")
    return prep, frozenset(x for v in found.values() for x in v), notes


def candidate_configs(mode: str, *, has_calibration: bool, provider: str = "cpu", format: str = "qdq", method: str = "minmax", per_channel: bool = False, reduce_range: bool = False, weight_type: str = "int8", activation_type: str = "uint8", op_types=None, exclude=(), block_size: int = 32, int4_method: str = "rtn", bias_correction: bool = False) -> tuple[list[QuantConfig], list[str]]:
    """The configurations ``mode`` tries, and notes on what was skipped and why."""
    notes = []
    ops = tuple(op_types) if op_types else None
    if ops:
        why = op_types_problem(ops, mode)
        if why:
            raise UsageError(why)

    def ops_of(m: str) -> tuple[str, ...] | None:
        # auto: each candidate gets the asked op types its mode can quantize
        return None if ops is None else tuple(t for t in ops if t in op_types_for_mode(m))

    common = dict(reduce_range=reduce_range, weight_type=weight_type, exclude=frozenset(exclude))
    if mode == "int4":
        return [QuantConfig(mode="int4", block_size=block_size, int4_method=int4_method, op_types=ops, exclude=frozenset(exclude))], notes
    if mode == "dynamic":
        return [QuantConfig(mode="dynamic", per_channel=per_channel, op_types=ops, **common)], notes
    if mode == "static":
        return [QuantConfig(mode="static", format=format, method=method, per_channel=per_channel, activation_type=activation_type, op_types=ops, bias_correction=bias_correction, **common)], notes
    configs = []
    if provider == "cuda":
        notes.append("dynamic candidate skipped: its integer ops have no CUDA kernels")
    elif ops_of("dynamic") == ():
        notes.append(f"dynamic candidate skipped: dynamic mode quantizes none of --op-types {', '.join(ops)}")
    else:
        configs.append(QuantConfig(mode="dynamic", per_channel=per_channel, op_types=ops_of("dynamic"), **common))
    if not has_calibration:
        notes.append("static candidates skipped: no calibration data (--calibration)")
    elif ops_of("static") == ():
        notes.append(f"static candidates skipped: static mode quantizes none of --op-types {', '.join(ops)}")
    else:
        configs.extend(QuantConfig(mode="static", format=format, method=method, per_channel=pc, activation_type=activation_type, op_types=ops_of("static"), bias_correction=bias_correction, **common) for pc in (False, True))
    return configs, notes


def _build_base(prep: onnx.ModelProto, config: QuantConfig, provider: str) -> tuple[onnx.ModelProto, frozenset]:
    """The model ORT quantizes; in dynamic and int4 mode Gemm nodes become MatMul + Add (their names
    are returned so that ``--op-types Gemm`` still selects them)."""
    if config.mode in ("dynamic", "int4") and "Gemm" in config.op_types_for(provider):
        base = copy.deepcopy(prep)
        return base, frozenset(gemm_to_matmul(base))
    return prep, frozenset()


def quantize_candidate(m: onnx.ModelProto, config: QuantConfig, *, calibration=None, ranges=None, provider: str = "cpu", eval_data=None, max_accuracy_drop=None, metric=None, preprocess: bool = True, search_samples: int = 200, max_evals: int = 40, shared=None, evaluator=None, gate=None) -> CandidateResult:
    """One candidate of ``config``, fitted to the budget when given.  ``shared``
    (``engine.SharedWork``): pre-processing, ranges, search subset and sensitivity ranking
    are taken from it (and put there) instead of measured again; ``evaluator``: an
    ``Evaluator`` of ``m`` on ``eval_data`` the caller already has (its reference outputs
    are not computed again); ``gate``: see ``engine.evaluate_candidate``."""
    from .engine import SharedWork

    m, _ = resolve_model(m)
    provider = resolve_provider(provider)
    ds = eval_data if eval_data is not None else calibration
    ds = dataset_for(m, dataset_view(ds)) if ds is not None else dataset_for(m, None)
    _check_exclusions(m, config.exclude)
    work = shared if shared is not None and not config.exclude else SharedWork()
    prep = work.get("prepared", (preprocess,), lambda: prepare_model(m, ds, provider=provider, use_ort_preprocess=preprocess))
    if config.exclude:
        prep, mapped, more = _map_exclusions(m, prep, config.exclude, ds, provider=provider)
        prep.notes.extend(more)
        config = config.with_(exclude=mapped)
    if config.mode == "static" and ranges is None:
        if calibration is None:
            raise UsageError("static quantization needs calibration data")
        ranges = work.get("ranges", config.method, lambda: collect_ranges(prep.model, dataset_for(prep.model, dataset_view(calibration)), method=config.method, provider=provider).ranges)
    base, converted = _build_base(prep.model, config, provider)
    feed = ds.first_batch(2)
    builder = CandidateBuilder(base, config, ranges=ranges, provider=provider, feed=feed, reference=run_dataset(m, _one(feed), provider=provider), converted_gemms=converted)
    notes = list(prep.notes)
    if converted:
        notes.append(f"dynamic: {len(converted)} Gemm node(s) rewritten as MatMul + Add (ORT has no integer Gemm)")
    evaluator = evaluator if evaluator is not None else Evaluator(m, ds, metric, provider=provider)
    budget = Budget(max_accuracy_drop, metric) if max_accuracy_drop is not None else None
    search = None
    if budget is not None and len(ds) > search_samples:
        search = work.get("search", search_samples, lambda: Evaluator(m, ds, evaluator.metric, provider=provider, limit=search_samples))
    ranking = work.rankings.get(config.mode) if budget is not None else None
    res = evaluate_candidate(builder, evaluator, budget=budget, search_evaluator=search, max_evals=max_evals, reference_bytes=model_nbytes(m), ranking=ranking, gate=gate)
    if ranking:
        notes.append(f"budget search: the sensitivity ranking measured for an earlier {config.mode} candidate reused ({len(ranking)} units)")
    elif res.fit is not None and res.fit.sensitivity:
        work.rankings[config.mode] = res.fit.sensitivity
    res.notes[:0] = notes
    return res


def _one(feed: dict):
    from ..data import Dataset

    ds = Dataset("<feed>", arrays=feed, whole=True)
    return ds


def finish_candidate(res: CandidateResult) -> tuple[onnx.ModelProto, list[str]]:
    if res.model is None:
        raise (BudgetError if res.status in ("nothing to quantize", "cannot win") else VerificationError)(f"{res.label}: {res.status}: {'; '.join(res.notes[-2:])}")
    if res.within_budget is False:
        raise BudgetError(f"{res.label}: accuracy budget not met (best drop {res.drop:.2f} points of {res.fit.metric if res.fit else 'the metric'})")
    notes = list(res.notes)
    notes += [f"{f.node} ({f.op_type}) -> {f.action}: {f.reason[:160]}" for f in res.fallbacks]
    if res.fit is not None:
        notes += [f"{e['node']} ({e['op_type']}) left in float for the budget (gain {e['gain']:.2f} points)" for e in res.fit.excluded]
    return res.model, notes


def quantize_dynamic_candidate(model, *, op_types=None, per_channel: bool = False, reduce_range: bool = False, weight_type: str = "int8", exclude_nodes: Iterable[str] = (), provider: str = "cpu", eval_data=None, max_accuracy_drop: float | None = None, metric: str | None = None, preprocess: bool = True) -> onnx.ModelProto:
    """A verified dynamically quantized model (weights INT8, activations quantized at run
    time): pre-processed, Gemm rewritten to MatMul, repaired per node where ORT's output is
    invalid; with ``max_accuracy_drop`` (and ``eval_data``) fitted to that budget.
    Raises ``BudgetError`` when nothing is quantizable or the budget cannot be met."""
    m, _ = resolve_model(model)
    cfg = QuantConfig(mode="dynamic", per_channel=per_channel, reduce_range=reduce_range, weight_type=weight_type, op_types=tuple(as_name_list(op_types)) or None, exclude=frozenset(as_name_list(exclude_nodes)))
    res = quantize_candidate(m, cfg, eval_data=eval_data, max_accuracy_drop=max_accuracy_drop, metric=metric, provider=provider, preprocess=preprocess)
    return finish_candidate(res)[0]


def quantize_static_candidate(model, calibration, *, format: str = "qdq", method: str = "minmax", per_channel: bool = False, reduce_range: bool = False, weight_type: str = "int8", activation_type: str = "uint8", op_types=None, exclude_nodes: Iterable[str] = (), provider: str = "cpu", ranges: dict | None = None, eval_data=None, max_accuracy_drop: float | None = None, metric: str | None = None, preprocess: bool = True) -> onnx.ModelProto:
    """A verified statically quantized model: ranges streamed from ``calibration`` (path or
    Dataset; or given as ``ranges`` for the pre-processed model), per-channel repaired or
    per-node per-tensor/float where ORT's graph is invalid, fitted to ``max_accuracy_drop``
    on ``eval_data`` (default: the calibration data) when given."""
    m, _ = resolve_model(model)
    cfg = QuantConfig(mode="static", format=format, method=method, per_channel=per_channel, reduce_range=reduce_range, weight_type=weight_type, activation_type=activation_type, op_types=tuple(as_name_list(op_types)) or None, exclude=frozenset(as_name_list(exclude_nodes)))
    cal = dataset_for(m, dataset_view(calibration))
    res = quantize_candidate(m, cfg, calibration=cal, ranges=ranges, eval_data=eval_data, max_accuracy_drop=max_accuracy_drop, metric=metric, provider=provider, preprocess=preprocess)
    return finish_candidate(res)[0]


def _pick(results: list[CandidateResult], min_speedup: float, allow_slower: bool, timing: bool = True) -> CandidateResult | None:
    """The fastest timed candidate; among those not significantly slower than it (its CI
    reaches the best median), the most accurate, then the first tried (stable choice).
    Without timing: the most accurate valid candidate within the budget."""
    order = {id(r): i for i, r in enumerate(results)}
    if not timing:
        ok = [r for r in results if r.model is not None and r.within_budget is not False and r.status != "collapsed"]
        return max(ok, key=lambda r: (round(r.score or 0.0, 6), -order[id(r)])) if ok else None
    timed = [r for r in results if r.speed is not None]
    pool = [r for r in timed if r.speed.ratio >= min_speedup] or (timed if allow_slower else [])
    if not pool:
        return None
    best = max(pool, key=lambda r: r.speed.ratio)
    tied = [r for r in pool if r.speed.high >= best.speed.ratio]
    return max(tied, key=lambda r: (round(r.score or 0.0, 6), -order[id(r)]))


@blaming("model")
def quantize(
    model,
    *,
    mode: str = "auto",
    format: str = "qdq",
    calibration=None,
    method: str = "minmax",
    per_channel: bool = False,
    reduce_range: bool = False,
    weight_type: str = "int8",
    activation_type: str = "uint8",
    op_types=None,
    exclude_nodes=None,
    provider: str = "cpu",
    max_accuracy_drop: float | None = None,
    eval_data=None,
    metric: str | None = None,
    allow_slower: bool = False,
    shapes: dict | None = None,
    batch: int = 32,
    calibration_batch: int | None = None,
    search_samples: int = 200,
    max_evals: int = 40,
    sensitivity: str = "float-one",
    timing_runs: int = 30,
    timing_seconds: float | None = 20.0,
    threads: int | None = None,
    min_speedup: float = 1.0,
    preprocess: bool = True,
    timing: bool = True,
    seed: int = 0,
    model_type: str | None = None,
    num_heads: int = 0,
    hidden_size: int = 0,
    fix_shapes: dict | None = None,
    block_size: int = 32,
    int4_method: str = "rtn",
    allow_collapse: bool = False,
    equalize: str = "auto",
    bias_correction: bool = False,
) -> Result:
    """Quantize ``model`` (path or proto) to INT8 (or weight-only INT4); see the module docstring.

    ``mode``: ``auto`` (dynamic, static per-tensor, static per-channel: the fastest valid
    candidate within the budget), ``dynamic`` or ``static`` (needs ``calibration``).
    ``max_accuracy_drop``: points of ``metric`` (onnxopt.metrics) allowed against the FP32
    model on ``eval_data`` (default: the calibration data).  ``batch``: the timing batch;
    ``threads``: intra-op threads of the timing sessions (None: ORT's default).
    ``timing=False`` (only with ``allow_slower``) skips the speed measurement: the most
    accurate valid candidate is returned, which makes the choice deterministic.
    ``model_type`` (``bert``, ``gpt2``, ... see ``transformer.MODEL_TYPES``): the
    ``transformer-fusion`` pass runs first (``num_heads`` / ``hidden_size`` 0: detected);
    the fused model is what gets quantized, accuracy and speed are still measured against
    the input model.  ``fix_shapes`` ({input: dims}): those inputs are made static first
    (a verified ``fix-shapes`` step); otherwise symbolic dims stay symbolic.
    the input model.  ``mode="int4"``: weight-only INT4 (``MatMulNBits``, blocks of
    ``block_size`` weights, ``int4_method`` rtn | hqq) of every MatMul with a constant weight.
    A static or INT4 result that scores below ``COLLAPSE_SCORE`` against FP32 on the
    calibration data (top-1 agreement, or cosine for outputs that are not class scores) is
    refused with ``BudgetError`` unless ``allow_collapse``.  ``equalize``: ``auto`` adds, for
    each static candidate that loses accuracy (over budget, nodes left in float for it, or
    more than ``UNBUDGETED_WARN_DROP`` points without a budget), the same configuration built
    from the model after the exact ``equalize`` and ``smooth-quant`` passes (row label
    ``... equalized``, with ``bias_correction`` in QDQ format); ``always`` adds it for every
    static candidate; ``off`` never.  ``bias_correction``: static QDQ candidates get the
    expected output shift of their quantized weights removed from the biases.
    """
    t_start = time.perf_counter()
    check_choice("mode", mode, MODES)
    check_choice("format", format, FORMATS)
    check_choice("weight type", weight_type, INT_TYPES)
    check_choice("activation type", activation_type, INT_TYPES)
    check_choice("equalize", equalize, EQUALIZE)
    if batch <= 0 or search_samples <= 0 or max_evals <= 0:
        raise UsageError("batch, search_samples and max_evals must be positive")
    if model_type is not None:
        from .transformer import MODEL_TYPES

        check_choice("model type", model_type, MODEL_TYPES)
        if num_heads < 0 or hidden_size < 0:
            raise UsageError("num_heads and hidden_size must be >= 0 (0: detect)")
    if not timing and not allow_slower:
        raise UsageError("timing=False needs allow_slower=True (speed is what decides otherwise)")
    ops = as_name_list(op_types)
    exclude = as_name_list(exclude_nodes)
    # a model with io.LARGE_MODEL_BYTES of external data is loaded lazily (weights left in
    # their files): every step below reads them from there, the quantizer once (ort_backend)
    m, path = resolve_model(model, lazy=None)
    check_shapes(m, shapes, path)
    provider = resolve_provider(provider)
    m, fixed = apply_fix_shapes(m, fix_shapes, provider=provider, path=path)
    try:
        check_model(m, provider=provider, error=ModelError)
    except ModelError as exc:
        raise ModelError(exc.message, path) from None
    _check_exclusions(m, exclude, path)
    configs, notes = candidate_configs(mode, has_calibration=calibration is not None, provider=provider, format=format, method=method, per_channel=per_channel, reduce_range=reduce_range, weight_type=weight_type, activation_type=activation_type, op_types=ops or None, exclude=exclude, block_size=block_size, int4_method=int4_method, bias_correction=bias_correction)
    if mode == "static" and calibration is None:
        raise UsageError("static quantization needs calibration data: pass --calibration DATA", path)
    if fixed:
        notes.append(f"inputs made static first (--fix-shapes {', '.join(fix_shapes)}; verified)")
    if not configs:
        raise UsageError(f"no candidate to try: {'; '.join(notes)}", path)
    cal = dataset_for(m, dataset_view(calibration)) if calibration is not None else None
    ev = dataset_for(m, dataset_view(eval_data)) if eval_data is not None else None
    budget = Budget(float(max_accuracy_drop), metric) if max_accuracy_drop is not None else None
    if ev is None:
        if cal is not None:
            ev = dataset_for(m, dataset_view(cal))
            notes.append("accuracy measured on the calibration data (no --eval given)")
        elif budget is not None:
            raise UsageError("--max-accuracy-drop needs --eval DATA (or --calibration DATA)", path)
        else:
            ev = dataset_for(m, None, shapes, seed=seed, samples=64)
            notes.append("accuracy measured on synthesized inputs (no --eval / --calibration given)")

    src, fusion = m, None
    if model_type is not None:
        src, fusion = _fuse(m, ev, model_type=model_type, num_heads=num_heads, hidden_size=hidden_size, provider=provider, shapes=shapes, seed=seed)
        notes.extend(f"transformer-fusion: {n}" for n in fusion["notes"])
    prep = prepare_model(src, ev, provider=provider, use_ort_preprocess=preprocess)
    if exclude:
        prep, mapped, more = _map_exclusions(m, prep, exclude, ev, provider=provider, source=src)
        notes.extend(more)
        configs = [c.with_(exclude=mapped) for c in configs]
    evaluator = Evaluator(m, ev, metric, provider=provider)
    search = Evaluator(m, ev, evaluator.metric, provider=provider, limit=search_samples) if budget is not None and len(ev) > search_samples else None
    vfeed = ev.first_batch(2)
    vref = run_dataset(m, _one(vfeed), provider=provider)

    ranges = None
    if any(c.mode == "static" for c in configs):
        ranges = collect_ranges(prep.model, dataset_for(prep.model, dataset_view(cal)), method=method, batch_size=calibration_batch, provider=provider)
        notes.extend(ranges.notes)

    results: list[CandidateResult] = []
    bases: dict[str, tuple[onnx.ModelProto, frozenset]] = {}
    alt_cache: dict = {}

    def alt_ranges() -> dict:
        """Per-tensor chosen ranges (method auto) for the budget search's "range" remedy,
        measured once, on first use."""
        if "r" not in alt_cache:
            alt_cache["r"] = collect_ranges(prep.model, dataset_for(prep.model, dataset_view(cal)), method="auto", batch_size=calibration_batch, provider=provider).ranges
        return alt_cache["r"]

    for cfg in configs:
        key = cfg.mode
        if key not in bases:
            bases[key] = _build_base(prep.model, cfg, provider)
            if bases[key][1]:
                notes.append(f"dynamic: {len(bases[key][1])} Gemm node(s) rewritten as MatMul + Add (ORT has no integer Gemm)")
        base, converted = bases[key]
        builder = CandidateBuilder(base, cfg, ranges=ranges.ranges if ranges else None, provider=provider, feed=vfeed, reference=vref, converted_gemms=converted, calibration=cal, alt_ranges=alt_ranges if cfg.mode == "static" and method != "auto" else None)
        log.info("candidate %s ...", cfg.label)
        res = evaluate_candidate(builder, evaluator, budget=budget, search_evaluator=search, max_evals=max_evals, how=sensitivity, reference_bytes=model_nbytes(m))
        results.append(res)
    if equalize != "off" and cal is not None:
        run = _Shared(m, evaluator, budget, search, vfeed, vref, provider, max_evals, sensitivity)
        results += equalized_candidates(prep.model, cal, results, run, always=equalize == "always", method=method, calibration_batch=calibration_batch, notes=notes)
    collapse = check_collapse(results, m, cal if cal is not None else ev, provider=provider, allow_collapse=allow_collapse, notes=notes, metric=evaluator.metric)

    feed = timing_feed(ev, batch)
    timed = {r.label: r.model for r in results if r.model is not None and r.within_budget is not False and r.status != "collapsed"}
    speeds = measure_speed(m, timed, feed, provider=provider, runs=timing_runs, duration=timing_seconds, threads=threads) if timing else {}
    for r in results:
        r.speed = speeds.get(r.label)
        if r.speed is not None and r.speed.ratio < min_speedup and r.status == "ok":
            r.status = "slower"

    report = {
        "command": "quantize",
        "input": str(path) if path else None,
        "mode": mode,
        "provider": provider,
        "preprocess": {"counts": prep.counts, "notes": prep.notes},
        "transformer_fusion": fusion,
        "calibration": ranges.summary() if ranges else None,
        "metric": {"name": evaluator.metric, "reference": evaluator.reference_score, "data": ev.source, "samples": len(ev), "search_samples": search_samples if search is not None else None},
        "budget": {"max_drop": budget.max_drop} if budget else None,
        "timing": {"batch": int(next(iter(feed.values())).shape[0]) if feed else None, "runs": timing_runs if timing else 0, "threads": threads, "min_speedup": min_speedup},
        "candidates": [r.to_dict() for r in results],
        "collapse_check": collapse,
        "notes": notes,
        "before": model_stats(m),
    }

    chosen = _pick(results, min_speedup, allow_slower, timing)
    if chosen is None and allow_slower and mode != "int4" and results and all(r.status == "nothing to quantize" for r in results):
        out = copy.deepcopy(m)
        report["chosen"] = None
        report["notes"].append("nothing to quantize: the input model is returned unchanged (--allow-slower)")
        report["after"] = model_stats(out)
        report["seconds"] = round(time.perf_counter() - t_start, 2)
        write_provenance(out, "quantize", [{"name": "quantize", "quantized_nodes": 0}], {"mode": mode, "chosen": None})
        return Result(out, report, True)
    if chosen is None:
        report["seconds"] = round(time.perf_counter() - t_start, 2)
        from ..diagnose.hints import diagnose_hint

        static = calibration is not None and mode != "dynamic"
        hint = diagnose_hint(path, recipe="cpu-int8-static" if static else "cpu-int8", data=calibration if static else eval_data)
        raise _failure(results, budget, allow_slower, report, path, m, hint)
    if chosen.model is None:  # pragma: no cover - _pick only returns timed (built) candidates
        raise VerificationError("internal: chosen candidate has no model")
    out = chosen.model
    frozen = frozen_dims(m, out)
    if frozen:  # dynamic axes stay dynamic unless --fix-shapes asked otherwise
        raise VerificationError(f"{chosen.label}: {frozen}", path)
    # synthesized inputs: the chosen model also runs, with the same output shapes, at the
    # further shapes discovery found (every symbolic axis at two values)
    others = verify_other_shapes(m, out, ev, exact=False, label=chosen.label, provider=provider, seed=seed)
    if others:
        report["other_shapes"] = others
    report["chosen"] = chosen.label
    if budget is None and chosen.drop is not None and chosen.drop > UNBUDGETED_WARN_DROP:
        # ORT's quantizer can collapse a model (a sigmoid map or a wide softmax quantized in
        # steps of 1/255); without a budget nothing refuses it, so say it loudly
        report["notes"].append(f"warning: {chosen.label} loses {chosen.drop:.2f} points of {evaluator.metric} on {ev.source} and no --max-accuracy-drop was given: check it, or pass a budget to leave the sensitive nodes in float")
    from ..diagnose.api import sensitive_nodes

    report["sensitive_nodes"] = sensitive_nodes(m, out, ev, fit=chosen.fit, provider=provider, metric=evaluator.metric)
    report["after"] = model_stats(out)
    report["seconds"] = round(time.perf_counter() - t_start, 2)
    step = {
        "name": "quantize",
        "config": chosen.config.to_dict(),
        "quantized_nodes": len(chosen.quantized),
        "excluded": [e["node"] for e in chosen.fit.excluded] if chosen.fit else [],
        # reasons stay in the report: ORT's messages may hold temporary paths
        "fallbacks": [{"node": f.node, "op_type": f.op_type, "action": f.action} for f in chosen.fallbacks],
        "metric": {"name": evaluator.metric, "reference": evaluator.reference_score, "score": chosen.score, "drop": chosen.drop},
        "preprocess": prep.counts,
    }
    if fusion is not None:
        step["transformer_fusion"] = {"model_type": model_type, "fused_ops": fusion["counts"].get("fused_ops", 0)}
    write_provenance(out, "quantize", [step], {"mode": mode, "chosen": chosen.label})
    return Result(out, report, True)


def _failure(results: list[CandidateResult], budget, allow_slower: bool, report: dict, path, m: onnx.ModelProto, hint: str = "") -> OnnxoptError:
    built = [r for r in results if r.model is not None]
    if not built:
        if results and all(r.status == "nothing to quantize" for r in results):
            if all(r.config.mode == "int4" for r in results):
                return BudgetError("nothing to quantize: no MatMul (or Gemm) with a constant 2-D weight for MatMulNBits", path, report=report)
            return BudgetError("nothing to quantize: no node of a quantizable op type (see --op-types) was quantized", path, report=report)
        why = "; ".join(f"{r.label}: {r.notes[-1] if r.notes else r.status}" for r in results) or "no candidate"
        return VerificationError(f"no valid quantized model: {why}", path, report=report)
    collapsed = [r for r in built if r.status == "collapsed"]
    built = [r for r in built if r.status != "collapsed"]
    if collapsed and not built:
        return BudgetError(collapse_message(collapsed, report.get("collapse_check") or {}, hint), path, report=report)
    in_budget = [r for r in built if r.within_budget is not False]
    if not in_budget:
        best = max(built, key=lambda r: r.score if r.score is not None else float("-inf"))
        floated = f", {len(best.fit.excluded)} of {best.quantizable} node(s) left in float" if best.fit is not None and best.fit.excluded else ""
        return BudgetError(
            f"accuracy budget of {budget.max_drop:g} points not met: best {best.label} drops {best.drop:.2f} points of {report['metric']['name']} ({best.score:.2f} vs {report['metric']['reference']:.2f}{floated}){hint}",
            path,
            report=report,
        )
    best = max((r for r in in_budget if r.speed), key=lambda r: r.speed.ratio, default=None)
    fig = f"; best {best.label} at {best.speed.ratio:.2f}x" if best else ""
    from ..diagnose.hints import int8_speed_note

    why = next((n for n in (int8_speed_note(r.model) for r in in_budget) if n), "")
    fig += f"; {why}" if why else ""
    return BudgetError(f"no INT8 candidate is faster than FP32 at batch {report['timing']['batch']}{fig} (pass --allow-slower to write it anyway)", path, report=report)


# the score (points, 0-100) against FP32 on the calibration data below which a static or
# INT4 result has collapsed (the 0.5: top-1 agreement, or cosine)
COLLAPSE_SCORE = 50.0
COLLAPSE_SAMPLES = 256  # calibration samples the check runs on


def check_collapse(results: list[CandidateResult], m: onnx.ModelProto, data, *, provider: str, allow_collapse: bool, notes: list[str], metric: str | None = None) -> dict | None:
    """Score each built static / INT4 candidate against FP32 on ``data`` (the calibration
    data) with top-1 agreement (cosine for outputs that are not class scores, or when the
    run's ``metric`` is ``cosine`` / ``rel-l2``); below
    ``COLLAPSE_SCORE`` its status becomes ``collapsed`` (never timed nor chosen) unless
    ``allow_collapse``, which keeps it with a warning note.  Returns the check's record
    (None when no candidate needed it)."""
    from ..metrics import is_class_scores

    todo = [r for r in results if r.model is not None and r.config.mode in ("static", "int4")]
    if not todo:
        return None
    ev = Evaluator(m, dataset_for(m, dataset_view(data)), "cosine" if metric in ("cosine", "rel-l2") else "agreement", provider=provider, limit=COLLAPSE_SAMPLES)
    kinds = {is_class_scores(o) and ev.metric == "agreement" for o in ev.ref_outputs}
    name = "top-1 agreement" if kinds == {True} else "cosine" if kinds == {False} else "top-1 agreement / cosine"
    record = {"metric": name, "threshold": COLLAPSE_SCORE / 100, "data": ev.dataset.source, "scores": {}}
    for r in todo:
        s = ev.score(r.model) / 100
        record["scores"][r.label] = round(s, 4)
        if s >= COLLAPSE_SCORE / 100:
            continue
        if allow_collapse:
            notes.append(f"warning: {r.label} has collapsed ({name} {s:.2f} against FP32 on {ev.dataset.source}, below {COLLAPSE_SCORE / 100:g}); kept because of --allow-collapse")
        else:
            r.status = "collapsed"
            r.notes.append(f"collapsed: {name} {s:.2f} against FP32 on the calibration data (< {COLLAPSE_SCORE / 100:g})")
    return record


def collapse_message(collapsed: list[CandidateResult], record: dict, hint: str = "") -> str:
    """The refusal of collapsed candidates: each one's score named, then ``hint`` (the
    ``onnxopt diagnose`` command, ``diagnose.hints.diagnose_hint``)."""
    name = record.get("metric", "score")
    scores = record.get("scores", {})
    each = ", ".join(f"{r.label} {scores.get(r.label, float('nan')):.2f}" for r in collapsed)
    return (
        f"quantized model collapsed: {name} against FP32 on the calibration data {each} (below {COLLAPSE_SCORE / 100:g}); "
        f"refused (pass --allow-collapse to write it anyway){hint}"
    )


@dataclass
class _Shared:
    """What every candidate of one ``quantize`` call is judged with."""

    m: onnx.ModelProto
    evaluator: Evaluator
    budget: Budget | None
    search: Evaluator | None
    vfeed: dict
    vref: list
    provider: str
    max_evals: int
    how: str


def _loses_accuracy(r: CandidateResult, budget) -> bool:
    if r.config.mode != "static" or r.config.equalized:
        return False
    if r.model is None:
        return r.status == "invalid"
    if budget is not None:
        return r.within_budget is False or bool(r.fit and r.fit.excluded)
    return r.drop is not None and r.drop > UNBUDGETED_WARN_DROP


def equalized_candidates(src: onnx.ModelProto, cal, results: list[CandidateResult], run: _Shared, *, always: bool, method: str, calibration_batch, notes: list[str]) -> list[CandidateResult]:
    """The static candidates of ``results`` that lose accuracy (all of them with ``always``)
    built again from ``src`` (the pre-processed model: weights as initializers, BN folded)
    after the ``equalize`` and ``smooth-quant`` passes (each verified exact by the pipeline
    on the calibration data); [] when none needs it or nothing changed."""
    from ..core.passes import Context
    from ..core.pipeline import run_pipeline
    from ..core.registry import make_pass

    want = [r for r in results if r.config.mode == "static" and not r.config.equalized and (always or _loses_accuracy(r, run.budget))]
    if not want:
        return []
    try:
        eq = run_pipeline(src, [make_pass("equalize"), make_pass("smooth-quant")], Context(data=dataset_for(src, dataset_view(cal)), provider=run.provider), command="equalize")
    except OnnxoptError as exc:
        notes.append(f"equalization not used: {exc}")
        return []
    counts = {s.name: dict(s.counts) for s in eq.steps}
    if not eq.report["modified"]:
        notes.append(f"equalization: nothing to equalize ({'; '.join(n for s in eq.steps for n in s.notes[:2])})")
        return []
    notes.append(f"equalization before static quantization: {counts['equalize'].get('pairs', 0)} layer pair(s) equalized ({counts['equalize'].get('bias_absorbed', 0)} with bias absorbed), {counts['smooth-quant'].get('smoothed', 0)} SmoothQuant site(s)")
    base = eq.model
    ranges = collect_ranges(base, dataset_for(base, dataset_view(cal)), method=method, batch_size=calibration_batch, provider=run.provider)
    out = []
    for r in want:
        cfg = r.config.with_(equalized=True, bias_correction=r.config.format == "qdq")
        builder = CandidateBuilder(base, cfg, ranges=ranges.ranges, provider=run.provider, feed=run.vfeed, reference=run.vref, calibration=cal)
        log.info("candidate %s ...", cfg.label)
        res = evaluate_candidate(builder, run.evaluator, budget=run.budget, search_evaluator=run.search, max_evals=run.max_evals, how=run.how, reference_bytes=model_nbytes(run.m))
        res.notes[:0] = [n for s in eq.steps for n in s.notes[:4]]
        out.append(res)
    return out
