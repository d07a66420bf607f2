"""``onnxopt tune MODEL -o OUT``: the fastest verified session options, carried in the model."""

from __future__ import annotations

import click

from ..errors import UsageError
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
    from ..render import table

    body = []
    for r in report["rows"]:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x [{r['ci95'][0]:.2f},{r['ci95'][1]:.2f}]"
        body.append([r["describe"], r["stage"], r["status"], ratio, "-" if r["latency_ms"] is None else f"{r['latency_ms']:.3f}", r["reason"]])
    head = (
        f"provider {report['provider']}, {report['cores']} cores, branch width {report['branch_width']}, inputs "
        f"{report['feed_shapes']}; defaults {report['default_latency_ms'] or 0:.3f} ms"
    )
    return "\n".join([head, table(["options", "stage", "status", "speed vs defaults [95% CI]", "latency ms", "reason"], body)])


@click.command("tune")
@click.argument("model", type=click.Path())
@output_option()
@provider_option
@data_option()
@shape_option
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Batch size of the timing feed (default: the model's, 1 when symbolic).")
@click.option(
    "--time-budget",
    "duration",
    type=click.FloatRange(min=0, min_open=True),
    default=3.0,
    show_default=True,
    help="Seconds per timed stage (two stages and a confirmation run).",
)
@click.option("--max-threads", type=click.IntRange(min=1), default=None, help="Most intra-op threads to try (default: the cores of this machine).")
@click.option("--intra-op-threads", type=int, default=None, help="No search: carry these intra-op threads (1 .. cores), with the other given options.")
@click.option("--inter-op-threads", type=int, default=None, help="No search: inter-op threads (1 .. cores; used by --execution-mode parallel).")
@click.option("--execution-mode", default=None, help="No search: sequential | parallel.")
@click.option("--optimization-level", default=None, help="No search: disable | basic | extended | all.")
@click.option("--spinning/--no-spinning", "spinning", default=None, help="No search: whether idle pool threads spin.")
@report_option
@json_option
def command(model, output, shapes, intra_op_threads, inter_op_threads, execution_mode, optimization_level, spinning, report_path, as_json, **options):
    """Search ONNX Runtime session options for MODEL on this machine (intra-op threads,
    parallel execution of independent branches, optimization level, spinning), each timed
    interleaved against the defaults with its outputs checked unchanged, and write MODEL with
    the winner carried in its metadata: ONNX Runtime applies it when
    ORT_LOAD_CONFIG_FROM_MODEL=1, onnxopt.session() and bench always.  The defaults are kept
    unless a win of 3% is confirmed in a fresh run.  Any of --intra-op-threads,
    --inter-op-threads, --execution-mode, --optimization-level, --spinning/--no-spinning
    skips the search: the given options (the rest ORT's defaults) are checked, timed
    against the defaults and carried.

    Example: onnxopt tune model.onnx -o model.tuned.onnx --data sample.npz
    """
    from ..serving.tune import tune

    check_outputs(output, [model], report_path)
    for flag, v in (("--intra-op-threads", intra_op_threads), ("--inter-op-threads", inter_op_threads)):
        if v is not None and v < 1:  # 0 means ORT's default in SessionConfig: leave the flag out for that
            raise UsageError(f"{flag} must be >= 1 (leave it out for onnxruntime's default), got {v}")
    given = {
        k: v
        for k, v in (
            ("intra_op_threads", intra_op_threads),
            ("inter_op_threads", inter_op_threads),
            ("execution_mode", execution_mode),
            ("optimization_level", optimization_level),
            ("allow_spinning", spinning),
        )
        if v is not None
    }
    result = tune(model, shapes=shapes_dict(shapes), options=given or None, **options)
    if not write_result(result, output, inputs=[model], report_path=report_path, as_json=as_json):
        return
    rep = result.report
    click.echo(render_tune(rep))
    for note in rep["notes"]:
        click.echo(f"note: {note}")
    won = any(r["status"] == "chosen" for r in rep["rows"])
    ratio = f" ({rep['confirm_ratio']:.2f}x vs defaults, confirmed)" if won else " (the defaults: nothing won by 3% in a confirmed run)"
    click.echo(f"carried options: {rep['chosen_describe']}{ratio}")
    click.echo(f"wrote {output}")
