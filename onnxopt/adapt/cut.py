"""Where to cut a classifier, and the cut itself.

**Head detection** (no ``--features``): starting from the adapted output (the first graph
output), the *last* node in topological order among the output's computed ancestors that
is a matrix product of a computed tensor by constant weights (``Gemm``, ``MatMul``,
``MatMulInteger``, ``QLinearMatMul`` and onnxruntime's ``QGemm`` / ``DynamicQuantizeMatMul``
/ ``MatMulIntegerToFloat`` / ``FusedMatMul``).  Its activation input, followed back through
quantization nodes (``QuantizeLinear``, ``DequantizeLinear``, ``DynamicQuantizeLinear``) to
the float tensor they quantize, is the feature tensor.  The cut is accepted only when the
output is a function of that tensor (and constants, and shapes: tensors computed from
``Shape``/``Size`` of anything, as tf2onnx heads rebuild their broadcast shapes from
``Shape(input)``) alone; everything between it and the output (bias ``Add``, rescaling
``Mul``, ``Softmax`` or its decomposed form ``Exp / ReduceSum``...) is the head that is
replaced.
Refusals say why (no such product, weights that are not constant, ``Gemm`` with
``transA``, an output that reads other tensors).

**Cut**: the graph's outputs are replaced by the feature tensor and dead nodes,
initializers and value_info are removed (``simplify.dead.remove_unused``); nothing
upstream of the feature tensor changes, so a quantized extractor keeps its INT8 part.
Spatial features (rank >= 3, channels first ``[N, C, ...]``) are pooled over every axis
after the channels with ``GlobalAveragePool`` (``mean``) or ``GlobalMaxPool`` (``max``)
and flattened to ``[N, C]``, or only flattened (``flatten``).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import onnx
from onnx import helper

from ..errors import UnsupportedError, UsageError
from ..graph import node_reads, producers, subgraphs, unique_name
from ..simplify.dead import remove_unused
from ..simplify.fold import NONDETERMINISTIC

__all__ = [
    "POOLS",
    "HeadMatch",
    "TensorInfo",
    "find_head",
    "tensor_info",
    "all_names",
    "with_outputs",
    "cut_at",
    "add_pooling",
]

log = logging.getLogger(__name__)

POOLS = ("mean", "max", "flatten")

# (domain, op) -> (index of the activation input, index of the weight input)
_PRODUCTS = {
    ("", "Gemm"): (0, 1),
    ("", "MatMul"): (0, 1),
    ("", "MatMulInteger"): (0, 1),
    ("", "QLinearMatMul"): (0, 3),
    ("com.microsoft", "QGemm"): (0, 3),
    ("com.microsoft", "DynamicQuantizeMatMul"): (0, 1),
    ("com.microsoft", "MatMulIntegerToFloat"): (0, 1),
    ("com.microsoft", "FusedMatMul"): (0, 1),
}
_QUANTIZERS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def _domain(node: onnx.NodeProto) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


@dataclass
class HeadMatch:
    """The detected head: the feature tensor, the product node and every node replaced."""

    feature: str
    node: str
    op: str
    removed_ops: list[str] = field(default_factory=list)
    softmax: bool = False

    def to_dict(self) -> dict:
        return {"feature": self.feature, "node": self.node, "op": self.op, "removed_ops": self.removed_ops, "softmax": self.softmax}


@dataclass
class TensorInfo:
    """What static shape inference knows of a tensor: elem type (0 unknown) and dims (None unknown)."""

    name: str
    elem_type: int = 0
    dims: list | None = None


def _constants(graph: onnx.GraphProto) -> set[str]:
    """Names whose value does not depend on any graph input."""
    inputs = {i.name for i in graph.input}
    const = {t.name for t in graph.initializer if t.name not in inputs}
    for n in graph.node:
        if n.op_type in NONDETERMINISTIC or any(True for _ in subgraphs(n)):
            continue
        if all((not x) or x in const for x in n.input):
            const.update(o for o in n.output if o)
    return const


def _shape_only(graph: onnx.GraphProto, const: set[str]) -> set[str]:
    """Non-constant names computed only from constants and ``Shape``/``Size`` outputs: they
    depend on the input's *shape*, never on its values (exporters such as tf2onnx rebuild a
    head's broadcast shapes from ``Shape(input)``)."""
    out: set[str] = set()
    for n in graph.node:
        if n.op_type in NONDETERMINISTIC or any(True for _ in subgraphs(n)):
            continue
        if _domain(n) == "" and n.op_type in ("Shape", "Size"):
            out.update(o for o in n.output if o)
        elif n.input and all((not x) or x in const or x in out for x in n.input):
            out.update(o for o in n.output if o and o not in const)
    return out


