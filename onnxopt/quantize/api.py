"""``onnxopt.quantize``: INT8 quantization that is valid, faster and within an accuracy budget.

``quantize(model, **options)`` builds a ``QuantizeConfig`` and runs ONE
``passes.QuantizePass`` through ``core.run_pipeline`` (which verifies the result and
writes the provenance).  The pass runs the stages of ``stages``: it pre-processes the
model (``preprocess``), calibrates activation ranges by streaming the calibration data
(``collect`` / ``calibrate``), builds each candidate with ONNX Runtime's quantizer
(dynamic; static per-tensor; static per-channel for ``mode="auto"``), repairs invalid
graphs per node (``validity``), fits each candidate to the accuracy budget by excluding
the most sensitive nodes (``sensitivity``), times the candidates against the FP32 model
side by side (``speed``) and returns the fastest valid one within the budget.  It raises
``BudgetError`` (exit 3) when the budget cannot be met, when nothing is quantizable or
when no candidate is faster than FP32 (unless ``allow_slower``); the error's
``details["report"]`` holds the measured table.

Lower-level building blocks (for ``optimize``, the stages and scripts): ``calibrate``,
``prepare_model``, ``candidate_configs``, ``quantize_candidate``,
``quantize_dynamic_candidate``, ``quantize_static_candidate``, ``sensitivity.fit_budget``.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable

import onnx

from ..core.public import check_options
from ..core.result import Result
from ..data import Dataset, dataset_for
from ..errors import BudgetError, OnnxoptError, UsageError, VerificationError, blaming
from ..io import model_nbytes, resolve_model
from ..metrics import Budget
from ..runtime import resolve_provider, run_dataset
from ..verify import EXACT_REL_L2, check_model, compare_outputs
from .calibrate import DEFAULT_PERCENTILE
from .collect import CalibrationRanges, collect_ranges
from .config import QuantConfig, QuantizeConfig, op_types_for_mode, op_types_problem
from .engine import CANNOT_WIN, CandidateBuilder, CandidateResult, evaluate_candidate
from .preprocess import Prepared, gemm_to_matmul, map_node_names, node_names, prepare

__all__ = [
    "quantize", "QuantizeConfig", "calibrate", "prepare_model", "quantize_candidate", "quantize_dynamic_candidate", "quantize_static_candidate",
    "candidate_configs", "check_exclusions", "map_exclusions", "build_base", "validity_feed", "finish_candidate", "dataset_view", "as_name_list",
]

log = logging.getLogger(__name__)


def dataset_view(ds):
    """A Dataset handed in by a caller is validated on a view, never mutated."""
    return ds.view() if hasattr(ds, "view") else ds


def as_name_list(value) -> list[str]:
    if value is None:
        return []
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else [str(v) for v in value]


def calibrate(
    model, data, *, method: str = "minmax", batch_size: int | None = None, limit: int | None = None, provider: str = "cpu",
    percentile: float = DEFAULT_PERCENTILE,
) -> CalibrationRanges:
    """Activation ranges of ``model`` over DATA (path or Dataset), streamed batch by batch."""
    m, _ = resolve_model(model)
    ds = dataset_for(m, data)
    return collect_ranges(m, ds, method=method, batch_size=batch_size, limit=limit, provider=resolve_provider(provider), percentile=percentile)


def prepare_model(model: onnx.ModelProto, dataset=None, *, provider: str = "cpu", use_ort_preprocess: bool = True, shapes=None) -> Prepared:
    """``preprocess.prepare`` with every result verified against ``model`` (checker, ORT,
    outputs within 1e-4 relative L2 on up to 64 samples of ``dataset`` or synthesized
    inputs).  Falls back to the steps without ORT's pre-processing; raises
    ``VerificationError`` when even those change the outputs."""
    ds = dataset_for(model, dataset, shapes)
    names = [o.name for o in model.graph.output]
    ref = run_dataset(model, ds, provider=provider, limit=64)

    def check(candidate: onnx.ModelProto, label: str, limit: float = EXACT_REL_L2) -> str | None:
        try:
            check_model(candidate, provider=provider, error=VerificationError, label=label)
            out = run_dataset(candidate, ds, provider=provider, limit=64, error=VerificationError)
        except OnnxoptError as exc:
            return str(exc)
        bad = compare_outputs(names, ref, out).inexact(limit)
        return f"output '{bad[0].name}' moved by {bad[0].rel_l2:.3g} relative L2 (limit {limit:g})" if bad else None

    prep = prepare(model, use_ort_preprocess=use_ort_preprocess, check=check)
    why = check(prep.model, "pre-processed model", prep.limit)
    if why and prep.counts.get("ort_pre_process"):
        prep = prepare(model, use_ort_preprocess=False, check=check)
        prep.notes.append(f"ORT quant_pre_process result dropped: {why}")
        why = check(prep.model, "pre-processed model", prep.limit)
    if why:
        raise VerificationError(f"pre-processing for quantization changed the model: {why}")
    return prep


def check_exclusions(m: onnx.ModelProto, exclude, path=None) -> None:
    """Every name in ``exclude`` is a node of ``m``, or one pre-processing derives from a node
    of ``m`` (``<node>/<Fusion>``, as reports name ORT's and onnxopt's fused nodes)."""
    names = set(node_names(m))
    unknown = [n for n in exclude if n not in names and not any(n.startswith(x + "/") and "Fusion" in n[len(x) :] for x in names if x)]
    if unknown:
        raise UsageError(f"--exclude-nodes: no node named {', '.join(repr(u) for u in unknown)} in the model", path)


def map_exclusions(
    m: onnx.ModelProto, prep: Prepared, exclude, dataset, *, provider: str, source: onnx.ModelProto | None = None
) -> tuple[Prepared, frozenset, list[str]]:
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
    if missing and prep.counts.get("ort_pre_process"):
        alt = prepare_model(source if source is not None else m, dataset, provider=provider, use_ort_preprocess=False)
        found2, missing2 = map_node_names(alt.model, exclude, original)
        if len(missing2) < len(missing):
            alt.notes.append(f"ORT quant_pre_process not used: it removes --exclude-nodes {', '.join(sorted(set(missing) - set(missing2)))}")
            prep, found, missing = alt, found2, missing2
    notes = [f"--exclude-nodes {name}: removed by pre-processing (a constant computation or dead node): nothing to quantize there" for name in missing]
    fused = {name: nodes for name, nodes in found.items() if nodes != [name]}
    notes += [f"--exclude-nodes {name}: pre-processing fused it into {', '.join(nodes)}, which stays in float" for name, nodes in fused.items()]
    return prep, frozenset(x for v in found.values() for x in v), notes


def candidate_configs(
    mode: str, *, has_calibration: bool, provider: str = "cpu", format: str = "qdq", method: str = "minmax", per_channel: bool = False,
    reduce_range: bool = False, weight_type: str = "int8", activation_type: str = "uint8", op_types=None, exclude=(), block_size: int = 32,
    int4_method: str = "rtn", bias_correction: bool = False, weight_rounding: str = "nearest",
) -> tuple[list[QuantConfig], list[str]]:
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
    static = dict(mode="static", format=format, method=method, activation_type=activation_type, bias_correction=bias_correction,
                  weight_rounding=weight_rounding, **common)
    if mode == "int4":
        return [QuantConfig(mode="int4", block_size=block_size, int4_method=int4_method, op_types=ops, exclude=frozenset(exclude))], notes
    if mode in ("dynamic", "static"):
        return [QuantConfig(per_channel=per_channel, op_types=ops, **(static if mode == "static" else dict(mode="dynamic", **common)))], notes
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
        configs.extend(QuantConfig(per_channel=pc, op_types=ops_of("static"), **static) for pc in (False, True))
    return configs, notes


def build_base(prep: onnx.ModelProto, config: QuantConfig, provider: str, notes: list[str] | None = None) -> tuple[onnx.ModelProto, frozenset]:
    """The model ORT quantizes; in dynamic and int4 mode Gemm nodes become MatMul + Add (their names
    are returned so that ``--op-types Gemm`` still selects them; ``notes`` gets a line saying so)."""
    if config.mode not in ("dynamic", "int4") or "Gemm" not in config.op_types_for(provider):
        return prep, frozenset()
    base = copy.deepcopy(prep)
    converted = frozenset(gemm_to_matmul(base))
    if converted and notes is not None:
        notes.append(f"dynamic: {len(converted)} Gemm node(s) rewritten as MatMul + Add (ORT has no integer Gemm)")
    return base, converted


def quantize_candidate(
    m: onnx.ModelProto, config: QuantConfig, *, calibration=None, ranges=None, provider: str = "cpu", eval_data=None, max_accuracy_drop=None,
    metric=None, preprocess: bool = True, search_samples: int = 200, max_evals: int = 40, shared=None, evaluator=None, gate=None,
) -> CandidateResult:
    """One candidate of ``config``, fitted to the budget when given.  ``shared``
    (``engine.SharedWork``): pre-processing, ranges, search subset and sensitivity ranking
    are taken from it (and put there) instead of measured again; ``evaluator``: an
    ``Evaluator`` of ``m`` on ``eval_data`` the caller already has (its reference outputs
    are not computed again); ``gate``: see ``engine.evaluate_candidate``."""
    from .stages import Inputs, Run, prepare

    m, _ = resolve_model(m)
    provider = resolve_provider(provider)
    ds = dataset_for(m, dataset_view(eval_data if eval_data is not None else calibration))  # None: synthesized
    check_exclusions(m, config.exclude)
    if config.mode == "static" and ranges is None and calibration is None:
        raise UsageError("static quantization needs calibration data")
    budget = Budget(max_accuracy_drop, metric) if max_accuracy_drop is not None else None
    inputs = Inputs([config], [], calibration, ds, budget, list(config.exclude))
    run = Run(QuantizeConfig(metric=metric, preprocess=preprocess, search_samples=search_samples), m, inputs, provider, evaluator=evaluator)
    if shared is not None and not config.exclude:
        run.work = shared
    prepare(run)  # the pre-processing, ``exclude`` mapped, the evaluators and the validity feed of a ``quantize`` run
    config, prep, work = run.configs[0], run.prep, run.work
    if config.mode == "static" and ranges is None:
        ranges = work.get(
            "ranges", config.method,
            lambda: collect_ranges(prep.model, dataset_for(prep.model, dataset_view(calibration)), method=config.method, provider=provider).ranges,
        )
    notes = prep.notes + run.notes
    base, converted = build_base(prep.model, config, provider, notes)
    if base is not prep.model and work is shared:  # the search quantizes its own copy: the shared one waits on disk
        prep = run.prep = None
        work.park((run.cfg.preprocess,))
    builder = CandidateBuilder(base, config, ranges=ranges, provider=provider, feed=run.vfeed, reference=run.vref, converted_gemms=converted)
    ranking = work.rankings.get(config.mode) if budget is not None else None
    res = evaluate_candidate(
        builder, run.evaluator, budget=budget, search_evaluator=run.search, max_evals=max_evals, reference_bytes=model_nbytes(m), ranking=ranking, gate=gate
    )
    if ranking:
        notes.append(f"budget search: the sensitivity ranking measured for an earlier {config.mode} candidate reused ({len(ranking)} units)")
    elif res.fit is not None and res.fit.sensitivity:
        work.rankings[config.mode] = res.fit.sensitivity
    res.notes[:0] = notes
    return res


def validity_feed(m: onnx.ModelProto, ds, provider: str) -> tuple[dict, list]:
    """Two samples of ``ds`` and ``m``'s outputs on them: the run-time check of each candidate build."""
    feed = ds.first_batch(2)
    return feed, run_dataset(m, Dataset("<feed>", arrays=feed, whole=True), provider=provider)


