"""The pipeline runner: passes in order, each step verified before the next.

After every step: ``onnx.checker`` (full, strict shape inference where possible), an ORT
session that loads, and a numerical comparison against the pipeline's *input* model on the
context's data (evaluation data, else calibration data, else synthesized inputs):

- exact passes must keep every output within 1e-4 relative L2 (and shapes unchanged), or
  within their own ``Pass.limit`` (a pass that reassociates float arithmetic);
- lossy passes (quantize, prune, ...) keep output shapes; their metric score against the
  input is recorded and, when the context has a budget, must stay within it.

A step whose outputs change meaning (``Pass.own_reference``: a new head, a chain built
from several models) is checked against the outputs it says it must give instead
(``check_expected``); the steps after it are verified against the model it made.  Such a
step may be a source (``model=None``: it builds the model).

The first failing step stops the run with a VerificationError (exit 3) naming the step.
The output carries provenance (see ``provenance``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

from ..errors import BudgetError, ModelError, OnnxoptError, VerificationError
from ..metrics import Evaluator
from ..runtime import run_dataset
from ..verify import (
    EXACT_REL_L2,
    check_comparison,
    check_model,
    compare_outputs,
    frozen_dims,
    verify_other_shapes,
)
from .passes import Context, Expected, Pass, PassReport
from .progress import progress
from .provenance import write_provenance
from .result import Result

__all__ = ["PipelineResult", "StepVerifier", "check_expected", "interface_change", "run_pipeline"]

log = logging.getLogger(__name__)


class StepVerifier:
    """Verifies candidate models against one reference model on one dataset (outputs cached).

    With synthesized inputs and symbolic dims, every step is also run at the further shapes
    input discovery found (``Dataset.alternatives``): each symbolic axis is checked at two
    values or more, and an exact step must be exact at each.  A step may not fix a dynamic
    input or output dim unless the user asked for it (``ctx.fixed_shapes``)."""

    def __init__(self, reference: onnx.ModelProto, ctx: Context, *, limit: int | None = 512):
        self.ctx = ctx
        self.reference = reference
        self.dataset = ctx.inputs_for(reference, prefer_eval=True)
        self.names = [o.name for o in reference.graph.output]
        self.evaluator = Evaluator(reference, self.dataset, getattr(ctx.budget, "metric", None), provider=ctx.provider, limit=limit)
        self.shape_cache: dict = {}  # reference outputs at the other shapes

    def __call__(self, model: onnx.ModelProto, label: str, *, exact: bool, limit: float = EXACT_REL_L2) -> dict:
        check = check_model(model, provider=self.ctx.provider, label=label)
        problem = interface_change(self.reference, model) or frozen_dims(self.reference, model, fixed=set(self.ctx.fixed_shapes or ()))
        if problem:
            raise VerificationError(f"{label}: {problem}")
        outputs = self.evaluator.outputs(model)
        if len(outputs) != len(self.names):
            raise VerificationError(f"{label}: the model now has {len(outputs)} outputs, the input had {len(self.names)}")
        samples = len(outputs[0]) if outputs and outputs[0].ndim else 1
        comp = compare_outputs(self.names, self.evaluator.ref_outputs, outputs, samples=samples, source=self.dataset.describe())
        check_comparison(comp, label, exact=exact, limit=limit)
        record = {"check": check.to_dict(), "comparison": comp.to_dict()}
        score = self.evaluator.score_outputs(outputs)
        ref = self.evaluator.reference_score
        record["metric"] = {"name": self.evaluator.metric, "reference": ref, "score": score, "drop": ref - score}
        if not exact and self.ctx.budget is not None:
            drop = record["metric"]["drop"]
            if drop > self.ctx.budget.max_drop + 1e-9:
                raise BudgetError(f"{label}: {self.evaluator.metric} dropped {drop:.2f} points (budget {self.ctx.budget.max_drop:g})")
        others = verify_other_shapes(
            self.reference, model, self.dataset, exact=exact, label=label, provider=self.ctx.provider, seed=self.ctx.seed, cache=self.shape_cache, limit=limit
        )
        if others:
            record["other_shapes"] = others
        return record


def check_expected(model: onnx.ModelProto, expected: Expected, *, provider: str = "cpu") -> dict:
    """``model`` against the outputs its step said it must give: checker + ORT load, then
    every output on ``expected.dataset`` (``Expected.exact``: the exact-transform rule, else
    the comparison's tolerance).  The first output that differs raises ``VerificationError``
    with ``expected.failure``.  ``expected.judge``, when set, decides instead of the
    comparison (``Expected``)."""
    check = check_model(model, provider=provider, label=expected.label)
    ds = expected.dataset() if callable(expected.dataset) else expected.dataset
    expected.dataset = ds
    if expected.judge is not None:
        return {"check": check.to_dict(), **expected.judge(model, ds)}
    got = run_dataset(model, ds, provider=provider, batch_size=expected.batch_size, limit=expected.limit, error=VerificationError)
    ref = expected.outputs(ds) if callable(expected.outputs) else expected.outputs
    names = [o.name for o in model.graph.output]
    samples = int(got[0].shape[0]) if got and got[0].ndim else 1
    comp = compare_outputs(names, ref, got, samples=samples, source=getattr(ds, "source", ""))
    expected.outputs = ref
    bad = [o for o in comp.outputs if not (o.exact if expected.exact else o.ok)]
    if bad:
        o = bad[0]
        raise VerificationError(expected.failure.format(label=expected.label, name=o.name, rel_l2=o.rel_l2, max_abs=o.max_abs, note=o.note).strip())
    expected.verified = got
    return {"check": check.to_dict(), "comparison": comp.to_dict()}


def _inputs(model: onnx.ModelProto) -> tuple[dict[str, int], set[str]]:
    """({real input: elem_type}, {inputs that an initializer backs})."""
    inits = {t.name for t in model.graph.initializer}
    real = {i.name: i.type.tensor_type.elem_type for i in model.graph.input if i.name not in inits}
    return real, {i.name for i in model.graph.input if i.name in inits}


def interface_change(reference: onnx.ModelProto, model: onnx.ModelProto) -> str:
    """Why ``model`` no longer has ``reference``'s interface ("" when it does): the same
    real inputs (name, element type), every output name in order, and, in IR >= 4 models,
    every overridable initializer still an input (IR < 4 lists all weights as inputs, so
    folding them away is allowed there)."""
    ref_real, ref_over = _inputs(reference)
    real, over = _inputs(model)
    if set(real) != set(ref_real):
        gone, new = sorted(set(ref_real) - set(real)), sorted(set(real) - set(ref_real))
        return "graph inputs changed" + (f"; removed: {', '.join(gone)}" if gone else "") + (f"; added: {', '.join(new)}" if new else "")
    retyped = sorted(k for k in real if real[k] != ref_real[k])
    if retyped:
        return f"graph input(s) {', '.join(retyped)} changed element type"
    if reference.ir_version >= 4:
        lost = sorted(ref_over - over - set(real))
        if lost:
            return f"overridable initializer input(s) {', '.join(lost)} are no longer graph inputs"
    names = [o.name for o in model.graph.output]
    ref_names = [o.name for o in reference.graph.output]
    return f"graph outputs changed: {', '.join(ref_names)} -> {', '.join(names)}" if names != ref_names else ""


@dataclass
class PipelineResult(Result):
    """``steps``: the reports of the passes; ``expected``: the ``Expected`` of the last step
    that had one (its ``verified`` holds that step's model outputs), else None."""

    steps: list[PassReport] = field(default_factory=list)
    expected: Expected | None = None


def run_pipeline(
    model: onnx.ModelProto | None,
    passes: list[Pass],
    ctx: Context | None = None,
    *,
    command: str = "run",
    extra: dict | Callable[[list[PassReport]], dict] | None = None,
    check_input: bool = True,
    provenance: bool = True,
) -> PipelineResult:
    """Apply ``passes`` in order, verifying after each; returns the final model + report.

    ``model`` None: the first pass is a source and builds the model (see the module
    docstring).  ``check_input=False``: the caller has checked the input model already (it
    had to, before reading DATA against it).  ``extra``: entries added to the provenance
    record and the report; a function of the steps' reports when they depend on what the
    steps chose (``quantize``: the chosen candidate).  ``provenance=False``: the caller
    writes one record with these steps and its own (``ensemble``: the merge, then a
    recipe's steps)."""
    ctx = ctx or Context()
    if ctx.reference is None:
        ctx.reference = model
    own = bool(passes) and passes[0].own_reference
    verifier = StepVerifier(model, ctx) if not own else None
    if check_input and model is not None:
        check_model(model, provider=ctx.provider, label="input model", error=ModelError)
    base = current = model
    expected = None
    reports: list[PassReport] = []
    for i, p in enumerate(progress(passes, desc=command, unit="step"), start=1):
        label = f"step {i} '{p.key}'"
        log.info("%s ...", label)
        try:
            res = p(current, ctx)
        except OnnxoptError as exc:  # a pass that refuses: the error names the step too
            if len(passes) > 1 and not exc.message.startswith(label):
                exc.message = f"{label}: {exc.message}"
            raise
        if res.expected is not None:
            res.report.verification = check_expected(res.model, res.expected, provider=ctx.provider)
            expected = res.expected
            base, verifier = res.model, None  # later steps: against the model this step made
            if ctx.reference is None:  # a source: later steps' teacher is the model it built
                ctx.reference = res.model
        else:
            verifier = verifier or StepVerifier(base, ctx)
            res.report.verification = verifier(res.model, label, exact=p.exact, limit=p.limit)
        reports.append(res.report)
        current = res.model
    if callable(extra):
        extra = extra(reports)
    if provenance:
        write_provenance(current, command, [r.record() for r in reports], extra)
    report = {
        "command": command,
        "steps": [r.to_dict() for r in reports],
        "modified": any(r.modified for r in reports),
    }
    if extra:
        report.update(extra)
    if reports:
        report.update(before=reports[0].before, after=reports[-1].after)
    return PipelineResult(current, report, True, reports, expected)

