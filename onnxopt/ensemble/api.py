"""``onnxopt.ensemble`` and ``onnxopt.chain``: N models -> one verified ``.onnx``.

``ensemble`` merges the members into one graph (``merge``), optionally fuses members of one
architecture into a wider network (``horizontal``), stores identical weights once
(``share``), adds the fusion head (``heads``; weights or a stacking head fitted on labelled
data by ``fit``), checks the result (checker + ORT load) and compares it with the members run
separately (``parity``).  With a recipe (``recipe``: settings from its ``[ensemble]`` table),
its ``[[steps]]`` then run on the merged model through the pipeline runner, each verified
against the merged model.  ``chain`` wires N stages serially (``chain``) with the same checks.

The user's mistakes raise ``onnxopt.errors`` classes (exit 2) before any output is built;
a merged model that fails the parity check raises ``VerificationError`` (exit 3).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..core.passes import Context
from ..core.pipeline import run_pipeline
from ..core.provenance import write_provenance
from ..core.public import check_options
from ..core.result import Result
from ..data import dataset_for
from ..errors import (
    DataError,
    InputError,
    OnnxoptError,
    UsageError,
    VerificationError,
    blame,
)
from ..graph import unique_name
from ..metrics import METRICS, Budget
from ..runtime import resolve_provider
from ..simplify.dead import remove_unused
from ..verify import blaming_members, check_model
from .fit import fit_stack_head, fit_weights, softmax
from .heads import FUSIONS, STACK_HEADS, Fusion, HeadIO, build_head, output_names, reference
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
    value_dtype,
    value_shape,
)
from .parity import accuracy, check_parity, run_members
from .recipe import resolve_settings
from .share import share_initializers

__all__ = ["ensemble", "chain", "EnsembleConfig"]

log = logging.getLogger(__name__)

HEADS = STACK_HEADS
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def _check_options(n: int, fusion: str, weights, fit, head: str, l2) -> list[float] | None:
    if fusion not in FUSIONS:
        raise UsageError(f"unknown fusion '{fusion}' (choose from {', '.join(FUSIONS)})")
    if n < 2:
        raise UsageError(f"an ensemble needs at least 2 models, got {n}")
    if head not in HEADS:
        raise UsageError(f"unknown head '{head}' (choose from {', '.join(HEADS)})")
    if l2 is not None and not (l2 > 0 and math.isfinite(l2)):
        raise UsageError(f"--l2 must be a positive number, got {l2}")
    if weights is not None:
        if fusion not in ("weighted", "vote"):
            raise UsageError(f"--weights applies to 'weighted' and 'vote', not '{fusion}'")
        weights = [float(w) for w in weights]
        if len(weights) != n:
            raise UsageError(f"--weights has {len(weights)} values for {n} members")
        if any(not math.isfinite(w) for w in weights):
            raise UsageError("--weights must be finite numbers")
        if any(w < 0 for w in weights):
            raise UsageError(f"--weights must not be negative: {','.join(f'{w:g}' for w in weights)}")
        if sum(weights) <= 0:
            raise UsageError("--weights are all zero")
    if fusion == "stack" and fit is None:
        raise UsageError("--fusion stack needs --fit DATA (inputs with 'labels') to fit its head")
    if fit is not None and fusion not in ("weighted", "stack"):
        raise UsageError(f"--fit applies to 'weighted' and 'stack', not '{fusion}'")
    if fit is not None and weights is not None:
        raise UsageError("give either --weights or --fit, not both")
    if fusion == "weighted" and weights is None and fit is None:
        raise UsageError("--fusion weighted needs --weights W1,W2,... or --fit DATA")
    return weights


def _interface(inputs) -> onnx.ModelProto:
    """A node-less model with the shared inputs, to validate DATA against."""
    g = helper.make_graph([], "interface", list(inputs), [])
    return helper.make_model(g)


def _positions(members: list[Member], K: int, fusion: str) -> list[dict]:
    """Per fused position: dtype, member shapes and the base output name; checks compatibility."""
    out = []
    for p in range(K):
        vis = []
        for m in members:
            typed = {o.name: o for o in m.model.graph.output}
            vis.append(typed[m.outputs[p]])
        elem0 = value_dtype(vis[0])
        shapes = [value_shape(v) for v in vis]
        for m, vi in zip(members, vis, strict=True):
            elem = value_dtype(vi)
            if elem not in _FLOAT_TYPES:
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
                    raise InputError(f"output '{vi.name}' has shape {shape_str(shape)}, incompatible with {shape_str(merged)} of the members before it ({exc})", m.where) from None
            if merged is not None and len(merged) == 0:
                raise InputError(f"output '{vis[0].name}' is a scalar; fusing needs class scores", members[0].where)
        names = {m.outputs[p] for m in members}
        base = members[0].outputs[p] if len(names) == 1 else f"output{p}"
        out.append({"elem": elem0, "shapes": shapes, "base": base, "types": vis})
    return out


def _classes_of(arrays: list[np.ndarray]) -> list[int]:
    return [int(a.shape[-1]) for a in arrays]


def _fit(members, fusion_kind, fit, inputs, softmax_flag: bool, head: str, l2, provider, K: int):
    """Run the members on the fit data and fit weights / the stacking head."""
    if K != 1:
        raise UsageError(f"--fit needs one fused output; the members have {K}: pick one with --output NAME")
    ds = dataset_for(_interface(inputs), fit)
    if ds.labels is None:
        raise DataError("--fit data has no 'labels' array", getattr(ds, "source", fit))
    outs = run_members(members, ds, provider=provider, limit=None)
    arrays = [o[0] for o in outs]
    labels = ds.labels[: len(arrays[0])]
    for m, a in zip(members, arrays, strict=True):
        if a.ndim != 2:
            raise InputError(f"output '{m.outputs[0]}' has shape {list(a.shape)}; fitting needs [N, C] scores", m.where)
    classes = _classes_of(arrays)
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


def _member_accuracy(members, arrays, labels) -> dict | None:
    accs = {}
    for m, a in zip(members, arrays, strict=True):
        acc = accuracy(a, labels)
        if acc is None:
            return None
        accs[m.label] = acc
    return accs


def _size(m: Member) -> int:
    if m.path is not None:
        try:
            return int(Path(m.path).stat().st_size)
        except OSError:
            pass
    return int(m.original.ByteSize())


def _build_parts(members: list[Member], fuse_members: bool, provider: str):
    """Namespaced members, or fused groups (``--fuse-members``) where the architecture allows.

    Wide layers on stacked inputs run per member on CPU (ORT's CPU kernels are not faster
    batched) and as one batched MatMul on CUDA (fewer kernel launches)."""
    parts, horizontal = [], {"requested": bool(fuse_members), "groups": [], "notes": []}
    prefixes = {m.prefix: m.label for m in members}
    if fuse_members:
        from .horizontal import Refused, fuse_group, group_members

        groups, reasons = group_members(members)
        for label, why in reasons.items():
            horizontal["notes"].append(f"{label} cannot be fused: {why}")
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
class EnsembleConfig:
    """The options of ``ensemble``.  Those left None take the recipe's ``[ensemble]`` table's
    value, else ``EnsembleSettings``' default.

    ``fusion``: ``mean`` (default) | ``weighted`` (``weights`` or ``fit``) | ``vote``
    (optional ``weights``) | ``stack`` (needs ``fit``: DATA with labels; ``head`` logistic
    (default) or ridge, ``l2`` strength or None for cross-validation).  ``softmax`` normalises
    member scores first; ``keep_member_outputs`` also exposes each member's output; ``output``
    picks one output per member (name or position; else all, position-wise); ``input_map``
    renames member inputs ``{FROM: TO}``; ``fuse_members`` fuses members of one architecture
    into one wider network.  ``data`` (or synthesized inputs shaped by ``shapes``): the
    inputs of the parity check, on ``provider``.  ``recipe``, ``max_accuracy_drop``,
    ``metric``, ``parallel``: see ``ensemble``.
    """

    fusion: str | None = None
    weights: list | None = None
    fit: object = None
    softmax: bool | None = None
    keep_member_outputs: bool | None = None
    output: object = None
    input_map: dict | None = None
    fuse_members: bool | None = None
    data: object = None
    shapes: dict | None = None
    provider: str = "cpu"
    head: str | None = None
    l2: float | None = None
    recipe: object = None
    max_accuracy_drop: float | None = None
    metric: str | None = None
    parallel: bool = True

    def given(self) -> dict:
        """The settings a recipe's table may also set, where the caller gave them."""
        names = ("fusion", "weights", "softmax", "head", "l2", "keep_member_outputs", "fuse_members", "output", "input_map", "max_accuracy_drop", "metric")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}


