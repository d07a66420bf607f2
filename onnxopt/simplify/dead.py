"""Dead code: nodes whose outputs nobody reads, initializers nobody reads, value_info of
values no node computes (stale, or redundant for initializers and graph inputs).

A node is live when one of its outputs is a graph output or is read by a live node
(subgraph outer-scope reads count).  Graph inputs are kept (they are the interface), except
IR < 4 inputs that only shadow an initializer that is removed.
"""

from __future__ import annotations

import onnx

from ..graph import outer_reads, subgraphs

__all__ = ["remove_unused"]

_SIDE_EFFECT_DOMAINS = ()


def _sweep(graph: onnx.GraphProto, counts: dict, keep_inputs: bool = True) -> None:
    live: set[str] = {o.name for o in graph.output}
    alive = [False] * len(graph.node)
    for i in range(len(graph.node) - 1, -1, -1):
        n = graph.node[i]
        if any(o in live for o in n.output if o):
            alive[i] = True
            live.update(x for x in n.input if x)
            for g in subgraphs(n):
                live |= outer_reads(g)
    removed_nodes = alive.count(False)
    if removed_nodes:
        keep = [n for n, a in zip(graph.node, alive, strict=True) if a]
        del graph.node[:]
        graph.node.extend(keep)
    counts["nodes"] += removed_nodes
    for n in graph.node:
        for g in subgraphs(n):
            _sweep(g, counts)
    unused = [t for t in graph.initializer if t.name not in live]
    if unused:
        names = {t.name for t in unused}
        keep = [t for t in graph.initializer if t.name not in names]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        shadow = [i for i in graph.input if i.name in names]
        if shadow:
            kept_inputs = [i for i in graph.input if i.name not in names]
            del graph.input[:]
            graph.input.extend(kept_inputs)
        counts["initializers"] += len(unused)
    # value_info describes values that nodes compute: entries for anything else are stale or,
    # for initializers and graph inputs, redundant (their own type says it).
    computed = {o for n in graph.node for o in n.output if o}
    stale = [v for v in graph.value_info if v.name not in computed]
    if stale:
        keep_vi = [v for v in graph.value_info if v.name in computed]
        del graph.value_info[:]
        graph.value_info.extend(keep_vi)
        counts["value_info"] += len(stale)


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
    keep = [f for f in model.functions if (f.domain, f.name) in used]
    if len(keep) != len(model.functions):
        counts["functions"] = counts.get("functions", 0) + len(model.functions) - len(keep)
        del model.functions[:]
        model.functions.extend(keep)
