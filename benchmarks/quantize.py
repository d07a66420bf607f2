"""Benchmark of ``onnxopt.quantize``: speed, accuracy, size, time and calibration memory.

Models: the bundled digits models (``models/``), architecture models from the onnx wheel
(``onnx/backend/test/data/light``, simplified first; weights are constants, so accuracy is
agreement/cosine against FP32 on synthesized inputs), and a BERT-like encoder built here
from a ``transformers`` config with random weights (no download), exported with
``torch.onnx``; it is measured as exported and after the ``transformer-fusion`` pass.

For each model, ``quantize(mode="auto", allow_slower=True)`` builds every candidate
(dynamic, static per-tensor, static per-channel), checks validity (checker + ORT session +
a run), fits it to the budget (1 point of the default metric on the eval data) and times
all of them against FP32 interleaved (one intra-op thread by default: on a shared machine
a thread pool whose threads get descheduled stalls for milliseconds, which inflated the
FP32 CNN's median ~8x in our runs); the table shows each candidate's status, metric drop,
speed ratio ``median(FP32) / median(INT8)`` with its 95% CI, size ratio and build seconds,
and what ``auto`` would do (the fastest >= 1.0x within budget, else exit 3).

Calibration memory: peak RSS (``VmHWM``, reset once the model and DATA are loaded) of a
subprocess that runs ``onnxopt.quantize.api.calibrate`` over a folder of .npz batches
holding 16 vs 512 samples (streamed: one batch in memory).
With ``--ort-baseline`` the same for ONNX Runtime's own calibrator
(``quantize_static``), which keeps every batch's outputs.

The BERT-like model needs ``transformers`` (``pip install -e '.[bench]'``) and ``torch``
(``pip install -e '.[models]'``) for the export; without them it is skipped with a message.
Run: ``python benchmarks/quantize.py`` (about 8 minutes on 2 busy cores);
``--quick`` for digits only; ``--real`` for real models on real data, side by side with ONNX
Runtime's ``quantize_static`` / ``quantize_dynamic`` defaults (``quantize_real.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from onnxopt.data import Dataset, load_data  # noqa: E402
from onnxopt.quantize.api import quantize  # noqa: E402
from onnxopt.render import table  # noqa: E402
from onnxopt.verify import check_model  # noqa: E402

MODELS = ROOT / "models"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def bert_like(path: Path, *, hidden: int = 256, layers: int = 4, heads: int = 4, vocab: int = 2000, seq: int = 128) -> Path:
    """A BERT encoder with random weights from a transformers config, exported by torch."""
    import torch
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=2 * seq,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    bert = BertModel(cfg).eval()

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            o = self.m(input_ids=input_ids, attention_mask=attention_mask)
            return o.last_hidden_state, o.pooler_output

    ids = torch.randint(0, vocab, (2, seq))
    dyn = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "seq"},
        "last_hidden_state": {0: "batch", 1: "seq"},
        "pooler_output": {0: "batch"},
    }
    torch.onnx.export(
        Encoder(bert),
        (ids, torch.ones_like(ids)),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state", "pooler_output"],
        dynamic_axes=dyn,
        opset_version=17,
        dynamo=False,
    )
    return path


def bert_data(n: int, seq: int = 128, vocab: int = 2000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.ones((n, seq), np.int64)
    mask[: n // 2, seq * 3 // 4 :] = 0  # half the samples padded
    return {"input_ids": rng.integers(0, vocab, (n, seq)).astype(np.int64), "attention_mask": mask}


def image_data(model: onnx.ModelProto, n: int, seed: int = 0) -> dict:
    inp = model.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    return {inp.name: rng.standard_normal([n] + dims[1:]).astype(np.float32)}


def digits_case(name: str):
    m = onnx.load(str(MODELS / f"{name}.onnx"))
    return name, m, load_data(MODELS / "digits_calib.npz"), load_data(MODELS / "digits_test.npz"), 64, None


def light_case(name: str, tmp: Path):
    from onnxopt.simplify.api import simplify

    m = simplify(LIGHT / f"light_{name}.onnx").model
    cal = Dataset(f"synth[{name}]", arrays=image_data(m, 8, seed=1))
    ev = Dataset(f"synth[{name}]", arrays=image_data(m, 8, seed=2))
    return name, m, cal, ev, 1, "cosine"  # constant weights: argmax ties make top-1 meaningless


def bert_cases(tmp: Path, fusion: bool = True):
    from onnxopt.quantize.transformer import fuse_transformer
    from onnxopt.simplify.api import simplify

    path = bert_like(tmp / "bert.onnx")
    cal = Dataset("bert-random", arrays=bert_data(32, seed=1))
    ev = Dataset("bert-random", arrays=bert_data(32, seed=2))
    m = simplify(str(path), data=Dataset("bert-random", arrays=bert_data(4))).model
    onnx.save(m, str(tmp / "bert.sim.onnx"))
    out = [("bert-like", m, cal, ev, 8, None)]
    if fusion:
        fused, stats, _ = fuse_transformer(m, num_heads=4, hidden_size=256)
        onnx.save(fused, str(tmp / "bert.fused.onnx"))
        out.append((f"bert-like+fusion ({sum(stats.values())} ops fused)", fused, cal, ev, 8, None))
    return out


def auto_decision(rep: dict) -> str:
    """What ``quantize`` without ``--allow-slower`` does: with a candidate >= 1.0x within
    budget it makes the same choice as here (``rep["chosen"]``), else it exits 3."""
    fast = [c for c in rep["candidates"] if c.get("speed") and c["within_budget"] is not False and c["speed"]["ratio"] >= 1.0]
    return f"writes {rep['chosen']}" if fast else "exit 3 (none faster)"


def run_case(name, model, cal, ev, batch, metric=None, *, runs: int = 20, threads: int | None = 1) -> list[list]:
    from onnxopt.errors import OnnxoptError

    t0 = time.perf_counter()
    result = None
    try:
        result = quantize(
            model,
            calibration=cal,
            eval_data=ev,
            max_accuracy_drop=1.0,
            metric=metric,
            batch=batch,
            allow_slower=True,
            timing_runs=runs,
            timing_seconds=30,
            threads=threads,
        )
        rep = result.report
    except OnnxoptError as exc:  # the measured table comes with the error: report it
        rep = exc.details.get("report")
        if rep is None:
            return [[name, "-", f"ERROR {type(exc).__name__}: {str(exc)[:80]}", "-", None, None, "-", None, None, "-"]]
    total = time.perf_counter() - t0
    rows = []
    decision = auto_decision(rep) if result is not None else "exit 3 (budget)"
    for c in rep["candidates"]:
        sp = c.get("speed")
        valid = "-"
        if c["status"] in ("ok", "slower", "over budget"):
            valid = "yes"
        elif c["status"] == "invalid":
            valid = "NO"
        speed = f"{sp['ratio']:.2f}x [{sp['ci95'][0]:.2f},{sp['ci95'][1]:.2f}]" if sp else "-"
        excl = len(c.get("excluded") or [])
        fb = len(c.get("fallbacks") or [])
        rows.append(
            [
                name,
                c["label"],
                c["status"] + (f" (-{excl} float)" if excl else "") + (f" ({fb} fallbacks)" if fb else ""),
                valid,
                None if c["score"] is None else round(c["score"], 2),
                None if c["drop"] is None else round(c["drop"], 2),
                speed,
                None if c["size_ratio"] is None else round(c["size_ratio"], 3),
                round(c.get("seconds", 0.0), 1),
                decision,
            ]
        )
    rows.append(
        [
            name,
            f"(total {total:.0f}s, metric {rep['metric']['name']}, FP32 {rep['metric']['reference']:.2f}, batch {rep['timing']['batch']})",
            "",
            "",
            None,
            None,
            "",
            None,
            None,
            "",
        ]
    )
    if result is not None:
        check_model(result.model)
    return rows


_PEAK = r"""
def rss_now():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
def reset_peak():
    # ru_maxrss survives exec (the parent's peak shows through); VmHWM is reset here
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
"""

_RSS_SCRIPT = _PEAK + r"""
import sys
import onnx
from onnxopt.data import load_data
from onnxopt.quantize.api import calibrate
model, data, method = sys.argv[1], sys.argv[2], sys.argv[3]
m = onnx.load(model)
ds = load_data(data, m)
reset_peak()
before = rss_now()
r = calibrate(m, ds, method=method)
print(before, peak(), r.samples)
"""

_ORT_RSS_SCRIPT = _PEAK + r"""
import sys, tempfile, os, logging
logging.disable(logging.WARNING)
import onnx
from onnxruntime.quantization import quantize_static, CalibrationMethod
from onnxopt.data import load_data
model, data, method = sys.argv[1], sys.argv[2], sys.argv[3]
m = onnx.load(model)
ds = load_data(data, m)
class R:
    def __init__(self): self.it = ds.batches(16)
    def get_next(self): return next(self.it, None)
