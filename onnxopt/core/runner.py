"""``onnxopt run``: a recipe applied to a model, verified step by step."""

from __future__ import annotations

from pathlib import Path

from ..data import check_shapes, dataset_for
from ..errors import BudgetError, RecipeError, VerificationError, blame
from ..io import resolve_model
from ..metrics import Budget
from .passes import Context
from .pipeline import PipelineResult, run_pipeline
from .recipe import load_recipe

__all__ = ["run", "make_context"]


def make_context(
    model, *, calibration=None, eval_data=None, shapes=None, provider: str = "cpu", max_accuracy_drop: float | None = None, metric: str | None = None,
    seed: int = 0,
) -> Context:
    """A Context with DATA validated against ``model``."""
    from ..runtime import resolve_provider

    provider = resolve_provider(provider)
    cal = dataset_for(model, calibration) if calibration is not None else None
    ev = dataset_for(model, eval_data) if eval_data is not None else None
    budget = Budget(max_accuracy_drop, metric) if max_accuracy_drop is not None else None
    return Context(data=cal, eval_data=ev, shapes=shapes, provider=provider, seed=seed, budget=budget)


def run(
    recipe, model, *, calibration=None, eval_data=None, shapes=None, provider: str = "cpu", max_accuracy_drop: float | None = None,
    metric: str | None = None, fix_shapes: dict | None = None,
) -> PipelineResult:
    """Run a recipe (bundled name or TOML path) on a model (path or proto); ``fix_shapes``
    ({input: dims}) adds a first step making those inputs static."""
    rec = load_recipe(recipe)
    if not rec.steps:
        raise RecipeError("the recipe has no [[steps]]: nothing to run", rec.path)
    passes = rec.build()
    m, path = resolve_model(model)
    extra = {"recipe": rec.name, "input": str(path) if path else None}
    with blame(path, data=True):
        check_shapes(m, shapes, path)
        if fix_shapes:
            from ..simplify.fix_shapes import FixShapesPass

            passes.insert(0, FixShapesPass(shapes={k: list(v) for k, v in fix_shapes.items()}))
        # a fix-shapes step (from --fix-shapes or the recipe) sets the shapes every step is
        # verified at, and the dims it may fix
        fixed = {k: tuple(v) for p in passes if p.key == "fix-shapes" for k, v in p.config.shapes.items()}
        if fixed:
            from ..simplify.fix_shapes import check_fix_shapes

            check_fix_shapes(m, fixed, path)
            shapes = {**(shapes or {}), **fixed}
        ctx = make_context(
            m, calibration=calibration, eval_data=eval_data, shapes=shapes, provider=provider, max_accuracy_drop=max_accuracy_drop, metric=metric
        )
        ctx.fixed_shapes = fixed or None
        try:
            result = run_pipeline(m, passes, ctx, command=f"run {rec.name}", extra={"recipe": rec.name})
        except (VerificationError, BudgetError) as exc:
            from ..diagnose.hints import diagnose_hint

            exc.message += diagnose_hint(path, recipe=recipe, data=calibration if calibration is not None else eval_data) if path else ""
            raise
    result.report.update(extra)
    result.report["recipe_file"] = str(Path(rec.path).name)
    return result