@dataclass
class _Members:
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
class _Built:
    """The merged model and where its values come from."""

    model: onnx.ModelProto
    graph_outputs: list
    fused_names: list[list[str]]
    member_values: list[list[str]]
    types_of: dict
    shared: dict
    horizontal: dict


@blaming_members("models")
def ensemble(models, **options) -> Result:
    """Fuse ``models`` (paths or protos) into one model computing ``fusion`` of their outputs.

    Options: ``EnsembleConfig``.  The result is compared with the members run separately on
    ``data`` (or synthesized inputs); the report carries members, conversions, shared
    weights, parity, fitted parameters and, with labels, member vs ensemble accuracy.

    ``recipe`` (bundled name or TOML path): settings from its ``[ensemble]`` table (see
    ``onnxopt.ensemble.recipe``) for every argument left ``None``; after the parity check its
    ``[[steps]]`` run on the merged model, each verified against it (``run_pipeline``) on
    ``data``, else ``fit``, else synthesized inputs; lossy steps within
    ``max_accuracy_drop`` points of ``metric`` (default: the table's; none: recorded only).
    A step that fails verification raises ``VerificationError`` / ``BudgetError`` (exit 3).

    ``parallel``: time the members run separately, the merged model sequentially and with
    parallel execution of its branches (``ensemble.concurrent``), and carry the parallel
    session options in the model when they win (``report["concurrency"]``).

    Stages: settings (recipe table + arguments), members (load, opsets, inputs, outputs),
    fusion (fitted when ``fit``), build, parity check, report, recipe steps, provenance.
    """
    cfg = EnsembleConfig(**check_options(EnsembleConfig, "ensemble", options))
    models = list(models or [])
    plan = resolve_settings(cfg.given(), cfg.recipe, fit=cfg.fit, members=len(models))
    st = plan.settings
    try:
        weights = _check_options(len(models), st.fusion, st.weights, cfg.fit, st.head, st.l2)
        budget = _budget(st.max_accuracy_drop, st.metric)
    except UsageError as exc:
        _blame_recipe(exc, plan)
        raise
    provider = resolve_provider(cfg.provider)
    mem = _load(models, st)
    spec, fit_info, fit_run = _fusion(mem, st, weights, cfg.fit, provider)
    built = _build(mem, spec, st, provider)
    model, notes = built.model, mem.notes
    check = check_model(model, provider=provider, label="merged model")
    with blame(mem.members[0].path, data=True):  # a --shape naming no input: about the inputs the members share
        ds = dataset_for(model, cfg.data, cfg.shapes)
    parity, arrays = check_parity(model, mem.members, spec, built.member_values, built.types_of, built.fused_names, ds, provider=provider)
    if not parity.ok:
        more = f" (and {len(parity.failures) - 1} more)" if len(parity.failures) > 1 else ""
        raise VerificationError(f"parity check failed: {parity.failures[0]}{more}")
    if parity.weak:
        notes.append(
            f"the parity check says little about member output(s) {', '.join(parity.weak)}: "
            f"every value is within 1e-6 of 0 on {Path(ds.source).name} (give --data with real inputs)"
        )
    report = _report(mem, built, spec, check, parity, fit_info)
    labels = _accuracies(report, mem, built, spec, ds, parity, arrays, fit_run)
    steps, extra = _provenance(mem, built, spec, parity, report, st.fuse_members)
    notes.extend(plan.notes)
    if plan.recipe is not None:
        if plan.recipe.target == "cuda" and provider != "cuda":
            notes.append(f"recipe '{plan.recipe.name}' is written for target cuda; its steps were verified on {provider}")
        model, step_reports = _run_recipe_steps(model, plan, budget, ds, fit_run, cfg.data, cfg.shapes, provider)
        report["recipe"] = plan.describe()
        report["steps"] = [r.to_dict() for r in step_reports]
        if budget is not None:
            report["recipe"]["budget"] = {"max_accuracy_drop": budget.max_drop, "metric": budget.metric}
            extra["max_accuracy_drop"] = budget.max_drop
        if any(r.modified for r in step_reports):
            _after_steps(report, model, ds, labels, built.fused_names, mem.K, provider)
        steps += [r.record() for r in step_reports]
        extra["recipe"] = {k: report["recipe"][k] for k in ("name", "file", "settings", "overridden", "steps")}
    elif st.max_accuracy_drop is not None or st.metric is not None:
        notes.append("max_accuracy_drop / metric apply to a recipe's lossy steps: without --recipe they have no effect")
    if "accuracy" in report:
        extra["accuracy"] = {k: report["accuracy"][k] for k in ("members", "ensemble", "samples")}
    if cfg.parallel:
        report["concurrency"] = _concurrency(model, mem.members, ds, cfg.shapes, provider)
        if report["concurrency"]["carried"]:
            extra["session_options"] = report["concurrency"]["carried_options"]
    write_provenance(model, "ensemble", steps, extra)
    return Result(model, report, True)


