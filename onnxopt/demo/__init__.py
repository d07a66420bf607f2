"""``onnxopt demo``: the main job on the bundled digits models, step by step.

Each step calls the public API exactly as a user would and records one summary row; the
outputs land in ``out_dir``.  A step that fails is reported (and makes the demo exit
non-zero) instead of hiding the problem.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.result import Result
from ..errors import InputError

__all__ = ["find_models_dir", "run_demo", "DEMO_MODELS"]

log = logging.getLogger(__name__)

DEMO_MODELS = ("digits_mlp", "digits_cnn", "digits_resnet")


def find_models_dir(models_dir=None) -> Path:
    """The bundled models: ``models_dir``, the package's copy (wheel) or the repo's ``models/``."""
    here = Path(__file__).resolve().parent.parent  # the onnxopt package
    cands = [Path(models_dir)] if models_dir else [here / "models", here.parent / "models"]
    for c in cands:
        if (c / "digits_test.npz").is_file() and (c / "digits_mlp.onnx").is_file():
            return c
    raise InputError(f"bundled models not found (looked in {', '.join(str(c) for c in cands)}); pass --models DIR")


@dataclass
class DemoLog:
    rows: list = field(default_factory=list)
    sections: list = field(default_factory=list)
    failures: list = field(default_factory=list)

    def step(self, name: str, fn: Callable[[], dict | None]):
        t0 = time.perf_counter()
        try:
            info = fn() or {}
            self.rows.append({"step": name, "ok": True, "seconds": round(time.perf_counter() - t0, 2), **info})
        except Exception as exc:  # the demo reports every failure and keeps going
            log.debug("demo step %s failed", name, exc_info=True)
            self.failures.append(f"{name}: {exc}")
            self.rows.append({"step": name, "ok": False, "seconds": round(time.perf_counter() - t0, 2), "result": f"FAILED: {exc}"})


def run_demo(models_dir=None, out_dir="onnxopt-demo", *, quick: bool = False) -> Result:
    """Run every capability on the bundled models; returns a Result whose report has
    ``rows`` (one per step), ``sections`` (titled text blocks) and ``failures``."""
    from .steps import run_all

    mdir = find_models_dir(models_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dlog = DemoLog()
    run_all(dlog, mdir, out, quick=quick)
    report = {"command": "demo", "models": str(mdir), "out": str(out), "rows": dlog.rows, "sections": dlog.sections, "failures": dlog.failures}
    return Result(None, report, ok=not dlog.failures)
