"""Weight rounding that minds the layer's output: GPTQ (Frantar et al., 2022) for INT8 QDQ.

Rounding each weight to the nearest step is optimal for the weight, not for the layer's
output: when the layer's inputs are correlated (neighbouring pixels under a 3x3 kernel), the
rounding errors of the weights that read them add up in the output.  GPTQ rounds the
weights of each output row one input column at a time and moves the rounding error of
each column onto the columns not yet rounded, weighted by ``H = E[x x^T]`` of the layer's
inputs on the calibration data (the inverse Hessian's Cholesky factor; columns with the
largest ``H`` diagonal first, 1% damping):  the output error ``(W - Wq) x`` is minimised
instead of ``|W - Wq|``.

Here it rounds again, in place, the INT8 weights ONNX Runtime's quantizer wrote to a QDQ
model: the scales and zero points stay as the quantizer chose them (per tensor or per
output channel), the integers are replaced, within the magnitude the quantizer used (127;
63 with ``reduce_range``).  ``x`` is the input of the float layer (``base`` model, same
node name), so the rounding compensates the weights' own error.  Conv (2-D, any group,
strides, dilations, explicit pads), MatMul with a constant ``[K, N]`` weight and Gemm are
handled; any other layer keeps its nearest rounding and the notes say why.

On PP-OCRv4 rec (60 rendered lines), only the weights of the 38 Convs quantized, per
channel: nearest rounding loses 1.03 points of cosine, GPTQ 0.36 (its first depthwise
3x3 Conv alone: 1.20 and 0.18).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper

from ..graph import producers
from ..io import tensor_array
from .config import ROUNDINGS
from .layers import WeightTable

__all__ = ["gptq_round", "layer_hessians", "round_weights", "inputs_to_round", "DAMPING", "ROUNDINGS"]

log = logging.getLogger(__name__)

DAMPING = 0.01  # of the mean diagonal of H, added to it (GPTQ's default)
MAX_COLUMNS = 8192  # inputs per output row handled (H is MAX_COLUMNS^2 float64)


def gptq_round(w: np.ndarray, h: np.ndarray, scale: np.ndarray, zero: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Integers for the rows of ``w`` (``[rows, columns]``), each row ``r`` on the grid
    ``(q - zero[r]) * scale[r]`` with ``q - zero[r]`` in ``[lo, hi]``, chosen column by column
    so that the output error on inputs of second moment ``h`` (``[columns, columns]``) stays
    small (module docstring)."""
    w = np.array(w, dtype=np.float64)
    h = np.array(h, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    zero = np.asarray(zero, dtype=np.float64).reshape(-1)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    order = np.argsort(-np.diag(h), kind="stable")
    w, h = w[:, order], h[np.ix_(order, order)]
    h[np.diag_indices_from(h)] += DAMPING * float(np.mean(np.diag(h)))
    try:
        u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor of H^-1
    except np.linalg.LinAlgError:
        u = np.diag(1.0 / np.sqrt(np.diag(h)))  # H not positive definite: nearest rounding
    q = np.zeros(w.shape, dtype=np.int64)
    for j in range(w.shape[1]):
        qj = np.clip(np.round(w[:, j] / scale), lo, hi)
        q[:, j] = qj
        err = (w[:, j] - qj * scale) / u[j, j]
        w[:, j + 1 :] -= np.outer(err, u[j, j + 1 :])
    out = np.empty_like(q)
    out[:, order] = q
    return out + np.round(zero).astype(np.int64)[:, None]


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _patches(x: np.ndarray, node: onnx.NodeProto, groups: int) -> np.ndarray:
    """The input patches a 2-D Conv reads, ``[groups, positions, C/groups * kh * kw]``
    (the column order of its weight ``[O, C/groups, kh, kw]`` flattened)."""
    a = _attrs(node)
    kh, kw = a["kernel_shape"]
    sh, sw = a.get("strides", [1, 1])
    dh, dw = a.get("dilations", [1, 1])
    p = a.get("pads", [0, 0, 0, 0])
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    cols = np.stack(
        [xp[:, :, i * dh : i * dh + (ho - 1) * sh + 1 : sh, j * dw : j * dw + (wo - 1) * sw + 1 : sw] for i in range(kh) for j in range(kw)], axis=2
    )  # [N, C, kh*kw, ho, wo]
    n, c = x.shape[:2]
    cols = cols.reshape(n, groups, (c // groups) * kh * kw, ho * wo)
    return cols.transpose(1, 0, 3, 2).reshape(groups, n * ho * wo, -1)


def _layer_kind(node: onnx.NodeProto, weight: np.ndarray) -> str:
    """'' when ``layer_hessians`` handles the layer, else why not."""
    a = _attrs(node)
    if node.op_type == "Conv":
        if weight.ndim != 4 or "kernel_shape" not in a:
            return "not a 2-D Conv with kernel_shape"
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            return "auto_pad Conv"
        cols = weight[0].size
    elif node.op_type in ("MatMul", "Gemm"):
        if weight.ndim != 2 or (node.op_type == "Gemm" and a.get("transA", 0)):
            return "not a 2-D weight"
        cols = weight.shape[1] if node.op_type == "Gemm" and a.get("transB", 0) else weight.shape[0]
    else:
        return f"{node.op_type} has no weight GPTQ rounds"
    return f"{cols} inputs per output (at most {MAX_COLUMNS})" if cols > MAX_COLUMNS else ""


def inputs_to_round(base: onnx.ModelProto, nodes) -> dict[str, onnx.NodeProto]:
    """``{node name: node}`` of the named Conv / MatMul / Gemm nodes of the float ``base``
    whose weight is an initializer GPTQ can round."""
    inits = {t.name: t for t in base.graph.initializer}
    want = set(nodes)
    out = {}
    for n in base.graph.node:
        if n.name in want and n.op_type in ("Conv", "MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
            if not _layer_kind(n, tensor_array(inits[n.input[1]])):
                out[n.name] = n
    return out


def layer_hessians(base: onnx.ModelProto, dataset, layers: dict[str, onnx.NodeProto], *, provider: str = "cpu", limit: int | None = 256) -> dict:
    """``{node name: H}`` over ``dataset``: ``H = E[x x^T]`` of each layer's input rows
    (``[groups, d, d]``: one group for MatMul / Gemm), streamed batch by batch."""
    from .collect import exposed_batches

    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(layers, 0)
    tensors = sorted({n.input[0] for n in layers.values()})
    for values in exposed_batches(base, dataset, tensors, provider=provider, limit=limit, what="GPTQ statistics"):
        for name, node in layers.items():
            x = np.asarray(values[node.input[0]], dtype=np.float32)
            if node.op_type == "Conv":
                groups = int(_attrs(node).get("group", 1))
                for i in range(x.shape[0]):  # one sample at a time: its patches are kh*kw times the input
                    cols = _patches(x[i : i + 1], node, groups)
                    sums[name] = sums.get(name, 0) + (cols.transpose(0, 2, 1) @ cols).astype(np.float64)
                    counts[name] += cols.shape[1]
            else:  # one group
                rows = x.reshape(-1, x.shape[-1])
                sums[name] = sums.get(name, 0) + (rows.T @ rows).astype(np.float64)[None]
                counts[name] += rows.shape[0]
    return {name: sums[name] / counts[name] for name in sums if counts[name]}


def round_weights(qmodel: onnx.ModelProto, base: onnx.ModelProto, hessians: dict, cache: dict | None = None) -> tuple[int, list[str]]:
    """Round again, in place, the INT8 weights of the quantized layers of the QDQ model
    ``qmodel`` that have a Hessian in ``hessians`` (``layer_hessians`` of the float ``base``,
    same node names), keeping their scales and zero points; returns (layers rounded, notes
    on the ones left alone).  ``cache``: a dict kept across calls (the budget search's
    builds of one configuration), holding each layer's integers per grid, so that a layer
    is rounded once."""
    table = WeightTable(qmodel.graph)
    fp = {n.name: n for n in base.graph.node if n.name in hessians}
    fp_inits = {t.name: t for t in base.graph.initializer}
    prod = producers(qmodel.graph)
    done, notes = 0, []
    for n in qmodel.graph.node:
        f = fp.get(n.name)
        if f is None or n.op_type != f.op_type or len(n.input) < 2:
            continue
        dq = prod.get(n.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or any(x and x not in table.inits for x in dq.input):
            notes.append(f"{n.name}: weight not behind a DequantizeLinear of constants, rounding kept")
            continue
        q = table.array(dq.input[0])
        w = tensor_array(fp_inits[f.input[1]]).astype(np.float64)
        if q.shape != w.shape or q.dtype.kind not in "iu":
            notes.append(f"{n.name}: quantized weight does not match the float one, rounding kept")
            continue
        scale = table.array(dq.input[1]).astype(np.float64).reshape(-1)
        zero = table.array(dq.input[2]).astype(np.float64).reshape(-1) if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale)
        a = _attrs(n)
        # rows: output channels; columns: the inputs each reads
        if n.op_type == "Conv":
            rows = w.reshape(w.shape[0], -1)
            axis = 0
        elif n.op_type == "Gemm" and a.get("transB", 0):
            rows, axis = w, 0
        else:
            rows, axis = w.T, 1
        if scale.size > 1 and _axis(dq, q.ndim) != axis:
            notes.append(f"{n.name}: weight scales along another axis than the output channels, rounding kept")
            continue
        out_rows = rows.shape[0]
        scale_r = np.broadcast_to(scale, (out_rows,)) if scale.size in (1, out_rows) else None
        if scale_r is None:
            notes.append(f"{n.name}: {scale.size} scales for {out_rows} output channels, rounding kept")
            continue
        zero_r = np.broadcast_to(zero, (out_rows,))
        # the magnitude the quantizer used: max |q - zero point| (127; 63 with reduce-range)
        span = int(np.abs(np.moveaxis(q, axis, 0).reshape(out_rows, -1).astype(np.int64) - np.round(zero_r).astype(np.int64)[:, None]).max())
        info = np.iinfo(q.dtype)
        lo = max(-span, info.min - int(zero.min()))
        hi = min(span, info.max - int(zero.max()))
        key = (n.name, scale.tobytes(), zero.tobytes(), lo, hi)
        if cache is not None and key in cache:
            table.set(dq.input[0], cache[key])
            done += 1
            continue
        h = hessians[n.name]
        new = np.empty(rows.shape, dtype=np.int64)
        per = out_rows // h.shape[0]  # a Conv's groups each read their own inputs
        for g in range(h.shape[0]):
            sl = slice(g * per, (g + 1) * per)
            new[sl] = gptq_round(rows[sl], h[g], scale_r[sl], zero_r[sl], lo, hi)
        new = (new.reshape(w.shape) if n.op_type == "Conv" or axis == 0 else new.T).astype(q.dtype)
        if cache is not None:
            cache[key] = new
        table.set(dq.input[0], new)
        done += 1
    return done, notes


def _axis(dq: onnx.NodeProto, ndim: int) -> int:
    return next((a.i for a in dq.attribute if a.name == "axis"), 1) % ndim
