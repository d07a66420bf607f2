"""``onnxopt verify A B``: per-output error table; exit 3 when out of tolerance."""

from __future__ import annotations

import click

from ..render import fmt, table
from .options import data_option, json_option, provider_option, shape_option, shapes_dict
from .render import echo_json

__all__ = ["command", "render_comparison"]


def render_comparison(comp: dict) -> str:
    """The table of a ``Comparison.to_dict()``: one row per output."""
    rows = []
    for o in comp["outputs"]:
        top1 = None if o["top1_agreement"] is None else f"{100 * o['top1_agreement']:.2f}%"
        rows.append(
            [
                o["name"],
                "x".join(map(str, o["shape"])) or "scalar",
                o["max_abs"],
                o["mean_abs"],
                o.get("median_abs"),
                o.get("p99_abs"),
                o["rel_l2"],
                o["cosine"],
                top1,
                "yes" if o["ok"] else "NO",
            ]
        )
    text = table(["output", "shape", "max abs", "mean abs", "median abs", "p99 abs", "rel L2", "cosine", "top-1 agree", "ok"], rows)
    notes = [f"note: {o['name']}: {o['note']}" for o in comp["outputs"] if o.get("note")]
    return "\n".join([text, *notes])


@click.command("verify")
@click.argument("model_a", type=click.Path())
@click.argument("model_b", type=click.Path())
@data_option()
@shape_option
@click.option("--atol", type=click.FloatRange(min=0), default=1e-4, show_default=True, help="Absolute tolerance.")
@click.option(
    "--rtol", type=click.FloatRange(min=0), default=1e-3, show_default=True, help="Relative tolerance: each element must satisfy |b - a| <= atol + rtol * |a|."
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Compare on at most this many samples of DATA.")
@provider_option
@json_option
def command(model_a, model_b, data, shapes, atol, rtol, limit, provider, as_json):
    """Run MODEL_A and MODEL_B on the same inputs (DATA, or inputs synthesized from A's input
    types with a fixed seed) and compare their outputs in order: max / mean absolute error,
    relative L2 ||b - a|| / ||a||, mean cosine similarity per sample and, for [N, C] class
    scores, top-1 agreement.  Exits 3 when an output is out of tolerance.

    Example: onnxopt verify model.onnx model.sim.onnx --data test.npz
    """
    from ..errors import VerificationError
    from ..verify import verify

    comp = verify(model_a, model_b, data, shapes=shapes_dict(shapes), atol=atol, rtol=rtol, provider=provider, limit=limit)
    report = comp.to_dict()
    if as_json:
        echo_json(report)
    else:
        click.echo(render_comparison(report))
        click.echo(f"{comp.samples} sample(s) of {comp.source}; tolerance |b - a| <= {fmt(atol)} + {fmt(rtol)} * |a|")
        for other in comp.others:
            click.echo(f"also at {other.source}: {'ok' if other else 'OUT OF TOLERANCE'}, worst relative L2 {other.worst_rel_l2:.2e}")
    if not comp:
        from ..diagnose.hints import diagnose_hint

        bad = [o.name for o in comp.outputs if not o.ok] or [f"{o.name} at {c.source}" for c in comp.others for o in c.outputs if not o.ok]
        raise VerificationError(
            f"{len(bad)} of {len(comp.outputs)} output(s) out of tolerance (atol {atol:g}, rtol {rtol:g}): {', '.join(bad)}"
            + diagnose_hint(model_a, model_b, data=data),
            model_b,
        )
    if not as_json:
        click.echo("ok: all outputs within tolerance")
