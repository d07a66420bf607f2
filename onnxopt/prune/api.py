"""``onnxopt.prune``: magnitude, channel or residual-block pruning of one model, verified.

The pruned model goes through the pipeline's verification (checker, ONNX Runtime load,
same inputs / outputs and output shapes, metric against the input; with a budget, the
drop must stay within it).  With ``max_accuracy_drop`` and no explicit value, the
sparsity / ratio / number of blocks is searched first (largest within the budget), and
the report carries the curve (value -> metric, parameters, FLOPs, latency).  The report
also gives parameters, FLOPs, file size and latency (interleaved with the input model)
before and after.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

from ..core.pipeline import PipelineResult, run_pipeline
from ..core.public import check_options
from ..core.registry import make_pass
from ..core.runner import make_context
from ..data import check_shapes
from ..errors import (
    BudgetError,
    NothingToDoError,
    UsageError,
    VerificationError,
    blaming,
    first_failure,
)
from ..io import check_output_path, resolve_model
from ..plotting import require_matplotlib
from .measure import LatencyProbe, figures

__all__ = ["METHODS", "prune", "PruneConfig"]

log = logging.getLogger(__name__)

METHODS = ("magnitude", "channels", "blocks")
_KEYS = {"magnitude": "prune-magnitude", "channels": "prune-channels", "blocks": "prune-blocks"}
_VALUE = {"magnitude": "sparsity", "channels": "ratio", "blocks": "blocks"}
_ALIASES = {"channel": "channels", "block": "blocks"}


def _check_args(method, sparsity, ratio, ratios, blocks, importance, scope, plot, max_accuracy_drop, calibration, grid, options=None) -> None:
    if method not in METHODS:
        raise UsageError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    for name, v in (("--sparsity", sparsity), ("--ratio", ratio)):
        if v is not None and not (0 < float(v) < 1):
            raise UsageError(f"{name} must be in (0, 1), got {v}")
    for k, v in (ratios or {}).items():
        if not (0 < float(v) < 1):
            raise UsageError(f"ratio for layer '{k}' must be in (0, 1), got {v}")
    if blocks is not None and int(blocks) < 1:
        raise UsageError(f"--blocks must be >= 1, got {blocks}")
    wrong = {
        "magnitude": [("--ratio", ratio), ("--layer-ratio", ratios or None), ("--blocks", blocks)],
        "channels": [("--sparsity", sparsity), ("--blocks", blocks)],
        "blocks": [("--sparsity", sparsity), ("--ratio", ratio), ("--layer-ratio", ratios or None)],
    }[method]
    given = [n for n, v in wrong if v is not None]
    # method-specific options given a non-default value with another method would be ignored
    given += [flag for flag, value, default, owner in (options or []) if owner != method and value != default]
    if given:
        raise UsageError(f"{', '.join(given)} does not apply to --method {method}")
    explicit = {"magnitude": sparsity, "channels": ratio if ratio is not None else ratios}.get(method, blocks)
    flag = {"magnitude": "--sparsity", "channels": "--ratio / --layer-ratio"}.get(method, "--blocks")
    bad = [g for g in grid or () if method != "blocks" and not (0 < float(g) < 1)]
    problem = first_failure(
        (importance not in ("l1", "activation"), f"unknown importance '{importance}' (choose from l1, activation)"),
        (importance == "activation" and calibration is None, "--importance activation needs --calibration DATA"),
        (scope not in ("global", "layer"), f"unknown scope '{scope}' (choose from global, layer)"),
        (plot is not None and max_accuracy_drop is None, "--plot draws the budget search curve: give --max-accuracy-drop (and --eval)"),
        (plot is not None and explicit, f"--plot draws the budget search curve, which is not run with an explicit {flag}"),
        (grid is not None and method == "blocks", "--grid does not apply to --method blocks (every number of blocks is tried)"),
        (grid is not None and not grid, "--grid must list at least one value"),
        (bad, f"--grid values must be in (0, 1), got {', '.join(f'{float(g):g}' for g in bad)}"),
        (grid is not None and max_accuracy_drop is None, "--grid lists the values of the budget search: give --max-accuracy-drop"),
        (grid is not None and explicit, f"--grid does not apply with an explicit --{'sparsity' if method == 'magnitude' else 'ratio'}"),
    )
    if problem:
        raise UsageError(problem)


@dataclass
class PruneConfig:
    """The options of ``prune`` (see its docstring); ``validate`` checks them (exit 2)."""

    method: str = "channels"
    sparsity: float | None = None
    scope: str = "global"
    min_params: int = 1024
    skip_first_last: bool = True
    ratio: float | None = None
    ratios: dict | None = None
    importance: str = "l1"
    align: int = 8
    reconstruct: bool = True
    calibration: object = None
    blocks: int | None = None
    eval_data: object = None
    max_accuracy_drop: float | None = None
    metric: str | None = None
    grid: list[float] | None = None
    plot: object = None
    provider: str = "cpu"
    shapes: dict | None = None
    timing_runs: int = 30
    timing_threads: int | None = None

    def validate(self) -> PruneConfig:
        self.method = _ALIASES.get(self.method, self.method)
        # method-specific options given a non-default value with another method would be ignored
        specific = [
            ("--scope", self.scope, "global", "magnitude"),
            ("--min-params", int(self.min_params), 1024, "magnitude"),
            ("--include-first-last", not self.skip_first_last, False, "magnitude"),
            ("--importance", self.importance, "l1", "channels"),
            ("--align", int(self.align), 8, "channels"),
            ("--no-reconstruct", not self.reconstruct, False, "channels"),
        ]
        _check_args(
            self.method,
            self.sparsity,
            self.ratio,
            self.ratios,
            self.blocks,
            self.importance,
            self.scope,
            self.plot,
            self.max_accuracy_drop,
            self.calibration,
            self.grid,
            specific,
        )
        return self

    def pass_params(self) -> dict:
        """The parameters of the method's pass (its value left out when it is searched)."""
        if self.method == "magnitude":
            p = {"sparsity": self.sparsity, "scope": self.scope, "min_params": int(self.min_params), "skip_first_last": bool(self.skip_first_last)}
        elif self.method == "channels":
            p = {"ratio": self.ratio, "importance": self.importance, "align": int(self.align), "reconstruct": bool(self.reconstruct)}
            if self.ratios:
                p["ratios"] = {str(k): float(v) for k, v in self.ratios.items()}
        else:
            p = {"blocks": int(self.blocks) if self.blocks is not None else None}
        if self.grid is not None:
            p["grid"] = [float(g) for g in self.grid]
        return {k: v for k, v in p.items() if v is not None}


