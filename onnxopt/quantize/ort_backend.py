"""ONNX Runtime's quantizer, driven with onnxopt's own calibration ranges.

``quantize_with_ort`` does what ``quantize_static`` / ``quantize_dynamic`` do after
calibration (ORT shape inference, opset update, argument check, ``QDQQuantizer`` /
``ONNXQuantizer``) but takes the activation ranges as ``{tensor: (lo, hi)}`` computed by
``collect.collect_ranges``, so ORT's calibrators (which keep every batch's outputs) never
run.  Nothing is written to the output location; temporary files stay in a temp folder.

Per-channel QDQ is requested weight by weight (``TensorQuantOverrides`` with an ``axis``)
rather than with ORT's global ``per_channel`` flag, so that single nodes can fall back to
per-tensor while the others stay per-channel (see ``validity``).  ORT's own warnings
(``logging.warning`` on the root logger) are captured into the returned notes.

A lazily loaded model (``io.is_lazy``, the large-model path) is quantized with its weights
left in their files (``ort_lazy``: ORT reads one weight at a time); where ORT reads a weight
some other way, it is quantized again with the weights read in once (``_reload_large``).
Either way the result is spilled to a temporary file and loaded back lazily (``_spill``).
"""

from __future__ import annotations

import contextlib
import logging
import traceback

import numpy as np
import onnx

from ..graph import attribute, consumers, producers, sort_nodes
from ..io import is_lazy, materialize, save_model, weights_on_disk
from . import ort_lazy
from .config import QuantConfig

__all__ = ["QuantizerFailure", "per_channel_axis", "quantize_with_ort", "touched_nodes", "capture_ort_logging", "drop_unused_opsets"]

log = logging.getLogger(__name__)


class QuantizerFailure(Exception):
    """ORT's quantizer raised; ``names`` are node/tensor names found in its traceback."""

    def __init__(self, message: str, names: set[str] | None = None):
        super().__init__(message)
        self.names = names or set()


class _Capture(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record):
        msg = " ".join(str(record.getMessage()).split())
        if "pre-process" in msg or "pre-processing" in msg:
            return  # onnxopt pre-processes; ORT's generic advice is noise here
        if msg not in self.sink:
            self.sink.append(msg[:240])


@contextlib.contextmanager
def capture_ort_logging(sink: list[str]):
    """Route ORT's root-logger warnings into ``sink`` instead of stderr while quantizing."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers = [_Capture(sink)]
    root.setLevel(logging.WARNING)
    try:
        yield sink
    finally:
        root.handlers = saved_handlers
        root.setLevel(saved_level)


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[name]


def per_channel_axis(node: onnx.NodeProto, weight_rank: int) -> int | None:
    """The output-channel axis of a node's weight (input 1), None when per-channel makes no sense."""
    if weight_rank < 2:
        return None
    trans_b = node.op_type == "Gemm" and attribute(node, "transB", 0)
    return {"Conv": 0, "ConvTranspose": 1, "Gemm": 0 if trans_b else 1, "MatMul": weight_rank - 1}.get(node.op_type)


def _names_in_traceback(exc: BaseException) -> set[str]:
    """Strings held by ``node`` / ``tensor_name`` / ``weight_name`` locals of ORT's frames."""
    names = set()
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        if "onnxruntime" not in frame.f_code.co_filename:
            continue
        for key in ("tensor_name", "weight_name", "bias_name", "input_name", "node"):
            v = frame.f_locals.get(key)
            if isinstance(v, str):
                names.add(v)
            elif isinstance(v, onnx.NodeProto):
                names.add(v.name)
    return names


