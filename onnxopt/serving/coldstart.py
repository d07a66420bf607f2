"""Cold start: what a fresh serving process pays before its first answer.

Each repeat runs in a fresh Python subprocess (``python -m onnxopt.serving.coldstart``),
which imports onnxruntime (timed), creates the session with the given options (timed:
**creation**), runs the feed once (**first run**: allocation, kernel set-up, the prepacking
ORT defers) and once more (a steady run, for scale).  **Peak RSS during creation** is the
process's high-water mark after creation (reset just before it on Linux) minus its
resident set before creation.  The parent reports the median of the repeats and each
repeat's figures.  The child imports nothing heavy from onnxopt, so its import time is
onnxruntime's.

Wall-clock figures are what a serving process waits; on a shared machine they also hold the
time other jobs took the cores.  The child therefore also records the process's **CPU time**
for creation and first run (all its threads: less sensitive to load, though pool threads that
spin after the first run add to it).  ``breakdown=True`` turns ONNX Runtime's profiler on in
the child and splits creation into **model load** (parsing the file, building the graph) and
**session initialization** (graph optimization, partitioning, kernel creation, weight
prepacking); the rest of creation (``other_ms``) is the Python wrapper and, in the first
session of a process, ONNX Runtime's process-wide set-up (environment, kernel registries).
An ``.ort`` model (``serving.ortformat``) is loaded as one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["measure_cold_start", "COLD_FIELDS", "BREAKDOWN_FIELDS"]

COLD_FIELDS = ("import_ms", "create_ms", "first_run_ms", "second_run_ms", "creation_peak_rss_bytes", "create_cpu_ms", "first_run_cpu_ms")
BREAKDOWN_FIELDS = ("load_ms", "initialize_ms", "other_ms")
# the profiler's session events: model load (path, bytes or .ort) and session initialization
_LOAD_EVENTS = ("model_loading_uri", "model_loading_array", "model_loading_from_saved_proto", "model_loading_ort", "load_ort_format_model")


def _session_options(ort, config_json: str, model_path: str, breakdown: bool):
    from ..runtime import is_ort_format
    from ..session_options import SessionConfig

    config = SessionConfig.from_dict(json.loads(config_json)) if config_json != "null" else SessionConfig()
    so = config.session_options(ort)
    so.log_severity_level = 4
    if is_ort_format(model_path):
        so.add_session_config_entry("session.load_model_format", "ORT")
        os.environ.pop("ORT_LOAD_CONFIG_FROM_MODEL", None)  # ORT would parse the flatbuffer as protobuf
    if breakdown:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"onnxopt-cold-{os.getpid()}")
    return so


def _profile_split(sess, create_ms: float) -> dict:
    """``load_ms`` / ``initialize_ms`` / ``other_ms`` of creation from ORT's profiler trace."""
    trace = Path(sess.end_profiling())
    try:
        events = json.loads(trace.read_text())
    finally:
        trace.unlink(missing_ok=True)
    dur = {}
    for e in events:
        if e.get("cat") == "Session":
            dur[e["name"]] = dur.get(e["name"], 0.0) + e.get("dur", 0) / 1e3
    load = sum(dur.get(k, 0.0) for k in _LOAD_EVENTS)
    init = dur.get("session_initialization", 0.0)
    return {"load_ms": load, "initialize_ms": init, "other_ms": max(create_ms - load - init, 0.0)}


def _timed(fn):
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3


def _child(model_path: str, feed_path: str, config_json: str, provider: str, breakdown: str = "0") -> dict:
    t0 = time.perf_counter()
    import numpy as np
    import onnxruntime as ort

    t_import = time.perf_counter() - t0
    from ..bench.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
    from ..runtime import providers_for

    so = _session_options(ort, config_json, model_path, breakdown == "1")
    with np.load(feed_path) as z:
        feed = {k: z[k] for k in z.files}
    before = rss_bytes() or peak_rss_bytes()
    reset = reset_peak_rss()
    sess, create, create_cpu = _timed(lambda: ort.InferenceSession(model_path, so, providers=providers_for(provider)))
    peak = peak_rss_bytes() if reset else None
    _, first, first_cpu = _timed(lambda: sess.run(None, feed))
    _, second, _ = _timed(lambda: sess.run(None, feed))
    growth = (peak - before) if (peak is not None and before is not None) else None
    out = dict(zip(COLD_FIELDS, (t_import * 1e3, create, first, second, growth, create_cpu, first_cpu), strict=True))
    if breakdown == "1":
        out.update(_profile_split(sess, create))
    return out


def measure_cold_start(model, feed: dict, *, config=None, provider: str = "cpu", repeats: int = 3, timeout: float = 300.0, breakdown: bool = False) -> dict:
    """Median cold-start figures of ``model`` (path, proto or ``.ort`` path) over ``repeats``
    fresh subprocesses, with ``config`` (a ``SessionConfig``; None: ORT's defaults), and the
    ``runs`` themselves; ``breakdown``: also ``BREAKDOWN_FIELDS`` (ORT's profiler on in the
    child, so its figures are a little higher).  A failing child raises ``ModelError`` with its
    last stderr line."""
    import numpy as np
    import onnx

    from ..errors import ModelError
    from ..io import save_model

    with tempfile.TemporaryDirectory(prefix="onnxopt-cold-") as tmp:
        path = save_model(model, Path(tmp) / "model.onnx") if isinstance(model, onnx.ModelProto) else Path(model)
        feed_path = Path(tmp) / "feed.npz"
        np.savez(feed_path, **feed)
        cfg = json.dumps(config.to_dict() if config is not None else None)
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # this onnxopt, not another install
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        runs = []
        for _ in range(max(int(repeats), 1)):
            argv = [sys.executable, "-m", "onnxopt.serving.coldstart", str(path), str(feed_path), cfg, provider, "1" if breakdown else "0"]
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise ModelError(f"cold-start subprocess failed: {last[:300]}", None if isinstance(model, onnx.ModelProto) else model)
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    vals = {k: [r[k] for r in runs if r.get(k) is not None] for k in COLD_FIELDS + (BREAKDOWN_FIELDS if breakdown else ())}
    return {"repeats": len(runs), **{k: float(np.median(v)) if v else None for k, v in vals.items()}, "runs": runs}


if __name__ == "__main__":  # the child of measure_cold_start
    print(json.dumps(_child(*sys.argv[1:6])))
