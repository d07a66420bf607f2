"""``onnxopt.optimize``: from an exported model to the fastest verified model for a target.

Flow: the target's recipe (``passes/cpu.toml`` / ``passes/cuda.toml``, or ``recipe=``) ->
its ``[[steps]]`` as verified preprocessing (simplify; transformer fusion only when the
graph is BERT-like) -> the candidates of its ``[optimize]`` table (``candidates.py``) ->
each verified and scored against the input model, timed interleaved against the input on
the target provider, one chosen (``select.py``) -> the chosen model with provenance.

Guarantee: the returned model is never slower than the input (``ratio >= 0.97`` in a
confirmation run) and never outside the accuracy budget; when nothing beats the input the
simplified FP32 model is returned, and the decision table says so.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.passes import Context
from ..core.pipeline import PipelineResult, run_pipeline
from ..core.provenance import KEY as PROVENANCE_KEY
from ..core.provenance import write_provenance
from ..core.recipe import load_recipe
from ..data import Dataset, check_shapes, dataset_for, input_specs, synthesize
from ..errors import ProviderError, UsageError, VerificationError, blaming
from ..io import resolve_model, weights_on_disk
from ..metrics import Budget, Evaluator, check_metric
from ..runtime import release_memory
from ..simplify.fix_shapes import fix_shapes as apply_fix_shapes
from ..stats import model_stats
from ..verify import frozen_dims, verify_other_shapes
from .candidates import BuildEnv, Candidate, build_candidates, is_bert_like
from .plan import OBJECTIVES, plan_from_recipe
from .select import Timer, decide, render_decision_table, time_candidates, verify_candidate

__all__ = ["TARGETS", "optimize", "render_decision_table"]

log = logging.getLogger(__name__)

TARGETS = ("cpu", "cuda")


def _provider_for(target: str, allow_cpu: bool, notes: list[str]) -> str:
    from ..runtime import cuda_available

    if target == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if allow_cpu:
        notes.append(
            "CUDA is not available: candidates verified and timed on CPU (the recipe allows CPU verification); "
            "FP16 checked with the reference evaluator (else onnxruntime/cpu), not timed"
        )
        return "cpu"
    raise ProviderError(
        "--target cuda needs onnxruntime's CUDAExecutionProvider, which this onnxruntime build lacks "
        "(install onnxruntime-gpu, or use a recipe with allow_cpu_verification = true)"
    )


def _synthesized_eval(model: onnx.ModelProto, shapes, samples: int, seed: int):
    """Synthesized evaluation inputs of ``samples`` samples.  ``--shape`` fixes a whole feed,
    so for a model whose inputs all have a symbolic first (batch) axis the given shape is
    taken as one sample's and ``samples`` of them are drawn: the budget is then judged on
    many samples, not on the single feed the shape describes."""
    ds = synthesize(model, shapes, samples=samples, seed=seed)
    if not shapes or not ds.whole:
        return ds
    specs = input_specs(model)
    if not specs or any(not s.shape or isinstance(s.shape[0], int) for s in specs):
        return ds  # a fixed batch: the feed stays as the model wants it
    wide = {name: (samples, *tuple(dims)[1:]) for name, dims in shapes.items()}
    arrays = next(synthesize(model, wide, samples=samples, seed=seed).batches())
    out = Dataset("<synthesized>", arrays=arrays)
    out.specs = specs
    return out


def _joined(first: PipelineResult, second: PipelineResult | None) -> PipelineResult:
    """Two pipeline runs, the second on the first's model, as one result."""
    if second is None:
        return first
    return dataclasses.replace(second, steps=list(first.steps) + list(second.steps), expected=second.expected or first.expected)


