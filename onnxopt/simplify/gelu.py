"""Decomposed GELUs fused into ONNX Runtime's ``FastGelu`` / ``Gelu`` (``com.microsoft``).

tf2onnx, jax2tf and older torch.onnx exports write a GELU as eight or nine elementwise ops:

- the tanh approximation ``0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))``
  (``FastGelu``), the cube written as ``Pow(x, 3)`` or as products of ``x``, the constants
  folded anywhere into the products;
- the exact form ``0.5 * x * (1 + erf(x / sqrt(2)))`` (``Gelu``).

Quantized as they are, every intermediate gets its own 8-bit range (``x**3`` spans a range
no 8 bits can hold next to ``x``); fused, a static INT8 quantizer quantizes only the GELU's
input and output, and it runs as one kernel.

Matched: a ``Tanh`` (``Erf``) whose argument is, as a polynomial in one tensor ``x`` built
from ``Add``/``Mul``/``Div``/``Pow`` and scalar constants, ``a*x + b*x**3`` with ``a`` =
sqrt(2/pi) and ``b/a`` = 0.044715 (``x / sqrt(2)``), each within 1e-4 relative; then, from the
``Tanh`` (``Erf``) on, ``Add`` of 1 and products by scalar constants and by ``x`` whose
result is ``0.5 * x * (1 + t)``.  The node that makes that result is replaced; the rest goes
with dead-code removal (nodes with other readers stay).  Each ``Tanh``/``Erf`` not fused says
why.  ORT's kernels compute the same formula in another float order: the result is checked
within ``verify.REASSOCIATED_REL_L2`` by the caller.
"""

from __future__ import annotations

import copy
import logging
import math

import onnx
from onnx import helper

from ..graph import consumers, producers, unique_name
from ..io import tensor_array
from .constants import graph_constants
from .dead import remove_unused
from .matching import NoMatch, close

__all__ = ["find_gelus", "fuse_gelus"]

log = logging.getLogger(__name__)

MS_DOMAIN = "com.microsoft"
_TANH_A = math.sqrt(2 / math.pi)
_TANH_B = 0.044715
_MAX_DEPTH = 8


