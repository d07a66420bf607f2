"""Channel importance per group: weight magnitude (``l1``) or mean activation (``activation``).

For a source with output-channel weight slices ``W_c`` the ``l1`` score is
``||W_c||_1 * |s_c|`` where ``s_c`` is the product of the per-channel scales that follow
the layer before anything mixes channels (BatchNormalization ``gamma / sqrt(var + eps)``,
a per-channel Mul); without that factor a BatchNorm would make the weight scale
meaningless.  The ``activation`` score is ``mean |a_c|`` of the same chain's last tensor
over the calibration samples (and spatial positions).  Each member's scores are divided by
their mean before the members of a tied group are summed, so every tied layer counts alike.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..graph import consumers
from .groups import Analysis, Source
from .taps import iter_taps, tap_session
from .weights import WeightStore

__all__ = ["chain_end", "l1_importance", "activation_importance"]

_FOLLOW = {
    "Relu",
    "LeakyRelu",
    "Clip",
    "Identity",
    "Dropout",
    "Sigmoid",
    "Tanh",
    "HardSwish",
    "HardSigmoid",
    "Elu",
    "Selu",
    "Gelu",
}


def _per_channel(arr: np.ndarray, channels: int) -> np.ndarray | None:
    if arr.size == 1:
        return np.full(channels, abs(float(arr.reshape(-1)[0])))
    return np.abs(arr.reshape(-1).astype(np.float64)) if arr.size == channels else None


def chain_end(
    model: onnx.ModelProto, src: Source, ws: WeightStore | None = None
) -> tuple[str, np.ndarray]:
    """(last tensor of the per-channel chain after ``src``, the chain's per-channel scale)."""
    ws = ws or WeightStore(model)
    cons = consumers(model.graph)
    outputs = {o.name for o in model.graph.output}
    name, scale = src.out, np.ones(src.channels)
    while name not in outputs:
        readers = cons.get(name, [])
        if len(readers) != 1:
            break
        n = readers[0]
        if n.input[0] != name:
            break
        if n.op_type == "BatchNormalization" and all(ws.is_const(x) for x in n.input[1:5]):
            eps = next(
                (helper.get_attribute_value(a) for a in n.attribute if a.name == "epsilon"), 1e-5
            )
            gamma, var = ws.array(n.input[1]), ws.array(n.input[4])
            if gamma.size != src.channels:
                break
            scale = scale * np.abs(gamma.astype(np.float64)) / np.sqrt(var.astype(np.float64) + eps)
        elif n.op_type in ("Mul", "Div") and len(n.input) == 2 and ws.is_const(n.input[1]):
            pc = _per_channel(ws.array(n.input[1]), src.channels)
            if pc is None:
                break
            scale = scale * (pc if n.op_type == "Mul" else 1.0 / np.maximum(pc, 1e-12))
        elif n.op_type in ("Add", "Sub") and len(n.input) == 2 and ws.is_const(n.input[1]):
            pass
        elif n.op_type not in _FOLLOW:
            break
        name = n.output[0]
    return name, scale


def _normalized(v: np.ndarray) -> np.ndarray:
    m = float(np.mean(v))
    return v / m if m > 0 else np.ones_like(v)


def _by_group(analysis: Analysis, score) -> dict[int, np.ndarray]:
    """Per prunable group, the sum over its sources of ``score(source)`` (one per channel)."""
    return {
        g.id: sum((score(analysis.sources[sid]) for sid in g.sources), np.zeros(g.channels))
        for g in analysis.prunable
    }


def l1_importance(model: onnx.ModelProto, analysis: Analysis) -> dict[int, np.ndarray]:
    ws = WeightStore(model)
    return _by_group(
        analysis,
        lambda src: _normalized(ws.abs_sum(src.weight, src.axis) * chain_end(model, src, ws)[1]),
    )


def activation_importance(
    model: onnx.ModelProto,
    analysis: Analysis,
    dataset,
    *,
    provider: str = "cpu",
    limit: int | None = 512,
) -> dict[int, np.ndarray]:
    ws = WeightStore(model)
    ends = {
        sid: chain_end(model, analysis.sources[sid], ws)[0]
        for g in analysis.prunable
        for sid in g.sources
    }
    names = sorted(set(ends.values()))
    sums = {n: None for n in names}
    sess = tap_session(model, names, provider)
    for _, acts in iter_taps(sess, names, dataset.batches(limit=limit)):
        for n, a in acts.items():
            axis = analysis.sources[next(s for s, e in ends.items() if e == n)].out_axis
            sums[n] = (0 if sums[n] is None else sums[n]) + _channel_abs_sum(a, axis)

    def score(src):
        s = sums[ends[src.id]]
        return _normalized(np.asarray(s, dtype=np.float64)) if s is not None else 1.0

    return _by_group(analysis, score)


def _channel_abs_sum(a: np.ndarray, axis: int) -> np.ndarray:
    a = np.abs(np.asarray(a, dtype=np.float64))
    axis = axis % a.ndim
    other = tuple(i for i in range(a.ndim) if i != axis)
    return a.sum(axis=other)