meth = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[method]
reset_peak()
before = rss_now()
with tempfile.TemporaryDirectory() as tmp:
    quantize_static(model, os.path.join(tmp, "q.onnx"), R(), calibrate_method=meth)
print(before, peak(), 0)
"""


def write_batches(folder: Path, arrays: dict, batch: int = 16) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    n = next(iter(arrays.values())).shape[0]
    for i, start in enumerate(range(0, n, batch)):
        np.savez(folder / f"b{i:04d}.npz", **{k: v[start : start + batch] for k, v in arrays.items()})
    return folder


def rss(model_path: Path, data: Path, method: str, ort: bool = False) -> tuple[float, float]:
    script = _ORT_RSS_SCRIPT if ort else _RSS_SCRIPT
    out = subprocess.run(
        [sys.executable, "-c", script, str(model_path), str(data), method],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-500:])
    before, peak, _ = out.stdout.split()[-3:]
    return int(before) / 1024, int(peak) / 1024


# ORT's histogram calibrators keep every batch's activations: on the BERT-like model with
# 512 samples that is several GB, too much to run next to other work on a 23 GB machine.
ORT_SKIP = {("bert-like", "entropy")}


def rss_rows(tmp: Path, cases: list[tuple[str, Path, callable, int]], methods, ort_baseline: bool) -> list[list]:
    rows = []
    for name, path, make, fixed in cases:
        for n in (16, 512):
            write_batches(tmp / f"{name}-{n}", make(n), batch=fixed or 16)
        for method in methods:
            for engine in ("onnxopt", "ort") if ort_baseline else ("onnxopt",):
                if engine == "ort" and (name, method) in ORT_SKIP:
                    rows.append([name, method, engine, None, None, None, "skipped (needs several GB)"])
                    continue
                try:
                    b16, p16 = rss(path, tmp / f"{name}-16", method, ort=engine == "ort")
                    b512, p512 = rss(path, tmp / f"{name}-512", method, ort=engine == "ort")
                except RuntimeError as exc:
                    rows.append([name, method, engine, None, None, None, f"error: {str(exc)[-80:]}"])
                    continue
                rows.append([name, method, engine, round(b16, 1), round(p16, 1), round(p512, 1), round(p512 / p16, 3)])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="digits models only, no RSS")
    ap.add_argument("--light", default="squeezenet,shufflenet,inception_v1", help="light models (comma list; '' for none)")
    ap.add_argument("--no-bert", action="store_true")
    ap.add_argument("--no-rss", action="store_true")
    ap.add_argument("--rss-only", action="store_true", help="only the calibration RSS table")
    ap.add_argument("--ort-baseline", action="store_true", help="also measure ORT's own calibrator's peak RSS")
    ap.add_argument("--runs", type=int, default=20, help="timing runs per model per candidate")
    ap.add_argument(
        "--threads", type=int, default=1, help="intra-op threads of the timed sessions (0: ORT default); 1 avoids thread-pool stalls on a shared machine"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the tables as JSON")
    ap.add_argument("--real", action="store_true", help="only the real models on real data (quantize_real.py): ORT defaults vs onnxopt, INT4, optimize RSS")
    ap.add_argument("--real-only", default="", help="with --real: comma list of minilm-l3, magika, ppocr-rec, gpt2-random")
    ap.add_argument("--real-n", type=int, default=200, help="with --real: samples (half calibration, half evaluation)")
    ap.add_argument("--real-no-auto", action="store_true", help="with --real: skip the mode=auto budget-search row (minutes on the recognizer)")
    ap.add_argument("--real-no-rss", action="store_true", help="with --real: skip the optimize peak-RSS run on the encoder")
    args = ap.parse_args(argv)
    if args.real:
        from quantize_real import run_real

        res = run_real(
            n=args.real_n, runs=args.runs, only=set(filter(None, args.real_only.split(","))) or None, rss=not args.real_no_rss, auto=not args.real_no_auto
        )
        if args.json:
            args.json.write_text(json.dumps(res, indent=1, default=str))
        return 0
    t_all = time.perf_counter()
    import onnxruntime

    print(
        f"onnxruntime {onnxruntime.__version__}, {os.cpu_count()} CPUs, timing threads {args.threads or 'ORT default'}; "
        "speed = median(FP32)/median(INT8), interleaved, 95% CI"
    )
    rows: list[list] = []
    with tempfile.TemporaryDirectory(prefix="onnxopt-qbench-") as tmpd:
        tmp = Path(tmpd)
        cases = [digits_case(n) for n in ("digits_mlp", "digits_cnn", "digits_resnet")]
        if not args.quick:
            cases += [light_case(n, tmp) for n in args.light.split(",") if n]
            if not args.no_bert:
                try:
                    cases += bert_cases(tmp)
                except ImportError as exc:
                    print(f"bert-like skipped: {exc} (needs torch and transformers: pip install -e '.[bench,models]')")
        for case in [] if args.rss_only else cases:
            print(f"... {case[0]}", file=sys.stderr, flush=True)
            rows += run_case(*case, runs=args.runs, threads=args.threads or None)
        headers = ["model", "candidate", "status", "valid", "score", "drop", "speed vs FP32", "size", "build s", "auto"]
        if rows:
            print(table(headers, rows))
        rss_table = []
        if not args.quick and not args.no_rss:
            print("... calibration RSS", file=sys.stderr, flush=True)
            rss_cases = [
                ("digits_cnn", MODELS / "digits_cnn.onnx", lambda n: {"image": np.resize(np.load(MODELS / "digits_calib.npz")["image"], (n, 1, 8, 8))}, 0)
            ]
            if (tmp / "bert.sim.onnx").exists():
                rss_cases.append(("bert-like", tmp / "bert.sim.onnx", lambda n: bert_data(n), 0))
            rss_table = rss_rows(tmp, rss_cases, ("minmax", "entropy"), args.ort_baseline)
            print()
            print(table(["model", "method", "calibrator", "RSS MB before", "peak MB 16", "peak MB 512", "512/16"], rss_table))
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s")
    if args.json:
        args.json.write_text(json.dumps({"quantize": rows, "rss": rss_table}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
