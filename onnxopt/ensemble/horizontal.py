"""Horizontal fusion (``--fuse-members``): members of one architecture run as one wider network.

Members are grouped by an architecture signature: the same nodes in the same order with the
same op types, attributes, wiring and initializer shapes (weights may differ; no subgraphs,
no local functions).  Each group of two or more is rebuilt node by node, in lockstep, with
every member value held in one of five layouts (``M`` = members in the group):

- ``shared``:  one tensor equal for all members (graph inputs, and everything computed only
  from shared values and identical weights, e.g. a common backbone: computed once);
- ``const``:   per-member initializers (weights), consumed by the stacking ops below;
- ``concat``:  members concatenated along one axis in blocks (``[N, M*C, H, W]`` for convs,
  ``[N, M*O]`` after a Gemm on a shared input);
- ``batched``: members stacked on a new leading axis (``[M, N, F]``) for batched MatMul;
- ``split``:   one tensor per member (the unfused form).

Rewrites:

- ``Conv`` on a shared input (group 1): one Conv with the weights concatenated on the
  output channels -> ``concat`` axis 1; on a ``concat`` input: one grouped Conv with
  ``group = M * g`` (member ``m``'s output channels ``[m*Cout, (m+1)*Cout)`` read only its own
  input channels) -> ``concat`` axis 1.
- ``BatchNormalization``, pools, ``Flatten(axis=1)``: per-channel, parameters concatenated.
- ``Gemm`` / ``MatMul`` with constant weights on a shared input: one Gemm/MatMul with
  ``[F, M*O]`` weights (the N layers stacked; outputs split at the end) -> ``concat``.  On
  a ``concat`` 2-D input: a block-diagonal Gemm while ``(M*F)*(M*O) <= BLOCK_DIAGONAL_MAX``
  (one kernel, few wasted zeros).  Wider: with ``wide="batched"`` (CUDA) ``Reshape``/
  ``Transpose`` to ``batched`` and one batched ``MatMul`` ``[M, N, F] x [M, F, O]`` + ``Add``;
  with ``wide="split"`` (CPU, where ORT's batched MatMul is slower than N Gemms) the layer
  and everything after it run per member.
- Elementwise ops (unary and ``Add``/``Sub``/``Mul``/``Div``/``Pow``/``Max``/``Min``/
  ``Sum``/``Mean``/``PRelu``): layout kept; per-member constants are concatenated or stacked
  to match; ``Softmax``/``LogSoftmax``/``Hardmax`` keep a ``concat`` layout when they
  normalise another axis, else run ``batched`` on the shifted axis; ``Transpose`` and
  ``Reshape`` follow the layout.
- On the ``batched`` layout, with axes shifted past the member axis: ``Reduce*`` ("all
  axes" = ``1..r``), ``Squeeze``/``Unsqueeze``, ``Slice`` (same starts/ends for all members),
  ``Expand`` (target prefixed with ``M``) and ``Reshape`` to a target computed at run time.
- ``Shape`` of a stacked value is the members' common shape (stacked axis divided by ``M``,
  or the member axis dropped): ``shared``, so the shape arithmetic after it runs once.
- A node that reads only per-member constants (e.g. PaddlePaddle's ``Reshape`` of each
  bias to ``[1, C, 1, 1]``) is computed in numpy per member (ONNX reference evaluator) and
  stays a per-member constant, unless that would store more than 1 MB at 16x its inputs.
- A ``batched`` 2-D operand of a small ``Gemm``/``MatMul`` is brought back to ``concat`` for
  the block-diagonal form.
- A node with no stacked form (or whose stacked form is refused, e.g. a per-member
  constant broadcast along the stacked axis) runs once per member on that member's slice
  (``Split`` / ``Gather``), and so does everything after it; the report says which node.
- Each member's output is cut out at the end: ``Slice`` (``concat``), ``Gather`` on axis 0
  (``batched``) or ``Identity`` (``shared``, ``split``), under the member's own output name.

Alpha and beta of a Gemm are folded into its weights.  The fused group computes the same
functions as the members; the API's parity check compares every member output of the fused
graph with the member run on its own.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import subgraphs, unique_name
from ..simplify.constants import constants_to_initializers
from .merge import Member, Part, value_shape

__all__ = ["BLOCK_DIAGONAL_MAX", "Refused", "signature", "group_members", "fuse_group"]

log = logging.getLogger(__name__)

BLOCK_DIAGONAL_MAX = 65536

UNARY = {
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish", "Softplus",
    "Softsign", "Gelu", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Identity", "Dropout",
    "Clip", "Cast", "Mish", "ThresholdedRelu", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos",
}  # fmt: skip
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu"}
POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
SOFTMAXES = {"Softmax", "LogSoftmax", "Hardmax"}
REDUCES = {
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
}  # fmt: skip


class Refused(Exception):
    """The group cannot be fused; the message says which node and why."""


@dataclass
class _St:
    kind: str  # shared | const | concat | batched | split
    name: str | None = None
    names: list | None = None  # split: one tensor per member
    arrays: list | None = None
    src: str = ""
    axis: int = 1
    block: int | None = None
    shape: tuple | None = None  # one member's shape (ints, or None/str where unknown)

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def identical(self) -> bool:
        a0 = self.arrays[0]
        return all(a.dtype == a0.dtype and a.shape == a0.shape and np.array_equal(a, a0) for a in self.arrays[1:])

    @property
    def stacked(self) -> bool:
        return self.kind in ("concat", "batched")


def _prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    m = copy.deepcopy(model)
    constants_to_initializers(m)
    return m


def signature(model: onnx.ModelProto, input_rename: dict[str, str]) -> tuple[str | None, str]:
    """A digest of the architecture (weights excluded), or ``(None, reason)``."""
    if model.functions:
        return None, "has local functions"
    g = model.graph
    pos = {name: f"in:{to}" for name, to in input_rename.items()} | {
        t.name: f"init:{t.data_type}:{tuple(t.dims)}" for t in g.initializer
    }
    items = []
    for k, n in enumerate(g.node):
        if any(True for _ in subgraphs(n)):
            return None, f"node '{n.name or n.op_type}' has a subgraph"
        ins = []
        for x in n.input:
            if x and x not in pos:
                return None, f"node '{n.name or n.op_type}' reads '{x}', which is not defined before it"
            ins.append(pos.get(x, ""))
        attrs = sorted((a.name, a.SerializeToString(deterministic=True).hex()) for a in n.attribute)
        items.append((n.domain, n.op_type, attrs, ins, [bool(o) for o in n.output]))
        pos.update({o: f"n{k}:{j}" for j, o in enumerate(n.output) if o})
    outs = [pos.get(o.name, "?") for o in g.output]
    return hashlib.blake2b(repr((items, outs)).encode(), digest_size=16).hexdigest(), ""


def group_members(members: list[Member]) -> tuple[list[list[Member]], dict[str, str]]:
    """Members grouped by architecture (order of first appearance); reasons for the unfusable."""
    groups: dict[str, list[Member]] = {}
    reasons: dict[str, str] = {}
    for m in members:
        sig, why = signature(_prepare(m.model), m.input_rename)
        if sig is None:
            reasons[m.label] = why
            groups[f"single:{m.index}"] = [m]
        else:
            groups.setdefault(sig, []).append(m)
    return list(groups.values()), reasons


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple | None]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        inferred = model
    g = inferred.graph
    out = {vi.name: value_shape(vi) for vi in (*g.input, *g.value_info, *g.output)}
    return out | {t.name: tuple(int(d) for d in t.dims) for t in g.initializer}


def _static(dims) -> bool:
    return all(isinstance(d, int) and d > 0 for d in dims)


def _reshape_dims(st: _St, start: int, where: str) -> list[int]:
    """``st``'s dims from ``start`` on as a Reshape target: its one unknown dim as -1."""
    dims = [d if isinstance(d, int) else -1 for d in st.shape[start:]]
    if dims.count(-1) > 1:
        raise Refused(f"'{st.name}': several unknown dims after {where}")
    return dims