def _keep_fusion_if_faster(unfused: PipelineResult, tail, ctx, feed, provider, threads, duration, notes) -> PipelineResult:
    """The recipe's steps from transformer fusion on (``tail``), run on the steps before it
    (``unfused``).  Fusion is exact but not always faster (a partial fusion can cost more
    than ORT's own run-time fusions gain): when it changed the graph, the FP32 model with it
    is timed against the one without it, interleaved, and kept only if not slower (the
    steps before it are not run again).  Dropped only when measurably slower (the upper end of
    the ratio's 95% CI below 1): on the MiniLM encoder the two ran 0.98x-1.01x, and a coin
    flip between them decided whether static INT8 could meet a 1-point cosine budget at all
    (fused: drops 0.88 and 0.92 within budget; unfused: 12.42 and 11.54 at best)."""
    fused = run_pipeline(unfused.model, tail, ctx, command="optimize", check_input=False)  # checked by the first run
    if not fused.steps[0].modified:
        return _joined(unfused, fused)
    # timed from copies whose weights wait in files: no 65 MB serialization per session beside
    # the three encoder protos this stage holds (the input, the unfused and the fused model)
    (a, a_dir), (b, b_dir) = weights_on_disk(unfused.model, "onnxopt-time-"), weights_on_disk(fused.model, "onnxopt-time-")
    with a_dir, b_dir:
        timer = Timer(a, feed, provider, threads=threads, duration=duration)
        timer.add("fused", b)
        sp = timer.measure(["fused"])["fused"][0]
        del timer, a, b
    figure = f"{sp.ratio:.2f}x [{sp.low:.2f}, {sp.high:.2f}] vs unfused"
    if sp.high < 1.0:
        notes.append(f"transformer-fusion dropped: the fused FP32 model ran {figure} (slower); candidates built without it")
        return _joined(unfused, run_pipeline(unfused.model, tail[1:], ctx, command="optimize", check_input=False) if tail[1:] else None)
    notes.append(f"transformer-fusion kept: the fused FP32 model ran {figure}")
    return _joined(unfused, fused)


def _cold_starts(rows, by_name, m, feed, provider, st) -> float:
    """Cold start (session creation + first run, median of fresh processes) of the input and
    of every eligible candidate, with the options each carries; returns the input's."""
    from ..serving.carry import carried_options
    from ..serving.coldstart import measure_cold_start
    from .select import eligible_rows

    eligible = eligible_rows(rows, st.min_ratio)
    models = [(m, carried_options(m))] + [(by_name[r.name].runnable(), by_name[r.name].carried()) for r in eligible]
    figures: list[list[float]] = [[] for _ in models]
    for _ in range(st.cold_start_repeats):  # round-robin: machine noise hits every model alike
        for k, (model, config) in enumerate(models):
            c = measure_cold_start(model, feed, config=config, provider=provider, repeats=1)
            figures[k].append(c["create_ms"] + c["first_run_ms"])
    medians = [float(np.median(f)) for f in figures]
    for r, ms in zip(eligible, medians[1:], strict=True):
        r.cold_start_ms = ms
    return medians[0]


def _tune_session(out, feed, dataset, provider, duration, seed):
    """Search session options for the chosen model (``serving.tune``), carry the winner in
    ``out`` (in place) and verify that ORT accepts it; returns the search outcome."""
    from ..serving.carry import carried_options, carry_options, check_carried
    from ..serving.tune import TuneSettings, check_feeds, search_options

    log.info("searching session options for the chosen model")
    settings = TuneSettings(provider, duration=min(duration, 2.0), seed=seed)
    checks = check_feeds(dataset)
    # the search holds a session per configuration at once: loaded from a copy whose weights
    # wait in a file, they map that file (shared pages) instead of each reading its own copy
    # out of a serialized proto (a 51 MB INT8 encoder: 51 MB serialized and parsed per session)
    lazy, folder = weights_on_disk(out, "onnxopt-tune-")
    with folder:
        outcome = search_options(lazy, feed, checks, settings, carried_options(out))
        del lazy
    carry_options(out, outcome.chosen)
    check_carried(out, provider)
    return outcome


