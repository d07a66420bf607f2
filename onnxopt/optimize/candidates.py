"""Candidate producers: from the preprocessed FP32 model to the models ``optimize`` compares.

A producer takes the base model (the recipe's preprocessing applied: simplified FP32), a
``BuildEnv`` (target, provider, data, evaluator, budget) and its validated config, and
returns ``Candidate`` objects.  A producer that cannot apply returns one candidate with
``refused`` set to the reason ("needs --calibration", "no MatMul/Gemm to quantize") instead
of raising, so the decision table can say why it is absent.  Producers never time models
and never write files; selection (``select.py``) verifies, scores and times them.

INT8 and INT4 candidates come from ``onnxopt.quantize.candidates`` (budget search,
per-node repair of invalid graphs).  ``int8-dynamic`` with ``plain_ort`` adds
``int8-dynamic-ort``: ORT's own ``quantize_dynamic`` applied to the input model as it is,
so that the configuration a user of ORT's tool would get is always in the comparison.  Pruning comes from ``onnxopt.prune``;
a recipe without an ``[optimize]`` table contributes its lossy steps as one candidate.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from ..errors import OnnxoptError
from ..runtime import release_memory

__all__ = ["Candidate", "BuildEnv", "PRODUCERS", "build_candidates", "is_bert_like", "speed_gate"]

log = logging.getLogger(__name__)

# samples of the evaluation data the INT8 budget search ranks and bisects on (then it
# confirms on all of them): ranking 18 units on 100 encoder sentences cost 3x as much
SEARCH_SAMPLES = 32
GATE_SECONDS = 3.0  # the interleaved timing that decides whether a static candidate can still win


@dataclass
class Candidate:
    """One model to compare.  ``refused``: why it could not be built (model is None)."""

    name: str
    kind: str
    model: onnx.ModelProto | None
    lossless: bool = False
    params: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    refused: str | None = None
    timeable: bool = True
    source: str = "onnxopt"
    build_seconds: float = 0.0
    steps: list = field(default_factory=list)  # PassReports of recipe candidates
    stored: Path | None = None  # the model on disk after ``spill`` (``model`` is then None)
    options: Any = None  # the session options the model carries (read when spilled)

    @property
    def built(self) -> bool:
        return self.model is not None or self.stored is not None

    def spill(self, folder: Path) -> None:
        """Write the model into ``folder`` and let go of the proto: ``optimize`` holds one
        candidate proto at a time, and sessions load the file."""
        if self.model is None:
            return
        from ..io import save_model

        self.options = self.carried()
        self.stored = save_model(self.model, Path(folder) / f"{len(list(Path(folder).iterdir()))}.onnx")
        self.model = None

    def load(self) -> onnx.ModelProto | None:
        """The model (read back from disk when spilled); None when it was not built."""
        return self.model if self.model is not None or self.stored is None else _load_out(self.stored)

    def runnable(self):
        """What a session loads: the proto, else the spilled file's path."""
        return self.model if self.model is not None else self.stored

    def carried(self):
        """The session options the model carries (``serving.carry``), or None."""
        from ..serving.carry import carried_options

        return self.options if self.model is None else carried_options(self.model)


@dataclass
class BuildEnv:
    target: str  # cpu | cuda
    provider: str  # where candidates load and are timed
    calibration: object | None  # Dataset
    evaluator: object  # metrics.Evaluator, reference = the input model
    budget: object  # metrics.Budget
    shapes: dict | None = None
    seed: int = 0
    reference: onnx.ModelProto | Path | None = None  # the input model (its file while optimize builds the candidates)
    reference_options: Any = None  # the session options the input carries, when ``reference`` is a file
    reference_key: tuple | None = None  # select.graph_key of the input, once verify_candidate needed it
    # onnxopt.quantize.engine.SharedWork: pre-processing, ranges, sensitivity ranking shared
    # by the INT8 candidates of one run (computed once); None: each candidate on its own
    shared: object | None = None
    search_samples: int = SEARCH_SAMPLES
    feed: dict | None = None  # the timing feed: with it, a static candidate that cannot win skips its budget search
    threads: int = 0
    built: list = field(default_factory=list)  # candidates built so far (build_candidates appends)
    gate_ratios: dict = field(default_factory=dict)  # speed_gate: rival name -> Speedup vs the input
    store: Path | None = None  # a folder: each candidate is spilled there once ``check`` has seen it
    objective: str = "latency"  # what the choice weighs (the speed gate judges latency only)
    min_gain: float = 0.05  # how much faster than the best lossless candidate a lossy one must be


