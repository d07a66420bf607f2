"""Leaving nodes of a static INT8 model (QDQ or QOperator) in float without running the
quantizer again: the model ONNX Runtime's quantizer would write with those nodes in
``nodes_to_exclude``, emulated on the quantized model by graph surgery.

- Each excluded node reads its weights in float instead of through their
  DequantizeLinear: the reference's initializer of the same name (the DequantizeLinear's
  output, or its input without ``_quantized``), else the reference weight of the same shape
  that, scaled per output channel, matches the dequantized weight within ``WEIGHT_FIT``
  (relative L2; a BatchNormalization folded into the weight rescales its channels) -- if
  none does, the weight stays quantized and the node's entry says so.
- A QuantizeLinear -> DequantizeLinear pair on one of its input or output tensors is
  removed (its readers read the float tensor) only when no other *quantized* node needs
  it: the quantizer quantizes a tensor when its producer or any of its readers is
  quantized.  A node is quantized when it is of a type the quantizer handles and reads a
  DequantizeLinear output.
- A QOperator node (``QLINEAR``) becomes DequantizeLinear -> the float op ->
  QuantizeLinear, as ONNX Runtime's QOperator quantizer writes a node it leaves out.

Used by the budget search to rank nodes (``CandidateBuilder.emulator``: one graph edit per
node instead of one quantizer run) and by ``diagnose`` to rank a model it did not build.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import FLOAT_TYPES, consumers, initializer_map, producers, unique_name
from ..io import is_lazy_tensor, tensor_array
from .bias_correction import dequantized

__all__ = [
    "FloatReference", "leave_in_float", "restore_float", "activation_params", "node_key", "quantized_nodes", "WEIGHT_FIT", "QLINEAR", "SHARED_OUTPUT",
    "keep_outputs_float",
    "FIXED_RANGE",
]

WEIGHT_FIT = 0.05  # relative L2 of a per-channel-scaled reference weight to the dequantized one
# ops whose quantized outputs take input 0's scale and zero point (ONNX Runtime's QDQ
# quantizer: QDQDirect8BitOp and the ops built on it, Gather, Pad, Split)
SHARED_OUTPUT = frozenset(
    {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "AveragePool", "Slice", "TopK", "MaxPool", "Resize", "Pad", "Split", "Gather", "GatherElements"}
)
FIXED_RANGE = {"Softmax": (0.0, 1.0)}  # a quantized Softmax's output range (``adjust_tensor_ranges``)
# QOperator node -> (the float op it stands for, index of its INT32 bias, of its output scale)
QLINEAR = {"QLinearConv": ("Conv", 8, 6), "QLinearMatMul": ("MatMul", 0, 6), "QGemm": ("Gemm", 6, 7)}


class FloatReference:
    """What the reference model holds in float: the weight behind a weight
    DequantizeLinear (``find``, module docstring), and which op produced each tensor (a
    Relu the quantizer folded into a QuantizeLinear's range)."""

    def __init__(self, reference: onnx.ModelProto):
        self.nodes = {o: n for n in reference.graph.node for o in n.output}
        self.by_name = {n.name: n for n in reference.graph.node}
        self.ops = {o: n.op_type for o, n in self.nodes.items()}
        self.inits = initializer_map(reference.graph)
        # exporters (paddle2onnx) keep weights in Constant nodes
        consts = [n for n in reference.graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output]
        self.inits.update({n.output[0]: a.t for n in consts for a in n.attribute if a.name == "value"})
        self.by_shape: dict[tuple, list[str]] = {}
        for name, t in self.inits.items():
            if t.data_type in FLOAT_TYPES and len(t.dims) >= 2:
                self.by_shape.setdefault(tuple(t.dims), []).append(name)

    def _named(self, dq: onnx.NodeProto) -> onnx.TensorProto | None:
        """The reference tensor named like ``dq``'s output or its quantized input."""
        q_name = dq.input[0]
        for name in (dq.output[0], q_name[: -len("_quantized")] if q_name.endswith("_quantized") else None):
            if name and name in self.inits:
                return self.inits[name]
        return None

    def lazy(self, dq: onnx.NodeProto) -> onnx.TensorProto | None:
        """The reference's own FLOAT tensor behind ``dq`` when it waits in its file (a lazy
        base, ``io.is_lazy``): a copy of it names those bytes without reading them, where
        ``find``'s array would sit inline in the emulated model and be copied again by
        every session made from it (the encoder's bisection peaked there); else None."""
        t = self._named(dq)
        return t if t is not None and t.data_type == onnx.TensorProto.FLOAT and is_lazy_tensor(t) else None

    def find(self, dq: onnx.NodeProto, inits: dict) -> np.ndarray | None:
        """The float value of ``dq``'s output; None when the reference holds none that fits."""
        t = self._named(dq)
        if t is not None:
            return tensor_array(t).astype(np.float32)
        deq = dequantized(dq, inits)
        if deq is None or deq.ndim < 2 or inits[dq.input[0]].data_type == onnx.TensorProto.INT32:
            return None
        best, best_err = None, WEIGHT_FIT
        for name in self.by_shape.get(tuple(deq.shape), []):
            fitted, err = _fit_channels(tensor_array(self.inits[name]).astype(np.float32), deq)
            if err < best_err:
                best, best_err = fitted, err
        return best


def _fit_channels(w: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    """``w`` scaled per channel (axis 0, or the last axis) to fit ``target`` by least squares:
    (the scaled ``w``, relative L2 of the fit); the better axis wins."""
    norm = float(np.linalg.norm(target)) or 1.0
    best = (w, float(np.linalg.norm(w - target)) / norm)
    for axis in (0, w.ndim - 1):
        other = tuple(i for i in range(w.ndim) if i != axis)
        den = np.sum(w * w, axis=other, keepdims=True)
        s = np.where(den > 0, np.sum(w * target, axis=other, keepdims=True) / np.where(den > 0, den, 1.0), 0.0)
        fitted = (w * s).astype(np.float32)
        err = float(np.linalg.norm(fitted - target)) / norm
        if err < best[1]:
            best = (fitted, err)
    return best


def node_key(node: onnx.NodeProto) -> tuple:
    """A node's identity within its graph (protobuf wrappers are not stable objects)."""
    return tuple(node.output)


def quantized_nodes(graph: onnx.GraphProto, op_types: set[str]) -> set[tuple]:
    prod = producers(graph)
    qdq = {node_key(n) for n in graph.node if n.op_type in op_types and any(getattr(prod.get(x), "op_type", "") == "DequantizeLinear" for x in n.input if x)}
    return qdq | {node_key(n) for n in graph.node if n.op_type in QLINEAR}


def _float_weights(graph, nodes, weights: FloatReference, notes: dict, live=lambda n: False) -> None:
    """Each excluded node reads its constant inputs (weights, biases, scales) in float where
    they are found -- unless a quantized node (``live``) reads the same one: the quantizer
    then replaces the initializer for every reader; ``notes[node]``: float | quantized (one
    not found) | none (no constant behind a DequantizeLinear).  An INT32 bias not found keeps
    its dequantized value: its step (input scale x weight scale) is below the float rounding
    of the sums it joins."""
    prod, cons, inits = producers(graph), consumers(graph), initializer_map(graph)
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    for n in nodes:
        found, missing = 0, 0
        for i, x in enumerate(n.input):
            dq = prod.get(x)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            if any(live(c) for d in cons.get(dq.input[0], []) for c in cons.get(d.output[0], [])):
                continue  # shared with a quantized node: read quantized, as the quantizer leaves it
            name = unique_name(f"{x}_float", taken)
            ref = weights.lazy(dq)
            if ref is not None:
                graph.initializer.add().CopyFrom(ref)
                graph.initializer[-1].name = name
            else:
                w = weights.find(dq, inits)
                if w is None:
                    missing += inits[dq.input[0]].data_type != onnx.TensorProto.INT32
                    continue
                graph.initializer.append(numpy_helper.from_array(w, name))
            n.input[i] = name
            found += 1
        notes[n.name] = "quantized (no float copy in the reference)" if missing else ("float" if found else "none")


def _drop_pairs(graph, excluded: set[tuple], quantized: set[tuple], ref: FloatReference) -> None:
    """Remove the activation Q -> DQ pairs that only excluded nodes need: the
    DequantizeLinear becomes an Identity of the float tensor (its name, a graph output's
    too, stays) -- or the reference's Relu or Clip where the reference's tensor comes from
    one the candidate no longer has (ONNX Runtime's quantizer folds a Relu or Clip into the
    range of the pair after it, and keeps it when its input is not quantized)."""
    prod, cons = producers(graph), consumers(graph)
    have = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    for dq in graph.node:
        q = prod.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        src = prod.get(q.input[0])
        near = [n for n in [src, *cons.get(dq.output[0], [])] if n is not None]
        needers = [n for n in near if node_key(n) in quantized]
        if not needers or not any(node_key(n) in excluded for n in near) or not all(node_key(n) in excluded for n in needers):
            continue
        folded = ref.nodes.get(q.input[0]) if src is None or src.op_type != ref.ops.get(q.input[0]) else None
        del dq.attribute[:]
        if folded is not None and folded.op_type in ("Relu", "Clip"):
            dq.op_type, dq.domain = folded.op_type, folded.domain
            dq.input[:] = [q.input[0], *folded.input[1:]]
            dq.attribute.extend(folded.attribute)
            for x in folded.input[1:]:
                if x and x not in have and x in ref.inits:
                    graph.initializer.append(ref.inits[x])
                    have.add(x)
        else:
            dq.op_type, dq.domain = "Identity", ""
            dq.input[:] = [q.input[0]]


def activation_params(ranges: dict, activation_type: str = "uint8"):
    """``tensor -> (scale, zero point)`` as ONNX Runtime's QDQ quantizer computes them from a
    tensor's calibrated range (``quant_utils.compute_scale_zp``, asymmetric, the defaults of
    ``quantize_with_ort``), None for a tensor without a range."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[activation_type].tensor_type
    qmin, qmax = get_qmin_qmax_for_qType(qtype, reduce_range=False, symmetric=False)

    def params(tensor: str):
        lo_hi = ranges.get(tensor)
        if lo_hi is None:
            return None
        zero, scale = compute_scale_zp(np.float32(lo_hi[0]), np.float32(lo_hi[1]), qmin, qmax, False)
        return np.asarray(scale, np.float32).reshape(()), np.asarray(zero).astype(onnx.helper.tensor_dtype_to_np_dtype(qtype)).reshape(())

    return params


def _unfed_followers(g, excluded: set[tuple], quantized: set[tuple]) -> list[onnx.NodeProto]:
    """The quantized ``SHARED_OUTPUT`` nodes that are no longer quantized once ``excluded``
    are: the quantizer quantizes such a node only when its input 0 is already quantized, by
    its producer or by a reader of it before the node in graph order (``QDQDirect8BitOp``),
    and a follower never asks for it itself.  Walked in graph order, so chains of them go."""
    prod, cons = producers(g), consumers(g)
    order = {node_key(n): i for i, n in enumerate(g.node)}
    out: list[onnx.NodeProto] = []
    gone = set(excluded)
    live = lambda n: n is not None and node_key(n) in quantized and node_key(n) not in gone  # noqa: E731
    for n in g.node:
        if n.op_type not in SHARED_OUTPUT or not live(n):
            continue
        dq = prod.get(n.input[0])
        q = prod.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        readers = [c for d in cons.get(q.output[0], []) for c in cons.get(d.output[0], [])]
        asked = live(prod.get(q.input[0])) or any(live(c) and c.op_type not in SHARED_OUTPUT and order[node_key(c)] < order[node_key(n)] for c in readers)
        if not asked:
            gone.add(node_key(n))
            out.append(n)
    return out


def _rescaled_bias(g, node: onnx.NodeProto, weights: FloatReference, taken: set) -> None:
    """``node``'s INT32 bias quantized again with the scale its input now has (input scale x
    weight scale, as the quantizer computes it), when the input's parameters changed."""
    prod, inits = producers(g), initializer_map(g)
    if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(node.input) < 3:
        return
    xdq, wdq, bdq = (prod.get(x) for x in node.input[:3])
    if any(d is None or d.op_type != "DequantizeLinear" for d in (xdq, wdq, bdq)) or any(x not in inits for x in (bdq.input[0], wdq.input[1], xdq.input[1])):
        return
    if inits[bdq.input[0]].data_type != onnx.TensorProto.INT32:
        return
    bias = weights.find(bdq, inits)
    if bias is None:
        return
    scale = (tensor_array(inits[xdq.input[1]]) * tensor_array(inits[wdq.input[1]])).astype(np.float32).reshape(-1)
    q = np.clip(np.round(bias.astype(np.float64) / scale.astype(np.float64)), np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
    names = [unique_name(f"{bdq.input[0]}_rescaled", taken), unique_name(f"{bdq.input[1]}_rescaled", taken)]
    taken.update(names)
    g.initializer.extend([numpy_helper.from_array(q.reshape(bias.shape), names[0]), numpy_helper.from_array(scale, names[1])])
    bdq.input[0], bdq.input[1] = names


def _own_params(g, chosen: list, excluded: set[tuple], quantized: set[tuple], qparams, weights: FloatReference) -> None:
    """The Q/DQ pairs on the outputs of excluded nodes that borrowed their parameters while
    the node was quantized (``SHARED_OUTPUT``: input 0's; a Softmax: the range [0, 1]) get
    the tensor's own (``qparams``), as the quantizer writes them for a tensor whose producer
    it left out; quantized ``SHARED_OUTPUT`` nodes downstream share them in turn."""
    cons = consumers(g)
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output}

    def repoint(tensor: str, names: list[str]) -> None:
        for q in cons.get(tensor, []):
            if q.op_type != "QuantizeLinear" or len(q.input) < 3:
                continue
            q.input[1], q.input[2] = names
            for dq in cons.get(q.output[0], []):
                if dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
                    continue
                dq.input[1], dq.input[2] = names
                for c in cons.get(dq.output[0], []):
                    if node_key(c) not in quantized or node_key(c) in excluded or not c.input or c.input[0] != dq.output[0]:
                        continue
                    if c.op_type in SHARED_OUTPUT:
                        for out in c.output:
                            repoint(out, names)
                    else:
                        _rescaled_bias(g, c, weights, taken)

    for n in chosen:
        if n.op_type not in SHARED_OUTPUT and n.op_type not in FIXED_RANGE:
            continue
        for t in n.output:
            got = qparams(t) if t else None
            if got is None or not any(q.op_type == "QuantizeLinear" for q in cons.get(t, [])):
                continue
            names = [unique_name(f"{t}_scale", taken), unique_name(f"{t}_zero_point", taken)]
            taken.update(names)
            g.initializer.extend(numpy_helper.from_array(a, nm) for a, nm in zip(got, names, strict=True))
            repoint(t, names)


def _float_operator(g, node: onnx.NodeProto, weights: FloatReference, inits: dict, taken: set) -> tuple[list, str]:
    """A QOperator node (``QLINEAR``) as ONNX Runtime's QOperator quantizer writes a node it
    leaves out: DequantizeLinear of its input, the float op on the reference's weight (else
    the dequantized one) and bias (else the INT32 bias times input scale x weight scale),
    QuantizeLinear to its output (a QGemm without an output scale gives float already).
    Returns (the nodes, what its weight became)."""
    from onnx import helper

    op, at_bias, at_y = QLINEAR[node.op_type]
    x, xs, xz, w, ws, wz = node.input[:6]
    ys = node.input[at_y] if len(node.input) > at_y else ""
    name = lambda base: unique_name(base, taken)  # noqa: E731
    xf, wf, yf = name(f"{x}_float"), name(f"{w}_float"), name(f"{node.output[0]}_float") if ys else node.output[0]
    nodes = [helper.make_node("DequantizeLinear", [x, xs, xz], [xf], name=name(f"{node.name}_DequantizeLinear"))]
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    axis = {"axis": 0 if op == "Conv" or trans_b else 1} if w in inits and tensor_array(inits[ws]).size > 1 else {}
    dq = helper.make_node("DequantizeLinear", [w, ws, wz], [wf], name=name(f"{node.name}_weight_DequantizeLinear"), **axis)
    found = weights.find(dq, inits) if w in inits else None
    value = found if found is not None else (dequantized(dq, inits) if w in inits else None)
    if value is None:  # a weight computed in the graph: dequantized there
        nodes.append(dq)
    else:
        g.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), wf))
    how = "float" if found is not None else ("quantized (no float copy in the reference)" if w in inits else "none")
    ins = [xf, wf]
    b = node.input[at_bias] if at_bias and len(node.input) > at_bias else ""
    if b:
        plain = b[: -len("_quantized")] if b.endswith("_quantized") else b
        if plain in weights.inits:
            bias = tensor_array(weights.inits[plain]).astype(np.float32)
        else:
            bias = (tensor_array(inits[b]) * np.ravel(tensor_array(inits[xs])) * np.ravel(tensor_array(inits[ws]))).astype(np.float32)
        ins.append(name(f"{plain}_float"))
        g.initializer.append(numpy_helper.from_array(bias, ins[-1]))
    fl = helper.make_node(op, ins, [yf], name=name(f"{node.name}_float"))
    fl.attribute.extend(node.attribute)
    nodes.append(fl)
    if ys:
        nodes.append(helper.make_node("QuantizeLinear", [yf, ys, node.input[at_y + 1]], [node.output[0]], name=name(f"{node.name}_QuantizeLinear")))
    return nodes, how


