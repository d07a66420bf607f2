"""Which nodes of a static INT8 model (QDQ or QOperator) hurt its *outputs* most: leaving
each in float, emulated.

The error a node adds to the tensor it produces (``layerwise``) predicts the outputs badly:
an error early in the graph may wash out, one before a Softmax may decide the class.  So
the nodes with the largest error added (a short list, ``candidates``) are tried one by one
in float, on the same data, and scored on the model's *outputs*.

**Leaving a node in float** is emulated on the candidate model the way ONNX Runtime's QDQ
quantizer leaves a node out (``nodes_to_exclude``), without rerunning it:

- its weights are read in float instead of through their DequantizeLinear: the reference's
  initializer of the same name (the DequantizeLinear's output, or its input without
  ``_quantized``), else the reference weight of the same shape that, scaled per output
  channel, matches the dequantized weight within ``WEIGHT_FIT`` (relative L2; a
  BatchNormalization folded into the weight rescales its channels) -- if none does, the
  weight stays quantized and the node's entry says so;
- a QuantizeLinear -> DequantizeLinear pair on one of its input or output tensors is
  removed (its readers read the float tensor) only when no other *quantized* node needs
  it: the quantizer quantizes a tensor when its producer or any of its readers is
  quantized.  A node is quantized when it is of a type the quantizer handles
  (``config.static_op_types``) and reads a DequantizeLinear output.

**Ranking** reuses the budget search's ``sensitivity.measure_sensitivity`` with an
``metrics.Evaluator`` (the metric given, or the default for the outputs): each candidate's
score with it in float, ranked by score gained, ties by the worst output's relative L2.
The pick is greedy: the best node is kept in float, the others are measured again with it
(the best ``RESCORE`` of them), up to ``top`` nodes.  At most one emulated model exists at
a time.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import FLOAT_TYPES, consumers, initializer_map, producers, unique_name
from ..io import tensor_array
from ..quantize.bias_correction import dequantized
from ..quantize.config import static_op_types

__all__ = ["OutputEffect", "FloatReference", "leave_in_float", "is_qdq", "is_static_int8", "rank_by_outputs", "CANDIDATES", "WEIGHT_FIT", "RESCORE", "QLINEAR"]

log = logging.getLogger(__name__)

CANDIDATES = 12  # nodes by error added tried in float
# a model with at most this many quantized nodes has them all tried (the error a node adds
# to its own tensor can miss the one that decides the outputs: on magika with real files,
# 3 nodes from the 12 by error added cut the agreement drop from 93.0 to 85.9 points, 3 from
# all 44 to 51.6)
ALL_UP_TO = 64
RESCORE = 6  # of the ranking, measured again after each pick
WEIGHT_FIT = 0.05  # relative L2 of a per-channel-scaled reference weight to the dequantized one
# QOperator node -> (the float op it stands for, index of its INT32 bias, of its output scale)
QLINEAR = {"QLinearConv": ("Conv", 8, 6), "QLinearMatMul": ("MatMul", 0, 6), "QGemm": ("Gemm", 6, 7)}


@dataclass
class OutputEffect:
    """One node left in float (with those picked before it): the outputs' score then."""

    node: str
    op: str
    score: float  # metric against the reference outputs with this node (and the ones before) in float
    gain: float  # score gained over the model before this pick
    rel_l2: float  # worst output's relative L2 then
    metric: str
    weights: str = "float"  # float | quantized (no float copy found) | none
    reference_node: str = ""  # its name in the reference: what `quantize --exclude-nodes` takes
    how: str = "diagnose: outputs with the node left in float (emulated)"

    def to_dict(self) -> dict:
        return asdict(self)


def is_qdq(model: onnx.ModelProto) -> bool:
    """True when ``model`` holds QuantizeLinear/DequantizeLinear pairs on activations."""
    prod = producers(model.graph)
    return any(n.op_type == "DequantizeLinear" and getattr(prod.get(n.input[0]), "op_type", "") == "QuantizeLinear" for n in model.graph.node)


def is_static_int8(model: onnx.ModelProto) -> bool:
    """A static INT8 model whose nodes ``leave_in_float`` can emulate: QDQ, or QOperator
    (``QLinearConv`` / ``QLinearMatMul`` / ``QGemm``)."""
    return is_qdq(model) or any(n.op_type in QLINEAR for n in model.graph.node)


