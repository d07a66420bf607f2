"""``onnxopt prune MODEL -o OUT --method magnitude|channels|blocks``."""

from __future__ import annotations

import click

from ..render import human_bytes, table
from .options import (
    budget_options,
    calibration_option,
    json_option,
    output_option,
    provider_option,
    report_option,
    shape_option,
    shapes_dict,
)
from .outputs import check_outputs, write_result
from .types import FloatList, Fraction, LayerRatio

__all__ = ["command", "render"]


@click.command("prune")
@click.argument("model", type=click.Path())
@output_option()
@click.option(
    "--method",
    type=click.Choice(["magnitude", "channels", "blocks"]),
    default="channels",
    show_default=True,
    help="magnitude: zero small weights; channels: remove output channels; blocks: remove residual blocks.",
)
@click.option("--sparsity", type=Fraction(), default=None, help="magnitude: fraction of weights zeroed (default 0.5, or searched with --max-accuracy-drop).")
@click.option(
    "--scope",
    type=click.Choice(["global", "layer"]),
    default="global",
    show_default=True,
    help="magnitude: one threshold for all weights, or the same fraction per layer.",
)
@click.option("--min-params", type=click.IntRange(min=0), default=1024, show_default=True, help="magnitude: skip weights with fewer elements.")
@click.option("--include-first-last", is_flag=True, help="magnitude: also prune the first and last weight layers.")
@click.option("--ratio", type=Fraction(), default=None, help="channels: fraction of each group's channels removed (default 0.3, or searched).")
@click.option(
    "--layer-ratio",
    "layer_ratios",
    type=LayerRatio(),
    multiple=True,
    help="channels: ratio for one layer (node, output or weight name), repeatable; overrides --ratio.",
)
@click.option(
    "--importance",
    type=click.Choice(["l1", "activation"]),
    default="l1",
    show_default=True,
    help="channels: weight L1 norm (x BatchNorm scale), or mean |activation| on --calibration.",
)
@click.option(
    "--align", type=click.IntRange(min=1), default=8, show_default=True, help="channels: round kept channel counts to multiples of this (1: exact ratio)."
)
@click.option("--no-reconstruct", is_flag=True, help="channels: do not refit the next layers on --calibration.")
@calibration_option
@click.option("--blocks", type=click.IntRange(min=1), default=None, help="blocks: number of residual blocks removed (default 1, or searched).")
@budget_options
@click.option("--grid", type=FloatList(), default=None, help="Values tried by the budget search, e.g. 0.1,0.2,0.3.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Draw the budget search curve to this PNG.")
@click.option("--timing-runs", type=click.IntRange(min=0), default=30, show_default=True, help="Interleaved latency runs against MODEL (0: skip timing).")
@click.option("--timing-threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads for the latency runs (default: ORT's).")
@shape_option
@provider_option
@json_option
@report_option
def command(model, output, include_first_last, layer_ratios, no_reconstruct, shapes, as_json, report_path, **options):
    """Prune MODEL: zero the smallest weights (magnitude), remove whole output channels by
    dependency group and rewire the graph (channels; with --calibration the next layers
    are refitted by least squares to match MODEL), or remove residual blocks (blocks).
    The result is verified against MODEL (checker, ONNX Runtime, same output shapes,
    accuracy metric) before it is written.

    With --max-accuracy-drop X --eval DATA and no --sparsity/--ratio/--blocks, the largest
    value within the budget is searched and the curve reported (--plot draws it).

    Example: onnxopt prune model.onnx -o small.onnx --method channels --ratio 0.5 --calibration calib.npz
    """
    from ..prune.api import prune

    check_outputs(output, [model], report_path, options["plot"])
    flags = {"skip_first_last": not include_first_last, "ratios": dict(layer_ratios) or None, "reconstruct": not no_reconstruct}
    result = prune(model, shapes=shapes_dict(shapes), **flags, **options)
    if not write_result(result, output, inputs=[model], report_path=report_path, as_json=as_json):
        return
    render(result.report)
    click.echo(f"wrote {output}")