def finish_candidate(res: CandidateResult) -> tuple[onnx.ModelProto, list[str]]:
    if res.model is None:
        raise (BudgetError if res.status in ("nothing to quantize", CANNOT_WIN) else VerificationError)(
            f"{res.label}: {res.status}: {res.notes[-1]}"  # the stop's reason (the pre-processing notes come first)
        )
    if res.within_budget is False:
        raise BudgetError(f"{res.label}: accuracy budget not met (best drop {res.drop:.2f} points of {res.fit.metric if res.fit else 'the metric'})")
    notes = list(res.notes)
    notes += [f"{f.node} ({f.op_type}) -> {f.action}: {f.reason[:160]}" for f in res.fallbacks]
    if res.fit is not None:
        scope = [e["node"] for e in res.fit.excluded if e.get("scope")]
        if scope:
            names = ", ".join(scope[:3]) + (", ..." if len(scope) > 3 else "")
            gain = res.fit.excluded[0]["gain"]
            notes.append(f"{len(scope)} node(s) without weights ({names}) left in float together for the budget (gain {gain:.2f} points)")
        notes += [f"{e['node']} ({e['op_type']}) left in float for the budget (gain {e['gain']:.2f} points)" for e in res.fit.excluded if not e.get("scope")]
    return res.model, notes


