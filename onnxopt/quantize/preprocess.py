"""Pre-processing that lets ONNX Runtime's quantizer work on exported graphs as they are.

Steps (each in place on a copy; the result is verified against the input by ``prepare``):

1. ``Constant`` nodes -> initializers (``onnxopt.simplify``), then constant folding.
2. ``materialize_weights``: a weight (input 1/2 of Conv, ConvTranspose, Gemm, MatMul, ...)
   computed by a constant subgraph (``ConstantOfShape``, ``Cast``/``Reshape``/``Transpose``
   of constants, ...) becomes an initializer whatever its size.  ORT's quantizer refuses
   such weights ("... to be an initializer") or silently leaves the node in float.
3. Nameless nodes get unique names (node exclusion and reports need them); this is done
   first, so a generated name (``<OpType>_<index>``) refers to the input model's node.
4. ``upgrade_opset``: opset < 13 -> 13 with ONNX's version converter (per-channel
   ``DequantizeLinear`` needs ``axis``, opset 13; ORT's quantizer would merely relabel an old
   opset as 11), IR version raised to match, initializer-backed inputs of IR < 4 dropped.
5. ``fuse_layernorms`` (``onnxopt.simplify.layernorm``): a layer norm the exporter wrote as a
   dozen elementwise ops becomes one ``LayerNormalization`` (opset converted to 17 for it);
   ``fuse_gelus`` (``onnxopt.simplify.gelu``): a GELU written as eight becomes ORT's
   ``FastGelu`` / ``Gelu`` (its ``x**3`` next to ``x`` fits no 8-bit range);
   ``fold_conv_affines`` (``onnxopt.simplify.conv_affine``): scales and shifts by constants
   after a Conv go into its weight and bias; ``fuse_hardswishes``
   (``onnxopt.simplify.hardswish``): ``x * relu6(x + 3) / 6`` becomes one ``HardSwish``
   (PP-OCRv4 rec: 84 quantized elementwise ops fewer; static INT8 1.17x -> 1.35x its FP32).
   Quantized as they were, its intermediates each get an 8-bit range, and the "fast variance"
   ``mean(x*x) - mean(x)**2`` cancels two quantized numbers (magika's static INT8 lost 93
   points of agreement there); fused, only their inputs and outputs are quantized.  Its float
   rounding differs from the decomposition's: the outputs are checked against
   ``verify.REASSOCIATED_REL_L2`` (1e-3) instead of 1e-4; a fusion that moves them more is
   dropped.
6. ``ort_pre_process``: ORT's ``quant_pre_process`` (symbolic shape inference + basic graph
   optimization such as Conv+BatchNormalization folding) where it succeeds and verifies.
7. ONNX shape inference stored in ``value_info``.

``gemm_to_matmul`` (dynamic mode only): ``Gemm(A, B, C)`` with constant ``B``, ``transA=0``
becomes ``MatMul(A, alpha * op(B)) [+ Add(beta * C)]`` so that dynamic quantization (which
has no integer Gemm) applies; the MatMul keeps the Gemm's name.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .. import io as oio
from ..errors import OnnxoptError
from ..graph import unique_name
from ..simplify.constants import constants_to_initializers
from ..simplify.conv_affine import fold_conv_affines
from ..simplify.dead import remove_unused
from ..simplify.fold import evaluate_node, fold_constants
from ..simplify.gelu import fuse_gelus
from ..simplify.hardswish import fuse_hardswishes
from ..simplify.layernorm import fuse_layernorms
from ..simplify.opset import upgrade_opset
from ..verify import EXACT_REL_L2, REASSOCIATED_REL_L2

__all__ = [
    "Prepared",
    "node_names",
    "name_nodes",
    "map_node_names",
    "materialize_weights",
    "ort_pre_process",
    "gemm_to_matmul",
    "infer_shapes",
    "prepare",
]

log = logging.getLogger(__name__)

TARGET_OPSET = 13
# op type -> input positions that hold weights / biases (quantized as constants)
WEIGHT_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "Attention": (1, 2), "LSTM": (1, 2, 3), "Gather": (0,)}
_MAX_EVAL_DEPTH = 8


@dataclass
class Prepared:
    """The pre-processed model; ``limit``: the relative L2 its outputs may move by against
    the input (``EXACT_REL_L2``; ``REASSOCIATED_REL_L2`` once layer norms were fused)."""

    model: onnx.ModelProto
    counts: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    limit: float = EXACT_REL_L2



def node_names(model: onnx.ModelProto) -> list[str]:
    """The main-graph node names after ``name_nodes`` (the model is not changed): a nameless
    node is ``<OpType>_<index>``, suffixed ``_<k>`` when that name is taken."""
    taken = {n.name for n in model.graph.node if n.name}
    out = []
    for i, n in enumerate(model.graph.node):
        if n.name:
            out.append(n.name)
            continue
        name, k = f"{n.op_type}_{i}", 0
        while name in taken:
            k += 1
            name = f"{n.op_type}_{i}_{k}"
        taken.add(name)
        out.append(name)
    return out


def name_nodes(model: onnx.ModelProto) -> int:
    """Give every nameless main-graph node a unique name (``node_names``); returns how many."""
    count = 0
    for n, name in zip(model.graph.node, node_names(model), strict=True):
        if not n.name:
            n.name = name
            count += 1
    return count


def map_node_names(model: onnx.ModelProto, names, original=()) -> tuple[dict[str, list[str]], list[str]]:
    """Where the nodes ``names`` (of the model before pre-processing) are in ``model``.

    A name maps to itself when ``model`` still has it, else to the nodes ORT's graph
    optimizer made of it (named ``<name>/<Fusion>``, e.g. MatMul + Add ->
    ``<matmul>/MatMulAddFusion``; names in ``original``, the input's node names, are
    never taken as derived).  Returns ``({name: [nodes]}, names not found)``.
    """
    present = [n.name for n in model.graph.node]
    have = set(present)
    original = set(original)
    found, missing = {}, []
    for name in names:
        if name in have:
            found[name] = [name]
            continue
        derived = [p for p in present if p.startswith(name + "/") and p not in original]
        if derived:
            found[name] = derived
        else:
            missing.append(name)
    return found, missing


def materialize_weights(model: onnx.ModelProto) -> tuple[int, list[str]]:
    """Turn constant-computed weights of quantizable ops into initializers (in place).

    A value is constant when it is an initializer that no graph input overrides, or the
    output of a deterministic standard node without subgraphs whose inputs are constant
    (followed up to 8 producers deep).  Returns (count, notes).
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    graph_inputs = {i.name for i in g.input}
    producers = {o: n for n in g.node for o in n.output}
    cache: dict[str, np.ndarray | None] = {}
    notes: list[str] = []

    def value(name: str, depth: int = 0) -> np.ndarray | None:
        if name in cache:
            return cache[name]
        out = None
        if name in inits and (name not in graph_inputs or model.ir_version < 4):
            out = oio.tensor_array(inits[name])
        elif name in producers and depth < _MAX_EVAL_DEPTH:
            node = producers[name]
            if (
                node.domain in ("", "ai.onnx")
                and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
                and not node.op_type.startswith("Random")
            ):
                vals = []
                for x in node.input:
                    v = value(x, depth + 1) if x else None
                    if x and v is None:
                        vals = None
                        break
                    vals.append(v)
                if vals is not None:
                    try:
                        out = evaluate_node(node, vals, model.opset_import)[list(node.output).index(name)]
                    except Exception as exc:  # an op the reference evaluator cannot run
                        notes.append(f"weight '{name}' left computed: {node.op_type} not evaluable ({' '.join(str(exc).split())[:80]})")
        cache[name] = out
        return out

    count = 0
    done = set()
    for node in list(g.node):
        for pos in WEIGHT_INPUTS.get(node.op_type, ()):
            name = node.input[pos] if pos < len(node.input) else ""
            if not name or name in done or (name in inits and name not in graph_inputs) or name not in producers:
                continue
            v = value(name)
            if v is None or v.dtype.kind != "f":
                continue
            t = numpy_helper.from_array(np.ascontiguousarray(v), name)
            g.initializer.append(t)
            inits[name] = t
            # the producer's output is now an initializer: drop that output from the node
            prod = producers.pop(name)
            if len(prod.output) == 1:
                g.node.remove(prod)
            else:
                prod.output[list(prod.output).index(name)] = f"{name}__unused"
            done.add(name)
            count += 1
    if count:
        remove_unused(model)
    return count, notes


