"""Weighted layers seen as ``W`` with an input-channel and an output-channel axis, for the
equalization passes (``smooth``, ``cle``): which nodes qualify, and in-place rescaling of
their weights and biases.

A layer qualifies when its weight is a constant initializer that no other node reads (a
shared weight cannot be rescaled for one reader only) and that is not an overridable graph
input: ``Conv`` with ``group = 1``; ``Gemm`` with ``transA = 0`` and a 2-D weight (``transB``
decides the axes) and a bias ``C`` of ``N`` values (or none); ``MatMul`` with a 2-D weight
``[K, N]`` (no bias: a following ``Add`` holds it).  ``layer_of`` says why not otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import attribute, consumers, producers, unique_name

__all__ = ["Layer", "WeightTable", "layer_of"]


class WeightTable:
    """The graph's initializers: read, rewrite in place, and tell which are private to one
    node input (read once, not an overridable graph input)."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.inputs = {i.name for i in graph.input}
        self.readers = consumers(graph)
        self.producer = producers(graph)
        self.taken = set(self.inits) | self.inputs | {x for n in graph.node for x in list(n.input) + list(n.output)}

    def private(self, name: str) -> bool:
        reads = sum(1 for n in self.readers.get(name, []) for x in n.input if x == name)
        return name in self.inits and name not in self.inputs and reads == 1

    def per_channel(self, name: str, channels: int) -> bool:
        """A private initializer of ``channels`` values along one axis (the other dims 1)."""
        dims = list(self.inits[name].dims) if name in self.inits else []
        return self.private(name) and int(np.prod(dims)) == channels and max(dims, default=1) == channels

    def channelwise(self, name: str, fn) -> None:
        """Replace the values of ``name`` by ``fn`` of them (flat, float64); shape and type kept."""
        v = self.array(name).astype(np.float64)
        self.set(name, fn(v.reshape(-1)).reshape(v.shape))

    def array(self, name: str) -> np.ndarray:
        from ..io import tensor_array

        return tensor_array(self.inits[name])

    def set(self, name: str, value: np.ndarray) -> None:
        old = self.inits[name]
        old.CopyFrom(numpy_helper.from_array(np.asarray(value).astype(helper.tensor_dtype_to_np_dtype(old.data_type)), name))

    def add(self, base: str, value: np.ndarray) -> str:
        name = unique_name(base, self.taken)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        self.inits[name] = self.graph.initializer[-1]
        return name


@dataclass
class Layer:
    """A weighted node: ``weight`` with ``in_axis`` / ``out_axis``; ``bias`` (a private
    initializer of ``N`` values) or ''."""

    node: onnx.NodeProto
    weight: str
    in_axis: int
    out_axis: int
    bias: str = ""

    def _bshape(self, w: np.ndarray, axis: int) -> tuple[int, ...]:
        shape = [1] * w.ndim
        shape[axis] = w.shape[axis]
        return tuple(shape)

    def out_range(self, table: WeightTable) -> np.ndarray:
        w = np.abs(table.array(self.weight))
        return w.max(axis=tuple(i for i in range(w.ndim) if i != self.out_axis))

    def in_range(self, table: WeightTable) -> np.ndarray:
        w = np.abs(table.array(self.weight))
        return w.max(axis=tuple(i for i in range(w.ndim) if i != self.in_axis))

    def weight_in_by_out(self, table: WeightTable) -> np.ndarray:
        """The weight as ``[C_in, N]`` (2-D layers only)."""
        w = table.array(self.weight)
        return w if self.in_axis == 0 else w.T

    def scale_out(self, table: WeightTable, factor: np.ndarray) -> None:
        """Multiply output channel ``i`` (weight slice and bias) by ``factor[i]``."""
        w = table.array(self.weight).astype(np.float64)
        table.set(self.weight, w * factor.reshape(self._bshape(w, self.out_axis)))
        if self.bias:
            table.channelwise(self.bias, lambda b: b * factor)

    def scale_in(self, table: WeightTable, factor: np.ndarray) -> None:
        """Multiply input channel ``j`` of the weight by ``factor[j]``."""
        w = table.array(self.weight).astype(np.float64)
        table.set(self.weight, w * factor.reshape(self._bshape(w, self.in_axis)))


def layer_of(node: onnx.NodeProto, table: WeightTable) -> tuple[Layer | None, str]:
    """The ``Layer`` view of ``node``, or None and why it does not qualify."""
    op = node.op_type
    if op not in ("Conv", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None, f"{op} has no constant weight"
    w = node.input[1]
    if w not in table.inits or w in table.inputs:
        return None, f"weight '{w}' is not a constant initializer"
    if not table.private(w):
        return None, f"weight '{w}' is shared with another node"
    dims = list(table.inits[w].dims)
    bias = node.input[2] if len(node.input) > 2 else ""
    if op == "Conv":
        if attribute(node, "group", 1) != 1:
            return None, "grouped Conv (group > 1)"
        layer = Layer(node, w, 1, 0, bias)
    elif op == "Gemm":
        if attribute(node, "transA", 0) or len(dims) != 2:
            return None, "Gemm with transA or a non-2-D weight"
        layer = Layer(node, w, 1, 0, bias) if attribute(node, "transB", 0) else Layer(node, w, 0, 1, bias)
    else:
        if len(dims) != 2:
            return None, "MatMul weight is not 2-D"
        layer = Layer(node, w, 0, 1)
    if bias and not table.per_channel(bias, dims[layer.out_axis]):
        return None, f"bias '{bias}' is shared or not one value per output channel"
    return layer, ""
