"""``onnxopt adapt MODEL -o OUT --data DATA``."""

from __future__ import annotations

import click

from ..render import table
from .options import json_option, output_option, provider_option, report_option
from .outputs import check_outputs, write_result
from .types import ClassNames

__all__ = ["command"]




def _pct(v) -> str:
    return "-" if v is None else f"{v:.2f}%"


@click.command("adapt")
@click.argument("model", type=click.Path())
@output_option()
@click.option("--data", required=True, type=click.Path(), help="Labelled DATA (.npz or folder of .npz) with a 'labels' array: the new task.")
@click.option("--features", default=None, metavar="TENSOR", help="Cut at this tensor (default: the input of the last Gemm/MatMul before the output).")
@click.option(
    "--pool",
    type=click.Choice(["mean", "max", "flatten"]),
    default="mean",
    show_default=True,
    help="How spatial features [N,C,...] become [N,C]: GlobalAveragePool, GlobalMaxPool, or Flatten only.",
)
@click.option(
    "--head",
    type=click.Choice(["logistic", "linear"]),
    default="logistic",
    show_default=True,
    help="Multinomial logistic regression, or closed-form ridge on one-hot targets.",
)
@click.option("--classes", type=click.IntRange(min=1), default=None, help="Number of classes K (labels in [0, K)); default max(label)+1.")
@click.option("--l2", type=float, default=None, help="L2 penalty; default chosen by stratified k-fold cross-validation on the training split.")
@click.option(
    "--holdout",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="Fraction of each class kept out of the fit to measure accuracy (0: fit on all).",
)
@click.option("--no-standardize", is_flag=True, help="Fit on raw features (default: standardized, folded into the head's weights).")
@click.option("--class-names", type=ClassNames(), default=None, help="Class names stored in the model's metadata (comma-separated or @FILE).")
@click.option("--softmax/--no-softmax", "softmax", default=None, help="End the head with Softmax (default: as the input model's head did).")
@click.option("--eval", "eval_data", type=click.Path(), default=None, help="Also score the adapted and the input model on this labelled DATA.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the holdout split and the CV folds.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Samples per feature-extraction batch.")
@provider_option
@json_option
@report_option
def command(model, output, data, no_standardize, as_json, report_path, **options):
    """Transfer learning: keep MODEL's feature extractor, fit a new classification head on
    DATA's labels (numpy, no training framework), and write one deployable model.  The cut
    is checked to reproduce MODEL's feature tensor and the new head to match the numpy fit.

    Example: onnxopt adapt digits_cnn04.onnx --data digits_calib.npz -o digits10.onnx
    """
    from ..adapt.api import adapt
    check_outputs(output, [model], report_path)
    result = adapt(model, data, standardize=not no_standardize, **options)
    if not write_result(result, output, inputs=[model], report_path=report_path, as_json=as_json):
        return
    _render(result.report)
    click.echo(f"wrote {output}")


def _render(rep: dict) -> None:
    cut, hd, acc = rep["cut"], rep["head"], rep["accuracy"]
    shape = "[" + ",".join(map(str, cut["feature_shape"])) + "]"
    how = f"input of {cut['auto']['op']} '{cut['auto']['node']}'" if cut["auto"] else "--features"
    pooled = f", {cut['pool']}-pooled to [N,{cut['width']}]" if cut["pool"] else ""
    click.echo(f"features: '{cut['feature']}' {shape} ({how}{pooled}); {cut['nodes_removed']} nodes, {cut['initializers_removed']} initializers removed")
    src = f"{hd['cv']['folds']}-fold CV" if hd["cv"] else "given"
    solver = hd["solver"].get("solver")
    its = hd["solver"].get("iterations")
    click.echo(
        f"head: {hd['kind']}, {hd['classes']} classes, l2 {hd['l2']:g} ({src}), "
        f"{'standardized' if hd['standardize'] else 'raw features'}, "
        f"{solver}{f' {its} iterations' if its is not None else ''}{', softmax' if hd['softmax'] else ''}"
    )
    if hd["cv"]:
        rows = [[f"{s['l2']:g}" + (" *" if s["l2"] == hd["l2"] else ""), f"{s['accuracy']:.2f}", f"{s['loss']:.4f}"] for s in hd["cv"]["scores"]]
        click.echo(table(["l2", "cv accuracy %", "cv loss"], rows))
    rows = [["adapted, train", rep["train_samples"], _pct(acc["train"])]]
    if acc["holdout"] is not None:
        rows.append(["adapted, holdout", rep["holdout_samples"], _pct(acc["holdout"])])
    orig = acc["original"]
    if orig:
        rows.append([f"input model ({orig['classes']} classes), {orig['split']}", orig["samples"], _pct(orig["accuracy"])])
        if orig.get("in_label_space"):
            sub = orig["in_label_space"]
            rows.append([f"input model, labels < {orig['classes']} only", sub["samples"], _pct(sub["accuracy"])])
    ev = rep.get("evaluation")
    if ev:
        rows.append([f"adapted on {ev['data']}", ev["adapted"]["samples"], _pct(ev["adapted"]["accuracy"])])
        rows.append([f"input model on {ev['data']}", ev["original"]["samples"], _pct(ev["original"]["accuracy"])])
        if ev["original"].get("in_label_space"):
            sub = ev["original"]["in_label_space"]
            rows.append([f"input model on {ev['data']}, labels < {ev['original']['classes']}", sub["samples"], _pct(sub["accuracy"])])
    click.echo(table(["accuracy", "samples", "top-1"], rows))
    secs = rep["seconds"]
    click.echo(f"time: features {secs['extract']:.2f} s, fit {secs['fit']:.2f} s, total {secs['total']:.2f} s")
    ver = rep["verification"]
    f, h = ver["features"], ver["head"]["outputs"][0]
    same = "bit for bit" if f["bitwise_equal"] else f"max abs {f['max_abs']:.2e}"
    click.echo(
        f"verified: cut reproduces '{f['tensor']}' {same} on {f['samples']} samples; head matches numpy (max abs {h['max_abs']:.2e}); checker + onnxruntime ok"
    )
    for note in rep["notes"]:
        click.echo(f"note: {note}")
