"""The demo's steps, one function per capability, each calling the public API as a user would.

Figures are measured here, on the bundled test split: nothing is hard-coded.  A step whose
result is an honest "no" (e.g. quantize finds no INT8 model faster than FP32: exit 3 in
the CLI) is shown as such, not as a failure.
"""

from __future__ import annotations

from pathlib import Path

import onnxopt

from ..data import load_data
from ..errors import OnnxoptError
from ..io import load_model
from ..metrics import score
from ..runtime import run_dataset

__all__ = ["run_all", "accuracy"]


def accuracy(model, data_path: Path) -> float:
    """Top-1 accuracy (percent) of a model's first output on a labelled DATA file."""
    m = load_model(model)
    ds = load_data(data_path, m)
    out = run_dataset(m, ds)
    return score("top1", out[:1], out[:1], ds.labels)


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1024:.0f} KB"


def foundation(dlog, mdir: Path, out: Path, names) -> dict:
    test = mdir / "digits_test.npz"
    simplified = {}
    for name in names:
        src = mdir / f"{name}.onnx"

        def inspect_step(src=src):
            rep = onnxopt.inspect(src).report
            return {"model": src.name, "result": f"{rep['parameters']['total']:,} params, {rep['flops']:,} FLOPs, {sum(rep['ops'].values())} nodes"}

        def simplify_step(src=src, name=name):
            res = onnxopt.simplify(src, data=test)
            dst = res.save(out / f"{name}.sim.onnx", guard=[src])
            simplified[name] = dst
            b, a = res.report["before"], res.report["after"]
            return {"model": src.name, "result": f"nodes {b['nodes']} -> {a['nodes']}, wrote {dst.name}"}

        def verify_step(src=src, name=name):
            comp = onnxopt.verify(src, simplified[name], data=test)
            o = comp.outputs[0]
            return {
                "model": src.name,
                "result": (
                    f"{'ok' if comp else 'MISMATCH'}: rel-L2 {o.rel_l2:.1e}, top-1 agreement {100 * (o.top1_agreement or 0):.1f}%, "
                    f"accuracy {accuracy(src, test):.2f}%"
                ),
            }

        dlog.step(f"inspect {name}", inspect_step)
        dlog.step(f"simplify {name}", simplify_step)
        dlog.step(f"verify {name}", verify_step)
    return simplified


def quantize_step(dlog, mdir: Path, out: Path, runs: int) -> None:
    src, calib, test = mdir / "digits_mlp.onnx", mdir / "digits_calib.npz", mdir / "digits_test.npz"

    def step():
        try:
            res = onnxopt.quantize(src, mode="auto", calibration=calib, eval_data=test, max_accuracy_drop=1.0, batch=64, timing_runs=runs)
        except OnnxoptError as exc:
            if exc.exit_code == 3:  # measured and refused: that is the tool being honest
                return {"model": src.name, "result": f"no INT8 model written: {exc.message}"}
            raise
        dst = res.save(out / "digits_mlp.int8.onnx", guard=[src])
        rows = []
        for c in res.report["candidates"]:
            sp = c.get("speed") or {}
            rows.append(f"{c['label']:28s} {c['status']:10s} drop {c['drop'] if c['drop'] is not None else '-'}  speedup {sp.get('ratio', float('nan')):.2f}x")
        dlog.sections.append(("quantize digits_mlp (auto, budget 1 point top-1, batch 64)", "\n".join(rows)))
        return {
            "model": src.name,
            "result": f"{res.report['chosen']}: accuracy {accuracy(src, test):.2f}% -> {accuracy(dst, test):.2f}%, {_size(src)} -> {_size(dst)}",
        }

    dlog.step("quantize digits_mlp", step)


def prune_step(dlog, mdir: Path, out: Path, runs: int) -> None:
    src, calib, test = mdir / "digits_resnet.onnx", mdir / "digits_calib.npz", mdir / "digits_test.npz"

    def blocks():
        res = onnxopt.prune(src, method="blocks", eval_data=test, max_accuracy_drop=1.0, timing_runs=runs)
        dst = res.save(out / "digits_resnet.blocks.onnx", guard=[src])
        return {
            "model": src.name,
            "result": (
                f"residual blocks trimmed within 1 point: accuracy {accuracy(src, test):.2f}% -> {accuracy(dst, test):.2f}%, "
                f"params {res.report['before']['params']:,} -> {res.report['after']['params']:,}"
            ),
        }

    def channels():
        res = onnxopt.prune(src, method="channels", ratio=0.3, calibration=calib, eval_data=test, timing_runs=runs)
        dst = res.save(out / "digits_resnet.channels.onnx", guard=[src])
        return {
            "model": src.name,
            "result": (
                f"30% channels + least-squares reconstruction: accuracy {accuracy(src, test):.2f}% -> "
                f"{accuracy(dst, test):.2f}%, params {res.report['before']['params']:,} -> {res.report['after']['params']:,}"
            ),
        }

    dlog.step("prune blocks digits_resnet", blocks)
    dlog.step("prune channels digits_resnet", channels)


