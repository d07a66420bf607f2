"""Are the budget search's emulated models the quantizer's builds?  On real models and data.

For each real model (``quantize_real.py``'s cases: the MiniLM-L3 encoder on docstring
sentences, PP-OCRv4 rec on rendered lines, magika on files of this disk) and each mode
(static QDQ per-tensor, dynamic), the budget search runs as ``quantize`` runs it (a 1-point
budget); every exclusion set it scores on an emulated model (``quantize.emulate``: the
ranking's units, the bisection's prefixes) is also built by ONNX Runtime's quantizer, and the
two models' outputs on one evaluation batch are compared.  Prints, per model and mode: sets
compared, the largest relative L2 between emulated and built outputs (0 = the same model),
and the seconds spent emulating vs building those sets.

Run: ``python benchmarks/emulate.py [--only minilm-l3,ppocr-rec,magika] [--n 120]`` (a few
minutes per model on 2 cores; needs ``realmodels.py``'s cache, fetched on first use).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quantize_real import _split, encoder_case, magika_case, ocr_case  # noqa: E402

from onnxopt.data import Dataset  # noqa: E402
from onnxopt.errors import OnnxoptError  # noqa: E402
from onnxopt.io import load_model  # noqa: E402
from onnxopt.quantize import engine  # noqa: E402
from onnxopt.quantize.candidates import dynamic_candidate, static_candidate  # noqa: E402
from onnxopt.render import table  # noqa: E402
from onnxopt.runtime import create_session  # noqa: E402

CASES = {"minilm-l3": encoder_case, "ppocr-rec": ocr_case, "magika": magika_case}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    b64 = b.astype(np.float64)
    return float(np.linalg.norm(a.astype(np.float64) - b64) / (np.linalg.norm(b64) or 1.0))


def compare(model, cal: Dataset, ev: Dataset, metric: str, mode: str, feed: dict) -> list:
    """One budget search with every emulated set also built; its row."""
    rows: list[tuple[float, float, float]] = []  # (emulate s, build s, rel-L2)
    real_emulator = engine.CandidateBuilder.emulator

    def checking(builder):
        emulate = real_emulator(builder)

        def both(excluded):
            t = time.perf_counter()
            emulated = emulate(excluded)
            te = time.perf_counter() - t
            t = time.perf_counter()
            built = builder.build(excluded)[0]
            tb = time.perf_counter() - t
            got, want = create_session(emulated).run(None, feed), create_session(built).run(None, feed)
            rows.append((te, tb, max(_rel(a, b) for a, b in zip(got, want, strict=True))))
            return emulated

        return both

    engine.CandidateBuilder.emulator = checking
    kw = dict(eval_data=ev, max_accuracy_drop=1.0, metric=metric)
    try:
        if mode == "dynamic":
            dynamic_candidate(model, **kw)
        else:
            static_candidate(model, calibration=cal, **kw)
        outcome = "met"
    except OnnxoptError as exc:
        outcome = str(exc).split(": ", 1)[-1]
    finally:
        engine.CandidateBuilder.emulator = real_emulator
    if not rows:
        return [mode, 0, "-", "-", "-", outcome]
    te, tb, rel = (np.array(c) for c in zip(*rows, strict=True))
    return [mode, len(rows), f"{rel.max():.1e}", f"{te.sum():.1f}", f"{tb.sum():.1f}", outcome]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(CASES))
    ap.add_argument("--n", type=int, default=120, help="samples per model (half calibration, half evaluation)")
    args = ap.parse_args()
    out = []
    for name in args.only.split(","):
        case = CASES[name](args.n)
        if case is None:
            print(f"{name}: not available (see realmodels.py)")
            continue
        _, path, arrays, metric = case
        cal_a, ev_a = _split(arrays, args.n // 2)
        model = load_model(path)
        cal, ev = Dataset("<cal>", arrays=cal_a), Dataset("<eval>", arrays=ev_a)
        feed = {k: v[:1] for k, v in ev_a.items()}
        for mode in ("static", "dynamic"):
            out.append([name, *compare(model, cal, ev, metric or "cosine", mode, feed)])
    print(table(["model", "mode", "sets", "max rel-L2 emulated vs built", "emulate s", "build s", "search"], out))


if __name__ == "__main__":
    main()
