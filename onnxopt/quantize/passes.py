"""The ``quantize`` pass: ``onnxopt.quantize`` as a recipe step (lossy)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import onnx

from ..core.passes import Context, Pass, PassResult
from ..errors import UsageError

__all__ = ["QuantizePass"]

log = logging.getLogger(__name__)


@dataclass
class _QuantizeConfig:
    mode: str = field(default="dynamic", metadata={"choices": ("auto", "dynamic", "static", "int4")})
    format: str = field(default="qdq", metadata={"choices": ("qdq", "qoperator")})
    method: str = field(default="minmax", metadata={"choices": ("minmax", "percentile", "entropy", "auto")})
    per_channel: bool = False
    reduce_range: bool = False
    weight_type: str = field(default="int8", metadata={"choices": ("int8", "uint8")})
    activation_type: str = field(default="uint8", metadata={"choices": ("int8", "uint8")})
    op_types: list[str] | None = None
    exclude_nodes: list[str] | None = None
    allow_slower: bool = True
    batch: int = 32
    preprocess: bool = True
    block_size: int = 32
    int4_method: str = field(default="rtn", metadata={"choices": ("rtn", "hqq")})
    allow_collapse: bool = False
    equalize: str = field(default="auto", metadata={"choices": ("auto", "always", "off")})
    bias_correction: bool = False

    def check(self):
        if self.batch <= 0:
            return "batch must be positive"
        if self.op_types is not None:
            from .config import op_types_problem

            return op_types_problem(self.op_types, self.mode)
        return None


class QuantizePass(Pass):
    """INT8 quantization with ONNX Runtime (dynamic / static / auto; int4 weight-only), repaired to validity.

    Static mode needs calibration data in the context (``onnxopt run --calibration``;
    dynamic mode, the default, runs without it: it is listed in ``needs`` for static); with
    a budget in the context the most sensitive nodes stay in float until it holds (on the
    evaluation data, else the calibration data).  ``allow_slower = false`` makes the step
    fail (exit 3) when no candidate beats FP32 at ``batch``; by default a single-mode step
    is not timed, so its output is deterministic (``mode = "auto"`` always times).
    """

    key = "quantize"
    needs = ("calibration",)
    exact = False
    idempotent = False

    Config = _QuantizeConfig

    def call(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        from .api import quantize

        c = self.config
        if c.mode == "static" and ctx.data is None:
            raise UsageError("step 'quantize' (mode static) needs calibration data: pass --calibration DATA")
        budget = ctx.budget
        eval_data = ctx.eval_data if ctx.eval_data is not None else (ctx.data if budget is not None else None)
        res = quantize(
            model,
            mode=c.mode,
            format=c.format,
            calibration=ctx.data,
            method=c.method,
            per_channel=c.per_channel,
            reduce_range=c.reduce_range,
            weight_type=c.weight_type,
            activation_type=c.activation_type,
            op_types=c.op_types,
            exclude_nodes=c.exclude_nodes,
            provider=ctx.provider,
            max_accuracy_drop=budget.max_drop if budget is not None else None,
            eval_data=eval_data,
            metric=getattr(budget, "metric", None),
            allow_slower=c.allow_slower,
            shapes=ctx.shapes,
            batch=c.batch,
            preprocess=c.preprocess,
            timing=c.mode == "auto" or not c.allow_slower,
            seed=ctx.seed,
            block_size=c.block_size,
            int4_method=c.int4_method,
            allow_collapse=c.allow_collapse,
            equalize=c.equalize,
            bias_correction=c.bias_correction,
        )
        rep = res.report
        chosen = next((x for x in rep["candidates"] if x["label"] == rep.get("chosen")), None)
        counts = {"chosen": rep.get("chosen") or "none", "quantized_nodes": chosen["quantized_nodes"] if chosen else 0}
        if chosen:
            counts["excluded_nodes"] = len(chosen.get("excluded") or [])
            counts["fallbacks"] = len(chosen.get("fallbacks") or [])
        notes = list(rep.get("notes", []))
        details = {"candidates": [{k: v for k, v in x.items() if k not in ("seconds", "speed")} for x in rep["candidates"]], "metric": rep["metric"], "preprocess": rep["preprocess"]}
        # the pipeline writes its own provenance: put back the input's (if any)
        original = {p.key: p.value for p in model.metadata_props}
        kept = [(p.key, p.value) for p in res.model.metadata_props if p.key != "onnxopt"]
        if "onnxopt" in original:
            kept.append(("onnxopt", original["onnxopt"]))
        del res.model.metadata_props[:]
        for k, v in kept:
            res.model.metadata_props.add(key=k, value=v)
        return self.result(res.model, bool(rep.get("chosen")), counts=counts, notes=notes, details=details)
