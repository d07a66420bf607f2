"""Identical initializers stored once: same dtype, dims and bytes (content hash, then compared).

Readers of a duplicate are pointed at the first copy (subgraph reads included).  Initializers
that are also graph inputs (overridable) or graph outputs are never merged.
"""

from __future__ import annotations

import hashlib

import onnx
from onnx import numpy_helper

from ..graph import rename_uses, replace_repeated

__all__ = ["tensor_key", "dedupe_initializers"]


def tensor_key(t: onnx.TensorProto) -> tuple:
    """(dtype, dims, digest of the values) — equal keys mean equal content."""
    raw = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
    return (t.data_type, tuple(t.dims), hashlib.blake2b(raw, digest_size=16).digest())


def dedupe_initializers(model: onnx.ModelProto) -> int:
    """Merge duplicates in place; returns how many initializers were removed."""
    g = model.graph
    protected = {i.name for i in g.input} | {o.name for o in g.output}
    first: dict[tuple, str] = {}
    mapping: dict[str, str] = {}
    for t in g.initializer:
        if t.name in protected or t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        key = tensor_key(t)
        if key in first:
            mapping[t.name] = first[key]
        else:
            first[key] = t.name
    if not mapping:
        return 0
    rename_uses(g, mapping)
    replace_repeated(g.initializer, [t for t in g.initializer if t.name not in mapping])
    replace_repeated(g.value_info, [v for v in g.value_info if v.name not in mapping])
    return len(mapping)