def ort_pre_process(src: Path, *, big: bool = False) -> tuple[onnx.ModelProto | None, str]:
    """ORT's ``quant_pre_process`` (symbolic shape inference + basic optimization) of the
    model file ``src``; None on failure.  ``big``: the result is saved with external data
    (over 2 GB)."""
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:  # pragma: no cover - ORT without the quantization tool
        return None, f"ORT quant_pre_process unavailable ({exc})"
    # ORT logs its own failures at ERROR level (straight to stderr) before raising; ours is
    # the fallback, so its logger is quiet here.  quant_pre_process also rewrites the proto
    # it is given (tensors moved to an external "foo.bin"), so it only ever sees a file.
    ort_log = logging.getLogger("onnxruntime.quantization.shape_inference")
    level = ort_log.level
    ort_log.setLevel(logging.CRITICAL)
    src = str(src)
    with tempfile.TemporaryDirectory(prefix="onnxopt-qprep-") as tmp:
        out = Path(tmp) / "pre.onnx"
        try:
            try:
                quant_pre_process(src, str(out), save_as_external_data=big, skip_symbolic_shape=False, auto_merge=True)
                return onnx.load(str(out)), "ORT quant_pre_process applied"
            except Exception as exc:
                try:  # symbolic shape inference is the usual culprit: retry without it
                    quant_pre_process(src, str(out), save_as_external_data=big, skip_symbolic_shape=True)
                    return onnx.load(str(out)), "ORT quant_pre_process applied without symbolic shape inference"
                except Exception:
                    return None, f"ORT quant_pre_process failed ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); skipped"
        finally:
            ort_log.setLevel(level)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference stored in ``model``'s value_info, in place (the model unchanged
    when it fails); returns ``model``.  Inference runs on a skeleton of it whose large
    weights are typed graph inputs (``stats.shape_skeleton``): inferring on the whole proto
    serializes and parses every weight twice (the peak of ``optimize`` on a 68 MB encoder).
    The skeleton's nodes, annotated, replace the model's (If/Loop bodies carry their own
    value_info)."""
    from ..stats import shape_skeleton

    try:
        inferred = onnx.shape_inference.infer_shapes(shape_skeleton(model), data_prop=True)
    except Exception as exc:
        log.debug("shape inference failed: %s", exc)
        return model
    g, ig = model.graph, inferred.graph
    moved = {i.name for i in ig.input} - {i.name for i in g.input}  # weights the skeleton typed as inputs
    for repeated, items in ((g.value_info, [v for v in ig.value_info if v.name not in moved]), (g.output, ig.output), (g.node, ig.node)):
        items = list(items)
        del repeated[:]
        repeated.extend(items)
    return model


def gemm_to_matmul(model: onnx.ModelProto, only: set[str] | None = None) -> list[str]:
    """Rewrite ``Gemm`` nodes with constant B and transA=0 as MatMul (+ Add), in place.

    ``Y = alpha * A @ op(B) + beta * C`` becomes ``MatMul(A, alpha * op(B))`` named like the
    Gemm, then ``Add(., beta * C)`` named ``<gemm>/bias`` when C is present.  Returns the
    names of the Gemm nodes rewritten.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    graph_inputs = {i.name for i in g.input}
    taken = {t.name for t in g.initializer} | {x for n in g.node for x in list(n.input) + list(n.output)} | graph_inputs
    new_nodes, done = [], []
    for n in g.node:
        if n.op_type != "Gemm" or n.domain not in ("", "ai.onnx") or (only is not None and n.name not in only):
            new_nodes.append(n)
            continue
        at = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        b_name = n.input[1]
        c_name = n.input[2] if len(n.input) > 2 and n.input[2] else ""
        alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
        unusable_c = c_name and (c_name in graph_inputs or (beta != 1.0 and c_name not in inits))
        if at.get("transA", 0) or b_name not in inits or b_name in graph_inputs or unusable_c:
            new_nodes.append(n)
            continue
        b = oio.tensor_array(inits[b_name])
        if b.dtype.kind != "f":
            new_nodes.append(n)
            continue
        if at.get("transB", 0):
            b = b.T
        if alpha != 1.0:
            b = b * np.asarray(alpha, dtype=b.dtype)
        w = numpy_helper.from_array(np.ascontiguousarray(b), unique_name(f"{b_name}_matmul", taken))
        g.initializer.append(w)
        out = n.output[0]
        mm_out = unique_name(f"{out}_matmul", taken) if c_name else out
        new_nodes.append(helper.make_node("MatMul", [n.input[0], w.name], [mm_out], name=n.name))
        if c_name:
            bias = c_name
            if beta != 1.0:
                c = oio.tensor_array(inits[c_name]) * np.asarray(beta, dtype=b.dtype)
                ct = numpy_helper.from_array(np.ascontiguousarray(c), unique_name(f"{c_name}_scaled", taken))
                g.initializer.append(ct)
                bias = ct.name
            new_nodes.append(helper.make_node("Add", [mm_out, bias], [out], name=unique_name(f"{n.name}/bias", taken)))
        done.append(n.name)
    if done:
        del g.node[:]
        g.node.extend(new_nodes)
        remove_unused(model)
    return done


