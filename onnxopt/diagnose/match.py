"""Which tensor of the candidate graph holds what a tensor of the reference graph holds.

Matched, in the reference's graph order, by the first rule that applies:

1. ``input``: a real graph input of both models (they must have the same real inputs, else
   there is nothing to compare and ``ModelError`` says what differs).
2. ``name``: the candidate produces a tensor of the same name.  When the candidate feeds
   that tensor only through QuantizeLinear -> DequantizeLinear pairs (a QDQ model), the
   DequantizeLinear output is taken instead (``qdq``): it is what the consumers see.
3. ``structure``: renames and rewritten producers.  A reference node whose activation
   inputs are all matched is paired with the one candidate node of the same op type
   reading the matched tensors in the same order (constant inputs compared by shape only,
   weights behind a DequantizeLinear counted as constants); its outputs are matched
   position by position (through folds, below).  Two candidates for one node: left
   unmatched (ambiguous).

Fused ops keep their last output's name in ONNX Runtime and in onnxopt's passes, so rule 2
matches the tensor after the fusion; the tensors inside it stay in ``unmatched``.  The
other way round too: a BatchNormalization (or an Add / Sub / Mul / Div by a constant)
folded into the node before it leaves that node's output *name* in the candidate holding
what the folded node's output held (a Conv + BatchNormalization pair becomes one Conv
named like the first, or, after ONNX Runtime's QDQ quantizer dropped the Relu too, like the
Relu).  So when a reference tensor's only reader is such a node, and the candidate no
longer produces that node's output, the candidate's tensor (found by name or by structure)
is matched to the folded node's output (``folded``), and the reference tensor before the
fold is left unmatched: comparing it would report a difference that is the fold itself.
Constant-node outputs and tensors of non-float type (shapes, indices) are not compared.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import onnx
from onnx import TensorProto

from ..errors import ModelError
from ..graph import consumers, producers, real_inputs

__all__ = ["TensorPair", "Matching", "match_tensors", "check_inputs", "weightless"]

_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}
_QDQ = {"QuantizeLinear", "DequantizeLinear"}


@dataclass
class TensorPair:
    """One compared tensor: ``ref`` in the reference, ``cand`` in the candidate."""

    ref: str
    cand: str
    how: str  # input | name | qdq | structure | folded
    node: str = ""  # producing node in the reference ("" for graph inputs)
    op: str = ""
    inputs: list[str] = field(default_factory=list)  # reference tensors its producer reads


@dataclass
class Matching:
    pairs: list[TensorPair]
    unmatched_ref: list[str]
    unmatched_cand: list[str]

    def to_dict(self, limit: int = 50) -> dict:
        return {
            "matched": len(self.pairs),
            "by": dict(Counter(p.how for p in self.pairs)),
            "unmatched_reference": self.unmatched_ref[:limit],
            "unmatched_reference_count": len(self.unmatched_ref),
            "unmatched_candidate": self.unmatched_cand[:limit],
            "unmatched_candidate_count": len(self.unmatched_cand),
        }


def weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers keep name, type and dims but no data (no copy
    of the weights is made: the graph is rebuilt field by field)."""
    g = model.graph
    inits = [onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims) for t in g.initializer]
    sg = onnx.GraphProto(name=g.name, node=g.node, input=g.input, output=g.output, value_info=g.value_info, initializer=inits)
    return onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import, functions=model.functions, graph=sg)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type per value, from the graph's annotations and shape inference on a copy
    without weight data (shape inference reads dims, not values)."""
    skeleton = weightless(model)
    try:
        skeleton = onnx.shape_inference.infer_shapes(skeleton)
    except Exception:  # types stay unknown where inference fails: those tensors are compared
        pass
    g = skeleton.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output] if v.type.HasField("tensor_type")}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def _constants(graph: onnx.GraphProto) -> dict[str, tuple | None]:
    """Shape of each constant: initializers, Constant outputs and the DequantizeLinear
    outputs of those (quantized weights)."""
    const: dict[str, tuple | None] = {t.name: tuple(t.dims) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            const.update({o: tuple(value.dims) if value is not None else None for o in n.output})
        elif n.op_type == "DequantizeLinear" and n.input and n.input[0] in const:
            const.update({o: const[n.input[0]] for o in n.output})
    return const


def _dq_view(name: str, cons: dict) -> str | None:
    """The DequantizeLinear output when ``name`` is read only through Q -> DQ pairs."""
    readers = cons.get(name, [])
    if not readers or any(n.op_type != "QuantizeLinear" for n in readers):
        return None
    dq = [d for q in readers for d in cons.get(q.output[0], []) if d.op_type == "DequantizeLinear"]
    return dq[0].output[0] if dq else None


def _key(node: onnx.NodeProto, const: dict, mapped) -> tuple | None:
    """(op, inputs) with activations mapped and constants reduced to their shape; None
    when an activation input is unmatched."""
    parts = []
    for x in node.input:
        if not x:
            parts.append("")
        elif x in const:
            parts.append(("const", const[x]))
        else:
            m = mapped(x)
            if m is None:
                return None
            parts.append(m)
    return node.op_type, tuple(parts)


def _structural_index(cand: onnx.GraphProto, const: dict, dq_src: dict[str, str]) -> dict:
    index: dict[tuple, list[onnx.NodeProto]] = {}
    for n in cand.node:
        if n.op_type in _QDQ or n.op_type == "Constant":
            continue
        # a DequantizeLinear output of an activation stands for the tensor it dequantizes
        index.setdefault(_key(n, const, lambda x: dq_src.get(x, x)), []).append(n)
    return index


def check_inputs(ref: onnx.ModelProto, cand: onnx.ModelProto) -> list[str]:
    """The real inputs both models share; ``ModelError`` naming what differs otherwise."""
    a, b = ([i.name for i in real_inputs(m.graph)] for m in (ref, cand))
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ModelError(
            "nothing to match: the models' inputs differ"
            + (f"; only the reference has {', '.join(only_a)}" if only_a else "")
            + (f"; only the candidate has {', '.join(only_b)}" if only_b else "")
        )
    return a


class _State:
    """The candidate's indexes and what is matched so far."""

    def __init__(self, ref: onnx.ModelProto, cand: onnx.ModelProto, inputs: list[str]):
        cg = cand.graph
        self.ref_types, self.cand_types = _elem_types(ref), _elem_types(cand)
        self.ref_const, self.cand_const = _constants(ref.graph), _constants(cg)
        self.cand_prod, self.cand_cons = producers(cg), consumers(cg)
        self.cand_outputs = {o.name for o in cg.output}
        dqs = [n for n in cg.node if n.op_type == "DequantizeLinear" and n.input and getattr(self.cand_prod.get(n.input[0]), "op_type", "") == "QuantizeLinear"]
        self.dq_src = {n.output[0]: self.cand_prod[n.input[0]].input[0] for n in dqs}  # DQ output -> the activation its Q read
        self.index = _structural_index(cg, self.cand_const, self.dq_src)
        # reference tensors it quantizes itself: matched by name, not to a DQ view
        self.ref_quantized = {n.input[0] for n in ref.graph.node if n.op_type == "QuantizeLinear" and n.input}
        self.found: dict[str, tuple[str, str]] = {x: (x, "input") for x in inputs}
        self.claimed = set(inputs)
        self.folded_away: set[str] = set()  # reference tensors whose candidate namesake holds a folded node's output

    def claim(self, ref_name: str, cand_name: str, how: str) -> None:
        if cand_name in self.claimed or not _is_float(cand_name, self.cand_types):
            return
        view = None if how == "qdq-skip" else _dq_view(cand_name, self.cand_cons)
        if view and view not in self.claimed:
            cand_name, how = view, ("qdq" if how == "name" else how)
        self.claimed.add(cand_name)
        self.found[ref_name] = (cand_name, "name" if how == "qdq-skip" and cand_name == ref_name else how.replace("qdq-skip", "structure"))

    def mapped(self, ref_name: str) -> str | None:
        hit = self.found.get(ref_name)
        return None if hit is None else self.dq_src.get(hit[0], hit[0])