def _operators_in_float(g, names: set, weights: FloatReference, notes: dict) -> None:
    """The QOperator nodes ``names`` in float (``_float_operator``); then a QuantizeLinear ->
    DequantizeLinear pair around them that no quantized node reads any more is bypassed, as
    the quantizer leaves a tensor in float when no quantized node needs it."""
    inits = initializer_map(g)
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} | {n.name for n in g.node}
    new, made = [], set()
    for n in g.node:
        if n.name in names and n.op_type in QLINEAR:
            repl, notes[n.name] = _float_operator(g, n, weights, inits, taken)
            new.extend(repl)
            made.update(node_key(r) for r in repl)
        else:
            new.append(n)
    del g.node[:]
    g.node.extend(new)
    prod, cons = producers(g), consumers(g)
    outputs = {o.name for o in g.output}
    for dq in new:
        q = prod.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or not (node_key(q) in made or node_key(dq) in made) or list(q.input[1:]) != list(dq.input[1:]):
            continue
        if q.output[0] not in outputs and all(c.op_type == "DequantizeLinear" and list(c.input[1:]) == list(q.input[1:]) for c in cons[q.output[0]]):
            dq.op_type, dq.domain = "Identity", ""
            dq.input[:] = [q.input[0]]
            del dq.attribute[:]
    read = {x for n in new for x in n.input} | outputs
    kept = [n for n in new if n.op_type != "QuantizeLinear" or n.output[0] in read]
    del g.node[:]
    g.node.extend(kept)
    read = {x for n in kept for x in n.input} | outputs
    unused = [t for t in g.initializer if t.name not in read]
    for t in unused:
        g.initializer.remove(t)