def _rank(n0, x: _St, ok: bool = True) -> int:
    """The rank of ``n0``'s input ``x`` (refused when unknown or not ``ok``)."""
    if x.rank is None or not ok:
        raise Refused(f"{n0.op_type} node '{n0.name}': rank unknown")
    return x.rank


def _axes_of(n0, ins, att) -> list[int] | None:
    """The ``axes`` of a reduction / squeeze: its second input (one constant shared by the
    members) from opset 13/18 on, else its attribute; None when neither is given."""
    if len(ins) > 1 and ins[1] is not None:
        if ins[1].kind != "const" or not ins[1].identical:
            raise Refused(f"{n0.op_type} node '{n0.name}': the axes are not one constant")
        return [int(v) for v in ins[1].arrays[0].reshape(-1)]
    return list(att["axes"].ints) if "axes" in att else None


@dataclass
class _Fuser:
    members: list[Member]
    prefix: str
    wide: str = "split"
    models: list = field(default_factory=list)
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    taken: set = field(default_factory=set)
    counts: Counter = field(default_factory=Counter)
    state: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    _cache: dict = field(default_factory=dict)

    def __post_init__(self):
        self.models = [_prepare(m.model) for m in self.members]
        self.M = len(self.models)
        self.shapes = _inferred_shapes(self.models[0])
        self.inits_by = [{t.name: t for t in m.graph.initializer} for m in self.models]
        for x, to in self.members[0].input_rename.items():
            self.state[x] = _St("shared", to, shape=self.shapes.get(x))

    # --- emission helpers -------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        return unique_name(self.prefix + base, self.taken)

    def init(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def small(self, values, dtype=np.int64) -> str:
        """A cached small constant (shapes, indices, axes)."""
        arr = np.asarray(values, dtype=dtype)
        key = ("const", arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._cache:
            self._cache[key] = self.init("c", arr)
        return self._cache[key]

    def emit(self, op: str, inputs: list[str], base: str, *, attrs=None, n_out: int = 1, domain: str = "") -> list[str]:
        outs = [self.fresh(f"{base}" if n_out == 1 else f"{base}_{i}") for i in range(n_out)]
        node = helper.make_node(op, inputs, outs, name=self.fresh(f"{op}"), domain=domain or None)
        node.attribute.extend(attrs or [])
        self.nodes.append(node)
        return outs

    def emit_like(self, n0: onnx.NodeProto, inputs: list[str], *, drop=(), **overrides) -> list[str]:
        """Copy ``n0`` (op, domain, attributes) with new inputs/outputs; attributes overridden."""
        attrs = [a for a in n0.attribute if a.name not in overrides and a.name not in drop]
        attrs += [helper.make_attribute(k, v) for k, v in overrides.items()]
        outs = [self.fresh(o) if o else "" for o in n0.output]
        node = helper.make_node(n0.op_type, inputs, outs, name=self.fresh(n0.name or n0.op_type), domain=n0.domain or None)
        node.attribute.extend(attrs)
        self.nodes.append(node)
        return outs

    def shared_name(self, st: _St) -> str:
        if st.kind == "shared":
            return st.name
        if st.kind == "const" and st.identical:
            key = ("shared", st.src)
            if key not in self._cache:
                self._cache[key] = self.init(st.src, st.arrays[0])
            return self._cache[key]
        raise Refused("internal: not a shared value")

    # --- reading node inputs ------------------------------------------------------------------
    def read(self, k: int, i: int) -> _St | None:
        n0 = self.models[0].graph.node[k]
        x = n0.input[i]
        if not x:
            return None
        if x in self.state:
            return self.state[x]
        if x in self.inits_by[0]:
            arrays = [numpy_helper.to_array(self.inits_by[j][m.graph.node[k].input[i]]) for j, m in enumerate(self.models)]
            return _St("const", arrays=arrays, src=x, shape=tuple(arrays[0].shape))
        raise Refused(f"node '{n0.name or n0.op_type}' reads '{x}', which has no value here")

    # --- layout conversions -------------------------------------------------------------------
    def to_batched(self, st: _St) -> _St:
        if st.kind == "batched":
            return st
        if st.kind != "concat":
            raise Refused("internal: to_batched of a non-stacked value")
        key = ("batched", st.name)
        if key in self._cache:
            return self._cache[key]
        r, a = st.rank, st.axis
        if r is None:
            raise Refused(f"rank of '{st.name}' unknown")
        target = [0] * a + [self.M, st.block] + _reshape_dims(st, a + 1, "the stacked axis")
        (resh,) = self.emit("Reshape", [st.name, self.small(target)], f"{st.name.removeprefix(self.prefix)}/split_members")
        perm = [a] + list(range(a)) + list(range(a + 1, r + 1))
        (tr,) = self.emit("Transpose", [resh], f"{st.name.removeprefix(self.prefix)}/batched", attrs=[helper.make_attribute("perm", perm)])
        self.counts["layout_changes"] += 1
        out = _St("batched", tr, shape=st.shape[:a] + (st.block,) + st.shape[a + 1 :])
        self._cache[key] = out
        return out

    def to_concat(self, st: _St, axis: int = 1) -> _St:
        if st.kind == "concat" and st.axis == axis:
            return st
        if st.kind == "concat":
            st = self.to_batched(st)
        key = ("concat", st.name, axis)
        if key in self._cache:
            return self._cache[key]
        r = st.rank
        if r is None or axis >= r:
            raise Refused(f"rank of '{st.name}' unknown or too small")
        block = st.shape[axis]
        if not isinstance(block, int):
            raise Refused(f"'{st.name}': size of axis {axis} unknown")
        trailing = _reshape_dims(st, axis + 1, f"axis {axis}")
        base = st.name.removeprefix(self.prefix) if st.name else "value"
        if st.kind == "shared":
            (out,) = self.emit("Concat", [st.name] * self.M, f"{base}/replicated", attrs=[helper.make_attribute("axis", axis)])
        elif st.kind == "batched":
            perm = list(range(1, axis + 1)) + [0] + list(range(axis + 1, r + 1))
            (tr,) = self.emit("Transpose", [st.name], f"{base}/unbatch", attrs=[helper.make_attribute("perm", perm)])
            (out,) = self.emit("Reshape", [tr, self.small([0] * axis + [self.M * block] + trailing)], f"{base}/concat")
        else:
            raise Refused(f"'{st.src}' is a per-member constant where a computed value is expected")
        self.counts["layout_changes"] += 1
        res = _St("concat", out, axis=axis, block=block, shape=st.shape)
        self._cache[key] = res
        return res

    def to_split(self, st: _St) -> _St:
        """One tensor per member: ``Split`` of a concat, ``Gather`` of a batched value."""
        if st.kind in ("split", "shared", "const"):
            return st
        key = ("split", st.name)
        if key in self._cache:
            return self._cache[key]
        base = st.name.removeprefix(self.prefix)
        if st.kind == "concat":
            names = self.emit(
                "Split", [st.name, self.small([st.block] * self.M)], f"{base}/member", attrs=[helper.make_attribute("axis", st.axis)], n_out=self.M
            )
        else:
            names = [self.emit("Gather", [st.name, self.small(j)], f"{base}/member_{j}", attrs=[helper.make_attribute("axis", 0)])[0] for j in range(self.M)]
        self.counts["layout_changes"] += 1
        out = _St("split", names=names, shape=st.shape)
        self._cache[key] = out
        return out

    def h_per_member(self, n0, ins):
        """``n0`` emitted once per member on that member's tensors and weights."""
        ins = [None if s is None else self.to_split(s) for s in ins]
        outs = [[] for _ in n0.output]
        for j in range(self.M):
            node = helper.make_node(
                n0.op_type,
                [self.member_name(s, j) for s in ins],
                [self.fresh(f"{o}/m{j}") if o else "" for o in n0.output],
                name=self.fresh(f"{n0.name or n0.op_type}/m{j}"),
                domain=n0.domain or None,
            )
            node.attribute.extend(n0.attribute)
            self.nodes.append(node)
            for i, o in enumerate(node.output):
                outs[i].append(o)
        self.counts["per_member_nodes"] += 1
        return [_St("split", names=o, shape=self.out_shape(n0, i)) if n0.output[i] else None for i, o in enumerate(outs)]

    def member_name(self, s: _St | None, j: int) -> str:
        """Member ``j``'s tensor of an input already split (or shared, or constant)."""
        if s is None:
            return ""
        if s.kind == "split":
            return s.names[j]
        return self.init(f"{s.src}/m{j}", s.arrays[j]) if s.kind == "const" and not s.identical else self.shared_name(s)

    # --- node handlers ------------------------------------------------------------------------
    def out_shape(self, n0, j: int = 0):
        return self.shapes.get(n0.output[j]) if j < len(n0.output) and n0.output[j] else None

    def _shared_rest(self, n0, ins):
        names = []
        for s in ins:
            if s is None:
                names.append("")
            elif s.kind == "shared" or (s.kind == "const" and s.identical):
                names.append(self.shared_name(s))
            else:
                raise Refused(f"{n0.op_type} node '{n0.name}': an auxiliary input differs between members")
        return names

    def h_shared(self, n0, ins):
        names = [("" if s is None else self.shared_name(s)) for s in ins]
        outs = self.emit_like(n0, names)
        self.counts["computed_once"] += 1
        return [_St("shared", o, shape=self.out_shape(n0, j)) if o else None for j, o in enumerate(outs)]

    def h_unary(self, n0, ins):
        x = ins[0]
        if not x.stacked:
            raise Refused(f"{n0.op_type} node '{n0.name}' on per-member constants")
        if sum(1 for o in n0.output if o) > 1:
            raise Refused(f"{n0.op_type} node '{n0.name}': only the first output can be used")
        (out,) = self.emit_like(n0, [x.name] + self._shared_rest(n0, ins[1:]))[:1]
        return [_St(x.kind, out, axis=x.axis, block=x.block, shape=self.out_shape(n0) or x.shape)]

    def operand(self, n0, s: _St | None, target: _St, r: int) -> str:
        if s is None:
            return ""
        if target.kind == "concat":
            a, block = target.axis, target.block
            if s.kind == "concat":
                if (s.axis, s.block, s.rank) != (a, block, r):
                    raise Refused(f"{n0.op_type} node '{n0.name}': operands stacked differently")
                return s.name
            if s.kind == "const":
                padded = [a_.reshape((1,) * (r - a_.ndim) + a_.shape) for a_ in s.arrays]
                if padded[0].ndim > r:
                    raise Refused(f"{n0.op_type} node '{n0.name}': constant of higher rank than the value")
                dim = padded[0].shape[a]
                if dim == 1:
                    if not s.identical:
                        raise Refused(f"{n0.op_type} node '{n0.name}': per-member constant '{s.src}' broadcasts along the stacked axis")
                    return self.shared_name(s)
                if dim == block:
                    return self.init(f"{s.src}/stacked", np.concatenate(padded, axis=a))
                raise Refused(f"{n0.op_type} node '{n0.name}': constant '{s.src}' does not match the stacked axis")
            # shared value
            sr = s.rank
            if sr is None:
                raise Refused(f"{n0.op_type} node '{n0.name}': rank of '{s.name}' unknown")
            ax = a - (r - sr)
            if ax < 0 or s.shape[ax] == 1:
                return s.name
            if s.shape[ax] != block:
                raise Refused(f"{n0.op_type} node '{n0.name}': shared operand does not match the stacked axis")
            (rep,) = self.emit("Concat", [s.name] * self.M, f"{s.name.removeprefix(self.prefix)}/replicated", attrs=[helper.make_attribute("axis", ax)])
            return rep
        # batched target
        if s.kind in ("concat", "batched"):
            if s.rank != r:
                raise Refused(f"{n0.op_type} node '{n0.name}': stacked operands of different ranks")
            return self.to_batched(s).name
        if s.kind == "const":
            if s.identical:
                return self.shared_name(s)
            if s.arrays[0].ndim > r:
                raise Refused(f"{n0.op_type} node '{n0.name}': constant of higher rank than the value")
            return self.init(f"{s.src}/stacked", np.stack([a_.reshape((1,) * (r - a_.ndim) + a_.shape) for a_ in s.arrays]))
        return s.name  # shared value: broadcasts over the member axis

    def h_elementwise(self, n0, ins):
        stacked = [s for s in ins if s is not None and s.stacked]
        shape = self.out_shape(n0)
        if not stacked and not any(s is not None and s.kind == "shared" for s in ins):
            raise Refused(f"{n0.op_type} node '{n0.name}' combines per-member constants only")
        r = len(shape) if shape is not None else (stacked[0].rank if stacked else None)
        if r is None:
            raise Refused(f"{n0.op_type} node '{n0.name}': output rank unknown")
        layouts = {(s.kind, s.axis, s.block, s.rank) for s in stacked}
        one_concat = (
            stacked and len(layouts) == 1 and stacked[0].kind == "concat" and stacked[0].rank == r
        )
        target = stacked[0] if one_concat else _St("batched")
        names = [self.operand(n0, s, target, r) for s in ins]
        (out,) = self.emit_like(n0, names)[:1]
        return [_St(target.kind, out, axis=target.axis, block=target.block, shape=shape or stacked[0].shape)]

    def _weights(self, n0, st: _St | None, what: str):
        if st is None:
            return None
        if st.kind != "const":
            raise Refused(f"{n0.op_type} node '{n0.name}': {what} is computed, not an initializer")
        return st.arrays

    def h_conv(self, n0, ins):
        x = ins[0]
        W = self._weights(n0, ins[1], "the weight")
        B = self._weights(n0, ins[2] if len(ins) > 2 else None, "the bias")
        g = next((a.i for a in n0.attribute if a.name == "group"), 1)
        cout = W[0].shape[0]
        grouped = x.kind != "shared" or g != 1  # else one Conv with the weights stacked
        if grouped:
            x = self.to_concat(x, 1)
        self.counts["convs_grouped" if grouped else "convs_stacked"] += 1
        group = self.M * g if grouped else 1
        bias = np.concatenate(B if B is not None else [np.zeros(cout, dtype=W[0].dtype)] * self.M)
        w = self.init(f"{ins[1].src}/stacked", np.concatenate(W, axis=0))
        b = self.init(f"{(ins[2].src if B is not None else ins[1].src + '_bias')}/stacked", bias)
        (out,) = self.emit_like(n0, [x.name, w, b], group=int(group))
        return [_St("concat", out, axis=1, block=cout, shape=self.out_shape(n0))]

    def h_batchnorm(self, n0, ins):
        if sum(1 for o in n0.output if o) > 1 or any(a.name == "training_mode" and a.i for a in n0.attribute):
            raise Refused(f"BatchNormalization node '{n0.name}' in training mode")
        params = [self._weights(n0, s, "a parameter") for s in ins[1:5]]
        x = self.to_concat(ins[0], 1)
        names = [self.init(f"{s.src}/stacked", np.concatenate(p)) for s, p in zip(ins[1:5], params, strict=True)]
        (out,) = self.emit_like(n0, [x.name] + names)[:1]
        self.counts["stacked"] += 1
        return [_St("concat", out, axis=1, block=x.block, shape=self.out_shape(n0) or x.shape)]

    def h_pool(self, n0, ins):
        if sum(1 for o in n0.output if o) > 1:
            raise Refused(f"{n0.op_type} node '{n0.name}': the indices output is used")
        x = self.to_concat(ins[0], 1)
        (out,) = self.emit_like(n0, [x.name])[:1]
        return [_St("concat", out, axis=1, block=x.block, shape=self.out_shape(n0))]

    def h_flatten(self, n0, ins):
        x = ins[0]
        r = x.rank
        axis = next((a.i for a in n0.attribute if a.name == "axis"), 1)
        if r is None or (axis % r if axis < 0 else axis) != 1:
            raise Refused(f"Flatten node '{n0.name}': only axis 1 on a value of known rank is fused")
        shape = self.out_shape(n0)
        if shape is None:  # [d0, prod(d1..)] whatever shape inference could not say
            shape = (x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64)) if _static(x.shape[1:]) else None)
        if x.kind == "concat" and x.axis == 1 and _static(x.shape[2:]):
            (out,) = self.emit_like(n0, [x.name])
            return [_St("concat", out, axis=1, block=x.block * int(np.prod(x.shape[2:], dtype=np.int64)), shape=shape)]
        xb = self.to_batched(x)
        (out,) = self.emit("Reshape", [xb.name, self.small([0, 0, -1])], n0.output[0])
        return [_St("batched", out, shape=shape)]

    def h_softmax(self, n0, ins):
        x = ins[0]
        r = _rank(n0, x)
        axis = next((a.i for a in n0.attribute if a.name == "axis"), -1) % r
        if x.kind == "concat" and x.axis != axis:
            (out,) = self.emit_like(n0, [x.name])
            return [_St("concat", out, axis=x.axis, block=x.block, shape=x.shape)]
        xb = self.to_batched(x)
        return self.as_batched(n0, [xb.name], axis=axis + 1, shape=x.shape)

    def h_reduce(self, n0, ins):
        """A reduction on the ``batched`` layout over the same axes shifted by one (the member
        axis 0 is never reduced); "all axes" becomes axes ``1..r``."""
        x = ins[0]
        r = _rank(n0, x)
        att = {a.name: a for a in n0.attribute}
        axes = _axes_of(n0, ins, att) or []
        if not axes:
            if "noop_with_empty_axes" in att and att["noop_with_empty_axes"].i:
                raise Refused(f"{n0.op_type} node '{n0.name}': noop_with_empty_axes")
            axes = list(range(r))
        axes = sorted({a % r for a in axes})
        keep = att["keepdims"].i if "keepdims" in att else 1
        shape = self.out_shape(n0)
        if shape is None and x.shape is not None:
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if keep else tuple(d for i, d in enumerate(x.shape) if i not in axes)
        xb = self.to_batched(x)
        shifted = [a + 1 for a in axes]
        opset = next((o.version for o in self.models[0].opset_import if o.domain in ("", "ai.onnx")), 1)
        axes_input = len(n0.input) > 1 and n0.input[1] or len(onnx.defs.get_schema(n0.op_type, opset, "").inputs) > 1
        if axes_input:
            return self.as_batched(n0, [xb.name, self.small(shifted)], drop=("axes",), shape=shape)
        return self.as_batched(n0, [xb.name], axes=shifted, shape=shape)

    def h_slice(self, n0, ins):
        """``Slice`` (opset >= 10) on the ``batched`` layout: the same starts/ends/steps (one
        value for all members), axes shifted past the member axis."""
        x = ins[0]
        r = _rank(n0, x, len(n0.input) >= 3)
        names = self._shared_rest(n0, [ins[1], ins[2]] + ([ins[4]] if len(ins) > 4 else []))
        if len(ins) > 3 and ins[3] is not None:
            if ins[3].kind != "const" or not ins[3].identical:
                raise Refused(f"Slice node '{n0.name}': the axes are not one constant")
            axes = [int(v) for v in ins[3].arrays[0].reshape(-1)]
        else:
            starts = ins[1]
            if starts.shape is None or len(starts.shape) != 1 or not isinstance(starts.shape[0], int):
                raise Refused(f"Slice node '{n0.name}': number of sliced axes unknown")
            axes = list(range(starts.shape[0]))
        # starts, ends and axes share one index type (int32 from tf2onnx, int64 mostly)
        typed = next((st.arrays[0].dtype for st in (ins[3] if len(ins) > 3 else None, ins[1], ins[2]) if st is not None and st.kind == "const"), None)
        if typed is None:
            raise Refused(f"Slice node '{n0.name}': index type of the computed starts unknown")
        xb = self.to_batched(x)
        inputs = [xb.name, names[0], names[1], self.small([a % r + 1 for a in axes], dtype=typed)] + names[2:]
        return self.as_batched(n0, inputs)

    def h_squeeze(self, n0, ins):
        """``Squeeze`` / ``Unsqueeze`` on the ``batched`` layout, axes shifted past the member
        axis (negative axes first resolved against the member's rank)."""
        x = ins[0]
        r = _rank(n0, x)
        att = {a.name: a for a in n0.attribute}
        axes = _axes_of(n0, ins, att)
        xb = self.to_batched(x)
        if axes is None:  # Squeeze of every 1-dim: the member axis (M >= 2) is never one
            return self.as_batched(n0, [xb.name])
        rank = r + len(axes) if n0.op_type == "Unsqueeze" else r
        shifted = sorted(a % rank + 1 for a in axes)
        if len(n0.input) > 1 and n0.input[1]:
            return self.as_batched(n0, [xb.name, self.small(shifted)])
        return self.as_batched(n0, [xb.name], axes=shifted)

    def h_expand(self, n0, ins):
        """``Expand`` on the ``batched`` layout: the target gets ``M`` in front (and 1s where it
        is shorter than the value); a value of lower rank than the target is unsqueezed after
        the member axis first."""
        x, s = ins[0], ins[1]
        r = _rank(n0, x, s is not None)
        if s.kind == "const" and s.identical:
            L = int(s.arrays[0].size)
        elif s.kind == "shared" and s.shape is not None and len(s.shape) == 1 and isinstance(s.shape[0], int):
            L = s.shape[0]
        else:
            raise Refused(f"Expand node '{n0.name}': the target shape differs between members")
        xb = self.to_batched(x)
        name = xb.name
        if L > r:  # [M, d...] -> [M, 1.., d...] so that broadcasting lines up after the member axis
            (name,) = self.emit("Unsqueeze", [name, self.small(list(range(1, L - r + 1)))], f"{n0.output[0]}/aligned")
        pad = [self.M] + [1] * max(0, r - L)
        if s.kind == "const":
            target = self.small(pad + [int(v) for v in s.arrays[0].reshape(-1)])
        else:
            (target,) = self.emit("Concat", [self.small(pad), s.name], f"{n0.output[0]}/target", attrs=[helper.make_attribute("axis", 0)])
        return self.as_batched(n0, [name, target])

    def h_transpose(self, n0, ins):
        x = ins[0]
        r = _rank(n0, x)
        perm = next((list(a.ints) for a in n0.attribute if a.name == "perm"), list(range(r))[::-1])
        shape = self.out_shape(n0)
        if x.kind == "concat":
            (out,) = self.emit_like(n0, [x.name])
            return [_St("concat", out, axis=perm.index(x.axis), block=x.block, shape=shape)]
        return self.as_batched(n0, [x.name], perm=[0] + [p + 1 for p in perm], shape=shape)

    def h_shape(self, n0, ins):
        """The members' shape (equal for all: same architecture, same inputs) from the stacked
        value's: the stacked axis divided by M (``concat``) or the member axis dropped
        (``batched``); a ``shared`` result, so what is computed from it runs once."""
        x = ins[0]
        r = _rank(n0, x, x.stacked)
        base = n0.output[0]
        (full,) = self.emit("Shape", [x.name], f"{base}/stacked")
        if x.kind == "concat":
            div = np.ones(r, dtype=np.int64)
            div[x.axis] = self.M
            (shape,) = self.emit("Div", [full, self.small(div)], f"{base}/member")
        else:
            (shape,) = self.emit("Slice", [full, self.small([1]), self.small([r + 1]), self.small([0])], f"{base}/member")
        att = {a.name: a.i for a in n0.attribute}
        if "start" in att or "end" in att:  # Shape-15 clamps like Slice does
            (shape,) = self.emit("Slice", [shape, self.small([att.get("start", 0)]), self.small([att.get("end", r)]), self.small([0])], base)
        return [_St("shared", shape, shape=self.out_shape(n0))]

    def h_reshape(self, n0, ins):
        x, s = ins[0], ins[1]
        if s is not None and s.kind == "shared":
            # a target computed at run time (e.g. from Shape): the same for every member
            if any(a.name == "allowzero" and a.i for a in n0.attribute):
                raise Refused(f"Reshape node '{n0.name}': allowzero with a computed target")
            xb = self.to_batched(x)
            (target,) = self.emit("Concat", [self.small([self.M]), s.name], f"{n0.output[0]}/target", attrs=[helper.make_attribute("axis", 0)])
            (out,) = self.emit_like(n0, [xb.name, target])
            shape = self.out_shape(n0)
            if shape is None and s.shape is not None and len(s.shape) == 1 and isinstance(s.shape[0], int):
                shape = (None,) * s.shape[0]  # the rank is the target's length
            return [_St("batched", out, shape=shape)]
        if s is None or s.kind != "const" or not s.identical:
            raise Refused(f"Reshape node '{n0.name}': the target shape is not one constant")
        target = [int(v) for v in s.arrays[0].reshape(-1)]
        if any(a.name == "allowzero" and a.i for a in n0.attribute) and 0 in target:
            raise Refused(f"Reshape node '{n0.name}': allowzero with a zero dim")
        xb = self.to_batched(x)
        return self.as_batched(
            n0, [xb.name, self.small([self.M] + target)], shape=self.out_shape(n0) or tuple(target)
        )

    def as_batched(self, n0, inputs: list[str], *, shape=None, **overrides) -> list[_St]:
        """``n0`` emitted like itself on ``inputs``: its one output, ``batched`` (of ``shape``, else
        the inferred one)."""
        (out,) = self.emit_like(n0, inputs, **overrides)
        return [_St("batched", out, shape=shape if shape is not None else self.out_shape(n0))]

    def _stacked_matmul(self, a: _St, Ws: list[np.ndarray], cs: list[np.ndarray] | None, base: str, shape) -> _St:
        ab = self.to_batched(a)
        r = ab.rank
        stack = np.stack(Ws).reshape((self.M,) + (1,) * (r - 2) + Ws[0].shape)
        (mm,) = self.emit("MatMul", [ab.name, self.init(f"{base}/stacked", stack)], f"{base}/batched")
        self.counts["batched_matmuls"] += 1
        if cs is not None:
            bias = np.stack(cs).reshape((self.M,) + (1,) * (r - 1) + cs[0].shape)
            (mm,) = self.emit("Add", [mm, self.init(f"{base}/bias_stacked", bias)], f"{base}/batched_bias")
        return _St("batched", mm, shape=shape)

    def _block_diagonal(self, Ws: list[np.ndarray]) -> np.ndarray:
        fan_in, fan_out = Ws[0].shape
        out = np.zeros((self.M * fan_in, self.M * fan_out), dtype=Ws[0].dtype)
        for j, w in enumerate(Ws):
            out[j * fan_in : (j + 1) * fan_in, j * fan_out : (j + 1) * fan_out] = w
        return out

    def _small_block_operand(self, A: _St, fan_in: int, fan_out: int) -> _St:
        """A ``batched`` 2-D operand as ``concat`` on axis 1 when the block diagonal is small
        (one kernel instead of one per member or a batched MatMul)."""
        if A.kind == "batched" and A.rank == 2 and (self.M * fan_in) * (self.M * fan_out) <= BLOCK_DIAGONAL_MAX:
            if not isinstance(A.shape[1], int):  # [N, F] x [F, O]: F is the weight's fan-in
                A = _St("batched", A.name, shape=(A.shape[0], fan_in))
            try:
                return self.to_concat(A, 1)
            except Refused:
                return A
        return A

    def h_gemm(self, n0, ins):
        A = ins[0]
        att = {a.name: a for a in n0.attribute}
        if "transA" in att and att["transA"].i:
            raise Refused(f"Gemm node '{n0.name}' with transA")
        Bs = self._weights(n0, ins[1], "the weight")
        Cs = self._weights(n0, ins[2] if len(ins) > 2 else None, "the bias")
        alpha = att["alpha"].f if "alpha" in att else 1.0
        beta = att["beta"].f if "beta" in att else 1.0
        transB = bool(att["transB"].i) if "transB" in att else False
        dtype = Bs[0].dtype
        Ws = [((b.T if transB else b).astype(np.float64) * alpha).astype(dtype) if alpha != 1.0 else np.ascontiguousarray(b.T if transB else b) for b in Bs]
        fan_out = Ws[0].shape[1]
        cs = None
        if Cs is not None:
            cs = []
            for c in Cs:
                if c.size not in (1, fan_out) or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
                    raise Refused(f"Gemm node '{n0.name}': bias of shape {list(c.shape)} is not per output")
                cs.append(np.broadcast_to((c.astype(np.float64) * beta).astype(dtype) if beta != 1.0 else c, (1, fan_out)).reshape(fan_out).copy())
        return self._dense(n0, ins, A, Ws, cs, (ins[1].src, ins[2].src if cs is not None else None))

    def _dense(self, n0, ins, A: _St, Ws: list[np.ndarray], cs, srcs):
        """``A`` times per-member weights ``Ws`` ``[F, O]`` (plus biases ``cs``: Gemm only):
        stacked weights on a shared input, a block diagonal on a small ``concat`` one, else per
        member (``wide="split"``) or one batched MatMul.  ``srcs``: the weight's and bias's names."""
        fan_in, fan_out = Ws[0].shape
        gemm = n0.op_type == "Gemm"
        A = self._small_block_operand(A, fan_in, fan_out)
        shape = self.out_shape(n0)
        if shape is None and A.rank is not None and A.rank >= 2:
            shape = tuple(A.shape[:-1]) + (fan_out,)
        if A.kind == "shared" and A.rank is None and not gemm:
            raise Refused(f"MatMul node '{n0.name}': rank unknown")
        block = (
            A.kind == "concat"
            and A.rank == 2
            and A.axis == 1
            and (self.M * fan_in) * (self.M * fan_out) <= BLOCK_DIAGONAL_MAX
        )
        if A.kind == "shared" or block:
            how = "block_diagonal" if block else "stacked"
            self.counts[f"{'gemms' if gemm else 'matmuls'}_{how}"] += 1
            w = self._block_diagonal(Ws) if block else np.concatenate(Ws, axis=1)
            inputs = [A.name, self.init(f"{srcs[0]}/stacked", w)]
            if cs is not None:
                inputs.append(self.init(f"{srcs[1]}/stacked", np.concatenate(cs)))
            (out,) = self.emit("Gemm", inputs, n0.output[0]) if gemm else self.emit_like(n0, inputs)
            return [
                _St(
                    "concat",
                    out,
                    axis=1 if block or gemm else A.rank - 1,
                    block=fan_out,
                    shape=shape,
                )
            ]
        if not gemm and (A.rank is None or A.rank < 2):
            raise Refused(f"MatMul node '{n0.name}': stacked operand of rank < 2")
        if self.wide == "split":
            self.counts["wide_per_member"] += 1
            return self.h_per_member(n0, ins)
        return [self._stacked_matmul(A, Ws, cs, srcs[0], shape)]

    def h_matmul(self, n0, ins):
        A, B = ins
        if B.kind == "const":
            if B.arrays[0].ndim != 2:
                raise Refused(f"MatMul node '{n0.name}': weight of rank {B.arrays[0].ndim}")
            if A.kind == "const":
                raise Refused(f"MatMul node '{n0.name}': left operand is a per-member constant")
            return self._dense(n0, ins, A, B.arrays, None, (B.src,))
        shape = self.out_shape(n0)
        if A.kind == "const" or not (A.stacked or B.stacked):
            raise Refused(f"MatMul node '{n0.name}': per-member constant on the left")
        if (A.rank or 0) < 2 or (B.rank or 0) < 2:
            raise Refused(f"MatMul node '{n0.name}': operands of rank < 2")
        r = max(A.rank, B.rank)
        names = [self.operand(n0, s, _St("batched"), r) for s in (A, B)]
        return self.as_batched(n0, names, shape=shape)

    def handler(self, n0):
        op = n0.op_type
        if n0.domain not in ("", "ai.onnx"):
            return None
        if op in UNARY:
            return self.h_unary
        if op in ELEMENTWISE:
            return self.h_elementwise
        return {
            "Conv": self.h_conv,
            "BatchNormalization": self.h_batchnorm,
            "Flatten": self.h_flatten,
            "Gemm": self.h_gemm,
            "MatMul": self.h_matmul,
            "Transpose": self.h_transpose,
            "Reshape": self.h_reshape,
            "Shape": self.h_shape,
            "Expand": self.h_expand,
            "Squeeze": self.h_squeeze,
            "Slice": self.h_slice,
            "Unsqueeze": self.h_squeeze,
            **{p: self.h_pool for p in POOLS},
            **{s: self.h_softmax for s in SOFTMAXES},
            **{r: self.h_reduce for r in REDUCES},
        }.get(op)

    # --- the walk -----------------------------------------------------------------------------
    def run(self) -> Part:
        g0 = self.models[0].graph
        for k, n0 in enumerate(g0.node):
            ins = [self.read(k, i) for i in range(len(n0.input))]
            if all(s is None or s.kind == "shared" or (s.kind == "const" and s.identical) for s in ins):
                outs = self.h_shared(n0, ins)
            elif all(s is None or s.kind == "const" for s in ins) and (folded := self.fold_per_member(n0, ins)) is not None:
                outs = folded
            elif any(s is not None and s.kind == "split" for s in ins):
                outs = self.h_per_member(n0, ins)
            else:
                outs = self.stacked_or_per_member(n0, ins)
            self.state.update(
                {o: st for o, st in zip(n0.output, outs, strict=False) if o and st is not None}
            )
        part = Part()
        for j, m in enumerate(self.members):
            outputs = self.models[j].graph.output
            for local in m.outputs:
                p = [o.name for o in outputs].index(local)
                name0 = g0.output[p].name
                target = m.prefix + local
                st = self.state.get(name0)
                if st is None and name0 in self.inits_by[0]:
                    st = _St("const", arrays=[numpy_helper.to_array(self.inits_by[i][self.models[i].graph.output[p].name]) for i in range(self.M)], src=name0)
                self.extract(st, j, target)
                part.outputs[(m.index, local)] = target
                vi = copy.deepcopy(outputs[p])
                vi.name = target
                part.output_info[target] = vi
        part.nodes, part.initializers = self.nodes, self.inits
        return part

    def fold_per_member(self, n0, ins) -> list[_St] | None:
        """``n0`` on per-member constants only (e.g. a Reshape of each member's bias), computed
        in numpy for each member: its outputs stay per-member constants that later stacked ops
        consume.  None where the node cannot be folded (then it runs per member)."""
        from ..simplify.fold import BLOAT_RATIO, NONDETERMINISTIC, evaluate_node

        if n0.domain not in ("", "ai.onnx") or n0.op_type in NONDETERMINISTIC or any(True for _ in subgraphs(n0)):
            return None
        per = []
        try:
            for j in range(self.M):
                vals = evaluate_node(n0, [None if s is None else s.arrays[j] for s in ins], self.models[0].opset_import)
                if len(vals) != len(n0.output):
                    return None
                per.append(vals)
        except Exception as exc:  # an op the reference evaluator cannot run
            log.debug("not folding %s: %s", n0.name or n0.op_type, exc)
            return None
        in_bytes = sum(a.nbytes for s in ins if s is not None for a in s.arrays)
        out_bytes = sum(v.nbytes for vals in per for v in vals)
        if out_bytes > 2**20 and out_bytes > BLOAT_RATIO * max(in_bytes, 1):
            return None  # a ConstantOfShape/Expand: storing M copies would bloat the file
        self.counts["folded_per_member"] += 1
        consts = [[np.asarray(vals[i]) for vals in per] for i in range(len(n0.output))]
        return [
            _St("const", arrays=a, src=o, shape=a[0].shape) if o else None
            for o, a in zip(n0.output, consts, strict=True)
        ]

    def stacked_or_per_member(self, n0, ins):
        """The stacked form of ``n0``; where there is none, undo what was tried and run it per member."""
        mark = (len(self.nodes), len(self.inits), dict(self._cache), Counter(self.counts))
        try:
            h = self.handler(n0)
            if h is None:
                raise Refused(f"{n0.op_type} node '{n0.name or n0.output[0]}' has no stacked form")
            outs = h(n0, ins)
            if not any(st is not None and st.kind == "split" for st in outs):
                self.counts["stacked_nodes"] += 1
            return outs
        except Refused as exc:
            del self.nodes[mark[0] :]
            del self.inits[mark[1] :]
            self._cache, self.counts = mark[2], mark[3]
            self.notes.append(f"{exc}: runs per member from there on")
            return self.h_per_member(n0, ins)

    def extract(self, st: _St, j: int, target: str) -> None:
        if st.kind == "const":
            self.inits.append(numpy_helper.from_array(st.arrays[j], target))
        elif st.kind in ("shared", "split"):
            src = st.name if st.kind == "shared" else st.names[j]
            self.nodes.append(helper.make_node("Identity", [src], [target], name=self.fresh(f"member{j}/Identity")))
        elif st.kind == "concat":
            ins = [st.name, self.small([j * st.block]), self.small([(j + 1) * st.block]), self.small([st.axis])]
            self.nodes.append(helper.make_node("Slice", ins, [target], name=self.fresh(f"member{j}/Slice")))
        else:
            ins = [st.name, self.small(j)]
            self.nodes.append(helper.make_node("Gather", ins, [target], name=self.fresh(f"member{j}/Gather"), axis=0))


def fuse_group(members: list[Member], prefix: str, *, wide: str = "split") -> tuple[Part, dict]:
    """One Part computing every member's selected outputs; raises ``Refused`` with a reason.

    ``wide``: what a Gemm/MatMul on stacked inputs too big for a block diagonal becomes:
    ``split`` (per-member kernels from there on: fastest on ORT's CPU kernels) or ``batched``
    (one batched MatMul: fewer kernel launches, for GPUs).
    """
    if wide not in ("split", "batched"):
        raise ValueError(f"wide must be 'split' or 'batched', not {wide!r}")
    f = _Fuser(members, prefix, wide)
    part = f.run()
    before = sum(len(m.model.graph.node) for m in members)
    report = {
        "members": [m.label for m in members],
        "nodes_before": before,
        "nodes_after": len(part.nodes),
        "counts": dict(sorted(f.counts.items())),
        "notes": f.notes,
    }
    return part, report