class _Poly:
    """Polynomials in one tensor ``x`` (``{power: coefficient}``) of the expression that
    makes a tensor, through Add / Sub / Mul / Div by a constant / Pow by an integer."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.prod, self.cons = producers(g), consumers(g)
        self.outputs = {o.name for o in g.output}
        self.consts = graph_constants(g)

    def scalar(self, name: str) -> float | None:
        t = self.consts.get(name)
        if t is None:
            return None
        a = tensor_array(t)
        return float(a.reshape(-1)[0]) if a.size == 1 and a.dtype.kind == "f" else None

    def cone(self, name: str) -> list[str]:
        """The non-constant tensors the arithmetic making ``name`` reads, nearest first: the
        candidates for ``x`` (itself made by an ``Add`` of a bias, say)."""
        out, frontier = [], [name]
        for _ in range(_MAX_DEPTH):
            nxt = []
            for t in frontier:
                n = self.prod.get(t)
                if n is None or n.op_type not in ("Add", "Sub", "Mul", "Div", "Pow") or n.domain not in ("", "ai.onnx"):
                    continue
                for i in n.input[:1] if n.op_type == "Pow" else n.input:
                    if i not in out and i not in self.consts:
                        out.append(i)
                        nxt.append(i)
            frontier = nxt
        return out

    def of(self, name: str, x: str, depth: int = 0) -> dict[int, float]:
        if name == x:
            return {1: 1.0}
        c = self.scalar(name)
        if c is not None:
            return {0: c}
        n = self.prod.get(name)
        if n is None or n.domain not in ("", "ai.onnx") or depth > _MAX_DEPTH:
            raise NoMatch(f"'{name}' is not arithmetic on '{x}'")
        op = n.op_type
        if op in ("Add", "Sub"):
            a, b = self.of(n.input[0], x, depth + 1), self.of(n.input[1], x, depth + 1)
            sign = 1.0 if op == "Add" else -1.0
            return {p: a.get(p, 0.0) + sign * b.get(p, 0.0) for p in set(a) | set(b)}
        if op == "Mul":
            a, b = self.of(n.input[0], x, depth + 1), self.of(n.input[1], x, depth + 1)
            out: dict[int, float] = {}
            for pa, ca in a.items():
                for pb, cb in b.items():
                    out[pa + pb] = out.get(pa + pb, 0.0) + ca * cb
            return out
        if op == "Div":
            c = self.scalar(n.input[1])
            if c is None or c == 0:
                raise NoMatch(f"'{n.name}' divides by something other than a constant")
            return {p: v / c for p, v in self.of(n.input[0], x, depth + 1).items()}
        if op == "Pow":
            e = self.scalar(n.input[1])
            if e is None or e != int(e) or not 1 <= e <= 3:
                raise NoMatch(f"'{n.name}' is not a small integer power")
            base = self.of(n.input[0], x, depth + 1)
            if len(base) != 1:
                raise NoMatch(f"'{n.name}' raises a sum to a power")
            ((p, c),) = base.items()
            return {p * int(e): c ** int(e)}
        raise NoMatch(f"'{name}' is made by {op}")

    def sole_reader(self, name: str) -> onnx.NodeProto | None:
        readers = self.cons.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.outputs else None


def _terms(poly: dict[int, float]) -> dict[int, float]:
    return {p: c for p, c in poly.items() if c != 0.0}


def _match(pl: _Poly, node: onnx.NodeProto) -> tuple[str, str, str]:
    """(kind "FastGelu" | "Gelu", x, the GELU's output) for a Tanh / Erf node: the first
    tensor of its argument's cone for which the whole pattern holds."""
    why = "its argument is not arithmetic on one tensor"
    for x in pl.cone(node.input[0]):
        try:
            return _match_at(pl, node, x)
        except NoMatch as exc:
            why = str(exc) if "is not arithmetic" not in str(exc) and "made by" not in str(exc) else why
    raise NoMatch(why)


def _match_at(pl: _Poly, node: onnx.NodeProto, x: str) -> tuple[str, str, str]:
    arg = _terms(pl.of(node.input[0], x))
    if node.op_type == "Tanh":
        kind = "FastGelu"
        a, b = arg.get(1), arg.get(3)
        if set(arg) != {1, 3} or not close(a, _TANH_A) or not close(b / a, _TANH_B):
            raise NoMatch(f"its argument {_show(arg)} is not sqrt(2/pi)*(x + 0.044715*x^3)")
    else:
        kind = "Gelu"
        if set(arg) != {1} or not close(arg[1], 1 / math.sqrt(2)):
            raise NoMatch(f"its argument {_show(arg)} is not x/sqrt(2)")
    # forward: (1 + t), then products by constants and by x until 0.5 * x * (1 + t)
    cur, plus_one, coef, power, y = node.output[0], False, 1.0, 0, None
    while True:
        n = pl.sole_reader(cur)
        if n is None or n.domain not in ("", "ai.onnx") or len(n.input) != 2:
            break
        other = n.input[1] if n.input[0] == cur else n.input[0]
        if n.op_type == "Add" and not plus_one and pl.scalar(other) == 1.0:
            plus_one = True
        elif plus_one and n.op_type == "Mul":
            try:
                term = _terms(pl.of(other, x))
            except NoMatch:
                break
            if len(term) != 1:
                break
            ((p, c),) = term.items()
            coef, power = coef * c, power + p
        elif plus_one and n.op_type == "Div" and n.input[0] == cur and pl.scalar(other):
            coef /= pl.scalar(other)
        else:
            break
        cur = n.output[0]
        if plus_one and power == 1 and close(coef, 0.5):
            y = cur
    if y is None:
        raise NoMatch("its result is not 0.5 * x * (1 + t)")
    return kind, x, y


def _show(poly: dict[int, float]) -> str:
    return " + ".join(f"{c:.6g}*x^{p}" for p, c in sorted(poly.items())) or "0"


def find_gelus(model: onnx.ModelProto) -> tuple[list[tuple[str, str, str]], list[str]]:
    """``([(kind, x, y), ...], refusals)``: the decomposed GELUs of the main graph (``kind``
    the ORT op that replaces them), and why each other ``Tanh`` / ``Erf`` is not one."""
    pl, found, refused = None, [], []
    for n in model.graph.node:
        if n.op_type not in ("Tanh", "Erf") or n.domain not in ("", "ai.onnx"):
            continue
        pl = pl or _Poly(model)
        if not pl.cone(n.input[0]):
            continue  # an activation of a tensor no arithmetic made: not a GELU, nothing to say
        try:
            found.append(_match(pl, n))
        except NoMatch as exc:
            refused.append(f"'{n.name or n.output[0]}' not fused as a GELU: {exc}")
    return found, refused


def fuse_gelus(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int, list[str]]:
    """``(model, fused, notes)``: a new model with every matched GELU replaced by ORT's
    ``FastGelu`` / ``Gelu`` (``model`` itself, unchanged, when none is)."""
    found, notes = find_gelus(model)
    if not found:
        return model, 0, notes
    model = copy.deepcopy(model)
    g = model.graph
    taken = {x for n in g.node for x in (*n.input, *n.output)} | {n.name for n in g.node}
    made_by = {o: n.name for n in g.node for o in n.output if n.name}
    by_output = {}
    for kind, x, y in found:
        # ``<node>/<Fusion>``, as ORT's optimizer names its fusions (``map_node_names``)
        name = unique_name(f"{made_by.get(y, y)}/{kind}Fusion", taken)
        taken.add(name)
        by_output[y] = helper.make_node(kind, [x], [y], name=name, domain=MS_DOMAIN)
    new = [by_output.get(next((o for o in n.output if o in by_output), None), n) for n in g.node]
    del g.node[:]
    g.node.extend(new)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    remove_unused(model)
    log.info("GELU fused: %s", ", ".join(f"{k} -> {y}" for k, _, y in found))
    return model, len(found), notes
