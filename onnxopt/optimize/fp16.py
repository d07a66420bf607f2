"""FP16 conversion that keeps FP32 inputs/outputs and numerically sensitive ops in FP32.

What is converted: a node of the main graph runs in FP16 when its op is in ``FP16_OPS``
(ops with FP16 kernels in ONNX Runtime's CUDA provider that compute safely in half
precision), it has no subgraph, its name is not in ``keep_fp32`` and the types of all its
float inputs and outputs are known (after shape inference) to be FLOAT.  Every other node
stays FP32, in particular the numerically sensitive ones (``SENSITIVE_OPS``: reductions,
Softmax, Exp/Log/Pow/Sqrt/Reciprocal, CumSum, TopK, ...): reductions overflow or lose
mass in half precision and the exponentials saturate at 65504.

How: FLOAT initializers read by FP16 nodes get an FP16 copy (values clipped to the FP16
range, tiny magnitudes flushed to the nearest representable, as in ORT's own tool); a
tensor produced by an FP16 node is renamed ``NAME/fp16`` and, where anything FP32 still
reads ``NAME`` (an FP32 node, a subgraph, a graph output), a ``Cast`` to FLOAT writes the
original name back; FP32 tensors (graph inputs, FP32 node outputs) read by FP16 nodes go
through one shared ``Cast`` to FLOAT16.  Nodes keep their order, so the graph stays
topologically sorted; graph inputs and outputs keep their names and FP32 types.

Guarantees: the input model is not modified; the same input gives byte-identical output.
Refuses (``UnsupportedError``) when no node can run in FP16.

Why not ``onnxruntime.transformers.float16.convert_float_to_float16`` with these rules as its
``node_block_list`` (evaluated on onnxruntime 1.32 with ``keep_io_types=True``): it appends
its Casts after the nodes (the graph must be sorted again), types LayerNormalization's
Mean/InvStdDev outputs FLOAT16 (shape inference then rejects the model), and leaves an
If branch reading an outer-scope tensor it renamed (the model no longer loads); the cases
are tests in ``tests/optimize/test_fp16.py``.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..core.passes import Context, Pass, PassResult
from ..errors import UnsupportedError
from ..graph import default_opset, subgraphs, unique_name, used_names
from ..simplify.dead import remove_unused

__all__ = ["FP16_OPS", "SENSITIVE_OPS", "Fp16Report", "convert_to_fp16", "to_fp16_array", "Fp16Pass"]

log = logging.getLogger(__name__)

FP16_MIN_POSITIVE = 5.96e-08
FP16_MAX = 65504.0

# Ops that run in FP16 (default domain).  Matmul-like and conv ops accumulate in FP32 in
# cuBLAS/cuDNN; LayerNormalization and the com.microsoft fused ops accumulate in FP32 in ORT.
FP16_OPS = frozenset(
    {
        "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Relu", "LeakyRelu", "PRelu", "Elu", "Selu",
        "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Gelu", "Clip",
        "Conv", "ConvTranspose", "MatMul", "Gemm", "BatchNormalization", "LayerNormalization",
        "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
        "Concat", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather",
        "Split", "Identity", "Dropout", "Pad", "Where", "Expand", "Tile", "Resize",
    }
)  # fmt: skip
MS_FP16_OPS = frozenset({"Attention", "MultiHeadAttention", "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "FusedMatMul", "BiasAdd",
                         "EmbedLayerNormalization"})
# Kept in FP32 on purpose (documented in the report when present).
SENSITIVE_OPS = frozenset(
    {
        "ReduceSum", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
        "ReduceLogSumExp", "ReduceSumSquare", "Softmax", "LogSoftmax", "Exp", "Log", "Pow",
        "Sqrt", "Reciprocal", "CumSum", "TopK", "Range", "NonMaxSuppression", "RoiAlign",
        "InstanceNormalization", "GroupNormalization", "Einsum",
    }
)  # fmt: skip
# ops that read only their input's shape: they take an FP16 tensor as it is (no Cast back)
SHAPE_READERS = frozenset({"Shape", "Size"})
# inputs that keep type float whatever the node's type (op -> input indices): Resize's
# scales (input 2 from opset 11, input 1 in opset 10, where it has no roi input)
ALWAYS_FLOAT_INPUTS = {"Resize": (2,)}
# outputs typed FLOAT whatever the input type (the statistics of the normalizations: their
# type U is float for FP16 inputs too); they keep their names and stay FP32
FP32_OUTPUTS = {("", "LayerNormalization"): (1, 2), ("com.microsoft", "SkipLayerNormalization"): (1, 2)}
# EmbedLayerNormalization's first inputs are int32 ids; its float inputs follow the usual rule.


@dataclass
class Fp16Report:
    nodes_fp16: int = 0
    nodes_fp32: int = 0
    casts_added: int = 0
    initializers_converted: int = 0
    values_clipped: int = 0
    kept_fp32: dict = field(default_factory=dict)  # op_type -> count (reason: sensitive / unsupported)

    def to_dict(self) -> dict:
        return {**asdict(self), "kept_fp32": dict(sorted(self.kept_fp32.items()))}


def to_fp16_array(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """FP32 -> FP16 with magnitudes clipped into [5.96e-8, 65504] (zeros stay zero).

    Returns the array and how many values had to be clipped.
    """
    a = np.asarray(arr, dtype=np.float32)
    mag = np.abs(a)
    too_big = np.isfinite(a) & (mag > FP16_MAX)
    too_small = (mag > 0) & (mag < FP16_MIN_POSITIVE)
    out = np.where(too_big, np.sign(a) * FP16_MAX, a)
    out = np.where(too_small, np.sign(a) * FP16_MIN_POSITIVE, out)
    return out.astype(np.float16), int(too_big.sum() + too_small.sum())


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # fall back to what the model already declares
        log.debug("shape inference failed (%s); using declared types", exc)
        inferred = model
    g = inferred.graph
    values = [*g.input, *g.value_info, *g.output]
    types = {vi.name: vi.type.tensor_type.elem_type for vi in values if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}
    return {**types, **{t.name: t.data_type for t in g.initializer}}


def _domain(node: onnx.NodeProto) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _float_inputs(node: onnx.NodeProto, opset: int) -> tuple[int, ...]:
    """Input indices that stay FLOAT when ``node`` runs in FP16."""
    if _domain(node) == "" and node.op_type == "Resize" and opset < 11:
        return (1,)
    return ALWAYS_FLOAT_INPUTS.get(node.op_type, ()) if _domain(node) == "" else ()


def _fp32_outputs(node: onnx.NodeProto) -> tuple[int, ...]:
    """Output indices that stay FLOAT when ``node`` runs in FP16."""
    return FP32_OUTPUTS.get((_domain(node), node.op_type), ())



def _converts(node: onnx.NodeProto, types: dict[str, int], keep: set[str], opset: int = 0) -> tuple[bool, str]:
    if node.name and node.name in keep:
        return False, "kept by name"
    if any(True for _ in subgraphs(node)):
        return False, "has a subgraph"
    if node.domain in ("", "ai.onnx"):
        if node.op_type in SENSITIVE_OPS:
            return False, "numerically sensitive"
        if node.op_type not in FP16_OPS:
            return False, "no FP16 rule"
    elif node.domain == "com.microsoft":
        if node.op_type not in MS_FP16_OPS:
            return False, "no FP16 rule"
    else:
        return False, "custom domain"
    skip = _float_inputs(node, opset)
    ins = [types.get(x) for i, x in enumerate(node.input) if x and i not in skip]
    for t in ins:  # the first input that rules the node out decides the reason
        if t is None:
            return False, "input type unknown"
        if t in (TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16):
            return False, "non-FP32 float input"
    outs = [types.get(x) for x in node.output if x]
    if None in outs:
        return False, "output type unknown"
    return (True, "") if ins.count(TensorProto.FLOAT) + outs.count(TensorProto.FLOAT) else (False, "no float tensor")


def convert_to_fp16(model: onnx.ModelProto, *, keep_fp32: set[str] | None = None) -> tuple[onnx.ModelProto, Fp16Report]:
    """An FP16 copy of ``model`` (FP32 graph inputs/outputs kept); see the module docstring."""
    model = copy.deepcopy(model)
    types = _elem_types(model)
    opset = default_opset(model)
    rep = Fp16Report()
    plan = _plan(model.graph, types, set(keep_fp32 or ()), opset, rep)
    if not rep.nodes_fp16:
        raise UnsupportedError("no node can run in FP16 (no Conv/MatMul/Gemm/elementwise ops with known FLOAT types)")
    _Rewriter(model.graph, types, opset, rep).rewrite(plan)
    del model.graph.value_info[:]  # stale FP32 annotations; shape inference derives the new ones
    remove_unused(model)
    return model, rep


def _plan(g: onnx.GraphProto, types: dict[str, int], keep: set[str], opset: int, rep: Fp16Report) -> list[bool]:
    """Per node of ``g``: whether it runs in FP16; counts what stays FP32 and why in ``rep``."""
    plan = []
    half_made: set[str] = set()  # tensors an FP16 node will produce (nodes are in order)
    counted = ("numerically sensitive", "no FP16 rule", "custom domain", "has a subgraph", "kept by name")
    for n in g.node:
        shape_only = _domain(n) == "" and n.op_type in SHAPE_READERS and n.input and n.input[0] in half_made and not (n.name and n.name in keep)
        ok, why = (True, "") if shape_only else _converts(n, types, keep, opset)  # a shape reader takes the FP16 tensor as it is
        plan.append(ok)
        if ok:
            stay = _fp32_outputs(n)
            half_made.update(y for j, y in enumerate(n.output) if y and j not in stay and types.get(y) == TensorProto.FLOAT)
        elif why in counted:
            key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            rep.kept_fp32[key] = rep.kept_fp32.get(key, 0) + 1
    rep.nodes_fp16 = sum(plan)
    rep.nodes_fp32 = len(plan) - rep.nodes_fp16
    return plan


class _Rewriter:
    """Rewrites ``g`` in place for a plan: FP16 initializer copies, Casts in and out, FP16
    tensors renamed ``NAME/fp16`` (see the module docstring)."""

    def __init__(self, g: onnx.GraphProto, types: dict[str, int], opset: int, rep: Fp16Report):
        self.g, self.types, self.opset, self.rep = g, types, opset, rep
        self.taken = (
            {x for n in g.node for x in list(n.input) + list(n.output)}
            | {i.name for i in g.input}
            | {t.name for t in g.initializer}
            | {o.name for o in g.output}
        )
        self.inits = {t.name: t for t in g.initializer}
        self.graph_inputs = {i.name for i in g.input}
        self.half_name: dict[str, str] = {}  # FP32 tensor name -> its FP16 counterpart
        self.new_nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []

    def fp32_readers(self, plan: list[bool]) -> dict[str, int]:
        """Every FP32-side reader of a tensor: FP32 nodes (subgraph outer reads included),
        inputs that stay float in FP16 nodes, and graph outputs."""
        readers: dict[str, int] = defaultdict(int)
        for n, ok in zip(self.g.node, plan, strict=True):
            if ok:
                skip = _float_inputs(n, self.opset)
                reads = [x for i, x in enumerate(n.input) if x and i in skip]
            else:
                reads = {x for x in n.input if x}.union(*(used_names(sg) for sg in subgraphs(n)))
            for x in reads:
                readers[x] += 1
        for o in self.g.output:
            readers[o.name] += 1
        return readers

    def half_of(self, x: str) -> str:
        """The FP16 version of FP32 tensor ``x`` (initializer copy, or a Cast emitted now)."""
        if x in self.half_name:
            return self.half_name[x]
        name = unique_name(f"{x}/fp16", self.taken)
        if x in self.inits and x not in self.graph_inputs:
            arr, clipped = to_fp16_array(numpy_helper.to_array(self.inits[x]))
            self.new_inits.append(numpy_helper.from_array(arr, name))
            self.rep.initializers_converted += 1
            self.rep.values_clipped += clipped
        else:
            self.new_nodes.append(helper.make_node("Cast", [x], [name], name=unique_name(f"{x}/cast_fp16", self.taken), to=TensorProto.FLOAT16))
            self.rep.casts_added += 1
        self.half_name[x] = name
        return name

    def rewrite(self, plan: list[bool]) -> None:
        readers = self.fp32_readers(plan)
        for n, ok in zip(self.g.node, plan, strict=True):
            if not ok:
                self.new_nodes.append(n)
                continue
            skip = _float_inputs(n, self.opset)
            for i, x in enumerate(n.input):
                if x and i not in skip and self.types.get(x) == TensorProto.FLOAT:
                    n.input[i] = self.half_of(x)
            back = []
            stay = _fp32_outputs(n)
            for j, y in enumerate(n.output):
                if y and j not in stay and self.types.get(y) == TensorProto.FLOAT:
                    h = unique_name(f"{y}/fp16", self.taken)
                    n.output[j] = h
                    self.half_name[y] = h
                    if readers.get(y):
                        back.append(helper.make_node("Cast", [h], [y], name=unique_name(f"{y}/cast_fp32", self.taken), to=TensorProto.FLOAT))
            self.new_nodes.append(n)
            self.new_nodes.extend(back)
            self.rep.casts_added += len(back)
        del self.g.node[:]
        self.g.node.extend(self.new_nodes)
        self.g.initializer.extend(self.new_inits)


@dataclass
class _Fp16Config:
    keep_fp32: list[str] | None = None


class Fp16Pass(Pass):
    """FP16 weights and compute, FP32 inputs/outputs; sensitive ops and ``keep_fp32`` nodes stay FP32 (lossy).

    Meant for the CUDA provider.  ONNX Runtime's CPU provider runs the FP16 nodes it has no
    kernel for upcast to FP32, so a CPU run verifies the numbers but says nothing of the
    speed.  Refused (exit 3) when no node can run in FP16.
    """

    key = "fp16"
    exact = False
    idempotent = False
    Config = _Fp16Config

    def call(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        out, rep = convert_to_fp16(model, keep_fp32=set(self.config.keep_fp32 or ()))
        info = rep.to_dict()
        kept = info.pop("kept_fp32")
        notes = [f"kept in FP32: {', '.join(f'{k} x{v}' for k, v in kept.items())}"] if kept else []
        return self.result(out, True, counts=info, notes=notes, details={"kept_fp32": kept})
