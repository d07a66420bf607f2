"""Foundation done-when check: inspect, simplify, verify and ``run passes/simplify.toml`` on
every bundled model and every architecture model shipped in the onnx wheel.

Each command runs through the real CLI (in-process, ``--json``); every written model is
re-read from disk and checked: ``onnx.checker`` (full), onnxopt provenance present in
``metadata_props['onnxopt']``, and ``onnxopt verify`` against the input within 1e-4
relative L2.  Bundled models are verified on ``models/digits_test.npz``, architecture
models on synthesized inputs (seed 0).

    python benchmarks/foundation.py [--out DIR] [--only NAME ...]

Prints one row per model: nodes before/after, parameters before/after (Constant and
folded ConstantOfShape weights included after), the simplify engine, the worst relative
L2 of simplify and of the recipe run (as ``onnxopt verify`` measures it, ONNX Runtime's
graph optimizations on) and of simplify with ORT's optimizations off, and wall seconds of
each command.

The architecture models' weights are all 0.02 (their outputs are an almost uniform softmax),
so each is also run with seeded random weights (``+rand`` rows) for a meaningful numerical
comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import onnx
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxopt.cli.main import cli  # noqa: E402
from onnxopt.core.provenance import read_provenance  # noqa: E402
from onnxopt.render import table  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
TEST_DATA = ROOT / "models" / "digits_test.npz"
LIMIT = 1e-4


def randomized(src: Path, dst: Path, seed: int = 0) -> Path:
    """The architecture model with its ConstantOfShape weights (all 0.02 in the onnx wheel,
    which makes every output an almost uniform softmax) replaced by seeded random
    initializers: N(0, 1/fan_in) for weights, U(0.5, 1.5) for BatchNormalization scale and
    variance, so that the numerical verification has something to compare."""
    import numpy as np
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in m.graph.initializer}
    positive = {n.input[i] for n in m.graph.node if n.op_type == "BatchNormalization" for i in (1, 4) if len(n.input) > i}
    keep = []
    for n in m.graph.node:
        if n.op_type == "ConstantOfShape" and n.input and n.input[0] in inits:
            shape = tuple(int(d) for d in numpy_helper.to_array(inits[n.input[0]]).reshape(-1))
            if n.output[0] in positive:
                value = rng.uniform(0.5, 1.5, size=shape)
            else:
                fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else max(shape[0], 1) if shape else 1
                value = rng.standard_normal(shape) / np.sqrt(fan_in)
            t = numpy_helper.from_array(value.astype(np.float32), n.output[0])
            m.graph.initializer.append(t)
            if m.ir_version < 4:
                m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            keep.append(n)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    read = {x for n in m.graph.node for x in n.input}
    shapes = [t for t in m.graph.initializer if t.name not in read]  # the ConstantOfShape shapes
    gone = {t.name for t in shapes}
    kept = [t for t in m.graph.initializer if t.name not in gone]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    inputs = [i for i in m.graph.input if i.name not in gone]
    del m.graph.input[:]
    m.graph.input.extend(inputs)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return dst


def models(work: Path, with_random: bool = True) -> list[tuple[str, Path, Path | None]]:
    bundled = [(p.stem, p, TEST_DATA) for p in sorted((ROOT / "models").glob("*.onnx"))]
    light = [(p.stem, p, None) for p in sorted(LIGHT.glob("light_*.onnx"))]
    rand = []
    if with_random:
        folder = work / "random-weights"
        folder.mkdir(parents=True, exist_ok=True)
        rand = [(f"{p.stem}+rand", randomized(p, folder / f"{p.stem}+rand.onnx"), None) for p in sorted(LIGHT.glob("light_*.onnx"))]
    return bundled + light + rand


def cli_json(runner: CliRunner, *args) -> tuple[dict | None, float, str]:
    t0 = time.perf_counter()
    res = runner.invoke(cli, ["-q", *map(str, args), "--json"], catch_exceptions=True)
    seconds = time.perf_counter() - t0
    if res.exit_code != 0:
        err = (res.stderr or "").strip().splitlines()
        return None, seconds, f"exit {res.exit_code}: {err[-1] if err else res.exception!r}"
    return json.loads(res.stdout), seconds, ""


def check_written(path: Path, runner: CliRunner, src: Path, data: Path | None) -> tuple[float | None, str]:
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    if read_provenance(m) is None:
        return None, "no provenance"
    args = ["verify", src, path] + (["--data", data] if data else [])
    comp, _, err = cli_json(runner, *args)
    if comp is None:
        return None, f"verify: {err}"
    return max(o["rel_l2"] for o in comp["outputs"]), ""


def rel_l2_unoptimized(src: Path, out: Path, data: Path | None) -> float:
    """Worst relative L2 between the two models with ONNX Runtime's own graph optimizations
    off: ORT fuses BatchNormalization into Conv (and folds constants) at session creation,
    which makes the default comparison bit-exact; this shows the transform's own rounding."""
    import numpy as np

    from onnxopt.data import dataset_for
    from onnxopt.io import load_model
    from onnxopt.runtime import create_session, run_dataset

    ds = dataset_for(load_model(src), data)
    a = run_dataset(create_session(src, optimization_level="disable"), ds, limit=64)
    b = run_dataset(create_session(out, optimization_level="disable"), ds, limit=64)
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        x, y = x.astype(np.float64), y.astype(np.float64)
        worst = max(worst, float(np.linalg.norm(y - x) / max(np.linalg.norm(x), 1e-300)))
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="keep the written models here (default: a temporary folder)")
    ap.add_argument("--only", nargs="*", default=None, help="model names (file stems) to run")
    ap.add_argument("--no-random", action="store_true", help="skip the architecture models with random weights")
    args = ap.parse_args(argv)
    runner = CliRunner()
    out = args.out or Path(tempfile.mkdtemp(prefix="onnxopt-foundation-"))
    out.mkdir(parents=True, exist_ok=True)
    rows, failures = [], []
    for name, src, data in models(out, not args.no_random):
        if args.only and name not in args.only:
            continue
        data_args = ["--data", data] if data else []
        info, t_inspect, err = cli_json(runner, "inspect", src)
        if info is None:
            failures.append(f"{name}: inspect {err}")
            continue
        sim_path, run_path = out / f"{name}.sim.onnx", out / f"{name}.run.onnx"
        sim, t_sim, err = cli_json(runner, "simplify", src, "-o", sim_path, *data_args)
        if sim is None:
            failures.append(f"{name}: simplify {err}")
            continue
        rel_sim, err = check_written(sim_path, runner, src, data)
        if err:
            failures.append(f"{name}: simplify output {err}")
        eval_args = ["--eval", data] if data else []
        run, t_run, err = cli_json(runner, "run", ROOT / "passes" / "simplify.toml", src, "-o", run_path, *eval_args)
        rel_run = None
        if run is None:
            failures.append(f"{name}: run {err}")
        else:
            rel_run, err = check_written(run_path, runner, src, data)
            if err:
                failures.append(f"{name}: run output {err}")
        rel_raw = rel_l2_unoptimized(src, sim_path, data)
        for label, rel in (("simplify", rel_sim), ("run", rel_run), ("simplify (ORT optimizations off)", rel_raw)):
            if rel is not None and rel > LIMIT:
                failures.append(f"{name}: {label} moved outputs by {rel:.3g} relative L2 (limit {LIMIT:g})")
        step = sim["steps"][0]
        rows.append([
            name,
            info["nodes"],
            sim["after"]["nodes"],
            sim["before"]["params"],
            sim["after"]["params"],
            step["counts"].get("engine"),
            rel_sim,
            rel_run,
            rel_raw,
            round(t_inspect, 2),
            round(t_sim, 2),
            round(t_run, 2),
        ])
        print(f"done {name}", file=sys.stderr, flush=True)
    print(
        table(
            [
                "model",
                "nodes",
                "nodes after",
                "params",
                "params after",
                "engine",
                "rel-L2 simplify",
                "rel-L2 run",
                "rel-L2 ORT-opt-off",
                "s inspect",
                "s simplify",
                "s run",
            ],
            rows,
        )
    )
    print(f"\n{len(rows)} models; outputs in {out}")
    for f in failures:
        print(f"FAIL {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
