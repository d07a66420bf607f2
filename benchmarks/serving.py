"""Serving figures: tuned session options, members run at once, cold start, carried options.

Sections (each bounded; run with ``nice -n 10``; ``--quick`` for fewer models and repeats):

1. **tune vs defaults**: ``onnxopt.tune`` on the bundled models and real exported models
   (``realmodels.py``: magika, ppocr-cls/det/rec), then a fresh interleaved run of the
   default session against the tuned one (``bench.timing``), ratio = median(default) /
   median(tuned) with its paired-block 95% CI, and the outputs compared (rel-L2).
2. **three members at once**: magika and two copies with perturbed weights (5%, seeded)
   merged by ``onnxopt.ensemble``: members in three sessions vs the merged model run
   sequentially vs with its branches in parallel (``ensemble.concurrent``).
3. **cold start**: session creation + first run + peak RSS in fresh processes
   (``serving.coldstart``), the FP32 model with ORT's defaults vs ORT's offline-optimized
   graph carrying ``graph_optimization_level=disable`` (``serving.offline``), round-robin.
4. **carried options honoured**: a tuned model's latency as ``onnxopt bench`` reports it vs
   a plain ``onnxruntime.InferenceSession`` with ``ORT_LOAD_CONFIG_FROM_MODEL=1``, interleaved.

    nice -n 10 python benchmarks/serving.py [--quick] [--tune-seconds 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from realmodels import fetch  # noqa: E402

from onnxopt.bench.feeds import make_feed  # noqa: E402
from onnxopt.bench.timing import speedup, time_interleaved  # noqa: E402
from onnxopt.runtime import create_session  # noqa: E402
from onnxopt.serving.carry import carried_options, ort_loads_config  # noqa: E402
from onnxopt.serving.coldstart import measure_cold_start  # noqa: E402
from onnxopt.serving.offline import ort_optimized  # noqa: E402
from onnxopt.session_options import SessionConfig, machine_cores  # noqa: E402

MODELS = ROOT / "models"
SHAPES = {
    "ppocr-cls": {"x": (1, 3, 48, 192)},
    "ppocr-det": {"x": (1, 3, 320, 320)},
    "ppocr-rec": {"x": (1, 3, 48, 320)},
}


def _models(quick: bool) -> list[tuple[str, Path, dict | None]]:
    out = [(n, MODELS / f"{n}.onnx", None) for n in ("digits_mlp", "digits_cnn", "digits_resnet")]
    for n in ("magika", "ppocr-cls") + (() if quick else ("ppocr-det", "ppocr-rec")):
        p = fetch(n)
        if p is not None:
            out.append((n, p, SHAPES.get(n)))
    return out


def _rel_l2(a: list, b: list) -> float:
    num = sum(float(np.linalg.norm(np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2) for x, y in zip(a, b, strict=True))
    den = sum(float(np.linalg.norm(np.asarray(x, np.float64)) ** 2) for x in a)
    return (num / den) ** 0.5 if den else num**0.5


def _versus(model, feed, configs: list, seconds: float) -> tuple[list, list]:
    """Interleaved latencies (s) of one session per config, and each session's outputs."""
    sessions = [create_session(model, config=c) for c in configs]
    outs = [s.run(None, feed) for s in sessions]
    return time_interleaved(sessions, [feed] * len(sessions), runs=100_000, duration=seconds, block=5, shuffle_seed=0), outs


def section_tune(models, seconds: float) -> list[Path]:
    from onnxopt.serving.tune import tune

    print("\n## 1. tune vs defaults (fresh interleaved run after the search)\n")
    print("| model | branch width | carried options | default ms | tuned ms | ratio [95% CI] | outputs rel-L2 |")
    print("|---|---|---|---:|---:|---|---:|")
    tuned_paths = []
    tmp = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    for name, path, shapes in models:
        res = tune(path, shapes=shapes, duration=seconds)
        out = tmp / f"{name}.tuned.onnx"
        res.save(out)
        tuned_paths.append(out)
        cfg = carried_options(res.model)
        m = onnx.load(str(path))
        feed, _ = make_feed(m, None, shapes, None)
        lat, outs = _versus(str(path), feed, [SessionConfig(), cfg], max(seconds, 2.0))
        sp = speedup(lat[0], lat[1], block=5)
        print(f"| {name} | {res.report['branch_width']} | {cfg.describe()} | {np.median(lat[0]) * 1e3:.3f} | {np.median(lat[1]) * 1e3:.3f} | {sp.ratio:.2f}x [{sp.low:.2f}, {sp.high:.2f}] | {_rel_l2(outs[0], outs[1]):.1e} |")
    return tuned_paths


def _perturbed(path: Path, seed: int, scale: float = 0.05) -> onnx.ModelProto:
    from onnx import numpy_helper

    m = onnx.load(str(path))
    rng = np.random.default_rng(seed)
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype.kind == "f" and a.size > 1:
            t.CopyFrom(numpy_helper.from_array((a * (1 + scale * rng.standard_normal(a.shape))).astype(a.dtype), t.name))
    return m