class FloatReference:
    """What the reference model holds in float: the weight behind a weight
    DequantizeLinear (``find``, module docstring), and which op produced each tensor (a
    Relu the quantizer folded into a QuantizeLinear's range)."""

    def __init__(self, reference: onnx.ModelProto):
        self.ops = {o: n.op_type for n in reference.graph.node for o in n.output}
        self.inits = initializer_map(reference.graph)
        # exporters (paddle2onnx) keep weights in Constant nodes
        consts = [n for n in reference.graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output]
        self.inits.update({n.output[0]: a.t for n in consts for a in n.attribute if a.name == "value"})
        self.by_shape: dict[tuple, list[str]] = {}
        for name, t in self.inits.items():
            if t.data_type in FLOAT_TYPES and len(t.dims) >= 2:
                self.by_shape.setdefault(tuple(t.dims), []).append(name)

    def find(self, dq: onnx.NodeProto, inits: dict) -> np.ndarray | None:
        """The float value of ``dq``'s output; None when the reference holds none that fits."""
        q_name = dq.input[0]
        for name in (dq.output[0], q_name[: -len("_quantized")] if q_name.endswith("_quantized") else None):
            if name and name in self.inits:
                return tensor_array(self.inits[name]).astype(np.float32)
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


def _key(node: onnx.NodeProto) -> tuple:
    """A node's identity within its graph (protobuf wrappers are not stable objects)."""
    return tuple(node.output)


def _quantized_nodes(graph: onnx.GraphProto, op_types: set[str]) -> set[tuple]:
    prod = producers(graph)
    qdq = {_key(n) for n in graph.node if n.op_type in op_types and any(getattr(prod.get(x), "op_type", "") == "DequantizeLinear" for x in n.input if x)}
    return qdq | {_key(n) for n in graph.node if n.op_type in QLINEAR}


def _float_weights(graph, nodes, weights: FloatReference, notes: dict) -> None:
    """Each excluded node reads its constant inputs (weights, biases, scales) in float where
    they are found; ``notes[node]``: float | quantized (one not found) | none (no constant
    behind a DequantizeLinear).  An INT32 bias not found keeps its dequantized value: its
    step (input scale x weight scale) is below the float rounding of the sums it joins."""
    prod, inits = producers(graph), initializer_map(graph)
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    for n in nodes:
        found, missing = 0, 0
        for i, x in enumerate(n.input):
            dq = prod.get(x)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            w = weights.find(dq, inits)
            if w is None:
                missing += inits[dq.input[0]].data_type != onnx.TensorProto.INT32
                continue
            name = unique_name(f"{x}_float", taken)
            graph.initializer.append(numpy_helper.from_array(w, name))
            n.input[i] = name
            found += 1
        notes[n.name] = "quantized (no float copy in the reference)" if missing else ("float" if found else "none")


def _drop_pairs(graph, excluded: set[tuple], quantized: set[tuple], ref: FloatReference) -> None:
    """Remove the activation Q -> DQ pairs that only excluded nodes need: the
    DequantizeLinear becomes an Identity of the float tensor (its name, a graph output's
    too, stays) -- or a Relu where the reference's tensor comes from a Relu the candidate
    no longer has (ONNX Runtime's quantizer folds a Relu into the range of the pair after
    it); a folded Clip keeps its pair."""
    prod, cons = producers(graph), consumers(graph)
    for dq in graph.node:
        q = prod.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        src = prod.get(q.input[0])
        near = [n for n in [src, *cons.get(dq.output[0], [])] if n is not None]
        needers = [n for n in near if _key(n) in quantized]
        if not needers or not any(_key(n) in excluded for n in near) or not all(_key(n) in excluded for n in needers):
            continue
        folded = ref.ops.get(q.input[0]) if src is None or src.op_type != ref.ops.get(q.input[0]) else None
        if folded == "Clip":
            continue
        dq.op_type, dq.domain = ("Relu" if folded == "Relu" else "Identity"), ""
        dq.input[:] = [q.input[0]]
        del dq.attribute[:]


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
            made.update(_key(r) for r in repl)
        else:
            new.append(n)
    del g.node[:]
    g.node.extend(new)
    prod, cons = producers(g), consumers(g)
    outputs = {o.name for o in g.output}
    for dq in new:
        q = prod.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or not (_key(q) in made or _key(dq) in made) or list(q.input[1:]) != list(dq.input[1:]):
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


