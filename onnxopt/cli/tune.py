"""``onnxopt tune MODEL -o OUT``: the fastest verified session options, carried in the model."""

from __future__ import annotations

import click

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

__all__ = ["command", "render_tune"]


def render_tune(report: dict) -> str:
    """The search table of a ``tune`` report."""
    from .render import table

    body = []
    for r in report["rows"]:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x [{r['ci95'][0]:.2f},{r['ci95'][1]:.2f}]"
        body.append([r["describe"], r["stage"], r["status"], ratio, "-" if r["latency_ms"] is None else f"{r['latency_ms']:.3f}", r["reason"]])
    head = f"provider {report['provider']}, {report['cores']} cores, branch width {report['branch_width']}, inputs {report['feed_shapes']}; defaults {report['default_latency_ms'] or 0:.3f} ms"
    return "\n".join([head, table(["options", "stage", "status", "speed vs defaults [95% CI]", "latency ms", "reason"], body)])


@click.command("tune")
@click.argument("model", type=click.Path())
@output_option()
@provider_option
@data_option()
@shape_option
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Batch size of the timing feed (default: the model's, 1 when symbolic).")
@click.option("--time-budget", "duration", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True, help="Seconds per timed stage (two stages and a confirmation run).")
@click.option("--max-threads", type=click.IntRange(min=1), default=None, help="Most intra-op threads to try (default: the cores of this machine).")
@report_option
@json_option
def command(model, output, provider, data, shapes, batch, duration, max_threads, report_path, as_json):
    """Search ONNX Runtime session options for MODEL on this machine (intra-op threads,
    parallel execution of independent branches, optimization level, spinning), each timed
    interleaved against the defaults with its outputs checked unchanged, and write MODEL with
    the winner carried in its metadata: ONNX Runtime applies it when
    ORT_LOAD_CONFIG_FROM_MODEL=1, onnxopt.session() and bench always.  The defaults are kept
    unless a win of 3% is confirmed in a fresh run.

    Example: onnxopt tune model.onnx -o model.tuned.onnx --data sample.npz
    """
    from ..serving.tune import tune

    check_outputs(output, [model], report_path)
    result = tune(model, provider=provider, data=data, shapes=shapes_dict(shapes), batch=batch, duration=duration, max_threads=max_threads)
    if not write_result(result, output, inputs=[model], report_path=report_path, as_json=as_json):
        return
    rep = result.report
    click.echo(render_tune(rep))
    for note in rep["notes"]:
        click.echo(f"note: {note}")
    ratio = f" ({rep['confirm_ratio']:.2f}x vs defaults, confirmed)" if rep["chosen"] != {} and rep["confirm_ratio"] and rep["confirm_ratio"] >= 1 else ""
    click.echo(f"carried options: {rep['chosen_describe']}{ratio}")
    click.echo(f"wrote {output}")
