"""Members that run at once: parallel-execution options for a merged ensemble, measured.

Members merged into one graph but not fused horizontally are independent branches, which
ONNX Runtime runs one after another unless the session runs with ``ORT_PARALLEL`` and
inter-op threads.  Three ways to serve the same members are timed interleaved
(``bench.timing.measure_interleaved``) on one feed:

- **separate**: each member in its own session (default options), called one after another;
- **sequential**: the merged model, ORT's default options;
- **parallel**: the merged model with ``inter_op_threads = min(width, cores)``,
  ``intra_op_threads = max(1, cores // inter)``, ``ORT_PARALLEL`` (width: ``serving.tune.branch_width``).

Each way gets ``runs`` timed runs (60: 12 interleaved rounds of 5), capped at ``duration``
seconds.  The parallel options are carried in the merged model (``serving.carry``) only
when their outputs equal the sequential session's (the exact-transform rule) and
``median(sequential) / median(parallel)`` is at least ``1 + MIN_GAIN`` both in that run and
in a fresh confirmation run of the two (the rule ``serving.tune`` keeps); otherwise nothing
is carried and the report says why.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

__all__ = ["parallel_options"]

log = logging.getLogger(__name__)

MIN_GAIN = 0.03


def _config_for(width: int, cores: int):
    from ..session_options import SessionConfig

    inter = min(width, cores)
    return SessionConfig(intra_op_threads=max(1, cores // inter), inter_op_threads=inter, execution_mode="parallel")


def parallel_options(model: onnx.ModelProto, members, feed: dict, *, provider: str = "cpu", runs: int = 60, duration: float = 3.0, seed: int = 0) -> dict:
    """Measure the three ways (module docstring) and carry the parallel options in ``model``
    (in place) when they win; returns the report block."""
    from ..bench.timing import measure_interleaved, speedup
    from ..runtime import create_session
    from ..serving.carry import carry_options, check_carried
    from ..serving.tune import branch_width
    from ..session_options import SessionConfig, machine_cores
    from ..verify import compare_outputs
    from .parity import member_feed

    width, cores = branch_width(model), machine_cores()
    block = {"branch_width": width, "cores": cores, "carried": False}
    if width < 2 or cores < 2:
        block["reason"] = "one branch (members fused horizontally, or a single heavy path)" if width < 2 else "one core: nothing to run at once"
        return block
    par_cfg = _config_for(width, cores)
    block["options"] = par_cfg.to_dict()
    seq = create_session(model, provider, config=SessionConfig())
    par = create_session(model, provider, config=par_cfg)
    comp = compare_outputs([o.name for o in seq.get_outputs()], seq.run(None, feed), par.run(None, feed))
    if comp.inexact():
        block["reason"] = f"parallel execution changed output {comp.inexact()[0].name}"
        return block
    calls = [(create_session(m.original, provider), m.outputs, member_feed(m, feed)) for m in members]

    def run_one(i: int) -> None:
        if i == 0:
            for s, outs, f in calls:
                s.run(outs, f)
        else:
            (seq if i == 1 else par).run(None, feed)

    meas = measure_interleaved(run_one, 3, runs=runs, warmup=3, block=5, duration=duration, shuffle_seed=seed)
    sep, sq, pl = meas.latencies
    vs_seq = speedup(sq, pl, block=5, seed=seed)
    block.update(
        separate_ms=float(np.median(sep) * 1e3),
        sequential_ms=float(np.median(sq) * 1e3),
        parallel_ms=float(np.median(pl) * 1e3),
        parallel_vs_sequential=vs_seq.to_dict(),
        parallel_vs_separate=speedup(sep, pl, block=5, seed=seed).to_dict(),
        sequential_vs_separate=speedup(sep, sq, block=5, seed=seed).to_dict(),
        rounds=meas.rounds,
    )
    need = 1 + MIN_GAIN
    if vs_seq.ratio < need:
        block["reason"] = f"parallel {vs_seq.ratio:.2f}x vs sequential (< {need:.2f}): nothing carried"
        return block
    again = measure_interleaved(lambda i: run_one(i + 1), 2, runs=runs, warmup=1, block=5, duration=duration, shuffle_seed=seed + 1)
    confirm = speedup(again.latencies[0], again.latencies[1], block=5, seed=seed).ratio
    block["confirm_ratio"] = confirm
    if confirm < need:
        block["reason"] = f"parallel {vs_seq.ratio:.2f}x vs sequential, not confirmed in a fresh run ({confirm:.2f}x < {need:.2f}): nothing carried"
        return block
    carry_options(model, par_cfg)
    check_carried(model, provider)
    block["carried"] = True
    block["reason"] = f"parallel {vs_seq.ratio:.2f}x vs sequential, confirmed {confirm:.2f}x in a fresh run"
    return block