@blaming("model")
def prune(model, **options) -> PipelineResult:
    """Prune ``model`` (path or proto); returns the verified model and its report.

    Options (``PruneConfig``): ``method``: ``magnitude`` (``sparsity``, default 0.5;
    ``scope``, ``min_params``, ``skip_first_last``), ``channels`` (``ratio``, default 0.3,
    or per-layer ``ratios`` ``{layer: ratio}``; ``importance`` ``l1`` / ``activation``;
    kept channel counts rounded to multiples of ``align`` (1: exact counts); with
    ``calibration`` the layers after removed channels are refitted unless
    ``reconstruct=False``) or ``blocks`` (``blocks``, default 1).  ``max_accuracy_drop``
    (points of ``metric`` on ``eval_data``, else calibration data, else synthesized inputs
    shaped by ``shapes``) searches the value (over ``grid`` when given) when it is not
    given, and is enforced either way; ``plot`` writes the search curve (PNG).
    ``timing_runs=0`` skips the latency measurement; ``timing_threads`` sets ONNX Runtime's
    intra-op threads for it (default: ORT's); ``provider``.

    Stages: check the options, search the value within the budget (when asked), run the
    pass through the pipeline (which verifies it), report, plot.  Raises ``UsageError`` /
    ``DataError`` / ``ModelError`` (exit 2) for bad arguments, data or models,
    ``NothingToDoError`` (exit 3) when nothing can be pruned, and ``BudgetError`` (exit 3)
    when no value stays within the budget.
    """
    cfg = PruneConfig(**check_options(PruneConfig, "prune", options)).validate()
    method = cfg.method
    if cfg.plot is not None:
        check_output_path(cfg.plot, [model])
        require_matplotlib()
    m, path = resolve_model(model)
    check_shapes(m, cfg.shapes, path)
    ctx = make_context(
        m,
        calibration=cfg.calibration,
        eval_data=cfg.eval_data,
        shapes=cfg.shapes,
        provider=cfg.provider,
        max_accuracy_drop=cfg.max_accuracy_drop,
        metric=cfg.metric,
    )
    params = cfg.pass_params()
    probe = None
    if cfg.timing_runs:
        feed = ctx.inputs_for(m, prefer_eval=True).first_batch()  # every latency figure's feed
        probe = LatencyProbe(m, feed, provider=ctx.provider, runs=cfg.timing_runs, threads=cfg.timing_threads)
    outcome, ranking = None, None
    if cfg.max_accuracy_drop is not None and params.get(_VALUE[method]) is None and not cfg.ratios:
        outcome, ranking = _search(method, m, ctx, params, probe, path)
        if method == "blocks":
            params = {"names": [e["output"] for e in ranking[: int(outcome.chosen.value)]]}
        else:
            params[_VALUE[method]] = outcome.chosen.value
    result = _run(m, path, method, params, ctx)
    step = result.steps[0]
    if not step.modified:
        why = step.details.get("nothing_to_prune") or "; ".join(step.notes) or "no change"
        raise NothingToDoError(f"nothing to prune with --method {method}: {why}", path)
    _report(result, m, path, method, step, outcome, ranking, probe)
    if cfg.plot is not None and outcome is not None:
        _plot(result, outcome, method, cfg.plot)
    return result