def _weight_overrides(model: onnx.ModelProto, config: QuantConfig, op_types, nodes_to_quantize, exclude, per_tensor, per_channel_nodes=None) -> dict:
    """Per-channel overrides ``{weight: [{"axis": k}]}`` for the weighted nodes to quantize
    (only those of ``per_channel_nodes`` when given: a per-tensor model's remedied nodes)."""
    inits = {t.name: t for t in model.graph.initializer}
    uses = consumers(model.graph)
    overrides = {}
    for n in model.graph.node:
        if n.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or n.op_type not in op_types or len(n.input) < 2 or n.name in exclude:
            continue
        if (nodes_to_quantize and n.name not in nodes_to_quantize) or (per_channel_nodes is not None and n.name not in per_channel_nodes):
            continue
        w = n.input[1]
        if w not in inits or any(u.name in per_tensor for u in uses.get(w, [])):
            continue  # a shared weight goes per-tensor when any of its users must
        axis = per_channel_axis(n, len(inits[w].dims))
        if axis is None:
            continue
        if w in overrides and overrides[w][0]["axis"] != axis:
            overrides.pop(w)  # users disagree on the axis: per-tensor
            continue
        overrides[w] = [{"axis": axis, "reduce_range": True} if config.reduce_range else {"axis": axis}]
    return overrides


def quantize_with_ort(
    model: onnx.ModelProto,
    config: QuantConfig,
    *,
    ranges: dict[str, tuple[float, float]] | None = None,
    provider: str = "cpu",
    nodes_to_quantize: set[str] | None = None,
    exclude: set[str] | frozenset = frozenset(),
    per_tensor: set[str] | frozenset = frozenset(),
    op_types: list[str] | None = None,
    notes: list[str] | None = None,
    per_channel_nodes: set[str] | frozenset = frozenset(),
) -> onnx.ModelProto:
    """Quantize ``model`` (prepared: weights as initializers, shapes inferred) with ORT.

    Static mode needs ``ranges``.  ``exclude`` (plus ``config.exclude``) stay in float;
    ``nodes_to_quantize`` restricts to those nodes; ``per_tensor`` are weighted nodes that
    must not be per-channel; ``per_channel_nodes`` get per-channel weights in a per-tensor
    QDQ model (a budget-search remedy); ``op_types`` overrides ``config.op_types_for(provider)``.
    ORT errors become ``QuantizerFailure``.
    """
    notes = notes if notes is not None else []
    op_types = list(op_types) if op_types is not None else list(config.op_types_for(provider))
    excluded = sorted(set(exclude) | set(config.exclude))
    only = sorted(nodes_to_quantize) if nodes_to_quantize else []
    if config.mode == "int4":
        return _quantize_int4(model, config, only, excluded, notes)
    args = dict(ranges=ranges, op_types=op_types, only=only, excluded=excluded, per_tensor=set(per_tensor), per_channel_nodes=set(per_channel_nodes))
    large = is_lazy(model)  # weights in files: ORT reads them from there (ort_lazy), the result spilled to a file
    out = None
    try:
        with capture_ort_logging(notes):
            if large:
                try:
                    with ort_lazy.reading_lazily():
                        out = ort_lazy.unmark(_run_quantizer(ort_lazy.working_copy(model), config, **args))
                except Exception as exc:
                    # ORT read a weight by a way ort_lazy does not cover, or this ORT's
                    # internals differ from those ort_lazy replaces: the in-memory path
                    # (ORT's own code, unpatched) decides; a genuine quantizer failure
                    # fails there again and is reported from there
                    why = "read a weight outside ort_lazy" if ort_lazy.missed_read(exc) else f"failed with its functions replaced ({type(exc).__name__})"
                    log.info("%s: ORT's quantizer %s (%s); quantizing with the weights in memory", config.label, why, " ".join(str(exc).split())[:160])
            if out is None:
                out = _run_quantizer(_reload_large(model) if large else _reload(model), config, **args)
    except Exception as exc:
        raise _failure("quantizer", config, exc) from exc
    drop_unused_opsets(out)
    return _spill(out) if large else out


