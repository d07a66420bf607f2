"""Merging N member models into one graph: namespaces, shared inputs, outputs, opsets.

What is guaranteed:

- **Namespacing**: every name a member defines (node outputs, initializers, sparse
  initializers, value_info, subgraph inputs and everything inside If/Loop/Scan bodies) gets
  the member's prefix (``m0/``, ``m1/`` ...), and every read of such a name is rewritten with
  it, outer-scope reads from subgraphs included.  Node names get the prefix too.  Local
  functions are renamed ``m0_<name>`` (same domain) and every call site, in the graph, its
  subgraphs and other functions, follows.  Members therefore never collide, even when they
  are the same file twice.
- **Shared inputs**: the members' graph inputs (after ``input_map`` renames ``FROM -> TO``)
  must be the same set of names; each is checked for equal dtype and compatible shape (same
  rank, fixed dims equal; a fixed dim wins over a symbolic one).  Initializer-backed inputs
  of IR < 4 models are treated as plain initializers.
- **Outputs**: each member contributes the output named by ``output`` (a name, a position,
  or one per member), or, when every member has the same number of outputs, all of them
  position-wise.
- **Opsets**: each domain gets the highest version any member imports (at least
  ``MIN_OPSET`` for the default domain, which the fusion heads need); default-domain members
  below it are converted with ``onnx.version_converter`` and the report lists, per member,
  the ops whose schema changed between the two versions.  Other domains cannot be converted:
  their highest version is used and a note says so.  The IR version is the highest of the
  members' and the minimum the opsets need.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..errors import InputError, ModelError, UnsupportedError, UsageError
from ..graph import real_inputs, subgraphs

__all__ = [
    "MIN_OPSET",
    "Member",
    "Part",
    "load_members",
    "reconcile_opsets",
    "match_inputs",
    "select_outputs",
    "namespace_member",
    "value_shape",
    "value_dtype",
    "merge_shapes",
    "assemble",
    "dtype_name",
    "shape_str",
    "source_names",
]

log = logging.getLogger(__name__)


def source_names(models) -> list[str]:
    """What reports and provenance call each of ``models``: a path's file name, a proto's
    graph name (else ``model<i>``); they never hold the models themselves."""
    return [m.graph.name or f"model{i}" if isinstance(m, onnx.ModelProto) else Path(m).name for i, m in enumerate(models)]

MIN_OPSET = 13
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass
class Member:
    """One member model and what the merge decided about it."""

    index: int
    label: str
    path: Path | None
    original: onnx.ModelProto
    model: onnx.ModelProto
    prefix: str
    input_rename: dict[str, str] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)

    @property
    def where(self):
        """What errors about this member name: its file, else its label."""
        return self.path if self.path is not None else self.label

    def opsets(self) -> dict[str, int]:
        return _opsets(self.model)

    def describe(self) -> dict:
        return {
            "index": self.index,
            "file": str(self.path) if self.path is not None else None,
            "label": self.label,
            "prefix": self.prefix,
            "ir_version": int(self.original.ir_version),
            "opset": _opsets(self.original),
            "inputs": [i.name for i in real_inputs(self.original.graph)],
            "outputs": [o.name for o in self.original.graph.output],
            "selected_outputs": list(self.outputs),
        }


@dataclass
class Part:
    """Nodes, tensors and functions that one member (or a fused group) adds to the graph."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    sparse_initializers: list = field(default_factory=list)
    value_info: list[onnx.ValueInfoProto] = field(default_factory=list)
    functions: list[onnx.FunctionProto] = field(default_factory=list)
    outputs: dict[tuple[int, str], str] = field(default_factory=dict)  # (member, local output) -> merged name
    output_info: dict[str, onnx.ValueInfoProto] = field(default_factory=dict)  # merged name -> type


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in model.opset_import:
        dom = "" if o.domain in _DEFAULT_DOMAINS else o.domain
        out[dom] = max(out.get(dom, 0), int(o.version))
    return out


def load_members(models, *, min_members: int = 2, what: str = "an ensemble", prefix: str = "m") -> list[Member]:
    """Load the models (paths or protos) as members ``{prefix}0/``, ``{prefix}1/`` ..."""
    from ..io import resolve_model

    models = list(models or [])
    if len(models) < min_members:
        raise UsageError(f"{what} needs at least {min_members} models, got {len(models)}")
    members = []
    for i, src in enumerate(models):
        m, path = resolve_model(src, lazy=None)  # a large member stays in its files
        label = path.name if path is not None else f"member{i}"
        if any(m.label == label for m in members):
            label = f"{label}#{i}"  # the same file twice: labels key the report's tables
        if not real_inputs(m.graph):
            raise ModelError("the model has no graph inputs", path or label)
        if not m.graph.output:
            raise ModelError("the model has no graph outputs", path or label)
        members.append(Member(i, label, path, m, m, f"{prefix}{i}/"))
    return members


