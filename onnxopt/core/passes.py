"""The pass protocol: one shape for every transform.

A pass is configured once (``Pass(**params)``, validated against its ``Config`` dataclass)
and called as ``pass_(model, ctx) -> PassResult``.  Subclasses implement ``call`` only;
``__call__`` copies the model (passes are functional: the input is never mutated), times
the call and fills the report's before/after statistics.  Passes never print, never exit
and never read files.

A pass whose outputs no longer mean what its input's did (a new head, a chain of stages
built from several models: ``own_reference = True``) says what they must be instead: its
result carries an ``Expected`` (the outputs on a dataset and how they are judged), which
the pipeline verifies the new model against.  Such a pass may be a *source*: called with
``model=None``, it builds the model from its configuration.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
import time
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import onnx

from ..errors import RecipeError
from ..graph import walk_bodies
from ..stats import model_stats
from ..verify import EXACT_REL_L2

__all__ = ["Context", "Expected", "PassReport", "PassResult", "Pass", "validate_config"]

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What a pass may use besides the model.

    ``data``: calibration Dataset (or None); ``eval_data``: evaluation Dataset with labels
    (or None); ``shapes``: values for symbolic input dims; ``budget``: a metrics.Budget;
    ``reference``: the pipeline's input model (teacher / FP32 reference); ``fixed_shapes``:
    inputs the user asked to make static, whose dims a step may fix; ``path``: the input
    model's file, for errors about it.
    """

    data: Any = None
    eval_data: Any = None
    shapes: dict | None = None
    provider: str = "cpu"
    seed: int = 0
    budget: Any = None
    reference: onnx.ModelProto | None = None
    options: dict = field(default_factory=dict)
    fixed_shapes: dict | None = None  # inputs the user asked to make static (--fix-shapes)
    path: str | None = None

    def inputs_for(self, model: onnx.ModelProto, *, prefer_eval: bool = False):
        """A Dataset fitting ``model``: eval/calibration data, else synthesized inputs."""
        from ..data import dataset_for

        order = (self.eval_data, self.data) if prefer_eval else (self.data, self.eval_data)
        for ds in order:
            if ds is not None:
                return dataset_for(model, ds)
        return dataset_for(model, None, self.shapes, seed=self.seed)


@dataclass
class PassReport:
    """What one pass did: counts of what changed, stats before/after, seconds, notes.

    ``extras``: in-memory by-products for the caller (arrays, fitted objects, timings); never
    in ``to_dict``, so neither in reports nor in provenance."""

    name: str
    params: dict = field(default_factory=dict)
    modified: bool = False
    counts: dict = field(default_factory=dict)
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    verification: dict | None = None
    extras: dict = field(default_factory=dict, repr=False)

    def to_dict(self, *, timing: bool = True) -> dict:
        d = dataclasses.asdict(dataclasses.replace(self, extras={}))
        d.pop("extras")
        if not timing:
            d.pop("seconds")
        return d

    def record(self) -> dict:
        """What provenance keeps of the step: ``to_dict`` without seconds or the before/after
        statistics (identical runs write identical files)."""
        d = self.to_dict(timing=False)
        d.pop("before", None)
        d.pop("after", None)
        return d


@dataclass
class Expected:
    """What a step's outputs must be when they are not the input model's.

    ``outputs[k]``: output ``k`` of the new model on ``dataset`` (run with ``batch_size``,
    at most ``limit`` samples).  Either may be a function, called once the new model passed
    the checker (``dataset()``; ``outputs(dataset)``), so that a model that fails the check
    fails there first.  ``exact``: each output within the exact-transform rule
    (``verify.OutputComparison.exact``), else within the comparison's tolerance
    (``OutputComparison.ok``).  ``label`` names the model in the check's errors;
    ``failure`` is the message of an output that differs (format fields: ``name``,
    ``rel_l2``, ``max_abs``, ``note``).  ``verified``: the new model's outputs, set by the
    pipeline once they passed.

    ``judge``: where a plain output comparison cannot decide (``ensemble``'s parity: the
    members' values inside the merged graph, float16 limits, ambiguous votes), a function
    ``judge(model, dataset) -> dict`` called instead of the comparison, once the model passed
    the checker; it raises ``VerificationError`` when the model fails and returns the record
    the step's verification keeps (``outputs`` is then unused).
    """

    dataset: Any
    outputs: Any
    label: str
    failure: str = "{label}: output '{name}' differs from the expected outputs: relative L2 {rel_l2:.3g}, max abs {max_abs:.3g}"
    exact: bool = True
    limit: int | None = None
    batch_size: int | None = None
    verified: list | None = None
    judge: Any = None


@dataclass
class PassResult:
    model: onnx.ModelProto
    modified: bool
    report: PassReport
    expected: Expected | None = None  # set by passes with ``own_reference``


