"""The demo's steps, one function per capability, each calling the public API."""

from __future__ import annotations

from pathlib import Path

from ..data import load_data
from ..io import load_model
from ..metrics import score
from ..runtime import run_dataset

__all__ = ["run_all", "accuracy"]


def accuracy(model, data_path: Path) -> float:
    """Top-1 accuracy (percent) of a model on a labelled DATA file."""
    m = load_model(model)
    ds = load_data(data_path, m)
    out = run_dataset(m, ds)
    return score("top1", out[:1], out[:1], ds.labels)


def foundation(dlog, mdir: Path, out: Path, names) -> dict:
    import onnxopt

    test = mdir / "digits_test.npz"
    simplified = {}
    for name in names:
        src = mdir / f"{name}.onnx"

        def inspect_step(src=src):
            rep = onnxopt.inspect(src).report
            return {"model": src.name, "result": f"{rep['parameters']['total']:,} params, {rep['flops']:,} FLOPs, ops {sum(rep['ops'].values())}"}

        def simplify_step(src=src, name=name):
            res = onnxopt.simplify(src, data=test)
            dst = res.save(out / f"{name}.sim.onnx", guard=[src])
            simplified[name] = dst
            b, a = res.report["before"], res.report["after"]
            return {"model": src.name, "result": f"nodes {b['nodes']}->{a['nodes']}, wrote {dst.name}"}

        def verify_step(src=src, name=name):
            comp = onnxopt.verify(src, simplified[name], data=test)
            o = comp.outputs[0]
            return {"model": src.name, "result": f"{'ok' if comp else 'MISMATCH'}: rel-L2 {o.rel_l2:.1e}, top-1 agreement {100 * (o.top1_agreement or 0):.1f}%, accuracy {accuracy(src, test):.2f}%"}

        dlog.step(f"inspect {name}", inspect_step)
        dlog.step(f"simplify {name}", simplify_step)
        dlog.step(f"verify {name}", verify_step)
    return simplified


def run_all(dlog, mdir: Path, out: Path, *, quick: bool = False) -> None:
    from . import DEMO_MODELS

    foundation(dlog, mdir, out, DEMO_MODELS)

