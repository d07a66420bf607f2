"""Entry points for ``onnxopt.optimize``: one verified INT8 candidate and notes on it.

Both return ``(model, notes)``: a model that passes the checker and loads (and runs) in ORT
on ``provider``, with invalid nodes repaired per node and, when a budget is given, the most
sensitive nodes left in float until it holds; ``notes`` say what was rewritten, repaired or
excluded.  They raise ``OnnxoptError`` subclasses (``BudgetError`` when nothing is
quantizable or the budget cannot be met, ``VerificationError`` when no valid model can be
built).  They do not time anything: speed is the caller's decision.
"""

from __future__ import annotations

import onnx

from .api import as_name_list, dataset_view, finish_candidate, quantize_candidate
from .config import QuantConfig

__all__ = ["dynamic_candidate", "static_candidate", "int4_candidate"]


def dynamic_candidate(
    model: onnx.ModelProto, *, op_types=None, weight_type: str = "int8", per_channel: bool = False, reduce_range: bool = False, exclude_nodes=(),
    provider: str = "cpu", eval_data=None, max_accuracy_drop: float | None = None, metric: str | None = None, preprocess: bool = True, shared=None,
    evaluator=None,
) -> tuple[onnx.ModelProto, list[str]]:
    """Dynamic INT8 (MatMul / Gemm-as-MatMul / Attention / ...; Conv on CPU only when asked).
    ``shared`` / ``evaluator``: as for ``static_candidate``."""
    cfg = QuantConfig(
        mode="dynamic", per_channel=per_channel, reduce_range=reduce_range, weight_type=weight_type, op_types=tuple(as_name_list(op_types)) or None,
        exclude=frozenset(as_name_list(exclude_nodes)),
    )  # fmt: skip
    kw = dict(eval_data=eval_data, max_accuracy_drop=max_accuracy_drop, metric=metric, provider=provider, preprocess=preprocess)
    return finish_candidate(quantize_candidate(model, cfg, shared=shared, evaluator=evaluator, **kw))


def static_candidate(
    model: onnx.ModelProto, *, calibration, per_channel: bool = False, method: str = "minmax", activation_type: str = "uint8", weight_type: str = "int8",
    op_types=None, format: str = "qdq", reduce_range: bool = False, exclude_nodes=(), eval_data=None, max_accuracy_drop: float | None = None,
    metric: str | None = None, provider: str = "cpu", preprocess: bool = True, shared=None, evaluator=None, search_samples: int = 200, gate=None,
    ranges: dict | None = None,
) -> tuple[onnx.ModelProto, list[str]]:
    """Static INT8 with ranges streamed from ``calibration`` (Dataset or DATA path).

    ``shared`` (``engine.SharedWork``, one per model and run): the pre-processed model,
    the ranges and the sensitivity ranking of an earlier candidate are reused (a second,
    per-channel variant then costs its builds and the bisection only); ``evaluator``: the
    caller's ``Evaluator`` on ``eval_data`` (reference outputs not recomputed);
    ``search_samples``: the budget search ranks and bisects on that many samples of the
    evaluation data, then confirms on all of it; ``gate(model) -> reason | None``: asked
    with the fully quantized model before the budget search, a reason raises
    ``BudgetError`` ("cannot win: ...") instead of searching; ``ranges``: the calibration
    ranges of the pre-processed model, when already measured."""
    from ..data import dataset_for

    cfg = QuantConfig(
        mode="static", format=format, method=method, per_channel=per_channel, reduce_range=reduce_range, weight_type=weight_type,
        activation_type=activation_type, op_types=tuple(as_name_list(op_types)) or None, exclude=frozenset(as_name_list(exclude_nodes)),
    )  # fmt: skip
    kw = dict(eval_data=eval_data, max_accuracy_drop=max_accuracy_drop, metric=metric, provider=provider, preprocess=preprocess, search_samples=search_samples)
    kw.update(ranges=ranges, shared=shared, evaluator=evaluator, gate=gate)
    return finish_candidate(quantize_candidate(model, cfg, calibration=dataset_for(model, dataset_view(calibration)), **kw))


def int4_candidate(
    model: onnx.ModelProto, *, block_size: int = 32, method: str = "rtn", exclude_nodes=(), eval_data=None, max_accuracy_drop: float | None = None,
    metric: str | None = None, provider: str = "cpu", preprocess: bool = True,
) -> tuple[onnx.ModelProto, list[str]]:
    """Weight-only INT4 (``MatMulNBits``) of every MatMul / Gemm with a constant 2-D weight."""
    cfg = QuantConfig(mode="int4", block_size=block_size, int4_method=method, exclude=frozenset(as_name_list(exclude_nodes)))
    res = quantize_candidate(model, cfg, eval_data=eval_data, max_accuracy_drop=max_accuracy_drop, metric=metric, provider=provider, preprocess=preprocess)
    return finish_candidate(res)
