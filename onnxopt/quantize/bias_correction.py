"""Bias correction after weight quantization (Nagel et al., 2019, empirical form).

With ``W`` the float weight of a layer, ``Wq`` its quantized-then-dequantized weight and
``E[x]`` the per-channel mean of the layer's input over the calibration data, the quantized
layer's output is shifted on average by ``dW @ E[x]`` (``dW = Wq - W``; for a Conv, summed
over the kernel too: the shift of output channel ``o`` is
``sum_{i,k} dW[o, i, k] * E[x_i]``).  The shift is subtracted from the layer's bias: a float
bias directly; a bias that the QDQ format stores as INT32 behind a ``DequantizeLinear`` by
``round(shift / scale)`` steps.  Layers without a bias are left alone (a float bias added
to a QDQ Conv would keep ONNX Runtime from fusing it): the report says so.

The shift is exact in expectation over the calibration inputs for a linear layer; Conv
borders (zero padding) see slightly less than ``E[x]``.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper

from ..graph import producers
from ..io import tensor_array
from .layers import WeightTable

__all__ = ["weight_shift", "correct_biases", "inputs_to_correct", "dequantized"]

log = logging.getLogger(__name__)


def weight_shift(op_type: str, dw: np.ndarray, mean: np.ndarray, *, trans_b: bool = False) -> np.ndarray:
    """The expected output shift per output channel of a layer whose weight moved by ``dw``
    on inputs of per-channel mean ``mean``."""
    dw = np.asarray(dw, dtype=np.float64)
    m = np.asarray(mean, dtype=np.float64)
    if op_type == "Conv":
        return dw.reshape(dw.shape[0], dw.shape[1], -1).sum(axis=2) @ m
    return dw @ m if op_type == "Gemm" and trans_b else m @ dw


def dequantized(dq: onnx.NodeProto, inits: dict) -> np.ndarray | None:
    """The float64 value of a ``DequantizeLinear`` of initializers (``inits``: name ->
    TensorProto), per tensor or per channel along its ``axis``; None when an input is not one."""
    if any(x and x not in inits for x in dq.input):
        return None
    q, scale = (tensor_array(inits[x]).astype(np.float64) for x in dq.input[:2])
    zp = tensor_array(inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale)
    if scale.size > 1:
        shape = [1] * q.ndim
        shape[next((a.i for a in dq.attribute if a.name == "axis"), 1) % q.ndim] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q - zp) * scale


def inputs_to_correct(fp_model: onnx.ModelProto, nodes: list[str]) -> dict[str, int]:
    """``{input tensor: channel axis}`` of the named Conv / Gemm / MatMul nodes of the float
    model (what ``collect.collect_channel_stats`` must measure)."""
    by_name = {n.name: n for n in fp_model.graph.node}
    return {by_name[n].input[0]: (1 if by_name[n].op_type == "Conv" else -1) for n in nodes if n in by_name}


def _subtract(table: WeightTable, prod: dict, bias: str, shift: np.ndarray) -> str:
    """Subtract ``shift`` from the bias ``bias``; '' or why not."""
    if bias in table.inits:
        table.channelwise(bias, lambda b: b - shift)
        return ""
    dq = prod.get(bias)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in table.inits or dq.input[1] not in table.inits:
        return "its bias is computed, not a constant"
    q = table.array(dq.input[0])
    scale = table.array(dq.input[1]).astype(np.float64).reshape(-1)
    steps = np.round(shift / scale).astype(np.int64)
    info = np.iinfo(q.dtype) if q.dtype.kind in "iu" else None
    new = q.reshape(-1).astype(np.int64) - steps
    if info is not None:
        new = np.clip(new, info.min, info.max)
    table.set(dq.input[0], new.reshape(q.shape).astype(q.dtype))
    return ""


def correct_biases(qmodel: onnx.ModelProto, fp_model: onnx.ModelProto, means: dict[str, np.ndarray]) -> tuple[int, list[str]]:
    """Correct, in place, the bias of every quantized Conv / Gemm / MatMul of the QDQ model
    ``qmodel`` whose float counterpart (same node name in ``fp_model``) has a mean in
    ``means``; returns (layers corrected, notes on the ones left alone)."""
    table = WeightTable(qmodel.graph)
    names = [n.name for n in fp_model.graph.node]
    fp = {n.name: n for n in fp_model.graph.node if n.name and names.count(n.name) == 1}
    fp_inits = {t.name: t for t in fp_model.graph.initializer}
    prod = producers(qmodel.graph)
    done, notes = 0, []
    for n in qmodel.graph.node:
        f = fp.get(n.name)
        if n.op_type not in ("Conv", "Gemm", "MatMul") or f is None or f.input[0] not in means or len(n.input) < 2:
            continue
        dq = prod.get(n.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or f.input[1] not in fp_inits:
            continue
        wq = dequantized(dq, table.inits)
        if wq is None:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv" and attrs.get("group", 1) != 1:
            notes.append(f"{n.name}: grouped Conv, bias not corrected")
            continue
        w = tensor_array(fp_inits[f.input[1]]).astype(np.float64)
        in_axis = 1 if n.op_type == "Conv" or (n.op_type == "Gemm" and attrs.get("transB", 0)) else 0
        if wq.shape != w.shape or w.ndim < 2 or np.size(means[f.input[0]]) != w.shape[in_axis]:
            notes.append(f"{n.name}: weight or input channels do not match the float model's, bias not corrected")
            continue
        shift = weight_shift(n.op_type, wq - w, means[f.input[0]], trans_b=bool(attrs.get("transB", 0)))
        if n.op_type == "Gemm":
            shift = shift * float(attrs.get("alpha", 1.0)) / float(attrs.get("beta", 1.0))
        if len(n.input) < 3 or not n.input[2]:
            notes.append(f"{n.name}: no bias to correct (expected shift up to {np.abs(shift).max():.3g})")
            continue
        why = _subtract(table, prod, n.input[2], shift)
        if why:
            notes.append(f"{n.name}: bias not corrected: {why}")
            continue
        done += 1
    return done, notes
