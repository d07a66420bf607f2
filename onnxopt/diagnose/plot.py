"""``--plot``: the error per tensor in graph order (log scale, the first diverging node and
the threshold marked) and, when profiled, the kernel time added per op type as bars.
matplotlib (Agg canvas, no global backend switch) is imported only here, on use; the file
is written atomically (PNG, SVG or PDF by extension)."""

from __future__ import annotations

import io
from pathlib import Path

from ..errors import UsageError
from ..io import atomic_write_bytes
from ..plotting import require_matplotlib

__all__ = ["plot_diagnosis"]


def _errors_axes(ax, lw: dict) -> None:
    tensors = lw["tensors"]
    xs = list(range(len(tensors)))
    ys = [max(min(t["rel_l2"], 1e6), 1e-12) for t in tensors]
    ax.semilogy(xs, ys, marker=".", linewidth=0.8)
    ax.axhline(lw["threshold"], color="grey", linestyle="--", linewidth=0.8, label=f"threshold {lw['threshold']:g}")
    first = lw.get("first_diverging")
    if first:
        i = next(k for k, t in enumerate(tensors) if t["ref"] == first["ref"])
        ax.axvline(i, color="red", linewidth=0.8)
        ax.annotate(f"first: {first['node']} ({first['op']})", (i, ys[i]), textcoords="offset points", xytext=(5, 5), color="red", fontsize=8)
    ax.set_xlabel("matched tensor (graph order)")
    ax.set_ylabel("relative L2 vs reference")
    ax.set_title("error per node")
    ax.legend(loc="lower right", fontsize=8)


def _profile_axes(ax, prof: dict, top: int = 12) -> None:
    rows = sorted(prof["per_op"], key=lambda r: -abs(r["added_ms"]))[:top]
    names = [r["op"] for r in rows]
    vals = [r["added_ms"] for r in rows]
    ax.barh(range(len(rows)), vals, color=["tab:red" if v > 0 else "tab:green" for v in vals])
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("kernel ms per run, candidate minus reference")
    ax.set_title("op time diff")


def plot_diagnosis(report: dict, path) -> Path:
    """Draw ``Diagnosis.to_dict()`` to ``path``; ``UsageError`` when there is nothing to draw."""
    from ..bench.plot import check_plot_path

    path = check_plot_path(path)
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lw, prof = report.get("layerwise"), report.get("profile")
    panels = [p for p in (("errors", lw), ("profile", prof)) if p[1] and (p[0] != "errors" or p[1]["tensors"])]
    if not panels:
        raise UsageError("nothing to plot: no layer-wise comparison and no profile in this diagnosis", path)
    fig = Figure(figsize=(10, 4 * len(panels)), dpi=100)
    FigureCanvasAgg(fig)
    for ax, (kind, part) in zip(fig.subplots(len(panels), 1, squeeze=False)[:, 0], panels, strict=True):
        (_errors_axes if kind == "errors" else _profile_axes)(ax, part)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lower().lstrip("."))
    return atomic_write_bytes(path, buf.getvalue())
