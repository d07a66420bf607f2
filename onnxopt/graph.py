"""Graph queries and small edits on ``onnx.GraphProto`` shared by the passes.

Subgraphs (If/Loop/Scan bodies) may read values of enclosing graphs by name; every query
here that asks "is this value used" counts those outer-scope reads.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import onnx

__all__ = [
    "default_opset",
    "Body",
    "walk_bodies",
    "iter_graphs",
    "subgraphs",
    "used_names",
    "node_reads",
    "consumers",
    "producers",
    "rename_uses",
    "initializer_map",
    "unique_name",
    "replace_repeated",
    "outer_reads",
    "sort_nodes",
    "attribute",
    "FLOAT_TYPES",
    "real_inputs",
]

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)  # the float tensor element types


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The bodies one node holds (If branches, Loop/Scan bodies), in attribute order."""
    for _, g in _node_bodies(node):
        yield g


def _node_bodies(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for g in attr.graphs:
                yield attr.name, g


@dataclass(frozen=True)
class Body:
    """A control-flow body found by ``walk_bodies``: the graph, the node and attribute that
    hold it, the node's index in its graph, and the bodies enclosing it (outermost first)."""

    graph: onnx.GraphProto
    node: onnx.NodeProto
    attribute: str
    index: int
    parents: tuple[Body, ...] = ()

    @property
    def node_label(self) -> str:
        return self.node.name or f"{self.node.op_type}#{self.index}"

    @property
    def path(self) -> tuple[Body, ...]:
        return (*self.parents, self)


def walk_bodies(graph: onnx.GraphProto, _parents: tuple[Body, ...] = ()) -> Iterator[Body]:
    """Every If/Loop/Scan body under ``graph``, nested ones included, depth first in node
    order.  The one subgraph walk of onnxopt: stats, inspect and the pass runner use it."""
    for i, node in enumerate(graph.node):
        for name, g in _node_bodies(node):
            body = Body(g, node, name, i, _parents)
            yield body
            yield from walk_bodies(g, body.path)


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph under it, depth first."""
    yield graph
    for body in walk_bodies(graph):
        yield body.graph


def outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads that it does not define itself."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {t.name for t in graph.sparse_initializer}
    reads = set()
    for n in graph.node:
        reads |= node_reads(n)
        defined.update(n.output)
    reads.update(o.name for o in graph.output)
    return reads - defined


def node_reads(node: onnx.NodeProto) -> set[str]:
    """The names ``node`` reads: its inputs and the outer reads of its subgraphs."""
    reads = {x for x in node.input if x}
    for g in subgraphs(node):
        reads |= outer_reads(g)
    return reads


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Every name read by a node of ``graph`` (including its subgraphs' outer reads) or a graph output."""
    return {o.name for o in graph.output}.union(*(node_reads(n) for n in graph.node))


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """value name -> nodes of ``graph`` that read it (directly or from a subgraph)."""
    out = defaultdict(list)
    for n in graph.node:
        for x in node_reads(n):
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


def replace_repeated(field, items: list) -> int:
    """Make the repeated protobuf ``field`` hold ``items`` (a sub-list of it, in order);
    returns how many entries went."""
    removed = len(field) - len(items)
    if removed:
        del field[:]
        field.extend(items)
    return removed


def unique_name(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        name = f"{base}_{i}"
        i += 1
    taken.add(name)
    return name


def sort_nodes(graph: onnx.GraphProto) -> bool:
    """Order ``graph``'s nodes topologically, counting the names a node's subgraphs read from
    this graph as its inputs (an If body reading ``h`` must come after ``h``'s producer);
    nodes already in order keep it.  Returns whether the order changed.  Leaves the graph
    alone when it has a cycle or reads a name nothing defines."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[r] for r in node_reads(n) if r in producer} for n in nodes]
    order, state = [], [0] * len(nodes)  # 0 new, 1 on the stack, 2 placed
    for root in range(len(nodes)):
        stack = [root]
        while stack:
            i = stack[-1]
            if state[i] == 2:
                stack.pop()
                continue
            state[i] = 1
            todo = [d for d in sorted(deps[i]) if state[d] != 2]
            if any(state[d] == 1 for d in todo):
                return False  # a cycle: not ours to fix
            if todo:
                stack.extend(reversed(todo))
            else:
                state[i] = 2
                order.append(i)
                stack.pop()
    if order == list(range(len(nodes))):
        return False
    graph.ClearField("node")
    graph.node.extend(nodes[i] for i in order)
    return True


def real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs that no initializer (dense or sparse) backs."""
    inits = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    return [i for i in graph.input if i.name not in inits]


def attribute(node: onnx.NodeProto, name: str, default=None):
    """The value of ``node``'s attribute ``name`` (``default`` when absent)."""
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default (``ai.onnx``) domain ``model`` imports; 0 when none."""
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
