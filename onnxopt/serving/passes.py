"""The ``session-options`` pass: ONNX Runtime session options carried in the model (exact).

The graph is not changed: the options go into the model's ``ort_config`` metadata (what ONNX
Runtime applies with ``ORT_LOAD_CONFIG_FROM_MODEL=1``) and, through the step's details, into
the provenance (``carry.carried_options`` reads spinning from there: ORT has no key for it).
``onnxopt tune`` chooses the options and runs this pass; a recipe may set them directly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import onnx

from ..core.passes import Context, Pass, PassResult
from ..errors import UsageError
from ..session_options import EXECUTION_MODES, OPTIMIZATION_LEVELS, SessionConfig

__all__ = ["SessionOptionsPass"]


@dataclass
class _OptionsConfig:
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    execution_mode: str = field(default="sequential", metadata={"choices": EXECUTION_MODES})
    optimization_level: str = field(default="all", metadata={"choices": OPTIMIZATION_LEVELS})
    allow_spinning: bool = True

    def session_config(self) -> SessionConfig:
        return SessionConfig(**asdict(self))

    def check(self):
        try:
            self.session_config().validate()
        except UsageError as exc:
            return exc.message
        return None


class SessionOptionsPass(Pass):
    """Carry ONNX Runtime session options in the model (``ort_config`` metadata); the graph is unchanged.

    ONNX Runtime must load the model with them and apply them as written (threads, mode,
    level), else the step fails verification (exit 3).  Thread counts: 0 is ORT's default,
    at most the machine's cores.
    """

    key = "session-options"
    exact = True
    idempotent = True
    Config = _OptionsConfig

    def call(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        from .carry import carried_options, carry_options, check_carried

        cfg = self.config.session_config()  # ``model`` is the pipeline's copy (Pass.__call__)
        if carried_options(model) == cfg:
            return self.result(model, False, notes=[f"already carried: {cfg.describe()}"], details={"session_options": cfg.to_dict()})
        carry_options(model, cfg)
        check_carried(model, ctx.provider)
        return self.result(model, True, notes=[f"carried: {cfg.describe()}"], details={"session_options": cfg.to_dict()})
