"""``onnxopt diagnose REFERENCE CANDIDATE`` / ``--recipe R MODEL`` / ``--ort-optimizers MODEL``
/ ``--fp16 MODEL``: where two models part ways, which step broke it, why one is slower."""

from __future__ import annotations

import click

from ..render import fmt, table
from .options import (
    data_option,
    json_option,
    metric_option,
    provider_option,
    report_option,
    shape_option,
    shapes_dict,
)
from .render import echo_json

__all__ = ["command", "render_diagnosis"]


def _render_layerwise(lw: dict, top: int) -> list[str]:
    m = lw["matching"]
    lines = [
        (
            f"matched {m['matched']} tensor(s) ({', '.join(f'{k} {v}' for k, v in sorted(m['by'].items()))}) in "
            f"{lw['slices']} slice(s); {lw['samples']} sample(s) of {lw['data']}"
        )
    ]
    for side, key in (("reference", "unmatched_reference"), ("candidate", "unmatched_candidate")):
        n = m[f"{key}_count"]
        if n:
            shown = ", ".join(m[key][:8]) + (", ..." if n > 8 else "")
            lines.append(f"unmatched in the {side}: {n} ({shown})")
    first = lw["first_diverging"]
    if first is None:
        lines.append(f"no tensor diverges: every matched tensor is within the exact rule (relative L2 <= {fmt(lw['threshold'])})")
        return lines
    lines.append(
        f"first diverging node: {first['node']} ({first['op']}), tensor '{first['ref']}': relative L2 {fmt(first['rel_l2'])} "
        f"while its inputs are within {fmt(lw['threshold'])}"
        + (f" ({first['note']})" if first["note"] else "")
    )
    rows = [
        [t["node"], t["op"], t["ref"], t["error_in"], t["rel_l2"], t["added"], t["max_abs"], t["cosine"], f"{t['nan_cand']}/{t['inf_cand']}"]
        for t in lw["top"][:top]
    ]
    lines += [
        "",
        f"top {len(rows)} node(s) by error added (relative L2 out minus in):",
        table(["node", "op", "tensor", "rel L2 in", "rel L2 out", "added", "max abs", "cosine", "NaN/Inf"], rows),
    ]
    lines.append("every tensor in graph order: --json or --report FILE; the curve: --plot FILE")
    return lines


def _render_sensitive(rows: list[dict]) -> list[str]:
    """Nodes ranked by the outputs (``exclude.rank_by_outputs``)."""
    if not rows:
        return []
    metric = rows[0]["metric"]
    body = [[r["node"], r["op"], r["reference_node"], r["score"], r["gain"], r["rel_l2"], r["weights"]] for r in rows]
    names = ",".join(dict.fromkeys(r["reference_node"] or r["node"] for r in rows))
    if "scored best together" in rows[0]["how"]:  # ``exclude._best_set``: the set scores together
        head = (
            f"{len(rows)} node(s) whose set scored best left in float together (emulated), {metric}; "
            "lost alone: the damage each does alone (only it quantized):"
        )
        cols = ["node", "op", "reference node", f"{metric} (all in float)", "lost alone", "rel L2 of outputs", "weights"]
    else:
        head = f"top {len(rows)} node(s) by the outputs: each left in float (emulated on the candidate, with the ones above it), {metric} vs the reference:"
        cols = ["node", "op", "reference node", metric, "gained", "rel L2 of outputs", "weights"]
    return [
        "",
        head,
        table(cols, body),
        f"to leave them in float: onnxopt quantize ... --exclude-nodes {names}",
    ]


def _render_steps(st: dict) -> list[str]:
    rows = [[s["index"], s["key"], "exact" if s["exact"] else "lossy", s["rel_l2"], s["rel_l2_total"], s["problem"] or "ok"] for s in st["steps"]]
    lines = [table(["step", "pass", "kind", "rel L2 (step)", "rel L2 (total)", "check"], rows)]
    c = st["culprit"]
    lines.append(f"pinned: step {c['index']} '{c['key']}': {st['reason']}" if c else st["reason"])
    return lines


def _render_ort(o: dict) -> list[str]:
    lines = [table(["level", "worst rel L2 vs disable"], [[k, v] for k, v in o["levels"].items()]), o["reason"]]
    if o["optimizer"] and o["confirmed"]:
        lines.append(f"fix: InferenceSession(..., disabled_optimizers=['{o['optimizer']}']) keeps the other optimizations (onnxruntime {o['version']})")
    return lines


