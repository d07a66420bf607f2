"""``onnxopt optimize MODEL -o OUT``: the fastest verified model for a target."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError
from ..render import human_bytes
from .options import (
    budget_options,
    calibration_option,
    fix_shapes_option,
    json_option,
    output_option,
    report_option,
    shape_option,
    shapes_dict,
)
from .outputs import check_outputs, write_result

__all__ = ["command"]


@click.command("optimize")
@click.argument("model", type=click.Path())
@output_option()
@click.option(
    "--target",
    type=click.Choice(["cpu", "cuda"]),
    default=None,
    help="Deployment target (default: the recipe's, else cpu).",
)
@click.option(
    "--recipe",
    default=None,
    help="Bundled recipe name (cpu, cuda, cpu-int8, edge-small, ...) or a TOML file; default: the target's.",
)
@calibration_option
@budget_options
@shape_option
@fix_shapes_option
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=None,
    help="Batch size for timing (default: the recipe's, 1).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=None,
    help="ONNX Runtime intra-op threads for timing (0: ORT's default).",
)
@click.option(
    "--time-budget",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Seconds per timing round (default: the recipe's, 8).",
)
@click.option(
    "--objective",
    type=click.Choice(["latency", "cold-start", "size"]),
    default=None,
    help="What the choice weighs: steady-state latency, cold start (session creation + first run, fresh processes) or size (default: the recipe's, latency).",
)
@click.option(
    "--session-options/--no-session-options",
    "session_options",
    default=None,
    help="Search ONNX Runtime session options for the chosen model and carry the winner in it (default: the recipe's, on).",
)
@click.option(
    "--ort-format",
    "ort_format",
    is_flag=True,
    default=False,
    help="Also write ONNX Runtime's optimized graph of the written model in its .ort format beside OUTPUT (OUTPUT with the suffix .ort), verified against it.",
)
@report_option
@json_option
def command(model, output, shapes, fix_shapes, ort_format, report_path, as_json, **options):
    """Build candidates from MODEL (simplified FP32, INT8 dynamic, INT8 static, pruned,
    FP16 -- as the recipe lists), verify each, time each against MODEL interleaved on the
    target, and write the fastest one within the accuracy budget.  The written model is
    never slower than MODEL (ratio >= 0.97 in a confirmation run); when nothing beats it,
    the simplified FP32 model is written and the decision table says so.

    The choice depends on timing (close candidates may swap between runs); the bytes written
    for a given choice are deterministic.

    Example: onnxopt optimize model.onnx -o model.opt.onnx --calibration calib.npz --eval test.npz --max-accuracy-drop 1
    """
    from ..optimize.api import optimize, render_decision_table
    from ..serving.ortformat import ort_format_path

    ort_path = ort_format_path(output) if ort_format else None
    if ort_path is not None and ort_path == Path(output):
        raise UsageError("with --ort-format, -o names the ONNX model (e.g. model.opt.onnx); the .ort file is written beside it", output)
    check_outputs(output, [model], report_path, ort_path)
    result = optimize(model, shapes=shapes_dict(shapes), fix_shapes=shapes_dict(fix_shapes), **options)
    packed = _ort_format(result) if ort_path is not None else None
    shown = write_result(result, output, inputs=[model], report_path=report_path, as_json=as_json)
    if packed is not None:
        packed.save(ort_path, guard=[model])
    if not shown:
        return
    rep = result.report
    click.echo(
        f"optimize {model} for {rep['target']} with recipe {rep['recipe']} ({rep['recipe_file']})"
    )
    click.echo(render_decision_table(rep))
    before, after = rep["before"], rep["after"]
    click.echo(
        f"model: nodes {before['nodes']} -> {after['nodes']}, weights {human_bytes(before['bytes'])} -> "
        f"{human_bytes(after['bytes'])}; {rep['seconds']['total']:.1f} s"
    )
    for note in rep.get("notes", []):
        click.echo(f"note: {note}")
    click.echo(f"wrote {output}")
    if packed is not None:
        r = packed.report
        click.echo(
            f"wrote {ort_path} (ONNX Runtime .ort format, {human_bytes(r['bytes'])}, optimized at {r['optimized_at']}; "
            f"outputs equal to {output}'s on {r['feeds']} feeds)"
        )


def _ort_format(result):
    """The written model in ONNX Runtime's .ort format, verified; its report block joins the
    optimize report (``ort_format``)."""
    from ..serving.ortformat import ort_format

    packed = ort_format(result.model, result.report["provider"])
    result.report["ort_format"] = dict(packed.report)
    return packed