def quantize_dynamic_candidate(
    model, *, op_types=None, per_channel: bool = False, reduce_range: bool = False, weight_type: str = "int8", exclude_nodes: Iterable[str] = (),
    provider: str = "cpu", eval_data=None, max_accuracy_drop: float | None = None, metric: str | None = None, preprocess: bool = True,
) -> onnx.ModelProto:
    """A verified dynamically quantized model (weights INT8, activations quantized at run
    time): pre-processed, Gemm rewritten to MatMul, repaired per node where ORT's output is
    invalid; with ``max_accuracy_drop`` (and ``eval_data``) fitted to that budget.
    Raises ``BudgetError`` when nothing is quantizable or the budget cannot be met."""
    from .candidates import dynamic_candidate

    kw = dict(op_types=op_types, per_channel=per_channel, reduce_range=reduce_range, weight_type=weight_type, exclude_nodes=exclude_nodes, provider=provider)
    return dynamic_candidate(model, eval_data=eval_data, max_accuracy_drop=max_accuracy_drop, metric=metric, preprocess=preprocess, **kw)[0]


def quantize_static_candidate(
    model, calibration, *, format: str = "qdq", method: str = "minmax", per_channel: bool = False, reduce_range: bool = False,
    weight_type: str = "int8", activation_type: str = "uint8", op_types=None, exclude_nodes: Iterable[str] = (), provider: str = "cpu",
    ranges: dict | None = None, eval_data=None, max_accuracy_drop: float | None = None, metric: str | None = None, preprocess: bool = True,
) -> onnx.ModelProto:
    """A verified statically quantized model: ranges streamed from ``calibration`` (path or
    Dataset; or given as ``ranges`` for the pre-processed model), per-channel repaired or
    per-node per-tensor/float where ORT's graph is invalid, fitted to ``max_accuracy_drop``
    on ``eval_data`` (default: the calibration data) when given."""
    from .candidates import static_candidate

    kw = dict(format=format, method=method, per_channel=per_channel, reduce_range=reduce_range, weight_type=weight_type, activation_type=activation_type)
    kw.update(op_types=op_types, exclude_nodes=exclude_nodes, provider=provider, ranges=ranges, eval_data=eval_data, max_accuracy_drop=max_accuracy_drop)
    return static_candidate(resolve_model(model)[0], calibration=calibration, metric=metric, preprocess=preprocess, **kw)[0]


