"""Rewiring: remove the channels a group does not keep, everywhere the analysis says they go.

Given the kept channel indices of some groups, every slot (producer weights and biases,
per-channel parameters, consumer weights) is sliced at the kept positions of its layout,
Reshape shape constants and depthwise ``group`` attributes follow the new sizes, stale
``value_info`` is dropped and dead nodes / unused initializers are removed.  The graph's
inputs and outputs are untouched, so output shapes stay the same.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper

from ..simplify.dead import remove_unused
from .groups import Analysis, kept_positions
from .weights import WeightStore, WeightWriter

__all__ = ["keep_count", "select_keep", "apply_keep"]


def keep_count(channels: int, ratio: float, align: int = 1) -> int:
    """Channels kept out of ``channels`` when removing ``ratio`` of them.

    ``channels - round(ratio * channels)``, at least 1; with ``align > 1`` and more than
    ``align`` channels kept, rounded to the nearest multiple of ``align`` (SIMD kernels,
    e.g. ONNX Runtime's blocked NCHWc convolutions, run much faster on such counts).
    """
    c = int(channels)
    keep = max(1, c - int(round(ratio * c)))
    if align > 1 and keep > align:
        keep = min(c, max(align, int(round(keep / align)) * align))
    return keep


def select_keep(importance: np.ndarray, ratio: float, align: int = 1) -> np.ndarray:
    """Sorted indices of the ``keep_count`` most important channels (ties keep the lower
    index)."""
    c = len(importance)
    order = np.argsort(-np.asarray(importance, dtype=np.float64), kind="stable")
    return np.sort(order[: keep_count(c, ratio, align)]).astype(np.int64)


def apply_keep(
    model: onnx.ModelProto, analysis: Analysis, keep_by_group: dict[int, np.ndarray]
) -> dict:
    """Slice ``model`` in place so that group ``g`` keeps channels ``keep_by_group[g]``.

    ``analysis`` must come from this very model (node indices).  Returns counts.
    """
    keep = analysis.source_keep(keep_by_group)
    ws = WeightStore(model)
    nodes = list(model.graph.node)
    edits: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = defaultdict(list)
    for slot in analysis.slots:
        if not any(s.source in keep for s in slot.layout):
            continue
        edits[(slot.node, slot.input)].append((slot.axis, kept_positions(slot.layout, keep)))
    writer = WeightWriter(model)
    for (ni, ii), ops in sorted(edits.items(), key=lambda kv: kv[0]):
        node = nodes[ni]
        value = ws.tensor(node.input[ii])
        for axis, pos in ops:
            value = value.take(pos, axis=axis)  # an array or a Fill
        writer.replace(node, ii, value)
    for s in analysis.shape_slots:
        if not any(seg.source in keep for seg in s.layout):
            continue
        node = nodes[s.node]
        target = ws.array(node.input[s.input]).copy()
        target[s.position] = len(kept_positions(s.layout, keep))
        writer.replace(node, s.input, target)
    for a in analysis.attr_slots:
        if not any(seg.source in keep for seg in a.layout):
            continue
        node = nodes[a.node]
        size = len(kept_positions(a.layout, keep))
        for attr in node.attribute:
            if attr.name == a.name:
                attr.CopyFrom(helper.make_attribute(a.name, int(size)))
    writer.finish()
    del model.graph.value_info[:]
    dead = remove_unused(model)
    removed = sum(
        analysis.groups[g].channels * len(analysis.groups[g].sources)
        - len(k) * len(analysis.groups[g].sources)
        for g, k in keep_by_group.items()
    )
    return {
        "tensors_sliced": len(edits),
        "channels_removed": int(removed),
        "nodes_removed": dead.get("nodes", 0),
        "initializers_removed": dead.get("initializers", 0),
    }