def _unfold(g, names: set, ref: FloatReference, qparams) -> None:
    """The excluded Relu and Clip nodes the quantizer had folded into the pair after the
    node before them (gone from the candidate, whose producer writes their output), put
    back as it leaves them: the producer writes the activation's input again, through a
    Q -> DQ pair of that tensor's own parameters (``_drop_pairs`` removes it when the
    producer is not quantized either), then the reference's Relu or Clip."""
    present = {n.name for n in g.node}
    prod = producers(g)
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} | present
    have = {t.name for t in g.initializer}
    for name in sorted(names - present):
        act = ref.by_name.get(name)
        src = prod.get(act.output[0]) if act is not None and act.op_type in ("Relu", "Clip") else None
        if src is None or src.op_type in ("Relu", "Clip", "QuantizeLinear", "DequantizeLinear"):
            continue
        x, t = act.input[0], act.output[0]
        src.output[list(src.output).index(t)] = x
        added = [copy.deepcopy(act)]
        got = qparams(x) if qparams is not None else None
        if got is not None:
            sz = [unique_name(f"{x}_scale", taken), unique_name(f"{x}_zero_point", taken)]
            qo, dqo = unique_name(f"{x}_QuantizeLinear_Output", taken), unique_name(f"{x}_DequantizeLinear_Output", taken)
            taken.update([*sz, qo, dqo])
            g.initializer.extend(numpy_helper.from_array(a, nm) for a, nm in zip(got, sz, strict=True))
            added = [
                onnx.helper.make_node("QuantizeLinear", [x, *sz], [qo], name=unique_name(f"{x}_QuantizeLinear", taken)),
                onnx.helper.make_node("DequantizeLinear", [qo, *sz], [dqo], name=unique_name(f"{x}_DequantizeLinear", taken)),
                added[0],
            ]
            added[2].input[0] = dqo
        for y in act.input[1:]:
            if y and y not in have and y in ref.inits:
                g.initializer.append(ref.inits[y])
                have.add(y)
        at = next(i for i, n in enumerate(g.node) if n is src or tuple(n.output) == tuple(src.output))
        for k, n in enumerate(added):
            g.node.insert(at + 1 + k, n)