@blaming("model")
def quantize(model, **options) -> Result:
    """Quantize ``model`` (path or proto) to INT8 (or weight-only INT4); see the module docstring.

    Options (``QuantizeConfig``, with its defaults): ``mode``: ``auto`` (dynamic, static
    per-tensor, static per-channel: the fastest valid candidate within the budget),
    ``dynamic`` or ``static`` (needs ``calibration``).  ``max_accuracy_drop``: points of
    ``metric`` (onnxopt.metrics) allowed against the FP32 model on ``eval_data`` (default:
    the calibration data).  ``batch``: the timing batch; ``threads``: intra-op threads of
    the timing sessions (None: ORT's default).  ``timing=False`` (only with
    ``allow_slower``) skips the speed measurement: the most accurate valid candidate is
    returned, which makes the choice deterministic.  ``model_type`` (``bert``, ``gpt2``,
    ... see ``transformer.MODEL_TYPES``): the ``transformer-fusion`` pass runs first
    (``num_heads`` / ``hidden_size`` 0: detected); the fused model is what gets quantized,
    accuracy and speed are still measured against the input model.  ``fix_shapes``
    ({input: dims}): those inputs are made static first (a verified ``fix-shapes`` step);
    otherwise symbolic dims stay symbolic.  ``mode="int4"``: weight-only INT4
    (``MatMulNBits``, blocks of ``block_size`` weights, ``int4_method`` rtn | hqq) of every
    MatMul with a constant weight.  A static or INT4 result that scores below
    ``stages.COLLAPSE_SCORE`` against FP32 on the calibration data (top-1 agreement, or
    cosine for outputs that are not class scores) is refused with ``BudgetError`` unless
    ``allow_collapse``.  ``equalize``: ``auto`` adds, for each static candidate that loses
    accuracy (over budget, nodes left in float for it, or more than
    ``stages.UNBUDGETED_WARN_DROP`` points without a budget), the same configuration built
    from the model after the exact ``equalize`` and ``smooth-quant`` passes (row label
    ``... equalized``, with ``bias_correction`` in QDQ format); ``always`` adds it for every
    static candidate; ``off`` never.  ``bias_correction``: static QDQ candidates get the
    expected output shift of their quantized weights removed from the biases.
    ``weight_rounding="gptq"``: static QDQ candidates get their INT8 weights rounded again by
    GPTQ on the calibration data (``rounding``: the output error, not the weight error,
    minimised; before any bias correction).  Also:
    ``format``, ``method`` (calibration), ``per_channel``, ``reduce_range``, ``weight_type``,
    ``activation_type``, ``op_types``, ``exclude_nodes``, ``provider``, ``shapes`` (symbolic
    dims of synthesized inputs), ``calibration_batch``, ``search_samples`` / ``max_evals`` /
    ``sensitivity`` (the budget search), ``timing_runs`` / ``timing_seconds`` /
    ``min_speedup``, ``preprocess``, ``seed``.

    Stages: check the options, load and check the model (``stages.load_input``), the
    candidates and the data (``stages.check_inputs``: every user error before any work),
    then the pass through the pipeline, which verifies its model and writes the provenance.
    """
    from ..core.passes import Context
    from ..core.pipeline import run_pipeline
    from .passes import QuantizePass
    from .stages import check_inputs, load_input

    t_start = time.perf_counter()
    cfg = QuantizeConfig(**check_options(QuantizeConfig, "quantize", options)).validate()
    m, path, provider, fixed = load_input(model, cfg)
    inputs = check_inputs(m, cfg, provider, path, fixed)
    ctx = Context(data=inputs.cal, eval_data=inputs.ev, shapes=cfg.shapes, provider=provider, seed=cfg.seed, path=path)

    def record(steps) -> dict:
        return {"mode": cfg.mode, "chosen": steps[0].extras["report"].get("chosen")}

    res = run_pipeline(m, [QuantizePass.configured(cfg, inputs)], ctx, command="quantize", extra=record, check_input=False)
    step = res.steps[0]
    report = step.extras["report"]
    report["verification"] = step.verification
    report["seconds"] = round(time.perf_counter() - t_start, 2)
    return Result(res.model, report, True)