def is_bert_like(model: onnx.ModelProto) -> bool:
    """Attention + layer norm: Softmax fed by MatMul, and LayerNormalization (or the
    ReduceMean/Sub/Pow pattern exporters emit), and at least 4 MatMul nodes."""
    ops = [n.op_type for n in model.graph.node]
    if "Attention" in ops or "MultiHeadAttention" in ops:
        return True
    has_ln = "LayerNormalization" in ops or "SkipLayerNormalization" in ops or (ops.count("ReduceMean") >= 2 and "Pow" in ops)
    return "Softmax" in ops and ops.count("MatMul") >= 4 and has_ln


# --- helpers ------------------------------------------------------------------------


def _budget_args(env: BuildEnv) -> dict:
    """The provider, evaluation data and budget a quantize candidate is fitted with."""
    return {"provider": env.provider, "eval_data": env.evaluator.dataset, "max_accuracy_drop": env.budget.max_drop, "metric": env.evaluator.metric}


def _why(exc: OnnxoptError) -> str:
    """A producer's failure as a table reason; budget failures read "over budget: ..."
    (a candidate stopped because it cannot win says so instead)."""
    from ..errors import BudgetError
    from ..quantize.engine import CANNOT_WIN

    return f"over budget: {exc}" if isinstance(exc, BudgetError) and f"{CANNOT_WIN}:" not in str(exc) else str(exc)


def speed_gate(env: BuildEnv, name: str):
    """``gate(model) -> reason | None`` for a static candidate's budget search, or None when
    nothing built so far could make the search moot (or the choice does not weigh latency).
    The fully quantized model is timed against the input, and so is each candidate built
    before it that it must beat: those ``onnxopt.quantize`` fitted to the budget (INT8/INT4),
    and the lossless ones, which a lossy model must beat by ``min_gain`` to be chosen (each
    timed once per run, one pair of sessions at a time).  When even the upper end of its 95%
    CI is below that bar, leaving nodes in float (which only adds float ops and Q/DQ
    boundaries) cannot make it win, and the search is skipped.  One exception is not
    timed: the search's first group, a static model's nodes without weights left in float
    together (``sensitivity._scoped``), can run a little faster than the fully quantized
    model (the MiniLM encoder, batch 1, two threads: 2.72x vs 2.59x against FP32, int8-dynamic
    2.61x in the same run); timing it here too would cost a build per candidate, and a search
    the encoder's ``optimize`` (68 s) cannot afford within its 2 minutes."""
    if env.objective != "latency":
        return None
    lossy = [c for c in env.built if c.built and c.source == "onnxopt.quantize" and not c.lossless]
    lossless = [c for c in env.built if c.built and c.lossless and c.timeable]
    if not (lossy or lossless) or env.reference is None or env.feed is None:
        return None

    def gate(full: onnx.ModelProto) -> str | None:
        from .select import Timer

        timer = Timer(env.reference, env.feed, env.provider, threads=env.threads, duration=GATE_SECONDS * 2 / 3,  # per pair, as in a 3-way run
                      input_config=env.reference_options)
        for c in lossy + lossless:
            if c.name not in env.gate_ratios:
                timer.add(c.name, c.runnable(), c.carried())
                env.gate_ratios[c.name] = timer.measure([c.name])[c.name][0]
        timer.add(name, full)
        mine = timer.measure([name])[name][0]
        bars = [(env.gate_ratios[c.name].ratio, f"{c.name} (within budget) {env.gate_ratios[c.name].ratio:.2f}x") for c in lossy]
        bars += [(env.gate_ratios[c.name].ratio * (1 + env.min_gain),
                  f"{c.name} (lossless) {env.gate_ratios[c.name].ratio:.2f}x, to beat by {env.min_gain:.0%}") for c in lossless]
        bar, best = max(bars, key=lambda t: t[0])
        if mine.high < bar:
            return (
                f"fully quantized it runs {mine.ratio:.2f}x [{mine.low:.2f}, {mine.high:.2f}] vs the input, {best}; "
                "nodes left in float only slow it, so the budget search was skipped"
            )
        log.info("%s: fully quantized %.2fx vs %s: budget search goes on", name, mine.ratio, best)
        return None

    return gate


class _DropPreprocessHint(logging.Filter):
    """ORT's quantizer logs a "consider pre-processing" hint (the base model is already
    preprocessed) and per-channel axis notes for 1-D weights on the root logger: noise here."""

    def filter(self, record):
        msg = record.getMessage()
        return "pre-processing before quantization" not in msg and "is out-of-range for weight" not in msg