def _region(graph: onnx.GraphProto, source: str | None, output: str, const: set[str]):
    """Nodes (indices) on paths from ``source`` to ``output``; ``(nodes, None)``, or
    ``(nodes, name)`` when ``output`` also reads ``name``, a graph input other than ``source``."""
    index = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    nodes: set[int] = set()
    seen: set[str] = set()
    stack = [output]
    stray = None
    while stack:
        t = stack.pop()
        if t in seen or t == source or t in const:
            continue
        seen.add(t)
        i = index.get(t)
        if i is None:
            stray = stray or t
            continue
        if i in nodes:
            continue
        nodes.add(i)
        n = graph.node[i]
        stack.extend(node_reads(n))
    return nodes, stray


def find_head(model: onnx.ModelProto) -> HeadMatch:
    """The feature tensor feeding the last matrix product before the output (see module doc).

    Raises ``UnsupportedError`` explaining why no cut was found.
    """
    graph = model.graph
    if not graph.output:
        raise UnsupportedError("the model has no outputs")
    out = graph.output[0].name
    # shape-only tensors count as constants here: a head that reads Shape(input) to rebuild
    # its broadcast shapes is still a function of the feature values alone
    const = _constants(graph)
    const = const | _shape_only(graph, const)
    ancestors, _ = _region(graph, None, out, const)
    products = [i for i in sorted(ancestors, reverse=True) if (_domain(graph.node[i]), graph.node[i].op_type) in _PRODUCTS]
    if not products:
        ops = sorted({graph.node[i].op_type for i in ancestors})
        raise UnsupportedError(
            f"no Gemm/MatMul head produces output '{out}' (its ancestors use {', '.join(ops) or 'no ops'}); pass --features NAME to choose the feature tensor"
        )
    node = graph.node[products[0]]
    act, weight = _PRODUCTS[(_domain(node), node.op_type)]
    label = f"{node.op_type} '{node.name or node.output[0]}'"
    if len(node.input) <= weight or node.input[weight] not in const:
        raise UnsupportedError(f"the last product before '{out}', {label}, multiplies two computed tensors (no constant weights); pass --features NAME")
    if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
        raise UnsupportedError(f"{label} has transA=1: its input is not [N, features]; pass --features NAME")
    feature = node.input[act]
    prod = producers(graph)
    while feature in prod and prod[feature].op_type in _QUANTIZERS and prod[feature].input:
        feature = prod[feature].input[0]
    nodes, stray = _region(graph, feature, out, const)
    if stray is not None:
        raise UnsupportedError(f"output '{out}' is not a function of '{feature}' (the input of {label}) alone: it also reads '{stray}'; pass --features NAME")
    removed = [graph.node[i].op_type for i in sorted(nodes)]
    last = prod.get(out)
    softmax = last is not None and _domain(last) == "" and (
        last.op_type == "Softmax"
        # exporters' decomposed softmax: Exp(z - max) / ReduceSum(Exp(...))
        or (last.op_type == "Div" and last.input and getattr(prod.get(last.input[0]), "op_type", "") == "Exp")
    )
    log.info("head: %s; features '%s'; replacing %s", label, feature, ", ".join(removed))
    return HeadMatch(feature, node.name or node.output[0], node.op_type, removed, softmax)


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every value, initializer and node name of the main graph (for fresh names)."""
    names = {i.name for i in graph.input} | {o.name for o in graph.output} | {t.name for t in graph.initializer}
    names |= {v.name for v in graph.value_info}
    for n in graph.node:
        names.update(x for x in n.input if x)
        names.update(x for x in n.output if x)
        if n.name:
            names.add(n.name)
    return names


def tensor_info(model: onnx.ModelProto, name: str) -> TensorInfo:
    """Locate ``name`` in the main graph; raise ``UsageError`` when it is not a computed
    tensor (missing, an initializer, a constant) and return what inference knows of it."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = {i.name: i for i in graph.input}
    produced = {o for n in graph.node for o in n.output if o}
    if name not in produced and name not in inputs:
        if name in inits:
            raise UsageError(f"--features '{name}' is an initializer (a weight), not a computed tensor")
        inner = any(name in {o for m in g.node for o in m.output} for n in graph.node for g in subgraphs(n))
        where = " (it exists only inside a subgraph)" if inner else ""
        raise UsageError(f"--features '{name}': no such tensor in the model{where}")
    if name in _constants(graph):
        raise UsageError(f"--features '{name}' is a constant: it does not depend on the model's inputs")
    vi = inputs.get(name)
    if vi is None:
        known = {v.name: v for v in list(graph.value_info) + list(graph.output)}
        vi = known.get(name)
        if vi is None or not vi.type.tensor_type.elem_type:
            try:
                inferred = onnx.shape_inference.infer_shapes(model)
                known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
                vi = known.get(name, vi)
            except Exception as exc:  # inference is a hint here; the runtime probe decides
                log.debug("shape inference failed: %s", exc)
    if vi is None or not vi.type.HasField("tensor_type"):
        return TensorInfo(name)
    tt = vi.type.tensor_type
    dims = (
        [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        if tt.HasField("shape")
        else None
    )
    return TensorInfo(name, tt.elem_type, dims)


def _value_info(name: str, elem_type: int, dims: list | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, dims) if elem_type else helper.make_empty_tensor_value_info(name)


def with_outputs(model: onnx.ModelProto, extra: list[TensorInfo]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the tensors in ``extra`` (the reference run)."""
    m = copy.deepcopy(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(
        _value_info(t.name, t.elem_type, t.dims) for t in extra if t.name not in have
    )
    return m


def cut_at(model: onnx.ModelProto, feature: TensorInfo) -> tuple[onnx.ModelProto, dict]:
    """A copy of ``model`` whose only output is ``feature``, dead code removed; ``(model, counts)``."""
    m = copy.deepcopy(model)
    before_nodes, before_inits = len(m.graph.node), len(m.graph.initializer)
    del m.graph.output[:]
    m.graph.output.append(_value_info(feature.name, feature.elem_type, feature.dims))
    swept = remove_unused(m)
    counts = {
        "nodes_removed": before_nodes - len(m.graph.node),
        "initializers_removed": before_inits - len(m.graph.initializer),
        "value_info_removed": swept.get("value_info", 0),
    }
    return m, counts


def add_pooling(model: onnx.ModelProto, feature: str, rank: int, pool: str) -> str:
    """Append pooling + Flatten after ``feature`` (in place); returns the ``[N, C]`` name.

    Rank 2 features are returned unchanged.  The model's outputs are not touched.
    """
    if pool not in POOLS:
        raise UsageError(f"unknown pool '{pool}' (choose from {', '.join(POOLS)})")
    if rank == 2:
        return feature
    graph = model.graph
    taken = all_names(graph)
    src = feature
    if pool != "flatten":
        op = "GlobalAveragePool" if pool == "mean" else "GlobalMaxPool"
        pooled = unique_name("adapt/pooled", taken)
        graph.node.append(helper.make_node(op, [src], [pooled], name=unique_name(f"adapt/{op}", taken)))
        src = pooled
    flat = unique_name("adapt/features", taken)
    graph.node.append(helper.make_node("Flatten", [src], [flat], name=unique_name("adapt/Flatten", taken), axis=1))
    return flat
