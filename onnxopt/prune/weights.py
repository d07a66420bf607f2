"""Constant weights as the prune passes see them, and the one place that rewrites them.

A weight is a constant a node reads: an initializer (not overridable: in IR >= 4 an
initializer that is also a graph input may be fed at run time, so it is not a constant),
or the output of ``ConstantOfShape`` whose shape is itself a constant (a *fill*: the onnx
wheel's architecture models keep their large weights that way).  A fill sliced along any
axis is still a fill, so pruning rewrites its shape and never materializes it.

Exporters often compute a per-channel constant in the graph: PaddlePaddle adds a bias
``Reshape(b, [1, C, 1, 1])``, the onnx wheel's models scale by ``Unsqueeze(gamma)``.
``fold_weight_expressions`` evaluates such small expressions of constants (shape and
elementwise ops, outputs no larger than their inputs) into initializers first, so the
channel analysis sees them as constants.

``WeightWriter`` replaces what one node input reads.  An initializer read by that input
alone is rewritten in place (same name); a shared one gets a fresh copy under a new name,
so other readers keep their values.  In IR < 4 models every initializer is also a graph
input; their declared shapes follow the new tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import consumers, subgraphs, unique_name, used_names
from ..simplify.fold import commit_folded, evaluate_node

__all__ = ["Fill", "WeightStore", "WeightWriter", "Tensor", "fold_weight_expressions"]


@dataclass(frozen=True)
class Fill:
    """``ConstantOfShape(shape)`` with scalar ``value``: every element equals ``value``."""

    shape: tuple[int, ...]
    value: np.ndarray  # 0-d

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    def take(self, positions: np.ndarray, axis: int) -> Fill:
        """``numpy.take`` of the fill (also a fill)."""
        shape = list(self.shape)
        shape[axis] = len(positions)
        return Fill(tuple(shape), self.value)

    def materialize(self) -> np.ndarray:
        return np.full(self.shape, self.value, dtype=self.value.dtype)


Tensor = "np.ndarray | Fill"


class WeightStore:
    """Read access to the constants of one graph (main graph only)."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.model = model
        inputs = {i.name for i in g.input}
        overridable = inputs if model.ir_version >= 4 else set()
        self.inits = {t.name: t for t in g.initializer if t.name not in overridable}
        self.fills: dict[str, tuple[int, onnx.NodeProto]] = {
            n.output[0]: (i, n)
            for i, n in enumerate(g.node)
            if n.op_type == "ConstantOfShape"
            and n.domain in ("", "ai.onnx")
            and n.input
            and n.input[0] in self.inits
        }
        self._cache: dict[str, np.ndarray] = {}

    def is_const(self, name: str) -> bool:
        return bool(name) and (name in self.inits or name in self.fills)

    def shape(self, name: str) -> tuple[int, ...] | None:
        if name in self.inits:
            return tuple(int(d) for d in self.inits[name].dims)
        return self.fill(name).shape if name in self.fills else None

    def fill(self, name: str) -> Fill | None:
        if name not in self.fills:
            return None
        node = self.fills[name][1]
        shape = tuple(int(d) for d in numpy_helper.to_array(self.inits[node.input[0]]).reshape(-1))
        values = [
            numpy_helper.to_array(a.t).reshape(()) for a in node.attribute if a.name == "value"
        ]
        return Fill(shape, values[-1] if values else np.zeros((), dtype=np.float32))

    def tensor(self, name: str):
        """The constant as an array, or as a ``Fill`` (never materialized here)."""
        f = self.fill(name)
        return f if f is not None else self.array(name)

    def array(self, name: str) -> np.ndarray:
        """The constant as an array (fills are materialized)."""
        if name not in self._cache:
            f = self.fill(name)
            self._cache[name] = (
                f.materialize() if f is not None else numpy_helper.to_array(self.inits[name])
            )
        return self._cache[name]

    def abs_sum(self, name: str, axis: int) -> np.ndarray:
        """Per-index L1 norm of the constant along ``axis`` (cheap for fills)."""
        f = self.fill(name)
        if f is not None:
            per = abs(float(f.value)) * (f.size // max(f.shape[axis], 1))
            return np.full(f.shape[axis], per, dtype=np.float64)
        arr = np.abs(self.array(name).astype(np.float64))
        other = tuple(i for i in range(arr.ndim) if i != axis % arr.ndim)
        return arr.sum(axis=other) if other else arr


_FOLDABLE = {
    "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose", "Cast", "Identity", "Neg", "Abs",
    "Reciprocal", "Sqrt", "Add", "Sub", "Mul", "Div", "Pow",
}  # fmt: skip


_RESHAPES = {"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}


def fold_weight_expressions(model: onnx.ModelProto, max_bytes: int = 64 * 2**20) -> int:
    """Fold, in place, main-graph nodes of ``_FOLDABLE`` ops whose inputs are all constant
    initializers (``WeightStore`` rules: in IR >= 4 an initializer that is also a graph input
    is not one) into initializers; outputs larger than the inputs (broadcasts) or than
    ``max_bytes`` stay computed.  A reshape (``Reshape``, ``Unsqueeze``, ``Squeeze``,
    ``Flatten``, ``Identity``) of a ``ConstantOfShape`` fill becomes a fill of the new shape
    (still not materialized).  Returns the number of nodes folded."""
    g = model.graph
    folder = _Folder(model, max_bytes)
    outputs = {o.name for o in g.output}
    for node in g.node:
        foldable = (
            node.op_type in _FOLDABLE
            and node.domain in ("", "ai.onnx")
            and len(node.output) == 1
            and node.output[0] not in outputs
            and any(x for x in node.input)
        )
        if not (foldable and (folder.fold_fill(node) or folder.fold_constant(node))):
            folder.keep.append(node)
    if folder.folded:
        commit_folded(model, folder.keep, folder.new)
    return folder.folded


class _Folder:
    """The state of one ``fold_weight_expressions``: the constants known so far (initializers,
    folded values, fills), the nodes kept and the initializers made."""

    def __init__(self, model: onnx.ModelProto, max_bytes: int):
        g = model.graph
        ws = WeightStore(model)
        self.model, self.max_bytes = model, max_bytes
        self.known = dict(ws.inits)
        self.fills = {name: ws.fill(name) for name in ws.fills}
        self.taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
        self.taken |= {i.name for i in g.input} | used_names(g)
        self.values: dict[str, np.ndarray] = {}
        self.keep: list = []
        self.new: list = []
        self.folded = 0

    def _array(self, x: str):
        return (self.values[x] if x in self.values else numpy_helper.to_array(self.known[x])) if x else None

    def fold_fill(self, node) -> bool:
        """A reshape of a ``ConstantOfShape`` fill becomes a fill of the new shape."""
        name = node.output[0]
        fill = self.fills.get(node.input[0])
        if fill is None or node.op_type not in _RESHAPES or not all(x in self.known for x in node.input[1:] if x) or fill.size > 2**22:
            return False
        arrays = [np.zeros(fill.shape, dtype=fill.value.dtype)] + [self._array(x) for x in node.input[1:]]
        try:
            (out,) = evaluate_node(node, arrays, self.model.opset_import)
        except Exception:
            self.keep.append(node)
            return True
        shape_name = unique_name(f"{name}_shape", self.taken)
        t = numpy_helper.from_array(np.array(out.shape, dtype=np.int64), shape_name)
        self.known[shape_name] = t
        self.new.append(t)
        value = numpy_helper.from_array(fill.value.reshape(1))
        self.keep.append(helper.make_node("ConstantOfShape", [shape_name], [name], name=node.name or unique_name(f"{name}_fill", self.taken), value=value))
        self.fills[name] = Fill(tuple(int(d) for d in out.shape), fill.value)
        self.folded += 1
        return True

    def fold_constant(self, node) -> bool:
        """A node of constant inputs becomes an initializer, unless it grows the bytes."""
        if not all(x in self.known for x in node.input if x):
            return False
        arrays = [self._array(x) for x in node.input]
        in_bytes = sum(a.nbytes for a in arrays if a is not None)
        if in_bytes > self.max_bytes:
            return False
        try:
            (out,) = evaluate_node(node, arrays, self.model.opset_import)
            t = numpy_helper.from_array(np.ascontiguousarray(out), node.output[0])
        except Exception:  # an input or a type the reference evaluator refuses: keep the node
            return False
        if out.nbytes > in_bytes:
            return False
        self.values[node.output[0]], self.known[node.output[0]] = out, t
        self.new.append(t)
        self.folded += 1
        return True


def _read_count(graph: onnx.GraphProto, name: str) -> int:
    """Reads of ``name``: node input positions, graph outputs, subgraph outer-scope reads."""
    n = sum(1 for node in graph.node for x in node.input if x == name)
    n += sum(1 for o in graph.output if o.name == name)
    n += sum(1 for node in consumers(graph).get(name, ()) if any(True for _ in subgraphs(node)))
    return n


class WeightWriter:
    """Collects replacements of node inputs by new constants and applies them."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self.taken = {t.name for t in self.graph.initializer} | {o for n in self.graph.node for o in n.output} | {i.name for i in self.graph.input}
        self.taken |= used_names(self.graph)
        self._fill_nodes: list[onnx.NodeProto] = []
        self._fills_made: dict[tuple, str] = {}

    def replace(self, node: onnx.NodeProto, index: int, value, *, base: str | None = None) -> str:
        """Make ``node.input[index]`` read ``value`` (an array or a ``Fill``); returns the name."""
        old = node.input[index]
        g = self.graph
        if isinstance(value, Fill):
            key = (value.shape, value.value.dtype.str, value.value.tobytes())
            if key in self._fills_made:  # identical fills are made once
                node.input[index] = self._fills_made[key]
                return node.input[index]
            shape_name = unique_name(f"{base or old}_shape", self.taken)
            out = unique_name(base or f"{old}_pruned", self.taken)
            g.initializer.append(numpy_helper.from_array(np.array(value.shape, dtype=np.int64), shape_name))
            self._declare(shape_name)
            self._fill_nodes.append(
                helper.make_node(
                    "ConstantOfShape",
                    [shape_name],
                    [out],
                    name=unique_name(f"{out}_fill", self.taken),
                    value=numpy_helper.from_array(np.array([value.value], dtype=value.value.dtype)),
                )
            )
            node.input[index] = out
            self._fills_made[key] = out
            return out
        arr = np.ascontiguousarray(value)
        inits = {t.name: t for t in g.initializer}
        if old in inits and _read_count(g, old) == 1 and not any(o.name == old for o in g.output):
            t = inits[old]
            t.CopyFrom(numpy_helper.from_array(arr.astype(numpy_helper.to_array(t).dtype, copy=False), old))
            self._declare(old)
            return old
        name = unique_name(base or f"{old}_pruned", self.taken)
        g.initializer.append(numpy_helper.from_array(arr, name))
        self._declare(name)
        node.input[index] = name
        return name

    def append(self, node: onnx.NodeProto, value: np.ndarray, *, base: str) -> str:
        """Add ``value`` as a new initializer read by a new last input of ``node``."""
        name = unique_name(base, self.taken)
        self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        self._declare(name)
        node.input.append(name)
        return name

    def _declare(self, name: str) -> None:
        """IR < 4: initializers are graph inputs too; keep the declared type in step."""
        if self.model.ir_version >= 4:
            return
        t = next(t for t in self.graph.initializer if t.name == name)
        vi = helper.make_tensor_value_info(name, t.data_type, list(t.dims))
        declared = next((inp for inp in self.graph.input if inp.name == name), None)
        if declared is None:
            self.graph.input.append(vi)
        else:
            declared.CopyFrom(vi)

    def finish(self) -> None:
        """Put new fill nodes first (their inputs are initializers, so order stays topological)."""
        if self._fill_nodes:
            nodes = list(self._fill_nodes) + list(self.graph.node)
            del self.graph.node[:]
            self.graph.node.extend(nodes)
            self._fill_nodes = []
