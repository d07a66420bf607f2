"""``onnxopt.ensemble`` and ``onnxopt.chain``: N models -> one verified ``.onnx``.

``ensemble`` checks its options, then runs the merge (``passes.MergeMembersPass``: load the
members, fit the weights or stacking head when asked, namespace or fuse them, add the fusion
head, share identical weights) as a source pass through ``core.run_pipeline``, which checks
the merged model (checker + ORT load) and judges it by the parity check (``parity``: the
members run separately and fused in numpy).  With a recipe (``recipe``: settings from its
``[ensemble]`` table), its ``[[steps]]`` then run on the merged model through the pipeline
runner, each verified against the merged model.  ``chain`` wires N stages serially
(``chain.ChainStagesPass``) with the same checks.

The user's mistakes raise ``onnxopt.errors`` classes (exit 2) before any output is built;
a merged model that fails the parity check raises ``VerificationError`` (exit 3).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..core.passes import Context, PassReport
from ..core.pipeline import run_pipeline
from ..core.provenance import write_provenance
from ..core.public import check_options
from ..core.result import Result
from ..errors import DataError, OnnxoptError, UsageError, VerificationError, first_failure
from ..metrics import Budget, check_metric
from ..runtime import resolve_provider
from ..verify import blaming_members
from .heads import FUSIONS, STACK_HEADS, reference
from .merge import Member, dtype_name, shape_str, value_dtype, value_shape
from .parity import accuracy
from .passes import MergeMembersPass
from .recipe import resolve_settings

__all__ = ["ensemble", "chain", "EnsembleConfig"]

log = logging.getLogger(__name__)

HEADS = STACK_HEADS

def _check_options(n: int, fusion: str, weights, fit, head: str, l2) -> list[float] | None:
    problem = first_failure(
        (fusion not in FUSIONS, f"unknown fusion '{fusion}' (choose from {', '.join(FUSIONS)})"),
        (n < 2, f"an ensemble needs at least 2 models, got {n}"),
        (head not in HEADS, f"unknown head '{head}' (choose from {', '.join(HEADS)})"),
        (l2 is not None and not (l2 > 0 and math.isfinite(l2)), f"--l2 must be a positive number, got {l2}"),
        (weights is not None and fusion not in ("weighted", "vote"), f"--weights applies to 'weighted' and 'vote', not '{fusion}'"),
    )
    weights = None if weights is None or problem else [float(w) for w in weights]
    problem = problem or first_failure(
        (weights is not None and len(weights) != n, f"--weights has {len(weights or [])} values for {n} members"),
        (weights is not None and any(not math.isfinite(w) for w in weights), "--weights must be finite numbers"),
        (weights is not None and any(w < 0 for w in weights), f"--weights must not be negative: {','.join(f'{w:g}' for w in weights or [])}"),
        (weights is not None and sum(weights) <= 0, "--weights are all zero"),
        (fusion == "stack" and fit is None, "--fusion stack needs --fit DATA (inputs with 'labels') to fit its head"),
        (fit is not None and fusion not in ("weighted", "stack"), f"--fit applies to 'weighted' and 'stack', not '{fusion}'"),
        (fit is not None and weights is not None, "give either --weights or --fit, not both"),
        (fusion == "weighted" and weights is None and fit is None, "--fusion weighted needs --weights W1,W2,... or --fit DATA"),
    )
    if problem:
        raise UsageError(problem)
    return weights


def _member_accuracy(members, arrays, labels) -> dict | None:
    accs = {m.label: accuracy(a, labels) for m, a in zip(members, arrays, strict=True)}
    return None if None in accs.values() else accs


def _size(m: Member) -> int:
    if m.path is not None:
        try:
            return int(Path(m.path).stat().st_size)
        except OSError:
            pass
    return int(m.original.ByteSize())


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

    Stages: settings (recipe table + arguments, checked), the merge pass run and verified by
    ``run_pipeline`` (``passes.MergeMembersPass``), report, recipe steps, concurrency,
    provenance (one record: the merge, the recipe's steps, the session options carried).
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
    ctx = Context(data=cfg.data, shapes=cfg.shapes, provider=provider)
    merge = MergeMembersPass(_where="ensemble", _error=UsageError, models=models, settings=st, weights=weights, fit=cfg.fit)
    res = run_pipeline(None, [merge], ctx, command="ensemble", provenance=False)  # verified by the parity check
    step, model = res.steps[0], res.model
    x = step.extras
    report = _report(step)
    labels = _accuracies(report, step)
    extra = _provenance(step, report)
    notes, steps = report["notes"], [step.record()]
    notes.extend(plan.notes)
    if plan.recipe is not None:
        if plan.recipe.target == "cuda" and provider != "cuda":
            notes.append(f"recipe '{plan.recipe.name}' is written for target cuda; its steps were verified on {provider}")
        model, step_reports = _run_recipe_steps(model, plan, budget, x["dataset"], x["fit_run"], cfg.data, cfg.shapes, provider)
        report["recipe"] = plan.describe()
        report["steps"] = [r.to_dict() for r in step_reports]
        if budget is not None:
            report["recipe"]["budget"] = {"max_accuracy_drop": budget.max_drop, "metric": budget.metric}
            extra["max_accuracy_drop"] = budget.max_drop
        if any(r.modified for r in step_reports):
            _after_steps(report, model, x["dataset"], labels, x["built"].fused_names, x["members"].K, provider)
        steps += [r.record() for r in step_reports]
        extra["recipe"] = {k: report["recipe"][k] for k in ("name", "file", "settings", "overridden", "steps")}
    elif st.max_accuracy_drop is not None or st.metric is not None:
        notes.append("max_accuracy_drop / metric apply to a recipe's lossy steps: without --recipe they have no effect")
    if "accuracy" in report:
        extra["accuracy"] = {k: report["accuracy"][k] for k in ("members", "ensemble", "samples")}
    if cfg.parallel:
        report["concurrency"] = _concurrency(model, x["members"].members, x["dataset"], cfg.shapes, provider)
        if report["concurrency"]["carried"]:
            model, carried = _carry(model, report["concurrency"]["carried_options"], x["dataset"], cfg.shapes, provider)
            steps.append(carried.record())
            extra["session_options"] = report["concurrency"]["carried_options"]
    # one record for the merge, the recipe's steps and the session options carried after them
    write_provenance(model, "ensemble", steps, extra)
    return Result(model, report, True)


def _report(step: PassReport) -> dict:
    """The ensemble's report from the merge step (its details, extras and verification)."""
    x = step.extras
    mem, built, members, model = x["members"], x["built"], x["members"].members, x["built"].model
    report = {
        "command": "ensemble",
        "fusion": x["fusion"].summary(),
        "members": [m.describe() for m in members],
        "inputs": [{"name": i.name, "dtype": dtype_name(value_dtype(i)), "shape": shape_str(value_shape(i))} for i in mem.inputs],
        "outputs": [o.name for o in built.graph_outputs],
        "opset": mem.opsets,
        "ir_version": mem.ir_version,
        "conversions": mem.conversions,
        "shared_initializers": built.shared,
        "horizontal": built.horizontal,
        "check": step.verification["check"],
        "parity": step.verification["parity"],
        "notes": list(step.notes),
    }
    if x["fit_info"] is not None:
        report["fit"] = x["fit_info"]
    sizes = [_size(m) for m in members]
    report["size"] = {"members": sizes, "members_total": sum(sizes), "merged": int(model.ByteSize()), "ratio": model.ByteSize() / max(1, sum(sizes))}
    return report