# --- opsets ---------------------------------------------------------------------------------


def _ops_changed(model: onnx.ModelProto, old: int, new: int) -> dict[str, str]:
    """Default-domain ops used by ``model`` whose schema differs between opsets old and new."""
    from ..graph import iter_graphs

    changed = {}
    ops = sorted({n.op_type for g in iter_graphs(model.graph) for n in g.node if n.domain in _DEFAULT_DOMAINS})
    for op in ops:
        try:
            a = onnx.defs.get_schema(op, old, "").since_version
            b = onnx.defs.get_schema(op, new, "").since_version
        except Exception:
            continue
        if a != b:
            changed[op] = f"since {a} -> since {b}"
    return changed


def reconcile_opsets(members: list[Member], *, min_default: int = MIN_OPSET) -> tuple[dict[str, int], int, list[dict], list[str]]:
    """Convert members to the highest default-domain opset; returns (opsets, ir_version, conversions, notes)."""
    target: dict[str, int] = {"": min_default}
    for m in members:
        for dom, v in m.opsets().items():
            target[dom] = max(target.get(dom, 0), v)
    conversions, notes = [], []
    for m in members:
        have = m.opsets()
        for dom, v in have.items():
            if dom and v != target[dom]:
                notes.append(f"{m.label}: domain '{dom}' version {v} used as {target[dom]} (onnx.version_converter converts only the default domain)")
        old = have.get("", 0)
        if old == target[""]:
            continue
        if old == 0:
            # only custom-domain ops: importing the default domain changes nothing
            m.model = copy.deepcopy(m.model)
            m.model.opset_import.add(domain="", version=target[""])
            continue
        try:
            converted = onnx.version_converter.convert_version(m.model, target[""])
        except Exception as exc:
            raise UnsupportedError(
                f"cannot convert opset {old} to {target['']} (needed to merge with the other members): {' '.join(str(exc).split())[:300]}", m.where
            ) from exc
        conversions.append({
            "member": m.label,
            "domain": "ai.onnx",
            "from": old,
            "to": target[""],
            "nodes_before": len(m.model.graph.node),
            "nodes_after": len(converted.graph.node),
            "ops_changed": _ops_changed(m.model, old, target[""]),
        })
        if m.model.functions:
            # version_converter drops model.functions (onnx 1.23): carry them over unchanged
            if not converted.functions:
                converted.functions.extend(m.model.functions)
            notes.append(f"{m.label}: local functions keep their own opset imports (version_converter does not convert function bodies)")
        m.model = converted
    ops = [helper.make_opsetid(d, v) for d, v in sorted(target.items())]
    ir = max([int(m.model.ir_version) for m in members] + [helper.find_min_ir_version_for(ops, ignore_unknown=True)])
    return dict(sorted(target.items())), ir, conversions, notes


# --- shapes and types -----------------------------------------------------------------------


def value_shape(vi: onnx.ValueInfoProto) -> tuple | None:
    """Dims of a tensor value: ints, str for symbolic, None for unknown; None if no shape.

    A negative ``dim_value`` (PaddlePaddle's exporter writes ``-1`` for a dynamic batch) is
    unknown, not a fixed size."""
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
        return None
    return tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value >= 0 else (d.dim_param or None) for d in tt.shape.dim)


def value_dtype(vi: onnx.ValueInfoProto) -> int:
    return int(vi.type.tensor_type.elem_type) if vi.type.HasField("tensor_type") else 0


def dtype_name(elem: int) -> str:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name
    except Exception:
        return f"type {elem}"


def shape_str(shape) -> str:
    return "?" if shape is None else "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def merge_shapes(a, b):
    """The more specific of two compatible shapes, or raise ValueError naming the axis."""
    if a is None:
        return b
    if b is None:
        return a
    if len(a) != len(b):
        raise ValueError(f"rank {len(a)} vs {len(b)}")
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if isinstance(x, int) and isinstance(y, int) and x != y:
            raise ValueError(f"axis {i} is {x} vs {y}")
    # a fixed dim wins, then a symbolic one
    return tuple(
        x if isinstance(x, int) or (x is not None and not isinstance(y, int)) else y
        for x, y in zip(a, b, strict=True)
    )


