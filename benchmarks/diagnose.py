"""Benchmark of ``onnxopt diagnose``: does it name the right node, step and cause?

Sections (``--sections``, default all):

- ``fault``: a fault planted in real models (``benchmarks/realmodels.py``: magika,
  ppocr-cls, ppocr-rec, and ppocr-cls statically quantized to QDQ by ONNX Runtime's
  quantizer): one weight of a Conv/MatMul about two thirds deep in the graph scaled by 1.5,
  or two of its output channels swapped (for a QDQ model: the weight's DequantizeLinear
  scale times 1.5).  Target: ``diagnose`` names the node that reads it as the first
  diverging node.
- ``budget``: static INT8 (QDQ, per-channel) of magika and ppocr-cls on real data
  (``realdata.py``: features of files on this disk; rendered text lines, half of them
  turned by 180 degrees; 64 calibration and 128 evaluation samples; metrics agreement and
  cosine against FP32) against budgets of 3/4, 1/2 and 1/4 of the full INT8 drop: leaving
  ``diagnose``'s top-3 nodes in float (ranked by the outputs, and, for comparison, by error
  added) vs the first 3 of ``quantize``'s own sensitivity ranking (the same node count) and
  vs ``quantize``'s own budget search (``--max-accuracy-drop``, as many nodes as it needs);
  how often each meets the budget.
- ``recipe``: a recipe with an inexact step in the middle (a pass that claims to be exact
  but scales a weight, between two exact passes; and a TOML recipe with a dynamic INT8
  step between simplify and remove-unused) is pinned to that step.
- ``rss``: peak RSS (``VmHWM``) of a layer-wise comparison of a ~100 MB model (25 MatMul layers of
  1024x1024 float32) with its faulty copy, in a subprocess, against the same
  subprocess that only imports onnxopt and loads the data.
- ``profile``: the profiler diff of ppocr-cls in FP32 vs dynamic INT8 with Conv
  (ConvInteger) on this CPU: the explanation it prints.

Run: ``nice -n 10 python benchmarks/diagnose.py`` (a few minutes on 2 busy cores).
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import onnxopt  # noqa: E402
from onnxopt.diagnose.api import DiagnoseConfig  # noqa: E402
from onnxopt.render import table  # noqa: E402

# real models: (name, input name, sample shape without the batch axis, dtype, samples)
REAL = [
    ("magika", "bytes", (2048,), "int32", 16),
    ("ppocr-cls", "x", (3, 48, 192), "float32", 16),
    ("ppocr-rec", "x", (3, 48, 320), "float32", 8),
]


def _data(model_name: str, name: str, shape, dtype: str, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    if dtype == "int32":
        return {name: rng.integers(0, 256, (n, *shape)).astype(np.int32)}
    return {name: rng.random((n, *shape), dtype=np.float32)}


def _label(n: onnx.NodeProto) -> str:
    return n.name or f"{n.op_type}:{n.output[0]}"


def plant(model: onnx.ModelProto, how: str = "scale", depth: float = 0.66):
    """A faulty copy and the node that reads the faulted weight (see the module docstring)."""
    out = copy.deepcopy(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    seen: set[str] = set()  # a weight read by several nodes: its first reader diverges first
    cands = []
    for n in g.node:
        if n.op_type not in ("Conv", "MatMul", "Gemm") or len(n.input) < 2 or n.input[1] in seen:
            continue
        w = n.input[1]
        seen.add(w)
        if w in inits and len(inits[w].dims) >= 2:
            cands.append((n, inits[w], None))
        elif w in prod and prod[w].op_type == "DequantizeLinear" and prod[w].input[0] in inits and prod[w].input[1] in inits:
            cands.append((n, inits[prod[w].input[1]], "qdq"))
    node, t, kind = cands[int(depth * (len(cands) - 1))]
    a = numpy_helper.to_array(t).copy()
    if kind == "qdq" or how == "scale":
        a = a * np.asarray(1.5, a.dtype)
    else:  # swap two output channels: axis 0 for Conv/Gemm(transB) weights, last axis for MatMul
        axis = a.ndim - 1 if node.op_type == "MatMul" else 0
        idx = list(range(a.shape[axis]))
        idx[0], idx[1] = idx[1], idx[0]
        a = np.take(a, idx, axis=axis)
    t.CopyFrom(numpy_helper.from_array(a, t.name))
    return out, _label(node)


def section_fault(tmp: Path) -> list[list]:
    from realmodels import fetch

    rows = []
    for name, inp, shape, dtype, n in REAL:
        path = fetch(name)
        if path is None:
            rows.append([name, "-", "-", "skipped: not fetched", "-", "-"])
            continue
        ref = onnxopt.simplify(str(path)).model  # Constant-node weights become initializers
        feeds = _data(name, inp, shape, dtype, n)
        data = tmp / f"{name}.npz"
        np.savez(data, **feeds)
        variants = [("scale x1.5", ref, "scale"), ("swap 2 channels", ref, "swap")]
        if name == "ppocr-cls":
            q = onnxopt.quantize(ref, mode="static", format="qdq", calibration=data, eval_data=data, per_channel=True, allow_slower=True, timing=False)
            variants.append(("static QDQ INT8 by onnxopt quantize, scale x1.5", q.model, "scale"))
        for label, base, how in variants:
            bad, node = plant(base, how)
            t0 = time.perf_counter()
            d = onnxopt.diagnose(base, bad, data)
            secs = time.perf_counter() - t0
            lw = d.layerwise
            got = lw.first.node if lw.first else None
            rows.append(
                [
                    f"{name} ({label})",
                    node,
                    got or "-",
                    "yes" if got == node else "NO",
                    f"{lw.matching.to_dict()['matched']}/{len(lw.matching.unmatched_ref)}",
                    f"{secs:.1f}",
                ]
            )
    print(table(["model (fault)", "planted at", "first diverging", "named", "matched/unmatched", "s"], rows))
    return rows


def _real_feeds(name: str, n: int) -> dict | None:
    """Real inputs (``realdata.py``): magika's features of files on this disk; for the
    PP-OCR text-line orientation classifier, rendered English lines, every other one turned
    by 180 degrees (the two classes it tells apart)."""
    from realdata import disk_files, magika_features, ocr_lines, sentences

    if name == "magika":
        return {"bytes": magika_features(disk_files(n))}
    if name == "ppocr-cls":
        words = " ".join(sentences(4 * n, seed=1)).split()
        x = ocr_lines([" ".join(words[i : i + 3]) for i in range(0, 3 * n, 3)], width=192)
        x[1::2] = x[1::2, :, ::-1, ::-1]
        return {"x": x}
    return None


def _budget_cases(tmp: Path):
    """(model, path, calibration, eval, metric): static INT8 of real models on real data."""
    from realmodels import fetch

    for name, *_ in REAL[:2]:
        path = fetch(name)
        feeds = _real_feeds(name, 192) if path is not None else None
        if feeds is None:
            continue
        cal, ev = tmp / f"{name}-cal.npz", tmp / f"{name}-ev.npz"
        np.savez(cal, **{k: v[:64] for k, v in feeds.items()})
        np.savez(ev, **{k: v[64:192] for k, v in feeds.items()})
        for metric in ("agreement", "cosine"):
            yield name, path, cal, ev, metric


def _drop_excluding(path, nodes: list[str], common: dict) -> float:
    if not nodes:
        return onnxopt.quantize(path, **common).report["candidates"][0]["drop"]
    return onnxopt.quantize(path, exclude_nodes=nodes, **common).report["candidates"][0]["drop"]


def _own_search(path, budget: float, common: dict) -> tuple[bool, str, list[str]]:
    """``quantize --max-accuracy-drop``: met?, what it did, and the first 3 nodes of its own
    sensitivity ranking (the order its search leaves nodes in float)."""
    from onnxopt.errors import BudgetError

    t0 = time.perf_counter()
    try:
        c = onnxopt.quantize(path, max_accuracy_drop=budget, **common).report["candidates"][0]
        ok, desc = True, f"{c['drop']:.3g} ({len(c.get('excluded') or [])} in float)"
        ranked = sorted((c.get("budget_search") or {}).get("sensitivity") or [], key=lambda e: -e["gain"])
        first3 = [n for e in ranked for n in e["nodes"]][:3]
    except BudgetError:
        ok, desc, first3 = False, "not met", []
    return ok, desc + f", {time.perf_counter() - t0:.0f} s", first3


FRACTIONS = (0.75, 0.5, 0.25)  # budgets: these fractions of the fully quantized model's drop


def section_budget(tmp: Path) -> None:
    """Budgets met by three nodes left in float: diagnose's top 3 (by the outputs, by error
    added) and, at the same count, the first 3 of ``quantize``'s own search ranking; and by
    that search itself, which leaves as many nodes in float as it needs."""
    keys = ("outputs", "added", "search3", "search")
    rows, met, total = [], dict.fromkeys(keys, 0), 0
    yes = {True: "yes", False: "no"}
    for name, path, cal, ev, metric in _budget_cases(tmp):
        common = dict(mode="static", calibration=cal, eval_data=ev, per_channel=True, allow_slower=True, allow_collapse=True, timing=False, metric=metric)
        full = onnxopt.quantize(path, **common)
        drop0 = full.report["candidates"][0]["drop"]
        if drop0 <= 0:
            rows.append([name, metric, f"{drop0:.3g}", "-", "full INT8 within any budget"] + ["-"] * 8)
            continue
        t0 = time.perf_counter()
        d = onnxopt.diagnose(path, full.model, ev, config=DiagnoseConfig(top=3, limit=128, metric=metric))
        secs = time.perf_counter() - t0
        by_outputs = [e.reference_node for e in d.sensitive[:3]]
        by_added = [t.node for t in d.layerwise.top[:3]]
        drop_out, drop_add = _drop_excluding(path, by_outputs, common), _drop_excluding(path, by_added, common)
        search3, drop_s3 = None, None
        for frac in FRACTIONS:
            budget = float(f"{drop0 * frac:.3g}")
            total += 1
            ok_q, own, first3 = _own_search(path, budget, common)
            if search3 is None and first3:
                search3 = first3
                drop_s3 = _drop_excluding(path, search3, common)
            within = lambda d, b=budget: d is not None and d <= b + 1e-9  # noqa: E731
            ok = {"outputs": within(drop_out), "added": within(drop_add), "search3": within(drop_s3), "search": ok_q}
            for k in keys:
                met[k] += ok[k]
            print(f"  {name} {metric} budget {budget}: {ok}", file=sys.stderr, flush=True)
            picked = f"{', '.join(by_outputs) or '-'} ({secs:.0f} s)"
            s3 = f"{drop_s3:.3g}" if drop_s3 is not None else "-"
            cells = [f"{drop_out:.3g}", yes[ok["outputs"]], f"{drop_add:.3g}", yes[ok["added"]], s3, yes[ok["search3"]], own, yes[ok_q]]
            rows.append([name, metric, f"{drop0:.3g}", budget, picked, *cells])
    heads = ["model", "metric", "full INT8 drop", "budget", "diagnose top-3 by outputs", "drop", "met", "top-3 by error added: drop", "met"]
    heads += ["search ranking's first 3: drop", "met", "quantize --max-accuracy-drop search", "met"]
    print(table(heads, rows))
    print(
        f"budgets met ({total}): with 3 nodes in float, diagnose's top-3 by the outputs {met['outputs']}, by error added {met['added']}, "
        f"the first 3 of quantize's own ranking {met['search3']}; quantize's own search (as many nodes as it needs) {met['search']} "
        "(real data: 64 calibration, 128 evaluation samples; drop in points against FP32)"
    )


def section_recipe(tmp: Path) -> None:
    from dataclasses import dataclass

    from realmodels import fetch

    from onnxopt.core.passes import Context, Pass
    from onnxopt.core.registry import make_pass
    from onnxopt.data import load_data
    from onnxopt.diagnose.bisect import bisect_steps

    class BuggyExactPass(Pass):
        """Claims to be exact; scales the weight ``plant`` picks."""

        key = "buggy-exact"
        exact = True

        @dataclass
        class Config:
            pass

        def call(self, model, ctx):
            bad, _ = plant(model, "scale")
            return self.result(bad, True)

    rows = []
    for name, inp, shape, dtype, n in REAL[:2]:
        path = fetch(name)
        if path is None:
            continue
        m = onnxopt.simplify(str(path)).model
        np.savez(tmp / f"r-{name}.npz", **_data(name, inp, shape, dtype, n))
        ds = load_data(tmp / f"r-{name}.npz", m)
        _, node = plant(m, "scale")
        passes = [make_pass("remove-unused"), BuggyExactPass(), make_pass("infer-shapes")]
        res = bisect_steps(m, passes, Context(), ds)
        from onnxopt.diagnose.api import _layerwise  # the same call diagnose --recipe makes

        lw = _layerwise(res.before, res.after, ds, ds.view(), DiagnoseConfig())
        rows.append(
            [
                name,
                "remove-unused, buggy-exact, infer-shapes",
                f"{res.culprit.index} '{res.culprit.key}'",
                f"{lw.first.node if lw.first else '-'} (planted: {node})",
            ]
        )
        recipe = tmp / "mid.toml"
        recipe.write_text(
            'name = "mid"\n[[steps]]\npass = "simplify"\n[[steps]]\npass = "quantize"\nmode = "dynamic"\nop_types = '
            '["MatMul", "Gemm", "Conv"]\n[[steps]]\npass = "remove-unused"\n'
        )
        d = onnxopt.diagnose(path, recipe=recipe, data=tmp / f"r-{name}.npz")
        c = d.steps.culprit
        rows.append(
            [
                name,
                "simplify, quantize (dynamic), remove-unused",
                f"{c.index} '{c.key}'" if c else "-",
                f"{d.layerwise.first.node if d.layerwise and d.layerwise.first else '-'} (first quantized node)",
            ]
        )
    print(table(["model", "steps", "pinned step", "first diverging node inside it"], rows))


_RSS_CHILD = r"""
import sys, time
sys.path.insert(0, {root!r})
import numpy as np, onnx, onnxruntime, onnxopt
from onnxopt.data import load_data
from onnxopt.diagnose.api import diagnose, DiagnoseConfig
ds = load_data({data!r})
if {run} == "load":  # only what diagnose does first: load both models (large ones offloaded)
    import tempfile
    from pathlib import Path
    from onnxopt.diagnose.api import _load
    with tempfile.TemporaryDirectory() as tmp:
        a, _ = _load({a!r}, Path(tmp), "a")
        del a
        b, _ = _load({b!r}, Path(tmp), "b")
