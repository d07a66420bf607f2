"""Scales and shifts by constants after a ``Conv`` folded into its weight and bias.

Exporters write a per-channel affine after a convolution as elementwise ops when it is not a
``BatchNormalization``: PaddleOCR's PP-LCNetV3 blocks ("learnable affine blocks") scale and
shift each convolution's output by a learned scalar, which paddle2onnx writes as ``Mul`` and
``Add`` by constants of shape ``[1]``.  ONNX Runtime's basic fusions (``ConvMulFusion``,
``ConvAddFusion``) left all 28 pairs of PP-OCRv4 rec in place, at session creation and in
``quant_pre_process``: in FP32 they cost 56 kernels, and a static INT8 quantizer gives each
its own 8-bit range and runs it as ``QLinearMul`` / ``QLinearAdd``.

Matched: a ``Conv`` with constant weight (and bias) whose output, not a graph output, has one
reader: ``Mul`` or ``Div`` by a constant (the weight and the bias scaled), ``Add`` or ``Sub``
of a constant (the bias shifted), the constant holding one value or one per output channel
(``[C, 1, .., 1]`` aligned to the output's rank).  Repeated, so a scale then a shift fold
into the same ``Conv``, which takes over the last op's output.  Each such op not folded says
why.  The products round once in the weight instead of once per output: the caller checks the
outputs within ``verify.EXACT_REL_L2``.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import consumers, unique_name
from ..io import tensor_array
from .constants import graph_constants
from .dead import remove_unused

__all__ = ["fold_conv_affines"]

log = logging.getLogger(__name__)

_OPS = ("Mul", "Div", "Add", "Sub")
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def _per_channel(c: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``c`` as one value per output channel of a rank-``rank`` Conv output, or None when it
    broadcasts along another axis (or would widen the output)."""
    if c.size == 1 and c.ndim <= rank:
        return np.full(channels, c.reshape(()), dtype=np.float64)
    if c.ndim > rank:
        return None
    dims = (1,) * (rank - c.ndim) + c.shape
    if dims[1] != channels or any(d != 1 for i, d in enumerate(dims) if i != 1):
        return None
    return c.reshape(channels).astype(np.float64)


def _chain(conv: onnx.NodeProto, consts: dict, readers: dict, outputs: set[str], notes: list[str]) -> list[tuple[onnx.NodeProto, np.ndarray]]:
    """The ops after ``conv`` that fold into it, in order, each with its constant per output
    channel (the reciprocal for ``Div``, negated for ``Sub``)."""
    if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or len(conv.input) < 2:
        return []
    w_t = consts.get(conv.input[1])
    has_b = len(conv.input) > 2 and bool(conv.input[2])
    if w_t is None or w_t.data_type not in _FLOATS or (has_b and conv.input[2] not in consts):
        return []
    channels, rank = int(w_t.dims[0]), len(w_t.dims)
    steps, y = [], conv.output[0]
    while y not in outputs:
        after = readers.get(y, [])
        if len(after) != 1 or after[0].op_type not in _OPS or after[0].domain not in ("", "ai.onnx"):
            break
        op = after[0]
        other = op.input[1] if op.input[0] == y else op.input[0]
        if len(op.input) != 2 or other == y or other not in consts:
            break  # an op of two activations: not an affine, nothing to say
        what = f"'{op.name or op.output[0]}' ({op.op_type}) after Conv '{conv.name or conv.output[0]}' not folded"
        c_t = consts[other]
        vec = _per_channel(tensor_array(c_t), channels, rank) if c_t.data_type == w_t.data_type else None
        if op.input[0] != y and op.op_type in ("Sub", "Div"):
            notes.append(f"{what}: the constant is on the left")
            break
        if vec is None:
            why = "its constant's type differs from the weight's" if c_t.data_type != w_t.data_type else (
                f"its constant of shape {list(c_t.dims)} is not one value per output channel")
            notes.append(f"{what}: {why}")
            break
        steps.append((op, 1.0 / vec if op.op_type == "Div" else -vec if op.op_type == "Sub" else vec))
        y = op.output[0]
    return steps


def _fold(g: onnx.GraphProto, conv: onnx.NodeProto, steps, consts: dict, taken: set[str]) -> None:
    """Fold ``steps`` (``_chain``) into ``conv`` of ``g``: new weight and bias initializers;
    the Conv takes over the last step's output."""
    w = tensor_array(consts[conv.input[1]])
    has_b = len(conv.input) > 2 and bool(conv.input[2])
    b = tensor_array(consts[conv.input[2]]).astype(np.float64) if has_b else np.zeros(w.shape[0])
    w64, scaled, shifted = w.astype(np.float64), False, has_b
    for op, vec in steps:
        if op.op_type in ("Mul", "Div"):
            w64, b, scaled = w64 * vec.reshape((-1,) + (1,) * (w.ndim - 1)), b * vec, True
        else:
            b, shifted = b + vec, True

    def add(base: str, arr: np.ndarray) -> str:
        name = unique_name(base, taken)
        t = numpy_helper.from_array(arr.astype(w.dtype), name)
        g.initializer.append(t)
        consts[name] = t
        return name

    if scaled:
        conv.input[1] = add(f"{conv.input[1]}_folded", w64)
    if shifted:
        name = add(f"{conv.input[2] if has_b else conv.input[1]}_bias_folded", b)
        if has_b:
            conv.input[2] = name
        else:
            del conv.input[2:]
            conv.input.append(name)
    conv.output[0] = steps[-1][0].output[0]


def fold_conv_affines(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int, list[str]]:
    """``(model, folded, notes)``: a new model with every matched scale and shift after a
    ``Conv`` of the main graph folded into it (``model`` itself, unchanged, when none is);
    ``folded`` the number of ops removed; ``notes`` why the others were not."""
    g = model.graph
    if not any(n.op_type == "Conv" for n in g.node):
        return model, 0, []
    consts, readers, outputs = graph_constants(g), consumers(g), {o.name for o in g.output}
    notes: list[str] = []
    chains = {i: c for i, n in enumerate(g.node) if (c := _chain(n, consts, readers, outputs, notes))}
    if not chains:
        return model, 0, notes
    work = copy.deepcopy(model)
    g = work.graph
    consts = graph_constants(g)
    taken = {x for n in g.node for x in (*n.input, *n.output, n.name)} | set(consts) | {i.name for i in g.input}
    position = {id(n): i for i, n in enumerate(model.graph.node)}
    gone = set()
    for i, steps in chains.items():
        _fold(g, g.node[i], [(g.node[position[id(op)]], vec) for op, vec in steps], consts, taken)
        gone.update(position[id(op)] for op, _ in steps)
    kept = [n for i, n in enumerate(g.node) if i not in gone]
    del g.node[:]
    g.node.extend(kept)
    remove_unused(work)
    folded = sum(len(s) for s in chains.values())
    log.info("%d scale(s)/shift(s) after Conv folded", folded)
    return work, folded, notes
