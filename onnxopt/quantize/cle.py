"""The ``equalize`` pass: cross-layer equalization with bias absorption (Nagel et al., 2019).

A *pair* is two weighted layers (``layers.layer_of``: Conv with group 1, Gemm, MatMul with a
constant weight) where the first one's output reaches the second one's input A through
nothing but a bias ``Add`` (after a MatMul), ``BatchNormalization``, ``MaxPool`` and at most one
positive-homogeneous activation (Relu, LeakyRelu, PRelu; none is the identity): each
keeps ``f(x / s) = f(x) / s`` per channel for ``s > 0``.  Output channel ``i`` of the first
layer (weight, bias, the BN's mean and bias, the Add's bias) is divided by
``s_i = sqrt(r1_i / r2_i)`` and input channel ``i`` of the second one multiplied by it
(``equalize.cle_scales``), in sweeps over all pairs until the scales settle.

Bias absorption (with calibration data): where a pair is ``layer -> [Add] -> Relu|LeakyRelu
-> layer`` and the pre-activation of channel ``i`` stays above ``c_i > 0``
(``equalize.absorb_amounts``), ``c_i`` moves from the first bias into the second
(``W2 @ c``); a Conv second layer must not pad (zeros would not carry ``c``).

Non-applicable sites are skipped with the reason in the report: shared weights, grouped
Conv, a non-homogeneous activation (Sigmoid, Gelu, Clip ...) between two layers, an output
read by several nodes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..core.passes import Context, Pass, PassResult
from .bias_correction import weight_shift
from .equalize import absorb_amounts, cle_scales
from .layers import Layer, WeightTable, layer_of

__all__ = ["EqualizePass", "Pair", "find_pairs", "equalize_pairs", "absorb_biases"]

log = logging.getLogger(__name__)

HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu")
NOT_HOMOGENEOUS = (
    "Sigmoid",
    "Tanh",
    "Gelu",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Softsign",
    "HardSigmoid",
    "HardSwish",
    "Clip",
    "Erf",
    "Mish",
    "Exp",
    "Log",
    "Softmax",
)
MAX_SWEEPS = 8


@dataclass
class Pair:
    a: Layer
    b: Layer
    add_bias: str = ""  # bias of an Add after a MatMul first layer
    bns: list = field(default_factory=list)  # BatchNormalization nodes in between
    act: onnx.NodeProto | None = None
    pre_act: str = ""  # the tensor the activation reads
    direct: bool = True  # only [Add] and the activation in between (bias absorption allowed)

    @property
    def label(self) -> str:
        return f"{self.a.node.name} -> {self.b.node.name}"


def _private_bias(n: onnx.NodeProto, table: WeightTable, channels: int) -> str:
    const = [i for i in n.input if i in table.inits]
    return const[0] if len(const) == 1 and table.per_channel(const[0], channels) else ""


def _bn_ok(n: onnx.NodeProto, table: WeightTable) -> bool:
    return len(n.output) == 1 and all(x in table.inits and table.private(x) for x in n.input[1:5])


def _walk(a: Layer, table: WeightTable, outputs: set[str]) -> tuple[Pair | None, str]:
    """From ``a``'s output to the next weighted layer; (pair, '') or (None, why or '')."""
    channels = table.inits[a.weight].dims[a.out_axis]
    pair = Pair(a, a)
    t = a.node.output[0]
    while True:
        readers = table.readers.get(t, [])
        if t in outputs or not readers:
            return None, ""
        if len(readers) > 1:
            weighted = any(layer_of(r, table)[0] is not None for r in readers)
            return None, (f"{a.node.name}: output '{t}' read by {len(readers)} nodes" if weighted else "")
        n = readers[0]
        op = n.op_type
        if op == "Add" and a.node.op_type == "MatMul" and not pair.add_bias and pair.act is None and not pair.bns and _private_bias(n, table, channels):
            pair.add_bias = _private_bias(n, table, channels)
        elif op == "BatchNormalization" and pair.act is None and _bn_ok(n, table):
            pair.bns.append(n)
            pair.direct = False
        elif op in HOMOGENEOUS and pair.act is None and (op != "PRelu" or n.input[1] in table.inits):
            pair.act, pair.pre_act = n, t
        elif op == "MaxPool" and len(n.output) == 1:
            pair.direct = False
        elif op in ("Conv", "Gemm", "MatMul") and n.input[0] == t:
            b, why = layer_of(n, table)
            if b is None:
                return None, f"{a.node.name} -> {n.name}: {why}"
            if table.inits[b.weight].dims[b.in_axis] != channels:
                return None, f"{a.node.name} -> {n.name}: {channels} output channels vs {table.inits[b.weight].dims[b.in_axis]} input channels"
            pair.b = b
            return pair, ""
        else:
            return None, f"{a.node.name} -> {op} '{n.name}': not positive-homogeneous (f(x/s) != f(x)/s)" if op in NOT_HOMOGENEOUS else ""
        t = n.output[0]


