"""``onnxopt chain M1 M2 [M3 ...] -o OUT [--map OUT_NAME:IN_NAME ...]``."""

from __future__ import annotations

import click

from ..render import fmt, table
from .options import (
    data_option,
    json_option,
    output_option,
    provider_option,
    report_option,
    shape_option,
    shapes_dict,
)
from .outputs import check_outputs, write_result
from .types import NameMap

__all__ = ["command"]


@click.command("chain")
@click.argument("models", nargs=-1, required=True, type=click.Path())
@output_option()
@click.option(
    "--map",
    "pairs",
    type=NameMap(),
    multiple=True,
    help="Connect an output of one stage to an input of the next, OUT_NAME:IN_NAME (repeatable; default: by name).",
)
@data_option(help="DATA for the parity check (inputs of the first stage); default: synthesized inputs.")
@shape_option
@provider_option
@click.option("--external-data", is_flag=True, help="Save weights to an external-data file (automatic over 2 GB).")
@json_option
@report_option
def command(models, output, pairs, data, shapes, provider, external_data, as_json, report_path):
    """Chain N models serially into one .onnx: each stage's outputs feed the next stage.

    Junctions are matched by name (or --map), checked for dtype and shape, and the chained
    model is compared with the stages run one after another (exit 3 on mismatch).

    Example: onnxopt chain preprocess.onnx classifier.onnx -o pipeline.onnx --map pixels:image
    """
    from ..ensemble.api import chain
    check_outputs(output, models, report_path)
    result = chain(list(models), map=list(pairs) or None, data=data, shapes=shapes_dict(shapes), provider=provider)
    if not write_result(result, output, inputs=list(models), report_path=report_path, as_json=as_json, external_data=external_data):
        return
    rep = result.report
    rows = [[j["stage"] - 1, j["from"], j["stage"], j["to"], j["how"], j["dtype"], j["shape"]] for j in rep["junctions"]]
    click.echo(table(["from stage", "output", "to stage", "input", "matched by", "dtype", "shape"], rows))
    for c in rep["conversions"]:
        click.echo(f"converted {c['member']}: opset {c['from']} -> {c['to']}")
    par = rep["parity"]
    worst = max((o["rel_l2"] for o in par["outputs"]), default=0.0)
    click.echo(f"parity vs the stages run one after another on {par['data']} ({par['samples']} samples): worst relative L2 {fmt(worst)}")
    for note in rep["notes"]:
        click.echo(f"note: {note}")
    click.echo(f"wrote {output}")
