"""Why a variant is slower: ONNX Runtime's profiler on both models, kernel time grouped.

Each model runs ``runs`` times (after one warm-up run) on the same feed with
``SessionOptions.enable_profiling``; the JSON trace's ``Node`` events named
``<node>_kernel_time`` are summed per node and per op type and divided by the runs.  The
diff lists op types by time added and explains what a user can act on:

- QuantizeLinear / DequantizeLinear kernels that ran on their own: Q/DQ pairs ONNX Runtime
  did not fuse into a QLinear* kernel;
- ``ConvInteger`` / ``MatMulInteger`` (dynamic INT8) on a CPU without VNNI;
- ``DynamicQuantizeLinear``: activations quantized at run time;
- Cast kernels the reference does not have (inserted by an FP16 or INT8 conversion);
- nodes that ran on another execution provider than the reference's.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelError
from ..runtime import create_session

__all__ = ["Profile", "ProfileDiff", "parse_trace", "profile_model", "diff_profiles"]

log = logging.getLogger(__name__)

_SUFFIX = "_kernel_time"


@dataclass
class Profile:
    """Mean kernel microseconds per run, per node and per op type; provider per node."""

    runs: int
    per_node: dict[str, float] = field(default_factory=dict)
    per_op: dict[str, float] = field(default_factory=dict)
    count_op: dict[str, int] = field(default_factory=dict)
    op_of: dict[str, str] = field(default_factory=dict)
    provider_of: dict[str, str] = field(default_factory=dict)

    @property
    def total_us(self) -> float:
        return sum(self.per_op.values())

    def to_dict(self, top: int = 10) -> dict:
        nodes = sorted(self.per_node.items(), key=lambda kv: -kv[1])[:top]
        return {
            "runs": self.runs,
            "total_ms": self.total_us / 1e3,
            "per_op_ms": {k: v / 1e3 for k, v in sorted(self.per_op.items(), key=lambda kv: -kv[1])},
            "kernels_per_run": dict(self.count_op),
            "slowest_nodes": [{"node": k, "op": self.op_of.get(k, ""), "ms": v / 1e3, "provider": self.provider_of.get(k, "")} for k, v in nodes],
        }


def parse_trace(events: list[dict]) -> Profile:
    """Group an ORT profiler trace (its JSON list of events) per node and op type; the first
    run (warm-up: allocations, first-touch) is left out when there are several."""
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    skip_before = starts[1] if len(starts) > 1 else None
    runs = max(len(starts) - (1 if skip_before is not None else 0), 1)
    prof = Profile(runs)
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith(_SUFFIX) or (skip_before is not None and e.get("ts", 0) < skip_before):
            continue
        node = name[: -len(_SUFFIX)]
        args = e.get("args", {})
        op = args.get("op_name", "?")
        dur = float(e.get("dur", 0)) / runs
        prof.per_node[node] = prof.per_node.get(node, 0.0) + dur
        prof.per_op[op] = prof.per_op.get(op, 0.0) + dur
        prof.count_op[op] = prof.count_op.get(op, 0) + 1
        prof.op_of[node] = op
        prof.provider_of[node] = args.get("provider", "")
    prof.count_op = {k: max(1, round(v / runs)) for k, v in prof.count_op.items()}
    return prof


def profile_model(model, feed: dict, *, runs: int = 10, provider: str = "cpu") -> Profile:
    """Profile ``model`` (path or proto) on ``feed``: one warm-up run, then ``runs`` runs."""
    with tempfile.TemporaryDirectory(prefix="onnxopt-profile-") as tmp:
        sess = create_session(model, provider, profile_prefix=str(Path(tmp) / "trace"), error=ModelError)
        for _ in range(runs + 1):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    return parse_trace(events)


@dataclass
class ProfileDiff:
    reference: Profile
    candidate: Profile
    rows: list[dict]
    explanations: list[str]
    isa: dict

    def to_dict(self) -> dict:
        return {
            "reference": self.reference.to_dict(),
            "candidate": self.candidate.to_dict(),
            "ratio": self.candidate.total_us / self.reference.total_us if self.reference.total_us else None,
            "per_op": self.rows,
            "explanations": self.explanations,
            "cpu_isa": self.isa,
        }


def _ms(us: float) -> str:
    return f"{us / 1e3:.3g} ms"


def _explain(ref: Profile, cand: Profile, isa: dict) -> list[str]:
    total = cand.total_us or 1.0
    out = []

    def share(us: float) -> str:
        return f"{_ms(us)}, {100 * us / total:.0f}% of the candidate's kernel time"

    qdq = sum(cand.per_op.get(k, 0.0) for k in ("QuantizeLinear", "DequantizeLinear"))
    n_qdq = sum(cand.count_op.get(k, 0) for k in ("QuantizeLinear", "DequantizeLinear"))
    if n_qdq:
        out.append(
            f"{n_qdq} QuantizeLinear/DequantizeLinear kernel(s) ran on their own ({share(qdq)}): these Q/DQ pairs were not "
            "fused into QLinear* kernels (an op without an INT8 kernel, or a Q/DQ pair around a float op); leave those "
            "nodes in float (--exclude-nodes) or quantize their neighbours too"
        )
    for op, fp in (("ConvInteger", "Conv"), ("MatMulInteger", "MatMul")):
        us = cand.per_op.get(op, 0.0)
        if not us:
            continue
        ref_us = ref.per_op.get(fp, 0.0)
        vs = f" vs {_ms(ref_us)} for {fp} in the reference" if ref_us else ""
        fix = f"quantize {fp} statically (QDQ, --mode static --calibration DATA: fused into QLinear{fp}) or leave it in FP32 (--op-types without {fp})"
        if not isa.get("vnni") and not isa.get("arm_dotprod"):
            out.append(f"no VNNI: dynamic INT8 {fp} runs as {op} ({share(us)}{vs}), slower than FP32 here; {fix}")
        elif ref_us and us > ref_us:
            out.append(
                f"dynamic INT8 {fp} runs as {op} ({share(us)}{vs}): {us / ref_us:.1f}x the FP32 {fp} time even with VNNI on "
                f"this CPU (ONNX Runtime's {op} kernel is not its optimized path); {fix}"
            )
        else:
            out.append(f"{op} kernels took {share(us)}{vs}")
    dq = cand.per_op.get("DynamicQuantizeLinear", 0.0)
    if dq:
        out.append(
            f"{cand.count_op.get('DynamicQuantizeLinear', 0)} DynamicQuantizeLinear kernel(s) quantize activations at run "
            f"time ({share(dq)}); static quantization with --calibration removes them"
        )
    extra_casts = cand.count_op.get("Cast", 0) - ref.count_op.get("Cast", 0)
    if extra_casts > 0:
        out.append(
            f"{extra_casts} Cast kernel(s) the reference does not have ({share(cand.per_op.get('Cast', 0.0))}): conversions "
            "inserted between precisions; keep neighbouring nodes in one precision"
        )
    ref_providers = set(ref.provider_of.values())
    moved = {n: p for n, p in cand.provider_of.items() if p and ref_providers and p not in ref_providers}
    if moved:
        us = sum(cand.per_node.get(n, 0.0) for n in moved)
        provs = ", ".join(sorted(set(moved.values())))
        out.append(
            f"{len(moved)} node(s) ran on {provs}, not on the reference's {', '.join(sorted(ref_providers))} ({share(us)}): "
            "ops without a kernel for that provider or precision"
        )
    return out


def diff_profiles(ref: Profile, cand: Profile, isa: dict) -> ProfileDiff:
    """Per op type: reference ms, candidate ms, added ms (largest first), plus explanations."""
    rows = [
        {
            "op": op,
            "reference_ms": ref.per_op.get(op, 0.0) / 1e3,
            "candidate_ms": cand.per_op.get(op, 0.0) / 1e3,
            "added_ms": (cand.per_op.get(op, 0.0) - ref.per_op.get(op, 0.0)) / 1e3,
            "reference_kernels": ref.count_op.get(op, 0),
            "candidate_kernels": cand.count_op.get(op, 0),
        }
        for op in set(ref.per_op) | set(cand.per_op)
    ]
    rows.sort(key=lambda r: -r["added_ms"])
    return ProfileDiff(ref, cand, rows, _explain(ref, cand, isa), isa)