def find_pairs(model: onnx.ModelProto) -> tuple[list[Pair], list[str], WeightTable]:
    """The equalizable pairs of ``model``'s main graph and one line per skipped site."""
    table = WeightTable(model.graph)
    outputs = {o.name for o in model.graph.output}
    pairs, skipped = [], []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        a, why = layer_of(n, table)
        if a is None:
            if "shared" in why or "grouped" in why:
                skipped.append(f"{n.name}: skipped: {why}")
            continue
        pair, why = _walk(a, table, outputs)
        if pair is not None:
            pairs.append(pair)
        elif why:
            skipped.append(f"{why}: skipped")
    return pairs, skipped, table


def _scale_first(pair: Pair, table: WeightTable, factor: np.ndarray) -> None:
    pair.a.scale_out(table, factor)
    names = ([pair.add_bias] if pair.add_bias else []) + [x for bn in pair.bns for x in (bn.input[2], bn.input[3])]
    for name in names:  # Add bias; BN bias and mean
        table.channelwise(name, lambda v: v * factor)


def equalize_pairs(pairs: list[Pair], table: WeightTable, *, tol: float = 1e-4) -> tuple[int, dict[str, float]]:
    """Sweeps of ``cle_scales`` over ``pairs`` until every ``|log s| < tol``; returns the
    sweeps done and, per pair, the ratio of its ranges' spread (max r / min r, both layers)
    before and after."""
    sweeps = 0
    for sweeps in range(1, MAX_SWEEPS + 1):  # noqa: B007 - the count is returned
        worst = 0.0
        for p in pairs:
            s = cle_scales(p.a.out_range(table), p.b.in_range(table)).astype(np.float64)
            worst = max(worst, float(np.abs(np.log(s)).max()))
            _scale_first(p, table, 1.0 / s)
            p.b.scale_in(table, s)
        if worst < tol:
            break
    return sweeps, {p.label: _spread(p, table) for p in pairs}


def _spread(p: Pair, table: WeightTable) -> float:
    r = np.concatenate([p.a.out_range(table), p.b.in_range(table)]).astype(np.float64)
    r = r[r > 1e-30]
    return float(r.max() / r.min()) if r.size else 1.0


def _bias_target(layer: Layer, table: WeightTable) -> tuple[str, str]:
    """(name of a private bias of ``layer`` to write, why not) - created for Conv / Gemm."""
    n_out = table.inits[layer.weight].dims[layer.out_axis]
    if layer.bias:
        return layer.bias, ""
    if layer.node.op_type in ("Conv", "Gemm"):
        name = table.add(f"{layer.node.name or layer.weight}/bias", np.zeros(n_out, np.float32))
        while len(layer.node.input) < 3:
            layer.node.input.append("")
        layer.node.input[2] = name
        layer.bias = name
        return name, ""
    readers = table.readers.get(layer.node.output[0], [])
    b = _private_bias(readers[0], table, n_out) if len(readers) == 1 and readers[0].op_type == "Add" else ""
    return (b, "") if b else ("", "no bias to absorb into")