def ensemble_step(dlog, mdir: Path, out: Path, names) -> None:
    members = [mdir / f"{n}.onnx" for n in names]
    calib, test = mdir / "digits_calib.npz", mdir / "digits_test.npz"
    lines = []

    def make(**kw):
        def step():
            res = onnxopt.ensemble(members, data=test, **kw)
            fusion = res.report["fusion"]["kind"]
            dst = res.save(out / f"digits_{fusion}.onnx", guard=members)
            acc = res.report["accuracy"]
            if not lines:
                lines.extend(f"member {k:22s} {v:.2f}%" for k, v in acc["members"].items())
            lines.append(f"ensemble {fusion:20s} {acc['ensemble']:.2f}%")
            rec = res.report.get("recipe")
            how = f"{fusion} (recipe {rec['name']}: {' > '.join(rec['steps'])} verified)" if rec else fusion
            return {"model": " + ".join(names), "result": f"{how}: {acc['ensemble']:.2f}% (best member {acc['best_member']:.2f}%), wrote {dst.name}"}

        return step

    dlog.step("ensemble vote", make(fusion="vote"))
    # the bundled recipe: stacking head fitted on the calibration split, then simplify
    dlog.step("ensemble stack", make(recipe="ensemble-stack", fit=calib))
    if lines:
        dlog.sections.append(("ensemble accuracy on digits_test", "\n".join(lines)))


def adapt_step(dlog, mdir: Path, out: Path) -> None:
    src, calib, test = mdir / "digits_cnn04.onnx", mdir / "digits_calib.npz", mdir / "digits_test.npz"

    def step():
        res = onnxopt.adapt(src, calib, eval_data=test)
        res.save(out / "digits_cnn04.adapted.onnx", guard=[src])
        ev = res.report["evaluation"]
        return {
            "model": src.name,
            "result": f"0-4 model adapted to 10 digits: accuracy on all ten {ev['original']['accuracy']:.2f}% -> {ev['adapted']['accuracy']:.2f}%",
        }

    dlog.step("adapt digits_cnn04", step)


def optimize_step(dlog, mdir: Path, out: Path, names, runs: int) -> dict:
    from ..optimize.select import render_decision_table

    calib, test = mdir / "digits_calib.npz", mdir / "digits_test.npz"
    written = {}
    for name in names:
        src = mdir / f"{name}.onnx"

        def step(src=src, name=name):
            # one intra-op thread: on a small shared machine, thread-pool stalls otherwise
            # dominate these sub-millisecond models and make the choice noisy
            res = onnxopt.optimize(src, calibration=calib, eval_data=test, max_accuracy_drop=1.0, runs=runs, threads=1)
            dst = res.save(out / f"{name}.opt.onnx", guard=[src])
            written[name] = dst
            dlog.sections.append((f"optimize {name} (cpu, budget 1 point top-1)", render_decision_table(res.report)))
            return {
                "model": src.name,
                "result": (
                    f"chose {res.report['decision']['chosen']}: accuracy {accuracy(src, test):.2f}% -> {accuracy(dst, test):.2f}%, {_size(src)} -> {_size(dst)}"
                ),
            }

        dlog.step(f"optimize {name}", step)
    return written


def bench_step(dlog, mdir: Path, names, optimized: dict, runs: int) -> None:
    def step():
        texts, ratios = [], []
        for n in names:
            if n not in optimized:
                continue
            res = onnxopt.bench(
                [mdir / f"{n}.onnx", optimized[n]], data=mdir / "digits_test.npz", runs=runs, names=[n, f"{n}.opt"], batches=[32], throughput=False, threads=1
            )
            texts.append(res.render("table"))
            ratios.append(f"{n} {res.report['results'][1]['speedup']['ratio']:.2f}x" if _has_speedup(res.report) else n)
        dlog.sections.append(("bench: each input vs its optimized variant (batch 32, interleaved)", "\n\n".join(texts)))
        return {"model": f"{len(texts)} pairs", "result": "speedup of the optimized model: " + ", ".join(ratios)}

    dlog.step("bench", step)


def _has_speedup(report: dict) -> bool:
    try:
        return report["results"][1]["speedup"]["ratio"] is not None
    except (KeyError, IndexError, TypeError):
        return False


def run_all(dlog, mdir: Path, out: Path, *, quick: bool = False) -> None:
    from . import DEMO_MODELS

    runs = 10 if quick else 30
    foundation(dlog, mdir, out, DEMO_MODELS)
    quantize_step(dlog, mdir, out, runs)
    prune_step(dlog, mdir, out, runs)
    ensemble_step(dlog, mdir, out, DEMO_MODELS)
    adapt_step(dlog, mdir, out)
    optimized = optimize_step(dlog, mdir, out, DEMO_MODELS, runs)
    bench_step(dlog, mdir, DEMO_MODELS, optimized, 50 if quick else 200)
