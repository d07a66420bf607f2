"""onnxopt's streamed calibration vs ONNX Runtime's calibrators: same ranges? same memory?

On the conv net of ``streaming.py`` (3x64x64 inputs), with N samples fed in batches of 32,
each configuration runs in a fresh subprocess and reports its peak RSS (``ru_maxrss``) and
the ranges it computed:

- ``onnxopt minmax|percentile|entropy``: ``onnxopt.quantize.collect.collect_ranges``;
- ``ort minmax|percentile|entropy``: ``onnxruntime.quantization.calibrate.create_calibrator``
  (``MinMaxCalibrater``, ``HistogramCalibrater``), fed the same batches through a
  ``CalibrationDataReader``, ranges from ``compute_data()``.  (A sample count that is not a
  multiple of the batch, e.g. ``--samples 2000``, shows that ORT 1.32's histogram
  calibrators fail on a smaller last batch.)

Printed per method: peak RSS of both and, over the tensors both calibrate, the largest
relative difference of the range ends ``|a - b| / max(|a|, |b|)``.  The decision the table
informs (docs/architecture.md): use ORT's calibrator where it gives the same ranges within
the same memory.

    python benchmarks/calibrators.py [--samples 2000] [--methods minmax,percentile,entropy]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streaming import SHAPE, build_model  # noqa: E402

BATCH = 32


def _batches(n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    for start in range(0, n, BATCH):
        yield {"x": rng.random((min(BATCH, n - start), *SHAPE), dtype=np.float32)}


def _child(engine: str, method: str, model: str, n: int, out: str) -> None:
    import onnx

    if engine == "onnxopt":
        from onnxopt.quantize.collect import collect_ranges

        class Stream:
            source = "synthetic"

            def batches(self, batch_size=None, limit=None):
                return _batches(n)

        ranges = collect_ranges(onnx.load(model), Stream(), method=method).ranges
    else:
        from onnxruntime.quantization.calibrate import (
            CalibrationDataReader,
            CalibrationMethod,
            create_calibrator,
        )

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = _batches(n)

            def get_next(self):
                return next(self.it, None)

        cm = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}[method]
        with tempfile.TemporaryDirectory() as tmp:
            cal = create_calibrator(model, augmented_model_path=str(Path(tmp) / "aug.onnx"), calibrate_method=cm)
            cal.collect_data(Reader())
            data = cal.compute_data()
        ranges = {k: (float(np.asarray(v.range_value[0]).min()), float(np.asarray(v.range_value[1]).max())) for k, v in data.data.items()}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(out).write_text(json.dumps({"peak": peak, "ranges": ranges}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--methods", default="minmax,percentile,entropy")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "cnn.onnx"
        build_model(model)
        print(f"{args.samples} samples of {SHAPE} float32 in batches of {BATCH} ({args.samples * int(np.prod(SHAPE)) * 4 / 2**20:.0f} MiB of data)")
        print(f"{'method':<11} {'onnxopt peak':>13} {'ort peak':>10} {'tensors':>8} {'max rel diff':>13}")
        for method in args.methods.split(","):
            res = {}
            for engine in ("onnxopt", "ort"):
                out = Path(tmp) / f"{engine}-{method}.json"
                r = subprocess.run(
                    [sys.executable, __file__, "--child", engine, method, str(model), str(args.samples), str(out)], capture_output=True, text=True
                )
                if r.returncode:
                    last = [line for line in r.stderr.strip().splitlines() if line.strip()][-1:]
                    res[engine] = {"peak": float("nan"), "ranges": {}, "error": last[0] if last else f"exit {r.returncode}"}
                else:
                    res[engine] = json.loads(out.read_text())
            a, b = res["onnxopt"]["ranges"], res["ort"]["ranges"]
            common = sorted(set(a) & set(b))
            diff = max((abs(x - y) / max(abs(x), abs(y), 1e-12) for k in common for x, y in zip(a[k], b[k], strict=True)), default=float("nan"))
            print(f"{method:<11} {res['onnxopt']['peak'] / 2**20:>10.0f} MiB {res['ort']['peak'] / 2**20:>6.0f} MiB {len(common):>8} {diff:>13.3g}")
            for engine in ("onnxopt", "ort"):
                if "error" in res[engine]:
                    print(f"  {engine} {method} failed: {res[engine]['error'][:200]}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6])
    else:
        sys.exit(main())
