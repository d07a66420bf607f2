"""Refit the consumers of removed channels on calibration data (the original model teaches).

For each consumer layer (Conv / ConvTranspose with group 1, Gemm, MatMul reading pruned
channels), in graph order: run the *pruned* model (with the layers refitted so far) to get
the layer's input and the *original* model to get the layer's output, batch by batch;
accumulate the normal equations (``reconstruct.RidgeAccumulator``) and replace the layer's
weights (and bias: one is added to a layer that had none) by the ridge solution, but only
when it fits the original output better than the pruned weights do.  Output channels the
layer itself lost are dropped from the target.  Layers with more than ``max_features``
inputs per output are skipped with a note (the normal equations would not fit in memory);
so are grouped convolutions and ConvTranspose with ``output_shape`` or SAME padding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx

from ..core.progress import progress
from ..errors import first_failure
from ..graph import attribute
from ..linear import one_blas_thread
from .groups import node_label
from .reconstruct import (
    RidgeAccumulator,
    conv_pads,
    conv_patches,
    conv_transpose_as_conv,
    conv_transpose_from_conv,
    conv_transpose_input,
    gather_outputs,
    sample_positions,
)
from .taps import iter_taps, tap_session
from .weights import WeightStore, WeightWriter

__all__ = ["RefitOptions", "refit_layers"]

log = logging.getLogger(__name__)


@dataclass
class RefitOptions:
    ridge: float = 1e-3
    max_samples: int | None = 512
    max_rows: int = 1024  # sampled output positions per batch (conv)
    max_features: int = 8192
    seed: int = 0


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def refit_layers(
    student: onnx.ModelProto,
    teacher: onnx.ModelProto,
    layers: list[tuple[str, np.ndarray | None]],
    dataset,
    *,
    provider: str = "cpu",
    options: RefitOptions | None = None,
) -> tuple[list[dict], list[str]]:
    """Refit, in place in ``student``, the layers named by their output tensor.

    ``layers``: ``(output name, kept output channels or None)`` in graph order.  Returns
    per-layer records (relative output error before / after) and notes.  The numpy math
    runs on one BLAS thread: the results do not depend on the machine's thread count, and
    BLAS threads spinning next to ONNX Runtime's made it an order of magnitude slower.
    """
    opts = options or RefitOptions()
    rng = np.random.default_rng(opts.seed)
    records, notes = [], []
    with one_blas_thread():
        for out_name, keep_out in progress(layers, desc="reconstruct", unit="layer"):
            node = next(n for n in student.graph.node if n.output and n.output[0] == out_name)
            ws = WeightStore(student)
            layer = _layer(node, ws, opts)
            if isinstance(layer, str):
                notes.append(f"'{node_label(node)}' not reconstructed: {layer}")
                continue
            acc = _accumulate(layer, student, teacher, dataset, keep_out, provider=provider, opts=opts, rng=rng)
            if isinstance(acc, str):
                notes.append(f"'{layer.label}' not reconstructed: {acc}")
                continue
            records.append(_solve(student, layer, acc, ws, opts))
    return records, notes


@dataclass
class _Layer:
    """A layer to refit: its weight as a ``[d inputs, m outputs]`` matrix (``w_flat``), bias,
    and for Conv/ConvTranspose the geometry that turns its input into patches."""

    node: onnx.NodeProto
    label: str
    w: np.ndarray
    w_flat: np.ndarray
    d: int
    m: int
    trans_b: int
    has_bias: bool
    bias: np.ndarray | None
    conv: dict | None


def _layer(node: onnx.NodeProto, ws: WeightStore, opts: RefitOptions) -> _Layer | str:
    """The layer's matrices, or why it cannot be refitted."""
    op, label = node.op_type, node_label(node)
    problem = first_failure(
        (not ws.is_const(node.input[1]), "its weight is not a constant"),
        (op == "Gemm" and (float(attribute(node, "alpha", 1.0)) != 1.0 or float(attribute(node, "beta", 1.0)) != 1.0 or int(attribute(node, "transA", 0))),
         "Gemm with alpha/beta != 1 or transA"),
        (op in ("Conv", "ConvTranspose") and int(attribute(node, "group", 1)) != 1, f"grouped {op}"),
        (op == "ConvTranspose"
         and (attribute(node, "output_shape") is not None or _text(attribute(node, "auto_pad", b"NOTSET")) not in ("NOTSET", "", "VALID")),
         "ConvTranspose with output_shape or SAME auto_pad"),
    )
    if problem:
        return problem
    w = ws.array(node.input[1]).astype(np.float64)
    trans_b = int(attribute(node, "transB", 0)) if op == "Gemm" else 0
    if op in ("Conv", "ConvTranspose"):
        wc = conv_transpose_as_conv(w) if op == "ConvTranspose" else w  # [O, C, *k]
        m, d = wc.shape[0], int(np.prod(wc.shape[1:]))
        w_flat = wc.reshape(m, d).T
    else:
        w_flat = w.T if trans_b else w
        d, m = w_flat.shape
    if d > opts.max_features:
        return f"{d} inputs per output exceed max_features={opts.max_features}"
    has_bias = op in ("Conv", "ConvTranspose", "Gemm")
    b_name = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    bias = None
    if has_bias and b_name:
        if not ws.is_const(b_name):
            return "its bias is not a constant"
        bias = np.broadcast_to(ws.array(b_name).astype(np.float64).reshape(-1), (m,)).copy()
    conv = None
    if op in ("Conv", "ConvTranspose"):
        r = len(w.shape) - 2
        conv = {
            "kernel": list(w.shape[2:]),
            "strides": list(attribute(node, "strides", [1] * r)),
            "dilations": list(attribute(node, "dilations", [1] * r)),
            "auto_pad": _text(attribute(node, "auto_pad", b"NOTSET")),
            "pads": list(attribute(node, "pads", [0] * (2 * r))),
            "output_padding": list(attribute(node, "output_padding", [0] * r)),
        }
    return _Layer(node, label, w, w_flat, d, m, trans_b, has_bias, bias, conv)


