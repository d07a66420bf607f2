"""``--fix-shapes NAME:D1,D2,..``: static input dims, asked for by the user.

Without it every transform keeps the input model's symbolic input and output dims (the
pipeline's verifier refuses a step that freezes one).  ``FixShapesPass`` sets the named
inputs' dims, then propagates them by shape inference into the outputs and value_info, so
that a later ``simplify`` step can fold the shape computations they fed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import onnx

from ..core.passes import Context, Pass, PassResult
from ..errors import DataError

__all__ = ["FixShapesPass", "check_fix_shapes", "fix_shapes"]

log = logging.getLogger(__name__)


def check_fix_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple], path=None) -> None:
    """DataError unless every entry names an input of ``model`` with the same rank and
    agrees with its fixed dims."""
    from ..data import input_specs

    specs = {s.name: s for s in input_specs(model)}
    for name, dims in shapes.items():
        s = specs.get(name)
        if s is None:
            raise DataError(f"--fix-shapes names '{name}', not an input of the model (inputs: {', '.join(specs) or 'none'})", path)
        if any(int(d) <= 0 for d in dims):
            raise DataError(f"--fix-shapes {name}: dims must be positive, got {list(dims)}", path)
        if s.shape is not None and len(s.shape) != len(dims):
            raise DataError(f"--fix-shapes {name} has rank {len(dims)}, model input is {s.describe()}", path)
        for axis, (want, got) in enumerate(zip(s.shape or (), dims, strict=False)):
            if isinstance(want, int) and want != int(got):
                raise DataError(f"--fix-shapes {name}: axis {axis} is fixed to {want} in the model, not {got}", path)


class FixShapesPass(Pass):
    """Fix the named inputs' symbolic dims to numbers and infer the shapes that follow."""

    key = "fix-shapes"

    @dataclass
    class Config:
        shapes: dict = field(default_factory=dict)  # input name -> [D1, D2, ...]

        def check(self):
            bad = [k for k, v in self.shapes.items() if not isinstance(v, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in v)]
            return f"shapes of {', '.join(bad)} must be lists of integers" if bad else None

    def call(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        shapes = {k: tuple(int(d) for d in v) for k, v in self.config.shapes.items()}
        if not shapes:
            return self.result(model, False, notes=["no shapes given: nothing fixed"])
        check_fix_shapes(model, shapes)
        fixed = 0
        for vi in model.graph.input:
            if vi.name not in shapes:
                continue
            shape = vi.type.tensor_type.shape
            if not vi.type.tensor_type.HasField("shape") or len(shape.dim) != len(shapes[vi.name]):
                shape.ClearField("dim")
                shape.dim.extend(onnx.TensorShapeProto.Dimension() for _ in shapes[vi.name])
            for d, value in zip(shape.dim, shapes[vi.name], strict=True):
                if not (d.HasField("dim_value") and d.dim_value == value):
                    fixed += 1
                d.Clear()
                d.dim_value = value
        out, inferred = _propagate(model)
        notes = [] if inferred else ["shape inference failed: the outputs keep their declared dims"]
        frozen = sum(1 for a, b in zip(model.graph.output, out.graph.output, strict=True) if a.SerializeToString() != b.SerializeToString())
        return self.result(out, fixed > 0 or frozen > 0, counts={"input_dims_fixed": fixed, "outputs_reshaped": frozen}, notes=notes)


def _propagate(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """Shape inference from the fixed inputs: value_info is recomputed and each output's
    symbolic dims take the inferred numbers (declared numbers and ranks are kept)."""
    declared = {o.name: onnx.ValueInfoProto.FromString(o.SerializeToString()) for o in model.graph.output}
    model.graph.ClearField("value_info")
    for o in model.graph.output:
        for d in o.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.Clear()  # unknown: inference fills what it can
    try:
        out = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        log.info("fix-shapes: shape inference failed: %s", exc)
        for o in model.graph.output:
            o.CopyFrom(declared[o.name])
        return model, False
    for o in out.graph.output:
        old = declared[o.name].type.tensor_type.shape.dim
        new = o.type.tensor_type.shape.dim
        if len(new) != len(old):
            o.CopyFrom(declared[o.name])
            continue
        for d_new, d_old in zip(new, old, strict=True):
            if not d_new.HasField("dim_value") and d_old.HasField("dim_param"):
                d_new.dim_param = d_old.dim_param
    return out, True


def fix_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple] | None, *, provider: str = "cpu", path=None):
    """``(model, step report)``: ``model`` with ``shapes`` fixed, verified against the input
    at those shapes (``run_pipeline``); ``(model, None)`` when ``shapes`` is empty.  Used by
    the commands whose own verification starts from the model they are handed (quantize,
    optimize)."""
    if not shapes:
        return model, None
    from ..core.pipeline import run_pipeline

    check_fix_shapes(model, shapes, path)
    ctx = Context(shapes=dict(shapes), fixed_shapes=dict(shapes), provider=provider)
    res = run_pipeline(model, [FixShapesPass(shapes={k: list(v) for k, v in shapes.items()})], ctx, command="fix-shapes")
    return res.model, res.report["steps"][0]
