"""Constant nodes -> initializers (ORT's quantizer and most passes expect weights there).

Handles ``value`` (tensor) and the scalar/list forms (``value_float(s)``, ``value_int(s)``).
Sparse and string constants are left as nodes.  In IR < 4 models an initializer must also
be a graph input, so one is added for each new initializer.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import replace_repeated, subgraphs

__all__ = ["constant_node_tensor", "constants_to_initializers", "graph_constants"]


def constant_node_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a ``Constant`` node produces, or None for forms we keep as nodes."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    a = node.attribute[0]
    if a.name == "value" and a.t.data_type != onnx.TensorProto.STRING:
        t = onnx.TensorProto()
        t.CopyFrom(a.t)
        return t
    if a.name == "value_float":
        return numpy_helper.from_array(np.array(a.f, dtype=np.float32))
    if a.name == "value_floats":
        return numpy_helper.from_array(np.array(list(a.floats), dtype=np.float32))
    if a.name == "value_int":
        return numpy_helper.from_array(np.array(a.i, dtype=np.int64))
    return numpy_helper.from_array(np.array(list(a.ints), dtype=np.int64)) if a.name == "value_ints" else None


def graph_constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """The constant tensors of ``graph`` by name: its initializers and what its ``Constant``
    nodes make (not those of nested bodies)."""
    out = {t.name: t for t in graph.initializer}
    for n in graph.node:
        t = constant_node_tensor(n)
        if t is not None:
            out[n.output[0]] = t
    return out


def _convert(graph: onnx.GraphProto, ir_version: int) -> int:
    keep, count = [], 0
    for node in graph.node:
        for g in subgraphs(node):
            count += _convert(g, ir_version)
        t = constant_node_tensor(node)
        if t is None:
            keep.append(node)
            continue
        t.name = node.output[0]
        graph.initializer.append(t)
        if ir_version < 4:
            graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        count += 1
    replace_repeated(graph.node, keep)
    return count


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Convert in place; returns the number of Constant nodes converted."""
    return _convert(model.graph, model.ir_version)
