"""Renderers of the bench report: terminal table, JSON, CSV, markdown.

All take the report dict (``BenchResult.report``; schema in docs/readme/bench.md) and
return text.  JSON is strict (non-finite floats as strings, ``onnxopt.render.json_safe``), keys sorted.  CSV has one
row per model x configuration with the columns of ``CSV_COLUMNS``, in that order.
"""

from __future__ import annotations

import csv
import io
import math

from ..render import human_bytes, human_count, json_safe, markdown_table, table
from ..render import to_json as render_json

__all__ = [
    "FORMATS",
    "CSV_COLUMNS",
    "render",
    "to_json",
    "to_csv",
    "to_markdown",
    "to_table",
    "csv_rows",
]

FORMATS = ("table", "json", "csv", "markdown")

CSV_COLUMNS = [
    "model", "path", "batch_requested", "batch", "status", "notes",
    "provider", "threads", "threads_effective", "concurrency", "io_binding",
    "n", "first_run_ms", "min_ms", "mean_ms", "std_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "p99.9_ms", "max_ms",
    "speedup", "ci95_low", "ci95_high", "verdict", "samples_per_s", "runs_per_s",
    "session_create_ms", "rss_delta_bytes", "peak_rss_delta_bytes", "gpu_delta_bytes",
    "file_bytes", "params", "top1", "agreement", "rel_l2", "interrupted",
    "session_options", "cold_create_ms", "cold_first_run_ms", "cold_peak_rss_bytes",
]  # fmt: skip

_VERDICT = {"faster": "faster", "slower": "slower", "same": "~same", "baseline": "baseline"}


def render(report: dict, fmt: str = "table") -> str:
    renderers = {"table": to_table, "json": to_json, "csv": to_csv, "markdown": to_markdown}
    if fmt not in renderers:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    return renderers[fmt](report)


def to_json(report: dict) -> str:
    return render_json(report) + "\n"


def csv_rows(report: dict) -> list[dict]:
    """One dict per model x configuration with the keys of ``CSV_COLUMNS``."""
    env = report.get("environment") or {}
    models = {m["name"]: m for m in report["models"]}
    out = []
    for r in report["results"]:
        m = models.get(r["model"], {})
        lat = r.get("latency_ms") or {}
        sp = r.get("speedup") or {}
        th = r.get("throughput") or {}
        mem = m.get("memory") or {}
        a = m.get("accuracy") or {}
        cold = m.get("cold_start") or {}
        row = {
            "model": r["model"],
            "path": m.get("path"),
            "batch_requested": r.get("batch_requested"),
            "batch": r.get("batch"),
            "status": r.get("status"),
            "notes": "; ".join(r.get("notes") or []),
            "provider": report.get("provider"),
            "threads": env.get("intra_op_threads"),
            "threads_effective": env.get("intra_op_threads_effective"),
            "concurrency": env.get("concurrency"),
            "io_binding": env.get("io_binding"),
            "n": lat.get("n"),
            "first_run_ms": r.get("first_run_ms"),
            "speedup": sp.get("ratio"),
            "ci95_low": (sp.get("ci95") or [None, None])[0],
            "ci95_high": (sp.get("ci95") or [None, None])[1],
            "verdict": sp.get("verdict"),
            "samples_per_s": th.get("samples_per_s"),
            "runs_per_s": th.get("runs_per_s"),
            "session_create_ms": m.get("session_create_ms"),
            "rss_delta_bytes": mem.get("rss_delta_bytes"),
            "peak_rss_delta_bytes": mem.get("peak_rss_delta_bytes"),
            "gpu_delta_bytes": mem.get("gpu_delta_bytes"),
            "file_bytes": m.get("file_bytes"),
            "params": m.get("params"),
            "top1": a.get("top1"),
            "agreement": a.get("agreement"),
            "rel_l2": a.get("rel_l2"),
            "interrupted": report.get("interrupted"),
            "session_options": _options_text(m),
            "cold_create_ms": cold.get("create_ms"),
            "cold_first_run_ms": cold.get("first_run_ms"),
            "cold_peak_rss_bytes": cold.get("creation_peak_rss_bytes"),
        }
        for k in ("min", "mean", "std", "p50", "p90", "p95", "p99", "p99.9", "max"):
            row[f"{k}_ms"] = lat.get(k)
        out.append(json_safe(row))
    return out


def to_csv(report: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in csv_rows(report):
        w.writerow({k: ("" if row[k] is None else row[k]) for k in CSV_COLUMNS})
    return buf.getvalue()


# --- human-readable ------------------------------------------------------------------


def _ms(v) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.1f}"
    return f"{v:.3f}" if v >= 1 else f"{v:.4f}"


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def _ratio(sp) -> str:
    if not sp:
        return "-"
    lo, hi = sp["ci95"]
    return "1.00x (baseline)" if sp.get("verdict") == "baseline" else f"{sp['ratio']:.2f}x [{lo:.2f}, {hi:.2f}]"


def _rate(th) -> str:
    return "-" if not th or th.get("samples_per_s") is None or not math.isfinite(th["samples_per_s"]) else f"{th['samples_per_s']:,.0f}"


def _options_text(m: dict) -> str:
    """``carried: intra 1, ...`` or ``default``."""
    opts = m.get("session_options")
    if not opts:
        return "default"
    from ..session_options import SessionConfig

    return "carried: " + SessionConfig.from_dict(opts).describe()