def _type_ok(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and (not args or all(_type_ok(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict)
    return not isinstance(hint, type) or isinstance(value, hint)


def validate_config(config_cls, params: dict, where: str, error=RecipeError):
    """Instantiate ``config_cls`` from ``params``: unknown names, wrong types and values
    outside ``metadata['choices']`` are errors naming ``where``."""
    names = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise error(f"{where}: unknown parameter(s) {', '.join(unknown)} (known: {', '.join(sorted(names)) or 'none'})")
    hints = typing.get_type_hints(config_cls)
    for k, v in params.items():
        if not _type_ok(v, hints.get(k, Any)):
            raise error(f"{where}: parameter '{k}' has the wrong type ({type(v).__name__}; expected {getattr(hints.get(k), '__name__', hints.get(k))})")
        choices = names[k].metadata.get("choices")
        if choices is not None:
            vals = v if isinstance(v, (list, tuple)) else [v]
            bad = [x for x in vals if x not in choices]
            if bad:
                raise error(f"{where}: parameter '{k}' = {v!r} is not one of {', '.join(map(str, choices))}")
    try:
        cfg = config_cls(**params)
    except (TypeError, ValueError) as exc:
        raise error(f"{where}: {exc}") from exc
    problem = cfg.check() if hasattr(cfg, "check") else None
    if problem:
        raise error(f"{where}: {problem}")
    return cfg


class Pass:
    """Base class.  Subclasses set ``key``, a ``Config`` dataclass, and implement ``call``.

    ``needs``: what the pass requires in the context ("calibration", "labels", ...).
    ``exact``: output must match the input within 1e-4 relative L2 (else it is lossy and
    judged by the accuracy metric).  ``idempotent``: a second run changes nothing.
    ``own_reference``: the outputs change meaning; ``call`` returns ``self.result(...,
    expected=Expected(...))`` and the pipeline verifies against that (module docstring).
    ``limit``: the relative L2 an exact pass's outputs may move by (``EXACT_REL_L2``; a pass
    that computes the same function with other kernels, in another float order, states its
    own, e.g. ``REASSOCIATED_REL_L2``).
    ``reads_only``: ``call`` never changes the model it is given (it builds a new one, e.g.
    through a tool that reads a file): no working copy is made (one copy of the weights less
    at the pass's peak); when it hands back its input unchanged, the caller gets a copy.
    """

    key: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    exact: ClassVar[bool] = True
    idempotent: ClassVar[bool] = True
    own_reference: ClassVar[bool] = False
    reads_only: ClassVar[bool] = False
    limit: ClassVar[float] = EXACT_REL_L2

    @dataclass
    class Config:
        pass

    def __init__(self, _where: str | None = None, _error=RecipeError, **params):
        self.params = dict(params)
        self.config = validate_config(self.Config, params, _where or f"pass '{self.key}'", _error)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params.items())})"

    @classmethod
    def help(cls) -> str:
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def call(self, model: onnx.ModelProto, ctx: Context) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def result(self, model: onnx.ModelProto, modified: bool, *, counts=None, notes=None, details=None, expected: Expected | None = None) -> PassResult:
        """Helper for ``call``: a PassResult whose report the base class completes."""
        report = PassReport(self.key, counts=dict(counts or {}), notes=list(notes or []), details=dict(details or {}))
        return PassResult(model, modified, report, expected)

    def __call__(self, model: onnx.ModelProto | None, ctx: Context | None = None, *, inplace: bool = False) -> PassResult:
        """Run the pass.  The input model is left untouched unless ``inplace`` (the caller
        gives up the model, e.g. to keep peak memory at one copy of a large model); None for a
        source pass."""
        ctx = ctx or Context()
        source = model is None  # a source builds the model from its configuration
        # before the call (an in-place pass changes ``model``); a pass with its own reference
        # builds a new model around the old one: nothing of it is "left unchanged" by a skip
        bodies = [] if source or self.own_reference else _bodies(model.graph)
        work = model if inplace or source or self.reads_only else copy.deepcopy(model)
        before = {} if source else model_stats(model)
        t0 = time.perf_counter()
        res = self.call(work, ctx)
        if res.model is model and not inplace and self.reads_only:
            res.model = copy.deepcopy(model)  # the caller's model stays the caller's
        seconds = time.perf_counter() - t0
        rep = res.report
        if self.own_reference and res.expected is None:
            raise TypeError(f"pass '{self.key}' has own_reference but returned no Expected outputs")
        if bodies:
            _note_intact_bodies(bodies, res.model, rep)
        rep.name, rep.params, rep.modified = self.key, dict(self.params), bool(res.modified)
        rep.before, rep.after, rep.seconds = before, model_stats(res.model), round(seconds, 4)
        log.info("%s: %s in %.2fs", self.key, "modified" if res.modified else "unchanged", seconds)
        return res


_MENTIONS_BODIES = re.compile(r"\b(If|Loop|Scan|subgraphs?|bod(y|ies))\b", re.IGNORECASE)


def _bodies(graph: onnx.GraphProto) -> list[tuple[str, bytes]]:
    """(label, serialized body) of every If/Loop/Scan body, nested ones included."""
    out = []
    for body in walk_bodies(graph):
        label = " > ".join(f"{b.node.op_type} '{b.node.name or (b.node.output[0] if b.node.output else '?')}' {b.attribute}" for b in body.path)
        out.append((label, body.graph.SerializeToString(deterministic=True)))
    return out


def _note_intact_bodies(bodies: list[tuple[str, bytes]], model: onnx.ModelProto, rep: PassReport) -> None:
    """Say which control-flow bodies a pass left as they were, unless its notes already
    speak of them: a pass that does not recurse must not skip bodies silently."""
    after = {b for _, b in _bodies(model.graph)}
    intact = [label for label, b in bodies if b in after]
    if intact and not any(_MENTIONS_BODIES.search(n) for n in rep.notes):
        more = f" (+{len(intact) - 4} more)" if len(intact) > 4 else ""
        rep.notes.append(f"{len(intact)} If/Loop/Scan bod{'y' if len(intact) == 1 else 'ies'} left unchanged: {', '.join(intact[:4])}{more}")
