"""Pruning benchmark: prints tables of measured figures (never run by the tests).

    python benchmarks/prune.py                 # everything (~5-10 min on 2 cores)
    python benchmarks/prune.py --quick         # digits only
    python benchmarks/prune.py --light vgg19,resnet50 --runs 10

1. Bundled digits models, 50% of the channels removed (L1 importance, align 1): parameters,
   FLOPs, latency ratio vs the input (interleaved), top-1 on digits_test without and with
   reconstruction (calibration: digits_calib); magnitude pruning of the MLP (zip size).
2. The architecture models in the onnx wheel (weights are uniform fills: no accuracy),
   simplified, then 50% channels: valid (verified by the pipeline) or groups left intact.
3. Accuracy budget on digits_resnet: --max-accuracy-drop 1 with blocks and with channels.
4. The issue's targets, each PASS/FAIL with the figure behind it.

Latency: medians of interleaved runs with ONNX Runtime intra-op threads = --threads
(default 1: stable on a shared machine), batch 32 for digits, 1 for the 224x224 models.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxopt.errors import NothingToDoError, OnnxoptError  # noqa: E402
from onnxopt.prune.api import prune  # noqa: E402
from onnxopt.render import table  # noqa: E402

MODELS = ROOT / "models"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_NAMES = [
    "resnet50",
    "vgg19",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "squeezenet",
    "shufflenet",
    "bvlc_alexnet",
    "zfnet512",
]
CALIB, TEST = MODELS / "digits_calib.npz", MODELS / "digits_test.npz"


def _ratio(a, b):
    return f"{a / b:.3f}" if b else "-"


def digits(args) -> dict:
    rows, facts = [], {}
    for name in ("digits_mlp", "digits_cnn", "digits_resnet"):
        src = MODELS / f"{name}.onnx"
        plain = prune(
            src,
            method="channels",
            ratio=0.5,
            align=1,
            eval_data=TEST,
            timing_runs=args.runs,
            timing_threads=args.threads,
        )
        fitted = prune(
            src,
            method="channels",
            ratio=0.5,
            align=1,
            calibration=CALIB,
            eval_data=TEST,
            timing_runs=args.runs,
            timing_threads=args.threads,
        )
        b, a = plain.report["figures"]["before"], plain.report["figures"]["after"]
        base = plain.report["metric"]["reference"]
        acc0, acc1 = plain.report["metric"]["score"], fitted.report["metric"]["score"]
        lat = fitted.report["latency"]
        rows.append(
            [
                name,
                b["params"],
                _ratio(a["params"], b["params"]),
                _ratio(a["flops"], b["flops"]),
                f"{lat['speedup']:.2f}x [{lat['ci95'][0]:.2f},{lat['ci95'][1]:.2f}]",
                f"{base:.2f}",
                f"{acc0:.2f}",
                f"{acc1:.2f}",
            ]
        )
        facts[name] = {"base": base, "plain": acc0, "fitted": acc1}
    print("\n## 1. digits models, 50% of the channels removed (L1 importance, align 1)")
    print(
        table(
            [
                "model",
                "params",
                "params x",
                "FLOPs x",
                "speedup (batch 32)",
                "top1 input",
                "top1 pruned",
                "top1 +reconstruction",
            ],
            rows,
        )
    )
    mag = prune(
        MODELS / "digits_mlp.onnx",
        method="magnitude",
        sparsity=0.8,
        eval_data=TEST,
        timing_runs=args.runs,
        timing_threads=args.threads,
    )
    b, a = mag.report["figures"]["before"], mag.report["figures"]["after"]
    m = mag.report["metric"]
    print(
        f"\nmagnitude 0.8 (global, first/last layers kept) on digits_mlp: zip {b['zip_bytes']} -> {a['zip_bytes']} "
        f"bytes (x{a['zip_bytes'] / b['zip_bytes']:.3f}), top1 {m['reference']:.2f} -> {m['score']:.2f}, speedup "
        f"{mag.report['latency']['speedup']:.2f}x (zeros do not make dense kernels faster)"
    )
    return facts


def light(args) -> dict:
    from onnxopt.simplify.api import simplify

    rows, facts = [], {}
    for name in args.light:
        path = LIGHT / f"light_{name}.onnx"
        if not path.is_file():
            rows.append([name, "-", "-", "-", "-", "-", "-", "missing from the onnx wheel"])
            continue
        t0 = time.perf_counter()
        sim = simplify(path).model
        try:
            res = prune(
                sim,
                method="channels",
                ratio=0.5,
                timing_runs=args.light_runs,
                timing_threads=args.threads,
            )
        except NothingToDoError as exc:  # every group left intact, with the reason
            rows.append([name, "-", "-", "-", "-", "-", "-", f"left intact: {str(exc)[:90]}"])
            facts[name] = {"valid": True, "pruned": False}
            continue
        except OnnxoptError as exc:  # verification failed: a broken output
            rows.append([name, "-", "-", "-", "-", "-", "-", f"FAILED: {str(exc)[:90]}"])
            facts[name] = {"valid": False, "pruned": False}
            continue
        b, a = res.report["figures"]["before"], res.report["figures"]["after"]
        g = res.report["details"]["groups"]
        lat = res.report["latency"]
        reasons = sorted({r["reason"].split(" '")[0] for r in g["intact"]})
        rows.append(
            [
                name,
                b["params"],
                _ratio(a["params"], b["params"]),
                _ratio(a["flops"], b["flops"]),
                f"{lat['speedup']:.2f}x [{lat['ci95'][0]:.2f},{lat['ci95'][1]:.2f}]",
                len(g["pruned"]),
                len(g["intact"]),
                f"{time.perf_counter() - t0:.0f}s; intact: {'; '.join(reasons)[:80]}",
            ]
        )
        facts[name] = {
            "valid": bool(res.steps[0].verification["check"]["ort_loaded"]),
            "pruned": True,
            "speedup": lat["speedup"],
        }
    print("\n## 2. onnx wheel architecture models (simplified), 50% of the channels removed")
    print(
        table(
            [
                "model",
                "params",
                "params x",
                "FLOPs x",
                "speedup (batch 1)",
                "groups pruned",
                "left intact",
                "notes",
            ],
            rows,
        )
    )
    return facts


def budget(args) -> dict:
    src = MODELS / "digits_resnet.onnx"
    blocks = prune(
        src,
        method="blocks",
        eval_data=TEST,
        max_accuracy_drop=1.0,
        timing_runs=args.runs,
        timing_threads=args.threads,
    )
    channels = prune(
        src,
        method="channels",
        calibration=CALIB,
        eval_data=TEST,
        max_accuracy_drop=1.0,
        grid=[0.1, 0.2, 0.3, 0.4, 0.5],
        align=1,
        timing_runs=args.runs,
        timing_threads=args.threads,
    )
    print("\n## 3. digits_resnet within --max-accuracy-drop 1 (top1 on digits_test)")
    for label, res in (
        ("blocks removed", blocks),
        ("channel ratio (+reconstruction, align 1)", channels),
    ):
        s = res.report["search"]
        rows = [
            [
                p["value"],
                "-" if p["score"] is None else f"{p['score']:.2f}",
                "-" if p["drop"] is None else f"{p['drop']:.2f}",
                p["params"],
                p["flops"],
                "-" if p["speedup"] is None else f"{p['speedup']:.2f}x",
                p["within"] if not p["error"] else p["error"][:40],
            ]
            for p in s["curve"]
        ]
        print(f"\n{label}: chosen {s['chosen']} (input {s['reference_score']:.2f})")
        print(table(["value", "top1", "drop", "params", "FLOPs", "speedup", "within"], rows))
    return {
        "blocks": blocks.report["search"]["chosen"],
        "ratio": channels.report["search"]["chosen"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="digits only")
    ap.add_argument(
        "--light", default=",".join(LIGHT_NAMES), help="comma-separated onnx wheel models"
    )
    ap.add_argument("--runs", type=int, default=40, help="interleaved runs per digits model")
    ap.add_argument("--light-runs", type=int, default=10, help="interleaved runs per 224x224 model")
    ap.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime intra-op threads for timing"
    )
    args = ap.parse_args(argv)
    args.light = [n for n in args.light.split(",") if n]
    logging.basicConfig(level=logging.WARNING)
    t0 = time.perf_counter()
    d = digits(args)
    lf = {} if args.quick else light(args)
    bf = budget(args)
    print("\n## 4. targets")
    cnn = d["digits_cnn"]
    lost0, lost1 = cnn["base"] - cnn["plain"], cnn["base"] - cnn["fitted"]
    rows = [
        [
            "reconstruction recovers >= half of the loss at 50% (digits_cnn)",
            f"lost {lost0:.2f} -> {lost1:.2f} points",
            "PASS" if lost1 <= lost0 / 2 else "FAIL",
        ]
    ]
    rows.append(
        [
            "digits_resnet within 1 point: >= 1 block or >= 30% channels",
            f"{bf['blocks']} block(s); ratio {bf['ratio']}",
            "PASS" if (bf["blocks"] or 0) >= 1 or (bf["ratio"] or 0) >= 0.3 else "FAIL",
        ]
    )
    if lf:
        conv = {
            k: v["speedup"] for k, v in lf.items() if v.get("pruned") and k in ("vgg19", "resnet50")
        }
        if conv:
            best = max(conv, key=conv.get)
            rows.append(
                [
                    "50% channels -> >= 1.6x faster on a conv net",
                    ", ".join(f"{k} {v:.2f}x" for k, v in conv.items()),
                    "PASS" if conv[best] >= 1.6 else "FAIL",
                ]
            )
        rows.append(
            [
                "every onnx wheel model valid or left intact",
                f"{sum(v['valid'] for v in lf.values())}/{len(lf)} valid ({sum(v['pruned'] for v in lf.values())} pruned)",
                "PASS" if all(v["valid"] for v in lf.values()) else "FAIL",
            ]
        )
    print(table(["target", "measured", ""], rows))
    print(
        f"\ntotal {time.perf_counter() - t0:.0f} s; latency: intra-op threads {args.threads}, medians of interleaved "
        "runs, speedup = input / pruned with 95% bootstrap CI"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
