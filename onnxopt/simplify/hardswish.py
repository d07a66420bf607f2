"""Decomposed hard swishes fused into one ``HardSwish`` node (opset >= 14).

``hardswish(x) = x * relu6(x + 3) / 6`` (MobileNetV3, PP-LCNet) is written by paddle2onnx,
tf2onnx and torch.onnx below opset 14 as four ops (``Add`` 3, ``Clip`` 0..6, ``Mul`` by
``x``, ``Div`` by 6 or ``Mul`` by 1/6, in either order after the ``Clip``) or as
``HardSigmoid(alpha=1/6, beta=0.5)`` times ``x``.  PP-OCRv4 rec holds 28.  In FP32 they are
four kernels where ONNX Runtime runs ``HardSwish`` as two; a static INT8 quantizer gives each
intermediate its own 8-bit range, runs the sums and products as ``QLinearAdd`` /
``QLinearMul`` and the ``Div`` in float between a ``DequantizeLinear`` and a
``QuantizeLinear``.  Fused, only the activation's input and output are quantized (ORT's
quantizer leaves ``HardSwish`` in float between them).

Matched, from each ``Clip`` (``HardSigmoid``): its input ``Add(x, 3)`` (its input ``x``), the
bounds 0 and 6 (``alpha`` 1/6 and ``beta`` 0.5), then single-reader ``Mul`` / ``Div`` ops by
``x`` once and by scalar constants whose product is 1/6 (1), each within 1e-4 relative.  The
last op is replaced; the rest go with dead-code removal.  A model below opset 14 is converted
first (``onnx.version_converter``); each ``Clip`` on ``x + 3`` not fused says why.  The kernel
rounds in another order: the caller checks the outputs within ``verify.REASSOCIATED_REL_L2``.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper

from ..graph import attribute, consumers, producers, unique_name
from ..io import tensor_array
from .constants import graph_constants
from .dead import remove_unused
from .matching import NoMatch, at_opset, close

__all__ = ["find_hardswishes", "fuse_hardswishes"]

log = logging.getLogger(__name__)

MIN_OPSET = 14  # HardSwish entered the default domain at opset 14
_MAX_OPS = 3


def _scalar(consts: dict, name: str) -> float | None:
    t = consts.get(name)
    if t is None:
        return None
    a = tensor_array(t)
    return float(a.reshape(())) if a.size == 1 and np.issubdtype(a.dtype, np.floating) else None


def _default(n: onnx.NodeProto) -> bool:
    return n.domain in ("", "ai.onnx")


def _start(n: onnx.NodeProto, consts: dict, made_by: dict) -> tuple[str, float] | None:
    """``(x, k)`` when ``n`` computes ``k * hardsigmoid(x)``: ``Clip(x + 3, 0, 6)`` (k = 6) or
    ``HardSigmoid(x)`` with alpha 1/6, beta 1/2 (k = 1); None when it is not one."""
    if n.op_type == "HardSigmoid" and _default(n):
        alpha, beta = attribute(n, "alpha", 0.2), attribute(n, "beta", 0.5)
        return (n.input[0], 1.0) if close(alpha, 1 / 6) and close(beta, 0.5) else None
    if n.op_type != "Clip" or not _default(n):
        return None
    if len(n.input) > 1:  # opset >= 11: bounds as inputs
        lo = _scalar(consts, n.input[1]) if n.input[1] else None
        hi = _scalar(consts, n.input[2]) if len(n.input) > 2 and n.input[2] else None
    else:
        lo, hi = attribute(n, "min"), attribute(n, "max")
    add = made_by.get(n.input[0])
    if lo != 0 or hi is None or not close(hi, 6) or add is None or add.op_type != "Add" or not _default(add):
        return None
    for x, three in (add.input, reversed(add.input)):
        c = _scalar(consts, three)
        if c is not None and close(c, 3) and x not in consts:
            return x, 6.0
    return None


def _match(n: onnx.NodeProto, x: str, k: float, consts: dict, readers: dict, outputs: set[str]) -> str:
    """The output of the last op of the hard swish whose ``k * hardsigmoid(x)`` ``n`` makes."""
    if n.op_type == "Clip" and len(readers.get(n.input[0], [])) != 1:
        raise NoMatch("its 'x + 3' has other readers")
    cur, has_x = n.output[0], False
    for _ in range(_MAX_OPS):
        after = readers.get(cur, [])
        if cur in outputs or len(after) != 1:
            raise NoMatch(f"'{cur}' is read {len(after)} times or is a graph output")
        op = after[0]
        if op.op_type not in ("Mul", "Div") or not _default(op) or len(op.input) != 2:
            raise NoMatch(f"'{cur}' is read by a {op.op_type}, not a Mul or Div")
        other = op.input[1] if op.input[0] == cur else op.input[0]
        if other == x and op.op_type == "Mul" and not has_x:
            has_x = True
        else:
            c = _scalar(consts, other)
            if c is None or c == 0 or (op.op_type == "Div" and op.input[0] != cur):
                raise NoMatch(f"{op.op_type} '{op.name or op.output[0]}' is not by x or by a scalar constant")
            k = k * c if op.op_type == "Mul" else k / c
        cur = op.output[0]
        if has_x and close(k, 1.0):
            return cur
    raise NoMatch(f"its result is not x * relu6(x + 3) / 6 within {_MAX_OPS} ops")


def find_hardswishes(model: onnx.ModelProto) -> tuple[list[tuple[str, str]], list[str]]:
    """``([(x, y), ...], refusals)``: the decomposed hard swishes of the main graph (``y`` =
    hardswish(``x``)), and why each other ``Clip`` of ``x + 3`` by 0..6 is not one."""
    g = model.graph
    if not any(n.op_type in ("Clip", "HardSigmoid") for n in g.node):
        return [], []
    consts, made_by, readers = graph_constants(g), producers(g), consumers(g)
    outputs = {o.name for o in g.output}
    found, refused = [], []
    for n in g.node:
        start = _start(n, consts, made_by)
        if start is None:
            continue
        try:
            found.append((start[0], _match(n, *start, consts, readers, outputs)))
        except NoMatch as exc:
            if n.op_type == "Clip":  # a HardSigmoid alone is an activation of its own
                refused.append(f"'{n.name or n.output[0]}' not fused as a hard swish: {exc}")
    return found, refused


def fuse_hardswishes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int, list[str]]:
    """``(model, fused, notes)``: a new model with every matched hard swish replaced by one
    ``HardSwish`` (``model`` itself, unchanged, when none is); ``notes`` the refusals and the
    opset conversion."""
    found, notes = find_hardswishes(model)
    if not found:
        return model, 0, notes
    converted = at_opset(model, MIN_OPSET, "HardSwish", f"{len(found)} hard swish(es)", notes)
    if converted is None:
        return model, 0, notes
    model = converted
    g = model.graph
    taken = {x for n in g.node for x in (*n.input, *n.output)} | {n.name for n in g.node}
    made_by = {o: n.name for n in g.node for o in n.output if n.name}
    by_output = {}
    for x, y in found:
        name = unique_name(f"{made_by.get(y, y)}/HardSwishFusion", taken)  # as ORT names its fusions
        by_output[y] = helper.make_node("HardSwish", [x], [y], name=name)
    new = [by_output.get(next((o for o in n.output if o in by_output), None), n) for n in g.node]
    del g.node[:]
    g.node.extend(new)
    remove_unused(model)
    log.info("%d hard swish(es) fused", len(found))
    return model, len(found), notes
