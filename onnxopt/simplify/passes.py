"""Simplification passes (all exact: outputs within 1e-4 relative L2 of the input)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import onnx

from ..core.passes import Context, Pass, PassResult
from ..core.pipeline import interface_change
from ..errors import OnnxoptError
from ..io import exceeds_protobuf
from ..runtime import run_dataset
from ..verify import REASSOCIATED_REL_L2, check_model, compare_outputs, frozen_dims
from .constants import constants_to_initializers
from .conv_affine import fold_conv_affines
from .dead import remove_unused
from .dedupe import dedupe_initializers
from .fold import fold_constants
from .gelu import fuse_gelus
from .hardswish import fuse_hardswishes
from .layernorm import fuse_layernorms
from .onnxsim_runner import run_onnxsim

__all__ = [
    "ConstantsToInitializersPass",
    "RemoveUnusedPass",
    "DedupeInitializersPass",
    "FoldConstantsPass",
    "InferShapesPass",
    "SimplifyPass",
]

log = logging.getLogger(__name__)


class ConstantsToInitializersPass(Pass):
    """Turn Constant nodes into initializers (what ORT's quantizer and the other passes expect)."""

    key = "constants-to-initializers"

    def call(self, model, ctx):
        n = constants_to_initializers(model)
        return self.result(model, n > 0, counts={"constants_converted": n})


class RemoveUnusedPass(Pass):
    """Remove dead nodes, unused initializers, stale value_info and unused local functions."""

    key = "remove-unused"

    def call(self, model, ctx):
        counts = remove_unused(model)
        return self.result(model, any(counts.values()), counts={f"{k}_removed": v for k, v in counts.items()})


class DedupeInitializersPass(Pass):
    """Store identical initializers once (same dtype, shape and bytes)."""

    key = "dedupe-initializers"

    def call(self, model, ctx):
        n = dedupe_initializers(model)
        return self.result(model, n > 0, counts={"initializers_merged": n})


class FoldConstantsPass(Pass):
    """Fold nodes whose inputs are all constants (ONNX reference evaluator); no file bloat."""

    key = "fold-constants"

    @dataclass
    class Config:
        max_bytes: int = 16 * 2**20

        def check(self):
            return "max_bytes must be positive" if self.max_bytes <= 0 else None

    def call(self, model, ctx):
        constants_to_initializers(model)
        n, notes = fold_constants(model, self.config.max_bytes)
        remove_unused(model)
        return self.result(model, n > 0, counts={"nodes_folded": n}, notes=notes)


class InferShapesPass(Pass):
    """Store inferred shapes in value_info (helps ORT's quantizer and later passes)."""

    key = "infer-shapes"

    def call(self, model, ctx):
        if exceeds_protobuf(model, margin=2**26):
            return self.result(model, False, notes=["model over 2 GB: shape inference skipped"])
        try:
            out = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception as exc:
            return self.result(model, False, notes=[f"shape inference failed: {' '.join(str(exc).split())[:200]}"])
        added = len(out.graph.value_info) - len(model.graph.value_info)
        return self.result(out, added > 0, counts={"value_info_added": max(added, 0)})


class _RewritePass(Pass):
    """A pass around a graph rewrite ``rewrite(model) -> (model, count, notes)`` (the fusions
    and folds below): modified when it rewrote something, ``counts[counted]`` how much."""

    rewrite = None
    counted = ""

    def call(self, model, ctx):
        out, n, notes = self.rewrite(model)
        return self.result(out, n > 0, counts={self.counted: n}, notes=notes)


class FuseLayerNormPass(_RewritePass):
    """Fuse layer norms written as elementwise ops into one LayerNormalization (opset 17).

    What is matched, and why it matters for static INT8: ``onnxopt.simplify.layernorm``.  The
    fused kernel rounds differently from the decomposition (one float pass where the exporter's
    reductions sum pairwise), so the outputs are held to ``REASSOCIATED_REL_L2`` (1e-3
    relative L2), not 1e-4; each layer norm not fused says why in the notes.
    """

    key = "fuse-layernorm"
    limit = REASSOCIATED_REL_L2

    rewrite = staticmethod(fuse_layernorms)
    counted = "layernorms_fused"


class FuseGeluPass(_RewritePass):
    """Fuse GELUs written as elementwise ops into ONNX Runtime's FastGelu / Gelu.

    What is matched: ``onnxopt.simplify.gelu`` (the tanh approximation and the erf form, the
    constants folded anywhere).  The outputs are held to ``REASSOCIATED_REL_L2``, the kernel
    rounding in another order; each ``Tanh`` / ``Erf`` not fused says why in the notes.
    """

    key = "fuse-gelu"
    limit = REASSOCIATED_REL_L2

    rewrite = staticmethod(fuse_gelus)
    counted = "gelus_fused"


class FoldConvAffinePass(_RewritePass):
    """Fold scales and shifts by constants after a Conv into its weight and bias.

    What is matched and why ORT's own fusions miss it: ``onnxopt.simplify.conv_affine``; each
    such op not folded says why in the notes.
    """

    key = "fold-conv-affine"

    rewrite = staticmethod(fold_conv_affines)
    counted = "ops_folded"


class FuseHardSwishPass(_RewritePass):
    """Fuse hard swishes written as elementwise ops into one HardSwish (opset 14).

    What is matched: ``onnxopt.simplify.hardswish``.  The outputs are held to
    ``REASSOCIATED_REL_L2``; each ``Clip`` of ``x + 3`` not fused says why in the notes.
    """

    key = "fuse-hardswish"
    limit = REASSOCIATED_REL_L2

    rewrite = staticmethod(fuse_hardswishes)
    counted = "hardswishes_fused"


def own_simplify(model: onnx.ModelProto, max_fold_bytes: int) -> tuple[dict, list[str]]:
    """onnxopt's own simplification in place: constants, folding, dedupe, dead code."""
    counts = {"constants_converted": constants_to_initializers(model)}
    folded, notes = fold_constants(model, max_fold_bytes)
    counts["nodes_folded"] = folded
    counts["initializers_merged"] = dedupe_initializers(model)
    dead = remove_unused(model)
    counts.update({f"{k}_removed": v for k, v in dead.items()})
    return counts, notes


class SimplifyPass(Pass):
    """Simplify with onnxsim, falling back to onnxopt's own passes; never worse than unchanged.

    Each candidate (onnxsim + cleanup, then onnxopt's own passes) must pass the checker,
    load in ONNX Runtime and match the input within 1e-4 relative L2 on the context's
    inputs; the first that does is returned, else the input unchanged with the reasons.
    """

    key = "simplify"

    @dataclass
    class Config:
        onnxsim: bool = True
        max_fold_bytes: int = 16 * 2**20

        def check(self):
            return "max_fold_bytes must be positive" if self.max_fold_bytes <= 0 else None

    def call(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        notes: list[str] = []
        reference = None
        feeds = None
        try:
            feeds = ctx.inputs_for(model)
            reference = run_dataset(model, feeds, provider=ctx.provider, limit=64)
        except OnnxoptError as exc:
            notes.append(f"input model not runnable for self-check ({exc}); candidates checked structurally only")
        names = [o.name for o in model.graph.output]

        def accept(candidate: onnx.ModelProto, label: str) -> bool:
            try:
                check_model(candidate, provider=ctx.provider, label=label)
                problem = interface_change(model, candidate) or frozen_dims(model, candidate, fixed=set(ctx.fixed_shapes or ()))
                if problem:
                    notes.append(f"{label} rejected: {problem}")
                    return False
                if reference is not None:
                    new = run_dataset(candidate, feeds, provider=ctx.provider, limit=64)
                    comp = compare_outputs(names, reference, new)
                    bad = comp.inexact()
                    if bad:
                        notes.append(f"{label} rejected: output '{bad[0].name}' off by {bad[0].rel_l2:.3g} relative L2")
                        return False
                return True
            except OnnxoptError as exc:
                notes.append(f"{label} rejected: {exc}")
                return False

        if self.config.onnxsim:
            sim, why = run_onnxsim(model, max_fold_bytes=self.config.max_fold_bytes)
            if why:
                notes.append(why)
            if sim is not None:
                counts, more = own_simplify(sim, self.config.max_fold_bytes)
                if accept(sim, "onnxsim result"):
                    counts["engine"] = "onnxsim"
                    notes.extend(more)
                    return self.result(sim, _changed(model, sim), counts=counts, notes=notes)
        own = copy.deepcopy(model)
        counts, more = own_simplify(own, self.config.max_fold_bytes)
        notes.extend(more)
        if accept(own, "onnxopt passes result"):
            counts["engine"] = "onnxopt"
            return self.result(own, _changed(model, own), counts=counts, notes=notes)
        notes.append("no simplification verified; model returned unchanged")
        return self.result(model, False, counts={"engine": "none"}, notes=notes)


def _changed(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    return a.SerializeToString(deterministic=True) != b.SerializeToString(deterministic=True)
