"""Identical initializers across members stored once (content hash, then byte comparison).

Fine-tunes of one backbone carry the same tensors under each member's namespace; after the
merge they are grouped by ``(dtype, dims, blake2b(bytes))`` and confirmed byte for byte, the
first copy is kept and every reader of the others (subgraph reads included) points at it.
Main-graph initializers and ``Constant`` nodes (exporters such as PaddlePaddle's store every
weight in one) that are neither graph inputs nor outputs are considered: a duplicate
``Constant`` node is removed and its readers point at the first copy (an initializer, or an
earlier ``Constant`` node, which therefore precedes them).  The report lists, per kept
tensor, which members share it and the bytes saved.
"""

from __future__ import annotations

import onnx

from ..graph import rename_uses, replace_repeated
from ..io import external_info
from ..simplify.constants import constant_node_tensor
from ..simplify.dedupe import tensor_key

__all__ = ["share_initializers"]


def _file_region(t: onnx.TensorProto) -> tuple | None:
    info = external_info(t)
    if "basepath" not in info:
        return None
    return ("file", t.data_type, tuple(t.dims), info["basepath"], info.get("location"), info.get("offset", "0"), info.get("length"))


def _nbytes(t: onnx.TensorProto) -> int:
    return int(external_info(t).get("length", 0) or 0) if t.data_location == onnx.TensorProto.EXTERNAL else len(_payload(t))


def _payload(t: onnx.TensorProto) -> bytes:
    if t.HasField("raw_data"):
        return t.raw_data
    from onnx import numpy_helper

    return numpy_helper.to_array(t).tobytes()


def _owner(name: str, prefixes: dict[str, str]) -> str:
    for prefix, label in prefixes.items():
        if name.startswith(prefix):
            return label
    return "head"


def share_initializers(model: onnx.ModelProto, prefixes: dict[str, str], *, list_limit: int = 20) -> dict:
    """Dedupe in place; ``prefixes`` maps name prefixes to member labels (for the report)."""
    g = model.graph
    protected = {i.name for i in g.input} | {o.name for o in g.output}
    first: dict[tuple, onnx.TensorProto] = {}
    mapping: dict[str, str] = {}
    groups: dict[str, dict] = {}
    # initializers first: they precede every node, so a Constant may always point at one
    candidates = list(g.initializer)
    for n in g.node:
        t = constant_node_tensor(n) if len(n.output) == 1 and n.output[0] else None
        if t is not None:
            t.name = n.output[0]
            candidates.append(t)
    for t in candidates:
        if t.name in protected:
            continue
        if t.data_location == onnx.TensorProto.EXTERNAL:
            # a large member loaded lazily: the same region of the same file is the same
            # tensor (members given as one path twice); nothing is read
            key = _file_region(t)
            if key is None:
                continue
        else:
            key = tensor_key(t)
        kept = first.get(key)
        if kept is None:
            first[key] = t
            continue
        if key[0] != "file" and _payload(kept) != _payload(t):
            continue  # hash collision: keep both
        mapping[t.name] = kept.name
        grp = groups.setdefault(kept.name, {"name": kept.name, "members": [_owner(kept.name, prefixes)], "copies": 1, "bytes_each": _nbytes(kept)})
        grp["copies"] += 1
        owner = _owner(t.name, prefixes)
        if owner not in grp["members"]:
            grp["members"].append(owner)
    if mapping:
        rename_uses(g, mapping)
        dropped = (
            (g.initializer, lambda t: t.name in mapping),
            (
                g.node,
                lambda n: n.op_type == "Constant" and len(n.output) == 1 and n.output[0] in mapping,
            ),
            (g.value_info, lambda v: v.name in mapping),
        )
        for field, drop in dropped:
            replace_repeated(field, [x for x in field if not drop(x)])
    listed = sorted(groups.values(), key=lambda d: (-(d["copies"] - 1) * d["bytes_each"], d["name"]))
    saved = sum((d["copies"] - 1) * d["bytes_each"] for d in groups.values())
    cross = sum(1 for d in groups.values() if len(d["members"]) > 1)
    return {
        "initializers_merged": len(mapping),
        "tensors_shared_across_members": cross,
        "bytes_saved": saved,
        "largest": listed[:list_limit],
    }