def section_members(seconds: float) -> None:
    from onnxopt.ensemble.api import ensemble
    from onnxopt.ensemble.concurrent import parallel_options

    print("\n## 2. three magika members (weights perturbed 5%, seeds 1-3) in one file\n")
    path = fetch("magika")
    if path is None:
        print("skip: magika not available")
        return
    members = [_perturbed(path, s) for s in (1, 2, 3)]
    res = ensemble(members, parallel=False)
    # the report's members (with their input renames) come from the API: re-run the
    # measurement for longer than the default, on the merged model as written
    from onnxopt.ensemble.merge import load_members, match_inputs, select_outputs

    ms = load_members(members)
    match_inputs(ms, None)
    select_outputs(ms, None)
    print("| batch | separate sessions ms (sum) | merged sequential ms | merged parallel ms | parallel / separate | parallel / sequential | carried (why) |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for batch in (1, 8):
        feed, _ = make_feed(res.model, None, None, batch)
        model = onnx.ModelProto()
        model.CopyFrom(res.model)
        c = parallel_options(model, ms, feed, runs=200, duration=seconds * 3)
        if "parallel_ms" not in c:
            print(f"| {batch} | - | - | - | - | - | {c['reason']} |")
            continue
        print(f"| {batch} | {c['separate_ms']:.3f} | {c['sequential_ms']:.3f} | {c['parallel_ms']:.3f} | {c['parallel_ms'] / c['separate_ms']:.2f}x | {c['parallel_ms'] / c['sequential_ms']:.2f}x | {c['carried']} ({c['reason']}) |")


def section_cold(models, repeats: int) -> None:
    print(f"\n## 3. cold start (fresh processes, {repeats} round-robin repeats, medians)\n")
    print("| model | variant | create ms | first run ms | create + first ms | creation peak RSS | cut |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, path, shapes in models:
        m = onnx.load(str(path))
        feed, _ = make_feed(m, None, shapes, None)
        off = ort_optimized(m)
        figs: dict[str, list] = {"fp32 (ORT defaults)": [], "ort-offline (opt disable)": []}
        for _ in range(repeats):
            figs["fp32 (ORT defaults)"].append(measure_cold_start(path, feed, repeats=1))
            figs["ort-offline (opt disable)"].append(measure_cold_start(off, feed, config=carried_options(off), repeats=1))
        total = {}
        for variant, runs in figs.items():
            create = float(np.median([r["create_ms"] for r in runs]))
            first = float(np.median([r["first_run_ms"] for r in runs]))
            both = float(np.median([r["create_ms"] + r["first_run_ms"] for r in runs]))
            rss = float(np.median([r["creation_peak_rss_bytes"] or 0 for r in runs]))
            total[variant] = both
            cut = "" if variant.startswith("fp32") else f"{total['fp32 (ORT defaults)'] / both:.2f}x"
            print(f"| {name} | {variant} | {create:.1f} | {first:.2f} | {both:.1f} | {rss / 2**20:.1f} MiB | {cut} |")


def section_honoured(tuned: list[Path], seconds: float) -> None:
    from onnxopt.bench.api import bench

    print("\n## 4. a tuned model: bench's latency vs plain onnxruntime with ORT_LOAD_CONFIG_FROM_MODEL=1\n")
    print("| model | carried options | bench p50 ms | plain ORT p50 ms | onnxopt.session p50 ms | plain / onnxopt.session |")
    print("|---|---|---:|---:|---:|---:|")
    for path in tuned:
        name = path.name.removesuffix(".tuned.onnx")
        shapes = SHAPES.get(name)
        m = onnx.load(str(path))
        cfg = carried_options(m)
        feed, _ = make_feed(m, None, shapes, None)
        rep = bench([path], shapes=shapes, duration=seconds, throughput=False, accuracy=False).report
        b50 = rep["results"][0]["latency_ms"]["p50"]
        with ort_loads_config():
            plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ours = create_session(str(path), config=cfg)
        lat = time_interleaved([plain, ours], [feed, feed], runs=100_000, duration=seconds, block=5, shuffle_seed=0)
        sp = speedup(lat[1], lat[0], block=5)
        print(f"| {name} | {cfg.describe()} | {b50:.3f} | {np.median(lat[0]) * 1e3:.3f} | {np.median(lat[1]) * 1e3:.3f} | {1 / sp.ratio:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer models and repeats")
    ap.add_argument("--tune-seconds", type=float, default=2.0, help="seconds per timed tune stage")
    ap.add_argument("--sections", default="1234", help="which sections to run, e.g. 13")
    args = ap.parse_args()
    models = _models(args.quick)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# serving benchmark: {platform.processor() or platform.machine()}, {machine_cores()} usable cores, load {load:.2f} at start, onnxruntime {ort.__version__}, Python {platform.python_version()}")
    tuned: list[Path] = []
    if "1" in args.sections:
        tuned = section_tune(models, args.tune_seconds)
    if "2" in args.sections:
        section_members(args.tune_seconds)
    if "3" in args.sections:
        section_cold([x for x in models if x[0] in ("digits_resnet", "magika", "ppocr-det", "ppocr-rec")], 3 if args.quick else 7)
    if "4" in args.sections and tuned:
        section_honoured([p for p in tuned if p.name.split(".")[0] in ("digits_cnn", "magika", "ppocr-cls")], args.tune_seconds)
    print(f"\nload at end {os.getloadavg()[0]:.2f} (2 cores shared with other engineers: expect noise)")


if __name__ == "__main__":
    main()