def restore_float(candidate: onnx.ModelProto, nodes, ref: FloatReference) -> onnx.ModelProto:
    """A copy of a dynamic or weight-only INT4 ``candidate`` with ``nodes`` (names of the
    reference's nodes) back in float, as the quantizer leaves a node it excludes: the
    reference's node on its float inputs (a weight the candidate no longer holds in float
    taken from the reference), in place of the nodes that computed its outputs from them
    (DynamicQuantizeLinear, MatMulInteger, Cast, Mul; MatMulNBits) -- each of those removed
    only when nothing else reads it (a DynamicQuantizeLinear several MatMuls share stays).
    Dynamic quantization has no calibrated parameters, so this is exact."""
    out = copy.deepcopy(candidate)
    g = out.graph
    present = {(n.name, n.op_type) for n in g.node}
    have = {t.name for t in g.initializer} | {i.name for i in g.input}
    outputs = {o.name for o in g.output}
    for name in sorted(nodes):
        node = ref.by_name.get(name)
        if node is None or (name, node.op_type) in present:
            continue  # not in the reference, or left in float by the quantizer already
        prod, cons = producers(g), consumers(g)
        stop = {x for x in node.input if x}
        chain, todo = {}, [prod.get(o) for o in node.output]
        while todo:
            n = todo.pop()
            if n is None or node_key(n) in chain:
                continue
            chain[node_key(n)] = n
            todo += [prod.get(x) for x in n.input if x and x not in stop and x not in have]
        removable = dict(chain)
        changed = True
        while changed:  # a node some other reader (or a graph output) still needs stays
            changed = False
            for key, n in list(removable.items()):
                readers = [c for o in n.output if o not in node.output for c in cons.get(o, [])]  # the float node writes node.output
                if any(node_key(c) not in removable for c in readers) or any(o in outputs and o not in node.output for o in n.output):
                    del removable[key]
                    changed = True
        if not removable or any(o not in {x for n in removable.values() for x in n.output} for o in node.output):
            continue  # its outputs are not computed by a chain of its own: leave it
        at = min(i for i, n in enumerate(g.node) if node_key(n) in removable)
        kept = [n for n in g.node if node_key(n) not in removable]
        added = [*_weights_back(g, node, kept[:at], have, ref), copy.deepcopy(node)]
        for k, n in enumerate(added):
            kept.insert(min(at, len(kept)) + k, n)
        del g.node[:]
        g.node.extend(kept)
    return out


