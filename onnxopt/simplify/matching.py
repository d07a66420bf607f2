"""What the pattern matchers of the fusion passes share (``layernorm``, ``gelu``,
``hardswish``): the refusal that carries its reason, the tolerance on constants, and the
opset a fused op needs."""

from __future__ import annotations

import copy

import onnx

from ..graph import default_opset
from .opset import upgrade_opset

__all__ = ["RTOL", "NoMatch", "close", "at_opset"]

RTOL = 1e-4  # a constant of the pattern matches within this relative tolerance


class NoMatch(Exception):
    """The nodes are not the pattern; the message says why (it goes to the pass's notes)."""


def close(a: float, b: float) -> bool:
    return abs(a - b) <= RTOL * abs(b)


def at_opset(model: onnx.ModelProto, target: int, op: str, what: str, notes: list[str]) -> onnx.ModelProto | None:
    """A copy of ``model`` to fuse ``what`` (e.g. "3 layer norm(s)") into ``op`` in, with the
    default-domain opset converted to ``target`` when below it (a line in ``notes`` says
    so); None, with the reason in ``notes``, when the version converter fails."""
    before = default_opset(model)
    if before >= target:
        return copy.deepcopy(model)
    converted, note = upgrade_opset(model, target)
    if converted is model:
        notes.append(f"{what} found but not fused: {note}")
        return None
    notes.append(f"opset {before} converted to {target} ({op})")
    return converted
