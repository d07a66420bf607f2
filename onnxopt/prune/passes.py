"""Pruning passes (lossy: judged by the accuracy metric, never by exact equality).

``prune-magnitude`` zeroes the smallest weights; ``prune-channels`` removes whole output
channels by dependency group and rewires the graph, then (with calibration data) refits
the layers that read the removed channels; ``prune-blocks`` removes residual branches.
Each pass also removes dead nodes and unused initializers.  When the value to use
(sparsity / ratio / number of blocks) is not given and the context has an accuracy
budget, the pass searches the largest one within it (``search``); without a budget it
uses the default.  A model with nothing to prune comes back unchanged with the reasons
in the notes and ``details["nothing_to_prune"]`` (the ``prune`` command turns that into
an error).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import onnx

from ..core.passes import Context, Pass, PassResult
from ..errors import BudgetError, UsageError, first_failure
from ..simplify.constants import constants_to_initializers
from ..simplify.dead import remove_unused
from ..simplify.dedupe import dedupe_initializers
from .blocks import find_blocks, remove_blocks
from .channels import apply_keep, select_keep
from .groups import Analysis, analyze
from .importance import activation_importance, l1_importance
from .magnitude import prune_magnitude
from .refit import RefitOptions, refit_layers
from .search import search
from .weights import fold_weight_expressions

__all__ = [
    "PruneMagnitudePass",
    "PruneChannelsPass",
    "PruneBlocksPass",
    "DEFAULTS",
    "GRIDS",
    "rank_blocks",
    "group_report",
    "input_dims",
    "no_point",
]

log = logging.getLogger(__name__)

DEFAULTS = {"magnitude": 0.5, "channels": 0.3, "blocks": 1}
GRIDS = {
    "magnitude": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
    "channels": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
}
_ZEROS_NOTE = "magnitude pruning only writes zeros: the file compresses better, but dense kernels do not run faster"


def _fraction(name: str, v) -> str | None:
    return None if v is None or 0 < float(v) < 1 else f"{name} must be in (0, 1), got {v}"


def _grid_problem(grid) -> str | None:
    bad = [g for g in grid or () if not (0 < float(g) < 1)]
    return first_failure((grid is not None and not grid, "grid must not be empty"), (bad, f"grid values must be in (0, 1), got {bad}"))


def input_dims(ctx: Context) -> dict | None:
    """Static dims for the graph inputs, for the shape analyses: ``--shape``, else the shapes
    of the data the model is verified on (exported models often have symbolic sizes)."""
    if ctx.shapes:
        return {k: tuple(int(d) for d in v) for k, v in ctx.shapes.items()}
    ds = ctx.eval_data if ctx.eval_data is not None else ctx.data
    return None if ds is None else {k: tuple(v.shape) for k, v in ds.first_batch().items()}


def _search_budget(ctx: Context, model: onnx.ModelProto):
    from ..metrics import Evaluator

    ds = ctx.inputs_for(model, prefer_eval=True)
    return Evaluator(
        model, ds, getattr(ctx.budget, "metric", None), provider=ctx.provider, limit=512
    )


# what each method searches, and the search's label
_SEARCHED = {
    "magnitude": ("sparsity", "sparsity search"),
    "channels": ("ratio", "ratio search"),
    "blocks": ("number of blocks", "block search"),
}


def _budget_value(
    value, values, build, model, ctx: Context, method: str, details: dict, evaluator=None
):
    """``value`` when given; else, with a budget, the largest of ``values`` whose model
    (``build(v)``) stays within it (the search goes in ``details["search"]``); else the
    method's default (``DEFAULTS``)."""
    if value is not None or ctx.budget is None:
        return DEFAULTS[method] if value is None else value
    what, label = _SEARCHED[method]
    outcome = search(
        values, build, evaluator or _search_budget(ctx, model), ctx.budget.max_drop, label=label
    )
    if outcome.chosen is None:
        raise BudgetError(no_point(what, outcome))
    details["search"] = outcome.to_dict()
    return outcome.chosen.value