_FOLDABLE = {"BatchNormalization", "Add", "Sub", "Mul", "Div"}


def _cand_reader_ops(name: str, cons: dict) -> set[str]:
    """Op types reading candidate tensor ``name``, looking through Q -> DQ pairs."""
    readers = cons.get(name, [])
    behind_q = [d for r in readers if r.op_type == "QuantizeLinear" for d in cons.get(r.output[0], [])]
    through_dq = [x for d in behind_q for x in (cons.get(d.output[0], []) if d.op_type == "DequantizeLinear" else [d])]
    return {r.op_type for r in readers if r.op_type != "QuantizeLinear"} | {x.op_type for x in through_dq}


def _fold_chain(name: str, ref_cons: dict, ref_const: dict):
    """The outputs of the nodes after reference ``name`` that could fold into its producer:
    each the single reader of the one before, foldable, its other inputs constants."""
    seen = {name}
    while True:
        readers = ref_cons.get(name, [])
        if len(readers) != 1:
            return
        f = readers[0]
        if f.op_type not in _FOLDABLE or not f.output or any(x not in ref_const for x in f.input if x and x != name) or f.output[0] in seen:
            return
        name = f.output[0]
        seen.add(name)
        yield f.op_type, name


def _fold_target(name: str, ref_cons: dict, ref_const: dict, cand_has, cand: str, cand_ops: set[str]) -> str:
    """The reference tensor whose content the candidate tensor ``cand`` matched to reference
    ``name`` (read by ``cand_ops``) holds: the output of the chain of foldable nodes after
    ``name`` that ``cand`` is named like (a Conv that took over the name of the Add folded
    into it), else the chain's last output the candidate folded away (their outputs gone,
    and no node of their op type reading that tensor in the candidate), else ``name``."""
    chain = list(_fold_chain(name, ref_cons, ref_const))
    if any(out == cand for _, out in chain):
        return cand
    for op_type, out in chain:
        if cand_has(out) or op_type in cand_ops:
            return name
        name = out
    return name


