"""The pass registry: one explicit table of every pass recipes and the CLI may name.

Rows are ``key -> "module:Class"``; classes are imported on first use, so importing the
registry has no side effects and ``onnxopt --help`` stays instant.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import RecipeError

__all__ = ["PASSES", "PassInfo", "pass_class", "pass_infos", "make_pass"]

# key -> "module:Class".  Add a row per pass; keep keys kebab-case.
PASSES: dict[str, str] = {
    "simplify": "onnxopt.simplify.passes:SimplifyPass",
    "fold-constants": "onnxopt.simplify.passes:FoldConstantsPass",
    "constants-to-initializers": "onnxopt.simplify.passes:ConstantsToInitializersPass",
    "remove-unused": "onnxopt.simplify.passes:RemoveUnusedPass",
    "dedupe-initializers": "onnxopt.simplify.passes:DedupeInitializersPass",
    "infer-shapes": "onnxopt.simplify.passes:InferShapesPass",
    "fuse-layernorm": "onnxopt.simplify.passes:FuseLayerNormPass",
    "fuse-gelu": "onnxopt.simplify.passes:FuseGeluPass",
    "fuse-hardswish": "onnxopt.simplify.passes:FuseHardSwishPass",
    "fold-conv-affine": "onnxopt.simplify.passes:FoldConvAffinePass",
    "fix-shapes": "onnxopt.simplify.fix_shapes:FixShapesPass",
    "prune-magnitude": "onnxopt.prune.passes:PruneMagnitudePass",
    "prune-channels": "onnxopt.prune.passes:PruneChannelsPass",
    "prune-blocks": "onnxopt.prune.passes:PruneBlocksPass",
    "quantize": "onnxopt.quantize.passes:QuantizePass",
    "transformer-fusion": "onnxopt.quantize.transformer:TransformerFusionPass",
    "smooth-quant": "onnxopt.quantize.smooth:SmoothQuantPass",
    "equalize": "onnxopt.quantize.cle:EqualizePass",
    "fp16": "onnxopt.optimize.fp16:Fp16Pass",
    "session-options": "onnxopt.serving.passes:SessionOptionsPass",
}


@dataclass(frozen=True)
class PassInfo:
    key: str
    target: str
    needs: tuple[str, ...]
    exact: bool
    help: str


def pass_class(key: str):
    try:
        target = PASSES[key]
    except KeyError:
        raise RecipeError(f"unknown step '{key}' (known: {', '.join(sorted(PASSES))})") from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def pass_infos() -> list[PassInfo]:
    infos = []
    for key in sorted(PASSES):
        cls = pass_class(key)
        infos.append(PassInfo(key, PASSES[key], tuple(cls.needs), bool(cls.exact), cls.help()))
    return infos


def make_pass(key: str, params: dict | None = None, *, where: str | None = None, error=RecipeError):
    """Instantiate the pass ``key`` with ``params`` (validated; errors name ``where``)."""
    cls = pass_class(key)
    return cls(_where=where or f"step '{key}'", _error=error, **(params or {}))
