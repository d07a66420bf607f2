"""Calibration and benchmark data are streamed: peak RSS with 10,000 samples vs 100.

Builds a small conv net on 3x64x64 images (48 KiB per sample, so that 10,000 samples are
480 MiB: loading them at once would show) and two DATA folders of one ``.npz`` per sample
(100 and 10,000 files), then runs as subprocesses

    quantize --mode static --calibration DIR      (calibration streams the folder)
    bench MODEL --data DIR                         (accuracy / agreement over the folder)

and reports per command the peak RSS (``wait4``'s ``ru_maxrss``) for each folder and the
ratio.  Target: the 10,000-sample peak stays within a few batches of the 100-sample one
(ratio ~1; the issue's bound is "a few batches", 32 samples x 48 KiB each).

    python benchmarks/streaming.py [--samples 10000] [--small 100]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from large_model import run_hwm  # noqa: E402  (same folder; a script, not a package)

SHAPE = (3, 64, 64)


def build_model(path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((16, 3, 3, 3)) * 0.2).astype(np.float32)
    w2 = (rng.standard_normal((32, 16, 3, 3)) * 0.1).astype(np.float32)
    fc = (rng.standard_normal((32, 10)) * 0.2).astype(np.float32)
    nodes = [
        helper.make_node(
            "Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv1"
        ),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "fc"], ["logits"], name="fc"),
    ]
    g = helper.make_graph(
        nodes,
        "stream_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(fc, "fc"),
        ],
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxopt-benchmark"
    )
    m.ir_version = 8
    path.write_bytes(m.SerializeToString())


def build_folder(folder: Path, n: int, seed: int = 1) -> int:
    """``n`` files, one sample each (x [1, 3, 64, 64] float32 + labels [1]); returns bytes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        x = rng.random((1, *SHAPE), dtype=np.float32)
        with open(folder / f"sample{i:05d}.npz", "wb") as fh:
            np.savez(fh, x=x, labels=np.array([i % 10], np.int64))
        total += x.nbytes
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--rss-cap-gb", type=float, default=8.0)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="onnxopt-stream-"))
    try:
        model = work / "cnn.onnx"
        build_model(model)
        sizes = {}
        for n in (args.small, args.samples):
            t0 = time.perf_counter()
            sizes[n] = build_folder(work / f"data{n}", n)
            print(
                f"wrote {n} samples ({sizes[n] / 2**20:.0f} MiB of inputs) in {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
        cap = int(args.rss_cap_gb * 1e9)
        plans = {
            "quantize static (calibration)": lambda d, o: [
                "quantize",
                model,
                "-o",
                o / "q.onnx",
                "--mode",
                "static",
                "--calibration",
                d,
                "--allow-slower",
            ],
            "bench --data": lambda d, o: [
                "bench",
                model,
                "--data",
                d,
                "--runs",
                "20",
                "--warmup",
                "2",
                "--no-throughput",
                "--format",
                "json",
                "-o",
                o / "bench.json",
            ],
        }
        rows = []
        for name, plan in plans.items():
            peaks = {}
            for n in (args.small, args.samples):
                out = work / f"out-{len(rows)}-{n}"
                out.mkdir()
                r = run_hwm([str(a) for a in plan(work / f"data{n}", out)], cap, work)
                peaks[n] = r
                status = "KILLED" if r["killed"] else f"exit {r['exit']}"
                print(
                    f"-- {name}, {n} samples: {status}, {r['seconds']:.1f} s, peak RSS {r['peak_rss'] / 2**20:.0f} MiB"
                    + (f"; {r['stderr']}" if r["exit"] else ""),
                    flush=True,
                )
            rows.append((name, peaks))
        print()
        print(
            f"{'command':32s} {'peak RSS ' + str(args.small):>14s} {'peak RSS ' + str(args.samples):>16s} {'ratio':>6s} {'delta MiB':>10s} {'s (large)':>9s}"
        )
        for name, peaks in rows:
            a, b = peaks[args.small], peaks[args.samples]
            print(
                f"{name:32s} {a['peak_rss'] / 2**20:12.0f}Mi {b['peak_rss'] / 2**20:14.0f}Mi "
                f"{b['peak_rss'] / a['peak_rss']:6.2f} {(b['peak_rss'] - a['peak_rss']) / 2**20:10.0f} {b['seconds']:9.1f}"
            )
        per_batch = 32 * int(np.prod(SHAPE)) * 4
        print(
            f"inputs: {sizes[args.samples] / 2**20:.0f} MiB for {args.samples} samples; one batch of 32 = {per_batch / 2**20:.1f} MiB"
        )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
