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
import time
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


def _versus(model, feed, configs: list, seconds: float) -> tuple[list, list, list]:
    """Interleaved latencies (s) of one session per config, each session's outputs, and the
    sessions."""
    sessions = [create_session(model, config=c) for c in configs]
    outs = [s.run(None, feed) for s in sessions]
    return time_interleaved(sessions, [feed] * len(sessions), runs=100_000, duration=seconds, block=5, shuffle_seed=0), outs, sessions


def _alone_ratios(a, b, feed: dict, seconds: float, rounds: int = 6) -> np.ndarray:
    """median(a) / median(b) per round, each session timed alone (``_alone_ms``), the order
    alternating between rounds: two live sessions timed in turn disturb each other (a
    spinning pool thread takes the other's core), which interleaving cannot remove."""
    out = []
    for r in range(rounds):
        first, second = (a, b) if r % 2 == 0 else (b, a)
        t1, t2 = _alone_ms(first, feed, seconds), _alone_ms(second, feed, seconds)
        ta, tb = (t1, t2) if r % 2 == 0 else (t2, t1)
        out.append(ta / tb)
    return np.array(out)


def section_tune(models, seconds: float) -> list[Path]:
    from onnxopt.serving.tune import tune

    print("\n## 1. tune vs defaults (fresh interleaved run after the search)\n")
    print(
        "| model | branch width | carried options | default ms | tuned ms | interleaved ratio [95% CI] "
        "| alone, 6 alternating rounds: median [min, max] | outputs rel-L2 |"
    )
    print("|---|---|---|---:|---:|---|---|---:|")
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
        lat, outs, sessions = _versus(str(path), feed, [SessionConfig(), cfg], max(seconds, 2.0))
        sp = speedup(lat[0], lat[1], block=5)
        alone = _alone_ratios(*sessions, feed, max(seconds, 2.0) / 2)
        print(
            f"| {name} | {res.report['branch_width']} | {cfg.describe()} | {np.median(lat[0]) * 1e3:.3f} | "
            f"{np.median(lat[1]) * 1e3:.3f} | {sp.ratio:.2f}x [{sp.low:.2f}, {sp.high:.2f}] | "
            f"{np.median(alone):.2f}x [{alone.min():.2f}, {alone.max():.2f}] | {_rel_l2(outs[0], outs[1]):.1e} |"
        )
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


def _member_ways(merged: onnx.ModelProto, ms, feed: dict) -> tuple[list[str], object]:
    """The ways timed in section 2, as (names, run_one(i)): the members in three sessions
    with ORT's defaults called back to back, the same with spinning off, and the merged model
    with the options it carries, ORT's defaults, one intra-op thread, spinning off, and
    ORT_PARALLEL (inter 2, intra 1)."""
    from onnxopt.ensemble.parity import member_feed

    carried = carried_options(merged)
    configs = {
        "merged, carried options": carried or SessionConfig(),
        "merged, ORT defaults": SessionConfig(),
        "merged, intra 1": SessionConfig(intra_op_threads=1),
        "merged, spinning off": SessionConfig(allow_spinning=False),
        "merged, parallel inter 2 intra 1": SessionConfig(intra_op_threads=1, inter_op_threads=2, execution_mode="parallel"),
    }
    sessions = [create_session(merged, config=c) for c in configs.values()]
    separate = {
        "3 sessions, ORT defaults": [(create_session(m.original), m.outputs, member_feed(m, feed)) for m in ms],
        "3 sessions, spinning off": [(create_session(m.original, config=SessionConfig(allow_spinning=False)), m.outputs, member_feed(m, feed)) for m in ms],
    }
    names = list(separate) + list(configs)
    calls = list(separate.values())

    def run_one(i: int) -> None:
        if i < len(calls):
            for sess, outs, f in calls[i]:
                sess.run(outs, f)
        else:
            sessions[i - len(calls)].run(None, feed)

    return names, run_one


