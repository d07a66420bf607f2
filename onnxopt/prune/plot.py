"""The budget-search curve as a PNG (matplotlib, Agg backend; written atomically).
matplotlib is optional (``onnxopt[plot]``): without it ``MissingDependencyError``."""

from __future__ import annotations

import io

__all__ = ["plot_curve"]


def plot_curve(
    outcome,
    path,
    *,
    xlabel: str,
    base_params: int | None = None,
    base_flops: int | None = None,
    title: str = "",
) -> None:
    """Accuracy (left) and parameters / FLOPs / latency relative to the input (right)."""
    from ..plotting import require_matplotlib

    matplotlib = require_matplotlib()

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from ..io import atomic_write_bytes

    pts = [p for p in outcome.points if p.score is not None]
    xs = [p.value for p in pts]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    ax1.plot(xs, [p.score for p in pts], "o-", label=outcome.metric)
    ax1.axhline(outcome.reference_score, color="gray", lw=1, ls=":", label="input model")
    ax1.axhline(
        outcome.reference_score - outcome.max_drop,
        color="red",
        lw=1,
        ls="--",
        label=f"budget (-{outcome.max_drop:g})",
    )
    if outcome.chosen is not None:
        ax1.plot(
            [outcome.chosen.value],
            [outcome.chosen.score],
            "s",
            ms=10,
            mfc="none",
            color="green",
            label=f"chosen {outcome.chosen.value:g}",
        )
    ax1.set_ylabel(f"{outcome.metric} (%)")
    if base_params:
        ax2.plot(xs, [p.params / base_params for p in pts], "o-", label="parameters")
    if base_flops:
        ax2.plot(xs, [p.flops / base_flops for p in pts], "s-", label="FLOPs")
    if all(p.speedup for p in pts) and pts:
        ax2.plot(xs, [1.0 / p.speedup for p in pts], "^-", label="latency")
    ax2.set_ylabel("relative to the input model")
    ax2.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
