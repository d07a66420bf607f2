"""Session-option search: the fastest ONNX Runtime options for one model on this machine.

Search (coordinate descent, two timed stages, each interleaved against the defaults with
``bench.timing.time_interleaved`` and rated by ``timing.speedup``, ratio =
median(default) / median(config), > 1 faster):

1. **threads**: intra-op threads 1, 2, 4, ... up to the cores this process may use; where
   the graph has parallel branches (``branch_width`` >= 2: several heavy nodes at one
   depth) also ``ORT_PARALLEL`` with 2 .. min(width, cores) inter-op threads;
2. **level and spinning**: the best of stage 1 with graph optimization ``extended`` /
   ``basic`` and with spinning off;
3. **confirmation**: the best of all timed once more against the defaults, fresh and
   interleaved; it is kept only when that run shows at least ``min_gain`` (3%) and the
   stage figure agreed; else the defaults are kept.  So the tuned options are never
   slower than the defaults by this machine's own measurement.

Every configuration's outputs on the verification inputs are compared with the default
session's (``verify.compare_outputs``, the exact-transform rule ``OutputComparison.exact``):
a configuration that changes them is refused and never timed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from ..errors import UsageError, VerificationError, blaming
from ..session_options import SessionConfig, machine_cores

__all__ = [
    "CHECK_SAMPLES", "check_feeds", "TuneSettings", "TuneRow", "TuneOutcome", "branch_width", "candidate_configs", "search_options", "measure_given", "tune",
]  # fmt: skip

log = logging.getLogger(__name__)

# inputs every configuration's outputs are compared on: options change no graph (thread
# counts, spinning) or apply fusions whose inexactness shows on any input (levels); 64 cost
# the recognizer (10 MB, 60 text lines) 7 s of its 20 s search, one pass per configuration
CHECK_SAMPLES = 16


def check_feeds(dataset) -> list[dict]:
    """The first ``CHECK_SAMPLES`` samples of ``dataset`` as feeds of one sample each (the
    model's fixed batch wins): the search holds a session per configuration at once, and a
    session keeps the arena its largest run grew (16 sentences at once cost each of 5 encoder
    sessions tens of MB; the timing feed is one sample anyway)."""
    return list(dataset.batches(1, CHECK_SAMPLES))

# nodes whose work dominates a CPU run; parallel execution pays only when these overlap
HEAVY_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum", "LSTM", "GRU", "RNN", "Attention", "FusedConv", "FusedMatMul", "QLinearConv",
                       "QLinearMatMul", "MatMulInteger", "ConvInteger", "MatMulNBits"})


@dataclass
class TuneSettings:
    """``duration``: seconds per timed stage; ``min_gain``: the confirmed win a tuned
    configuration needs over the defaults; ``max_threads``: cap (default: the cores)."""

    provider: str = "cpu"
    batch: int | None = None
    duration: float = 3.0
    min_gain: float = 0.03
    max_threads: int | None = None
    seed: int = 0

    def check(self) -> TuneSettings:
        cores = machine_cores()
        problems = [
            (not self.duration > 0, f"time budget must be > 0 seconds, got {self.duration!r}"),
            (self.min_gain < 0, f"min_gain must be >= 0, got {self.min_gain!r}"),
            (self.max_threads is not None and not 1 <= self.max_threads <= cores,
             f"max_threads must be within 1..{cores} (the cores of this machine), got {self.max_threads!r}"),
        ]
        msg = next((m for failed, m in problems if failed), None)
        if msg:
            raise UsageError(msg)
        return self


@dataclass
class TuneRow:
    """One configuration in the search table."""

    name: str
    config: SessionConfig
    stage: str
    status: str = "timed"  # timed | refused | chosen | default
    exact: bool | None = None
    rel_l2: float | None = None
    ratio: float | None = None
    ci95: list | None = None
    latency_ms: float | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        rest = {k: v for k, v in vars(self).items() if k not in ("name", "config")}  # stage .. reason
        return {"name": self.name, "options": self.config.to_dict(), "describe": self.config.describe(), **rest}


@dataclass
class TuneOutcome:
    chosen: SessionConfig
    rows: list[TuneRow]
    default_latency_ms: float | None
    confirm_ratio: float | None
    branch_width: int
    cores: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"chosen": self.chosen.to_dict(), "chosen_describe": self.chosen.describe(), "default_latency_ms": self.default_latency_ms,
                "confirm_ratio": self.confirm_ratio, "branch_width": self.branch_width, "cores": self.cores, "rows": [r.to_dict() for r in self.rows],
                "notes": self.notes}


def branch_width(model: onnx.ModelProto) -> int:
    """The most heavy nodes (``HEAVY_OPS``) at one depth of the main graph, depth being the
    longest path from the graph inputs: 1 for a chain, N for N independent members of an
    ensemble.  Parallel execution is tried only when it is at least 2."""
    depth: dict[str, int] = {}
    per_level: dict[int, int] = {}
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        d = 1 + max((depth.get(x, 0) for x in node.input if x), default=0)
        for y in node.output:
            depth[y] = d
        if node.op_type in HEAVY_OPS:
            per_level[d] = per_level.get(d, 0) + 1
    return max(per_level.values(), default=1)


def candidate_configs(width: int, cores: int, base: SessionConfig | None = None) -> list[SessionConfig]:
    """Stage 1 of the search: intra-op thread counts, and parallel execution where ``width``
    (``branch_width``) allows it; other fields from ``base`` (default: ORT's defaults)."""
    base = base or SessionConfig()
    threads = sorted({*(2**k for k in range(cores.bit_length()) if 2**k <= cores), cores})
    out = [replace(base, intra_op_threads=t, inter_op_threads=0, execution_mode="sequential") for t in threads]
    if width >= 2 and cores >= 2:
        for inter in range(2, min(width, cores) + 1):
            out.append(replace(base, intra_op_threads=max(1, cores // inter), inter_op_threads=inter, execution_mode="parallel"))
            if cores // inter > 1:
                out.append(replace(base, intra_op_threads=1, inter_op_threads=inter, execution_mode="parallel"))
    return [c for c in out if c != base]


def _refinements(best: SessionConfig, cores: int) -> list[SessionConfig]:
    """Stage 2: lower optimization levels (not for a graph ORT already optimized, which
    carries ``disable``), and spinning off where a thread pool exists (one intra-op thread
    and sequential execution have no pool threads to spin)."""
    out = [] if best.optimization_level == "disable" else [replace(best, optimization_level="extended"), replace(best, optimization_level="basic")]
    if (best.intra_op_threads or cores) > 1 or best.execution_mode == "parallel":  # a thread pool
        out.append(replace(best, allow_spinning=False))
    return out


class _Search:
    """Sessions and reference outputs shared by the stages."""

    def __init__(self, model, provider: str, feed: dict, check_feeds: list[dict], base: SessionConfig):
        from ..runtime import create_session

        self.model, self.provider, self.feed, self.check_feeds = model, provider, feed, check_feeds
        self._create = create_session
        self.default = create_session(model, provider, config=base, error=VerificationError)
        self.reference = [self.default.run(None, f) for f in check_feeds]
        self.names = [o.name for o in self.default.get_outputs()]

    def open(self, row: TuneRow):
        """A session for ``row`` if its outputs match the defaults' (else the row is refused)."""
        from ..verify import compare_outputs

        sess = self._create(self.model, self.provider, config=row.config, error=VerificationError)
        worst = 0.0
        for f, ref in zip(self.check_feeds, self.reference, strict=True):
            comp = compare_outputs(self.names, ref, sess.run(None, f))
            bad = comp.inexact()
            worst = max(worst, comp.worst_rel_l2)
            if bad:
                row.status, row.exact, row.rel_l2 = "refused", False, bad[0].rel_l2
                row.reason = f"outputs changed: {bad[0].name} rel-L2 {bad[0].rel_l2:.2e}"
                return None
        row.exact, row.rel_l2 = True, worst
        return sess

    def time(self, rows: list[TuneRow], duration: float, seed: int) -> None:
        """Time the rows' sessions interleaved with the defaults; fills ratio and latency."""
        from ..bench.timing import speedup, time_interleaved

        sessions = [(r, s) for r in rows if (s := self.open(r)) is not None]
        if not sessions:
            return
        sess = [self.default] + [s for _, s in sessions]
        lat = time_interleaved(sess, [self.feed] * len(sess), runs=100_000, warmup=5, block=5, duration=duration, shuffle_seed=seed)
        for k, (r, _) in enumerate(sessions, start=1):
            sp = speedup(lat[0], lat[k], block=5, seed=seed)
            r.ratio, r.ci95, r.latency_ms = sp.ratio, [sp.low, sp.high], float(np.median(lat[k]) * 1e3)
        self.default_ms = float(np.median(lat[0]) * 1e3)


def search_options(model: onnx.ModelProto, feed: dict, check_feeds: list[dict], settings: TuneSettings, base: SessionConfig | None = None) -> TuneOutcome:
    """Run the search of the module docstring on ``model`` (``feed``: the timing feed;
    ``check_feeds``: the inputs on which every configuration's outputs must match).
    ``base``: the options every configuration is rated against and starts from (default:
    ORT's defaults; an offline-optimized graph passes its ``disable`` level)."""
    base = base or SessionConfig()
    cores = settings.max_threads or machine_cores()
    width = branch_width(model)
    search = _Search(model, settings.provider, feed, check_feeds, base)
    rows = [TuneRow(c.describe(), c, "threads") for c in candidate_configs(width, cores, base)]
    notes = [] if width >= 2 else ["no parallel branches (one heavy node per depth): ORT_PARALLEL not tried"]
    search.time(rows, settings.duration, settings.seed)
    best = _best(rows)
    stage2 = [TuneRow(c.describe(), c, "level/spinning") for c in _refinements(best.config if best and best.ratio > 1 else base, cores)]
    rows += stage2
    search.time(stage2, settings.duration, settings.seed + 1)
    best = _best(rows)
    chosen, confirm = base, None
    if best is None or best.ratio < 1 + settings.min_gain:
        notes.append(f"no configuration beat the defaults by {settings.min_gain:.0%}: defaults kept")
    else:
        probe = TuneRow("confirm", best.config, "confirm")
        search.time([probe], settings.duration, settings.seed + 2)
        confirm = probe.ratio
        if confirm is not None and confirm >= 1 + settings.min_gain:
            chosen = best.config
            best.status, best.reason = "chosen", f"{best.ratio:.2f}x, confirmed {confirm:.2f}x in a fresh run"
            if not chosen.allow_spinning:
                notes.append(
                    "spinning off is applied by onnxopt.session and bench; ORT's ort_config has no key for it, so a plain "
                    "InferenceSession must set session.intra_op.allow_spinning=0 itself"
                )
        else:
            best.reason = f"not confirmed: {confirm:.2f}x in a fresh run < {1 + settings.min_gain:.2f}; defaults kept"
            notes.append(best.reason)
    return TuneOutcome(chosen, rows, getattr(search, "default_ms", None), confirm, width, cores, notes)


def measure_given(model: onnx.ModelProto, feed: dict, check_feeds: list[dict], settings: TuneSettings, given: SessionConfig) -> TuneOutcome:
    """No search: ``given`` (validated: exit 2 for thread counts outside 1..cores or
    unknown values) is checked exact and timed against the defaults, and chosen as given;
    the report says when it is slower."""
    given.validate()
    search = _Search(model, settings.provider, feed, check_feeds, SessionConfig())
    row = TuneRow(given.describe(), given, "given")
    search.time([row], settings.duration, settings.seed)
    notes = []
    if row.status == "refused":
        raise VerificationError(f"the given session options change the outputs: {row.reason}")
    row.status, row.reason = "chosen", "given by the user"
    if row.ratio is not None and row.ratio < 1.0:
        notes.append(f"the given options ran {row.ratio:.2f}x vs the defaults (slower): carried as asked")
    return TuneOutcome(given, [row], getattr(search, "default_ms", None), row.ratio, branch_width(model), machine_cores(), notes)


def _best(rows: list[TuneRow]) -> TuneRow | None:
    timed = [r for r in rows if r.ratio is not None and r.status != "refused"]
    return max(timed, key=lambda r: r.ratio, default=None)


def _feeds(model, data, shapes, batch, seed):
    """(timing feed, verification feeds, source): the feed as ``bench`` builds it (the
    model's own batch, 1 when symbolic), and up to ``CHECK_SAMPLES`` samples of DATA (else
    synthesized)."""
    from ..bench.feeds import SkipConfig, make_feed
    from ..data import dataset_for

    ds = dataset_for(model, data, shapes, seed=seed)
    try:
        view = ds.view().validate(model) if data is not None else None
        feed, _ = make_feed(model, view, shapes, batch, seed=seed)
    except SkipConfig as exc:
        raise UsageError(str(exc)) from None
    checks = check_feeds(ds)
    return feed, checks, ds.source


@blaming("model")
def tune(
    model,
    *,
    provider: str = "cpu",
    data=None,
    shapes: dict | None = None,
    batch: int | None = None,
    duration: float = 3.0,
    min_gain: float = 0.03,
    max_threads: int | None = None,
    seed: int = 0,
    report=None,
    options: SessionConfig | dict | None = None,
):
    """The model with the fastest verified ONNX Runtime session options carried in it.

    ``model``: path or ModelProto (already final: its graph is not changed).  Searches as the
    module docstring says on ``provider`` with ``data`` (else synthesized inputs, ``shapes``
    for symbolic dims) and writes the chosen options in the model's ``ort_config`` (ONNX
    Runtime applies them with ``ORT_LOAD_CONFIG_FROM_MODEL=1``; ``onnxopt.session`` always)
    and in its provenance.  The defaults are kept, and carried, when nothing wins.  Raises
    ``UsageError`` / ``ProviderError`` / ``ModelError`` / ``DataError`` (exit 2) for bad input,
    ``VerificationError`` (exit 3) when ORT rejects the carried options.  ``options`` (a
    ``SessionConfig`` or its dict): no search; these options are validated, checked, timed
    against the defaults and carried as given."""
    from ..core.passes import Context
    from ..core.pipeline import run_pipeline
    from ..core.result import Result
    from ..data import check_shapes
    from ..io import resolve_model
    from ..runtime import resolve_provider
    from .carry import carried_options
    from .passes import SessionOptionsPass

    settings = TuneSettings(resolve_provider(provider), batch, duration, min_gain, max_threads, seed).check()
    m, path = resolve_model(model)
    check_shapes(m, shapes, path)
    given = SessionConfig.from_dict(options) if isinstance(options, dict) else options
    if given is not None:
        given.validate()  # before any work
    feed, checks, source = _feeds(m, data, shapes, batch, seed)
    prior = carried_options(m)
    # a graph ORT already optimized offline stays unoptimized at load: rated against that
    base = SessionConfig(optimization_level="disable") if prior is not None and prior.optimization_level == "disable" else None
    outcome = measure_given(m, feed, checks, settings, given) if given is not None else search_options(m, feed, checks, settings, base)
    search = {"duration": duration, "min_gain": min_gain, "confirm_ratio": outcome.confirm_ratio}
    carry = SessionOptionsPass(**outcome.chosen.to_dict())
    ctx = Context(provider=settings.provider, shapes=shapes, seed=seed)
    out = run_pipeline(m, [carry], ctx, command="tune", extra={"session_options": outcome.chosen.to_dict(), "search": search}, check_input=False).model
    rep = {
        "command": "tune",
        "input": str(path) if path else None,
        "provider": settings.provider,
        "data": source,
        "feed_shapes": {k: list(v.shape) for k, v in feed.items()},
        **outcome.to_dict(),
    }
    result = Result(out, rep, True)
    if report is not None:
        result.save_report(report)
    return result