def _accumulate(layer: _Layer, student, teacher, dataset, keep_out, *, provider: str, opts: RefitOptions, rng) -> RidgeAccumulator | str:
    """The normal equations of the layer's input (pruned model) against the teacher's output,
    streamed batch by batch; a string says why it could not be built."""
    node, op, conv = layer.node, layer.node.op_type, layer.conv
    out_name, x_name = node.output[0], node.input[0]
    # sessions cut down to what each tensor needs: ONNX Runtime runs every node of a
    # session whatever is fetched, and early layers need only the start of the model
    teacher_sess = tap_session(teacher, [out_name], provider, only=True)
    student_sess = tap_session(student, [x_name], provider, only=True)
    acc = RidgeAccumulator(layer.d, layer.m, bias=layer.has_bias)
    for feed, acts in iter_taps(student_sess, [x_name], dataset.batches(limit=opts.max_samples)):
        x = acts[x_name]
        y = teacher_sess.run([out_name], feed)[0]
        if keep_out is not None:
            y = np.take(y, keep_out, axis=1 if conv is not None else -1)
        if conv is None:
            acc.add(x.reshape(-1, layer.d), y.reshape(-1, layer.m))
            continue
        r = len(conv["kernel"])
        pos = sample_positions(x.shape[0], y.shape[2:], opts.max_rows, rng)
        if op == "ConvTranspose":
            pads = [0] * (2 * r) if conv["auto_pad"] == "VALID" else conv["pads"]
            z = conv_transpose_input(x, conv["kernel"], conv["strides"], pads, conv["dilations"], conv["output_padding"])
            rows, pos, out = conv_patches(z, conv["kernel"], [1] * r, [0] * (2 * r), conv["dilations"], pos)
            if list(out) != list(y.shape[2:]):
                return f"ConvTranspose output {list(y.shape[2:])} != computed {list(out)}"
        else:
            pads = conv_pads(conv["auto_pad"], conv["pads"], x.shape[2:], conv["kernel"], conv["strides"], conv["dilations"])
            rows, pos, _ = conv_patches(x, conv["kernel"], conv["strides"], pads, conv["dilations"], pos)
        acc.add(rows, gather_outputs(y, pos))
    return "no calibration rows" if acc.n == 0 else acc


def _solve(student, layer: _Layer, acc: RidgeAccumulator, ws: WeightStore, opts: RefitOptions) -> dict:
    """Solve the ridge problem and write the weights when they fit the teacher better."""
    before = acc.relative_error(layer.w_flat, layer.bias)
    w_new, b_new = acc.solve(opts.ridge)
    after = acc.relative_error(w_new, b_new)
    applied = after < before
    if applied:
        _write(student, layer.node, layer.node.op_type, layer.trans_b, layer.w.shape, w_new, b_new, ws)
    log.info("reconstructed %s: relative error %.4f -> %.4f%s", layer.label, before, after, "" if applied else " (kept pruned weights)")
    return {
        "layer": layer.label,
        "op": layer.node.op_type,
        "features": layer.d,
        "outputs": layer.m,
        "rows": acc.n,
        "error_before": before,
        "error_after": after if applied else before,
        "applied": bool(applied),
    }


def _write(model, node, op, trans_b, w_shape, w_new, b_new, ws: WeightStore) -> None:
    writer = WeightWriter(model)
    dtype = (
        np.float32 if ws.array(node.input[1]).dtype.kind != "f" else ws.array(node.input[1]).dtype
    )
    if op == "Conv":
        w = w_new.T.reshape(w_shape)
    elif op == "ConvTranspose":
        c, o = w_shape[0], w_shape[1]
        w = conv_transpose_from_conv(w_new.T.reshape((o, c) + tuple(w_shape[2:])))
    elif op == "Gemm" and trans_b:
        w = w_new.T
    else:
        w = w_new
    writer.replace(node, 1, w.astype(dtype))
    if b_new is not None:
        if len(node.input) > 2 and node.input[2]:
            writer.replace(node, 2, b_new.astype(dtype))
        else:
            writer.append(node, b_new.astype(dtype), base=f"{node.input[1]}_bias")
    writer.finish()