def _is_float(name: str, types: dict) -> bool:
    t = types.get(name)
    return t is None or t == 0 or t in _FLOATS


def match_tensors(ref: onnx.ModelProto, cand: onnx.ModelProto) -> Matching:
    """Match the reference's float activations to the candidate's (see the module docstring).

    Raises ``ModelError`` when the real graph inputs differ (nothing can be compared)."""
    inputs = check_inputs(ref, cand)
    st = _State(ref, cand, inputs)
    nodes = [n for n in ref.graph.node if n.op_type != "Constant" and not all(o in st.ref_const for o in n.output if o)]
    outs = {id(n): [o for o in n.output if o and _is_float(o, st.ref_types)] for n in nodes}
    ref_cons = consumers(ref.graph)

    def cand_has(x: str) -> bool:
        return x in st.cand_prod or x in st.cand_outputs

    def settle(o: str, c: str, how: str, keep_found: bool) -> None:
        """Match reference ``o`` to candidate ``c`` by ``how``, or, when the candidate
        node absorbed the folds after ``o``, the folded output to ``c`` (``keep_found``: not
        over a match already made)."""
        target = _fold_target(o, ref_cons, st.ref_const, cand_has, c, _cand_reader_ops(c, st.cand_cons))
        if target == o:
            st.claim(o, c, "qdq-skip" if o in st.ref_quantized else how)
        elif not (keep_found and target in st.found):
            st.claim(target, c, "folded")
            st.folded_away.add(o)

    for n in nodes:  # names first: a name is stronger evidence than a structure
        for o in outs[id(n)]:
            if cand_has(o):
                settle(o, o, "name", False)
    for n in nodes:  # graph order: a node's inputs are settled before it
        if all(o in st.found or o in st.folded_away for o in outs[id(n)]):
            continue
        key = _key(n, st.ref_const, st.mapped)
        hits = st.index.get(key, []) if key is not None else []
        if len(hits) == 1 and len(hits[0].output) == len(n.output):
            for o, c in zip(n.output, hits[0].output, strict=True):
                if o in outs[id(n)] and o not in st.found and c:
                    settle(o, c, "structure", True)
    pairs = [TensorPair(x, x, "input") for x in inputs]
    unmatched = []
    for n in nodes:
        acts = [x for x in n.input if x and x not in st.ref_const]
        for o in outs[id(n)]:
            if o in st.found:
                pairs.append(TensorPair(o, st.found[o][0], st.found[o][1], n.name or f"{n.op_type}:{o}", n.op_type, acts))
            else:
                unmatched.append(o)
    cg = cand.graph
    q_internal = {o for n in cg.node if n.op_type in _QDQ for o in n.output}
    unmatched_cand = [
        o for n in cg.node for o in n.output if o and o not in st.claimed and o not in q_internal and o not in st.cand_const and _is_float(o, st.cand_types)
    ]
    return Matching(pairs, unmatched, unmatched_cand)
