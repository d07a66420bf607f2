"""Cold start: what a fresh serving process pays before its first answer.

Each repeat runs in a fresh Python subprocess (``python -m onnxopt.serving.coldstart``),
which imports onnxruntime (timed), creates the session with the given options (timed:
**creation**), runs the feed once (**first run**: allocation, kernel set-up, the prepacking
ORT defers) and once more (a steady run, for scale).  **Peak RSS during creation** is the
process's high-water mark after creation (reset just before it on Linux) minus its
resident set before creation.  The parent reports the median of the repeats and each
repeat's figures.  The child imports nothing heavy from onnxopt, so its import time is
onnxruntime's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["measure_cold_start", "COLD_FIELDS"]

COLD_FIELDS = ("import_ms", "create_ms", "first_run_ms", "second_run_ms", "creation_peak_rss_bytes")


def _child(model_path: str, feed_path: str, config_json: str, provider: str) -> dict:
    t0 = time.perf_counter()
    import numpy as np
    import onnxruntime as ort

    t_import = time.perf_counter() - t0
    from ..bench.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
    from ..runtime import providers_for
    from ..session_options import SessionConfig

    config = SessionConfig.from_dict(json.loads(config_json)) if config_json != "null" else SessionConfig()
    so = config.session_options(ort)
    so.log_severity_level = 4
    with np.load(feed_path) as z:
        feed = {k: z[k] for k in z.files}
    before = rss_bytes() or peak_rss_bytes()
    reset = reset_peak_rss()
    t0 = time.perf_counter()
    sess = ort.InferenceSession(model_path, so, providers=providers_for(provider))
    t_create = time.perf_counter() - t0
    peak = peak_rss_bytes() if reset else None
    t0 = time.perf_counter()
    sess.run(None, feed)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    sess.run(None, feed)
    t_second = time.perf_counter() - t0
    growth = (peak - before) if (peak is not None and before is not None) else None
    return {"import_ms": t_import * 1e3, "create_ms": t_create * 1e3, "first_run_ms": t_first * 1e3, "second_run_ms": t_second * 1e3, "creation_peak_rss_bytes": growth}


def measure_cold_start(model, feed: dict, *, config=None, provider: str = "cpu", repeats: int = 3, timeout: float = 300.0) -> dict:
    """Median cold-start figures of ``model`` (path or proto) over ``repeats`` fresh
    subprocesses, with ``config`` (a ``SessionConfig``; None: ORT's defaults), and the
    ``runs`` themselves.  A failing child raises ``ModelError`` with its last stderr line."""
    import numpy as np
    import onnx

    from ..errors import ModelError

    with tempfile.TemporaryDirectory(prefix="onnxopt-cold-") as tmp:
        if isinstance(model, onnx.ModelProto):
            from ..io import save_model

            path = Path(tmp) / "model.onnx"
            save_model(model, path)
        else:
            path = Path(model)
        feed_path = Path(tmp) / "feed.npz"
        np.savez(feed_path, **feed)
        cfg = json.dumps(config.to_dict() if config is not None else None)
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # this onnxopt, not another install
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        runs = []
        for _ in range(max(int(repeats), 1)):
            proc = subprocess.run([sys.executable, "-m", "onnxopt.serving.coldstart", str(path), str(feed_path), cfg, provider], capture_output=True, text=True, env=env, timeout=timeout, check=False)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise ModelError(f"cold-start subprocess failed: {last[:300]}", None if isinstance(model, onnx.ModelProto) else model)
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out = {"repeats": len(runs)}
    for k in COLD_FIELDS:
        vals = [r[k] for r in runs if r.get(k) is not None]
        out[k] = float(np.median(vals)) if vals else None
    out["runs"] = runs
    return out


if __name__ == "__main__":  # the child of measure_cold_start
    print(json.dumps(_child(*sys.argv[1:5])))
