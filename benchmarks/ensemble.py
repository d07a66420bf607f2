"""Ensemble benchmark: N members as N sessions vs one merged file vs horizontally fused.

Prints three tables (medians of interleaved timings, file sizes, digits accuracy):

1. latency: for each member set and batch size, the 3 members run as 3 ONNX Runtime
   sessions one after another (sessions only, no glue) vs the merged model (``mean`` head)
   under ORT's sequential executor vs the merged model with ``--fuse-members``, all timed
   round-robin in one ``time_interleaved`` call; the parallel executor is timed in a second
   round-robin against the 3 sessions (its spinning threads would disturb the others).
   Ratios are ``median(variant) / median(3 sessions)`` (< 1: faster) with a bootstrap 95% CI.
2. sizes: summed member files vs the merged files.
3. accuracy on ``models/digits_test.npz``: members vs mean / vote / weighted / stack (the last
   two fitted on ``models/digits_calib.npz``).

Member sets (built here, deterministic):
- ``cnn fine-tunes``: digits_cnn with only its last Gemm perturbed (3 seeds): the backbone is
  identical, so the merge stores it once and ``--fuse-members`` computes it once;
- ``cnn same-arch``: digits_cnn with every weight perturbed by 5% (3 seeds): same
  architecture, different weights everywhere (stands in for independently trained members);
- ``mlp same-arch``: the same for digits_mlp;
- ``heterogeneous``: digits_mlp + digits_cnn + digits_resnet (nothing to fuse horizontally);
- ``--extra MODEL:D1,D2,...`` (repeatable): a model of your own (e.g. a real export) with every
  float weight, initializers and ``Constant`` nodes alike, perturbed by 5% (3 seeds), timed on
  one random input of shape ``D1,D2,...`` (standard normal; integers in ``[0, 256)``), whose
  batch size replaces ``--batches``.

Each latency table is measured with 1 intra-op thread and with one per core (the ORT
default): fewer, wider kernels mostly pay off when a thread pool has to synchronise per kernel.

Usage: python benchmarks/ensemble.py [--threads 1,2] [--batches 1,64] [--seconds 5]
       [--extra ~/.cache/onnxopt-bench/ppocr-cls.onnx:1,3,48,192] [--skip-digits]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxopt.bench.timing import speedup, time_interleaved  # noqa: E402
from onnxopt.ensemble.api import ensemble  # noqa: E402
from onnxopt.render import human_bytes, table  # noqa: E402
from onnxopt.runtime import create_session  # noqa: E402

MODELS = ROOT / "models"
CALIB = MODELS / "digits_calib.npz"
TEST = MODELS / "digits_test.npz"


def perturbed(name: str, seed: int, *, only: set[str] | None = None, scale: float = 0.05) -> onnx.ModelProto:
    """``models/<name>.onnx`` with float weights scaled by ``1 + scale * N(0, 1)`` (seeded)."""
    m = onnx.load(str(MODELS / f"{name}.onnx"))
    rng = np.random.default_rng(seed)
    for t in m.graph.initializer:
        if only is not None and t.name not in only:
            continue
        a = numpy_helper.to_array(t)
        if a.dtype.kind != "f":
            continue
        t.CopyFrom(numpy_helper.from_array((a * (1 + scale * rng.standard_normal(a.shape))).astype(a.dtype), t.name))
    return m


def perturbed_file(path: Path, seed: int, scale: float = 0.05) -> onnx.ModelProto:
    """Any model with its float initializers *and* ``Constant``-node weights perturbed (seeded)."""
    m = onnx.load(str(path))
    rng = np.random.default_rng(seed)

    def perturb(t):
        a = numpy_helper.to_array(t)
        if a.dtype.kind == "f" and a.size > 1:
            t.CopyFrom(numpy_helper.from_array((a * (1 + scale * rng.standard_normal(a.shape))).astype(a.dtype), t.name))

    for t in m.graph.initializer:
        perturb(t)
    for n in m.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    perturb(a.t)
    return m


def parse_extra(spec: str) -> tuple[Path, list[int]]:
    path, sep, dims = spec.rpartition(":")
    if not sep or not path:
        raise SystemExit(f"--extra {spec!r}: expected MODEL:D1,D2,...")
    return Path(path), [int(d) for d in dims.split(",")]


def member_sets(tmp: Path, extras=(), digits: bool = True) -> dict[str, list[Path]]:
    sets = {}
    if digits:
        sets = {
            "cnn fine-tunes": [perturbed("digits_cnn", s, only={"fc.weight", "fc.bias"}, scale=0.2) for s in (1, 2, 3)],
            "cnn same-arch": [perturbed("digits_cnn", s) for s in (1, 2, 3)],
            "mlp same-arch": [perturbed("digits_mlp", s) for s in (1, 2, 3)],
        }
    for path, _ in extras:
        sets[f"{path.stem} same-arch"] = [perturbed_file(path, s) for s in (1, 2, 3)]
    out = {}
    for key, models in sets.items():
        paths = []
        for i, m in enumerate(models):
            p = tmp / f"{key.replace(' ', '_')}_{i}.onnx"
            onnx.save(m, str(p))
            paths.append(p)
        out[key] = paths
    if digits:
        out["heterogeneous"] = [MODELS / "digits_mlp.onnx", MODELS / "digits_cnn.onnx", MODELS / "digits_resnet.onnx"]
    return out


def build(tmp: Path, key: str, paths: list[Path], shape: list[int] | None = None) -> dict:
    """Merged and fused files for one member set; returns paths, sizes, build notes and, for an
    ``--extra`` model (``shape`` given), its random feed."""
    out = {"members": paths, "member_bytes": sum(p.stat().st_size for p in paths), "feed": None}
    kw = {"data": TEST}
    if shape is not None:
        g = onnx.load(str(paths[0]), load_external_data=False).graph
        inits = {t.name for t in g.initializer}
        (inp,) = [i for i in g.input if i.name not in inits]  # one-input models only
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        rng = np.random.default_rng(0)
        # integer inputs are usually ids / bytes: stay in [0, 256) (negative ids are out of domain)
        x = rng.integers(0, 256, shape).astype(np_dtype) if np.dtype(np_dtype).kind in "iu" else rng.standard_normal(shape).astype(np_dtype)
        np.savez(tmp / f"{key.replace(' ', '_')}_data.npz", **{inp.name: x})
        kw = {"data": tmp / f"{key.replace(' ', '_')}_data.npz"}
        out["feed"] = {inp.name: x}
    res = ensemble(paths, fusion="mean", **kw)
    merged = tmp / f"{key.replace(' ', '_')}_merged.onnx"
    res.save(merged)
    out["merged"] = merged
    fused_res = ensemble(paths, fusion="mean", fuse_members=True, **kw)
    applied = [g for g in fused_res.report["horizontal"]["groups"] if g["applied"]]
    out["fused"] = None
    out["fuse_note"] = "; ".join(fused_res.report["horizontal"]["notes"]) or ""
    if applied:
        fused = tmp / f"{key.replace(' ', '_')}_fused.onnx"
        fused_res.save(fused)
        out["fused"] = fused
        out["fuse_note"] = f"{applied[0]['nodes_before']} -> {applied[0]['nodes_after']} nodes"
    return out


def _interleaved(members, variants, feed, seconds):
    """Latencies of [3 sessions one after another] + each variant, timed round-robin."""

    def run_one(i):
        if i == 0:
            for s in members:
                s.run(None, feed)
        else:
            variants[i - 1][1].run(None, feed)

    sessions = [None] + [v[1] for v in variants]
    return time_interleaved(sessions, [feed] * len(sessions), runs=10_000, warmup=10, block=10, duration=seconds, io_runner=run_one)


def latency_rows(built: dict, batch: int, threads: int, seconds: float) -> list[list]:
    if built["feed"] is not None:
        feed = built["feed"]
        batch = int(next(iter(feed.values())).shape[0])
    else:
        x = np.load(TEST)["image"]
        reps = int(np.ceil(batch / len(x)))
        feed = {"image": np.ascontiguousarray(np.concatenate([x] * reps)[:batch])}
    members = [create_session(p, threads=threads) for p in built["members"]]
    variants = [("merged, sequential", create_session(built["merged"], threads=threads, sequential=True))]
    if built["fused"] is not None:
        variants.append(("--fuse-members", create_session(built["fused"], threads=threads)))
    parallel = [("merged, parallel", create_session(built["merged"], threads=threads, inter_threads=2, sequential=False))]
    # the parallel executor's inter-op threads keep spinning after a run and would slow down
    # whatever is timed next, so it gets its own round-robin against the 3 sessions
    lat = _interleaved(members, variants, feed, seconds * 2 / 3)
    lat_par = _interleaved(members, parallel, feed, seconds / 3)
    base = lat[0]
    rows = [["3 sessions (sum)", threads, batch, float(np.median(base) * 1e3), 1.0, "", len(base)]]
    for (name, _), lt, ref in [(v, lt, base) for v, lt in zip(variants, lat[1:], strict=True)] + [(parallel[0], lat_par[1], lat_par[0])]:
        sp = speedup(lt, ref)  # median(variant) / median(3 sessions): the latency ratio
        rows.append([name, threads, batch, float(np.median(lt) * 1e3), sp.ratio, f"[{sp.low:.2f}, {sp.high:.2f}]", len(lt)])
    return rows


def accuracy_rows() -> list[list]:
    paths = [MODELS / "digits_mlp.onnx", MODELS / "digits_cnn.onnx", MODELS / "digits_resnet.onnx"]
    rows = []
    first = None
    for label, kw in [
        ("mean", {"fusion": "mean"}),
        ("mean --softmax", {"fusion": "mean", "softmax": True}),
        ("vote", {"fusion": "vote"}),
        ("weighted --fit calib", {"fusion": "weighted", "fit": CALIB}),
        ("stack --fit calib (logistic)", {"fusion": "stack", "fit": CALIB}),
        ("stack --fit calib (ridge)", {"fusion": "stack", "fit": CALIB, "head": "ridge"}),
    ]:
        res = ensemble(paths, data=TEST, **kw)
        acc = res.report["accuracy"]
        if first is None:
            first = acc
            rows += [[name, acc_, ""] for name, acc_ in acc["members"].items()]
        worst = max((o.get("rel_l2", 0.0) for o in res.report["parity"]["fused"]), default=0.0)
        rows.append([label, acc["ensemble"], f"{worst:.1e}"])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default=f"1,{os.cpu_count() or 1}", help="intra-op thread counts to measure (comma-separated; default 1 and one per core)")
    ap.add_argument("--batches", default="1,64", help="batch sizes (comma-separated)")
    ap.add_argument("--seconds", type=float, default=5.0, help="timing budget per member set and batch size")
    ap.add_argument(
        "--extra", action="append", default=[], metavar="MODEL:D1,D2,...", help="also time 3 perturbed copies of MODEL on one input of this shape (repeatable)"
    )
    ap.add_argument("--skip-digits", action="store_true", help="only the --extra models (no digits member sets, no accuracy table)")
    args = ap.parse_args(argv)
    extras = [parse_extra(e) for e in args.extra]
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    t0 = time.perf_counter()
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}, CPU ({os.cpu_count()} cores), intra-op threads {args.threads}, parallel executor inter-op threads 2")
    with tempfile.TemporaryDirectory(prefix="onnxopt-ens-bench-") as tmp:
        tmp = Path(tmp)
        sets = member_sets(tmp, extras, digits=not args.skip_digits)
        shapes = {f"{p.stem} same-arch": dims for p, dims in extras}
        built = {k: build(tmp, k, v, shapes.get(k)) for k, v in sets.items()}
        print("\n## Latency (median ms per call; ratio = merged / 3 sessions, < 1 is faster; 95% CI)")
        for key, b in built.items():
            rows = []
            for t in threads:
                for batch in batches if b["feed"] is None else batches[:1]:
                    rows += latency_rows(b, batch, t, args.seconds)
            print(f"\n### {key}" + (f" (--fuse-members: {b['fuse_note']})" if b["fuse_note"] else ""))
            print(table(["variant", "threads", "batch", "median ms", "ratio", "ratio CI", "runs"], rows))
        print("\n## File sizes")
        rows = []
        for key, b in built.items():
            merged = b["merged"].stat().st_size
            fused = b["fused"].stat().st_size if b["fused"] else None
            rows.append(
                [
                    key,
                    human_bytes(b["member_bytes"]),
                    human_bytes(merged),
                    merged / b["member_bytes"],
                    human_bytes(fused) if fused else "-",
                    (fused / b["member_bytes"]) if fused else None,
                ]
            )
        print(table(["member set", "3 member files", "merged", "merged/sum", "fused", "fused/sum"], rows))
    if not args.skip_digits:
        print("\n## Accuracy on digits_test.npz (400 samples; fits on digits_calib.npz)")
        print(table(["model", "top1 %", "parity rel-L2"], accuracy_rows()))
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