if {run} == "diagnose":
    t0 = time.perf_counter()
    d = diagnose({a!r}, {b!r}, ds, config=DiagnoseConfig(limit=64))
    print("first", d.layerwise.first.node, "slices", d.layerwise.slices, "seconds", round(time.perf_counter() - t0, 1))
# VmHWM: this process's own peak (ru_maxrss keeps the parent's peak across fork + exec)
print("maxrss_kb", next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")))
"""


def _mlp(layers: int = 25, width: int = 1024, seed: int = 0) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i}"], name=f"tanh{i}"))
        x = f"h{i}"
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def section_rss(tmp: Path) -> None:
    m = _mlp()
    a, b = tmp / "big.onnx", tmp / "big-bad.onnx"
    onnx.save(m, str(a))
    bad, node = plant(m, "scale")
    onnx.save(bad, str(b))
    del m, bad
    np.savez(tmp / "big.npz", x=np.random.default_rng(0).standard_normal((64, 1024)).astype(np.float32))
    size = a.stat().st_size
    out = {}
    for run in ("base", "load", "diagnose"):
        code = _RSS_CHILD.format(root=str(ROOT), data=str(tmp / "big.npz"), a=str(a), b=str(b), run=repr(run))
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        out[run] = r.stdout
    kb = {k: int(v.split("maxrss_kb")[1]) * 1024 for k, v in out.items()}
    base = kb["base"]
    print(out["diagnose"].splitlines()[0], f"(planted at {node})")
    mb = 2**20
    rows = [
        [what, f"{kb[k] / mb:.0f} MB", f"{(kb[k] - base) / mb:.0f} MB", f"{(kb[k] - base) / size:.2f}x", f"{kb[k] / size:.2f}x"]
        for k, what in (("base", "imports + data"), ("load", "loading both models"), ("diagnose", "whole diagnosis"))
    ]
    print(f"model size {size / mb:.0f} MB (each of the two)")
    print(table(["peak RSS of", "peak", "minus baseline", "/ model size", "peak / model size"], rows))


def section_profile(tmp: Path) -> None:
    from realmodels import fetch

    path = fetch("ppocr-cls")
    if path is None:
        print("skip: ppocr-cls not fetched")
        return
    feeds = _data("ppocr-cls", "x", (3, 48, 192), "float32", 8)
    np.savez(tmp / "p.npz", **feeds)
    q = onnxopt.quantize(path, mode="dynamic", op_types=["Conv", "MatMul"], eval_data=tmp / "p.npz", allow_slower=True, timing=False)
    qpath = tmp / "cls-int8.onnx"
    q.save(qpath)
    d = onnxopt.diagnose(path, qpath, tmp / "p.npz", config=DiagnoseConfig(profile=True, profile_runs=30, limit=8))
    p = d.profile.to_dict()
    print(f"kernel time per run (batch 8): FP32 {p['reference']['total_ms']:.2f} ms, dynamic INT8 {p['candidate']['total_ms']:.2f} ms ({p['ratio']:.2f}x)")
    print(table(["op", "ref ms", "cand ms", "added ms"], [[r["op"], r["reference_ms"], r["candidate_ms"], r["added_ms"]] for r in p["per_op"][:8]]))
    for e in p["explanations"]:
        print("why:", e)
    print("first diverging node:", d.layerwise.first.node if d.layerwise.first else "-")


SECTIONS = {"fault": section_fault, "budget": section_budget, "recipe": section_recipe, "rss": section_rss, "profile": section_profile}


def main(argv=None) -> None:
    import onnxruntime

    from onnxopt.bench.environment import cpu_model, isa_summary, load_average

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    args = ap.parse_args(argv)
    print(
        f"{time.strftime('%Y-%m-%d')} · {cpu_model()} ({isa_summary()}) · {os.cpu_count()} cores · load "
        f"{load_average()} · onnxruntime {onnxruntime.__version__} · onnx {onnx.__version__}"
    )
    with tempfile.TemporaryDirectory(prefix="onnxopt-bench-diagnose-") as tmp:
        for s in args.sections.split(","):
            print(f"\n== {s} ==")
            t0 = time.perf_counter()
            SECTIONS[s](Path(tmp))
            print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