def section_members(seconds: float, rounds: int) -> None:
    from onnxopt.bench.timing import measure_interleaved
    from onnxopt.ensemble.api import ensemble
    from onnxopt.ensemble.merge import load_members, match_inputs, select_outputs

    print(f"\n## 2. three magika members (weights perturbed 5%, seeds 1-3) in one file: {rounds} rounds, ratios vs the separate sessions with ORT's defaults\n")
    path = fetch("magika")
    if path is None:
        print("skip: magika not available")
        return
    members = [_perturbed(path, s) for s in (1, 2, 3)]
    res = ensemble(members)  # as a user gets it: the options the concurrency rule carries
    conc = res.report.get("concurrency", {})
    print(
        f"ensemble carried: {conc.get('carried')} ({conc.get('reason', '')}); options "
        f"{carried_options(res.model).describe() if carried_options(res.model) else 'none'}\n"
    )
    ms = load_members(members)
    match_inputs(ms, None)
    select_outputs(ms, None)
    for batch in (1, 8):
        feed, _ = make_feed(res.model, None, None, batch)
        names, run_one = _member_ways(res.model, ms, feed)
        per: dict[str, list] = {k: [] for k in names}
        loads = [os.getloadavg()[0]]
        for r in range(rounds):
            m = measure_interleaved(run_one, len(names), runs=60, warmup=2, block=5, duration=seconds, shuffle_seed=r)
            for k, lat in zip(names, m.latencies, strict=True):
                per[k].append(float(np.median(lat)) * 1e3)
            loads.append(os.getloadavg()[0])
        print(f"batch {batch}: load {min(loads):.1f}-{max(loads):.1f} during the rounds\n")
        print("| way | median ms | ratio vs 3 sessions (defaults): median [min, max] | vs 3 sessions, spinning off |")
        print("|---|---:|---|---|")
        base, quiet = np.array(per[names[0]]), np.array(per[names[1]])
        for k in names:
            r0, r1 = np.array(per[k]) / base, np.array(per[k]) / quiet
            print(
                f"| {k} | {np.median(per[k]):.2f} | {np.median(r0):.2f}x [{r0.min():.2f}, {r0.max():.2f}] | "
                f"{np.median(r1):.2f}x [{r1.min():.2f}, {r1.max():.2f}] |"
            )
        print()


COLD_VARIANTS = ("fp32", "fp32 intra 1", "ort-offline", "ort-offline intra 1", "ort-offline .ort")


def _cold_variants(name: str, path: Path, tmp: Path) -> dict[str, tuple]:
    """(model path, SessionConfig) per variant: the input with ORT's defaults and with one
    intra-op thread, ORT's offline-optimized graph (carrying ``disable``) likewise, and the
    same graph in ORT's .ort format."""
    from onnxopt.serving.ortformat import ort_format, ort_format_options

    off = ort_optimized(onnx.load(str(path)))
    off_path = tmp / f"{name}.offline.onnx"
    onnx.save(off, str(off_path))
    ort_path = ort_format(off).save(tmp / f"{name}.offline.ort")
    off_cfg = carried_options(off)
    return {
        "fp32": (path, None),
        "fp32 intra 1": (path, SessionConfig(intra_op_threads=1)),
        "ort-offline": (off_path, off_cfg),
        "ort-offline intra 1": (off_path, off_cfg.with_threads(1)),
        "ort-offline .ort": (ort_path, ort_format_options(ort_path)),
    }


def _cold_row(name: str, variant: str, runs: list[dict], base: list[dict] | None, like: list[dict] | None) -> str:
    def med(key: str) -> float:
        return float(np.median([r[key] or 0 for r in runs]))

    wall = np.array([r["create_ms"] + r["first_run_ms"] for r in runs])
    cpu = np.array([r["create_cpu_ms"] + r["first_run_cpu_ms"] for r in runs])

    def cut(ref: list[dict] | None) -> str:
        if ref is None:
            return ""
        per_round = np.array([r["create_ms"] + r["first_run_ms"] for r in ref]) / wall
        ref_cpu = np.median([r["create_cpu_ms"] + r["first_run_cpu_ms"] for r in ref])
        return f"{np.median(per_round):.2f}x [{np.percentile(per_round, 25):.2f}, {np.percentile(per_round, 75):.2f}] (CPU {ref_cpu / np.median(cpu):.2f}x)"

    split = f"{med('load_ms'):.1f} / {med('initialize_ms'):.1f} / {med('other_ms'):.1f}" if "load_ms" in runs[0] else "-"
    return (
        f"| {name} | {variant} | {med('create_ms'):.1f} | {split} | {med('first_run_ms'):.1f} | {np.median(wall):.1f} | {np.median(cpu):.1f} | "
        f"{med('creation_peak_rss_bytes') / 2**20:.1f} MiB | {cut(base)} | {cut(like)} |"
    )


def section_cold(models, repeats: int, breakdown: bool) -> None:
    import random

    print(f"\n## 3. cold start (fresh processes, {repeats} rounds in shuffled order, medians; load {os.getloadavg()[0]:.2f} at start)\n")
    print(
        "cut vs fp32 = median over rounds of fp32's create + first run / the variant's, [quartiles], and the ratio of "
        "CPU times; like-for-like = vs fp32 with the same threads\n"
    )
    print(
        "| model | variant | create ms | load / init / other ms | first run ms | create + first ms | CPU ms | creation peak RSS | cut vs fp32 | like-for-like |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|---|---|")
    tmp = Path(tempfile.mkdtemp(prefix="serving-cold-"))
    for name, path, shapes in models:
        feed, _ = make_feed(onnx.load(str(path)), None, shapes, None)
        variants = _cold_variants(name, path, tmp)
        figs: dict[str, list] = {k: [] for k in variants}
        order = random.Random(0)
        for _ in range(repeats):
            keys = list(variants)
            order.shuffle(keys)  # no variant always runs right after the same neighbour
            for k in keys:
                model, cfg = variants[k]
                figs[k].append(measure_cold_start(model, feed, config=cfg, repeats=1, breakdown=breakdown)["runs"][0])
        like = {"ort-offline": "fp32", "ort-offline .ort": "fp32", "ort-offline intra 1": "fp32 intra 1"}
        for k, runs in figs.items():
            base = figs["fp32"] if k != "fp32" else None
            print(_cold_row(name, k, runs, base, figs[like[k]] if k in like else None))
    print(f"\nload at the end of section 3: {os.getloadavg()[0]:.2f}")