def _run(m, path, method: str, params: dict, ctx) -> PipelineResult:
    """The method's pass through the pipeline (verified there); a failure names the diagnose
    command that explains it."""
    pass_ = make_pass(_KEYS[method], params, where=f"prune --method {method}", error=UsageError)
    try:
        return run_pipeline(m, [pass_], ctx, command="prune", extra={"method": method})
    except (BudgetError, VerificationError) as exc:
        from ..diagnose.hints import diagnose_hint

        if exc.path is None and path is not None:
            exc.path = str(path)
        exc.message += diagnose_hint(path, recipe=_KEYS[method], data=ctx.eval_data or ctx.data) if path else ""
        raise


def _plot(result: PipelineResult, outcome, method: str, plot) -> None:
    from .plot import plot_curve

    xlabel = {"magnitude": "sparsity", "channels": "channel ratio removed", "blocks": "residual blocks removed"}[method]
    before = result.report["figures"]["before"]
    plot_curve(outcome, plot, xlabel=xlabel, base_params=before["params"], base_flops=before["flops"], title=f"prune --method {method}")
    result.report["plot"] = str(plot)


def _search(method, model, ctx, params, probe, path):
    """The budget search with latency per point; returns (outcome, block ranking or None)."""
    from ..core.passes import Context
    from ..metrics import Evaluator
    from .blocks import find_blocks
    from .passes import GRIDS, input_dims, no_point, rank_blocks
    from .search import search

    evaluator = Evaluator(model, ctx.inputs_for(model, prefer_eval=True), ctx.budget.metric, provider=ctx.provider, limit=512)
    plain = Context(data=ctx.data, eval_data=ctx.eval_data, shapes=ctx.shapes, provider=ctx.provider, seed=ctx.seed, reference=model)
    ranking = None
    if method == "blocks":
        dims = input_dims(ctx)
        found, refusals = find_blocks(model, dims)
        if not found:
            why = refusals[0] if refusals else "the model has no Add of two activations"
            raise NothingToDoError(f"nothing to prune with --method blocks: no residual blocks (y = x + f(x) with matching shapes): {why}", path)
        ranking = rank_blocks(model, found, evaluator, dims)
        values = list(range(1, len(ranking) + 1))

        def build(k):
            p = make_pass("prune-blocks", {"names": [e["output"] for e in ranking[: int(k)]]}, error=UsageError)
            return p(model, plain).model
    else:
        values = params.get("grid") or GRIDS[method]
        key = _KEYS[method]

        def build(v):
            res = make_pass(key, {**params, _VALUE[method]: v}, error=UsageError)(model, plain)
            if not res.modified:
                raise NothingToDoError(res.report.details.get("nothing_to_prune") or "nothing pruned", path)
            return res.model

    outcome = search(values, build, evaluator, ctx.budget.max_drop, probe=probe, label=f"{_VALUE[method]} search")
    if outcome.chosen is None:
        if outcome.points and all(p.error for p in outcome.points):
            raise NothingToDoError(f"nothing to prune with --method {method}: {outcome.points[0].error}", path)
        from ..diagnose.hints import diagnose_hint

        hint = diagnose_hint(path, recipe=_KEYS[method], data=ctx.eval_data or ctx.data) if path else ""
        raise BudgetError(no_point(_VALUE[method], outcome) + hint, path)
    return outcome, ranking


def _report(result, model, path, method, step, outcome, ranking, probe) -> None:
    rep = result.report
    zipped = method == "magnitude"
    before, after = figures(model, zip_bytes=zipped), figures(result.model, zip_bytes=zipped)
    rep["input"] = str(path) if path else None
    rep["figures"] = {"before": before, "after": after}
    if probe is not None:
        rep["latency"] = probe(result.model)
    details = copy.deepcopy(step.details)
    rep["details"] = details
    rep["notes"] = list(step.notes)
    rep["value"] = len(details.get("removed", [])) if method == "blocks" else details.get("sparsity_target" if method == "magnitude" else "ratio")
    if ranking is not None:
        details["ranking"] = ranking
    if outcome is not None:
        rep["search"] = outcome.to_dict()
    verification = step.verification or {}
    rep["metric"] = verification.get("metric")
