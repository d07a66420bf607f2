"""Unstructured magnitude pruning: the smallest weights become exact zeros.

Eligible weights: constant initializers read as the weight of a Conv / ConvTranspose
(input 1) or Gemm / MatMul (input 1, ``B``) with at least ``min_params`` elements; by
default the first and the last weight layers (in graph order) are skipped, as they are
the most sensitive.  ConstantOfShape fills are uniform and are never materialized.

- ``global``: the ``k = round(sparsity * N)`` smallest ``|w|`` over all eligible weights
  (``N`` elements in all) become 0, so layers with many small weights lose more;
- ``layer``: each weight loses ``round(sparsity * size)`` of its own smallest.

Ties at the threshold are broken by position, so exactly ``k`` values are zeroed and the
result is deterministic.  Zeros make the file compress better; dense kernels do not run
faster on them.
"""

from __future__ import annotations

import zlib

import numpy as np
import onnx
from onnx import numpy_helper

from .groups import node_label
from .weights import WeightStore

__all__ = ["WEIGHT_OPS", "weight_layers", "magnitude_keep_masks", "prune_magnitude", "zip_size"]

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def weight_layers(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str]]:
    """``(node, weight name)`` of every weight layer with a constant weight, in graph order."""
    ws = WeightStore(model)
    return [
        (n, n.input[1])
        for n in model.graph.node
        if n.op_type in WEIGHT_OPS
        and n.domain in ("", "ai.onnx")
        and len(n.input) > 1
        and ws.is_const(n.input[1])
    ]


def magnitude_keep_masks(
    arrays: list[np.ndarray], sparsity: float, scope: str = "global"
) -> list[np.ndarray]:
    """Boolean masks (True = kept) zeroing the smallest ``|w|`` as described above."""
    if scope == "layer":
        return [magnitude_keep_masks([a], sparsity)[0] for a in arrays]
    flat = (
        np.concatenate([np.abs(a.astype(np.float64, copy=False)).reshape(-1) for a in arrays])
        if arrays
        else np.zeros(0)
    )
    k = int(round(sparsity * flat.size))
    keep = np.ones(flat.size, dtype=bool)
    if k > 0:
        keep[np.argsort(flat, kind="stable")[:k]] = False
    ends = np.cumsum([a.size for a in arrays], dtype=np.int64)
    return [keep[end - a.size : end].reshape(a.shape) for a, end in zip(arrays, ends, strict=True)]


def prune_magnitude(
    model: onnx.ModelProto,
    sparsity: float,
    *,
    scope: str = "global",
    min_params: int = 1024,
    skip_first_last: bool = True,
) -> tuple[list[dict], list[dict]]:
    """Zero weights in place; returns (per-initializer records, skipped weights with reasons)."""
    ws = WeightStore(model)
    layers = weight_layers(model)
    chosen: dict[str, str] = {}
    skipped: list[dict] = []
    for i, (node, w) in enumerate(layers):
        label = node_label(node)
        reason = None
        if skip_first_last and i == 0:
            reason = "first weight layer"
        elif skip_first_last and i == len(layers) - 1:
            reason = "last weight layer"
        elif w in ws.fills:
            reason = "ConstantOfShape fill (uniform values; not materialized)"
        elif w not in ws.inits:
            reason = "not an initializer"
        elif int(np.prod(ws.shape(w), dtype=np.int64)) < min_params:
            reason = f"fewer than min_params={min_params} elements"
        elif numpy_helper.to_array(ws.inits[w]).dtype.kind != "f":
            reason = "not a float tensor"
        if reason:
            skipped.append({"initializer": w, "layer": label, "reason": reason})
        elif w not in chosen:
            chosen[w] = label
    # a weight also read by a skipped layer (first/last) stays whole
    protected = {
        s["initializer"]
        for s in skipped
        if s["reason"] in ("first weight layer", "last weight layer")
    }
    names = [w for w in chosen if w not in protected]
    arrays = [ws.array(w) for w in names]
    masks = magnitude_keep_masks(arrays, sparsity, scope)
    records = []
    inits = {t.name: t for t in model.graph.initializer}
    for w, arr, mask in zip(names, arrays, masks, strict=True):
        zeros_before = int(np.count_nonzero(arr == 0))
        new = np.where(mask, arr, np.zeros((), dtype=arr.dtype)).astype(arr.dtype)
        inits[w].CopyFrom(numpy_helper.from_array(new, w))
        records.append(
            {
                "initializer": w,
                "layer": chosen[w],
                "params": int(arr.size),
                "zeros_before": zeros_before,
                "sparsity": float(np.count_nonzero(new == 0) / max(arr.size, 1)),
            }
        )
    return records, skipped


def zip_size(model: onnx.ModelProto) -> int:
    """Bytes of the serialized model after deflate (what a .zip of the file would hold)."""
    return len(zlib.compress(model.SerializeToString(deterministic=True), 6))
