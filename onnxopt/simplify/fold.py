"""Constant folding of the main graph with the ONNX reference evaluator.

A node is folded when it is a deterministic standard op without subgraphs whose inputs are
all constants (initializers that no graph input overrides, or values already folded), or a
``Shape`` whose input has a fully static inferred shape.  Its outputs become initializers.
Refused: random ops, nodes producing graph outputs, outputs over ``max_bytes``, and outputs
over 1 MB that are more than 16x their inputs' size (folding ``ConstantOfShape`` /
``Expand`` would bloat the file).  Subgraph bodies are left intact.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import subgraphs
from ..io import external_info, inline_nbytes, tensor_array

__all__ = ["commit_folded", "evaluate_node", "fold_constants", "NONDETERMINISTIC", "BLOAT_RATIO"]

log = logging.getLogger(__name__)

NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
BLOAT_RATIO = 16


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        return {}
    infos = [(vi.name, vi.type.tensor_type) for vi in list(inferred.graph.value_info) + list(inferred.graph.input)]
    return {name: [d.dim_value for d in tt.shape.dim] for name, tt in infos if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim)}


def commit_folded(model: onnx.ModelProto, keep: list[onnx.NodeProto], new: list[onnx.TensorProto]) -> None:
    """Replace the main graph's nodes by ``keep`` and add the folded values ``new`` as
    initializers (also listed as graph inputs in IR < 4, where every initializer must be)."""
    g = model.graph
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(new)
    if model.ir_version < 4:
        g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in new)


def evaluate_node(node: onnx.NodeProto, values: list, opsets) -> list[np.ndarray]:
    """Run one node on constant inputs (``values[i]`` for ``node.input[i]``; an empty input
    name or a ``None`` value is an omitted optional input) with ONNX's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" for i in range(len(node.input))]
    n = onnx.NodeProto()
    n.CopyFrom(node)
    feeds = {}
    for i, x in enumerate(node.input):
        if x and values[i] is not None:
            n.input[i] = names[i]
            feeds[names[i]] = values[i]
        else:
            n.input[i] = ""
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape)) for k, v in feeds.items()]
    outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output]
    m = helper.make_model(helper.make_graph([n], "fold", inputs, outputs), opset_imports=list(opsets))
    res = ReferenceEvaluator(m).run(None, feeds)
    return [np.asarray(r) for r in res]


class _Constants:
    """Initializer values by name, read on first use (``known[x]`` for every initializer of
    a large model would hold a second copy of all its weights)."""

    def __init__(self, inits: dict[str, onnx.TensorProto]):
        self._tensors = inits
        self._values: dict[str, np.ndarray] = {}

    def __contains__(self, name) -> bool:
        return name in self._values or name in self._tensors

    def get(self, name, default=None):
        if name in self._values:
            return self._values[name]
        t = self._tensors.get(name)
        if t is None:
            return default
        value = self._values[name] = tensor_array(t)
        return value

    def __getitem__(self, name):
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name, value: np.ndarray) -> None:
        self._values[name] = value

    def nbytes(self, name) -> int:
        if name in self._values:
            return int(self._values[name].nbytes)
        t = self._tensors[name]
        return int(external_info(t).get("length", 0) or 0) if t.data_location == onnx.TensorProto.EXTERNAL else inline_nbytes(t)


def fold_constants(model: onnx.ModelProto, max_bytes: int = 16 * 2**20) -> tuple[int, list[str]]:
    """Fold in place; returns (nodes folded, notes)."""
    g = model.graph
    overridable = {i.name for i in g.input}
    known = _Constants({t.name: t for t in g.initializer if t.name not in overridable})
    outputs = {o.name for o in g.output}
    shapes = None
    folded, keep, notes = 0, [], []
    new_inits = []
    skipped_bloat = 0
    for node in g.node:
        foldable = (
            node.domain in ("", "ai.onnx")
            and node.op_type not in NONDETERMINISTIC
            and not any(True for _ in subgraphs(node))
            and not any(o in outputs for o in node.output)
            and node.output
        )
        vals = None
        if foldable and node.op_type == "Shape" and node.input[0] not in known:
            if shapes is None:
                shapes = _static_shapes(model)
            shp = shapes.get(node.input[0])
            if shp is not None:
                arr = np.array(shp, dtype=np.int64)
                attrs = {a.name: a.i for a in node.attribute}
                start, end = attrs.get("start", 0), attrs.get("end", None)
                vals = [arr[start:end]]
        elif foldable and all((x == "" or x in known) for x in node.input) and node.op_type != "Constant":
            if sum(known.nbytes(x) for x in node.input if x) > max_bytes:
                # large constant inputs are not read (a big model's weights stay where they are)
                keep.append(node)
                continue
            try:
                vals = evaluate_node(node, [known.get(x) for x in node.input], model.opset_import)
            except Exception as exc:  # an op the reference evaluator cannot run: keep the node
                log.debug("not folding %s (%s): %s", node.name or node.output[0], node.op_type, exc)
                vals = None
            if vals is not None:
                in_bytes = sum(known.nbytes(x) for x in node.input if x)
                out_bytes = sum(v.nbytes for v in vals)
                if out_bytes > max_bytes or (out_bytes > 2**20 and out_bytes > BLOAT_RATIO * max(in_bytes, 1)):
                    skipped_bloat += 1
                    vals = None
        if vals is None or len(vals) != len(node.output):
            keep.append(node)
            continue
        for name, v in zip(node.output, vals, strict=True):
            if name:
                known[name] = v
                new_inits.append(numpy_helper.from_array(np.ascontiguousarray(v), name))
        folded += 1
    if folded:
        commit_folded(model, keep, new_inits)
    if skipped_bloat:
        notes.append(f"{skipped_bloat} node(s) not folded: the constant would grow the file by more than {BLOAT_RATIO}x their inputs")
    if any(True for n in g.node for _ in subgraphs(n)):
        notes.append("If/Loop/Scan bodies left intact by constant folding")
    return folded, notes
