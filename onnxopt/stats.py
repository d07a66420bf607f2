"""Model statistics: parameters and bytes per dtype, op histogram, FLOPs estimate.

FLOPs count multiply-accumulates x 2 for Conv / ConvTranspose / Gemm / MatMul using
inferred shapes (symbolic dims count as 1):
``Conv: 2 * N * C_out * prod(out_spatial) * (C_in / group) * prod(kernel)``;
``Gemm/MatMul: 2 * prod(batch dims) * M * K * N``.
"""

from __future__ import annotations

from collections import Counter
from contextlib import suppress

import numpy as np
import onnx
from onnx import helper

from .graph import iter_graphs, node_reads
from .io import exceeds_protobuf

__all__ = ["ModelStats", "model_stats", "count_params", "flops_by_node", "activation_bytes", "shape_skeleton"]


def _numel(dims) -> int:
    return int(np.prod([int(d) for d in dims], dtype=np.int64)) if len(dims) else 1


def _const_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    yield a.t


def count_params(model: onnx.ModelProto) -> tuple[int, dict[str, dict[str, int]]]:
    """(parameters, {dtype: {"params": n, "bytes": b}}) over initializers and Constant nodes."""
    per = {}
    for g in iter_graphs(model.graph):
        for t in _const_tensors(g):
            n = _numel(t.dims)
            try:
                np_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
                dt, nbytes = np_dtype.name, n * np_dtype.itemsize
            except Exception:  # undefined (0) or a data_type this onnx does not know
                dt, nbytes = ("undefined" if not t.data_type else f"data_type {t.data_type}"), 0
            e = per.setdefault(dt, {"params": 0, "bytes": 0})
            e["params"] += n
            e["bytes"] += nbytes
    return sum(e["params"] for e in per.values()), dict(sorted(per.items()))


# initializers at most this many elements keep their values for shape inference (data
# propagation reads small integer tensors: Reshape targets, Slice bounds, ...)
_KEEP_VALUES = 1024


def shape_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The main graph with its large initializers turned into typed graph inputs: shape
    inference needs their dims only, and the skeleton serializes in microseconds where the
    full model (weights inline) would take seconds."""
    g = model.graph
    sg = onnx.GraphProto(name=g.name, node=g.node, input=g.input, output=g.output, value_info=g.value_info)
    inputs = {i.name for i in g.input}
    for t in g.initializer:
        if _numel(t.dims) <= _KEEP_VALUES and t.data_location != onnx.TensorProto.EXTERNAL:
            sg.initializer.append(t)
        elif t.name not in inputs:
            sg.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    sk = onnx.ModelProto(ir_version=max(model.ir_version, 4), producer_name=model.producer_name)
    sk.opset_import.extend(model.opset_import)
    sk.functions.extend(model.functions)
    sk.graph.CopyFrom(sg)
    return sk


def _shape_map(model: onnx.ModelProto) -> dict[str, list]:
    try:
        sk = shape_skeleton(model)
        inferred = onnx.shape_inference.infer_shapes(sk, data_prop=True) if not exceeds_protobuf(sk, margin=2**24) else model
    except Exception:
        inferred = model
    shapes = {}
    g = inferred.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim]
    shapes.update((t.name, list(t.dims)) for t in g.initializer)
    shapes.update((n.output[0], list(a.t.dims)) for n in g.node if n.op_type == "Constant" and n.output for a in n.attribute if a.name == "value")
    return shapes


def activation_bytes(model: onnx.ModelProto, feed: dict[str, np.ndarray], names: list[str]) -> dict[str, int]:
    """Bytes per sample of each tensor in ``names``, from shape inference with ``feed``'s input
    shapes on a weightless skeleton of ``model``; a size shape inference leaves unknown counts
    as the largest known one (4096 bytes when none is known)."""
    sk = shape_skeleton(model)
    for i in sk.graph.input:
        if i.name in feed and i.type.HasField("tensor_type"):
            shape = i.type.tensor_type.shape
            shape.ClearField("dim")
            shape.dim.extend(onnx.TensorShapeProto.Dimension(dim_value=int(d)) for d in np.shape(feed[i.name]))
    with suppress(Exception):
        sk = onnx.shape_inference.infer_shapes(sk)
    batch = max((int(v.shape[0]) for v in feed.values() if np.ndim(v)), default=1) or 1
    sizes = {}
    for v in list(sk.graph.value_info) + list(sk.graph.output):
        tt = v.type.tensor_type
        dims = tt.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            try:
                item = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
            except Exception:
                item = 4
            sizes[v.name] = int(np.prod([d.dim_value for d in dims], dtype=np.int64)) * item // batch
    fallback = max(sizes.values(), default=4096)
    return {n: sizes.get(n, fallback) for n in names}


def live_bytes(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> int:
    """Bytes per sample of the activations alive at once when ``model``'s main graph runs its
    nodes in order on ``feed``'s shapes: each output is held from its node to its last reader
    (graph outputs to the end).  An estimate of the arena ONNX Runtime plans for one sample
    (its fusions and in-place kernels only lower it)."""
    g = model.graph
    produced = [o for n in g.node for o in n.output if o]
    size = activation_bytes(model, feed, produced)
    last = {x: i for i, n in enumerate(g.node) for x in node_reads(n)}  # an If/Loop body's outer reads too
    kept = {o.name for o in g.output}
    alive: dict[str, int] = {}
    held = peak = 0
    for i, n in enumerate(g.node):
        for o in n.output:
            if o and o not in alive:
                alive[o] = size[o]
                held += size[o]
        peak = max(peak, held)
        for x in node_reads(n):
            if last.get(x) == i and x not in kept:
                held -= alive.pop(x, 0)
    return peak


def flops_by_node(model: onnx.ModelProto) -> dict[str, int]:
    """FLOPs per Conv/ConvTranspose/Gemm/MatMul node of the main graph (by node name or output)."""
    shapes = _shape_map(model)
    out = {}
    for i, n in enumerate(model.graph.node):
        key = n.name or (n.output[0] if n.output else f"node {i}")
        try:
            if n.op_type == "Conv":
                w, y = shapes[n.input[1]], shapes[n.output[0]]
                out[key] = 2 * _numel(y) * _numel(w[1:])
            elif n.op_type == "ConvTranspose":
                w, x = shapes[n.input[1]], shapes[n.input[0]]
                out[key] = 2 * _numel(x) * _numel(w[1:])
            elif n.op_type in ("Gemm", "MatMul"):
                a, y = shapes[n.input[0]], shapes[n.output[0]]
                ta = n.op_type == "Gemm" and next((at.i for at in n.attribute if at.name == "transA"), 0)
                k = a[0] if ta else a[-1]
                out[key] = 2 * _numel(y) * int(k)
        except (KeyError, IndexError):
            continue
    return out


class ModelStats(dict):
    """nodes, initializers, params, bytes (tensor data), ops (histogram); flops if asked."""


def model_stats(model: onnx.ModelProto, *, flops: bool = False) -> ModelStats:
    params, per_dtype = count_params(model)
    nodes = sum(len(g.node) for g in iter_graphs(model.graph))
    inits = sum(len(g.initializer) for g in iter_graphs(model.graph))
    ops = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for g in iter_graphs(model.graph) for n in g.node)
    st = ModelStats(
        nodes=nodes,
        initializers=inits,
        params=params,
        bytes=sum(v["bytes"] for v in per_dtype.values()),
        ops=dict(sorted(ops.items())),
    )
    if flops:
        st["flops"] = int(sum(flops_by_node(model).values()))
    return st
