"""Option groups shared by several commands, defined once and stacked as decorators."""

from __future__ import annotations

import click

from .types import ShapeSpec

__all__ = [
    "output_option",
    "data_option",
    "calibration_option",
    "shape_option",
    "fix_shapes_option",
    "provider_option",
    "budget_options",
    "report_option",
    "shapes_dict",
    "json_option",
    "metric_option",
]


def _stack(*decorators):
    def apply(f):
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


def output_option(required: bool = True, help: str = "Output model path (written atomically; never an input model)."):
    return click.option("-o", "--output", "output", type=click.Path(dir_okay=False), required=required, help=help)


def data_option(name: str = "--data", help: str = "DATA: .npz keyed by input names (first axis = samples) or a folder of .npz feeds; optional 'labels'."):
    return click.option(name, type=click.Path(), default=None, help=help)


calibration_option = click.option("--calibration", type=click.Path(), default=None, help="Calibration DATA (.npz or folder of .npz).")

shape_option = click.option("--shape", "shapes", type=ShapeSpec(), multiple=True, help="Value for symbolic input dims, NAME:D1,D2,... (repeatable; default 1).")

fix_shapes_option = click.option(
    "--fix-shapes",
    "fix_shapes",
    type=ShapeSpec(),
    multiple=True,
    help=(
        "Make input NAME static with dims D1,D2,... (repeatable). Without it, dynamic input/output dims stay dynamic "
        "and a step that fixes one fails verification."
    ),
)

provider_option = click.option(
    "--provider", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True, help="ONNX Runtime execution provider."
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")

report_option = click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None, help="Also write the report as JSON to this file.")


def metric_option(help: str = "Accuracy metric (default: top1 with labels, agreement for [N,C] scores, else cosine)."):
    return click.option("--metric", type=click.Choice(["top1", "agreement", "cosine", "rel-l2"]), default=None, help=help)


def budget_options(f):
    return _stack(
        click.option("--eval", "eval_data", type=click.Path(), default=None, help="Evaluation DATA (with 'labels' for top1)."),
        click.option("--max-accuracy-drop", type=float, default=None, help="Allowed loss in points of --metric against the input model."),
        metric_option(),
    )(f)


def shapes_dict(shapes) -> dict | None:
    return {name: dims for name, dims in shapes} if shapes else None