def _load(models: list, st) -> _Members:
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
    return _Members(members, opsets, ir_version, conversions, notes, inputs, K, positions)


def _fusion(mem: _Members, st, weights, fit, provider: str):
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


def _build(mem: _Members, spec: Fusion, st, provider: str) -> _Built:
    """Namespace (or fuse) the members, add the head per output position, share identical
    weights and drop what no output needs."""
    members, K = mem.members, mem.K
    parts, horizontal, prefixes = _build_parts(members, st.fuse_members, provider)
    outputs_of, types_of = {}, {}
    for part in parts:
        outputs_of.update(part.outputs)
        types_of.update(part.output_info)
    member_values = [[outputs_of[(m.index, name)] for name in m.outputs] for m in members]
    taken = {i.name for i in mem.inputs}
    for part in parts:
        taken.update(o for n in part.nodes for o in n.output)
        taken.update(t.name for t in part.initializers)
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
    return _Built(model, graph_outputs, fused_names, member_values, types_of, shared, horizontal)


def _report(mem: _Members, built: _Built, spec: Fusion, check, parity, fit_info) -> dict:
    members, model = mem.members, built.model
    report = {
        "command": "ensemble",
        "fusion": spec.summary(),
        "members": [m.describe() for m in members],
        "inputs": [{"name": i.name, "dtype": dtype_name(value_dtype(i)), "shape": shape_str(value_shape(i))} for i in mem.inputs],
        "outputs": [o.name for o in built.graph_outputs],
        "opset": mem.opsets,
        "ir_version": mem.ir_version,
        "conversions": mem.conversions,
        "shared_initializers": built.shared,
        "horizontal": built.horizontal,
        "check": check.to_dict(),
        "parity": parity.to_dict(),
        "notes": mem.notes,
    }
    if fit_info is not None:
        report["fit"] = fit_info
    sizes = [_size(m) for m in members]
    report["size"] = {"members": sizes, "members_total": sum(sizes), "merged": int(model.ByteSize()), "ratio": model.ByteSize() / max(1, sum(sizes))}
    return report


