"""``onnxopt.inspect``: what a model is made of, read without running it.

The report holds: the file (size), IR version, opsets, producer, graph inputs and outputs
with their dims (symbolic names kept), the op histogram (subgraphs included), parameters
and bytes per dtype (initializers and Constant nodes), unused initializers, subgraphs
(If/Loop/Scan and where), local functions, external data (files and bytes), a FLOPs
estimate for Conv/ConvTranspose/Gemm/MatMul (``onnxopt.stats``: 2 x multiply-accumulates,
symbolic dims counted as 1) and the metadata, including whether onnxopt provenance is
present.

External data is validated (present, inside the model folder, long enough) but never loaded:
tensor sizes come from their dims and the external-data entries, so a 10 GB model is
inspected with the memory of its graph alone.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from pathlib import Path

import onnx
from onnx import helper, numpy_helper

from .core.provenance import KEY as PROVENANCE_KEY
from .core.provenance import read_provenance
from .core.result import Result
from .graph import iter_graphs, subgraphs, used_names, walk_bodies
from .io import external_info, load_model
from .stats import count_params, flops_by_node

__all__ = ["inspect", "describe_type"]

log = logging.getLogger(__name__)

_SUBGRAPH_OPS = ("If", "Loop", "Scan")


def describe_type(tp: onnx.TypeProto) -> dict:
    """``{"dtype": "float32", "shape": [N, 3, 224, 224]}`` for tensors (None = unknown dim or
    rank), ``{"type": "seq(float32)"}``-style text for other types."""
    which = tp.WhichOneof("value")
    if which in ("tensor_type", "sparse_tensor_type"):
        tt = getattr(tp, which)
        dtype = dtype_name(tt.elem_type)
        shape = [int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim] if tt.HasField("shape") else None
        out = {"dtype": dtype, "shape": shape}
        if which == "sparse_tensor_type":
            out["sparse"] = True
        return out
    if which in ("sequence_type", "optional_type"):
        inner = describe_type(getattr(tp, which).elem_type)
        return {"type": f"{'seq' if which == 'sequence_type' else 'optional'}({inner.get('dtype') or inner.get('type')})"}
    return {"type": f"map({dtype_name(tp.map_type.key_type)})"} if which == "map_type" else {"type": which or "undefined"}


def dtype_name(elem_type: int) -> str:
    if not elem_type:
        return "undefined"
    try:
        return helper.tensor_dtype_to_np_dtype(elem_type).name
    except Exception:
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _values(vis, skip=()) -> list[dict]:
    return [{"name": vi.name, **describe_type(vi.type)} for vi in vis if vi.name not in skip]


def _subgraph_sites(graph: onnx.GraphProto, where: str) -> list[dict]:
    sites = []
    for body in walk_bodies(graph):
        site = where + "".join(f"/{b.node_label}.{b.attribute}" for b in body.path)
        nodes = sum(len(sg.node) for sg in iter_graphs(body.graph))
        sites.append({"op_type": body.node.op_type, "node": body.node_label, "attribute": body.attribute, "where": site, "nodes": nodes})
    return sites


def _unused_initializers(model: onnx.ModelProto) -> list[dict]:
    out = []

    def walk(graph: onnx.GraphProto, where: str):
        used = used_names(graph)
        out.extend({"name": t.name, "graph": where, "bytes": _tensor_nbytes(t)} for t in graph.initializer if t.name not in used)
        for node in graph.node:
            for g in subgraphs(node):
                walk(g, f"{where}/{node.name or node.op_type}")

    walk(model.graph, "main")
    return out


def _tensor_nbytes(t: onnx.TensorProto) -> int:
    try:
        return math.prod(int(d) for d in t.dims) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:
        return 0


def _external_data(model: onnx.ModelProto, path: Path | None) -> dict:
    files: dict[str, dict] = {}
    for g in iter_graphs(model.graph):
        for t in g.initializer:
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = external_info(t)
            loc = info.get("location", "")
            entry = files.setdefault(loc, {"tensors": 0, "bytes": 0})
            entry["tensors"] += 1
            entry["bytes"] += int(info.get("length") or _tensor_nbytes(t))
    if path is not None:
        for loc, entry in files.items():
            target = path.parent / loc
            entry["file_size"] = target.stat().st_size if target.is_file() else None
    return {"tensors": sum(f["tensors"] for f in files.values()), "bytes": sum(f["bytes"] for f in files.values()), "files": dict(sorted(files.items()))}


def _generated_constants(model: onnx.ModelProto) -> dict:
    """ConstantOfShape nodes whose shape is an initializer: the weights that architecture-only
    models (the onnx wheel's "light" models) create at run time."""
    inits = {t.name: t for t in model.graph.initializer}
    count, elements = 0, 0
    for n in model.graph.node:
        if n.op_type != "ConstantOfShape" or not n.input or n.input[0] not in inits:
            continue
        count += 1
        elements += math.prod(int(d) for d in numpy_helper.to_array(inits[n.input[0]]).reshape(-1).tolist())
    return {"nodes": count, "elements": elements} if count else {}


def _flops(model: onnx.ModelProto) -> dict:
    per_node = flops_by_node(model)
    op_of = {(n.name or (n.output[0] if n.output else "")): n.op_type for n in model.graph.node}
    by_op: Counter = Counter()
    for key, f in per_node.items():
        by_op[op_of.get(key, "?")] += f
    counted = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
    present = sum(1 for n in model.graph.node if n.op_type in counted)
    # the estimate covers the main graph: If/Loop/Scan bodies run a data-dependent number of times
    in_bodies = sum(1 for g in iter_graphs(model.graph) if g is not model.graph for n in g.node if n.op_type in counted)
    return {
        "total": int(sum(per_node.values())),
        "by_op": dict(sorted(by_op.items())),
        "nodes_counted": len(per_node),
        "nodes_of_counted_ops": present,
        "nodes_in_subgraphs": in_bodies,
    }


def _metadata(model: onnx.ModelProto) -> dict:
    props = {p.key: p.value if len(p.value) <= 200 else p.value[:200] + "..." for p in model.metadata_props if p.key != PROVENANCE_KEY}
    prov = read_provenance(model)
    provenance = None
    if prov is not None:
        commands = [h.get("command") for h in prov.get("history", []) or []] + [prov.get("command")]
        provenance = {
            "commands": commands,
            "steps": [s.get("name") for s in prov.get("steps", []) if isinstance(s, dict)],
            "versions": prov.get("versions", {}),
        }
    elif any(p.key == PROVENANCE_KEY for p in model.metadata_props):
        provenance = {"unreadable": True}
    return {"props": props, "onnxopt_provenance": provenance}


def inspect(model, *, flops: bool = True) -> Result:
    """Describe ``model`` (path or ``ModelProto``) without running it; ``Result.model`` is None.

    A path is read with its external data validated but not loaded.  Unreadable files raise
    ``ModelError``.  ``flops=False`` skips shape inference (the slowest part on big graphs).
    """
    path = None if isinstance(model, onnx.ModelProto) else Path(model)
    m = model if path is None else load_model(path, load_external=False)
    g = m.graph
    init_names = {t.name for t in g.initializer}
    params, per_dtype = count_params(m)
    ops = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for sg in iter_graphs(g) for n in sg.node)
    sites = _subgraph_sites(g, "main")
    unused = _unused_initializers(m)
    report = {
        "command": "inspect",
        "file": str(path) if path else None,
        "file_size": os.path.getsize(path) if path else m.ByteSize(),
        "ir_version": int(m.ir_version),
        "opsets": {(o.domain or "ai.onnx"): int(o.version) for o in m.opset_import},
        "producer": {"name": m.producer_name, "version": m.producer_version},
        "domain": m.domain,
        "model_version": int(m.model_version),
        "graph_name": g.name,
        "doc": (m.doc_string or "").strip().splitlines()[0][:200] if (m.doc_string or "").strip() else "",
        "inputs": _values(g.input, skip=init_names),
        "initializer_inputs": sum(1 for i in g.input if i.name in init_names),
        "outputs": _values(g.output),
        "nodes": sum(len(sg.node) for sg in iter_graphs(g)),
        "nodes_main_graph": len(g.node),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "initializers": sum(len(sg.initializer) for sg in iter_graphs(g)),
        "sparse_initializers": sum(len(sg.sparse_initializer) for sg in iter_graphs(g)),
        "parameters": {"total": params, "bytes": sum(v["bytes"] for v in per_dtype.values()), "per_dtype": per_dtype},
        "unused_initializers": {"count": len(unused), "bytes": sum(u["bytes"] for u in unused), "names": [u["name"] for u in unused[:20]]},
        "subgraphs": {"count": len(sites), "by_op": dict(sorted(Counter(s["op_type"] for s in sites).items())), "sites": sites},
        "functions": [f"{f.domain}.{f.name}" if f.domain else f.name for f in m.functions],
        "external_data": _external_data(m, path),
        "metadata": _metadata(m),
    }
    gen = _generated_constants(m)
    if gen:
        report["generated_constants"] = gen
    report["flops"] = None
    if flops:
        detail = _flops(m)
        report["flops"] = detail.pop("total")
        report["flops_detail"] = detail
    return Result(None, report, True)
