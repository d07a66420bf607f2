"""Residual blocks ``y = x + f(x)``: detection and removal (network trimming).

An ``Add`` (or two-input ``Sum``) is a residual block when one input ``x`` (the shortcut)
is an ancestor of the other input ``f`` and:

- every path into ``f``'s branch starts at ``x`` or at constants (the branch reads no other
  activation), and the branch does reach ``x``;
- no tensor made inside the branch is read outside it (other than by the Add) or is a
  graph output;
- ``x``, ``f`` and the Add's output have the same, fully known, shape (no broadcasting);
- the branch holds a weight layer (Conv / ConvTranspose / Gemm / MatMul / Einsum): an
  activation written as ``x + c * x^3`` (tanh-GELU) has the same form and is no block.

A projection shortcut (``Add(conv(x), f(x))``) is not such a block: removing ``f`` would
leave ``conv(x)``, which does not match the original mapping.  Removing a block makes
the Add's readers read ``x`` (the Add becomes ``Identity`` when its output is a graph
output) and drops the branch as dead code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx
from onnx import helper

from ..graph import consumers, producers, rename_uses
from ..simplify.dead import remove_unused
from .groups import node_label, static_shapes
from .weights import WeightStore

__all__ = ["Block", "find_blocks", "remove_blocks"]

_MAX_BRANCH = 2000
_WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"}


@dataclass
class Block:
    add: str  # the Add node's output tensor (its identity)
    label: str
    skip: str
    branch: str
    nodes: list[str] = field(default_factory=list)  # outputs[0] of the branch's nodes
    params: int = 0

    def to_dict(self) -> dict:
        return {
            "block": self.label,
            "output": self.add,
            "shortcut": self.skip,
            "branch_nodes": len(self.nodes),
            "params": self.params,
        }


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    for n in graph.node:
        if n.op_type.startswith("Random"):
            continue
        if all((not x) or x in names for x in n.input):
            names.update(o for o in n.output if o)
    return names


def find_blocks(
    model: onnx.ModelProto, inputs: dict | None = None
) -> tuple[list[Block], list[str]]:
    """Residual blocks in graph order, and why other two-activation Adds are not blocks;
    ``inputs``: static dims for symbolic graph inputs (``groups.static_shapes``)."""
    g = model.graph
    prod = producers(g)
    cons = consumers(g)
    consts = _constant_names(g)
    outputs = {o.name for o in g.output}
    shapes = static_shapes(model, inputs)
    ws = WeightStore(model)
    sizes = {t.name: math.prod(int(d) for d in t.dims) for t in g.initializer} | {
        name: ws.fill(name).size for name in ws.fills
    }
    blocks, refusals = [], []
    for node in g.node:
        if (
            node.op_type not in ("Add", "Sum")
            or node.domain not in ("", "ai.onnx")
            or len(node.input) != 2
        ):
            continue
        a, b = node.input
        if a in consts or b in consts or a == b:
            continue
        why = []
        for skip, branch in ((a, b), (b, a)):
            res = _branch(skip, branch, node, prod, cons, consts, outputs)
            if isinstance(res, str):
                why.append(res)
                continue
            sx, sf, sy = shapes.get(skip), shapes.get(branch), shapes.get(node.output[0])
            if any(v is None or any(d is None for d in v[1:]) for v in (sx, sf, sy)):
                why.append(
                    "shortcut and branch shapes are unknown (symbolic input dims: give --shape or data)"
                )
                continue
            if sx != sf or sx != sy:
                why.append(f"shortcut {list(sx)} and branch {list(sf)} shapes differ")
                continue
            if not any(n.op_type in _WEIGHT_OPS for n in res):
                why.append("the branch holds no weight layer (Conv / Gemm / MatMul)")
                continue
            params = sum(sizes[x] for x in {x for n in res for x in n.input if x in sizes})
            nodes = [n.output[0] for n in res]
            blocks.append(Block(node.output[0], node_label(node), skip, branch, nodes, params))
            break
        else:
            refusals.append(
                f"{node.op_type} '{node_label(node)}' is not a residual block: {why[0] if why else 'no shortcut'}"
            )
    return blocks, refusals


def _branch(skip, branch, add_node, prod, cons, consts, outputs):
    """The nodes of ``f`` (list) or the reason ``branch`` is not ``f(skip)`` (str)."""
    start = prod.get(branch)
    if start is None:
        return "one input is a graph input"
    seen: dict[int, onnx.NodeProto] = {}
    stack = [start]
    reached, foreign = False, None
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen[id(n)] = n
        if len(seen) > _MAX_BRANCH:
            return "branch too large"
        for x in n.input:
            if not x or x in consts:
                continue
            if x == skip:
                reached = True
                continue
            p = prod.get(x)
            if p is None:
                foreign = foreign or x
                continue
            stack.append(p)
    if not reached:
        return "neither input is computed from the other (a projection shortcut or two branches)"
    if foreign:
        return f"the branch also reads graph input '{foreign}'"
    inside = {id(n) for n in seen.values()}
    for n in seen.values():
        for o in n.output:
            if not o:
                continue
            if o in outputs:
                return f"branch tensor '{o}' is a graph output"
            if any(id(c) not in inside and c is not add_node for c in cons.get(o, [])):
                return f"branch tensor '{o}' is read outside the block"
    return list(seen.values())


def remove_blocks(model: onnx.ModelProto, adds: list[str], inputs: dict | None = None) -> list[str]:
    """Remove the blocks whose Add outputs are ``adds`` (in place); returns those removed.

    Blocks are re-detected after each removal, so nested blocks are handled; a block
    already gone with an enclosing one is skipped.
    """
    removed = []
    for add in adds:
        blocks, _ = find_blocks(model, inputs)
        blk = next((b for b in blocks if b.add == add), None)
        if blk is None:
            continue
        g = model.graph
        idx = next(i for i, n in enumerate(g.node) if n.output and n.output[0] == add)
        if add in {o.name for o in g.output}:
            g.node[idx].CopyFrom(
                helper.make_node("Identity", [blk.skip], [add], name=g.node[idx].name)
            )
        else:
            rename_uses(g, {add: blk.skip})
            del g.node[idx]
        remove_unused(model)
        removed.append(add)
    del model.graph.value_info[:]
    return removed