# --- inputs and outputs ---------------------------------------------------------------------


def _normalize_map(input_map, n: int) -> list[dict[str, str]]:
    if input_map is None:
        return [{} for _ in range(n)]
    if isinstance(input_map, dict):
        return [dict(input_map) for _ in range(n)]
    maps = list(input_map)
    if all(isinstance(x, (tuple, list)) and len(x) == 2 and isinstance(x[0], str) for x in maps):
        return [dict(maps) for _ in range(n)]
    if len(maps) != n or not all(isinstance(x, dict) for x in maps):
        raise UsageError("input_map must be a {FROM: TO} dict, a list of (FROM, TO) pairs, or one dict per member")
    return [dict(x) for x in maps]


def match_inputs(members: list[Member], input_map=None) -> list[onnx.ValueInfoProto]:
    """Shared graph inputs; sets each member's ``input_rename``.  Mismatches are InputErrors."""
    maps = _normalize_map(input_map, len(members))
    used_keys: set[str] = set()
    shared: dict[str, tuple[int, object, Member]] = {}  # in order of first appearance
    first_names = None
    for m, mp in zip(members, maps, strict=True):
        m.input_rename = {}
        for vi in real_inputs(m.model.graph):
            to = mp.get(vi.name, vi.name)
            if to in m.input_rename.values():
                raise InputError(f"two inputs map to '{to}'", m.where)
            m.input_rename[vi.name] = to
            elem, shape = value_dtype(vi), value_shape(vi)
            if elem == 0:
                raise ModelError(f"input '{vi.name}' is not a typed tensor", m.where)
            if to not in shared:
                shared[to] = (elem, shape, m)
                continue
            elem0, shape0, m0 = shared[to]
            if elem != elem0:
                raise InputError(f"input '{to}' is {dtype_name(elem)}, but {dtype_name(elem0)} in {m0.label}: incompatible dtypes", m.where)
            try:
                shared[to] = (elem0, merge_shapes(shape0, shape), m0)
            except ValueError as exc:
                raise InputError(
                    f"input '{to}' has shape {shape_str(shape)}, but {shape_str(shape0)} in {m0.label} ({exc}): incompatible shapes", m.where
                ) from None
        used_keys |= set(mp) & set(m.input_rename)
        names = list(m.input_rename.values())
        if first_names is None:
            first_names = (set(names), m)
        elif set(names) != first_names[0]:
            hint = "; map names with --input-map FROM:TO" if set(names) - first_names[0] else ""
            raise InputError(
                f"inputs [{', '.join(sorted(set(names)))}] differ from [{', '.join(sorted(first_names[0]))}] of {first_names[1].label}{hint}",
                m.where,
            )
    unknown = sorted(set().union(*[set(mp) for mp in maps]) - used_keys)
    if unknown:
        raise UsageError(f"--input-map names no input of any member: {', '.join(unknown)}")
    return [helper.make_tensor_value_info(name, elem, None if shape is None else list(shape)) for name, (elem, shape, _) in shared.items()]


def select_outputs(members: list[Member], output=None) -> int:
    """Set each member's ``outputs``; returns how many fused positions there are."""
    if output is None:
        counts = [len(m.model.graph.output) for m in members]
        if len(set(counts)) != 1:
            desc = ", ".join(f"{m.label}: {c}" for m, c in zip(members, counts, strict=True))
            raise UsageError(f"members have different numbers of outputs ({desc}); pick one with --output NAME")
        for m in members:
            m.outputs = [o.name for o in m.model.graph.output]
        return counts[0]
    picks = list(output) if isinstance(output, (list, tuple)) else [output] * len(members)
    if len(picks) != len(members):
        raise UsageError(f"--output has {len(picks)} names for {len(members)} members (give one for all, or one per member)")
    for m, pick in zip(members, picks, strict=True):
        names = [o.name for o in m.model.graph.output]
        if isinstance(pick, (int, np.integer)) and not isinstance(pick, bool):
            if not 0 <= int(pick) < len(names):
                raise InputError(f"has no output #{pick} (outputs: {', '.join(names)})", m.where)
            m.outputs = [names[int(pick)]]
        elif pick in names:
            m.outputs = [pick]
        else:
            raise InputError(f"has no output '{pick}' (outputs: {', '.join(names)})", m.where)
    return 1


# --- namespacing ----------------------------------------------------------------------------


