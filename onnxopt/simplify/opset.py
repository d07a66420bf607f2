"""The default-domain opset raised with ONNX's version converter, for passes whose ops are
newer than the model's (``LayerNormalization`` 17, ``HardSwish`` 14; static quantization's
per-channel ``DequantizeLinear`` 13)."""

from __future__ import annotations

import copy

import onnx
from onnx import version_converter

from ..graph import default_opset, replace_repeated

__all__ = ["upgrade_opset"]


def upgrade_opset(model: onnx.ModelProto, target: int) -> tuple[onnx.ModelProto, str | None]:
    """Convert a default-domain opset below ``target`` with ONNX's version converter.

    Returns ``(model, note)``; on failure the input model and the reason.
    """
    cur = default_opset(model)
    if cur >= target or cur == 0:
        return model, None
    work = copy.deepcopy(model)
    if work.ir_version < 4:
        # IR < 4 lists initializers as inputs; newer IR keeps them apart (not overridable)
        inits = {t.name for t in work.graph.initializer}
        replace_repeated(work.graph.input, [i for i in work.graph.input if i.name not in inits])
        work.ir_version = 4
    try:
        out = version_converter.convert_version(work, target)
    except Exception as exc:
        return model, f"opset {cur} kept: the version converter failed ({' '.join(str(exc).split())[:160]})"
    out.ir_version = max(out.ir_version, 7)
    return out, f"opset {cur} -> {target}"
