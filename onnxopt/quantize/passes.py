"""The ``quantize`` pass (lossy): one quantize run, as a recipe step and as the one step
that ``onnxopt.quantize`` runs through the pipeline.

``QuantizePass.call`` runs the stages of ``stages`` (candidates and data checked,
prepare, ranges, candidates, equalized candidates, collapse check, timing, choice); the
pipeline verifies the model it returns and writes the provenance.  The run's full report
(the candidates table, timings) goes to ``PassReport.extras["report"]``; the step's own
report holds the chosen candidate's counts, the notes and the candidates without timings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

import onnx

from ..core.passes import Context, Pass, PassResult
from ..errors import UsageError
from .config import EQUALIZE, FORMATS, INT4_METHODS, INT_TYPES, MODES, ROUNDINGS, op_types_problem

if TYPE_CHECKING:  # the quantize modules are imported when the pass runs (``onnxopt passes`` stays light)
    from .config import QuantizeConfig
    from .stages import Inputs

__all__ = ["QuantizePass"]

log = logging.getLogger(__name__)


@dataclass
class _QuantizeConfig:
    mode: str = field(default="dynamic", metadata={"choices": MODES})
    format: str = field(default="qdq", metadata={"choices": FORMATS})
    method: str = field(default="minmax", metadata={"choices": ("minmax", "percentile", "entropy", "auto")})
    per_channel: bool = False
    reduce_range: bool = False
    weight_type: str = field(default="int8", metadata={"choices": INT_TYPES})
    activation_type: str = field(default="uint8", metadata={"choices": INT_TYPES})
    op_types: list[str] | None = None
    exclude_nodes: list[str] | None = None
    allow_slower: bool = True
    batch: int = 32
    preprocess: bool = True
    block_size: int = 32
    int4_method: str = field(default="rtn", metadata={"choices": INT4_METHODS})
    allow_collapse: bool = False
    equalize: str = field(default="auto", metadata={"choices": EQUALIZE})
    bias_correction: bool = False
    weight_rounding: str = field(default="nearest", metadata={"choices": ROUNDINGS})

    def check(self):
        if self.batch <= 0:
            return "batch must be positive"
        return op_types_problem(self.op_types, self.mode) if self.op_types is not None else None


class QuantizePass(Pass):
    """INT8 quantization with ONNX Runtime (dynamic / static / auto; int4 weight-only), repaired to validity.

    Static mode needs calibration data in the context (``onnxopt run --calibration``;
    dynamic mode, the default, runs without it: it is listed in ``needs`` for static); with
    a budget in the context the most sensitive nodes stay in float until it holds (on the
    evaluation data, else the calibration data).  ``allow_slower = false`` makes the step
    fail (exit 3) when no candidate beats FP32 at ``batch``; by default a single-mode step
    is not timed, so its output is deterministic (``mode = "auto"`` always times).
    ``onnxopt.quantize`` runs it with every option (``configured``).
    """

    key = "quantize"
    needs = ("calibration",)
    exact = False
    idempotent = False

    Config = _QuantizeConfig

    settings: QuantizeConfig | None = None  # every option, when ``onnxopt.quantize`` runs it
    inputs: Inputs | None = None  # what ``onnxopt.quantize`` checked before the pipeline

    @classmethod
    def configured(cls, cfg: QuantizeConfig, inputs: Inputs | None = None) -> QuantizePass:
        """The pass of ``onnxopt.quantize``: ``cfg`` (checked), and ``inputs`` (its model's
        candidates and data, ``stages.check_inputs``) when already checked.  Its recipe
        parameters (report, provenance) are ``cfg``'s."""
        from .api import as_name_list

        # the recipe's types (a caller's 1 for True, a tuple for a list, "a,b" for names)
        params = {f.name: type(f.default)(getattr(cfg, f.name)) for f in fields(_QuantizeConfig) if isinstance(f.default, (bool, int))}
        params.update({f.name: getattr(cfg, f.name) for f in fields(_QuantizeConfig) if isinstance(f.default, str)})
        params.update(op_types=as_name_list(cfg.op_types) or None, exclude_nodes=as_name_list(cfg.exclude_nodes) or None)
        step = cls(_where="quantize", _error=UsageError, **params)
        step.settings, step.inputs = cfg, inputs
        return step

    def __call__(self, model: onnx.ModelProto | None, ctx: Context | None = None, *, inplace: bool = False) -> PassResult:
        """As ``Pass.__call__``, without the copy of the input: no stage changes it (each
        works on a copy of what it changes), and a model up to ``io.LARGE_MODEL_BYTES``
        costs one copy less at the peak."""
        return super().__call__(model, ctx, inplace=True)

    def _recipe_settings(self, ctx: Context) -> QuantizeConfig:
        """The recipe step's options: its parameters, and data, provider, shapes, seed and
        budget from the context (evaluated on the calibration data under a budget without
        evaluation data)."""
        from .config import QuantizeConfig

        c = self.config
        if c.mode == "static" and ctx.data is None:
            raise UsageError("step 'quantize' (mode static) needs calibration data: pass --calibration DATA")
        budget = ctx.budget
        eval_data = ctx.eval_data if ctx.eval_data is not None else (ctx.data if budget is not None else None)
        params = {f.name: getattr(c, f.name) for f in fields(_QuantizeConfig)}
        return QuantizeConfig(
            **params, calibration=ctx.data, provider=ctx.provider, eval_data=eval_data, shapes=ctx.shapes, seed=ctx.seed,
            max_accuracy_drop=budget.max_drop if budget is not None else None, metric=getattr(budget, "metric", None),
            timing=c.mode == "auto" or not c.allow_slower,
        ).validate()  # fmt: skip

    def call(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        from ..runtime import resolve_provider
        from . import stages

        cfg = self.settings or self._recipe_settings(ctx)
        provider = resolve_provider(cfg.provider)
        # the checked inputs' notes are the run's first ones (copied: a second call starts afresh)
        inputs = replace(self.inputs, notes=list(self.inputs.notes)) if self.inputs else stages.check_inputs(model, cfg, provider, ctx.path)
        run = stages.Run(cfg, model, inputs, provider)
        for stage in (stages.prepare, stages.measure_ranges, stages.build_candidates, stages.add_equalized, stages.collapse, stages.time_candidates):
            stage(run)
        out, chosen = stages.choose(run)
        counts, notes, details = _summary(run.report)
        res = self.result(out, chosen is not None, counts=counts, notes=notes, details=details)
        res.report.extras.update(report=run.report, chosen=chosen)
        return res


def _summary(rep: dict) -> tuple[dict, list[str], dict]:
    """(counts, notes, details) of the step's report (and provenance) from the run's report:
    the chosen candidate's counts, the notes, and the candidates table without timings."""
    chosen = next((x for x in rep["candidates"] if x["label"] == rep.get("chosen")), None)
    counts = {"chosen": rep.get("chosen") or "none", "quantized_nodes": chosen["quantized_nodes"] if chosen else 0}
    if chosen:
        counts.update(excluded_nodes=len(chosen.get("excluded") or []), fallbacks=len(chosen.get("fallbacks") or []))
    candidates = [{k: v for k, v in x.items() if k not in ("seconds", "speed")} for x in rep["candidates"]]
    return counts, list(rep.get("notes", [])), {"candidates": candidates, "metric": rep["metric"], "preprocess": rep["preprocess"]}