def _quantize_int4(model: onnx.ModelProto, config: QuantConfig, only: list[str], excluded: list[str], notes: list[str]) -> onnx.ModelProto:
    """Weight-only INT4 (``int4.quantize_nbits``); a lazily loaded model is read in once and
    its result spilled to a file like the INT8 path's."""
    from ..errors import UnsupportedError
    from .int4 import quantize_nbits

    large = is_lazy(model)
    try:
        with capture_ort_logging(notes):
            out = quantize_nbits(
                _reload_large(model) if large else model, block_size=config.block_size, method=config.int4_method, nodes=only or None, exclude=excluded
            )
    except UnsupportedError:
        raise
    except Exception as exc:
        raise _failure("MatMulNBits quantizer", config, exc) from exc
    return _spill(out) if large else out


def _failure(what: str, config: QuantConfig, exc: BaseException) -> QuantizerFailure:
    msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
    return QuantizerFailure(f"ONNX Runtime's {what} failed ({config.label}): {msg}", _names_in_traceback(exc))


def _run_quantizer(
    m: onnx.ModelProto,
    config: QuantConfig,
    *,
    ranges,
    op_types: list[str],
    only: list[str],
    excluded: list[str],
    per_tensor: set[str],
    per_channel_nodes: set[str] = frozenset(),
) -> onnx.ModelProto:
    """ORT's ``ONNXQuantizer`` / ``QDQQuantizer`` on ``m`` (shape-inferred, ORT's "inferred"
    mark set); returns ORT's model (``m`` may be changed)."""
    scope = {"nodes_to_quantize": only, "nodes_to_exclude": excluded, "op_types_to_quantize": op_types}
    if config.mode != "dynamic" and ranges is None:
        raise ValueError("static quantization needs calibration ranges")
    q = _dynamic_quantizer(m, config, scope) if config.mode == "dynamic" else (
        _static_quantizer(m, config, scope, ranges=ranges, per_tensor=per_tensor, per_channel_nodes=per_channel_nodes)
    )
    q.quantize_model()
    # what ORT's save_model_to_file does: Q/DQ nodes are appended, so sort; ORT's sort
    # ignores what If/Loop bodies read from the graph, ``sort_nodes`` counts it
    q.model.topological_sort()
    sort_nodes(q.model.model.graph)
    return q.model.model


def _dynamic_quantizer(m: onnx.ModelProto, config: QuantConfig, scope: dict):
    """ORT's ``ONNXQuantizer`` in IntegerOps mode (dynamic), constant-B MatMuls only."""
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.quant_utils import QuantizationMode, update_opset_version

    wt = _qtype(config.weight_type)
    return ONNXQuantizer(
        model=update_opset_version(m, wt),
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        mode=QuantizationMode.IntegerOps,
        static=False,
        weight_qType=wt,
        activation_qType=_qtype("uint8"),
        tensors_range=None,
        extra_options={"MatMulConstBOnly": True},
        **scope,
    )


def _static_quantizer(m: onnx.ModelProto, config: QuantConfig, scope: dict, *, ranges, per_tensor: set[str], per_channel_nodes: set[str]):
    """ORT's ``QDQQuantizer`` (QDQ) or ``ONNXQuantizer`` in QLinearOps mode (QOperator) with
    ``ranges`` as the tensors' ranges; per-channel QDQ weights through TensorQuantOverrides."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.quant_utils import (
        QuantFormat,
        QuantizationMode,
        update_opset_version,
    )
    from onnxruntime.quantization.quantize import check_static_quant_arguments

    wt, at = _qtype(config.weight_type), _qtype(config.activation_type)
    tensors = TensorsData(CalibrationMethod.MinMax, {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in ranges.items()})
    extra: dict = {}
    per_channel = config.per_channel
    only, excluded, op_types = scope["nodes_to_quantize"], scope["nodes_to_exclude"], scope["op_types_to_quantize"]
    if config.format == "qdq" and (config.per_channel or per_channel_nodes):
        # per-channel weights set one by one (in a per-tensor model: its remedied nodes only)
        extra["TensorQuantOverrides"] = _weight_overrides(m, config, op_types, only, set(excluded), per_tensor, None if per_channel else per_channel_nodes)
        per_channel = False
    fmt = QuantFormat.QDQ if config.format == "qdq" else QuantFormat.QOperator
    m = update_opset_version(m, wt, at, tensor_quant_overrides=extra.get("TensorQuantOverrides"))
    check_static_quant_arguments(fmt, at, wt)
    common = dict(model=m, per_channel=per_channel, reduce_range=config.reduce_range, weight_qType=wt, activation_qType=at)
    common.update(tensors_range=tensors, extra_options=extra)
    if fmt is QuantFormat.QDQ:
        from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

        return QDQQuantizer(**common, **scope)
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer

    return ONNXQuantizer(mode=QuantizationMode.QLinearOps, static=True, **common, **scope)


def _reload(model: onnx.ModelProto) -> onnx.ModelProto:
    """What ORT's ``save_and_reload_model_with_shape_infer`` returns (a copy of ``model`` with
    shapes inferred and ORT's metadata), holding one copy of the weights beside ``model``
    instead of three: ORT's deep-copies the model twice (once in our call, once in its own)
    and loads the result while both copies live (the peak of ``optimize`` on a 68 MB encoder).
    ``io.save_model`` writes the weights without copying them."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    with tempfile.TemporaryDirectory(prefix="onnxopt-quant-") as tmp:
        path = save_model(model, Path(tmp) / "model.onnx", external_data=True)
        return load_model_with_shape_infer(path)


