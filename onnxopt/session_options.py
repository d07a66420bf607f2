"""``SessionConfig``: ONNX Runtime session options as one validated, serializable object.

The fields are the ones that decide a CPU session's speed: intra-op threads (0: ORT's
default, one per physical core), inter-op threads (used by ``ORT_PARALLEL`` execution,
which runs independent branches of the graph at once), the execution mode, the graph
optimization level and whether idle pool threads spin.  ``session_options()`` is the one
place in onnxopt that builds an ``ort.SessionOptions`` from them (``runtime.create_session``
calls it); ``ort_session_options()`` writes them in the integer form that ONNX Runtime
reads from a model's ``ort_config`` metadata (``carry.py``).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace

from .errors import UsageError, first_failure

__all__ = ["SessionConfig", "EXECUTION_MODES", "OPTIMIZATION_LEVELS", "ORT_LEVEL_CODES", "machine_cores"]

EXECUTION_MODES = ("sequential", "parallel")
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
# GraphOptimizationLevel values as ORT's ort_config parser expects them
ORT_LEVEL_CODES = {"disable": 0, "basic": 1, "extended": 2, "all": 99}
_SPIN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def machine_cores() -> int:
    """Logical cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class SessionConfig:
    """ONNX Runtime session options; the defaults are ORT's own.

    ``intra_op_threads`` / ``inter_op_threads``: 0 leaves ORT's default; ``execution_mode``:
    ``sequential`` | ``parallel``; ``optimization_level``: ``disable`` | ``basic`` |
    ``extended`` | ``all``; ``allow_spinning``: idle pool threads busy-wait for work (lower
    latency, CPU burnt between runs).
    """

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    execution_mode: str = "sequential"
    optimization_level: str = "all"
    allow_spinning: bool = True

    def validate(self, cores: int | None = None) -> SessionConfig:
        """``self`` when every value is known and thread counts are within 1..``cores``
        (0 = ORT's default); else ``UsageError`` (exit 2) naming the bad value."""
        cores = cores or machine_cores()
        for name in ("intra_op_threads", "inter_op_threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise UsageError(f"{name} must be an integer >= 1 (or 0 for onnxruntime's default), got {v!r}")
            if v > cores:
                raise UsageError(f"{name}={v} is more than the {cores} cores this machine has")
        problem = first_failure(
            (self.execution_mode not in EXECUTION_MODES, f"unknown execution mode {self.execution_mode!r} (choose from {', '.join(EXECUTION_MODES)})"),
            (self.optimization_level not in OPTIMIZATION_LEVELS,
             f"unknown optimization level {self.optimization_level!r} (choose from {', '.join(OPTIMIZATION_LEVELS)})"),
            (not isinstance(self.allow_spinning, bool), f"allow_spinning must be true or false, got {self.allow_spinning!r}"),
        )
        if problem:
            raise UsageError(problem)
        return self

    @property
    def is_default(self) -> bool:
        return self == SessionConfig()

    def session_options(self, ort=None):
        """A new ``ort.SessionOptions`` with these values (logging left to the caller)."""
        if ort is None:
            import onnxruntime as ort
        so = ort.SessionOptions()
        if self.intra_op_threads:
            so.intra_op_num_threads = int(self.intra_op_threads)
        if self.inter_op_threads:
            so.inter_op_num_threads = int(self.inter_op_threads)
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if self.execution_mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization_level]
        if not self.allow_spinning:
            for key in _SPIN_KEYS:
                so.add_session_config_entry(key, "0")
        return so

    def ort_session_options(self) -> dict:
        """The ``session_options`` object of ORT's ``ort_config`` metadata (integers, as
        ``inference_session_utils.cc`` parses them).  Spinning has no key there: ORT's parser
        knows only threads, execution mode, optimization level and profiling."""
        out = {
            "execution_mode": 1 if self.execution_mode == "parallel" else 0,
            "graph_optimization_level": ORT_LEVEL_CODES[self.optimization_level],
        }
        if self.intra_op_threads:
            out["intra_op_num_threads"] = int(self.intra_op_threads)
        if self.inter_op_threads:
            out["inter_op_num_threads"] = int(self.inter_op_threads)
        return out

    @classmethod
    def from_ort_session_options(cls, d: dict, *, allow_spinning: bool = True) -> SessionConfig:
        """The inverse of ``ort_session_options`` (unknown keys ignored, as ORT does)."""
        levels = {v: k for k, v in ORT_LEVEL_CODES.items()}
        try:
            return cls(
                intra_op_threads=int(d.get("intra_op_num_threads", 0)),
                inter_op_threads=int(d.get("inter_op_num_threads", 0)),
                execution_mode="parallel" if int(d.get("execution_mode", 0)) == 1 else "sequential",
                optimization_level=levels[int(d.get("graph_optimization_level", 99))],
                allow_spinning=allow_spinning,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"session options {d!r} are not onnxruntime's ort_config form: {exc}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SessionConfig:
        """From ``to_dict`` output; unknown keys are a ``UsageError``."""
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise UsageError(f"unknown session option(s) {', '.join(bad)} (known: {', '.join(sorted(known))})")
        return cls(**d)

    def with_threads(self, threads: int | None) -> SessionConfig:
        """A copy with ``intra_op_threads`` set (None: unchanged)."""
        return self if not threads else replace(self, intra_op_threads=int(threads))

    def describe(self) -> str:
        """Short text, e.g. ``intra 2, inter 2, parallel, opt all, spin off``."""
        intra = self.intra_op_threads or "default"
        inter = self.inter_op_threads or "default"
        return f"intra {intra}, inter {inter}, {self.execution_mode}, opt {self.optimization_level}, spin {'on' if self.allow_spinning else 'off'}"
