"""``onnxopt.simplify``: the verified simplification of one model."""

from __future__ import annotations

from ..core.passes import Context
from ..core.pipeline import PipelineResult, run_pipeline
from ..data import check_shapes, dataset_for
from ..errors import blame
from ..io import resolve_model
from ..runtime import resolve_provider
from .fix_shapes import FixShapesPass, check_fix_shapes
from .passes import SimplifyPass

__all__ = ["simplify"]


def simplify(
    model, *, data=None, shapes: dict | None = None, provider: str = "cpu", use_onnxsim: bool = True, fix_shapes: dict | None = None
) -> PipelineResult:
    """Simplify ``model`` (path or proto): onnxsim with fallback to onnxopt's own passes.

    The output is verified against the input (checker, ORT load, outputs within 1e-4
    relative L2 on ``data`` or synthesized inputs, symbolic dims kept) and carries
    provenance.  ``fix_shapes`` ({input: dims}) first makes those inputs static.
    """
    m, path = resolve_model(model, lazy=None)  # a large model stays in its files
    provider = resolve_provider(provider)
    with blame(path, data=True):
        check_shapes(m, shapes, path)
        passes = [SimplifyPass(onnxsim=use_onnxsim)]
        if fix_shapes:
            check_fix_shapes(m, fix_shapes, path)
            passes.insert(0, FixShapesPass(shapes={k: list(v) for k, v in fix_shapes.items()}))
        ctx = Context(
            data=dataset_for(m, data) if data is not None else None,
            shapes={**(shapes or {}), **(fix_shapes or {})} or None,
            provider=provider,
            fixed_shapes=fix_shapes,
        )
        result = run_pipeline(m, passes, ctx, command="simplify")
    result.report["input"] = str(path) if path else None
    return result
