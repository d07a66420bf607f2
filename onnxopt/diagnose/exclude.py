"""Which nodes of a static INT8 model (QDQ or QOperator) hurt its *outputs* most: leaving
each in float, emulated.

The error a node adds to the tensor it produces (``layerwise``) predicts the outputs badly:
an error early in the graph may wash out, one before a Softmax may decide the class.  So
the nodes with the largest error added (a short list, ``candidates``) are tried one by one
in float, on the same data, and scored on the model's *outputs*.

**Leaving a node in float** is emulated on the candidate model the way ONNX Runtime's
quantizer leaves a node out, without rerunning it (``quantize.emulate.leave_in_float``).

**Ranking** reuses the budget search's ``sensitivity.measure_sensitivity`` with an
``metrics.Evaluator`` (the metric given, or the default for the outputs): each candidate's
score with it in float, ranked by score gained, ties by the worst output's relative L2.
The pick is greedy: the best node is kept in float, the others are measured again with it
(the best ``RESCORE`` of them), up to ``top`` nodes.  Errors that add up over nodes defeat
it (each node alone in float gains little while the others stay quantized), so the nodes
are also ranked by the damage each does alone (``quantize-one``: only it quantized), and
the ``top`` most damaging are scored together in float.  Neither ranking sees how nodes
combine, so every set of ``top`` nodes from a small pool (``POOL``: the greedy picks, then
the most damaging alone, then the best of the first greedy round) is scored together in
float, and the best-scoring set is named (on magika with its layer norms and GELUs fused,
cosine: 0.334 points left by the greedy three, 0.274 by the three most damaging alone,
0.103 by the budget search's two of the quantize-one ranking).  At most one emulated model
exists at a time.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict, dataclass

import onnx

from ..graph import producers
from ..quantize.config import static_op_types
from ..quantize.emulate import QLINEAR, FloatReference, leave_in_float, node_key, quantized_nodes

__all__ = ["OutputEffect", "is_qdq", "is_static_int8", "rank_by_outputs", "candidate_nodes", "CANDIDATES", "RESCORE", "POOL"]

log = logging.getLogger(__name__)

CANDIDATES = 12  # nodes by error added tried in float
# a model with at most this many quantized nodes has them all tried (the error a node adds
# to its own tensor can miss the one that decides the outputs: on magika with real files,
# 3 nodes from the 12 by error added cut the agreement drop from 93.0 to 85.9 points, 3 from
# all 44 to 51.6)
ALL_UP_TO = 64
RESCORE = 6  # of the ranking, measured again after each pick
POOL = 6  # nodes whose sets of ``top`` are all scored together (C(6, 3) = 20 models)


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


def candidate_nodes(reference: onnx.ModelProto, candidate: onnx.ModelProto, tensors, n: int = CANDIDATES) -> dict[str, str]:
    """The ``n`` quantized nodes of ``candidate`` producing the ``tensors``
    (``layerwise.TensorError``) that add the most error (through their Q -> DQ pair), each
    with its name in ``reference`` (the same name when it is there, else the reference
    node whose tensor it was matched to): ``{candidate node: reference node}``; when the
    candidate has at most ``ALL_UP_TO`` quantized nodes, then every other one named as in
    the reference (or fused from a node of it, ``_named``)."""
    g = candidate.graph
    prod = producers(g)
    quantized = quantized_nodes(g, set(static_op_types()))
    ref_ops = {x.name: x.op_type for x in reference.graph.node}
    ref_names = set(ref_ops)
    out: dict[str, str] = {}
    for t in sorted((t for t in tensors if t.diverged), key=lambda t: -t.added):
        node = prod.get(t.cand)
        while node is not None and node.op_type in ("DequantizeLinear", "QuantizeLinear") and node_key(node) not in quantized:
            node = prod.get(node.input[0])
        if node is not None and node_key(node) in quantized and node.name and node.name not in out:
            name = _exclusion_name(node, t.node, ref_ops, ref_names)
            if name:
                out[node.name] = name
        if len(out) >= n:
            break
    if len(quantized) <= ALL_UP_TO:  # few enough to try them all: the rest follow, in graph order
        out.update({x.name: x.name for x in g.node if node_key(x) in quantized and _named(x.name, ref_names) and x.name not in out})
    return out


def _exclusion_name(node: onnx.NodeProto, matched: str, ref_ops: dict[str, str], ref_names: set) -> str:
    """The name ``quantize --exclude-nodes`` takes for the candidate's ``node``, whose
    tensor was matched to the reference node ``matched``: its own when the reference has it
    (or it was fused from a node of it); else ``matched`` when that is the same op (a
    QOperator ``fc_quant`` for the reference's ``fc``); else '' (a node pre-processing made,
    as ORT's ``Mul`` of ``HardSigmoid(x) * x`` matched to the reference's ``Div``: excluding
    that ``Div`` would not leave this node in float)."""
    if _named(node.name, ref_names):
        return node.name
    op = QLINEAR[node.op_type][0] if node.op_type in QLINEAR else node.op_type
    return matched if ref_ops.get(matched) == op else ""


def _named(name: str, ref_names: set) -> bool:
    """True when ``quantize --exclude-nodes`` takes ``name`` for the reference: one of its
    nodes, or one pre-processing fused from it (``<node>/<...Fusion>``: magika's fused
    layer norms, which the budget search leaves in float)."""
    head, _, tail = name.rpartition("/")
    return name in ref_names or (head in ref_names and "Fusion" in tail)


def rank_by_outputs(
    reference: onnx.ModelProto, candidate: onnx.ModelProto, evaluator, nodes: dict[str, str], *, top: int = 3, qparams=None
) -> list[OutputEffect]:
    """Greedy pick of up to ``top`` of ``nodes`` (``candidate_nodes``: candidate node name ->
    reference node name, best guesses first) whose leaving in float raises ``evaluator``'s
    score of ``candidate`` most (module docstring).  ``evaluator``: a ``metrics.Evaluator`` whose reference is ``reference``;
    ``qparams``: ``emulate.leave_in_float``'s."""
    from ..quantize.sensitivity import measure_sensitivity, score_model

    op_types = set(static_op_types())
    weights = FloatReference(reference)
    ops = {n.name: n.op_type for n in candidate.graph.node}
    notes: dict[str, str] = {}

    def build(excluded: frozenset) -> onnx.ModelProto:
        m, got = leave_in_float(candidate, picked | excluded, weights, op_types, qparams)
        notes.update(got)
        return m

    picked: frozenset = frozenset()
    score, rel = score_model(evaluator, candidate)
    todo = [n for n in nodes if n in ops]
    out: list[OutputEffect] = []
    first_round: list = []
    while todo and len(out) < top:
        effects = measure_sensitivity(build, todo, evaluator, base_score=score, max_units=len(todo))
        first_round = first_round or effects
        best = effects[0]
        if best.gain < 0 or (best.gain <= 1e-9 and best.rel_l2 >= rel):
            break  # nothing left improves the outputs
        node = best.nodes[0]
        picked |= {node}
        out.append(OutputEffect(node, ops[node], best.score, best.gain, best.rel_l2, evaluator.metric, notes.get(node, "none"), nodes[node]))
        score, rel = best.score, best.rel_l2
        todo = [e.nodes[0] for e in effects[1 : RESCORE + 1]]
    picked = frozenset()  # ``build`` leaves these in float besides what it is asked
    alone = _by_damage(build, [n for n in nodes if n in ops], evaluator)
    pool = [e.node for e in out] + [e.nodes[0] for e in alone[:POOL]] + [e.nodes[0] for e in first_round[:top] if e.gain > 1e-9]
    best_set = _best_set(build, list(dict.fromkeys(pool))[:POOL], evaluator, top, tried={frozenset(e.node for e in out): out[-1].score} if out else {})
    if best_set is None:
        return out
    together, rel2, chosen = best_set
    lost = {e.nodes[0]: e.gain for e in alone}
    how = "diagnose: the set scored best together in float (emulated); lost alone: the damage each does alone (only it quantized)"
    return [
        OutputEffect(n, ops[n], together, lost.get(n, 0.0), rel2, evaluator.metric, notes.get(n, "none"), nodes[n], how)
        for n in sorted(chosen, key=lambda n: -lost.get(n, 0.0))
    ]


def _best_set(build, pool: list[str], evaluator, top: int, tried: dict) -> tuple[float, float, tuple] | None:
    """(score, rel L2, nodes) of the best-scoring set of ``top`` nodes of ``pool`` left in
    float together, when it beats every set in ``tried`` (``{set: score}``); else None."""
    from ..quantize.sensitivity import score_model

    if not pool:
        return None
    floor = max(tried.values(), default=-float("inf"))
    best = None
    for combo in itertools.combinations(pool, min(top, len(pool))):
        if frozenset(combo) in tried:
            continue
        s, rel = score_model(evaluator, build(frozenset(combo)))
        if s > floor + 1e-9 and (best is None or s > best[0] + 1e-9):
            best = (s, rel, combo)
    return best


def _by_damage(build, nodes: list[str], evaluator) -> list:
    """``nodes`` that hurt the outputs when each alone is quantized (the rest in float), most
    damaging first."""
    from ..quantize.sensitivity import measure_sensitivity

    effects = measure_sensitivity(build, nodes, evaluator, how="quantize-one", max_units=len(nodes))
    return [e for e in effects if e.gain > 1e-9]
