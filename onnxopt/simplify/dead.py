"""Dead code: nodes whose outputs nobody reads, initializers nobody reads, value_info of
values no node computes (stale, or redundant for initializers and graph inputs).

A node is live when one of its outputs is a graph output or is read by a live node
(subgraph outer-scope reads count).  Graph inputs are kept (they are the interface), except
IR < 4 inputs that only shadow an initializer that is removed.
"""

from __future__ import annotations

import onnx

from ..graph import node_reads, replace_repeated, subgraphs

__all__ = ["remove_unused"]


def _sweep(graph: onnx.GraphProto, counts: dict) -> None:
    live: set[str] = {o.name for o in graph.output}
    alive = [False] * len(graph.node)
    for i in range(len(graph.node) - 1, -1, -1):
        n = graph.node[i]
        if any(o in live for o in n.output if o):
            alive[i] = True
            live |= node_reads(n)
    counts["nodes"] += replace_repeated(
        graph.node, [n for n, a in zip(graph.node, alive, strict=True) if a]
    )
    for n in graph.node:
        for g in subgraphs(n):
            _sweep(g, counts)
    unused = {t.name for t in graph.initializer if t.name not in live}
    counts["initializers"] += replace_repeated(
        graph.initializer, [t for t in graph.initializer if t.name not in unused]
    )
    # IR < 4 graph inputs that only shadow a removed initializer go with it
    replace_repeated(graph.input, [i for i in graph.input if i.name not in unused])
    # value_info describes values that nodes compute: entries for anything else are stale or,
    # for initializers and graph inputs, redundant (their own type says it).
    computed = {o for n in graph.node for o in n.output if o}
    counts["value_info"] += replace_repeated(
        graph.value_info, [v for v in graph.value_info if v.name in computed]
    )


def remove_unused(model: onnx.ModelProto) -> dict:
    """Remove dead nodes / initializers / value_info in place (fixed point); returns counts."""
    counts = {"nodes": 0, "initializers": 0, "value_info": 0}
    while True:
        before = dict(counts)
        _sweep(model.graph, counts)
        if counts == before:
            break
    _drop_unused_functions(model, counts)
    return counts


def _drop_unused_functions(model: onnx.ModelProto, counts: dict) -> None:
    if not model.functions:
        return
    from ..graph import iter_graphs

    used = {(n.domain, n.op_type) for g in iter_graphs(model.graph) for n in g.node}
    # functions may call functions
    changed = True
    while changed:
        changed = False
        for f in model.functions:
            if (f.domain, f.name) in used:
                for n in f.node:
                    if (n.domain, n.op_type) not in used:
                        used.add((n.domain, n.op_type))
                        changed = True
    dropped = replace_repeated(
        model.functions, [f for f in model.functions if (f.domain, f.name) in used]
    )
    if dropped:
        counts["functions"] = counts.get("functions", 0) + dropped