def _accuracies(report: dict, mem: _Members, built: _Built, spec: Fusion, ds, parity, arrays, fit_run):
    """Member vs ensemble accuracy on ``ds`` (with labels, one fused output) and on the fit
    data (in-sample) into ``report``; returns the labels of ``ds`` (or None)."""
    members = mem.members
    labels = ds.label_array(parity.samples) if ds.labels is not None else None
    if labels is not None and mem.K == 1:
        accs = _member_accuracy(members, [a[0] for a in arrays["members"]], labels)
        ens = accuracy(arrays["fused"][built.fused_names[0][0]], labels)
        if accs is not None and ens is not None:
            report["accuracy"] = {"data": ds.source, "samples": int(len(labels)), "members": accs, "ensemble": ens, "best_member": max(accs.values())}
    if fit_run is not None:
        fds, fouts, flabels = fit_run
        accs = _member_accuracy(members, [o[0] for o in fouts], flabels)
        ens = accuracy(reference(spec, [o[0] for o in fouts])[0], flabels)
        if accs is not None and ens is not None:
            report["fit_accuracy"] = {"data": fds.source, "samples": int(len(flabels)), "members": accs, "ensemble": ens, "note": "in-sample (the data the ensemble was fitted on)"}
    return labels


def _provenance(mem: _Members, built: _Built, spec: Fusion, parity, report: dict, fuse_members: bool) -> tuple[list[dict], dict]:
    """The provenance steps (merge, share, fuse, head) and extra record of the merged model."""
    members, shared = mem.members, built.shared
    steps = [
        {"name": "merge", "members": [m.label for m in members], "opset": mem.opsets, "conversions": mem.conversions},
        {"name": "share-initializers", "counts": {k: shared[k] for k in ("initializers_merged", "bytes_saved")}},
    ]
    if fuse_members:
        steps.append({"name": "fuse-members", "groups": [{k: g[k] for k in g if k != "counts"} for g in built.horizontal["groups"]]})
    steps.append({"name": "head", "fusion": spec.summary()})
    extra = {
        "ensemble": {"fusion": spec.kind, "members": [m.label for m in members], "outputs": report["outputs"]},
        "parity": {"ok": parity.ok, "samples": parity.samples, "data": Path(parity.data).name, "worst_rel_l2": parity.worst_rel_l2, "outputs": parity.fused},
    }
    return steps, extra


