"""The ``transformer-fusion`` pass: ONNX Runtime's transformer optimizer, verified.

``onnxruntime.transformers.optimizer.optimize_model`` (the maintained successor of
onnxruntime-tools) fuses BERT/GPT-2-like subgraphs into ORT's contrib ops (``Attention``,
``SkipLayerNormalization``, ``EmbedLayerNormalization``, ``BiasGelu``, ...).  Those
kernels compute the same functions as the subgraphs they replace, only the float rounding
differs, so the pass is registered as *exact*: it checks its own output (checker, ORT
session, outputs within 1e-4 relative L2 of the input on the context's inputs) and returns
the input unchanged, with the reason, when a fusion moves the outputs more than that.  The
fused model needs ONNX Runtime (``com.microsoft`` ops): other runtimes cannot load it.
Dynamic quantization afterwards turns ``Attention`` into ``QAttention``.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..core.passes import Context, Pass, PassResult
from ..errors import OnnxoptError
from ..io import exceeds_protobuf, save_model
from ..runtime import release_memory
from ..verify import EXACT_REL_L2, check_model, compare
from .ort_backend import capture_ort_logging, drop_unused_opsets

__all__ = ["MODEL_TYPES", "fuse_transformer", "TransformerFusionPass"]

log = logging.getLogger(__name__)

MODEL_TYPES = ("bart", "bert", "bert_keras", "bert_tf", "clip", "conformer", "gpt2", "gpt2_tf", "gpt_neox", "phi", "swin", "t5", "tnlr", "vit")


def fuse_transformer(
    model: onnx.ModelProto, *, model_type: str = "bert", num_heads: int = 0, hidden_size: int = 0, opt_level: int = 1, use_gpu: bool = False
) -> tuple[onnx.ModelProto, dict, list[str]]:
    """Run ORT's transformer optimizer; returns ``(model, fused op counts, notes)``.

    ``num_heads`` / ``hidden_size`` 0: detected from the graph.  ``opt_level`` 0: Python
    fusions only; 1: ORT's basic (provider-independent) optimizations first.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    notes: list[str] = []
    # handed a ModelProto, ORT's optimizer (opt_level >= 1) loads a copy whose big tensors
    # it has moved to external data from bytes, and fails; a file path works
    with tempfile.TemporaryDirectory(prefix="onnxopt-fuse-") as tmp, capture_ort_logging(notes):
        src = str(Path(tmp) / "in.onnx")
        big = exceeds_protobuf(model, margin=2**26)
        save_model(model, src, external_data=big)  # onnx.save would move ``model``'s weights out
        if opt_level >= 1:
            # ORT's basic optimizations, as optimize_model(opt_level=1) runs them, done here:
            # ORT's own helper imports torch (only to read its version) and fails without it
            src = _ort_basic_optimize(src, str(Path(tmp) / "basic.onnx"), big, use_gpu)
            release_memory()  # the session's pages go back before ORT's optimizer loads its copy
        opt = optimize_model(src, model_type=model_type, num_heads=num_heads, hidden_size=hidden_size, opt_level=0, use_gpu=use_gpu)
        stats = {k: int(v) for k, v in (opt.get_fused_operator_statistics() or {}).items() if v}
        opt.topological_sort()
        out = opt.model
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in out.graph.initializer):
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(out, tmp)
    del opt
    # ORT's optimizer objects reference each other: their copies of the model (its shape
    # inference helper's, 65 MB on an encoder) wait for the cycle collector without this
    release_memory()
    drop_unused_opsets(out)
    return out, stats, notes


def _ort_basic_optimize(src: str, dst: str, external: bool, use_gpu: bool) -> str:
    """``src`` after ONNX Runtime's basic (provider-independent) graph optimizations."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = dst
    so.log_severity_level = 3
    if external:
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", Path(dst).name + ".data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(src, so, providers=["CUDAExecutionProvider", "CPUExecutionProvider"] if use_gpu else ["CPUExecutionProvider"])
    return dst


@dataclass
class _FusionConfig:
    model_type: str = field(default="bert", metadata={"choices": MODEL_TYPES})
    num_heads: int = 0
    hidden_size: int = 0
    opt_level: int = field(default=1, metadata={"choices": (0, 1)})

    def check(self):
        return "num_heads and hidden_size must be >= 0 (0: detect)" if self.num_heads < 0 or self.hidden_size < 0 else None


class TransformerFusionPass(Pass):
    """Fuse attention / layer-norm / GELU subgraphs into ORT contrib ops (BERT, GPT-2, ...).

    Verified against its input (1e-4 relative L2); returns the input unchanged when ORT's
    optimizer fails, fuses nothing, or moves the outputs more than that.
    """

    key = "transformer-fusion"
    exact = True
    idempotent = True
    reads_only = True  # ORT's optimizer reads a file of the model and hands back its own

    Config = _FusionConfig

    def call(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        c = self.config
        notes: list[str] = []
        try:
            fused, stats, more = fuse_transformer(
                model, model_type=c.model_type, num_heads=c.num_heads, hidden_size=c.hidden_size, opt_level=c.opt_level, use_gpu=ctx.provider == "cuda"
            )
        except Exception as exc:  # ORT's optimizer raises assorted errors on unexpected graphs
            notes.append(f"ORT transformer optimizer failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); model unchanged")
            return self.result(model, False, notes=notes)
        notes.extend(more[:5])
        if not stats or _same(model, fused):
            notes.append(f"no {c.model_type} subgraph fused; model unchanged")
            return self.result(model, False, counts={"fused_ops": 0}, notes=notes)
        try:
            check_model(fused, provider=ctx.provider, label="fused model")
            comp = compare(model, fused, ctx.inputs_for(model), provider=ctx.provider, limit=64)
        except OnnxoptError as exc:
            notes.append(f"fused model rejected ({exc}); model unchanged")
            return self.result(model, False, notes=notes)
        bad = comp.inexact()
        if bad:
            notes.append(f"fused model rejected: output '{bad[0].name}' moved by {bad[0].rel_l2:.3g} relative L2 (limit {EXACT_REL_L2:g}); model unchanged")
            return self.result(model, False, notes=notes)
        counts = {"fused_ops": sum(stats.values()), **{f"fused_{k}": v for k, v in sorted(stats.items())}}
        return self.result(fused, True, counts=counts, notes=notes, details={"worst_rel_l2": comp.worst_rel_l2})


def _same(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    return [(n.op_type, n.domain) for n in a.graph.node] == [(n.op_type, n.domain) for n in b.graph.node]