def leave_in_float(candidate: onnx.ModelProto, nodes, weights: FloatReference, op_types: set[str]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of the quantized ``candidate`` with ``nodes`` (names) left in float as the
    quantizer would leave them (module docstring: QDQ; a QOperator node becomes
    DequantizeLinear -> float op -> QuantizeLinear), and per weighted node what its weights
    became."""
    out = copy.deepcopy(candidate)
    g = out.graph
    chosen = [n for n in g.node if n.name in set(nodes) and n.op_type not in QLINEAR]
    notes: dict[str, str] = {}
    _drop_pairs(g, {_key(n) for n in chosen}, _quantized_nodes(g, op_types), weights)
    _float_weights(g, chosen, weights, notes)
    _operators_in_float(g, set(nodes), weights, notes)
    return out, notes


def candidate_nodes(reference: onnx.ModelProto, candidate: onnx.ModelProto, tensors, n: int = CANDIDATES) -> dict[str, str]:
    """The ``n`` quantized nodes of ``candidate`` producing the ``tensors``
    (``layerwise.TensorError``) that add the most error (through their Q -> DQ pair), each
    with its name in ``reference`` (the same name when it is there, else the reference
    node whose tensor it was matched to): ``{candidate node: reference node}``; when the
    candidate has at most ``ALL_UP_TO`` quantized nodes, then every other one named as in
    the reference."""
    g = candidate.graph
    prod = producers(g)
    quantized = _quantized_nodes(g, set(static_op_types()))
    ref_names = {x.name for x in reference.graph.node}
    out: dict[str, str] = {}
    for t in sorted((t for t in tensors if t.diverged), key=lambda t: -t.added):
        node = prod.get(t.cand)
        while node is not None and node.op_type in ("DequantizeLinear", "QuantizeLinear") and _key(node) not in quantized:
            node = prod.get(node.input[0])
        if node is not None and _key(node) in quantized and node.name and node.name not in out:
            out[node.name] = node.name if node.name in ref_names else t.node
        if len(out) >= n:
            break
    if len(quantized) <= ALL_UP_TO:  # few enough to try them all: the rest follow, in graph order
        out.update({x.name: x.name for x in g.node if _key(x) in quantized and x.name in ref_names and x.name not in out})
    return out


def rank_by_outputs(reference: onnx.ModelProto, candidate: onnx.ModelProto, evaluator, nodes: dict[str, str], *, top: int = 3) -> list[OutputEffect]:
    """Greedy pick of up to ``top`` of ``nodes`` (``candidate_nodes``: candidate node name ->
    reference node name, best guesses first) whose leaving in float raises ``evaluator``'s
    score of ``candidate`` most (module docstring).  ``evaluator``: a ``metrics.Evaluator`` whose reference is ``reference``."""
    from ..quantize.sensitivity import measure_sensitivity, score_model

    op_types = set(static_op_types())
    weights = FloatReference(reference)
    ops = {n.name: n.op_type for n in candidate.graph.node}
    notes: dict[str, str] = {}

    def build(excluded: frozenset) -> onnx.ModelProto:
        m, got = leave_in_float(candidate, picked | excluded, weights, op_types)
        notes.update(got)
        return m

    picked: frozenset = frozenset()
    score, rel = score_model(evaluator, candidate)
    todo = [n for n in nodes if n in ops]
    out: list[OutputEffect] = []
    while todo and len(out) < top:
        effects = measure_sensitivity(build, todo, evaluator, base_score=score, max_units=len(todo))
        best = effects[0]
        if best.gain < 0 or (best.gain <= 1e-9 and best.rel_l2 >= rel):
            break  # nothing left improves the outputs
        node = best.nodes[0]
        picked |= {node}
        out.append(OutputEffect(node, ops[node], best.score, best.gain, best.rel_l2, evaluator.metric, notes.get(node, "none"), nodes[node]))
        score, rel = best.score, best.rel_l2
        todo = [e.nodes[0] for e in effects[1 : RESCORE + 1]]
    return out
