"""Members that run at once: session options for a merged ensemble, measured.

Members merged into one graph but not fused horizontally are independent branches, which
ONNX Runtime runs one after another unless the session runs with ``ORT_PARALLEL`` and
inter-op threads.  Four ways to serve the same members are timed interleaved
(``bench.timing.measure_interleaved``) on one feed:

- **separate**: each member in its own session (default options), called one after another;
- **sequential**: the merged model, ORT's default options;
- **parallel**: the merged model with ``inter_op_threads = min(width, cores)``,
  ``intra_op_threads = max(1, cores // inter)``, ``ORT_PARALLEL`` (width: ``serving.tune.branch_width``);
- **one thread**: the merged model with one intra-op thread, sequential: no pool thread,
  so none that spins and competes with the run when the cores are busy (on a loaded 2-core
  machine this beat both others; on an idle one parallel execution should win).

Each way gets ``runs`` timed runs (60: 12 interleaved rounds of 5), capped at ``duration``
seconds.  The faster of parallel and one thread is carried in the merged model
(``serving.carry``) only when its outputs equal the sequential session's (the exact-transform
rule) and ``median(sequential) / median(it)`` is at least ``1 + MIN_GAIN`` both in that run
and in a fresh confirmation run of the two (the rule ``serving.tune`` keeps); otherwise
nothing is carried and the report says why.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

__all__ = ["parallel_options"]

log = logging.getLogger(__name__)

MIN_GAIN = 0.03


def _ways(model, members, feed, provider, width, cores):
    """Sessions of the four ways (module docstring), the candidate configs, and ``run_one``;
    a candidate whose outputs differ from the sequential session's is dropped (named in
    ``refused``)."""
    from ..runtime import create_session
    from ..session_options import SessionConfig
    from ..verify import compare_outputs
    from .parity import member_feed

    seq = create_session(model, provider, config=SessionConfig())
    ref = seq.run(None, feed)
    names = [o.name for o in seq.get_outputs()]
    inter = min(width, cores)
    parallel = SessionConfig(intra_op_threads=max(1, cores // inter), inter_op_threads=inter, execution_mode="parallel")
    configs = {"parallel": parallel, "one_thread": SessionConfig(intra_op_threads=1)}
    sessions, refused = {}, {}
    for key, cfg in configs.items():
        sess = create_session(model, provider, config=cfg)
        bad = compare_outputs(names, ref, sess.run(None, feed)).inexact()
        if bad:
            refused[key] = f"{key.replace('_', ' ')} changed output {bad[0].name}"
        else:
            sessions[key] = sess
    calls = [(create_session(m.original, provider), m.outputs, member_feed(m, feed)) for m in members]
    order = [None, seq] + [sessions[k] for k in sessions]

    def run_one(i: int) -> None:
        if i == 0:
            for s, outs, f in calls:
                s.run(outs, f)
        else:
            order[i].run(None, feed)

    return list(sessions), configs, refused, run_one


def _confirm(run_one, k: int, runs: int, duration: float, seed: int) -> float:
    """A fresh interleaved run of sequential (way 1) against way ``k``: median ratio."""
    from ..bench.timing import measure_interleaved, speedup

    again = measure_interleaved(lambda i: run_one(1 if i == 0 else k), 2, runs=runs, warmup=1, block=5, duration=duration, shuffle_seed=seed + 1)
    return speedup(again.latencies[0], again.latencies[1], block=5, seed=seed).ratio


def parallel_options(model: onnx.ModelProto, members, feed: dict, *, provider: str = "cpu", runs: int = 60, duration: float = 3.0, seed: int = 0) -> dict:
    """Measure the four ways (module docstring); returns the report block, which names the
    faster of parallel execution and one thread as ``carried_options`` when it wins (the
    caller carries them with the ``session-options`` pass)."""
    from ..bench.timing import measure_interleaved, speedup
    from ..serving.tune import branch_width
    from ..session_options import machine_cores

    width, cores = branch_width(model), machine_cores()
    block = {"branch_width": width, "cores": cores, "carried": False}
    if width < 2 or cores < 2:
        block["reason"] = "one branch (members fused horizontally, or a single heavy path)" if width < 2 else "one core: nothing to run at once"
        return block
    keys, configs, refused, run_one = _ways(model, members, feed, provider, width, cores)
    block["options"] = configs["parallel"].to_dict()
    if "parallel" not in keys:
        block["reason"] = refused["parallel"]
        return block
    meas = measure_interleaved(run_one, 2 + len(keys), runs=runs, warmup=3, block=5, duration=duration, shuffle_seed=seed)
    sep, sq = meas.latencies[:2]
    lat = dict(zip(keys, meas.latencies[2:], strict=True))
    vs = {k: speedup(sq, v, block=5, seed=seed) for k, v in lat.items()}
    block.update(separate_ms=float(np.median(sep) * 1e3), sequential_ms=float(np.median(sq) * 1e3), rounds=meas.rounds)
    block.update(sequential_vs_separate=speedup(sep, sq, block=5, seed=seed).to_dict())
    for k in keys:  # "parallel" / "one_thread"
        block.update(
            {
                f"{k}_ms": float(np.median(lat[k]) * 1e3),
                f"{k}_vs_sequential": vs[k].to_dict(),
                f"{k}_vs_separate": speedup(sep, lat[k], block=5, seed=seed).to_dict(),
            }
        )
    best = max(keys, key=lambda k: vs[k].ratio)
    label = best.replace("_", " ")
    need = 1 + MIN_GAIN
    if vs[best].ratio < need:
        block["reason"] = f"{label} {vs[best].ratio:.2f}x vs sequential (< {need:.2f}): nothing carried"
        return block
    confirm = _confirm(run_one, 2 + keys.index(best), runs, duration, seed)
    block["confirm_ratio"] = confirm
    if confirm < need:
        block["reason"] = f"{label} {vs[best].ratio:.2f}x vs sequential, not confirmed in a fresh run ({confirm:.2f}x < {need:.2f}): nothing carried"
        return block
    block.update(carried=True, carried_options=configs[best].to_dict(), carried_way=best)
    block["reason"] = f"{label} {vs[best].ratio:.2f}x vs sequential, confirmed {confirm:.2f}x in a fresh run"
    return block
