"""Graph queries and small edits on ``onnx.GraphProto`` shared by the passes.

Subgraphs (If/Loop/Scan bodies) may read values of enclosing graphs by name; every query
here that asks "is this value used" counts those outer-scope reads.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = [
    "subgraphs",
    "has_subgraphs",
    "used_names",
    "consumers",
    "producers",
    "rename_uses",
    "initializer_map",
    "constant_value",
    "unique_name",
    "attribute",
]


def subgraphs(node: onnx.NodeProto):
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def has_subgraphs(graph: onnx.GraphProto) -> bool:
    return any(True for n in graph.node for _ in subgraphs(n))


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads that it does not define itself."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {t.name for t in graph.sparse_initializer}
    reads = set()
    for n in graph.node:
        reads.update(x for x in n.input if x)
        for g in subgraphs(n):
            reads |= _outer_reads(g)
        defined.update(n.output)
    reads.update(o.name for o in graph.output)
    return reads - defined


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Every name read by a node of ``graph`` (including its subgraphs' outer reads) or a graph output."""
    used = {o.name for o in graph.output}
    for n in graph.node:
        used.update(x for x in n.input if x)
        for g in subgraphs(n):
            used |= _outer_reads(g)
    return used


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """value name -> nodes of ``graph`` that read it (directly or from a subgraph)."""
    out = defaultdict(list)
    for n in graph.node:
        names = set(x for x in n.input if x)
        for g in subgraphs(n):
            names |= _outer_reads(g)
        for x in names:
            out[x].append(n)
    return out


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output if o}


def rename_uses(graph: onnx.GraphProto, mapping: dict[str, str]) -> int:
    """Replace reads of names (node inputs, graph outputs, subgraph outer reads); returns count.

    Subgraphs that define a name themselves shadow it and are not rewritten below that point.
    """
    count = 0
    for n in graph.node:
        for i, x in enumerate(n.input):
            if x in mapping:
                n.input[i] = mapping[x]
                count += 1
        for g in subgraphs(n):
            local = {i.name for i in g.input} | {t.name for t in g.initializer} | {o for m in g.node for o in m.output}
            inner = {k: v for k, v in mapping.items() if k not in local}
            if inner:
                count += rename_uses(g, inner)
    for o in graph.output:
        if o.name in mapping:
            o.name = mapping[o.name]
            count += 1
    return count


def initializer_map(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def constant_value(graph: onnx.GraphProto, name: str, inits: dict | None = None) -> np.ndarray | None:
    """The value of ``name`` if it is an initializer (not overridable by an input) or a Constant output."""
    inits = inits if inits is not None else initializer_map(graph)
    if name in inits and name not in {i.name for i in graph.input}:
        from .io import tensor_array  # lazy tensors of a large model are read from their file

        return tensor_array(inits[name])
    for n in graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] == name and n.domain in ("", "ai.onnx"):
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def unique_name(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        name = f"{base}_{i}"
        i += 1
    taken.add(name)
    return name


def attribute(node: onnx.NodeProto, name: str, default=None):
    """The value of ``node``'s attribute ``name`` (``default`` when absent)."""
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default