def _weights_back(g, node: onnx.NodeProto, before: list, have: set, ref: FloatReference) -> list[onnx.NodeProto]:
    """The constant inputs of ``node`` (back in float) that the candidate no longer holds:
    dequantized from the candidate's ``<name>_quantized`` when a quantized node *before* it
    (``before``) reads that (the dynamic quantizer walks the graph in order, and a weight it
    has quantized is dequantized for the float readers after), else the reference's float
    initializer.  Returns the DequantizeLinear nodes to insert before ``node``."""
    inits = initializer_map(g)
    read = {x for n in before for x in n.input}
    out = []
    for x in node.input:
        if not x or x in have:
            continue
        q, sc, zp = f"{x}_quantized", f"{x}_scale", f"{x}_zero_point"
        if q in read and q in inits and sc in inits:
            scale = tensor_array(inits[sc])
            dims = list(inits[q].dims)
            axis = {"axis": max(i for i, d in enumerate(dims) if d == scale.size)} if scale.size > 1 and scale.size in dims else {}
            out.append(onnx.helper.make_node("DequantizeLinear", [q, sc, zp] if zp in inits else [q, sc], [x], name=f"{x}_DequantizeLinear", **axis))
        elif x in ref.inits:
            g.initializer.append(ref.inits[x])
        else:
            continue
        have.add(x)
    return out