def _alone_ms(sess, feed: dict, seconds: float) -> float:
    """Median latency (ms) of ``sess`` run alone for ``seconds`` after 5 warm-up runs."""
    for _ in range(5):
        sess.run(None, feed)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def section_honoured(tuned: list[Path], seconds: float, rounds: int = 5) -> None:
    """bench's p50 and plain ONNX Runtime's median (the carried options loaded by ORT itself)
    in alternating rounds, so that the machine's load hits both alike; the ratio per round."""
    from onnxopt.bench.api import bench

    print(f"\n## 4. a tuned model: bench's latency vs plain onnxruntime with ORT_LOAD_CONFIG_FROM_MODEL=1 ({rounds} alternating rounds)\n")
    print("| model | carried options | bench p50 ms | plain ORT p50 ms | onnxopt.session p50 ms | plain / bench [min, max] | plain / onnxopt.session |")
    print("|---|---|---:|---:|---:|---|---:|")
    for path in tuned:
        name = path.name.removesuffix(".tuned.onnx")
        shapes = SHAPES.get(name)
        m = onnx.load(str(path))
        cfg = carried_options(m)
        feed, _ = make_feed(m, None, shapes, None)
        with ort_loads_config():
            plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ours = create_session(str(path), config=cfg)
        b50, p50, o50 = [], [], []
        for _ in range(rounds):
            rep = bench([path], shapes=shapes, duration=seconds, throughput=False, accuracy=False).report
            b50.append(rep["results"][0]["latency_ms"]["p50"])
            # each session timed alone, as bench times its one session: two live sessions
            # timed in turn disturb each other (a spinning pool thread takes the other's core)
            p50.append(_alone_ms(plain, feed, seconds))
            o50.append(_alone_ms(ours, feed, seconds))
        r_bench = np.array(p50) / np.array(b50)
        r_ours = np.array(p50) / np.array(o50)
        print(
            f"| {name} | {cfg.describe()} | {np.median(b50):.3f} | {np.median(p50):.3f} | {np.median(o50):.3f} "
            f"| {np.median(r_bench):.2f}x [{r_bench.min():.2f}, {r_bench.max():.2f}] | {np.median(r_ours):.2f}x |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer models and repeats")
    ap.add_argument("--tune-seconds", type=float, default=2.0, help="seconds per timed tune stage")
    ap.add_argument("--sections", default="1234", help="which sections to run, e.g. 13")
    ap.add_argument("--cold-repeats", type=int, default=9, help="section 3: rounds of fresh processes per variant")
    ap.add_argument("--breakdown", action="store_true", help="section 3: ORT's profiler splits creation into load / initialization / other")
    ap.add_argument("--member-rounds", type=int, default=7, help="section 2: interleaved rounds (median ratio and its spread)")
    ap.add_argument("--only", default=None, help="comma-separated model names to keep (e.g. magika)")
    args = ap.parse_args()
    models = _models(args.quick)
    if args.only:
        models = [m for m in models if m[0] in args.only.split(",")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# serving benchmark: {platform.processor() or platform.machine()}, {machine_cores()} usable cores, load "
        f"{load:.2f} at start, onnxruntime {ort.__version__}, Python {platform.python_version()}"
    )
    tuned: list[Path] = []
    if "1" in args.sections:
        tuned = section_tune(models, args.tune_seconds)
    if "2" in args.sections:
        section_members(max(args.tune_seconds, 2.0), args.member_rounds)
    if "3" in args.sections:
        section_cold(
            [x for x in models if x[0] in ("digits_resnet", "magika", "ppocr-det", "ppocr-rec")], 3 if args.quick else args.cold_repeats, args.breakdown
        )
    if "4" in args.sections and tuned:
        section_honoured([p for p in tuned if p.name.split(".")[0] in ("digits_cnn", "magika", "ppocr-cls")], args.tune_seconds)
    print(f"\nload at end {os.getloadavg()[0]:.2f} (2 cores shared with other engineers: expect noise)")


if __name__ == "__main__":
    main()