@contextlib.contextmanager
def _quiet_quantizer():
    f = _DropPreprocessHint()
    root = logging.getLogger()
    targets = [root, *root.handlers]
    for t in targets:
        t.addFilter(f)
    try:
        yield
    finally:
        for t in targets:
            t.removeFilter(f)


def _shared(env: BuildEnv):
    """The run's ``onnxopt.quantize`` ``SharedWork`` (made on first use)."""
    from ..quantize.engine import SharedWork

    if env.shared is None:
        env.shared = SharedWork()
    return env.shared


_QUANT_OPS = {"DynamicQuantizeLinear", "QuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul",
              "MatMulIntegerToFloat"}


def _load_out(path: Path) -> onnx.ModelProto:
    from ..io import load_model

    return load_model(path)


# --- producers ------------------------------------------------------------------------


def produce_fp32(base: onnx.ModelProto, env: BuildEnv, cfg) -> list[Candidate]:
    return [Candidate("fp32", "fp32", base, lossless=True, notes=["the preprocessed (simplified) FP32 model"])]


def produce_int8_dynamic(base: onnx.ModelProto, env: BuildEnv, cfg) -> list[Candidate]:
    """``int8-dynamic`` from ``onnxopt.quantize`` (budget search, per-node repair); with
    ``plain_ort`` also ``int8-dynamic-ort``: ORT's ``quantize_dynamic`` applied to the *input*
    model exactly as a user of ORT's tool would, so that the table always holds that
    configuration too."""
    from ..quantize.candidates import dynamic_candidate

    name = "int8-dynamic"
    params = dataclasses.asdict(cfg)
    ops = {n.op_type for n in base.graph.node}
    if not any(o in ops for o in cfg.op_types or []):
        return [Candidate(name, name, None, params=params, refused=f"no {'/'.join(cfg.op_types)} node to quantize")]
    if env.provider == "cuda":
        return [Candidate(name, name, None, params=params, refused="dynamic INT8 ops (MatMulInteger, DynamicQuantizeLinear) have no CUDA kernels")]
    try:
        model, notes = dynamic_candidate(base, op_types=list(cfg.op_types), weight_type=cfg.weight_type, per_channel=cfg.per_channel,
                                         reduce_range=cfg.reduce_range, **_budget_args(env), shared=_shared(env), evaluator=env.evaluator)
        out = [Candidate(name, name, model, params=params, notes=list(notes)[:6], source="onnxopt.quantize")]
    except OnnxoptError as exc:
        out = [Candidate(name, name, None, params=params, refused=_why(exc), source="onnxopt.quantize")]
    if cfg.plain_ort and env.reference is not None:
        out.append(_dynamic_ort("int8-dynamic-ort", env.reference, cfg, {**params, "built_from": "input model"}))
    return out


def _dynamic_ort(name: str, model: onnx.ModelProto, cfg, params: dict) -> Candidate:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = "onnxruntime.quantization"
    weight_type = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[cfg.weight_type]
    with tempfile.TemporaryDirectory(prefix="onnxopt-opt-") as tmp:
        path = Path(tmp) / "dyn.onnx"
        try:
            with _quiet_quantizer():
                given = copy.deepcopy(model) if isinstance(model, onnx.ModelProto) else model  # a path: ORT reads the file
                quantize_dynamic(given, path, op_types_to_quantize=list(cfg.op_types), per_channel=cfg.per_channel,
                                 reduce_range=cfg.reduce_range, weight_type=weight_type)
        except Exception as exc:
            why = f"onnxruntime quantize_dynamic failed: {' '.join(str(exc).split())[:200]}"
            return Candidate(name, "int8-dynamic", None, params=params, refused=why, source=src)
        q = _load_out(path)
    n = sum(1 for x in q.graph.node if x.op_type in _QUANT_OPS)
    if not n:
        return Candidate(name, "int8-dynamic", None, params=params, refused="the quantizer left every node in FP32", source=src)
    notes = [f"ORT quantize_dynamic, op types {', '.join(cfg.op_types)}: {n} quantized nodes"]
    return Candidate(name, "int8-dynamic", q, params=params, notes=notes, source=src)