def _reload_large(model: onnx.ModelProto) -> onnx.ModelProto:
    """What ORT's ``save_and_reload_model_with_shape_infer`` does, for a model whose weights
    are in their files (``io.is_lazy``): shape inference on the small proto, then the weights
    read in once.  ORT's version deep-copies, saves and reloads the whole model (three
    copies of the weights at its peak).  The fallback of the lazy path (``ort_lazy``): with
    the weights in memory, dynamic mode's ``ONNXQuantizer`` still reloads the model itself."""
    return materialize(ort_lazy.inferred_copy(model))


def _spill(model: onnx.ModelProto) -> onnx.ModelProto:
    """A quantized model of the large-model path, moved to external data in a temporary
    folder (removed at exit) and loaded back lazily: checks and sessions then read the weights
    from the file, and the output is saved file to file with external data.  Its float
    tensors ORT left as they were still point at the input's file: they are copied too, so
    that the result outlives the input's folder (a ``CandidateBuilder``'s base on disk is
    removed with the builder, its builds may live on)."""
    import atexit

    lazy, folder = weights_on_disk(model, own=True)
    atexit.register(folder.cleanup)
    return lazy


def drop_unused_opsets(model: onnx.ModelProto) -> None:
    """Drop the opset imports no node uses (ORT's quantizer and optimizer add several), in place."""
    used = {n.domain or "" for n in model.graph.node}
    for f in model.functions:
        used |= {n.domain or "" for n in f.node}
    keep = [o for o in model.opset_import if (o.domain or "") in used or o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def touched_nodes(fp_model: onnx.ModelProto, q_model: onnx.ModelProto, candidates: list[str]) -> list[str]:
    """Which of ``candidates`` (node names of ``fp_model``) the quantizer changed.

    A node counts as quantized when it is gone from the output (QOperator / dynamic
    replace it) or, in QDQ form, when its weight or one of its inputs now comes from a
    ``DequantizeLinear`` or its output feeds a ``QuantizeLinear``.
    """
    q_by_name = {n.name: n for n in q_model.graph.node}
    prod, cons = producers(q_model.graph), consumers(q_model.graph)
    fp_ops = {n.name: n.op_type for n in fp_model.graph.node}

    def from_dq(x: str) -> bool:
        return getattr(prod.get(x), "op_type", "") == "DequantizeLinear"

    out = []
    for name in candidates:
        qn = q_by_name.get(name)
        if qn is None or qn.op_type != fp_ops.get(name):
            out.append(name)
        elif qn.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(qn.input) > 1:
            if from_dq(qn.input[1]):
                out.append(name)
        elif any(c.op_type == "QuantizeLinear" for o in qn.output for c in cons.get(o, [])) and any(from_dq(x) for x in qn.input):
            out.append(name)
    return out
