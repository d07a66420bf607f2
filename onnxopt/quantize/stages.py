"""The stages of one ``quantize`` run, in the order ``passes.QuantizePass`` runs them.

``load_input`` (the public function only: the model resolved, shapes checked, made static
with ``fix_shapes``, checked) -> ``check_inputs`` (the candidate configurations, the
datasets and the budget; every user error before any work) -> ``prepare`` (transformer
fusion, pre-processing, the evaluators) -> ``measure_ranges`` (calibration) ->
``build_candidates`` -> ``add_equalized`` (static candidates that lose accuracy built again
after the exact equalize + smooth-quant passes) -> ``collapse`` (``check_collapse``) ->
``time_candidates`` -> ``choose`` (``pick``; the input unchanged when nothing is
quantizable and slower is allowed; ``failure`` otherwise).  Each stage reads and fills one
``Run``.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from dataclasses import dataclass, field

import onnx

from ..core.passes import Context
from ..core.registry import make_pass
from ..data import check_shapes, dataset_for
from ..errors import BudgetError, ModelError, OnnxoptError, UsageError, VerificationError, blame
from ..io import model_nbytes, resolve_model
from ..metrics import Budget, Evaluator, is_class_scores
from ..runtime import resolve_provider
from ..simplify.fix_shapes import fix_shapes as apply_fix_shapes
from ..stats import model_stats
from ..verify import check_model, frozen_dims, verify_other_shapes
from .api import (
    as_name_list,
    build_base,
    candidate_configs,
    check_exclusions,
    dataset_view,
    map_exclusions,
    prepare_model,
    validity_feed,
)
from .collect import CalibrationRanges, collect_ranges
from .config import QuantConfig, QuantizeConfig
from .engine import CandidateBuilder, CandidateResult, SharedWork, evaluate_candidate
from .preprocess import Prepared
from .sensitivity import search_limit
from .speed import measure_speed, timing_feed

__all__ = [
    "COLLAPSE_SCORE", "Inputs", "Run", "UNBUDGETED_WARN_DROP", "add_equalized", "build_candidates", "check_collapse", "check_inputs", "choose",
    "collapse", "collapse_message", "equalized_candidates", "failure", "load_input", "measure_ranges", "pick", "prepare", "time_candidates",
]

log = logging.getLogger(__name__)

# points of the metric lost, without a budget, above which the report carries a warning
UNBUDGETED_WARN_DROP = 1.0
# the score (points, 0-100) against FP32 on the calibration data below which a static or
# INT4 result has collapsed (the 0.5: top-1 agreement, or cosine)
COLLAPSE_SCORE = 50.0
COLLAPSE_SAMPLES = 256  # calibration samples the check runs on


def load_input(model, cfg: QuantizeConfig) -> tuple[onnx.ModelProto, str | None, str, bool]:
    """(model, its path, the resolved provider, whether ``fix_shapes`` made inputs static).
    A model with ``io.LARGE_MODEL_BYTES`` of external data is loaded lazily (weights left
    in their files): every stage reads them from there, the quantizer once (ort_backend)."""
    m, path = resolve_model(model, lazy=None)
    check_shapes(m, cfg.shapes, path)
    provider = resolve_provider(cfg.provider)
    m, fixed = apply_fix_shapes(m, cfg.fix_shapes, provider=provider, path=path)
    with blame(path):
        check_model(m, provider=provider, error=ModelError)
    return m, (str(path) if path is not None else None), provider, bool(fixed)


@dataclass
class Inputs:
    """What a run works on, checked: the candidate configurations, the datasets (``ev``:
    where accuracy is measured), the budget and the notes so far."""

    configs: list[QuantConfig]
    notes: list[str]
    cal: object
    ev: object
    budget: Budget | None
    exclude: list[str]
    path: str | None = None


def check_inputs(m: onnx.ModelProto, cfg: QuantizeConfig, provider: str, path: str | None = None, fixed: bool = False) -> Inputs:
    """The candidate configurations and the datasets; every user error (``UsageError``,
    ``DataError``, exit 2) is raised here, before any model is built."""
    exclude = as_name_list(cfg.exclude_nodes)
    check_exclusions(m, exclude, path)
    configs, notes = candidate_configs(
        cfg.mode, has_calibration=cfg.calibration is not None, provider=provider, format=cfg.format, method=cfg.method,
        per_channel=cfg.per_channel, reduce_range=cfg.reduce_range, weight_type=cfg.weight_type,
        activation_type=cfg.activation_type, op_types=as_name_list(cfg.op_types) or None, exclude=exclude,
        block_size=cfg.block_size, int4_method=cfg.int4_method, bias_correction=cfg.bias_correction,
        weight_rounding=cfg.weight_rounding,
    )  # fmt: skip
    if cfg.mode == "static" and cfg.calibration is None:
        raise UsageError("static quantization needs calibration data: pass --calibration DATA", path)
    if fixed:
        notes.append(f"inputs made static first (--fix-shapes {', '.join(cfg.fix_shapes)}; verified)")
    if not configs:
        raise UsageError(f"no candidate to try: {'; '.join(notes)}", path)
    cal = dataset_for(m, dataset_view(cfg.calibration)) if cfg.calibration is not None else None
    ev = dataset_for(m, dataset_view(cfg.eval_data)) if cfg.eval_data is not None else None
    budget = Budget(float(cfg.max_accuracy_drop), cfg.metric) if cfg.max_accuracy_drop is not None else None
    if ev is None:
        if cal is not None:
            ev = dataset_for(m, cal.view())
            notes.append("accuracy measured on the calibration data (no --eval given)")
        elif budget is not None:
            raise UsageError("--max-accuracy-drop needs --eval DATA (or --calibration DATA)", path)
        else:
            ev = dataset_for(m, None, cfg.shapes, seed=cfg.seed, samples=64)
            notes.append("accuracy measured on synthesized inputs (no --eval / --calibration given)")
    return Inputs(configs, notes, cal, ev, budget, exclude, path)


@dataclass
class Run:
    """One quantize run: its options, the input model (the FP32 reference), what the
    stages measured so far, and ``report`` (filled by ``choose`` or ``failure``)."""

    cfg: QuantizeConfig
    m: onnx.ModelProto
    inputs: Inputs
    provider: str
    t_start: float = field(default_factory=time.perf_counter)
    configs: list[QuantConfig] = field(default_factory=list)
    fusion: dict | None = None
    prep: Prepared | None = None
    evaluator: Evaluator | None = None
    search: Evaluator | None = None
    vfeed: dict = field(default_factory=dict)
    vref: list = field(default_factory=list)
    ranges: CalibrationRanges | None = None
    results: list[CandidateResult] = field(default_factory=list)
    collapse: dict | None = None
    feed: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    work: SharedWork = field(default_factory=SharedWork)  # what ``optimize``'s candidates of one model share

    @property
    def notes(self) -> list[str]:
        return self.inputs.notes

    @property
    def path(self) -> str | None:
        return self.inputs.path


def _fuse(run: Run) -> onnx.ModelProto:
    """The ``transformer-fusion`` pass on the input (it verifies itself against it and
    returns it unchanged when the fusion fails or moves the outputs)."""
    cfg = run.cfg
    step = make_pass("transformer-fusion", {"model_type": cfg.model_type, "num_heads": cfg.num_heads, "hidden_size": cfg.hidden_size}, error=UsageError)
    res = step(run.m, Context(data=run.inputs.ev, provider=run.provider, shapes=cfg.shapes, seed=cfg.seed))
    rep = res.report
    run.fusion = {"model_type": cfg.model_type, "modified": bool(res.modified), "counts": dict(rep.counts), "notes": list(rep.notes)}
    run.notes.extend(f"transformer-fusion: {n}" for n in run.fusion["notes"])
    return res.model if res.modified else run.m


def prepare(run: Run) -> None:
    """Transformer fusion (``model_type``), pre-processing (verified), ``exclude_nodes``
    mapped onto the pre-processed nodes, the evaluators and the validity feed."""
    cfg, m, ev = run.cfg, run.m, run.inputs.ev
    src = _fuse(run) if cfg.model_type is not None else m
    run.prep = run.work.get("prepared", (cfg.preprocess,), lambda: prepare_model(src, ev, provider=run.provider, use_ort_preprocess=cfg.preprocess))
    run.configs = list(run.inputs.configs)
    if run.inputs.exclude:
        run.prep, mapped, more = map_exclusions(m, run.prep, run.inputs.exclude, ev, provider=run.provider, source=src)
        run.notes.extend(more)
        run.configs = [c.with_(exclude=mapped) for c in run.configs]
    run.evaluator = run.evaluator if run.evaluator is not None else Evaluator(m, ev, cfg.metric, provider=run.provider)
    n_search = search_limit(cfg.search_samples, run.evaluator.metric, run.inputs.budget, len(ev))
    search = functools.partial(Evaluator, m, ev, run.evaluator.metric, provider=run.provider, limit=n_search)
    run.search = None if n_search is None else run.work.get("search", n_search, search)
    run.vfeed, run.vref = validity_feed(m, ev, run.provider)


def _calibration_ranges(run: Run, method: str, model: onnx.ModelProto | None = None) -> CalibrationRanges:
    """Ranges of ``model`` (default: the pre-processed model) on the calibration data."""
    model = run.prep.model if model is None else model
    return collect_ranges(model, dataset_for(model, run.inputs.cal.view()), method=method, batch_size=run.cfg.calibration_batch, provider=run.provider)


def measure_ranges(run: Run) -> None:
    """Activation ranges of the pre-processed model, when a candidate is static."""
    if any(c.mode == "static" for c in run.configs):
        run.ranges = _calibration_ranges(run, run.cfg.method)
        run.notes.extend(run.ranges.notes)


def build_candidates(run: Run) -> None:
    """Each configuration built, repaired to validity and fitted to the budget."""
    cfg = run.cfg
    bases: dict[str, tuple[onnx.ModelProto, frozenset]] = {}

    @functools.cache
    def alt_ranges() -> dict:
        """Per-tensor chosen ranges (method auto) for the budget search's "range" remedy,
        measured once, on first use."""
        return _calibration_ranges(run, "auto").ranges

    for c in run.configs:
        if c.mode not in bases:
            bases[c.mode] = build_base(run.prep.model, c, run.provider, run.notes)
        base, converted = bases[c.mode]
        builder = CandidateBuilder(
            base, c, ranges=run.ranges.ranges if run.ranges else None, provider=run.provider, feed=run.vfeed, reference=run.vref,
            converted_gemms=converted, calibration=run.inputs.cal, alt_ranges=alt_ranges if c.mode == "static" and cfg.method != "auto" else None,
        )  # fmt: skip
        run.results.append(_evaluate(run, builder))


def _evaluate(run: Run, builder: CandidateBuilder) -> CandidateResult:
    log.info("candidate %s ...", builder.config.label)
    return evaluate_candidate(
        builder, run.evaluator, budget=run.inputs.budget, search_evaluator=run.search, max_evals=run.cfg.max_evals, how=run.cfg.sensitivity,
        reference_bytes=model_nbytes(run.m),
    )  # fmt: skip


def add_equalized(run: Run) -> None:
    """``equalized_candidates`` (``equalize`` auto / always; static candidates only)."""
    cfg, cal = run.cfg, run.inputs.cal
    if cfg.equalize != "off" and cal is not None:
        run.results += equalized_candidates(run, always=cfg.equalize == "always")


def collapse(run: Run) -> None:
    """``check_collapse`` on the calibration data (else the evaluation data)."""
    data = run.inputs.cal if run.inputs.cal is not None else run.inputs.ev
    run.collapse = check_collapse(
        run.results, run.m, data, provider=run.provider, allow_collapse=run.cfg.allow_collapse, notes=run.notes, metric=run.evaluator.metric
    )


def time_candidates(run: Run) -> None:
    """The valid candidates within the budget timed against FP32, side by side (unless
    ``timing=False``); those under ``min_speedup`` become ``slower``."""
    cfg = run.cfg
    run.feed = timing_feed(run.inputs.ev, cfg.batch)
    timed = {r.label: r.model for r in run.results if r.model is not None and r.within_budget is not False and r.status != "collapsed"}
    timing = dict(provider=run.provider, runs=cfg.timing_runs, duration=cfg.timing_seconds, threads=cfg.threads)
    speeds = measure_speed(run.m, timed, run.feed, **timing) if cfg.timing else {}
    for r in run.results:
        r.speed = speeds.get(r.label)
        if r.speed is not None and r.speed.ratio < cfg.min_speedup and r.status == "ok":
            r.status = "slower"


def _report(run: Run) -> dict:
    cfg, ev, ev_, feed = run.cfg, run.evaluator, run.inputs.ev, run.feed
    return {
        "command": "quantize",
        "input": run.path,
        "mode": cfg.mode,
        "provider": run.provider,
        "preprocess": {"counts": run.prep.counts, "notes": run.prep.notes},
        "transformer_fusion": run.fusion,
        "calibration": run.ranges.summary() if run.ranges else None,
        "metric": {
            "name": ev.metric, "reference": ev.reference_score, "data": ev_.source, "samples": len(ev_),
            "search_samples": run.search.limit if run.search is not None else None,
        },  # fmt: skip
        "budget": {"max_drop": run.inputs.budget.max_drop} if run.inputs.budget else None,
        "timing": {
            "batch": int(next(iter(feed.values())).shape[0]) if feed else None, "runs": cfg.timing_runs if cfg.timing else 0, "threads": cfg.threads,
            "min_speedup": cfg.min_speedup,
        },  # fmt: skip
        "candidates": [r.to_dict() for r in run.results],
        "collapse_check": run.collapse,
        "notes": run.notes,
        "before": model_stats(run.m),
    }


def pick(results: list[CandidateResult], min_speedup: float, allow_slower: bool, timing: bool = True) -> CandidateResult | None:
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


def choose(run: Run) -> tuple[onnx.ModelProto, CandidateResult | None]:
    """(the model to write, the chosen candidate): the chosen one checked at the input's
    dims (and at discovery's further shapes), or the input unchanged when nothing is
    quantizable and slower results are allowed; else the refusal (``failure``)."""
    cfg, results = run.cfg, run.results
    run.report = _report(run)
    chosen = pick(results, cfg.min_speedup, cfg.allow_slower, cfg.timing)
    nothing = bool(results) and all(r.status == "nothing to quantize" for r in results)
    if chosen is None and cfg.allow_slower and cfg.mode != "int4" and nothing:
        run.report["chosen"] = None
        run.report["notes"].append("nothing to quantize: the input model is returned unchanged (--allow-slower)")
        return _finished(run, copy.deepcopy(run.m)), None  # the input is never the output
    if chosen is None:
        run.report["seconds"] = round(time.perf_counter() - run.t_start, 2)
        from ..diagnose.hints import diagnose_hint

        static = cfg.calibration is not None and cfg.mode != "dynamic"
        hint = diagnose_hint(run.path, recipe="cpu-int8-static" if static else "cpu-int8", data=cfg.calibration if static else cfg.eval_data)
        raise failure(results, run.inputs.budget, run.report, run.path, hint)
    if chosen.model is None:  # pragma: no cover - pick only returns timed (built) candidates
        raise VerificationError("internal: chosen candidate has no model")
    return _finished(run, _checked(run, chosen)), chosen


def _checked(run: Run, chosen: CandidateResult) -> onnx.ModelProto:
    """The chosen model, its dims and further shapes checked; its report entries."""
    m, out, ev = run.m, chosen.model, run.inputs.ev
    frozen = frozen_dims(m, out)
    if frozen:  # dynamic axes stay dynamic unless --fix-shapes asked otherwise
        raise VerificationError(f"{chosen.label}: {frozen}", run.path)
    # synthesized inputs: the chosen model also runs, with the same output shapes, at the
    # further shapes discovery found (every symbolic axis at two values)
    others = verify_other_shapes(m, out, ev, exact=False, label=chosen.label, provider=run.provider, seed=run.cfg.seed)
    if others:
        run.report["other_shapes"] = others
    run.report["chosen"] = chosen.label
    metric = run.evaluator.metric
    if run.inputs.budget is None and chosen.drop is not None and chosen.drop > UNBUDGETED_WARN_DROP:
        # ORT's quantizer can collapse a model (a sigmoid map or a wide softmax quantized in
        # steps of 1/255); without a budget nothing refuses it, so say it loudly
        run.report["notes"].append(
            f"warning: {chosen.label} loses {chosen.drop:.2f} points of {metric} on {ev.source} and no --max-accuracy-drop was given: "
            "check it, or pass a budget to leave the sensitive nodes in float"
        )
    from ..diagnose.api import sensitive_nodes

    run.report["sensitive_nodes"] = sensitive_nodes(m, out, ev, fit=chosen.fit, provider=run.provider, metric=metric)
    return out


def _finished(run: Run, out: onnx.ModelProto) -> onnx.ModelProto:
    run.report["after"] = model_stats(out)
    run.report["seconds"] = round(time.perf_counter() - run.t_start, 2)
    return out


def failure(results: list[CandidateResult], budget, report: dict, path, hint: str = "") -> OnnxoptError:
    """The error refusing the run (exit 3, ``details["report"]`` the measured table):
    nothing quantizable, no valid model, every candidate collapsed, over the budget, or
    none faster than FP32."""
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
            f"accuracy budget of {budget.max_drop:g} points not met: best {best.label} drops {best.drop:.2f} points of {report['metric']['name']} "
            f"({best.score:.2f} vs {report['metric']['reference']:.2f}{floated}){hint}",
            path,
            report=report,
        )
    best = max((r for r in in_budget if r.speed), key=lambda r: r.speed.ratio, default=None)
    fig = f"; best {best.label} at {best.speed.ratio:.2f}x" if best else ""
    from ..diagnose.hints import int8_speed_note

    why = next((n for n in (int8_speed_note(r.model) for r in in_budget) if n), "")
    fig += f"; {why}" if why else ""
    batch = report["timing"]["batch"]
    return BudgetError(f"no INT8 candidate is faster than FP32 at batch {batch}{fig} (pass --allow-slower to write it anyway)", path, report=report)


def check_collapse(
    results: list[CandidateResult], m: onnx.ModelProto, data, *, provider: str, allow_collapse: bool, notes: list[str], metric: str | None = None
) -> dict | None:
    """Score each built static / INT4 candidate against FP32 on ``data`` (the calibration
    data) with top-1 agreement (cosine for outputs that are not class scores, or when the
    run's ``metric`` is ``cosine`` / ``rel-l2``); below
    ``COLLAPSE_SCORE`` its status becomes ``collapsed`` (never timed nor chosen) unless
    ``allow_collapse``, which keeps it with a warning note.  Returns the check's record
    (None when no candidate needed it)."""
    todo = [r for r in results if r.model is not None and r.config.mode in ("static", "int4")]
    if not todo:
        return None
    how = "cosine" if metric in ("cosine", "rel-l2") else "agreement"
    ev = Evaluator(m, dataset_for(m, data.view()), how, provider=provider, limit=COLLAPSE_SAMPLES)
    kinds = {is_class_scores(o) and ev.metric == "agreement" for o in ev.ref_outputs}
    name = "top-1 agreement" if kinds == {True} else "cosine" if kinds == {False} else "top-1 agreement / cosine"
    record = {"metric": name, "threshold": COLLAPSE_SCORE / 100, "data": ev.dataset.source, "scores": {}}
    for r in todo:
        s = ev.score(r.model) / 100
        record["scores"][r.label] = round(s, 4)
        if s >= COLLAPSE_SCORE / 100:
            continue
        if allow_collapse:
            notes.append(
                f"warning: {r.label} has collapsed ({name} {s:.2f} against FP32 on {ev.dataset.source}, below {COLLAPSE_SCORE / 100:g}); "
                "kept because of --allow-collapse"
            )
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


def _loses_accuracy(r: CandidateResult, budget) -> bool:
    if r.config.mode != "static" or r.config.equalized:
        return False
    if r.model is None:
        return r.status == "invalid"
    if budget is not None:
        return r.within_budget is False or bool(r.fit and r.fit.excluded)
    return r.drop is not None and r.drop > UNBUDGETED_WARN_DROP


def equalized_candidates(run: Run, *, always: bool) -> list[CandidateResult]:
    """The static candidates of ``run.results`` that lose accuracy (all of them with ``always``)
    built again from the pre-processed model (weights as initializers, BN folded)
    after the ``equalize`` and ``smooth-quant`` passes (each verified exact by the pipeline
    on the calibration data); [] when none needs it or nothing changed."""
    from ..core.pipeline import run_pipeline

    src, cal, notes, budget = run.prep.model, run.inputs.cal, run.notes, run.inputs.budget
    want = [r for r in run.results if r.config.mode == "static" and not r.config.equalized and (always or _loses_accuracy(r, budget))]
    if not want:
        return []
    try:
        ctx = Context(data=dataset_for(src, cal.view()), provider=run.provider)
        eq = run_pipeline(src, [make_pass("equalize"), make_pass("smooth-quant")], ctx, command="equalize")
    except OnnxoptError as exc:
        notes.append(f"equalization not used: {exc}")
        return []
    counts = {s.name: dict(s.counts) for s in eq.steps}
    if not eq.report["modified"]:
        notes.append(f"equalization: nothing to equalize ({'; '.join(n for s in eq.steps for n in s.notes[:2])})")
        return []
    pairs, absorbed, smoothed = counts["equalize"].get("pairs", 0), counts["equalize"].get("bias_absorbed", 0), counts["smooth-quant"].get("smoothed", 0)
    notes.append(f"equalization before static quantization: {pairs} layer pair(s) equalized ({absorbed} with bias absorbed), {smoothed} SmoothQuant site(s)")
    base = eq.model
    ranges = _calibration_ranges(run, run.cfg.method, base)
    out = []
    for r in want:
        cfg = r.config.with_(equalized=True, bias_correction=r.config.format == "qdq")
        builder = CandidateBuilder(base, cfg, ranges=ranges.ranges, provider=run.provider, feed=run.vfeed, reference=run.vref, calibration=cal)
        res = _evaluate(run, builder)
        res.notes[:0] = [n for s in eq.steps for n in s.notes[:4]]
        out.append(res)
    return out
