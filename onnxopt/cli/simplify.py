"""``onnxopt simplify MODEL -o OUT``."""

from __future__ import annotations

import click

from ..render import human_bytes, table
from .options import (
    data_option,
    fix_shapes_option,
    json_option,
    output_option,
    provider_option,
    report_option,
    shape_option,
    shapes_dict,
)
from .outputs import check_outputs, write_result

__all__ = ["command"]


@click.command("simplify")
@click.argument("model", type=click.Path())
@output_option()
@data_option()
@shape_option
@fix_shapes_option
@provider_option
@click.option("--no-onnxsim", is_flag=True, help="Use only onnxopt's own passes.")
@click.option("--external-data", is_flag=True, help="Save weights to an external-data file (automatic over 2 GB).")
@json_option
@report_option
def command(model, output, data, shapes, fix_shapes, provider, no_onnxsim, external_data, as_json, report_path):
    """Fold constants, turn Constant nodes into initializers, drop dead nodes and duplicate
    weights.  The result is verified against MODEL before it is written.

    Example: onnxopt simplify model.onnx -o model.sim.onnx
    """
    from ..simplify.api import simplify

    check_outputs(output, [model], report_path)
    result = simplify(model, data=data, shapes=shapes_dict(shapes), provider=provider, use_onnxsim=not no_onnxsim, fix_shapes=shapes_dict(fix_shapes))
    if not write_result(result, output, inputs=[model], report_path=report_path, as_json=as_json, external_data=external_data):
        return
    step = result.report["steps"][-1]
    before, after = result.report["before"], result.report["after"]
    rows = [[k, before[k], after[k]] for k in ("nodes", "initializers", "params")]
    rows.append(["bytes", human_bytes(before["bytes"]), human_bytes(after["bytes"])])
    click.echo(table(["", "before", "after"], rows))
    comp = step["verification"]["comparison"]
    worst = max((o["rel_l2"] for o in comp["outputs"]), default=0.0)
    click.echo(f"engine: {step['counts'].get('engine')}; verified on {comp['data']}: worst relative L2 {worst:.2e}")
    for note in step["notes"]:
        click.echo(f"note: {note}")
    click.echo(f"wrote {output}")
