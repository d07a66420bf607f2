"""Which step broke it: recipe steps, ONNX Runtime's graph optimizers, FP16 node blocks.

- **Recipe steps** (``bisect_steps``): the steps run one by one (the recipe's passes, as
  ``onnxopt run`` builds them); after each, the outputs are compared with the model before
  the step, so the step's own change is measured even when a later step hides it.  An
  exact step breaks the exact-transform rule (``Comparison.inexact``); any step breaks it
  with a new NaN/Inf or a changed output shape; a step that raises is pinned with its
  message.  Without an exact failure the lossy step that moved the outputs most is the
  one explained.  The caller runs the layer-wise comparison on the pinned step.
- **ONNX Runtime optimizers** (``bisect_ort``): outputs at each optimization level
  (``disable`` is the reference) give the first level that leaves the exact rule; inside
  it, a prefix of ``ORT_OPTIMIZERS`` is enabled (the rest in ``disabled_optimizers``) and
  bisected to the first optimizer whose enabling breaks it.
- **FP16** (``bisect_fp16``): ``optimize.fp16.convert_to_fp16`` with the first k nodes (in
  graph order) in FP16 and the others kept in FP32, bisected on k down to one node.

Bisection assumes that breaking is monotone in the prefix (true when one culprit breaks it
on its own); the result is then re-checked and says when it was not confirmed.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from ..errors import OnnxoptError, VerificationError
from ..io import load_model
from ..runtime import create_session, run_dataset
from ..verify import compare_outputs, is_exact

__all__ = ["bisect_first", "StepCheck", "StepBisect", "bisect_steps", "OrtBisect", "bisect_ort", "Fp16Bisect", "bisect_fp16", "ORT_OPTIMIZERS", "leaves"]

log = logging.getLogger(__name__)

# graph transformers and rewrite rules of ONNX Runtime's CPU levels, roughly in the order
# they run (names unknown to the installed version are ignored by ORT)
ORT_OPTIMIZERS = (
    "EliminateIdentity", "EliminateSlice", "UnsqueezeElimination", "EliminateDropout", "ExpandElimination",
    "CastElimination", "NoopElimination", "DivMulFusion", "FuseReluClip", "GemmSumFusion", "GemmTransposeFusion",
    "NotWhereFusion", "ConvAddFusion", "ConvMulFusion", "ConvBNFusion", "PadFusion", "MatmulBNFusion",
    "ClipQuantFusion", "ReluQuantFusion", "ConstantFolding", "ConstantSharing", "CommonSubexpressionElimination",
    "ShapeInputMerge", "MatMulAddFusion", "ReshapeFusion", "ConcatSliceElimination", "GatherToSplitFusion",
    "GatherSliceToSplitFusion", "GatherToSliceFusion", "MatMulTransposeFusion", "MatMulScaleFusion",
    "MatMulActivationFusion", "DoubleQDQPairsRemover", "QDQPropagationTransformer", "QDQS8ToU8Transformer",
    "EnsureUniqueDQForNodeUnit", "QDQSelectorActionTransformer", "QDQFinalCleanupTransformer",
    "GemmActivationFusion", "MatMulIntegerToFloatFusion", "DynamicQuantizeMatMulFusion", "ConvActivationFusion",
    "ConvAddActivationFusion", "GeluFusion", "GeluFusionL1", "GeluFusionL2", "LayerNormFusion", "LayerNormFusionL1",
    "LayerNormFusionL2", "SimplifiedLayerNormFusion", "AttentionFusion", "EmbedLayerNormFusion", "SkipLayerNormFusion",
    "BiasGeluFusion", "FastGeluFusion", "QuickGeluFusion", "BiasSoftmaxFusion", "BiasDropoutFusion",
    "IsInfReduceSumFusion", "RotaryEmbeddingFusion", "GroupQueryAttentionFusion", "MatMulNBitsFusion",
    "TransposeOptimizer", "NhwcTransformer", "NchwcTransformer",
)  # fmt: skip

LEVELS = ("basic", "extended", "all")


def bisect_first(n: int, bad: Callable[[int], bool]) -> int | None:
    """The smallest ``i`` in ``[0, n)`` with ``bad(i)`` (``bad`` monotone), None when
    ``bad(n - 1)`` is false.  Calls ``bad`` about ``log2(n) + 1`` times."""
    if n <= 0 or not bad(n - 1):
        return None
    lo, hi = 0, n - 1  # bad(hi) holds
    while lo < hi:
        mid = (lo + hi) // 2
        if bad(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def leaves(comp, limit: float | None = None) -> str:
    """Why a comparison leaves the exact rule (or ``limit`` as rel-L2 limit): "" when it does not."""
    for o in comp.outputs:
        if o.note.startswith("shape") or o.note == "NaN/Inf pattern differs":
            return f"output '{o.name}': {o.note}"
    bad = comp.inexact() if limit is None else sorted((o for o in comp.outputs if not is_exact(o.rel_l2, o.max_abs, limit=limit)), key=lambda o: -o.rel_l2)
    return f"output '{bad[0].name}' moved by {bad[0].rel_l2:.3g} relative L2" if bad else ""


def _outputs(model, ds, provider: str, limit: int | None, **session) -> list[np.ndarray]:
    return run_dataset(create_session(model, provider, error=VerificationError, **session), ds, limit=limit, error=VerificationError)


@dataclass
class StepCheck:
    index: int
    key: str
    exact: bool
    rel_l2: float = 0.0  # worst output against the model before the step
    rel_l2_total: float = 0.0  # worst output against the recipe's input
    problem: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepBisect:
    steps: list[StepCheck]
    culprit: StepCheck | None
    reason: str = ""
    before: onnx.ModelProto | None = field(default=None, repr=False)
    after: onnx.ModelProto | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"steps": [s.to_dict() for s in self.steps], "culprit": self.culprit.to_dict() if self.culprit else None, "reason": self.reason}


def bisect_steps(model: onnx.ModelProto, passes: list, ctx, ds, *, limit: int | None = 64) -> StepBisect:
    """Run ``passes`` one by one on ``model``; pin the first step that breaks its promise
    (see the module docstring).  ``before``/``after`` hold the models around the pinned step."""
    names = [o.name for o in model.graph.output]
    first = prev = _outputs(model, ds, ctx.provider, limit)
    current, checks, worst = model, [], None
    for i, p in enumerate(passes, 1):
        check = StepCheck(i, p.key, bool(p.exact))
        checks.append(check)
        try:
            res = p(current, ctx)
            outs = _outputs(res.model, ds, ctx.provider, limit)
        except OnnxoptError as exc:
            check.problem = f"refused: {exc.message}"
            return StepBisect(checks, check, check.problem, current, None)
        step = compare_outputs(names, prev, outs)
        check.rel_l2, check.rel_l2_total = step.worst_rel_l2, compare_outputs(names, first, outs).worst_rel_l2
        check.problem = leaves(step) if p.exact else next((f"output '{o.name}': {o.note}" for o in step.outputs if o.note), "")
        if check.problem:
            return StepBisect(checks, check, check.problem, current, res.model)
        if not p.exact and (worst is None or check.rel_l2 > worst[0].rel_l2):
            worst = (check, current, res.model)
        current, prev = res.model, outs
    if worst is not None and worst[0].rel_l2 > 0:
        c = worst[0]
        return StepBisect(
            checks, c, f"no step broke its promise; lossy step {c.index} '{c.key}' moved the outputs most ({c.rel_l2:.3g} relative L2)", worst[1], worst[2]
        )
    return StepBisect(checks, None, "every step kept its promise")


@dataclass
class OrtBisect:
    levels: dict  # level -> worst rel-L2 against ORT_DISABLE_ALL
    level: str | None
    optimizer: str | None
    confirmed: bool
    reason: str
    version: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def bisect_ort(model, ds, *, provider: str = "cpu", limit: int | None = 64, rel_l2: float | None = None) -> OrtBisect:
    """The first optimization level, then the first optimizer in it, that moves the outputs
    beyond the exact rule (``rel_l2``: its relative-L2 limit) against ONNX Runtime with
    every optimization off."""
    import onnxruntime as ort

    names = [o.name for o in (model if isinstance(model, onnx.ModelProto) else load_model(model, load_external=False)).graph.output]
    ref = _outputs(model, ds, provider, limit, optimization_level="disable")

    def run(level: str, disabled=()) -> tuple[float, str]:
        """(worst rel-L2, why it leaves the rule) at ``level`` with ``disabled`` optimizers off."""
        comp = compare_outputs(names, ref, _outputs(model, ds, provider, limit, optimization_level=level, disabled_optimizers=list(disabled)))
        return comp.worst_rel_l2, leaves(comp, rel_l2)

    levels, culprit_level, why = {}, None, ""
    for level in LEVELS:
        levels[level], why = run(level)
        if why:
            culprit_level = level
            break
    if culprit_level is None:
        return OrtBisect(levels, None, None, True, "every optimization level keeps the outputs within the exact rule", ort.__version__)

    def bad(i: int) -> bool:
        return bool(run(culprit_level, ORT_OPTIMIZERS[i + 1 :])[1])

    if bad(-1):
        return OrtBisect(
            levels,
            culprit_level,
            None,
            False,
            f"level '{culprit_level}' ({why}); the change comes from an optimizer outside onnxopt's list for onnxruntime {ort.__version__}",
            ort.__version__,
        )
    i = bisect_first(len(ORT_OPTIMIZERS), bad)
    name = ORT_OPTIMIZERS[i] if i is not None else None
    confirmed = name is not None and not run(culprit_level, [name])[1]
    reason = f"level '{culprit_level}' ({why}); first optimizer that breaks it: {name}" + (
        "" if confirmed else " (disabling it alone does not restore the outputs: more than one optimizer is involved)"
    )
    return OrtBisect(levels, culprit_level, name, confirmed, reason, ort.__version__)


@dataclass
class Fp16Bisect:
    nodes: int
    limit: float
    full: str  # why the fully converted model leaves the limit ("" when it does not)
    node: str | None = None
    op: str | None = None
    index: int | None = None
    confirmed: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def bisect_fp16(model: onnx.ModelProto, ds, *, limit_rel_l2: float = 1e-2, provider: str = "cpu", limit: int | None = 64) -> Fp16Bisect:
    """The first node (graph order) whose conversion to FP16 takes the outputs past
    ``limit_rel_l2`` (or changes their NaN/Inf pattern)."""
    from ..optimize.fp16 import convert_to_fp16

    model = copy.deepcopy(model)
    taken = {n.name for n in model.graph.node if n.name}
    for k, n in enumerate(model.graph.node):
        if not n.name:
            n.name = next(f"{n.op_type}_{k}_{j}" for j in range(len(taken) + 1) if f"{n.op_type}_{k}_{j}" not in taken)
            taken.add(n.name)
    order = [n.name for n in model.graph.node]
    names = [o.name for o in model.graph.output]
    ref = _outputs(model, ds, provider, limit)

    def why(keep_fp32: set) -> str:
        m, _ = convert_to_fp16(model, keep_fp32=keep_fp32)
        return leaves(compare_outputs(names, ref, _outputs(m, ds, provider, limit)), limit_rel_l2)

    full = why(set())
    res = Fp16Bisect(len(order), limit_rel_l2, full)
    if not full:
        res.reason = f"the FP16 model stays within {limit_rel_l2:g} relative L2"
        return res
    i = bisect_first(len(order), lambda k: bool(why(set(order[k + 1 :]))))
    if i is None:
        res.reason = "no prefix of nodes reproduces the failure"
        return res
    node = model.graph.node[i]
    res.node, res.op, res.index = node.name, node.op_type, i
    res.confirmed = not why({node.name})
    res.reason = f"converting node '{node.name}' ({node.op_type}) to FP16 takes the outputs out ({full})" + (
        "; keeping it in FP32 fixes the model" if res.confirmed else "; keeping only it in FP32 is not enough"
    )
    return res