def _render_profile(p: dict) -> list[str]:
    rows = [[r["op"], r["reference_kernels"], r["reference_ms"], r["candidate_kernels"], r["candidate_ms"], r["added_ms"]] for r in p["per_op"][:12]]
    ratio = p["ratio"]
    lines = [
        "",
        f"kernel time per run: reference {fmt(p['reference']['total_ms'])} ms, candidate {fmt(p['candidate']['total_ms'])} ms"
        + (f" ({ratio:.2f}x)" if ratio else ""),
    ]
    lines.append(table(["op", "ref kernels", "ref ms", "cand kernels", "cand ms", "added ms"], rows))
    lines += [f"why: {e}" for e in p["explanations"]] or ["why: no slowdown pattern found (Q/DQ, integer kernels, Casts, provider fallbacks)"]
    return lines


def render_diagnosis(rep: dict, top: int = 5) -> str:
    from ..bench.environment import isa_summary

    lines: list[str] = []
    if "steps" in rep:
        lines += _render_steps(rep["steps"])
    if "ort" in rep:
        lines += _render_ort(rep["ort"])
    if "fp16" in rep:
        lines.append(rep["fp16"]["reason"])
    if "layerwise" in rep:
        if lines:
            lines += ["", "inside the pinned step:"]
        lines += _render_layerwise(rep["layerwise"], top)
        lines += _render_sensitive(rep.get("sensitive", []))
    if "profile" in rep:
        lines += _render_profile(rep["profile"])
    lines.append(f"CPU instruction sets: {isa_summary(rep['cpu_isa'])}")
    return "\n".join(lines)


@click.command("diagnose")
@click.argument("reference", type=click.Path())
@click.argument("candidate", type=click.Path(), required=False)
@data_option()
@shape_option
@click.option("--recipe", default=None, help="Run this recipe (bundled name or TOML) on REFERENCE step by step and pin the step that breaks it.")
@click.option("--ort-optimizers", is_flag=True, help="Bisect ONNX Runtime's optimization levels and graph optimizers on REFERENCE.")
@click.option("--fp16", is_flag=True, help="Find the first node whose FP16 conversion takes REFERENCE's outputs out (--threshold, default 1e-2).")
@click.option("--profile", is_flag=True, help="Also profile both models with ONNX Runtime's profiler and explain the time difference.")
@click.option(
    "--threshold",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Relative L2 past which a tensor diverges (default 1e-4, the exact-transform rule; 1e-2 with --fp16).",
)
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, help="Nodes listed by error added.")
@click.option("--limit", type=click.IntRange(min=1), default=64, show_default=True, help="Samples of DATA compared.")
@metric_option(
    help="QDQ candidate: the score of the outputs nodes are ranked by when left in float (default: agreement for [N,C] scores, else cosine)."
)
@provider_option
@json_option
@report_option
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Draw the error per node (log scale) and the op-time diff to this PNG/SVG/PDF."
)
def command(reference, candidate, data, shapes, recipe, ort_optimizers, fp16, profile, threshold, top, limit, metric, provider, as_json, report_path,
            plot_path):
    """Explain a difference between models.  With REFERENCE and CANDIDATE: match their
    tensors (by name, through Q/DQ pairs, renames by structure), compare every matched
    tensor on the same inputs and name the first diverging node and the nodes that add the
    most error; for a QDQ candidate, also the nodes whose leaving in float helps its
    outputs most (--metric); --profile adds ONNX Runtime's kernel times and why the candidate is slower.
    With --recipe R: run R on REFERENCE step by step, pin the step that breaks it and
    compare inside it.  --ort-optimizers and --fp16 bisect ONNX Runtime's optimizers and an
    FP16 conversion.  Never writes a model.

    Example: onnxopt diagnose model.onnx model.int8.onnx --data test.npz --plot err.png
    """
    from ..diagnose.api import DiagnoseConfig, diagnose
    from .outputs import check_outputs

    inputs = [p for p in (reference, candidate) if p]
    for extra in (report_path, plot_path):
        if extra:  # the same guards as -o: never an input, never a folder, writable
            check_outputs(extra, inputs)
    if report_path and plot_path:
        from pathlib import Path

        from ..errors import UsageError

        if Path(report_path).resolve() == Path(plot_path).resolve():
            raise UsageError("--report and --plot must differ", plot_path)
    if plot_path:
        from ..bench.plot import check_plot_path
        from ..plotting import require_matplotlib

        check_plot_path(plot_path)
        require_matplotlib()
    cfg = DiagnoseConfig(threshold=threshold, top=top, limit=limit, provider=provider, profile=profile, metric=metric)
    result = diagnose(reference, candidate, data, shapes=shapes_dict(shapes), recipe=recipe, ort_optimizers=ort_optimizers, fp16=fp16, config=cfg)
    rep = result.to_dict()
    if report_path:
        from ..core.result import Result

        Result(None, rep, True).save_report(report_path)  # no model: only the JSON report
    if plot_path:
        from ..diagnose.plot import plot_diagnosis

        plot_diagnosis(rep, plot_path)
    if as_json:
        echo_json(rep)
        return
    click.echo(render_diagnosis(rep, top))
    for path in (report_path, plot_path):
        if path:
            click.echo(f"wrote {path}")
