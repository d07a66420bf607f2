"""The one place that builds the ``onnxopt diagnose ...`` command other commands' errors end
with, and the INT8-speed note that names the CPU's missing instruction set."""

from __future__ import annotations

import os
import shlex

import onnx

__all__ = ["diagnose_hint", "int8_speed_note"]


def _arg(x) -> str | None:
    """A path (or a Dataset's source file) quoted for a shell; None for what has no path."""
    if isinstance(x, (str, os.PathLike)):
        return shlex.quote(os.fspath(x))
    source = getattr(x, "source", None)  # a Dataset read from a file
    return shlex.quote(source) if isinstance(source, str) and source and not source.startswith("<") else None


def diagnose_hint(*models, recipe=None, data=None, flag: str | None = None) -> str:
    """``"; explain: onnxopt diagnose A B --data D"`` for models given as paths ("" when a
    model is only in memory: no command can name it).  ``recipe``: ``--recipe R MODEL``;
    ``flag``: e.g. ``--fp16`` or ``--ort-optimizers`` for a one-model diagnosis."""
    args = [_arg(m) for m in models]
    if not args or any(a is None for a in args):
        return ""
    parts = ["onnxopt diagnose"]
    if recipe is not None:
        parts += ["--recipe", _arg(recipe) or str(recipe)]
    if flag:
        parts.append(flag)
    parts += args
    if _arg(data):
        parts += ["--data", _arg(data)]
    return "; explain: " + " ".join(parts)


def int8_speed_note(model: onnx.ModelProto) -> str:
    """Why INT8 may be slower here: "" unless ``model`` runs ConvInteger/MatMulInteger on a CPU
    without VNNI (ONNX Runtime then has no fast INT8 dot product for them)."""
    from ..bench.environment import cpu_isa

    ops = {n.op_type for n in model.graph.node}
    if cpu_isa().get("vnni") or cpu_isa().get("arm_dotprod"):
        return ""
    slow = [(op, fp) for op, fp in (("ConvInteger", "Conv"), ("MatMulInteger", "MatMul")) if op in ops]
    return f"no VNNI: dynamic INT8 {slow[0][1]} runs as {slow[0][0]}, slower than FP32 here" if slow else ""