def render(rep: dict) -> None:
    """The before/after table, what the method did, the budget search, verification, notes."""
    _render_figures(rep)
    d = rep.get("details", {})
    {"magnitude": _render_magnitude, "channels": _render_channels}.get(rep["method"], _render_blocks)(rep, d)
    search = rep.get("search")
    if search:
        click.echo(f"\nbudget search ({search['metric']}, max drop {search['max_drop']:g}; chosen {search['chosen']}):")
        rows = [
            [p["value"], _f(p["score"]), _f(p["drop"]), p["params"], p["flops"], _x(p["speedup"]), p["within"] if p["error"] is None else p["error"][:40]]
            for p in search["curve"]
        ]
        click.echo(table(["value", "score", "drop", "params", "FLOPs", "speedup", "within"], rows))
    m = rep.get("metric")
    if m:
        click.echo(f"\nverified: {m['name']} {m['score']:.2f} (input {m['reference']:.2f}, drop {m['drop']:.2f})")
    for note in rep.get("notes", []):
        click.echo(f"note: {note}")
    if rep.get("plot"):
        click.echo(f"plot: {rep['plot']}")


def _render_figures(rep: dict) -> None:
    before, after = rep["figures"]["before"], rep["figures"]["after"]
    rows = [
        ["parameters", before["params"], after["params"], _ratio(after["params"], before["params"])],
        ["FLOPs", before["flops"], after["flops"], _ratio(after["flops"], before["flops"])],
        ["file size", human_bytes(before["file_bytes"]), human_bytes(after["file_bytes"]), _ratio(after["file_bytes"], before["file_bytes"])],
    ]
    if "zip_bytes" in before:
        rows.append(["zipped size", human_bytes(before["zip_bytes"]), human_bytes(after["zip_bytes"]), _ratio(after["zip_bytes"], before["zip_bytes"])])
    lat = rep.get("latency")
    if lat:
        change = f"{lat['speedup']:.2f}x faster [{lat['ci95'][0]:.2f}, {lat['ci95'][1]:.2f}]"
        rows.append(["latency (ms, median)", f"{lat['base_ms']:.3g}", f"{lat['ms']:.3g}", change])
    click.echo(table(["", "before", "after", "change"], rows))


def _render_magnitude(rep: dict, d: dict) -> None:
    click.echo(f"\nsparsity {rep.get('value')} ({d.get('scope')}):")
    rows = [[r["initializer"], r["layer"], r["params"], f"{100 * r['sparsity']:.1f}%"] for r in d.get("initializers", [])]
    click.echo(table(["initializer", "layer", "params", "sparsity"], rows))
    for s in d.get("skipped", []):
        click.echo(f"skipped {s['initializer']}: {s['reason']}")


def _render_channels(rep: dict, d: dict) -> None:
    g = d.get("groups", {})
    value = rep.get("value")
    click.echo(
        f"\n{'per-layer ratios' if value is None else f'ratio {value}'}, importance {d.get('importance')}: "
        f"{len(g.get('pruned', []))} channel group(s) pruned, {len(g.get('intact', []))} left intact"
    )
    if g.get("pruned"):
        click.echo(table(["group", "channels", "kept"], [[p["group"], p["channels"], p["kept"]] for p in g["pruned"]]))
    rec = d.get("reconstruction")
    if rec:
        click.echo("\nreconstruction (relative output error vs the input model):")
        rows = [[r["layer"], r["rows"], f"{r['error_before']:.3f}", f"{r['error_after']:.3f}"] for r in rec]
        click.echo(table(["layer", "rows", "before", "after"], rows))


def _render_blocks(rep: dict, d: dict) -> None:
    ranking = d.get("ranking") or []
    if ranking:
        click.echo("\nresidual blocks, least harmful first (metric when removed alone):")
        rows = [[e["block"], e["params"], f"{e['score']:.2f}", f"{e['drop']:.2f}"] for e in ranking]
        click.echo(table(["block", "params", "score", "drop"], rows))
    click.echo(f"removed: {', '.join(d.get('removed', [])) or 'none'}")


def _ratio(a, b) -> str:
    return f"x{a / b:.3f}" if b else "-"


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"