def _concurrency(model, members, ds, shapes, provider) -> dict:
    """``concurrent.parallel_options`` on the model's own batch (1 when symbolic) of ``ds``."""
    from ..bench.feeds import SkipConfig, dataset_view, make_feed
    from .concurrent import parallel_options

    try:
        feed, _ = make_feed(model, dataset_view(ds).validate(model), shapes, None)
    except (SkipConfig, DataError) as exc:
        return {"carried": False, "reason": f"not measured: {exc}"}
    return parallel_options(model, members, feed, provider=provider)


def _blame_recipe(exc: UsageError, plan) -> None:
    """Say which of the recipe's settings an option error is about (``--fusion stack needs
    --fit`` when the recipe set the fusion)."""
    keys = [k for k in plan.from_recipe if f"--{k.replace('_', '-')}" in exc.message or f"'{plan.from_recipe[k]}'" in exc.message]
    sets = "; ".join(f"{k} = {json.dumps(plan.from_recipe[k])}" for k in keys)
    over = ", ".join(f"--{k.replace('_', '-')}" for k in keys)
    if keys:
        exc.message += f" (recipe '{plan.recipe.name}' sets {sets}; {over} {'overrides it' if len(keys) == 1 else 'override them'})"


def _budget(max_drop, metric) -> Budget | None:
    """The recipe steps' budget (None: lossy steps are recorded, not judged)."""
    if metric is not None and metric not in METRICS:
        raise UsageError(f"unknown metric '{metric}' (choose from {', '.join(METRICS)})")
    return Budget(float(max_drop), metric) if max_drop is not None else None


