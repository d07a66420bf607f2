"""The ensemble merge as a source pass: N members -> one graph computing their fusion.

``MergeMembersPass`` loads the members, reconciles their opsets and matches their inputs and
the outputs fused (``merge``), fits the weights or the stacking head on labelled data
(``fit``) when asked, namespaces the members or fuses those of one architecture into a wider
network (``horizontal``), adds the fusion head (``heads``), stores identical weights once
(``share``) and drops what no output needs.  It is run as ``run_pipeline(None, [pass_])``:
its ``Expected`` is judged by the parity check (``parity.check_parity``: each member's
values inside the merged graph and each fused output against the members run separately and
fused in numpy), which ``core.check_expected`` calls once the merged model passed the
checker.  A mismatch raises ``VerificationError`` (exit 3).

What the caller's report needs but provenance must not hold (the loaded members, the built
model's value names, the fusion, the fit and parity arrays, the dataset) is in the step's
``PassReport.extras``: ``members`` (``Members``), ``built`` (``Built``), ``fusion``,
``fit_info``, ``fit_run``, ``parity``, ``arrays``, ``dataset``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ..core.passes import Context, Expected, Pass, PassResult
from ..data import dataset_for
from ..errors import DataError, InputError, UsageError, VerificationError, blame
from ..graph import FLOAT_TYPES, unique_name
from ..simplify.dead import remove_unused
from .fit import fit_stack_head, fit_weights, softmax
from .heads import Fusion, HeadIO, build_head, output_names
from .merge import (
    Member,
    assemble,
    dtype_name,
    load_members,
    match_inputs,
    merge_shapes,
    namespace_member,
    reconcile_opsets,
    select_outputs,
    shape_str,
    source_names,
    value_dtype,
    value_shape,
)
from .parity import check_parity, run_members, weak_note
from .share import share_initializers

__all__ = ["MergeMembersPass", "Members", "Built"]


class MergeMembersPass(Pass):
    """Merge models into one graph computing the fusion of their outputs (a source pass).

    ``models``: paths or protos, at least 2; ``settings``: the resolved
    ``recipe.EnsembleSettings``; ``weights``: the checked weights (or None); ``fit``: DATA with
    labels to fit the weights or the stacking head on (or None).  The report and provenance
    name the members (file or graph names) and the settings; they do not hold the members.
    Details: members, opsets, conversions, shared initializers, fused groups, the fusion."""

    key = "merge"
    own_reference = True
    idempotent = False

    @dataclass
    class Config:
        models: list
        settings: Any
        weights: list | None = None
        fit: Any = None

    def __init__(self, _where: str | None = None, _error=UsageError, **params):
        super().__init__(_where, _error, **params)
        cfg = self.config
        names = source_names(cfg.models)
        settings = {k: v for k, v in dataclasses.asdict(cfg.settings).items() if k not in ("max_accuracy_drop", "metric")}
        fit = None if cfg.fit is None else Path(cfg.fit).name if isinstance(cfg.fit, (str, Path)) else getattr(cfg.fit, "source", "data")
        self.params = {"models": names, **settings, "weights": cfg.weights, "fit": fit}

    def call(self, model, ctx: Context) -> PassResult:
        st, provider = self.config.settings, ctx.provider
        mem = _load(self.config.models, st)
        spec, fit_info, fit_run = _fusion(mem, st, self.config.weights, self.config.fit, provider)
        built = _build(mem, spec, st, provider)
        shared = built.shared
        details = {
            "members": [m.label for m in mem.members],
            "opset": mem.opsets,
            "conversions": mem.conversions,
            "shared_initializers": {k: shared[k] for k in ("initializers_merged", "bytes_saved")},
            "fusion": spec.summary(),
        }
        if st.fuse_members:
            details["fuse_members"] = [{k: g[k] for k in g if k != "counts"} for g in built.horizontal["groups"]]
        counts = {"members": len(mem.members), **details["shared_initializers"]}
        res = self.result(built.model, True, counts=counts, notes=mem.notes, details=details)
        res.report.extras.update(members=mem, built=built, fusion=spec, fit_info=fit_info, fit_run=fit_run)

        def dataset():
            with blame(mem.members[0].path, data=True):  # a --shape naming no input: about the inputs the members share
                return dataset_for(built.model, ctx.data, ctx.shapes)

        def judge(merged: onnx.ModelProto, ds) -> dict:
            parity, arrays = check_parity(merged, mem.members, spec, built.member_values, built.types_of, built.fused_names, ds, provider=provider)
            if not parity.ok:
                more = f" (and {len(parity.failures) - 1} more)" if len(parity.failures) > 1 else ""
                raise VerificationError(f"parity check failed: {parity.failures[0]}{more}")
            if parity.weak:
                res.report.notes.append(weak_note(parity.weak, ds, "member output(s)"))
            res.report.extras.update(parity=parity, arrays=arrays, dataset=ds)
            return {"parity": parity.to_dict()}

        res.expected = Expected(dataset, None, "merged model", judge=judge)
        return res




def _positions(members: list[Member], K: int, fusion: str) -> list[dict]:
    """Per fused position: dtype, member shapes and the base output name; checks compatibility."""
    out = []
    for p in range(K):
        vis = [next(o for o in m.model.graph.output if o.name == m.outputs[p]) for m in members]
        elem0 = value_dtype(vis[0])
        shapes = [value_shape(v) for v in vis]
        for m, vi in zip(members, vis, strict=True):
            elem = value_dtype(vi)
            if elem not in FLOAT_TYPES:
                raise InputError(f"output '{vi.name}' is {dtype_name(elem)}; fusing needs float scores (float32/float16/float64)", m.where)
            if elem != elem0:
                raise InputError(f"output '{vi.name}' is {dtype_name(elem)}, but {dtype_name(elem0)} in {members[0].label}: incompatible dtypes", m.where)
        if fusion == "stack":
            for m, vi, shape in zip(members, vis, shapes, strict=True):
                if shape is not None and len(shape) != 2:
                    raise InputError(f"output '{vi.name}' has shape {shape_str(shape)}; stacking needs [N, C] scores", m.where)
        else:
            merged = None
            for m, vi, shape in zip(members, vis, shapes, strict=True):
                try:
                    merged = merge_shapes(merged, shape)
                except ValueError as exc:
                    why = f"incompatible with {shape_str(merged)} of the members before it ({exc})"
                    raise InputError(f"output '{vi.name}' has shape {shape_str(shape)}, {why}", m.where) from None
            if merged is not None and len(merged) == 0:
                raise InputError(f"output '{vis[0].name}' is a scalar; fusing needs class scores", members[0].where)
        names = {m.outputs[p] for m in members}
        base = members[0].outputs[p] if len(names) == 1 else f"output{p}"
        out.append({"elem": elem0, "shapes": shapes, "base": base, "types": vis})
    return out


def _fit(members, fusion_kind, fit, inputs, softmax_flag: bool, head: str, l2, provider, K: int):
    """Run the members on the fit data and fit weights / the stacking head."""
    if K != 1:
        raise UsageError(f"--fit needs one fused output; the members have {K}: pick one with --output NAME")
    # a node-less model with the shared inputs, to check DATA against
    interface = helper.make_model(helper.make_graph([], "interface", list(inputs), []))
    ds = dataset_for(interface, fit)
    if ds.labels is None:
        raise DataError("--fit data has no 'labels' array", getattr(ds, "source", fit))
    outs = run_members(members, ds, provider=provider, limit=None)
    arrays = [o[0] for o in outs]
    labels = ds.labels[: len(arrays[0])]
    for m, a in zip(members, arrays, strict=True):
        if a.ndim != 2:
            raise InputError(f"output '{m.outputs[0]}' has shape {list(a.shape)}; fitting needs [N, C] scores", m.where)
    classes = [int(a.shape[-1]) for a in arrays]
    C = max(classes)
    if labels.min() < 0 or labels.max() >= C:
        raise DataError(f"'labels' range over [{labels.min()}, {labels.max()}] but the members output {C} classes", ds.source)
    feats = [softmax(a) if softmax_flag else np.asarray(a, dtype=np.float64) for a in arrays]
    info = {"data": ds.source, "samples": int(len(labels))}
    if fusion_kind == "weighted":
        if len(set(classes)) != 1:
            raise InputError("members output different numbers of classes; weighted fusion needs equal shapes", members[0].where)
        wf = fit_weights(feats, labels, probabilities=softmax_flag)
        info.update(wf.summary())
        return list(wf.weights / wf.weights.sum()), None, info, (ds, outs, labels)
    stack_head = fit_stack_head(np.concatenate(feats, axis=1), labels, C, kind=head, lam=l2)
    info.update(stack_head.summary())
    return None, stack_head, info, (ds, outs, labels)


def _build_parts(members: list[Member], fuse_members: bool, provider: str):
    """Namespaced members, or fused groups (``--fuse-members``) where the architecture allows.

    Wide layers on stacked inputs run per member on CPU (ORT's CPU kernels are not faster
    batched) and as one batched MatMul on CUDA (fewer kernel launches)."""
    parts, horizontal = [], {"requested": bool(fuse_members), "groups": [], "notes": []}
    prefixes = {m.prefix: m.label for m in members}
    if fuse_members:
        from .horizontal import Refused, fuse_group, group_members

        groups, reasons = group_members(members)
        horizontal["notes"].extend(
            f"{label} cannot be fused: {why}" for label, why in reasons.items()
        )
        gi = 0
        for grp in groups:
            if len(grp) < 2:
                parts.append(namespace_member(grp[0]))
                continue
            gp = f"g{gi}/"
            gi += 1
            try:
                part, rep = fuse_group(grp, gp, wide="batched" if provider == "cuda" else "split")
            except Refused as exc:
                horizontal["groups"].append({"members": [m.label for m in grp], "applied": False, "reason": str(exc)})
                horizontal["notes"].append(f"members {', '.join(m.label for m in grp)} left unfused: {exc}")
                parts.extend(namespace_member(m) for m in grp)
                continue
            prefixes[gp] = "+".join(m.label for m in grp)
            horizontal["groups"].append({**rep, "applied": True})
            horizontal["notes"].extend(f"members {', '.join(m.label for m in grp)}: {note}" for note in rep["notes"])
            parts.append(part)
        if not any(len(g) > 1 for g in groups):
            horizontal["notes"].append("no two members share an architecture; nothing to fuse")
    else:
        parts = [namespace_member(m) for m in members]
    return parts, horizontal, prefixes


@dataclass
class Members:
    """The members loaded and matched: shared inputs, opsets, the outputs fused (K positions)."""

    members: list[Member]
    opsets: dict
    ir_version: int
    conversions: list
    notes: list[str]
    inputs: list
    K: int
    positions: list[dict]


@dataclass
class Built:
    """The merged model and where its values come from."""

    model: onnx.ModelProto
    graph_outputs: list
    fused_names: list[list[str]]
    member_values: list[list[str]]
    types_of: dict
    shared: dict
    horizontal: dict


def _load(models: list, st) -> Members:
    """Load the members, reconcile their opsets, match their inputs and the outputs fused."""
    members = load_members(models)
    opsets, ir_version, conversions, notes = reconcile_opsets(members)
    inputs = match_inputs(members, st.input_map)
    K = select_outputs(members, st.output)
    positions = _positions(members, K, st.fusion)
    if st.fusion == "vote":
        for pos in positions:
            cs = {s[-1] for s in pos["shapes"] if s and isinstance(s[-1], int)}
            if len(cs) > 1:
                raise InputError(f"members output different numbers of classes {sorted(cs)}; voting needs equal ones")
        if st.softmax:
            notes.append("--softmax has no effect on votes (argmax is unchanged by it)")
    return Members(members, opsets, ir_version, conversions, notes, inputs, K, positions)


def _fusion(mem: Members, st, weights, fit, provider: str):
    """The fusion spec (weights / stacking head fitted on ``fit`` when given):
    ``(Fusion, fit info, (fit dataset, member outputs, labels))``."""
    fit_info, stack_head, fit_run = None, None, None
    if fit is not None:
        fitted, stack_head, fit_info, fit_run = _fit(mem.members, st.fusion, fit, mem.inputs, st.softmax, st.head, st.l2, provider, mem.K)
        if fitted is not None:
            weights = fitted
    if st.fusion == "weighted":
        total = float(sum(weights))
        weights = [float(w) / total for w in weights]
    return Fusion(st.fusion, weights, st.softmax, stack_head), fit_info, fit_run


def _build(mem: Members, spec: Fusion, st, provider: str) -> Built:
    """Namespace (or fuse) the members, add the head per output position, share identical
    weights and drop what no output needs."""
    members, K = mem.members, mem.K
    parts, horizontal, prefixes = _build_parts(members, st.fuse_members, provider)
    outputs_of = {k: v for part in parts for k, v in part.outputs.items()}
    types_of = {k: v for part in parts for k, v in part.output_info.items()}
    member_values = [[outputs_of[(m.index, name)] for name in m.outputs] for m in members]
    taken = {i.name for i in mem.inputs} | {
        o for part in parts for n in part.nodes for o in n.output
    }
    taken |= {t.name for part in parts for t in part.initializers}
    head_nodes, head_inits, graph_outputs, fused_names = [], [], [], []
    for p, pos in enumerate(mem.positions):
        names = [unique_name(n, taken) for n in output_names(spec.kind, pos["base"], K)]
        fused_names.append(names)
        io = HeadIO([member_values[j][p] for j in range(len(members))], pos["elem"], pos["shapes"], names)
        nodes, inits, outs = build_head(spec, io, prefix=f"ensemble/p{p}/" if K > 1 else "ensemble/", taken=taken)
        head_nodes += nodes
        head_inits += inits
        graph_outputs += outs
    if st.keep_member_outputs:
        graph_outputs += [types_of[n] for vals in member_values for n in vals]
    doc = f"onnxopt ensemble ({spec.kind}) of {', '.join(m.label for m in members)}"
    heads = {"extra_nodes": head_nodes, "extra_initializers": head_inits}
    model = assemble(parts, mem.inputs, graph_outputs, mem.opsets, mem.ir_version, name="ensemble", doc=doc, **heads)
    shared = share_initializers(model, prefixes)
    dead = remove_unused(model)
    if dead.get("nodes"):
        mem.notes.append(f"removed {dead['nodes']} node(s) that only computed outputs not fused")
    return Built(model, graph_outputs, fused_names, member_values, types_of, shared, horizontal)