def produce_int8_static(base: onnx.ModelProto, env: BuildEnv, cfg) -> list[Candidate]:
    from ..quantize.candidates import static_candidate

    variants = cfg.per_channel if isinstance(cfg.per_channel, list) else [cfg.per_channel]
    out = []
    for pc in dict.fromkeys(bool(v) for v in variants):
        name = "int8-static" + ("-per-channel" if pc else "")
        params = {**dataclasses.asdict(cfg), "per_channel": pc}
        if env.calibration is None:
            out.append(Candidate(name, "int8-static", None, params=params, refused="needs calibration data (--calibration)"))
            continue
        if env.provider == "cuda":
            why = "QDQ INT8 without TensorRT is not faster on CUDA; not built for a CUDA target"
            out.append(Candidate(name, "int8-static", None, params=params, refused=why))
            continue
        search = cfg.budget_search
        try:
            model, notes = static_candidate(
                base, calibration=env.calibration, per_channel=pc, method=cfg.method, activation_type=cfg.activation_type, weight_type=cfg.weight_type,
                op_types=cfg.op_types, eval_data=env.evaluator.dataset if search else None, max_accuracy_drop=env.budget.max_drop if search else None,
                metric=env.evaluator.metric, provider=env.provider, shared=_shared(env), evaluator=env.evaluator if search else None,
                search_samples=env.search_samples, gate=speed_gate(env, name) if search else None,
            )
            out.append(Candidate(name, "int8-static", model, params=params, notes=list(notes)[:6], source="onnxopt.quantize"))
        except OnnxoptError as exc:
            out.append(Candidate(name, "int8-static", None, params=params, refused=_why(exc), source="onnxopt.quantize"))
    return out


def produce_prune(base: onnx.ModelProto, env: BuildEnv, cfg) -> list[Candidate]:
    """``onnxopt.prune`` per ratio (or its own budget search when no ratio is listed);
    its result is verified again here like every candidate."""
    from ..prune.api import prune

    ratios = cfg.ratio if isinstance(cfg.ratio, list) else [cfg.ratio]
    todo = [(f"prune-{cfg.method}-{r:g}", r) for r in ratios] or [(f"prune-{cfg.method}-search", None)]
    # the recipe's value is the amount: sparsity (magnitude), channel ratio, or the number of residual blocks to remove
    amount = {"magnitude": "sparsity", "blocks": "blocks"}.get(cfg.method, "ratio")
    out = []
    for name, r in todo:
        params = {"method": cfg.method, "ratio": r}
        kw = {} if r is None else {amount: int(r) if amount == "blocks" else r}
        try:
            res = prune(base, method=cfg.method, calibration=env.calibration, eval_data=env.evaluator.dataset, max_accuracy_drop=env.budget.max_drop,
                        metric=env.evaluator.metric, provider=env.provider, shapes=env.shapes, timing_runs=0, **kw)
            notes = [n for s in res.report.get("steps", []) for n in s.get("notes", [])][:5]
            out.append(Candidate(name, "prune", res.model, params=params, notes=notes, source="onnxopt.prune"))
        except OnnxoptError as exc:
            out.append(Candidate(name, "prune", None, params=params, refused=_why(exc), source="onnxopt.prune"))
    return out