def _large(model: onnx.ModelProto) -> bool:
    """Whether ``model`` takes the large-model path (weights left in their files, or at
    least ``io.LARGE_MODEL_BYTES`` of them)."""
    return oio.is_lazy(model) or oio.model_nbytes(model) >= oio.LARGE_MODEL_BYTES


# Step 5, in order: (count key, what, function returning (model, count, notes)).
_FUSIONS = (
    ("layernorms_fused", "{n} layer norm(s) fused", fuse_layernorms),
    ("gelus_fused", "{n} GELU(s) fused", fuse_gelus),
    ("conv_affines_folded", "{n} scale(s)/shift(s) folded into Conv", fold_conv_affines),
    ("hardswishes_fused", "{n} hard swish(es) fused", fuse_hardswishes),
)


def prepare(model: onnx.ModelProto, *, use_ort_preprocess: bool = True, opset: int = TARGET_OPSET, check=None) -> Prepared:
    """Steps 1-7 of the module docstring on a copy of ``model``.

    ``check(candidate, label, limit) -> str | None`` (None: accepted; ``limit`` the relative
    L2 the outputs may move by) verifies intermediate results; the fused layer norms and the
    ORT pre-processed model are kept only when they pass, the own steps' result is returned
    otherwise (and the caller verifies it again, within ``Prepared.limit``).
    """
    work = copy.deepcopy(model)
    counts: dict = {}
    notes: list[str] = []
    # first, so that generated names are those of the input's nodes (``node_names(model)``)
    counts["nodes_named"] = name_nodes(work)
    counts["constants_converted"] = constants_to_initializers(work)
    try:
        counts["nodes_folded"], more = fold_constants(work)
        notes.extend(more[:3])
    except OnnxoptError as exc:
        notes.append(f"constant folding skipped: {exc}")
    counts["weights_materialized"], more = materialize_weights(work)
    notes.extend(more[:3])
    counts["nodes_named"] += name_nodes(work)  # nodes the folding added without a name
    work, note = upgrade_opset(work, opset)
    if note:
        notes.append(note)
    limit = EXACT_REL_L2
    fused, done, more = work, {}, []
    for key, _, fuse in _FUSIONS:
        fused, done[key], said = fuse(fused)
        more.extend(said)
    notes.extend(more[:3])
    if any(done.values()):
        what = ", ".join(label.format(n=done[key]) for key, label, _ in _FUSIONS if done[key])
        why = check(fused, f"model with {what}", REASSOCIATED_REL_L2) if check is not None else None
        if why:
            notes.append(f"{what}, dropped: {why}")
        else:
            work, limit = fused, REASSOCIATED_REL_L2
            counts.update(done)
            name_nodes(work)
    if use_ort_preprocess and _large(work):
        # quant_pre_process saves, reloads (every weight in memory) and hands back a new
        # proto: several copies of a model whose weights onnxopt leaves in their files
        notes.append(f"ORT quant_pre_process skipped: model of {oio.model_nbytes(work) / 2**20:.0f} MiB of weights (large-model path)")
    elif use_ort_preprocess:
        big = oio.exceeds_protobuf(work, margin=2**26)
        with tempfile.TemporaryDirectory(prefix="onnxopt-qprep-") as tmp:
            # ORT reads the model from a file and holds several copies of it while it runs:
            # ours waits in that file meanwhile (one copy less at the peak of ``optimize``
            # on a 68 MB encoder), read back if ORT's result is not kept
            src = oio.save_model(work, Path(tmp) / "in.onnx", external_data=True)
            work = None
            pre, note = ort_pre_process(src, big=big)
            if pre is not None and check is not None:
                why = check(pre, "ORT quant_pre_process result", limit)
                if why:
                    pre, note = None, f"ORT quant_pre_process result rejected: {why}"
            notes.append(note)
            if pre is not None:
                name_nodes(pre)
                work = pre
                counts["ort_pre_process"] = True
            else:
                work = oio.load_model(src)
    work = infer_shapes(work)
    return Prepared(work, counts, notes, limit)