def _restore_input_provenance(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Replace the candidate's onnxopt metadata by the input's (so history stays the user's)."""
    props = {p.key: p.value for p in model.metadata_props if p.key != PROVENANCE_KEY}
    props.update((p.key, p.value) for p in original.metadata_props if p.key == PROVENANCE_KEY)
    onnx.helper.set_model_props(model, props)


def _summary(chosen, metric: str) -> str:
    if chosen is None:
        return "nothing beat the input and the simplified FP32 model was not confirmed as fast: the input model is written unchanged (with provenance)"
    figs = f"{metric} {chosen.score:.2f} ({0.0 - chosen.drop + 0.0:+.2f} points)"
    ratio = chosen.confirm_ratio if chosen.confirm_ratio is not None else chosen.ratio
    if chosen.lossless:
        return f"nothing beat the input by the required margin: the simplified FP32 model '{chosen.name}' is written ({ratio:.2f}x vs input, {figs})"
    return f"chosen: {chosen.name} ({ratio:.2f}x vs input in the confirmation run, {figs})"


@blaming("model")
def optimize(
    model,
    *,
    target: str | None = None,
    recipe=None,
    calibration=None,
    eval_data=None,
    max_accuracy_drop: float | None = None,
    metric: str | None = None,
    shapes: dict | None = None,
    batch: int | None = None,
    threads: int | None = None,
    runs: int | None = None,
    time_budget: float | None = None,
    seed: int = 0,
    report=None,
    objective: str | None = None,
    session_options: bool | None = None,
    fix_shapes: dict | None = None,
) -> PipelineResult:
    """The fastest verified model for ``target`` within the accuracy budget.

    ``model``: path or ModelProto.  ``target``: ``cpu`` | ``cuda`` (default: the recipe's,
    else cpu).  ``recipe``: bundled name or TOML path (default: the target's recipe).
    ``calibration`` / ``eval_data``: DATA paths or Datasets; without ``eval_data`` the
    budget is judged against the input model on the calibration data, else on synthesized
    inputs.  ``max_accuracy_drop``: points of ``metric`` (default: the recipe's, 1.0).
    ``batch``, ``threads``, ``runs``, ``time_budget`` (seconds per timing round) override
    the recipe's timing settings.  ``report``: also write the JSON report there.
    ``objective``: ``latency`` | ``cold-start`` | ``size`` (default: the recipe's, latency).
    ``session_options``: search ONNX Runtime session options for the chosen model and
    carry the winner in it (default: the recipe's, on).
    ``fix_shapes`` ({input: dims}): those inputs are made static first (a verified step);
    otherwise symbolic dims stay symbolic.

    Returns a ``PipelineResult`` whose ``report["decision"]`` holds the decision table
    (``render_decision_table(report)`` prints it).  Raises ``UsageError`` / ``RecipeError``
    / ``ModelError`` / ``DataError`` / ``ProviderError`` (exit 2) for bad input and
    ``VerificationError`` (exit 3) when the preprocessing itself cannot be verified.
    """
    t_start = time.perf_counter()
    run = _setup(model, target, recipe, calibration, eval_data, max_accuracy_drop, metric, shapes, batch, objective, session_options, fix_shapes, seed)
    threads = threads if threads is not None else run.st.threads
    duration = time_budget or run.st.time_budget
    pre, t_pre = _preprocess(run, threads, duration)
    evaluator = Evaluator(run.m, run.dataset, run.budget.metric, provider=run.provider, limit=run.st.eval_limit)
    run.samples = int(run.dataset.fed or 0)  # what the evaluator read (later reads reset it)
    env = BuildEnv(run.target, run.provider, run.cal, evaluator, run.budget, shapes, seed, reference=run.m, feed=run.feed, threads=threads or 0,
                   objective=run.objective, min_gain=run.st.min_gain)
    data = calibration if calibration is not None else eval_data
    rows, chosen, out, input_ms, input_cold, t_build, t_time = _build_and_choose(run, env, pre, threads, runs, duration, data)
    # from here on the input's graph and metadata are read, not its weights: they wait in a
    # file while the session-option search holds its sessions (65 MB less at the encoder's peak)
    env.reference = None
    run.m, input_dir = weights_on_disk(run.m, "onnxopt-input-")
    with input_dir:
        release_memory()  # the candidates' protos and sessions are gone: their pages go back before tuning
        t0 = time.perf_counter()  # 5. the output model with provenance (nothing time-dependent in it)
        out, others, tuned = _output(run, chosen, out, duration)
        t_tune = time.perf_counter() - t0
        _write_provenance(run, out, pre, chosen, evaluator)
        decision = _decision(run, rows, chosen, evaluator, input_ms, input_cold, tuned, others)
        seconds = {"preprocess": t_pre, "candidates": t_build, "timing": t_time, "session_options": t_tune, "total": time.perf_counter() - t_start}
        result = PipelineResult(out, _report(run, pre, out, decision, seconds), True, list(pre.steps))
        run.m = None
    if report is not None:
        result.save_report(report)
    return result


def _build_and_choose(run: _Run, env: BuildEnv, pre, threads, runs, duration, data):
    """Stages 3 and 4: the candidates, each verified and scored as soon as it is built, then
    kept on disk (sessions load the files; timing holds two sessions at a time, so memory
    stays bounded however many candidates there are); timed against the input; the choice.
    Returns (rows, chosen row, the model to write, input ms, input cold start, seconds to
    build, seconds to time)."""
    with tempfile.TemporaryDirectory(prefix="onnxopt-candidates-") as store:
        env.store = Path(store)
        t0 = time.perf_counter()
        fp16_samples = next((c.config.reference_samples for c in run.plan.candidates if c.kind == "fp16"), 8)
        rows: list = []
        check = lambda c: rows.append(verify_candidate(c, env, fp16_samples=fp16_samples))  # noqa: E731
        # the input waits on disk while the candidates are built (sessions and ORT's
        # quantizer read the file; one proto fewer beside the quantizer's)
        held = Candidate("input", "input", run.m)
        held.spill(env.store)
        env.reference, env.reference_options, run.m = held.stored, held.options, None
        cands = build_candidates(pre.model, env, run.plan.candidates, recipe_tail=run.plan.recipe_tail, recipe_name=run.rec.name, check=check)
        env.shared = pre.model = None  # the INT8 candidates' shared work and the base are done with
        release_memory()
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        # the input is timed from its file like the candidates (no proto serialized beside its
        # session), and read back once the timing is done
        log.info("timing the candidates against the input")
        timer = Timer(held.stored, run.feed, run.provider, threads=threads, runs=runs or run.st.runs, duration=duration, input_config=held.options)
        by_name = {c.name: c for c in cands}
        time_candidates(rows, by_name, timer)
        env.reference = run.m = held.load()
        input_cold = _cold_starts(rows, by_name, run.m, run.feed, run.provider, run.st) if run.objective == "cold-start" else None
        chosen = decide(rows, timer, min_ratio=run.st.min_ratio, min_gain=run.st.min_gain, objective=run.objective)
        from .select import explain_rejections  # rows over budget name the diagnose command

        explain_rejections(rows, run.path, data, run.rec)
        t_time = time.perf_counter() - t0
        log.info("chosen: %s", chosen.name if chosen is not None else "the input")
        out = by_name[chosen.name].load() if chosen is not None else copy.deepcopy(run.m)
    return rows, chosen, out, timer.base_latency_ms, input_cold, t_build, t_time


@dataclass
class _Run:
    """What the stages of ``optimize`` share: the recipe and its settings, the input model,
    the data, the budget, and (after preprocessing) the reference dataset and timing feed."""

    rec: Any
    plan: Any
    st: Any
    target: str
    objective: str
    session_options: bool
    notes: list[str]
    m: onnx.ModelProto
    path: Any
    provider: str
    cal: Any
    ev: Any
    budget: Budget
    batch: int
    shapes: dict | None
    seed: int
    dataset: Any = None
    synthesized: bool = False
    feed: dict | None = None
    samples: int = 0


def _setup(model, target, recipe, calibration, eval_data, max_accuracy_drop, metric, shapes, batch, objective, session_options, fix_shapes, seed) -> _Run:
    """Check the options, load the recipe, the model (made static where ``fix_shapes`` asks)
    and the data; the budget and the batch."""
    if target is not None and target not in TARGETS:
        raise UsageError(f"unknown target '{target}' (choose from {', '.join(TARGETS)})")
    check_metric(metric)
    if objective is not None and objective not in OBJECTIVES:
        raise UsageError(f"unknown objective '{objective}' (choose from {', '.join(OBJECTIVES)})")
    rec = load_recipe(recipe if recipe is not None else (target or "cpu"))
    plan = plan_from_recipe(rec)
    st = plan.settings
    objective = objective or st.objective
    session_options = st.session_options if session_options is None else bool(session_options)
    target = target or rec.target
    notes: list[str] = []
    if rec.target != target:
        notes.append(f"recipe '{rec.name}' is written for target {rec.target}; used for target {target}")
    m, path = resolve_model(model)
    check_shapes(m, shapes, path)
    provider = _provider_for(target, st.allow_cpu_verification, notes)
    m, fixed = apply_fix_shapes(m, fix_shapes, provider=provider, path=path)
    if fixed:
        notes.append(f"inputs made static first (--fix-shapes {', '.join(fix_shapes)}; verified)")
    cal = dataset_for(m, calibration) if calibration is not None else None
    ev = dataset_for(m, eval_data) if eval_data is not None else None
    budget = Budget(st.max_accuracy_drop if max_accuracy_drop is None else float(max_accuracy_drop), metric or st.metric)
    batch = int(batch or st.batch)
    if batch <= 0:
        raise UsageError(f"batch must be positive, got {batch}")
    return _Run(rec, plan, st, target, objective, session_options, notes, m, path, provider, cal, ev, budget, batch, shapes, seed)


def _preprocess(run: _Run, threads, duration):
    """The recipe's exact steps, verified step by step (transformer fusion only on a BERT-like
    graph, and kept only when not slower); sets the reference dataset (eval, else calibration,
    else synthesized) and the timing feed.  Returns (pipeline result, seconds)."""
    t0 = time.perf_counter()
    passes = list(run.plan.preprocess)
    if "transformer-fusion" in [p.key for p in passes] and not is_bert_like(run.m):
        run.notes.append("transformer-fusion skipped: the graph is not BERT-like")
        passes = [p for p in passes if p.key != "transformer-fusion"]
    ctx = Context(data=run.cal, eval_data=run.ev, shapes=run.shapes, provider=run.provider, seed=run.seed, budget=run.budget)
    k = next((i for i, p in enumerate(passes) if p.key == "transformer-fusion"), len(passes))
    pre = run_pipeline(run.m, passes[:k], ctx, command="optimize")
    run.dataset = run.ev or run.cal
    run.synthesized = run.dataset is None
    if run.synthesized:
        run.dataset = _synthesized_eval(run.m, run.shapes, max(run.batch, 64), run.seed)
    feeds = synthesize(run.m, run.shapes, batch=run.batch, samples=run.batch, seed=run.seed) if run.synthesized else run.dataset
    run.feed = next(feeds.batches(run.batch, run.batch))
    if passes[k:]:
        pre = _keep_fusion_if_faster(pre, passes[k:], ctx, run.feed, run.provider, threads, duration, run.notes)
    return pre, time.perf_counter() - t0


def _output(run: _Run, chosen, out, duration):
    """The model written: ``out`` (the chosen candidate's, else a copy of the input) with its
    dynamic axes kept, run at the further shapes discovery found (synthesized inputs), the
    input's provenance history, session options searched and carried.  Returns (model,
    other shapes, tune outcome)."""
    m = run.m
    frozen = frozen_dims(m, out)
    label = chosen.name if chosen else "input"
    if frozen:  # dynamic axes stay dynamic unless --fix-shapes asked otherwise
        raise VerificationError(f"{label}: {frozen}", run.path)
    # synthesized inputs: the written model also runs, with the same output shapes, at the
    # further shapes discovery found (every symbolic axis at two values)
    others = []
    if run.synthesized:
        others = verify_other_shapes(m, out, synthesize(m, run.shapes, seed=run.seed), exact=False, label=label, provider=run.provider, seed=run.seed)
    _restore_input_provenance(out, m)
    if chosen is not None and chosen.kind == "ort-offline":
        from ..serving.offline import CAVEAT

        run.notes.append(f"ort-offline chosen: {CAVEAT}")
    tuned = _tune_session(out, run.feed, run.dataset, run.provider, duration, run.seed) if run.session_options else None
    return out, others, tuned


def _write_provenance(run: _Run, out, pre, chosen, evaluator) -> None:
    """The preprocessing steps' records, the choice, and the settings (no timings)."""
    c, ref = chosen, evaluator.reference_score
    metric = {"name": evaluator.metric, "reference": ref, "score": c.score if c else ref, "drop": c.drop if c else 0.0}
    chosen_step = {"name": "optimize-choice", "candidate": c.name if c else "input", "kind": c.kind if c else "input", "params": c.params if c else {},
                   "source": c.source if c else "", "metric": metric}
    extra = {"target": run.target, "recipe": run.rec.name, "max_accuracy_drop": run.budget.max_drop}
    if run.objective != "latency":  # the default is not written (provenance stays free of timing words)
        extra["objective"] = run.objective
    from ..serving.carry import carried_options

    carried = carried_options(out)
    if carried is not None:
        extra["session_options"] = carried.to_dict()
    write_provenance(out, "optimize", [r.record() for r in pre.steps] + [chosen_step], extra)


def _decision(run: _Run, rows, chosen, evaluator, input_ms, input_cold, tuned, others) -> dict:
    """The decision table of the report (``render_decision_table`` prints it)."""
    st = run.st
    return {
        "target": run.target,
        "provider": run.provider,
        "batch": run.batch,
        "metric": evaluator.metric,
        "data": run.dataset.source,
        "samples": run.samples,
        "reference_score": evaluator.reference_score,
        "max_accuracy_drop": run.budget.max_drop,
        "min_ratio": st.min_ratio,
        "min_gain": st.min_gain,
        "objective": run.objective,
        "input_latency_ms": input_ms,
        "input_cold_start_ms": input_cold,
        "session_options": tuned.to_dict() if tuned is not None else None,
        "rows": [r.to_dict() for r in rows],
        "chosen": chosen.name if chosen is not None else "input",
        "summary": _summary(chosen, evaluator.metric),
        "other_shapes": others,
    }


def _report(run: _Run, pre, out, decision: dict, seconds: dict) -> dict:
    return {
        "command": "optimize",
        "input": str(run.path) if run.path else None,
        "target": run.target,
        "provider": run.provider,
        "recipe": run.rec.name,
        "recipe_file": str(Path(run.rec.path).name),
        "plan": run.plan.describe(),
        "steps": [r.to_dict() for r in pre.steps],
        "decision": decision,
        "notes": run.notes,
        "before": model_stats(run.m),
        "after": model_stats(out),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
