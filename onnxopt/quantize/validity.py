"""Validity of quantized candidates, with repair by per-node fallback.

A candidate is valid when it passes ``onnxopt.verify.check_model`` (ONNX checker, ORT
session on the provider), runs on a sample feed, and has no NaN/Inf where the FP32 model
has none.  ONNX Runtime's quantizer is known to produce graphs that fail this, e.g.

- per-channel QDQ on an opset < 13 model: ``DequantizeLinear`` gets an ``axis`` attribute
  its opset does not define (the checker rejects it);
- per-channel QOperator ``MatMul`` with a 3-D weight: the model loads but
  ``QLinearMatMul`` refuses the per-channel zero point at run time;
- per-channel QDQ ``ConvTranspose`` with ``group > 1``: the quantizer itself crashes.

``build_valid`` repairs instead of giving up: it finds the offending nodes (names in the
error message or in the quantizer's traceback, else by bisection over the quantized nodes
with ``nodes_to_quantize``) and falls back for those nodes only: per-tensor when the
candidate is per-channel and the format allows it, else the node stays in float.  Every
fallback is reported with its reason.  A candidate that cannot be repaired within the
build budget raises ``VerificationError``; nothing invalid is ever returned.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from ..errors import OnnxoptError, VerificationError
from ..verify import check_model
from .ort_backend import QuantizerFailure

__all__ = ["Fallback", "validate_candidate", "culprits_in", "build_valid"]

log = logging.getLogger(__name__)

Builder = Callable[[frozenset, frozenset, frozenset | None], onnx.ModelProto]


@dataclass
class Fallback:
    """One node repaired: ``action`` is ``per-tensor`` or ``float`` (left unquantized)."""

    node: str
    op_type: str
    action: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def validate_candidate(
    model: onnx.ModelProto, *, provider: str = "cpu", feed: dict | None = None, reference: list | None = None, keep: Callable | None = None
) -> str | None:
    """None when ``model`` is valid, else the reason (one line).  ``keep(model, session)``:
    handed the session the check loaded when the model is valid (the caller runs it next
    instead of loading the model again)."""
    try:  # the session the check loads runs the feed too (one session per candidate build); the strict
        # shape-inference pass is left to the final model's verification (it cost a third of a trial on a 65 MB encoder)
        sess = check_model(model, provider=provider, error=VerificationError, keep_session=feed is not None or keep is not None, strict=False).session
    except OnnxoptError as exc:
        return str(exc)
    if feed is None:
        if keep is not None:
            keep(model, sess)
        return None
    try:
        import onnxruntime as ort

        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # the failure is reported here, not on stderr
        outs = sess.run(None, feed, quiet)
    except Exception as exc:
        return "onnxruntime failed to run it: " + " ".join(str(exc).split())[:300]
    for i, o in enumerate(outs):
        o = np.asarray(o)
        if o.dtype.kind != "f":
            continue
        bad = ~np.isfinite(o)
        if reference is not None and i < len(reference):
            bad &= np.isfinite(np.asarray(reference[i]))
        if bad.any():
            return f"output {i} has NaN/Inf where the FP32 model has none"
    if keep is not None:
        keep(model, sess)
    return None


_TOKENS = re.compile(r"Name:\s*'?([^'\s,]+)'?|'([^']+)'|\"([^\"]+)\"")


def culprits_in(text: str, extra_names: set[str], node_tensors: dict[str, set[str]]) -> set[str]:
    """Candidate nodes named in an error message (or in ``extra_names``).

    A token matches a node when it is the node's name or one of its weight names, or starts
    with one of those followed by ``_`` (ORT names derived nodes ``<node>_quant``,
    ``<weight>_DequantizeLinear``).
    """
    tokens = set(extra_names) | {next(g for g in m.groups() if g) for m in _TOKENS.finditer(text or "")}

    def named(keys: set[str]) -> bool:
        return any(t in keys or any(t.startswith(k + "_") for k in keys if k) for t in tokens)

    return {node for node, tensors in node_tensors.items() if named({node} | tensors)}


def build_valid(
    build: Builder,
    candidates: list[str],
    *,
    validate: Callable[[onnx.ModelProto], str | None],
    node_tensors: dict[str, set[str]],
    op_types: dict[str, str],
    per_channel: bool,
    can_per_tensor: bool,
    exclude: frozenset = frozenset(),
    max_builds: int = 32,
    label: str = "candidate",
) -> tuple[onnx.ModelProto, list[Fallback]]:
    """Build a valid quantized model, falling back per node where needed.

    ``build(exclude, per_tensor, only)`` returns a quantized model (or raises
    ``QuantizerFailure``); ``candidates`` are the nodes the quantizer may touch,
    ``node_tensors`` their weight names (to read error messages), ``op_types`` their types.
    """
    excluded, per_tensor = set(exclude), set()
    fallbacks: list[Fallback] = []
    builds = 0

    def attempt(only: frozenset | None):
        nonlocal builds
        builds += 1
        try:
            q = build(frozenset(excluded), frozenset(per_tensor), only)
        except QuantizerFailure as exc:
            return None, str(exc), exc.names
        return q, validate(q), set()

    def isolate(nodes: list[str]) -> list[str]:
        """Nodes that fail on their own (bisection); a failing group whose halves both pass
        is returned whole (an interaction the quantizer cannot build)."""
        if not nodes or attempt(frozenset(nodes))[1] is None:
            return []
        if len(nodes) == 1 or builds >= max_builds:
            return nodes
        mid = len(nodes) // 2
        found = isolate(nodes[:mid]) + isolate(nodes[mid:])
        return found or nodes

    while True:
        q, reason, names = attempt(None)
        if reason is None:
            return q, fallbacks
        if builds >= max_builds:
            break
        active = [c for c in candidates if c not in excluded]
        named = culprits_in(reason, names, {c: node_tensors.get(c, set()) for c in active})
        bad = [c for c in active if c in named] or isolate(active)
        if not bad:
            break
        log.info("%s: repairing %d node(s): %s", label, len(bad), reason)
        for node in bad:
            weighted = op_types.get(node) in ("Conv", "ConvTranspose", "Gemm", "MatMul")
            action = "per-tensor" if per_channel and can_per_tensor and weighted and node not in per_tensor else "float"
            if action == "per-tensor":
                per_tensor.add(node)
            else:
                excluded.add(node)
                per_tensor.discard(node)
            fallbacks.append(Fallback(node, op_types.get(node, "?"), action, reason[:300]))
    raise VerificationError(f"{label}: no valid quantized model after {builds} attempts ({len(fallbacks)} node fallbacks): {reason}")
