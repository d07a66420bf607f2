"""Channel dependency groups: which output channels can be removed, and what must follow.

A *source* is a layer whose output channels are free to remove: a Conv / ConvTranspose
(group 1) or Gemm / MatMul with a constant weight.  Walking the graph in order, every
activation tensor that carries source channels gets a *layout*: its channel axis and the
segments laid along it (a segment is one source's channels, each repeated ``repeat``
consecutive times after a Flatten / Reshape of ``[C, H, W]`` into ``C*H*W`` features, or a
fixed run of channels that are never removed).  What each op does with a layout:

- BatchNormalization / InstanceNormalization, a bias or scale constant that broadcasts
  along the channel axis, PRelu slopes, depthwise Conv weights: *param slots*, sliced like
  the channels;
- elementwise and pooling ops (Relu, Clip, MaxPool, GlobalAveragePool, Dropout, LRN, ...)
  pass the layout through; Transpose / Squeeze / Unsqueeze / Reduce* (not over channels)
  move its axis;
- Add / Sub / Mul / Div / Sum / Max / Min / Mean with several activations *tie* their
  sources: tied sources form one group and lose the same channels (residual connections
  are pruned together or not at all);
- Concat along the channel axis concatenates layouts (an input without one is a fixed run);
- Flatten / Reshape into ``[N, C*H*W]`` multiplies ``repeat`` by ``H*W`` (1:1 after a
  global pool); the Reshape's shape constant follows the new size;
- Conv / ConvTranspose / Gemm / MatMul reading a layout are *consumers*: their weights lose
  the matching input channels / features.

Anything else that reads a layout (an unknown op, a graph output, a grouped convolution,
a Reshape that is not a flatten, a Softmax over channels, ...) *blocks* the sources in it,
with the reason; a group with one blocked source is left intact and reported.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..graph import attribute
from .weights import WeightStore

__all__ = [
    "Segment",
    "Source",
    "Slot",
    "ShapeSlot",
    "AttrSlot",
    "Group",
    "Analysis",
    "analyze",
    "kept_positions",
    "layout_size",
    "static_shapes",
    "node_label",
]

log = logging.getLogger(__name__)

UNARY = {
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Softplus", "Softsign", "HardSigmoid", "HardSwish",
    "Gelu", "Erf", "Exp", "Log", "Sqrt", "Abs", "Neg", "Identity", "Cast", "Floor", "Ceil", "Round", "Reciprocal",
    "Mish", "ThresholdedRelu", "Sign", "Sin", "Cos", "Clip", "Dropout", "Shrink",
}  # fmt: skip
SPATIAL = {
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "LpPool",
    "GlobalLpPool",
    "LRN",
}
TIES = {"Add", "Sub", "Mul", "Div", "Pow", "PRelu", "Max", "Min", "Sum", "Mean"}
REDUCE = {
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceL1",
    "ReduceL2",
    "ReduceProd",
    "ReduceLogSumExp",
    "ReduceSumSquare",
    "ReduceLogSum",
}


@dataclass(frozen=True)
class Segment:
    """``channels`` of ``source`` (None: never removed), each ``repeat`` consecutive times."""

    source: int | None
    channels: int
    repeat: int = 1

    @property
    def size(self) -> int:
        return self.channels * self.repeat


Layout = tuple  # tuple[Segment, ...]


def layout_size(layout: Layout) -> int:
    return sum(s.size for s in layout)


def kept_positions(layout: Layout, keep: dict[int, np.ndarray]) -> np.ndarray:
    """Positions along the channel axis that survive when source ``s`` keeps ``keep[s]``."""
    parts, offset = [], 0
    for s in layout:
        k = keep.get(s.source) if s.source is not None else None
        k = np.arange(s.channels, dtype=np.int64) if k is None else np.asarray(k, dtype=np.int64)
        if s.repeat > 1:
            k = (k[:, None] * s.repeat + np.arange(s.repeat, dtype=np.int64)[None, :]).reshape(-1)
        parts.append(offset + k)
        offset += s.size
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@dataclass
class Source:
    id: int
    node: int  # index in graph.node
    label: str
    op: str
    channels: int
    weight: str
    axis: int  # the weight axis that indexes output channels
    out: str
    out_axis: int
    blocked: str | None = None


@dataclass(frozen=True)
class Slot:
    """``graph.node[node].input[input]`` is sliced along ``axis`` at the kept positions of ``layout``."""

    node: int
    input: int
    axis: int
    layout: Layout
    role: str  # producer | param | consumer


@dataclass(frozen=True)
class ShapeSlot:
    """Entry ``position`` of the Reshape shape constant ``node.input[input]`` becomes the kept size."""

    node: int
    input: int
    position: int
    layout: Layout


@dataclass(frozen=True)
class AttrSlot:
    """Integer attribute ``name`` of ``node`` becomes the kept size (depthwise ``group``)."""

    node: int
    name: str
    layout: Layout


@dataclass
class Group:
    id: int
    sources: list[int]
    channels: int
    label: str
    blocked: str | None = None

    @property
    def prunable(self) -> bool:
        return self.blocked is None


@dataclass
class Analysis:
    sources: list[Source] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)
    shape_slots: list[ShapeSlot] = field(default_factory=list)
    attr_slots: list[AttrSlot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    group_of: dict[int, int] = field(default_factory=dict)  # source id -> group id

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    @property
    def intact(self) -> list[Group]:
        return [g for g in self.groups if not g.prunable]

    def source_keep(self, keep_by_group: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        return {
            sid: keep_by_group[g.id]
            for g in self.groups
            if g.id in keep_by_group
            for sid in g.sources
        }

    def consumers(self) -> list[Slot]:
        return [s for s in self.slots if s.role == "consumer"]


def node_label(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def _source_label(node: onnx.NodeProto, weight: str) -> str:
    """The node's name, or its weight's when the name says nothing (``n12``, empty)."""
    return node.name if node.name and not re.fullmatch(r"n\d+", node.name) else (weight or node_label(node))


def static_shapes(model: onnx.ModelProto, inputs: dict | None = None) -> dict[str, tuple]:
    """name -> dims (int, or None when symbolic/unknown) from ONNX shape inference.

    ``inputs`` (``{graph input: dims}``, e.g. ``--shape`` or the data's shapes) sets the
    symbolic dims of those inputs first: exported models with dynamic sizes otherwise leave
    the shapes that the channel and block analyses compare unknown."""
    from ..stats import shape_skeleton

    src = shape_skeleton(model)  # the weights' dims, not their bytes: no copy of them
    if inputs and _symbolic_inputs(model, inputs):
        src = _with_input_dims(src, inputs)
    try:
        inferred = (
            onnx.shape_inference.infer_shapes(src, data_prop=True)
            if src.ByteSize() < 2**31 - 2**26
            else src
        )
    except Exception as exc:
        log.info("shape inference failed: %s", exc)
        inferred = model
    g = inferred.graph
    shapes = {
        vi.name: tuple(
            int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in vi.type.tensor_type.shape.dim
        )
        for vi in (*g.input, *g.value_info, *g.output)
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")
    }
    return shapes | {t.name: tuple(int(d) for d in t.dims) for t in g.initializer}


def _symbolic_inputs(model: onnx.ModelProto, inputs: dict) -> bool:
    """Whether a graph input named in ``inputs`` has a dim that is not a fixed value."""
    return any(
        vi.name in inputs
        and vi.type.HasField("tensor_type")
        and any(
            not (d.HasField("dim_value") and d.dim_value > 0) for d in vi.type.tensor_type.shape.dim
        )
        for vi in model.graph.input
    )


def _with_input_dims(model: onnx.ModelProto, inputs: dict) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs named in ``inputs`` have those (static) dims,
    where the rank matches and no fixed dim disagrees."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in out.graph.input:
        dims = inputs.get(vi.name)
        tt = vi.type.tensor_type
        if dims is None or not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue
        if len(tt.shape.dim) != len(dims) or any(
            d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != int(v)
            for d, v in zip(tt.shape.dim, dims, strict=True)
        ):
            continue
        for d, v in zip(tt.shape.dim, dims, strict=True):
            d.Clear()
            d.dim_value = int(v)
    del out.graph.value_info[:]
    return out


def _prod(dims) -> int | None:
    if any(d is None for d in dims):
        return None
    return int(np.prod(dims, dtype=np.int64)) if len(dims) else 1


def _scale(layout: Layout, repeat: int) -> Layout:
    return tuple(Segment(s.source, s.channels, s.repeat * repeat) for s in layout)


# a mover's reason to block the other inputs' layouts when its first input has none
_ORPHANED = {
    "move_Reshape": "shape computed from activations",
    "move_BatchNormalization": "normalizes with computed statistics",
    "move_unary": "mixes channels with other inputs",
}


class _UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def add(self, x: int) -> None:
        self.parent.setdefault(x, x)

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class _Analyzer:
    def __init__(self, model: onnx.ModelProto, inputs: dict | None = None):
        self.graph = model.graph
        self.ws = WeightStore(model)
        self.shapes = static_shapes(model, inputs)
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13
        )
        self.layouts: dict[str, tuple[Layout, int]] = {}
        self.uf = _UnionFind()
        self.out = Analysis()
        self.used = {x for n in self.graph.node for x in n.input if x}
        self.moves = dict.fromkeys(REDUCE, self.move_reduce) | dict.fromkeys(
            UNARY | SPATIAL, self.move_unary
        )

    # --- helpers -------------------------------------------------------------
    def rank(self, name: str) -> int | None:
        s = self.shape(name)
        return None if s is None else len(s)

    def shape(self, name: str) -> tuple | None:
        s = self.shapes.get(name)
        if s is None and self.ws.is_const(name):
            s = self.ws.shape(name)
        return s

    def block(self, layout: Layout | None, reason: str) -> None:
        if not layout:
            return
        for s in layout:
            if s.source is not None and self.out.sources[s.source].blocked is None:
                self.out.sources[s.source].blocked = reason
                log.debug("source %s blocked: %s", self.out.sources[s.source].label, reason)

    def block_inputs(self, node: onnx.NodeProto, reason: str) -> None:
        for x in node.input:
            if x in self.layouts:
                self.block(self.layouts[x][0], reason)

    def const_ints(self, name: str) -> list[int] | None:
        return None if not name or name not in self.ws.inits else [int(v) for v in self.ws.array(name).reshape(-1)]

    def new_source(
        self,
        idx: int,
        node: onnx.NodeProto,
        channels: int,
        weight: str,
        axis: int,
        out_axis: int,
        slots,
        blocked: str | None = None,
    ) -> int:
        sid = len(self.out.sources)
        self.out.sources.append(
            Source(
                sid,
                idx,
                _source_label(node, weight),
                node.op_type,
                int(channels),
                weight,
                axis,
                node.output[0],
                out_axis,
                blocked,
            )
        )
        self.uf.add(sid)
        seg = (Segment(sid, int(channels)),)
        self.out.slots.extend(Slot(idx, i, ax, seg, "producer") for i, ax in slots)
        self.layouts[node.output[0]] = (seg, out_axis)
        return sid

    def consume(self, idx: int, node: onnx.NodeProto, lay, ok: bool, axis: int) -> None:
        """``node`` reads the layout ``lay`` with its weight input 1, whose ``axis`` then loses
        the removed channels; blocked unless ``ok`` (the channels on the axis it reduces)."""
        if not lay:
            return
        if ok:
            self.out.slots.append(Slot(idx, 1, axis, lay[0], "consumer"))
        else:
            self.block(
                lay[0], f"{node.op_type} '{node_label(node)}' reads the channels on another axis"
            )

    def other_outputs_used(self, node: onnx.NodeProto) -> bool:
        return any(o and (o in self.used or o in self.graph_outputs) for o in node.output[1:])

    # --- the walk ------------------------------------------------------------
    def run(self) -> Analysis:
        from ..graph import outer_reads, subgraphs

        self.graph_outputs = {o.name for o in self.graph.output}
        for idx, node in enumerate(self.graph.node):
            for x in set().union(*(outer_reads(g) for g in subgraphs(node))) & set(self.layouts):
                self.block(self.layouts[x][0], f"read inside a subgraph of {node.op_type} '{node_label(node)}'")
            if node.domain not in ("", "ai.onnx"):
                self.block_inputs(
                    node, f"custom op {node.domain}.{node.op_type} '{node_label(node)}'"
                )
                continue
            handler = getattr(self, f"op_{node.op_type}", None)
            move = getattr(self, f"move_{node.op_type}", None) or self.moves.get(node.op_type)
            has_layout = any(x in self.layouts for x in node.input if x)
            if handler is not None:
                handler(idx, node)
            elif move is not None:
                self.follow(idx, node, move)
            elif node.op_type in TIES:
                self.tie(idx, node)
            elif has_layout:
                self.block_inputs(
                    node,
                    f"{node.op_type} '{node_label(node)}' is not understood by channel pruning",
                )
        for o in self.graph.output:
            if o.name in self.layouts:
                self.block(self.layouts[o.name][0], f"its channels reach graph output '{o.name}'")
        self.finish()
        return self.out

    def finish(self) -> None:
        members: dict[int, list[int]] = {}
        for s in self.out.sources:
            members.setdefault(self.uf.find(s.id), []).append(s.id)
        for gid, (_, sids) in enumerate(sorted(members.items())):
            srcs = [self.out.sources[i] for i in sids]
            labels = list(dict.fromkeys(s.label for s in srcs))
            label = " + ".join(labels[:3]) + (
                f" (+{len(labels) - 3} more)" if len(labels) > 3 else ""
            )
            reason = next((s.blocked for s in srcs if s.blocked), None)
            grp = Group(gid, sids, srcs[0].channels, label, reason)
            if grp.prunable and grp.channels < 2:
                grp.blocked = "a single channel"
            self.out.groups.append(grp)
            self.out.group_of.update(dict.fromkeys(sids, gid))

    # --- layers --------------------------------------------------------------
    def op_Conv(self, idx, node, transpose: bool = False):
        x, w = node.input[0], node.input[1]
        b = node.input[2] if len(node.input) > 2 else ""
        lay = self.layouts.get(x)
        name = node_label(node)
        wshape = self.ws.shape(w) if self.ws.is_const(w) else None
        if wshape is None or len(wshape) < 3:
            self.block_inputs(node, f"{node.op_type} '{name}' has a non-constant weight")
            return
        if w in self.layouts or (b and b in self.layouts):
            self.block_inputs(node, f"{node.op_type} '{name}' computes its weight from activations")
            return
        group = int(attribute(node, "group", 1))
        bias_ok = not b or self.ws.is_const(b)
        if group == 1:
            in_axis, out_axis_w = (0, 1) if transpose else (1, 0)
            ok = lay and lay[1] == 1 and layout_size(lay[0]) == wshape[in_axis]
            self.consume(idx, node, lay, ok, in_axis)
            slots = [(1, out_axis_w)] + ([(2, 0)] if b else [])
            self.new_source(
                idx,
                node,
                wshape[out_axis_w],
                w,
                out_axis_w,
                1,
                slots if bias_ok else [],
                None if bias_ok else f"{node.op_type} '{name}' has a non-constant bias",
            )
            return
        xshape = self.shape(x)
        cin = xshape[1] if xshape and len(xshape) > 1 else None
        if not transpose and wshape[1] == 1 and wshape[0] == group and cin == group:
            if lay:  # depthwise: channels pass through, weights and group follow
                layout, c = lay
                if c != 1:
                    self.block(
                        layout, f"depthwise Conv '{name}' reads the channels on another axis"
                    )
                    return
                self.out.slots.append(Slot(idx, 1, 0, layout, "param"))
                if b:
                    if not bias_ok:
                        self.block(layout, f"depthwise Conv '{name}' has a non-constant bias")
                        return
                    self.out.slots.append(Slot(idx, 2, 0, layout, "param"))
                self.out.attr_slots.append(AttrSlot(idx, "group", layout))
                self.layouts[node.output[0]] = (layout, 1)
            return
        if lay:
            self.block(lay[0], f"grouped convolution '{name}' (group={group})")
        out_c = wshape[1] * group if transpose else wshape[0]
        self.new_source(
            idx,
            node,
            out_c,
            w,
            1 if transpose else 0,
            1,
            [],
            f"grouped convolution '{name}' (group={group})",
        )

    def op_ConvTranspose(self, idx, node):
        self.op_Conv(idx, node, transpose=True)

    def op_Gemm(self, idx, node):
        a, b = node.input[0], node.input[1]
        c = node.input[2] if len(node.input) > 2 else ""
        name = node_label(node)
        lay = self.layouts.get(a)
        trans_a, trans_b = int(attribute(node, "transA", 0)), int(attribute(node, "transB", 0))
        if not self.ws.is_const(b) or trans_a or b in self.layouts or (c and c in self.layouts):
            self.block_inputs(
                node,
                f"Gemm '{name}' " + ("has transA=1" if trans_a else "has a non-constant weight"),
            )
            return
        bshape = self.ws.shape(b)
        if len(bshape) != 2:
            self.block_inputs(node, f"Gemm '{name}' weight is not 2-D")
            return
        fan_in = bshape[1] if trans_b else bshape[0]
        ok = lay and lay[1] == 1 and self.rank(a) == 2 and layout_size(lay[0]) == fan_in
        self.consume(idx, node, lay, ok, 1 if trans_b else 0)
        n_out = bshape[0] if trans_b else bshape[1]
        slots = [(1, 0 if trans_b else 1)]
        blocked = None
        if c:
            cshape = self.ws.shape(c) if self.ws.is_const(c) else None
            if cshape is None:
                blocked = f"Gemm '{name}' has a non-constant bias"
            elif _prod(cshape) == n_out and cshape and cshape[-1] == n_out:
                slots.append((2, len(cshape) - 1))
            elif _prod(cshape) != 1:
                blocked = (
                    f"Gemm '{name}' bias of shape {list(cshape)} does not broadcast per output"
                )
        self.new_source(idx, node, n_out, b, slots[0][1], 1, slots, blocked)

    def op_MatMul(self, idx, node):
        a, b = node.input[0], node.input[1]
        name = node_label(node)
        if not self.ws.is_const(b) or b in self.layouts or len(self.ws.shape(b)) != 2:
            self.block_inputs(node, f"MatMul '{name}' has no constant 2-D weight")
            return
        ra = self.rank(a)
        lay = self.layouts.get(a)
        bshape = self.ws.shape(b)
        ok = lay and ra is not None and lay[1] == ra - 1 and layout_size(lay[0]) == bshape[0]
        self.consume(idx, node, lay, ok, 0)
        ro = self.rank(node.output[0])
        if ro is None:
            return
        self.new_source(idx, node, bshape[1], b, 1, ro - 1, [(1, 1)])

    # --- per-channel parameters ---------------------------------------------
    def move_BatchNormalization(self, idx, node, layout, c):
        """Per-channel parameters (BatchNormalization's 4, InstanceNormalization's 2) are sliced."""
        n_params = 2 if node.op_type == "InstanceNormalization" else 4
        params = [i for i in range(1, n_params + 1) if i < len(node.input)]
        name = f"{node.op_type} '{node_label(node)}'"
        if (
            c != 1
            or self.other_outputs_used(node)
            or any(node.input[i] in self.layouts for i in params)
        ):
            return f"{name} cannot follow removed channels"
        params = [i for i in params if node.input[i]]
        if not all(self.ws.is_const(node.input[i]) for i in params):
            return f"{name} has non-constant parameters"
        self.out.slots.extend(Slot(idx, i, 0, layout, "param") for i in params)
        return layout, c

    move_InstanceNormalization = move_BatchNormalization

    # --- pass-through ---------------------------------------------------------
    def move_unary(self, idx, node, layout, c):
        """Elementwise and pooling ops (``UNARY``, ``SPATIAL``) keep the layout."""
        name = f"{node.op_type} '{node_label(node)}'"
        if any(i and (i in self.layouts or not self.ws.is_const(i)) for i in node.input[1:]):
            return f"{name} has non-constant parameters"
        if node.op_type in SPATIAL and c != 1:
            return f"{name} pools over the channel axis"
        if self.other_outputs_used(node):
            return f"{name} second output is used"
        if node.op_type == "LRN":
            self.out.notes.append(
                f"LRN '{node_label(node)}' normalizes across neighbouring channels: removed channels change its window"
            )
        return layout, c

    def tie(self, idx, node):
        name = node_label(node)
        out = node.output[0]
        r = self.rank(out)
        ins = [(i, x) for i, x in enumerate(node.input) if x]
        lay_in = [(i, x) for i, x in ins if x in self.layouts]
        const_in = [(i, x) for i, x in ins if x not in self.layouts and self.ws.is_const(x)]
        other_in = [(i, x) for i, x in ins if x not in self.layouts and not self.ws.is_const(x)]
        if not lay_in:
            return
        if r is None or any(self.rank(x) is None for _, x in lay_in):
            self.block_inputs(node, f"{node.op_type} '{name}' has inputs of unknown rank")
            return
        axes = {self.layouts[x][1] + (r - self.rank(x)) for _, x in lay_in}
        if len(axes) != 1:
            self.block_inputs(node, f"{node.op_type} '{name}' combines channels on different axes")
            return
        c = axes.pop()
        layouts = [self.layouts[x][0] for _, x in lay_in]
        for _, x in other_in:
            s = self.shape(x)
            pos = None if s is None else c - (r - len(s))
            if s is None or (pos is not None and pos >= 0 and s[pos] != 1):
                self.block_inputs(
                    node,
                    f"{node.op_type} '{name}' ties channels to an input whose channels cannot be pruned",
                )
                return
        size = layout_size(layouts[0])
        params = []
        for i, x in const_in:
            s = self.ws.shape(x)
            pos = c - (r - len(s))
            if pos < 0 or s[pos] == 1:
                continue
            if s[pos] != size:
                self.block_inputs(
                    node, f"{node.op_type} '{name}' constant does not broadcast along the channels"
                )
                return
            params.append(Slot(idx, i, pos, layouts[0], "param"))
        if not self.unify(layouts, f"{node.op_type} '{name}'"):
            return
        self.out.slots.extend(params)
        self.layouts[out] = (layouts[0], c)

    def unify(self, layouts: list, where: str) -> bool:
        """Tie the sources at the same positions of ``layouts``; block them when they differ."""
        if len({tuple((s.channels, s.repeat) for s in lay) for lay in layouts}) > 1:
            for l2 in layouts:
                self.block(l2, f"{where} ties channels laid out differently")
            return False
        for k in range(len(layouts[0])):
            srcs = {lay[k].source for lay in layouts}
            if None in srcs and len(srcs) > 1:
                for l2 in layouts:
                    self.block(l2, f"{where} ties channels to channels that cannot be pruned")
                return False
            srcs = sorted(srcs - {None})
            for s in srcs[1:]:
                self.uf.union(srcs[0], s)
        return True

    def op_Concat(self, idx, node):
        name = node_label(node)
        out = node.output[0]
        r = self.rank(out)
        lay_in = [x for x in node.input if x in self.layouts]
        if not lay_in:
            return
        if r is None:
            self.block_inputs(node, f"Concat '{name}' output has unknown rank")
            return
        axis = int(attribute(node, "axis", 1)) % r
        chans = {self.layouts[x][1] for x in lay_in}
        if len(chans) != 1 or any(self.rank(x) != r for x in lay_in):
            self.block_inputs(node, f"Concat '{name}' combines channels on different axes")
            return
        c = chans.pop()
        if axis != c:
            if len(lay_in) != len([x for x in node.input if x]):
                self.block_inputs(node, f"Concat '{name}' with a non-prunable input")
                return
            layouts = [self.layouts[x][0] for x in node.input if x]
            if self.unify(layouts, f"Concat '{name}'"):
                self.layouts[out] = (layouts[0], c)
            return
        segs: list[Segment] = []
        for x in node.input:
            if not x:
                continue
            if x in self.layouts:
                segs.extend(self.layouts[x][0])
                continue
            s = self.shape(x)
            if s is None or len(s) != r or s[c] is None:
                self.block_inputs(node, f"Concat '{name}' with an input of unknown channel count")
                return
            segs.append(Segment(None, int(s[c])))
        self.layouts[out] = (tuple(segs), c)

    # --- layout changes: ``move_<op>(idx, node, layout, c)`` on the first input's layout -----
    def follow(self, idx, node, move) -> None:
        """The first input's layout moved by ``move``: ``(layout, axis)`` of the output, or the
        reason its sources are blocked."""
        lay = self.layouts.get(node.input[0]) if node.input else None
        if not lay:  # another input has one (the first has none): blocked with this reason
            why = _ORPHANED.get(move.__name__)
            if why:
                self.block_inputs(node, f"{node.op_type} '{node_label(node)}' {why}")
            return
        moved = move(idx, node, *lay)
        if isinstance(moved, str):
            self.block(lay[0], moved)
        else:
            self.layouts[node.output[0]] = moved

    def move_Flatten(self, idx, node, layout, c):
        name = node_label(node)
        s = self.shape(node.input[0])
        if s is None:
            return f"Flatten '{name}' input of unknown shape"
        a = int(attribute(node, "axis", 1)) % max(len(s), 1) if len(s) else 0
        inner, after = _prod(s[a:c]), _prod(s[c + 1 :])
        return f"Flatten '{name}' interleaves the channels with other axes" if c < a or inner != 1 or after is None else (_scale(layout, after), 1)

    def move_Reshape(self, idx, node, layout, c):
        sin, sout = self.shape(node.input[0]), self.shape(node.output[0])
        target = self.const_ints(node.input[1]) if len(node.input) > 1 else None
        ok = (
            target is not None
            and sin is not None
            and sout is not None
            and c == 1
            and len(sout) >= 2
            and _prod(sin[1:]) is not None
            and sout[1] == _prod(sin[1:])
            and all(d == 1 for d in sout[2:])
            and sin[0] == sout[0]
            and len(target) == len(sout)
        )
        if not ok:
            return f"Reshape '{node_label(node)}' is not a flatten of the channels"
        new = _scale(layout, _prod(sin[2:]))
        if target[1] > 0:
            self.out.shape_slots.append(ShapeSlot(idx, 1, 1, new))
        return new, 1

    def move_Transpose(self, idx, node, layout, c):
        r = self.rank(node.input[0])
        perm = attribute(node, "perm")
        perm = list(perm) if perm is not None else (list(range(r))[::-1] if r is not None else None)
        return f"Transpose '{node_label(node)}' of unknown rank" if perm is None else (layout, perm.index(c))

    def _axes(self, node, r_norm: int | None) -> list[int] | None:
        axes = attribute(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.const_ints(node.input[1])
            if axes is None:
                return None
        if axes is None:
            return []
        return None if r_norm is None else sorted(int(a) % r_norm for a in axes)

    def move_Squeeze(self, idx, node, layout, c):
        axes = self._axes(node, self.rank(node.input[0]))
        if axes is None or not axes or c in axes:
            return f"Squeeze '{node_label(node)}' may remove the channel axis"
        return layout, c - sum(1 for a in axes if a < c)

    def move_Unsqueeze(self, idx, node, layout, c):
        axes = self._axes(node, self.rank(node.output[0]))
        if axes is None:
            return f"Unsqueeze '{node_label(node)}' with computed axes"
        kept = [i for i in range(self.rank(node.output[0])) if i not in axes]
        return layout, kept[c]

    def move_reduce(self, idx, node, layout, c):
        axes = self._axes(node, self.rank(node.input[0]))
        noop = int(attribute(node, "noop_with_empty_axes", 0))
        if axes is None or (not axes and not noop) or c in axes:
            return f"{node.op_type} '{node_label(node)}' reduces over the channels"
        keep = int(attribute(node, "keepdims", 1))
        return layout, c if keep else c - sum(1 for a in axes if a < c)

    def move_Softmax(self, idx, node, layout, c):
        r = self.rank(node.input[0])
        if r is None:
            return f"{node.op_type} '{node_label(node)}' of unknown rank"
        axis = int(attribute(node, "axis", -1 if self.opset >= 13 else 1)) % r
        if (self.opset >= 13 and axis == c) or (self.opset < 13 and c >= axis):
            return f"{node.op_type} '{node_label(node)}' normalizes over the channels"
        return layout, c

    move_LogSoftmax = move_Softmax
    move_Hardmax = move_Softmax

    def move_Pad(self, idx, node, layout, c):
        r = self.rank(node.input[0])
        pads = attribute(node, "pads")
        if pads is None and len(node.input) > 1:
            pads = self.const_ints(node.input[1])
        axes_given = len(node.input) > 3 and node.input[3]
        if (
            pads is None
            or r is None
            or axes_given
            or len(pads) != 2 * r
            or pads[c] != 0
            or pads[c + r] != 0
        ):
            return f"Pad '{node_label(node)}' may pad the channel axis"
        return layout, c

    def move_Resize(self, idx, node, layout, c):
        sizes = node.input[3] if len(node.input) > 3 else ""
        at = 2 if node.op_type == "Resize" and self.opset >= 11 else 1
        scales_name = node.input[at] if len(node.input) > at else ""
        scales = None
        if scales_name and self.ws.is_const(scales_name):
            scales = [float(v) for v in self.ws.array(scales_name).reshape(-1)]
        if (
            sizes
            or (scales_name and scales is None)
            or (scales and (len(scales) <= c or scales[c] != 1.0))
            or attribute(node, "axes") is not None
        ):
            return f"{node.op_type} '{node_label(node)}' may resize the channel axis"
        return layout, c

    move_Upsample = move_Resize


def analyze(model: onnx.ModelProto, inputs: dict | None = None) -> Analysis:
    """Channel groups of ``model``'s main graph (Constant nodes should be initializers);
    ``inputs``: static dims for symbolic graph inputs (see ``static_shapes``)."""
    return _Analyzer(model, inputs).run()
