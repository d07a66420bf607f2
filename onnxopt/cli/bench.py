"""``onnxopt bench MODEL [MODEL ...]``."""

from __future__ import annotations

from pathlib import Path

import click

from .options import data_option, provider_option, shape_option, shapes_dict
from .types import IntList

__all__ = ["command"]


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path())
@provider_option
@data_option()
@shape_option
@click.option("--batch", "batches", type=IntList(), default=None, help="Batch sizes to sweep, e.g. 1,8,32 (default: each model's own batch, 1 when symbolic).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads per session (default: onnxruntime's, one per physical core).")
@click.option("--runs", type=click.IntRange(min=1), default=None, help="Timed runs per model and batch [default: 200, capped at 10 s per batch].")
@click.option(
    "--duration", type=click.FloatRange(min=0, min_open=True), default=None, help="Seconds of timed runs per batch size (with --runs: whichever ends first)."
)
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed runs per model at every input shape before timing.")
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=1, show_default=True, help="Worker threads sharing one session for the throughput measurement."
)
@click.option("--io-binding/--no-io-binding", "io_binding", default=None, help="Bind inputs/outputs on the device (default: on with CUDA, off on CPU).")
@click.option("--baseline", type=click.Path(), default=None, help="Model the ratios are relative to (default: the first MODEL; added if not among them).")
@click.option(
    "--cudnn-conv-algo-search",
    type=click.Choice(["EXHAUSTIVE", "HEURISTIC", "DEFAULT"], case_sensitive=False),
    default=None,
    help="CUDA provider's cuDNN convolution algorithm search.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv", "markdown"]),
    default="table",
    show_default=True,
    help="Report format (printed, or written with -o).",
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the report in --format to this file (atomically); the table is printed."
)
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Write a plot (.png/.svg/.pdf): latency distributions and ratios with CI."
)
@click.option("--no-throughput", is_flag=True, help="Skip the throughput measurement.")
@click.option("--no-accuracy", is_flag=True, help="Skip the accuracy check.")
@click.option(
    "--model-options/--no-model-options",
    "model_options",
    default=True,
    show_default=True,
    help="Build each session with the options its model carries (onnxopt tune), or with onnxruntime's defaults.",
)
@click.option(
    "--cold-start",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Repeats of the cold-start measurement per model (session creation, first run, peak RSS; each in a fresh process).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of synthesized inputs, run order shuffling and the bootstrap.")
def command(models, fmt, output, plot_path, no_throughput, no_accuracy, **options):
    """Benchmark MODELs side by side: session creation, first run, steady-state latency
    percentiles, measured throughput, memory, size and accuracy.  Models run interleaved so
    that machine noise hits all alike; each ratio to the baseline comes with a bootstrap 95%
    confidence interval.  Ctrl-C prints what was measured so far (exit 130).

    Example: onnxopt bench a.onnx b.onnx --data test.npz --batch 1,32 --plot bench.png
    """
    from ..bench.api import bench
    from ..bench.plot import check_plot_path
    from ..bench.report import render
    from ..errors import UsageError
    from ..io import atomic_write_bytes, atomic_write_text, check_output_path

    inputs = list(models) + ([options["baseline"]] if options["baseline"] else [])
    if output:
        check_output_path(output, inputs)
    if plot_path:
        plot_path = check_plot_path(plot_path)
        check_output_path(plot_path, inputs)
    if output and plot_path and Path(output).resolve() == plot_path.resolve():
        raise UsageError("-o and --plot name the same file", output)
    options["shapes"] = shapes_dict(options["shapes"])
    result = bench(list(models), throughput=not no_throughput, accuracy=not no_accuracy, **options)
    report = result.report
    if fmt in ("json", "csv") and not output:
        # stdout carries data for a program, not the table that lists them: tell the user here
        for w in report["warnings"]:
            click.echo(f"warning: {w}", err=True)
    if report["interrupted"]:
        # stdout keeps the format asked for (a pipe expecting JSON gets JSON); with -o the
        # table is printed and nothing is written
        click.echo(render(report, "table" if output else fmt), nl=False)
        click.echo("interrupted: partial results printed; no files written", err=True)
        click.get_current_context().exit(130)
    # render everything before writing anything: a failure leaves no partial set of files
    text = render(report, fmt) if output else None
    figure = result.plot_bytes(plot_path.suffix.lower().lstrip(".")) if plot_path else None
    if output:
        atomic_write_text(output, text)
    if plot_path:
        atomic_write_bytes(plot_path, figure)
    click.echo(render(report, "table" if output else fmt), nl=False)
    if output:
        click.echo(f"wrote {output}")
    if plot_path:
        click.echo(f"wrote {plot_path}")
