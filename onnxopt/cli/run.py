"""``onnxopt run RECIPE MODEL -o OUT``: a recipe's passes, each step verified."""

from __future__ import annotations

import click

from ..render import human_bytes, table
from .options import (
    budget_options,
    calibration_option,
    fix_shapes_option,
    json_option,
    output_option,
    provider_option,
    report_option,
    shape_option,
    shapes_dict,
)
from .outputs import check_outputs, write_result

__all__ = ["command", "render_steps"]


def _verification_cells(step: dict) -> tuple:
    ver = step.get("verification") or {}
    comp = ver.get("comparison") or {}
    worst = max((o["rel_l2"] for o in comp.get("outputs", [])), default=None)
    metric = ver.get("metric")
    text = None
    if metric:
        drop = float(metric["drop"])
        text = f"{metric['name']} {float(metric['score']):.2f} (drop {0.0 if abs(drop) < 5e-3 else drop:.2f})"
    return worst, text


def render_steps(report: dict) -> str:
    """Per-step table of a pipeline report: pass, modified, nodes before/after, verification."""
    rows = []
    for i, s in enumerate(report.get("steps", []), 1):
        worst, metric = _verification_cells(s)
        rows.append(
            [
                i,
                s["name"],
                "yes" if s["modified"] else "no",
                s["before"].get("nodes"),
                s["after"].get("nodes"),
                worst,
                metric,
                round(float(s.get("seconds", 0.0)), 2),
            ]
        )
    return table(["#", "pass", "modified", "nodes before", "nodes after", "worst rel-L2", "metric", "s"], rows)


@click.command("run")
@click.argument("recipe")
@click.argument("model", type=click.Path())
@output_option()
@calibration_option
@budget_options
@shape_option
@fix_shapes_option
@provider_option
@click.option("--external-data", is_flag=True, help="Save weights to an external-data file (automatic over 2 GB).")
@report_option
@json_option
def command(recipe, model, output, shapes, fix_shapes, external_data, report_path, as_json, **options):
    """Apply RECIPE (a bundled recipe name, see 'onnxopt passes', or a TOML file) to MODEL.
    Every step is verified against MODEL before the next one runs (checker, ONNX Runtime,
    outputs within 1e-4 relative L2 for exact passes (1e-3 for fuse-layernorm), --metric within --max-accuracy-drop
    for lossy ones); the first failing step stops the run and nothing is written.

    Example: onnxopt run simplify model.onnx -o model.sim.onnx
    """
    from ..core.runner import run

    check_outputs(output, [model], report_path)
    result = run(recipe, model, shapes=shapes_dict(shapes), fix_shapes=shapes_dict(fix_shapes), **options)
    if not write_result(result, output, inputs=[model], report_path=report_path, as_json=as_json, external_data=external_data):
        return
    rep = result.report
    click.echo(f"recipe {rep['recipe']} ({rep['recipe_file']}) on {model}")
    click.echo(render_steps(rep))
    before, after = rep.get("before", {}), rep.get("after", {})
    if before:
        click.echo(
            f"model: nodes {before['nodes']} -> {after['nodes']}, params {before['params']:,} -> {after['params']:,}, "
            f"weights {human_bytes(before['bytes'])} -> {human_bytes(after['bytes'])}"
        )
    for i, s in enumerate(rep["steps"], 1):
        for note in s.get("notes", []):
            click.echo(f"note: step {i} '{s['name']}': {note}")
    click.echo(f"wrote {output}")
