"""Peak memory of onnxopt commands on a model over 2 GB (external data).

Builds, in a temporary folder, a model of a few huge MatMul weights (default 2.5 GiB:
[16384, 16384] x 2 + [16384, 8192], float32, deterministic values written straight to the
external-data file, never held in memory), then runs as subprocesses

    inspect, simplify, quantize --mode dynamic, ensemble (2 copies, mean), verify
    (and, when asked with --commands, quantize-static: --mode static on 8 calibration samples)

and reports per command: exit status, wall time, peak RSS (the child's own maximum resident
set size from ``wait4``, plus a psutil poll of the child and its children), the ratio of
that peak to the model's size, and what was written.  Target: simplify's peak RSS <= 1.5x
the model size.

A command whose RSS passes ``--rss-cap-gb`` (default 14) is killed and reported as such, to
protect a shared machine.  Everything is deleted at the end (``--keep`` to look at it).

    python benchmarks/large_model.py                 # the 2.5 GiB model
    python benchmarks/large_model.py --gib 0.25      # a quick run of the plumbing (< 2 GB)
    python benchmarks/large_model.py --gib 0.5 --scale-limits   # the > 2 GB paths, in seconds

``--scale-limits`` scales, in the commands run, ``onnxopt.io``'s 2 GB protobuf limit and its
lazy-load threshold (1 GiB) by ``gib / 2.5``, so that a small model takes the branches the
2.5 GiB one takes (weights left in their files, external data out) and the ratios to the
model size can be compared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import psutil
from onnx import TensorProto, helper

GIB = 2**30


def build(folder: Path, gib: float, seed: int = 0) -> tuple[Path, int]:
    """model.onnx + model.onnx.data in ``folder``: x [N, D] -> W1 [D, D] -> W2 [D, D] ->
    W3 [D, D/2] -> y; D chosen so the weights total ``gib`` GiB.  Returns (path, bytes)."""
    # 4 * (D^2 + D^2 + D^2/2) = gib * GiB  ->  D = sqrt(gib * GiB / 10)
    d = int(np.sqrt(gib * GIB / 10) // 256 * 256)
    shapes = {"w1": (d, d), "w2": (d, d), "w3": (d, d // 2)}
    data = folder / "model.onnx.data"
    rng = np.random.default_rng(seed)
    inits, offset = [], 0
    with open(data, "wb") as fh:
        for name, (rows, cols) in shapes.items():
            pad = (-offset) % 4096
            fh.write(b"\0" * pad)
            offset += pad
            length = rows * cols * 4
            step = max(1, (64 * 2**20) // (cols * 4))
            for r in range(0, rows, step):  # 64 MiB at a time
                block = rng.standard_normal((min(step, rows - r), cols), dtype=np.float32)
                block *= 1.0 / np.sqrt(rows)
                fh.write(block.tobytes())
            t = TensorProto()
            t.name, t.data_type = name, TensorProto.FLOAT
            t.dims.extend([rows, cols])
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data.name), ("offset", str(offset)), ("length", str(length))):
                e = t.external_data.add()
                e.key, e.value = k, v
            inits.append(t)
            offset += length
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "w3"], ["y"], name="mm3"),
    ]
    g = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", d // 2])],
        inits,
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxopt-benchmark"
    )
    m.ir_version = 8
    path = folder / "model.onnx"
    path.write_bytes(m.SerializeToString())
    return path, offset


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


# the CLI with onnxopt.io's size limits scaled by argv[1] (see --scale-limits)
_SCALED_CLI = """
import sys
import onnxopt.io as io
f = float(sys.argv.pop(1))
io.TWO_GB = int(io.TWO_GB * f)
io.LARGE_MODEL_BYTES = int(io.LARGE_MODEL_BYTES * f)
from onnxopt.cli.main import main
main()
"""


def run_hwm(argv: list[str], cap: int, cwd: Path, scale: float | None = None) -> dict:
    """Run ``onnxopt -q ARGV`` (limits scaled by ``scale`` when given); the peak is the
    kernel's high-water mark of the main process (``ru_maxrss`` from ``wait4``), which a
    poll cannot miss; the poll covers children."""
    t0 = time.perf_counter()
    cli = ["-m", "onnxopt"] if scale is None else ["-c", _SCALED_CLI, repr(scale)]
    child = subprocess.Popen(
        [sys.executable, *cli, "-q", *argv],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc = psutil.Process(child.pid)
    state = {"poll": 0, "killed": False, "done": False}

    def poll():
        while not state["done"]:
            try:
                rss = _tree_rss(proc)
            except psutil.Error:
                break
            state["poll"] = max(state["poll"], rss)
            if rss > cap:
                state["killed"] = True
                child.kill()
                break
            time.sleep(0.02)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    err_chunks = []
    reader = threading.Thread(target=lambda: err_chunks.append(child.stderr.read()), daemon=True)
    reader.start()
    _, status, usage = os.wait4(child.pid, 0)
    state["done"] = True
    child.returncode = os.waitstatus_to_exitcode(status)
    watcher.join()
    reader.join()
    return {
        "argv": argv,
        "exit": child.returncode,
        "seconds": time.perf_counter() - t0,
        "peak_rss": max(usage.ru_maxrss * 1024, state["poll"]),
        "hwm": usage.ru_maxrss * 1024,
        "poll": state["poll"],
        "killed": state["killed"],
        "stderr": "".join(err_chunks).strip().splitlines()[-3:],
    }


def _size_on_disk(path: Path) -> int:
    if not path.exists():
        return 0
    m = onnx.load(str(path), load_external_data=False)
    locs = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    return path.stat().st_size + sum(
        (path.parent / loc).stat().st_size for loc in locs if (path.parent / loc).exists()
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=2.5, help="total weight size in GiB (default 2.5)")
    ap.add_argument(
        "--rss-cap-gb", type=float, default=14.0, help="kill a command whose RSS passes this (GB)"
    )
    ap.add_argument(
        "--commands",
        default="inspect,simplify,quantize,ensemble,verify",
        help="comma-separated, of: inspect, simplify, quantize, quantize-static, ensemble, verify",
    )
    ap.add_argument(
        "--scale-limits",
        action="store_true",
        help="scale onnxopt.io's 2 GB and lazy-load limits by GIB/2.5 in the commands",
    )
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one under /tmp)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)

    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="onnxopt-large-", dir=args.dir))
    need = args.gib * GIB * 5
    free = shutil.disk_usage(work).free
    if free < need:
        print(
            f"need ~{need / 1e9:.1f} GB free in {work.parent}, have {free / 1e9:.1f}",
            file=sys.stderr,
        )
        shutil.rmtree(work)
        return 2
    try:
        src_dir = work / "in"
        src_dir.mkdir()
        t0 = time.perf_counter()
        model, nbytes = build(src_dir, args.gib)
        print(
            f"built {model} : {nbytes / GIB:.2f} GiB of weights ({nbytes / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s"
        )
        out = work / "out"
        out.mkdir()
        d = (
            onnx.load(str(model), load_external_data=False)
            .graph.input[0]
            .type.tensor_type.shape.dim[1]
            .dim_value
        )
        calibration = src_dir / "calibration.npz"
        np.savez(calibration, x=np.random.default_rng(1).standard_normal((8, d), dtype=np.float32))
        cap = int(args.rss_cap_gb * 1e9)
        plans = {
            "inspect": ["inspect", model],
            "simplify": ["simplify", model, "-o", out / "simplified.onnx"],
            "quantize": [
                "quantize",
                model,
                "-o",
                out / "quantized.onnx",
                "--mode",
                "dynamic",
                "--allow-slower",
            ],
            "quantize-static": [
                "quantize",
                model,
                "-o",
                out / "quantized_static.onnx",
                "--mode",
                "static",
                "--calibration",
                calibration,
                "--allow-slower",
            ],
            "ensemble": ["ensemble", model, model, "-o", out / "ensemble.onnx", "--fusion", "mean"],
            "verify": ["verify", model, out / "simplified.onnx"],
        }
        rows = []
        for name in args.commands.split(","):
            argv_ = [str(a) for a in plans[name]]
            if name == "verify" and not (out / "simplified.onnx").exists():
                argv_ = [str(model), str(model)]
                argv_ = ["verify", *argv_]
            avail = psutil.virtual_memory().available
            print(
                f"-- {name}: {' '.join(argv_[:1])} ... (available memory {avail / 1e9:.1f} GB)",
                flush=True,
            )
            r = run_hwm(argv_, cap, work, args.gib / 2.5 if args.scale_limits else None)
            written = [a for a in argv_ if a.startswith(str(out))]
            r["output_bytes"] = (
                _size_on_disk(Path(written[0])) if written and name != "verify" else 0
            )
            r["name"] = name
            rows.append(r)
            status = "KILLED at cap" if r["killed"] else f"exit {r['exit']}"
            print(
                f"   {status}, {r['seconds']:.0f} s, peak RSS {r['peak_rss'] / 1e9:.2f} GB ({r['peak_rss'] / nbytes:.2f}x model)"
                + (f"; stderr: {r['stderr']}" if r["exit"] else ""),
                flush=True,
            )
        print()
        scaled = f"; limits scaled by {args.gib / 2.5:.3g}" if args.scale_limits else ""
        print(
            f"model: {nbytes / 1e9:.2f} GB of weights (external data), {len(rows)} commands{scaled}"
        )
        print(
            f"{'command':10s} {'exit':>5s} {'seconds':>8s} {'peak RSS GB':>12s} {'x model':>8s} {'output GB':>10s}"
        )
        for r in rows:
            ex = "kill" if r["killed"] else str(r["exit"])
            print(
                f"{r['name']:10s} {ex:>5s} {r['seconds']:8.1f} {r['peak_rss'] / 1e9:12.2f} {r['peak_rss'] / nbytes:8.2f} {r['output_bytes'] / 1e9:10.2f}"
            )
        simp = next((r for r in rows if r["name"] == "simplify"), None)
        if simp:
            ok = simp["exit"] == 0 and simp["peak_rss"] <= 1.5 * nbytes
            print(
                f"target simplify peak RSS <= 1.5x model: {'met' if ok else 'NOT met'} ({simp['peak_rss'] / nbytes:.2f}x)"
            )
        if args.json_path:
            Path(args.json_path).write_text(
                json.dumps(
                    {
                        "model_bytes": nbytes,
                        "rows": [{k: v for k, v in r.items() if k != "stdout"} for r in rows],
                    },
                    indent=2,
                )
            )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
