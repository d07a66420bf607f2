"""Plots of a bench report (matplotlib, Agg canvas; no global backend switch).

One column per batch configuration: on top the latency distribution of every model (box
plot over the timed runs, whiskers at the 1st / 99th percentiles, log scale when they
span more than 20x); below the ratio to the baseline as bars with the 95% CI as
error bars and a line at 1.  Written atomically (PNG, SVG or PDF by extension).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..io import atomic_write_bytes
from ..plotting import require_matplotlib

__all__ = ["PLOT_FORMATS", "check_plot_path", "plot_bytes", "plot_report"]

PLOT_FORMATS = (".png", ".svg", ".pdf")


def check_plot_path(path) -> Path:
    """The plot path, checked before any work: a known extension, not a folder, and
    matplotlib installed (``MissingDependencyError`` otherwise)."""
    p = Path(path)
    if p.suffix.lower() not in PLOT_FORMATS:
        raise UsageError(f"plot file must end in {', '.join(PLOT_FORMATS)}", p)
    if p.is_dir():
        raise UsageError("plot path is a directory", p)
    require_matplotlib()
    return p


def plot_report(report: dict, samples: dict, path) -> Path:
    """Draw the report's latencies (``samples[(model, batch)]`` in ms) and ratios to ``path``."""
    path = check_plot_path(path)
    return atomic_write_bytes(path, plot_bytes(report, samples, path.suffix.lower().lstrip(".")))


def plot_bytes(report: dict, samples: dict, fmt: str = "png") -> bytes:
    """The figure as ``fmt`` (png, svg, pdf) bytes; ``UsageError`` when nothing was measured,
    ``MissingDependencyError`` without matplotlib."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [m["name"] for m in report["models"]]
    cfgs = dict.fromkeys(r["batch_requested"] for r in report["results"])
    cols = [b for b in cfgs if any((m, b) in samples for m in names)]
    if not cols:
        raise UsageError("nothing was measured: no plot to draw")
    fig = Figure(figsize=(max(6.0, 1.1 * len(names) + 2.5) * len(cols), 8.0), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(cols), squeeze=False)
    for j, b in enumerate(cols):
        rows = {r["model"]: r for r in report["results"] if r["batch_requested"] == b}
        present = [m for m in names if (m, b) in samples]
        data = [np.asarray(samples[(m, b)]) for m in present]
        ax = axes[0][j]
        ax.boxplot(data, whis=(1, 99), showfliers=False, tick_labels=present)
        lows = [float(np.percentile(d, 1)) for d in data]
        highs = [float(np.percentile(d, 99)) for d in data]
        if lows and min(lows) > 0 and max(highs) > 20 * min(lows):
            ax.set_yscale("log")
        ax.set_ylabel("latency per run (ms)")
        ax.set_title(f"batch {b if b is not None else 'default'} · {report.get('provider', '')}")
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(axis="y", alpha=0.3)
        ax = axes[1][j]
        rat = [rows[m].get("speedup") for m in present]
        xs = np.arange(len(present))
        vals = np.array([s["ratio"] if s else np.nan for s in rat])
        lo = np.array([s["ratio"] - s["ci95"][0] if s else 0.0 for s in rat])
        hi = np.array([s["ci95"][1] - s["ratio"] if s else 0.0 for s in rat])
        colors = [
            "#4c72b0"
            if not s or s.get("verdict") in ("same", "baseline")
            else ("#55a868" if s["verdict"] == "faster" else "#c44e52")
            for s in rat
        ]
        ax.bar(xs, vals, yerr=np.vstack([lo, hi]), capsize=4, color=colors)
        ax.axhline(1.0, color="black", linewidth=0.8)
        finite = vals[np.isfinite(vals)]
        if finite.size and finite.min() > 0 and finite.max() > 10 * finite.min():
            ax.set_yscale("log")
        ax.set_xticks(xs, present, rotation=30)
        ax.set_ylabel(f"speed vs {report['baseline']} (x, 95% CI)")
        ax.grid(axis="y", alpha=0.3)
    if report.get("interrupted"):
        fig.suptitle("interrupted: partial results", color="#c44e52")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    return buf.getvalue()