def _accuracies(report: dict, step: PassReport):
    """Member vs ensemble accuracy on the parity data (with labels, one fused output) and on
    the fit data (in-sample) into ``report``; returns the labels of the parity data (or None)."""
    x = step.extras
    members, ds, parity, arrays, fit_run = x["members"].members, x["dataset"], x["parity"], x["arrays"], x["fit_run"]
    labels = ds.label_array(parity.samples) if ds.labels is not None else None
    if labels is not None and x["members"].K == 1:
        accs = _member_accuracy(members, [a[0] for a in arrays["members"]], labels)
        ens = accuracy(arrays["fused"][x["built"].fused_names[0][0]], labels)
        if accs is not None and ens is not None:
            report["accuracy"] = {"data": ds.source, "samples": int(len(labels)), "members": accs, "ensemble": ens, "best_member": max(accs.values())}
    if fit_run is not None:
        fds, fouts, flabels = fit_run
        accs = _member_accuracy(members, [o[0] for o in fouts], flabels)
        ens = accuracy(reference(x["fusion"], [o[0] for o in fouts])[0], flabels)
        if accs is not None and ens is not None:
            note = "in-sample (the data the ensemble was fitted on)"
            report["fit_accuracy"] = {"data": fds.source, "samples": int(len(flabels)), "members": accs, "ensemble": ens, "note": note}
    return labels


def _provenance(step: PassReport, report: dict) -> dict:
    """The extra record of the merged model (the steps are the pipeline's records)."""
    x = step.extras
    parity = x["parity"]
    return {
        "ensemble": {"fusion": x["fusion"].kind, "members": [m.label for m in x["members"].members], "outputs": report["outputs"]},
        "parity": {"ok": parity.ok, "samples": parity.samples, "data": Path(parity.data).name, "worst_rel_l2": parity.worst_rel_l2, "outputs": parity.fused},
    }


def _concurrency(model, members, ds, shapes, provider) -> dict:
    """``concurrent.parallel_options`` on the model's own batch (1 when symbolic) of ``ds``."""
    from ..bench.feeds import SkipConfig, make_feed
    from .concurrent import parallel_options

    try:
        feed, _ = make_feed(model, ds.view().validate(model), shapes, None)
    except (SkipConfig, DataError) as exc:
        return {"carried": False, "reason": f"not measured: {exc}"}
    return parallel_options(model, members, feed, provider=provider)


def _carry(model, options: dict, ds, shapes, provider) -> tuple[onnx.ModelProto, PassReport]:
    """The ``session-options`` pass with the options the concurrency measurement chose, run
    and verified by ``run_pipeline`` (ORT must apply them as written)."""
    from ..serving.passes import SessionOptionsPass

    ctx = Context(data=ds, shapes=shapes, provider=provider)
    carry = SessionOptionsPass(_where="ensemble", _error=UsageError, **options)
    res = run_pipeline(model, [carry], ctx, command="ensemble", check_input=False, provenance=False)
    return res.model, res.steps[0]


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
    check_metric(metric)
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
        res = run_pipeline(model, plan.passes, ctx, command="ensemble", check_input=False, provenance=False)
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
