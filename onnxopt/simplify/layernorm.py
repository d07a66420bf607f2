"""Decomposed layer normalizations fused into one ``LayerNormalization`` node (opset >= 17).

Exporters that predate ``LayerNormalization`` (tf2onnx, jax2tf, older torch.onnx, paddle2onnx)
write a layer norm as a dozen elementwise ops.  Run as they are, they cost a kernel each; handed
to a static INT8 quantizer, every intermediate gets its own 8-bit range, and the "fast
variance" form some of them use, ``var = mean(x*x) - mean(x)**2`` (Flax, jax2tf), cancels
two large quantized numbers into a small one: magika's static INT8 lost 93 points of agreement
there, for ONNX Runtime's quantizer too.  One fused node is one kernel, and ORT's QDQ quantizer
quantizes only its input and output.

Matched, for a float tensor ``x`` and a set of axes ``A`` (any axes; static sizes along them):

- the mean ``m = mean(x, A)``: ``ReduceMean``, or ``ReduceSum`` times ``1/n`` (or divided by
  ``n``), ``n`` the number of elements reduced;
- the variance, either ``mean(d*d, A)`` with ``d = x - m`` (``Mul(d, d)`` or ``Pow(d, 2)``),
  or ``mean(x*x, A) - m*m``, optionally clamped by ``Max(., 0)``;
- ``s = Sqrt(var + eps)`` for a scalar constant ``eps``;
- the output ``d / s``, ``d * Reciprocal(s)`` or ``d * (1 / s)``, with constant factors
  (``gamma``) multiplied in anywhere after ``s`` and constant terms (``beta``) added last.

Between these, ``Reshape`` / ``Expand`` / ``Unsqueeze`` / ``Squeeze`` nodes are looked
through: exporters write ``keepdims=0`` reductions and broadcast them back.  What such a node
does to the shape is not proved here (only the output's rank is compared): a reshape that
moves values would change the outputs, which the check against the input model catches.
``gamma`` and ``beta`` must vary only along ``A``.  Where shape inference gives ``x`` no rank (paddle2onnx's computed reshapes), a layer norm over its last axes
(``axes=[-1]``) still matches, its width read from ``gamma`` or ``beta``.

Replaced by ``LayerNormalization(x, gamma, beta, axis, epsilon)``; when ``A`` is not the last
axes of ``x``, by ``Transpose -> LayerNormalization -> Transpose``.  A model whose default
opset is below 17 is converted to opset 17 first (``onnx.version_converter``), only when a
match was found; if the conversion fails the model is left as it is, with the reason.  The
replaced nodes left without a reader are removed.  The result is not bit-identical (one
kernel's rounding instead of a dozen's): callers check it within
``verify.REASSOCIATED_REL_L2`` (1e-3 relative L2) against the input.
Each refusal of a candidate (a ``Sqrt`` of ``something + eps``) says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import consumers, default_opset, producers, unique_name
from ..io import tensor_array
from .constants import graph_constants
from .dead import remove_unused
from .matching import NoMatch, at_opset

__all__ = ["LayerNormMatch", "find_layernorms", "fuse_layernorms", "MIN_OPSET"]

log = logging.getLogger(__name__)

MIN_OPSET = 17  # LayerNormalization entered the default domain at opset 17
_BROADCAST = ("Reshape", "Expand", "Unsqueeze", "Squeeze")
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


@dataclass
class LayerNormMatch:
    """One decomposed layer norm: ``y = (x - mean) / sqrt(var + eps) * gamma + beta`` over
    ``axes`` of ``x``, counted from the back (-1 the last; ``rank`` None when unknown: the
    axes are then the last ones), ``dims`` their sizes; ``gamma``/``beta`` as the graph
    broadcasts them (None when absent)."""

    x: str
    y: str
    axes: tuple[int, ...]
    rank: int | None
    dims: list[int]
    eps: float
    gamma: np.ndarray | None
    beta: np.ndarray | None
    nodes: list[str]  # the nodes read on the way (names), for the report


class _Graph:
    """Lookups on one graph: producers, consumers, constants, static shapes."""

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, tuple]):
        g = model.graph
        self.prod, self.cons, self.shapes = producers(g), consumers(g), shapes
        self.consts = graph_constants(g)
        self.outputs = {o.name for o in g.output}
        self.dtypes = _dtypes(model)
        self.read: list[str] = []

    def const(self, name: str) -> np.ndarray | None:
        t = self.consts.get(name)
        return None if t is None else tensor_array(t)

    def node(self, name: str, *ops: str) -> onnx.NodeProto:
        n = self.prod.get(name)
        if n is None or n.op_type not in ops or n.domain not in ("", "ai.onnx"):
            raise NoMatch(f"'{name}' is not made by {'/'.join(ops)}")
        self.read.append(n.name or n.output[0])
        return n

    def rank(self, name: str) -> int | None:
        s = self.shapes.get(name)
        return None if s is None else len(s)

    def sole_reader(self, name: str) -> onnx.NodeProto | None:
        readers = self.cons.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.outputs else None

    def split_const(self, n: onnx.NodeProto) -> tuple[str, np.ndarray] | None:
        """(the other input, the constant) of a binary node with one constant input."""
        a, b = n.input[0], n.input[1]
        if self.const(b) is not None and self.const(a) is None:
            return a, self.const(b)
        if self.const(a) is not None and self.const(b) is None:
            return b, self.const(a)
        return None


def _attr(n: onnx.NodeProto, name: str, default=None):
    for a in n.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _through_broadcast(g: _Graph, name: str) -> str:
    """``name`` with the shape-only nodes that made it (Reshape, Expand, Unsqueeze, Squeeze
    of a tensor) looked through."""
    while True:
        n = g.prod.get(name)
        if n is None or n.op_type not in _BROADCAST or n.domain not in ("", "ai.onnx"):
            return name
        g.read.append(n.name or n.output[0])
        name = n.input[0]


def _axes(g: _Graph, n: onnx.NodeProto, rank: int | None) -> tuple[int, ...]:
    """The axes ``n`` reduces, counted from the back (negative): a rank-less tensor (paddle2onnx
    exports, whose reshapes defeat shape inference) still matches on ``axes=[-1]``."""
    axes = _attr(n, "axes")
    if axes is None and len(n.input) > 1 and n.input[1]:
        c = g.const(n.input[1])
        if c is None:
            raise NoMatch(f"'{n.name}' reduces over axes that are not constant")
        axes = c.reshape(-1).tolist()
    if axes is None or len(axes) == 0:
        if _attr(n, "noop_with_empty_axes", 0):
            raise NoMatch(f"'{n.name}' reduces nothing")
        if rank is None:
            raise NoMatch(f"'{n.name}' reduces every axis of a tensor of unknown rank")
        axes = list(range(rank))
    if rank is None:
        if any(int(a) >= 0 for a in axes):
            raise NoMatch(f"'{n.name}' reduces axes {list(axes)} of a tensor of unknown rank")
        return tuple(sorted(int(a) for a in axes))
    return tuple(sorted(int(a) % rank - rank for a in axes))


def _mean(g: _Graph, name: str) -> tuple[str, tuple[int, ...]]:
    """(x, axes) for ``name = mean(x, axes)`` (ReduceMean, or ReduceSum scaled by 1/n)."""
    n = g.node(name, "ReduceMean", "ReduceSum", "Mul", "Div")
    if n.op_type in ("Mul", "Div"):
        split = g.split_const(n)
        if split is None or (n.op_type == "Div" and split[0] != n.input[0]):
            raise NoMatch(f"'{n.name}' does not scale a sum by a constant")
        total, c = split
        if c.size != 1:
            raise NoMatch(f"'{n.name}' scales by a tensor, not a scalar")
        s = g.node(total, "ReduceSum")
        x = s.input[0]
        rank = g.rank(x)
        if rank is None:
            raise NoMatch(f"the rank of '{x}' is unknown: the mean's divisor cannot be checked")
        axes = _axes(g, s, rank)
        dims = [g.shapes[x][a] for a in axes]
        if any(d is None for d in dims):
            raise NoMatch(f"'{x}' has a dynamic size along the reduced axes {list(axes)}: the mean's divisor cannot be checked")
        count = float(np.prod(dims))
        scale = float(c.reshape(-1)[0])
        want = 1.0 / count if n.op_type == "Mul" else count
        if abs(scale - want) > 1e-6 * abs(want):
            raise NoMatch(f"'{n.name}' scales the sum by {scale:g}, not by the mean's {want:g}")
        return x, axes
    x = n.input[0]
    if n.op_type == "ReduceSum":
        raise NoMatch(f"'{n.name}' is a sum, not a mean")
    return x, _axes(g, n, g.rank(x))


def _square(g: _Graph, name: str) -> str:
    """t for ``name = t * t`` (Mul) or ``t ** 2`` (Pow)."""
    n = g.node(name, "Mul", "Pow")
    if n.op_type == "Mul":
        if n.input[0] != n.input[1]:
            raise NoMatch(f"'{n.name}' is not a square")
        return n.input[0]
    e = g.const(n.input[1])
    if e is None or e.size != 1 or float(e.reshape(-1)[0]) != 2.0:
        raise NoMatch(f"'{n.name}' is not a square")
    return n.input[0]


def _centered(g: _Graph, name: str) -> tuple[str, str]:
    """(x, mean) for ``name = x - broadcast(mean)``."""
    n = g.node(_through_broadcast(g, name), "Sub")
    return n.input[0], _through_broadcast(g, n.input[1])


def _variance(g: _Graph, name: str) -> tuple[str, tuple[int, ...], str | None]:
    """(x, axes, the mean's tensor or None) for ``name = var(x, axes)``."""
    name = _through_broadcast(g, name)
    n = g.prod.get(name)
    if n is not None and n.op_type == "Max":  # max(var, 0): the fast form's guard
        split = g.split_const(g.node(name, "Max"))
        if split is None or np.any(split[1] != 0):
            raise NoMatch(f"'{n.name}' clamps the variance at something other than 0")
        name = _through_broadcast(g, split[0])
        n = g.prod.get(name)
    if n is not None and n.op_type == "Sub":  # mean(x*x) - mean(x)**2
        sub = g.node(name, "Sub")
        x, axes = _mean(g, sub.input[0])
        x = _square(g, x)
        m = _square(g, sub.input[1])
        mx, maxes = _mean(g, m)
        if mx != x or maxes != axes:
            raise NoMatch(f"'{sub.name}' subtracts the square of another mean")
        return x, axes, m
    d, axes = _mean(g, name)  # mean((x - m)**2)
    x, m = _centered(g, _square(g, d))
    mx, maxes = _mean(g, m)
    if mx != x or maxes != axes:
        raise NoMatch(f"the variance of '{x}' centers it on another mean")
    return x, axes, m


def _match(g: _Graph, sqrt: onnx.NodeProto) -> LayerNormMatch:
    g.read = [sqrt.name or sqrt.output[0]]
    add = g.node(_through_broadcast(g, sqrt.input[0]), "Add")
    split = g.split_const(add)
    if split is None or split[1].size != 1:
        raise NoMatch(f"'{add.name}' does not add a scalar epsilon")
    var, eps = split[0], float(split[1].reshape(-1)[0])
    x, axes, mean = _variance(g, var)
    if not _is_float(g, x):
        raise NoMatch(f"'{x}' is not a float tensor")
    # forward from sqrt: (1/s or s) times constants, then times (x - mean), then +beta
    cur, inverted, gamma, beta, done = sqrt.output[0], False, None, None, False
    while True:
        n = g.sole_reader(cur)
        if n is None or n.domain not in ("", "ai.onnx"):
            break
        op = n.op_type
        if not done and op == "Reciprocal" and not inverted:
            inverted = True
        elif not done and op == "Div" and not inverted and n.input[1] == cur and _is_one(g.const(n.input[0])):
            inverted = True
        elif op in _BROADCAST and n.input[0] == cur and not done:
            pass
        elif op == "Mul" and g.split_const(n) is not None and (done or inverted):
            c = g.split_const(n)[1]
            gamma = c if gamma is None else gamma * c
            if beta is not None:
                beta = beta * c
        elif not done and op in ("Mul", "Div") and (inverted == (op == "Mul")) and (op == "Mul" or n.input[1] == cur):
            other = n.input[0] if n.input[1] == cur else n.input[1]
            try:
                cx, cm = _centered(g, other)
            except NoMatch:
                break
            if cx != x or cm != mean:
                raise NoMatch(f"'{n.name}' scales another tensor than '{x}' minus its mean")
            done = True
        elif done and op == "Add" and g.split_const(n) is not None:
            c = g.split_const(n)[1]
            beta = c if beta is None else beta + c
        else:
            break
        g.read.append(n.name or n.output[0])
        cur = n.output[0]
    if not done:
        raise NoMatch(f"nothing divides '{x}' minus its mean by the standard deviation '{sqrt.output[0]}'")
    rank = g.rank(x)
    for what, c in (("gamma", gamma), ("beta", beta)):
        if c is not None and ((rank is not None and c.ndim > rank) or any(c.shape[-j] != 1 for j in range(1, c.ndim + 1) if -j not in axes)):
            raise NoMatch(f"{what} {list(c.shape)} varies along axes that are not normalized {list(axes)}")
    if rank is None and axes != tuple(range(-len(axes), 0)):
        raise NoMatch(f"'{x}' has an unknown rank and the normalized axes {list(axes)} are not the last ones")
    if rank is not None and g.rank(cur) is not None and g.rank(cur) != rank:
        raise NoMatch(f"'{cur}' has rank {g.rank(cur)}, '{x}' has {rank}")
    dims = _dims(g, x, axes, gamma, beta)
    return LayerNormMatch(x, cur, axes, rank, dims, eps, gamma, beta, list(dict.fromkeys(g.read)))


def _dims(g: _Graph, x: str, axes: tuple[int, ...], gamma, beta) -> list[int]:
    """The sizes of the normalized axes: from shape inference, else from gamma or beta (a
    size above 1 there is the axis's size: the graph broadcasts it against ``x``)."""
    known = g.shapes.get(x)
    if known is not None and all(known[a] is not None for a in axes):
        return [int(known[a]) for a in axes]
    for c in (gamma, beta):
        if c is not None and c.ndim >= -min(axes):
            sizes = [c.shape[a] for a in axes]
            if all(d > 1 for d in sizes):
                return sizes
    raise NoMatch(f"'{x}' has a dynamic size along the normalized axes {list(axes)}, and no gamma or beta gives it")


def _is_one(c: np.ndarray | None) -> bool:
    return c is not None and c.size == 1 and float(c.reshape(-1)[0]) == 1.0


def _is_float(g: _Graph, name: str) -> bool:
    t = g.consts.get(name)
    if t is not None:
        return t.data_type in _FLOATS
    return g.dtypes.get(name, onnx.TensorProto.FLOAT) in _FLOATS


def find_layernorms(model: onnx.ModelProto, shapes: dict[str, tuple] | None = None) -> tuple[list[LayerNormMatch], list[str]]:
    """The decomposed layer norms of ``model``'s main graph, and why each other candidate
    (a ``Sqrt`` of ``something + eps``) is not one.  ``shapes``: name -> dims (None for a
    dynamic dim), from shape inference when not given."""
    sqrts = _candidates(model)
    if not sqrts:
        return [], []
    if shapes is None:
        from ..prune.groups import static_shapes

        shapes = static_shapes(model)
    g = _Graph(model, shapes)
    found, refused = [], []
    for n in sqrts:
        try:
            found.append(_match(g, n))
        except NoMatch as exc:
            refused.append(f"'{n.name or n.output[0]}' not fused: {exc}")
    return found, refused


def _candidates(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The ``Sqrt`` nodes of ``something + constant``: where a layer norm may end."""
    g = model.graph
    prod, consts = producers(g), set(graph_constants(g))
    out = []
    for n in g.node:
        if n.op_type != "Sqrt" or n.domain not in ("", "ai.onnx"):
            continue
        p = prod.get(n.input[0])
        while p is not None and p.op_type in _BROADCAST:
            p = prod.get(p.input[0])
        if p is not None and p.op_type == "Add" and any(i in consts for i in p.input):
            out.append(n)
    return out


def _dtypes(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    return {vi.name: vi.type.tensor_type.elem_type for vi in (*g.input, *g.value_info, *g.output) if vi.type.HasField("tensor_type")}


def _normalized(c: np.ndarray | None, perm: list[int] | None, dims: list[int], fill: float, dtype) -> np.ndarray:
    """``c`` as a tensor of the normalized dims: its last ``len(dims)`` axes, after ``perm``
    (over ``x``'s rank) when the normalized axes are moved last."""
    if c is None:
        return np.full(dims, fill, dtype=dtype)
    k = len(dims)
    width = len(perm) if perm is not None else max(k, c.ndim)
    full = c.reshape((1,) * (width - c.ndim) + c.shape)
    if perm is not None:
        full = full.transpose(perm)
    return np.ascontiguousarray(np.broadcast_to(full.reshape(full.shape[-k:]), dims)).astype(dtype)



def fuse_layernorms(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int, list[str]]:
    """``(model, fused, notes)``: a new model with every matched layer norm of ``model`` fused
    (``model`` itself, unchanged, when none is); ``fused`` the number replaced; ``notes`` the
    refusals and the opset conversion."""
    from ..prune.groups import static_shapes

    if not _candidates(model):
        return model, 0, []
    shapes = static_shapes(model)
    found, notes = find_layernorms(model, shapes)
    if not found:
        return model, 0, notes
    converted = at_opset(model, MIN_OPSET, "LayerNormalization", f"{len(found)} layer norm(s)", notes)
    if converted is None:
        return model, 0, notes
    if default_opset(converted) != default_opset(model):
        shapes = static_shapes(converted)
        found, _ = find_layernorms(converted, shapes)
    model = converted
    shapes_dtypes = _dtypes(model)
    g = model.graph
    taken = {x for n in g.node for x in (*n.input, *n.output, n.name)} | {t.name for t in g.initializer} | {i.name for i in g.input}
    made_by = {o: n.name for n in g.node for o in n.output if n.name}
    by_output = {}
    for m in found:
        k = len(m.axes)
        trailing = m.axes == tuple(range(-k, 0))
        perm = None
        if not trailing:  # known rank (``_match``): the normalized axes moved last
            axes = [a + m.rank for a in m.axes]
            perm = [a for a in range(m.rank) if a not in axes] + axes
        dims = m.dims
        t = shapes_dtypes.get(m.x, onnx.TensorProto.FLOAT)
        dtype = helper.tensor_dtype_to_np_dtype(t)
        # named as ORT's optimizer names its fusions (``<node>/<Fusion>``): an exclusion of
        # the node that made the output maps to it (``quantize.preprocess.map_node_names``)
        base = unique_name(f"{made_by.get(m.y, m.y)}/LayerNormFusion", taken)
        taken.add(base)
        scale = numpy_helper.from_array(_normalized(m.gamma, perm, dims, 1.0, dtype), unique_name(f"{base}/scale", taken))
        bias = numpy_helper.from_array(_normalized(m.beta, perm, dims, 0.0, dtype), unique_name(f"{base}/bias", taken))
        taken.update((scale.name, bias.name))
        g.initializer.extend([scale, bias])
        nodes = []
        src = m.x
        if not trailing:
            src = unique_name(f"{base}/in", taken)
            taken.add(src)
            nodes.append(helper.make_node("Transpose", [m.x], [src], name=f"{base}/Transpose_in", perm=perm))
        out = m.y if trailing else unique_name(f"{base}/out", taken)
        taken.add(out)
        nodes.append(helper.make_node("LayerNormalization", [src, scale.name, bias.name], [out], name=base, axis=-k, epsilon=m.eps))
        if not trailing:
            nodes.append(helper.make_node("Transpose", [out], [m.y], name=f"{base}/Transpose_out", perm=np.argsort(perm).tolist()))
        by_output[m.y] = nodes
    # each fused layer norm takes the place of the node that made its output; the rest of
    # the pattern goes with dead-code removal (nodes with other readers stay)
    new = []
    for n in g.node:
        hit = next((o for o in n.output if o in by_output), None)
        new.extend(by_output[hit] if hit is not None else [n])
    del g.node[:]
    g.node.extend(new)
    remove_unused(model)
    for m in found:
        log.info("layer norm fused: %s -> %s over axes %s (%d nodes read)", m.x, m.y, list(m.axes), len(m.nodes))
    return model, len(found), notes