def leave_in_float(
    candidate: onnx.ModelProto, nodes, weights: FloatReference, op_types: set[str], qparams=None
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of the quantized ``candidate`` with ``nodes`` (names) left in float as the
    quantizer would leave them (module docstring: QDQ; a QOperator node becomes
    DequantizeLinear -> float op -> QuantizeLinear), and per weighted node what its weights
    became.  ``qparams`` (``activation_params``; QDQ): the parameters of a tensor whose
    pair borrowed them from an excluded node; without it those pairs keep the borrowed ones
    (inexact where an excluded node is in ``SHARED_OUTPUT`` or ``FIXED_RANGE``)."""
    out = copy.deepcopy(candidate)
    g = out.graph
    _unfold(g, set(nodes), weights, qparams)
    chosen = [n for n in g.node if n.name in set(nodes) and n.op_type not in QLINEAR]
    notes: dict[str, str] = {}
    excluded, quantized = {node_key(n) for n in chosen}, quantized_nodes(g, op_types)
    followers = _unfed_followers(g, excluded, quantized)
    excluded |= {node_key(n) for n in followers}
    _drop_pairs(g, excluded, quantized, weights)
    if qparams is not None:
        _own_params(g, chosen + followers, excluded, quantized, qparams, weights)
    _float_weights(g, chosen, weights, notes, lambda n: node_key(n) in quantized and node_key(n) not in excluded)
    _operators_in_float(g, set(nodes), weights, notes)
    return out, notes


def keep_outputs_float(model: onnx.ModelProto, nodes) -> int:
    """In place: the outputs of the named nodes of a QDQ ``model`` stay float: the
    Q -> DQ pairs on them, and on the outputs of the ops after them that share their scale
    (``SHARED_OUTPUT``: Reshape, Transpose, ...), are bypassed, so the node still runs in
    INT8 (ONNX Runtime fuses DQ -> MatMul/Gemm/Conv without a Q into a kernel with a float
    output) while an output whose range a few outlier channels stretch is not rounded to it
    (the budget search's ``float-output`` remedy).  A pair whose DQ output is a graph output,
    or whose Q feeds anything but DQs, is left.  Returns the DequantizeLinear nodes bypassed."""
    g = model.graph
    cons: dict[str, list] = {}
    for n in g.node:
        for x in n.input:
            cons.setdefault(x, []).append(n)
    graph_outputs = {o.name for o in g.output}
    drop, ren = set(), {}
    frontier = [o for n in g.node if n.name in set(nodes) for o in n.output]
    while frontier:
        t = frontier.pop()
        for q in cons.get(t, []):
            if q.op_type != "QuantizeLinear" or id(q) in drop:
                continue
            dqs = cons.get(q.output[0], [])
            if not dqs or any(d.op_type != "DequantizeLinear" or d.output[0] in graph_outputs for d in dqs):
                continue
            drop.add(id(q))
            for d in dqs:
                drop.add(id(d))
                ren[d.output[0]] = t
                frontier += [o for c in cons.get(d.output[0], []) if c.op_type in SHARED_OUTPUT for o in c.output]
    if not drop:
        return 0
    keep = [n for n in g.node if id(n) not in drop]
    for n in keep:
        for i, x in enumerate(n.input):
            if x in ren:
                n.input[i] = ren[x]
    del g.node[:]
    g.node.extend(keep)
    return len(ren)