def _model_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    headers = ["model", "size", "params", "create ms", "RSS growth", "top1 %", "agree %", "rel-L2"]
    if report.get("provider") == "cuda":
        headers.insert(5, "GPU mem")
    cold = any(m.get("cold_start") for m in report["models"])
    if cold:
        headers += ["cold create ms", "cold 1st run ms", "cold RSS peak"]
    headers.append("session options")
    rows = []
    for m in report["models"]:
        mem = m.get("memory") or {}
        a = m.get("accuracy") or {}
        rel = a.get("rel_l2")
        row = [
            m["name"],
            human_bytes(m.get("file_bytes")),
            human_count(m.get("params")),
            _ms(m.get("session_create_ms")),
            human_bytes(mem.get("peak_rss_delta_bytes"), signed=True),
            _pct(a.get("top1")),
            _pct(a.get("agreement")),
            "-" if rel is None else f"{rel:.1e}",
        ]
        if report.get("provider") == "cuda":
            row.insert(5, human_bytes(mem.get("gpu_delta_bytes"), signed=True))
        if cold:
            c = m.get("cold_start") or {}
            row += [_ms(c.get("create_ms")), _ms(c.get("first_run_ms")), human_bytes(c.get("creation_peak_rss_bytes"))]
        row.append(_options_text(m))
        rows.append(row)
    return headers, rows


def _latency_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    conc = (report.get("environment") or {}).get("concurrency", 1)
    headers = [
        "model",
        "batch",
        "runs",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        f"vs {report['baseline']} [95% CI]",
        "verdict",
        "first ms",
        f"samples/s (x{conc})",
    ]
    rows = []
    for r in report["results"]:
        lat = r.get("latency_ms") or {}
        b = r.get("batch") if r.get("batch") is not None else r.get("batch_requested")
        b = "-" if b is None else str(b)
        if r["status"] == "skipped":
            rows.append([r["model"], b, "-", "-", "-", "-", "skipped", "", "-", "-"])
            continue
        rows.append(
            [
                r["model"],
                b,
                str(lat.get("n", "-")),
                _ms(lat.get("p50")),
                _ms(lat.get("p90")),
                _ms(lat.get("p99")),
                _ratio(r.get("speedup")),
                _VERDICT.get(
                    (r.get("speedup") or {}).get("verdict"),
                    r["status"] if r["status"] != "ok" else "-",
                ),
                _ms(r.get("first_run_ms")),
                _rate(r.get("throughput")),
            ]
        )
    return headers, rows


def _header_lines(report: dict) -> list[str]:
    env = report.get("environment") or {}
    s = report.get("settings") or {}
    threads = env.get("intra_op_threads")
    eff = env.get("intra_op_threads_effective")
    thr = f"{threads}" if threads else f"{eff} (default)"
    load = env.get("load_average_before") or env.get("load_average")
    prov = env.get("ort_providers") or [report.get("provider")]
    return [
        f"{env.get('cpu', '?')}"
        + (f" ({env['cpu_isa']})" if env.get("cpu_isa") else "")
        + f" · {env.get('cores_usable', '?')} usable cores · load {load[0] if load else '?'} · onnxruntime {env.get('onnxruntime', '?')} · {prov[0]}"
        + (f" · GPU {env['gpu']['name']}" if env.get("gpu") else ""),
        f"intra-op threads {thr} · concurrency {env.get('concurrency', 1)} · I/O binding {'on' if env.get('io_binding') else 'off'} · "
        + (f"{s.get('runs')} runs" if s.get("runs") else "")
        + (" or " if s.get("runs") and s.get("duration_s") else "")
        + (f"{s.get('duration_s'):g} s" if s.get("duration_s") else "")
        + f" per batch, interleaved blocks of {s.get('block')}, {s.get('warmup')} warm-up runs per shape",
        f"ratio = median({report['baseline']}) / median(model): > 1 is faster; 95% CI by paired block bootstrap"
        + (" (widened with few rounds: see notes)" if any((r.get("speedup") or {}).get("ci_method") == "paired-block+iid" for r in report["results"]) else ""),
    ]


def _footer_lines(report: dict) -> list[str]:
    lines = []
    notes = list(report.get("notes") or [])
    for r in report["results"]:
        for n in r.get("notes") or []:
            msg = f"{r['model']}: {n}"
            if msg not in notes:
                notes.append(msg)
    for m in report["models"]:
        a = m.get("accuracy") or {}
        if a.get("note"):
            notes.append(f"{m['name']}: accuracy {a['note']}")
    if report["models"] and (report["models"][0].get("accuracy") or {}).get("data"):
        lines.append(f"accuracy on {report['models'][0]['accuracy']['data']}")
    lines += [f"note: {n}" for n in notes]
    lines += [f"warning: {w}" for w in report.get("warnings") or []]
    if report.get("interrupted"):
        lines.append("INTERRUPTED: partial results (Ctrl-C)")
    return lines


def _document(head: list[str], report: dict, render_table, foot: list[str]) -> str:
    """``head``, the latency and the model tables drawn by ``render_table``, then ``foot``."""
    h, rows = _latency_rows(report)
    out = head + render_table(h, rows, right={1, 2, 3, 4, 5, 8, 9}).split("\n") + [""]
    h, rows = _model_rows(report)
    out += render_table(h, rows, right=set(range(1, len(h) - 1))).split("\n")
    return "\n".join(out + ([""] + foot if foot else [])) + "\n"


def to_table(report: dict) -> str:
    return _document(_header_lines(report) + [""], report, table, _footer_lines(report))


def to_markdown(report: dict) -> str:
    head = [x for line in _header_lines(report) for x in (f"_{line}_", "")]
    return _document(head, report, markdown_table, [f"- {line}" for line in _footer_lines(report)])