def _run_recipe_steps(model, plan, budget, ds, fit_run, data, shapes, provider):
    """The recipe's ``[[steps]]`` on the merged model, each verified against it (on ``data``,
    else the ``fit`` data, else synthesized inputs); the ``fit`` data (else ``data``) is the
    calibration data of steps that need some.  Errors name the recipe and the step."""
    if not plan.passes:
        return model, []
    fit_ds = fit_run[0] if fit_run is not None else None
    eval_ds = ds if data is not None else None
    ctx = Context(data=fit_ds if fit_ds is not None else eval_ds, eval_data=eval_ds, shapes=shapes, provider=provider, budget=budget)
    try:
        res = run_pipeline(model, plan.passes, ctx, command="ensemble", provenance=False)
    except OnnxoptError as exc:
        where = "" if exc.message.startswith("step ") else f"step 1 '{plan.passes[0].key}': "
        exc.message = f"recipe '{plan.recipe.name}' {where}{exc.message}"
        raise
    return res.model, res.steps  # the ensemble's own record is written once, with every step


def _after_steps(report, model, ds, labels, fused_names, K: int, provider: str) -> None:
    """Size and accuracy figures of the written model, once the recipe's steps changed it."""
    size = report["size"]
    size["before_steps"] = size["merged"]
    size["merged"] = int(model.ByteSize())
    size["ratio"] = size["merged"] / max(1, size["members_total"])
    acc = report.get("accuracy")
    if acc is None or labels is None or K != 1:
        return
    from ..runtime import run_dataset

    names = [o.name for o in model.graph.output]
    outs = run_dataset(model, ds, provider=provider, limit=acc["samples"], error=VerificationError)
    after = accuracy(outs[names.index(fused_names[0][0])], labels)
    if after is not None:
        acc["before_steps"] = acc["ensemble"]
        acc["ensemble"] = after


@blaming_members("models")
def chain(models, *, map=None, data=None, shapes: dict | None = None, provider: str = "cpu") -> Result:  # noqa: A002 - the CLI's option name
    """Chain ``models`` serially: stage k's outputs feed stage k+1 (``map``: ``OUT:IN`` pairs).

    Junctions are checked for dtype and shape; the result is compared with the stages run one
    after the other in separate sessions on ``data`` (or synthesized inputs).  The chain is
    one source pass (``ChainStagesPass``) run by ``core.run_pipeline``, which verifies it and
    writes the provenance.
    """
    from .chain import ChainStagesPass

    models = list(models or [])
    if len(models) < 2:
        raise UsageError(f"a chain needs at least 2 models, got {len(models)}")
    ctx = Context(data=data, shapes=shapes, provider=resolve_provider(provider))
    mapping = map if map is None or isinstance(map, (list, dict)) else list(map)
    step = ChainStagesPass(_where="chain", _error=UsageError, models=models, map=mapping)
    res = run_pipeline(None, [step], ctx, command="chain")
    rep, d = res.steps[0], res.steps[0].details
    comp = rep.verification["comparison"]
    keys = ("name", "max_abs", "mean_abs", "rel_l2")
    records = [{k: o[k] for k in keys} | {"ok": True} | ({"note": o["note"]} if o["note"] else {}) for o in comp["outputs"]]
    files = [None if isinstance(src, onnx.ModelProto) else str(Path(src)) for src in models]
    report = {
        "command": "chain",
        "stages": [{"index": s["index"], "file": f, **s} for s, f in zip(d["stages"], files, strict=True)],
        **{k: d[k] for k in ("junctions", "inputs", "outputs", "opset", "ir_version", "conversions", "shared_initializers")},
        "check": rep.verification["check"],
        "parity": {"ok": True, "samples": comp["samples"], "data": comp["data"], "outputs": records},
        "notes": rep.notes,
    }
    return Result(res.model, report, True)