class PruneMagnitudePass(Pass):
    """Unstructured magnitude pruning: zero the smallest weights (smaller zip, not faster)."""

    key = "prune-magnitude"
    exact = False
    idempotent = False

    @dataclass
    class Config:
        sparsity: float | None = None
        scope: str = field(default="global", metadata={"choices": ("global", "layer")})
        min_params: int = 1024
        skip_first_last: bool = True
        grid: list[float] | None = None

        def check(self):
            return "min_params must be >= 0" if self.min_params < 0 else (_fraction("sparsity", self.sparsity) or _grid_problem(self.grid))

    def _prune(self, model: onnx.ModelProto, sparsity: float) -> tuple[list[dict], list[dict]]:
        c = self.config
        return prune_magnitude(
            model,
            sparsity,
            scope=c.scope,
            min_params=c.min_params,
            skip_first_last=c.skip_first_last,
        )

    def call(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        constants_to_initializers(model)
        fold_weight_expressions(model)
        details: dict = {}

        def build(v):
            m = copy.deepcopy(model)
            if not self._prune(m, v)[0]:
                raise UsageError("no prunable weights")
            return m

        grid = self.config.grid or GRIDS["magnitude"]
        sparsity = _budget_value(
            self.config.sparsity, grid, build, model, ctx, "magnitude", details
        )
        records, skipped = self._prune(model, sparsity)
        details.update(
            {
                "sparsity_target": sparsity,
                "scope": self.config.scope,
                "initializers": records,
                "skipped": skipped,
            }
        )
        if not records:
            why = "no prunable weights: " + (
                "; ".join(f"{s['initializer']} ({s['reason']})" for s in skipped[:6])
                if skipped
                else "the model has no Conv / Gemm / MatMul with a constant weight"
            )
            details["nothing_to_prune"] = why
            return self.result(model, False, notes=[why], details=details)
        remove_unused(model)
        zeros = sum(round(r["sparsity"] * r["params"]) - r["zeros_before"] for r in records)
        return self.result(
            model,
            True,
            counts={
                "weights_pruned": len(records),
                "weights_skipped": len(skipped),
                "zeros_added": int(zeros),
            },
            notes=[_ZEROS_NOTE],
            details=details,
        )


def no_point(what: str, outcome) -> str:
    first = next((p for p in outcome.points if p.drop is not None), None)
    if first is None:
        return f"no {what} could be evaluated: {outcome.points[0].error if outcome.points else 'empty grid'}"
    return f"no {what} stays within the budget: {what} {first.value:g} already drops {outcome.metric} by {first.drop:.2f} points (budget {outcome.max_drop:g})"


def group_report(analysis: Analysis, keep: dict | None = None, ratios: dict | None = None) -> dict:
    keep = keep or {}
    pruned, intact, untouched = [], [], []
    for g in analysis.groups:
        layers = [analysis.sources[s].label for s in g.sources]
        weights = [analysis.sources[s].weight for s in g.sources]
        base = {"group": g.label, "layers": layers, "weights": weights, "channels": g.channels}
        if not g.prunable:
            intact.append({**base, "reason": g.blocked})
        elif g.id in keep and len(keep[g.id]) < g.channels:
            pruned.append({**base, "kept": int(len(keep[g.id])), "ratio": (ratios or {}).get(g.id)})
        else:
            untouched.append({"group": g.label, "layers": layers, "channels": g.channels})
    return {"pruned": pruned, "intact": intact, "unchanged": untouched}


class PruneChannelsPass(Pass):
    """Structured pruning: remove output channels by dependency group, rewire, reconstruct."""

    key = "prune-channels"
    exact = False
    idempotent = False

    @dataclass
    class Config:
        ratio: float | None = None
        ratios: dict | None = None
        importance: str = field(default="l1", metadata={"choices": ("l1", "activation")})
        align: int = 8
        reconstruct: bool = True
        ridge: float = 1e-3
        max_samples: int = 512
        max_features: int = 8192
        grid: list[float] | None = None

        def check(self):
            for k, v in (self.ratios or {}).items():
                p = f"ratios['{k}'] must be a number" if not isinstance(v, (int, float)) or isinstance(v, bool) else _fraction(f"ratios['{k}']", v)
                if p:
                    return p
            return first_failure(
                (self.align < 1, "align must be >= 1"),
                (self.ridge < 0, "ridge must be >= 0"),
                (self.max_samples <= 0 or self.max_features <= 0, "max_samples and max_features must be positive"),
            ) or _fraction("ratio", self.ratio) or _grid_problem(self.grid)

    def _ratios_by_group(self, analysis: Analysis, base: float | None) -> dict[int, float]:
        named = dict(self.config.ratios or {})
        found: dict[int, list[float]] = {}
        known = set()
        for s in analysis.sources:
            keys = {s.label, s.out, s.weight}
            known |= keys
            for k in keys & set(named):
                found.setdefault(analysis.group_of[s.id], []).append(float(named[k]))
        unknown = sorted(set(named) - known)
        if unknown:
            sample = ", ".join(sorted(s.label for s in analysis.sources)[:8])
            raise UsageError(
                f"ratios name unknown layer(s) {', '.join(unknown)} (layers are named by node, output or weight, e.g. {sample})"
            )
        # tied layers named differently: the gentler ratio
        return {
            g.id: min(found[g.id]) if g.id in found else base
            for g in analysis.prunable
            if g.id in found or base is not None
        }

    def prune(
        self, model: onnx.ModelProto, ctx: Context, ratio: float | None
    ) -> tuple[onnx.ModelProto, dict, list[str]]:
        """Prune a copy of ``model`` at ``ratio`` (named ``ratios`` override); returns
        (model, details, notes).  ``model`` must have its Constant nodes as initializers."""
        work = copy.deepcopy(model)  # model stays the teacher of the reconstruction
        analysis = analyze(work, input_dims(ctx))
        notes = [f"channel group {g.label} left intact: {g.blocked}" for g in analysis.intact]
        notes += analysis.notes
        details: dict = {"importance": self.config.importance}
        if not analysis.prunable:
            why = "no prunable channel group" + (
                f": {analysis.intact[0].label} ({analysis.intact[0].blocked})"
                + (f" and {len(analysis.intact) - 1} more" if len(analysis.intact) > 1 else "")
                if analysis.intact
                else " (no Conv / Gemm / MatMul with a constant weight)"
            )
            details["groups"] = group_report(analysis)
            details["nothing_to_prune"] = why
            return work, details, notes
        ratios = self._ratios_by_group(analysis, ratio)
        if self.config.importance == "activation":
            if ctx.data is None:
                raise UsageError("importance 'activation' needs calibration data (--calibration)")
            imp = activation_importance(
                work, analysis, ctx.data, provider=ctx.provider, limit=self.config.max_samples
            )
        else:
            imp = l1_importance(work, analysis)
        keep = {gid: select_keep(imp[gid], r, self.config.align) for gid, r in ratios.items()}
        keep = {gid: k for gid, k in keep.items() if len(k) < analysis.groups[gid].channels}
        details["groups"] = group_report(analysis, keep, ratios)
        if not keep:
            details["nothing_to_prune"] = (
                f"ratio {ratio} removes no channel (groups too small for it, channel counts rounded to multiples of align={self.config.align})"
            )
            return work, details, notes
        details["rewiring"] = apply_keep(work, analysis, keep)
        if self.config.reconstruct and ctx.data is not None:
            layers = self._refit_targets(model, analysis, keep)
            opts = RefitOptions(
                ridge=self.config.ridge,
                max_samples=self.config.max_samples,
                max_features=self.config.max_features,
                seed=ctx.seed,
            )
            records, more = refit_layers(
                work, model, layers, ctx.data, provider=ctx.provider, options=opts
            )
            details["reconstruction"] = records
            notes += more
            n = len(ctx.data)
            if n > self.config.max_samples:
                notes.append(
                    f"reconstruction used the first {self.config.max_samples} of the {n} calibration samples (max_samples)"
                )
            remove_unused(work)
        elif self.config.reconstruct:
            notes.append(
                "no calibration data: the layers after removed channels were not reconstructed (give --calibration)"
            )
        # a weight shared by several layers was sliced into one copy per reader: store
        # identical copies once again
        details["rewiring"]["initializers_merged"] = dedupe_initializers(work)
        remove_unused(work)
        return work, details, notes

    @staticmethod
    def _refit_targets(
        model: onnx.ModelProto, analysis: Analysis, keep: dict
    ) -> list[tuple[str, object]]:
        src_keep = analysis.source_keep(keep)
        touched = sorted(
            {
                s.node
                for s in analysis.consumers()
                if any(seg.source in src_keep for seg in s.layout)
            }
        )
        by_node = {s.node: s.id for s in analysis.sources}
        return [(model.graph.node[i].output[0], src_keep.get(by_node.get(i))) for i in touched]

    def call(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        constants_to_initializers(model)
        fold_weight_expressions(model)
        ratio, searched = self.config.ratio, {}
        if not self.config.ratios:
            grid = self.config.grid or GRIDS["channels"]
            ratio = _budget_value(
                ratio,
                grid,
                lambda v: self._checked(model, ctx, v),
                model,
                ctx,
                "channels",
                searched,
            )
        out, details, notes = self.prune(model, ctx, ratio)
        details["ratio"] = ratio
        details.update(searched)
        if "nothing_to_prune" in details:
            return self.result(model, False, notes=notes, details=details)
        g = details["groups"]
        counts = {
            "groups_pruned": len(g["pruned"]),
            "groups_intact": len(g["intact"]),
            "channels_removed": details["rewiring"]["channels_removed"],
        }
        if "reconstruction" in details:
            counts["layers_reconstructed"] = sum(
                1 for r in details["reconstruction"] if r["applied"]
            )
        return self.result(out, True, counts=counts, notes=notes, details=details)

    def _checked(self, model, ctx, ratio):
        out, details, _ = self.prune(model, ctx, ratio)
        if "nothing_to_prune" in details:
            raise UsageError(details["nothing_to_prune"])
        return out


def rank_blocks(
    model: onnx.ModelProto, blocks, evaluator, inputs: dict | None = None
) -> list[dict]:
    """Each block's effect when removed alone: metric drop, then cosine to the input's
    outputs (breaks ties between blocks whose drop is equal), least harmful first."""
    from ..metrics import score

    effects = []
    for b in blocks:
        m = copy.deepcopy(model)
        remove_blocks(m, [b.add], inputs)
        outs = evaluator.outputs(m)
        s = evaluator.score_outputs(outs)
        cos = score("cosine", evaluator.ref_outputs, outs)
        effects.append(
            {
                **b.to_dict(),
                "score": float(s),
                "drop": float(evaluator.reference_score - s),
                "cosine": float(cos),
            }
        )
    effects.sort(key=lambda e: (round(e["drop"], 9), -e["cosine"], e["output"]))
    return effects


class PruneBlocksPass(Pass):
    """Network trimming: remove the residual blocks whose removal hurts the metric least."""

    key = "prune-blocks"
    exact = False
    idempotent = False

    @dataclass
    class Config:
        blocks: int | None = None
        names: list[str] | None = None

        def check(self):
            if self.blocks is not None and self.blocks < 1:
                return f"blocks must be >= 1, got {self.blocks}"
            return "give either blocks or names, not both" if self.blocks is not None and self.names else None

    def call(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        constants_to_initializers(model)
        dims = input_dims(ctx)
        found, refusals = find_blocks(model, dims)
        details: dict = {"candidates": [b.to_dict() for b in found], "refused": refusals}
        if not found:
            why = "no residual blocks (y = x + f(x) with matching shapes)" + (
                f": {refusals[0]}" + (f" and {len(refusals) - 1} more" if len(refusals) > 1 else "")
                if refusals
                else ": the model has no Add of two activations"
            )
            details["nothing_to_prune"] = why
            return self.result(model, False, notes=[why], details=details)
        if self.config.names:
            known = {b.add for b in found} | {b.label for b in found}
            unknown = [n for n in self.config.names if n not in known]
            if unknown:
                raise UsageError(
                    f"not residual blocks of this model: {', '.join(unknown)} (blocks: {', '.join(b.label for b in found)})"
                )
            chosen = [
                b.add for b in found if b.add in self.config.names or b.label in self.config.names
            ]
        else:
            evaluator = _search_budget(ctx, model)
            ranking = rank_blocks(model, found, evaluator, dims)
            details["ranking"] = ranking

            def build(k):
                m = copy.deepcopy(model)
                remove_blocks(m, [e["output"] for e in ranking[: int(k)]], dims)
                return m

            counts = list(range(1, len(ranking) + 1))
            n = int(
                _budget_value(
                    self.config.blocks, counts, build, model, ctx, "blocks", details, evaluator
                )
            )
            if n > len(found):
                raise UsageError(
                    f"asked to remove {n} blocks, the model has {len(found)} residual blocks"
                )
            chosen = [e["output"] for e in ranking[:n]]
        removed = remove_blocks(model, chosen, dims)
        details["removed"] = [next(b.label for b in found if b.add == a) for a in removed]
        notes = [f"removed residual block {lbl}" for lbl in details["removed"]]
        return self.result(
            model,
            bool(removed),
            counts={"blocks_removed": len(removed), "blocks_found": len(found)},
            notes=notes,
            details=details,
        )