def _pads_zero(node: onnx.NodeProto) -> bool:
    return not any((a.name == "pads" and any(a.ints)) or (a.name == "auto_pad" and a.s not in (b"", b"NOTSET", b"VALID")) for a in node.attribute)


def absorb_biases(pairs: list[Pair], model: onnx.ModelProto, table: WeightTable, dataset, *, provider: str = "cpu", limit: int = 256) -> tuple[int, list[str]]:
    """Bias absorption on the direct Relu/LeakyRelu pairs; returns (pairs changed, notes)."""
    from .collect import collect_channel_stats

    todo, notes = [], []
    for p in pairs:
        if not p.direct or p.act is None or p.act.op_type not in ("Relu", "LeakyRelu"):
            continue
        if p.b.node.op_type == "Conv" and not _pads_zero(p.b.node):
            notes.append(f"{p.label}: bias absorption skipped: {p.b.node.name} pads with zeros")
            continue
        if p.a.node.op_type == "MatMul" and not p.add_bias:
            notes.append(f"{p.label}: bias absorption skipped: {p.a.node.name} has no bias")
            continue
        todo.append(p)
    if not todo:
        return 0, notes
    stats = collect_channel_stats(model, dataset, {p.pre_act: 1 if p.a.node.op_type == "Conv" else -1 for p in todo}, provider=provider, limit=limit)
    done = 0
    for p in todo:
        st = stats[p.pre_act]
        c = absorb_amounts(st.lo, st.mean, st.std).astype(np.float64)
        if not (c > 0).any():
            continue
        b2, why = _bias_target(p.b, table)
        if not b2:
            notes.append(f"{p.label}: bias absorption skipped: {p.b.node.name}: {why}")
            continue
        b1 = p.add_bias or _bias_target(p.a, table)[0]
        delta = weight_shift(p.b.node.op_type, table.array(p.b.weight), c, trans_b=p.b.in_axis == 1)  # W2 @ c
        table.channelwise(b1, lambda v, c=c: v - c)
        table.channelwise(b2, lambda v, delta=delta: v + delta)
        done += 1
        notes.append(f"{p.label}: {int((c > 0).sum())} channel(s) of bias absorbed")
    return done, notes


@dataclass
class _EqualizeConfig:
    absorb_bias: bool = True  # with calibration data in the context
    limit: int = 256  # calibration samples for bias absorption

    def check(self):
        return "limit must be positive" if self.limit <= 0 else None


class EqualizePass(Pass):
    """Cross-layer equalization of Conv/Gemm/MatMul pairs joined by Relu/LeakyRelu/identity (exact in FP32).

    Bias absorption runs when the context has calibration data (``absorb_bias``); pairs
    that cannot be equalized are listed with their reason.
    """

    key = "equalize"
    needs = ()
    exact = True
    idempotent = False
    Config = _EqualizeConfig

    def call(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        pairs, skipped, table = find_pairs(model)
        if not pairs:
            return self.result(
                model,
                False,
                counts={"pairs": 0, "skipped": len(skipped)},
                notes=skipped or ["no pair of weighted layers joined by a positive-homogeneous activation"],
            )
        before = {p.label: _spread(p, table) for p in pairs}
        sweeps, after = equalize_pairs(pairs, table)
        absorb = self.config.absorb_bias and ctx.data is not None
        absorbed, notes = absorb_biases(pairs, model, table, ctx.inputs_for(model), provider=ctx.provider, limit=self.config.limit) if absorb else (0, [])
        details = {
            "pairs": [{"pair": k, "range_spread_before": round(before[k], 4), "range_spread_after": round(after[k], 4)} for k in before],
            "sweeps": sweeps,
        }
        lines = [f"{k}: channel range spread {before[k]:.3g} -> {after[k]:.3g}" for k in before]
        return self.result(
            model,
            True,
            counts={"pairs": len(pairs), "bias_absorbed": absorbed, "skipped": len(skipped), "sweeps": sweeps},
            notes=lines + notes + skipped,
            details=details,
        )