def matmul_weight_share(model: onnx.ModelProto) -> tuple[int, float]:
    """(MatMul/Gemm nodes with a constant 2-D float weight, the share of the model's float
    weight elements they hold): how MatMul-heavy the model is for weight-only INT4."""
    import numpy as np

    inits = {t.name: t for t in model.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    total = sum(int(np.prod(t.dims)) for t in inits.values()) or 1
    names = {
        n.input[1]
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits and len(inits[n.input[1]].dims) == 2
    }
    nodes = sum(1 for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in names)
    return nodes, sum(int(np.prod(inits[w].dims)) for w in names) / total


def produce_int4(base: onnx.ModelProto, env: BuildEnv, cfg) -> list[Candidate]:
    """``int4``: weight-only INT4 (``MatMulNBits``) from ``onnxopt.quantize`` for
    MatMul-heavy models (``Int4Config``), fitted to the budget like the INT8 candidates."""
    name = "int4"
    params = dataclasses.asdict(cfg)
    count, share = matmul_weight_share(base)
    if count < cfg.min_matmuls or share < cfg.min_weight_share:
        why = (
            f"not MatMul-heavy: {count} MatMul/Gemm with a constant weight holding {share:.0%} of the weights (needs >= "
            f"{cfg.min_matmuls} and >= {cfg.min_weight_share:.0%})"
        )
        return [Candidate(name, name, None, params=params, refused=why)]
    from ..quantize.candidates import int4_candidate

    try:
        model, notes = int4_candidate(base, block_size=cfg.block_size, method=cfg.method, **_budget_args(env))
    except OnnxoptError as exc:
        return [Candidate(name, name, None, params=params, refused=_why(exc), source="onnxopt.quantize")]
    return [Candidate(name, name, model, params=params, notes=list(notes)[:6], source="onnxopt.quantize")]


def produce_fp16(base: onnx.ModelProto, env: BuildEnv, cfg) -> list[Candidate]:
    from ..core.passes import Context
    from .fp16 import Fp16Pass

    params = dataclasses.asdict(cfg)
    try:
        res = Fp16Pass(keep_fp32=list(cfg.keep_fp32)).call(base, Context(provider=env.provider))
    except OnnxoptError as exc:
        return [Candidate("fp16", "fp16", None, params=params, refused=str(exc))]
    n = res.report.counts
    kept = ", ".join(f"{k} x{v}" for k, v in res.report.details["kept_fp32"].items())
    notes = [
        f"{n['nodes_fp16']} nodes FP16, {n['nodes_fp32']} FP32{' (' + kept + ')' if kept else ''}, {n['casts_added']} Casts, "
        f"{n['values_clipped']} weights clipped"
    ]
    timeable = env.provider == "cuda"
    if not timeable:
        notes.append("not on CUDA: checked on a few samples (ONNX reference evaluator, else onnxruntime/cpu); not timed")
    return [Candidate("fp16", "fp16", res.model, params=params, notes=notes, timeable=timeable)]


def produce_recipe(base: onnx.ModelProto, env: BuildEnv, cfg, *, passes=None, recipe_name: str = "") -> list[Candidate]:
    """The remaining steps of a recipe without an ``[optimize]`` table, as one candidate."""
    from ..core.passes import Context
    from ..core.pipeline import run_pipeline

    name, passes = f"recipe:{recipe_name}", list(passes or [])
    ctx = Context(data=env.calibration, eval_data=env.evaluator.dataset, shapes=env.shapes, provider=env.provider, seed=env.seed, budget=env.budget)
    try:
        res = run_pipeline(base, passes, ctx, command=f"optimize {name}")
    except OnnxoptError as exc:
        return [Candidate(name, "recipe", None, refused=_why(exc))]
    return [Candidate(name, "recipe", res.model, lossless=all(p.exact for p in passes), params={"steps": [p.key for p in passes]}, steps=res.steps)]


def produce_ort_offline(base: onnx.ModelProto, env: BuildEnv, cfg) -> list[Candidate]:
    """ONNX Runtime's own optimized graph for the target (``serving.offline``): exact up to
    ORT's fusions, but bound to this machine, so it is weighed like a lossy candidate (it
    must beat the FP32 model by ``min_gain`` on the objective)."""
    from ..serving.offline import CAVEAT, ort_optimized

    params = {"level": cfg.level}
    try:
        model = ort_optimized(base, env.provider, level=cfg.level)
    except OnnxoptError as exc:
        return [Candidate("ort-offline", "ort-offline", None, params=params, refused=_why(exc))]
    notes = [CAVEAT, "carries graph_optimization_level=disable (the optimization is done)"]
    return [Candidate("ort-offline", "ort-offline", model, params=params, notes=notes, source="onnxruntime")]


PRODUCERS: dict[str, Callable] = {
    "fp32": produce_fp32,
    "int8-dynamic": produce_int8_dynamic,
    "int8-static": produce_int8_static,
    "int4": produce_int4,
    "prune": produce_prune,
    "fp16": produce_fp16,
    "ort-offline": produce_ort_offline,
}


def build_candidates(base: onnx.ModelProto, env: BuildEnv, specs, *, recipe_tail=None, recipe_name: str = "", check=None) -> list[Candidate]:
    """Every candidate of ``specs`` (plan order), each with its build time.  ``check(c)`` is
    called on each as soon as it is built (``optimize`` verifies and scores it there); then,
    with ``env.store``, the candidate is spilled to that folder."""
    out: list[Candidate] = []
    for spec in specs:
        t0 = time.perf_counter()
        made = (produce_recipe(base, env, spec.config, passes=recipe_tail, recipe_name=spec.kind.partition(":")[2] or recipe_name)
                if spec.kind.startswith("recipe:") else PRODUCERS[spec.kind](base, env, spec.config))
        dt = (time.perf_counter() - t0) / max(len(made), 1)
        for c in made:
            c.build_seconds = round(dt, 3)
            log.info("candidate %s: %s", c.name, c.refused or "built")
            if check is not None:
                check(c)
            if env.store is not None:
                c.spill(env.store)
                release_memory()  # its proto and sessions were freed: the pages go back before the next build
        out.extend(made)
        env.built.extend(made)
    return out