def _defined_names(graph: onnx.GraphProto, top: bool) -> set[str]:
    names = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    names |= set() if top else {i.name for i in graph.input}
    for n in graph.node:
        names.update(o for o in n.output if o)
        names.update(*(_defined_names(g, False) for g in subgraphs(n)))
    return names


def _fn_key(domain: str, name: str, overload: str = "") -> tuple[str, str, str]:
    return ("" if domain in _DEFAULT_DOMAINS else domain, name, overload)


def _rename_calls(nodes, fn_map: dict) -> None:
    for n in nodes:
        key = _fn_key(n.domain, n.op_type, getattr(n, "overload", ""))
        if key in fn_map:
            n.op_type = fn_map[key]
        for g in subgraphs(n):
            _rename_calls(g.node, fn_map)


def _rename_graph(graph: onnx.GraphProto, mapping: dict[str, str], node_prefix: str) -> None:
    for n in graph.node:
        n.input[:] = [mapping.get(x, x) for x in n.input]
        n.output[:] = [mapping.get(x, x) for x in n.output]
        if n.name:
            n.name = node_prefix + n.name
        for g in subgraphs(n):
            _rename_graph(g, mapping, node_prefix)
    for named in (
        *graph.input,
        *graph.output,
        *graph.value_info,
        *graph.initializer,
        *(s.values for s in graph.sparse_initializer),
    ):
        named.name = mapping.get(named.name, named.name)


def namespace_member(m: Member, *, output_names: dict[str, str] | None = None) -> Part:
    """The member's graph with every name prefixed (see the module docstring).

    ``output_names`` overrides the merged name of some of the member's outputs (``chain``
    keeps the last stage's output names).
    """
    model = copy.deepcopy(m.model)
    g = model.graph
    mapping = {name: m.prefix + name for name in _defined_names(g, True) if name}
    mapping.update(m.input_rename)
    for local, merged in (output_names or {}).items():
        if local in m.input_rename:
            raise UnsupportedError(f"output '{local}' is the graph input itself; cannot rename it", m.where)
        mapping[local] = merged
    fn_map = {_fn_key(f.domain, f.name, getattr(f, "overload", "")): m.prefix.replace("/", "_") + f.name for f in model.functions}
    _rename_graph(g, mapping, m.prefix)
    _rename_calls(g.node, fn_map)
    functions = []
    for f in model.functions:
        f.name = fn_map[_fn_key(f.domain, f.name, getattr(f, "overload", ""))]
        _rename_calls(f.node, fn_map)
        functions.append(f)
    part = Part(
        nodes=list(g.node),
        initializers=list(g.initializer),
        sparse_initializers=list(g.sparse_initializer),
        value_info=list(g.value_info),
        functions=functions,
    )
    typed = {o.name: o for o in g.output}
    for name in m.outputs:
        merged = mapping.get(name, name)
        part.outputs[(m.index, name)] = merged
        if merged in typed:
            part.output_info[merged] = typed[merged]
    return part


def assemble(
    parts: list[Part],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    opsets: dict[str, int],
    ir_version: int,
    *,
    name: str,
    extra_nodes: list[onnx.NodeProto] = (),
    extra_initializers: list[onnx.TensorProto] = (),
    doc: str = "",
) -> onnx.ModelProto:
    """One model from parts + head nodes; names are checked to be defined once."""
    nodes = [n for p in parts for n in p.nodes] + list(extra_nodes)
    inits = [t for p in parts for t in p.initializers] + list(extra_initializers)
    sparse = [s for p in parts for s in p.sparse_initializers]
    vinfo = [v for p in parts for v in p.value_info]
    funcs = [f for p in parts for f in p.functions]
    seen: set[str] = {i.name for i in inputs}
    for name in [t.name for t in inits] + [s.values.name for s in sparse] + [o for n in nodes for o in n.output if o]:
        if name in seen:
            raise AssertionError(f"merged graph defines '{name}' twice")
        seen.add(name)
    first: dict[str, onnx.ValueInfoProto] = {}
    for v in vinfo + [v for p in parts for v in p.output_info.values()]:
        first.setdefault(v.name, v)
    io = {i.name for i in inputs} | {o.name for o in outputs}
    vinfo = [v for name, v in first.items() if name not in io]
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits, value_info=vinfo, sparse_initializer=sparse, doc_string=doc or None)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()], functions=funcs, producer_name="onnxopt")
    model.ir_version = ir_version
    from .. import __version__

    model.producer_version = __version__
    return model
