"""``onnxopt demo``: the main job on the bundled models, with a summary table."""

from __future__ import annotations

import click

from ..render import table

__all__ = ["command"]


@click.command("demo")
@click.option("--models", "models_dir", type=click.Path(file_okay=False), default=None, help="Folder of the bundled models (default: the repo's models/).")
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), default="onnxopt-demo", show_default=True, help="Where the demo writes its models and reports."
)
@click.option("--quick", is_flag=True, help="Fewer timing runs (for CI smoke tests).")
def command(models_dir, out_dir, quick):
    """Inspect, simplify, verify, quantize, prune, ensemble, adapt, optimize and bench the
    bundled digits models, printing what each step did."""
    from ..demo import run_demo

    result = run_demo(models_dir, out_dir, quick=quick)
    rep = result.report
    for title, text in rep["sections"]:
        click.echo(f"\n== {title} ==\n{text}")
    rows = [[r["step"], "ok" if r["ok"] else "FAIL", r["seconds"], r.get("result", "")] for r in rep["rows"]]
    click.echo("\n== summary ==")
    click.echo(table(["step", "", "s", "result"], rows))
    click.echo(f"\noutputs in {rep['out']}/")
    if rep["failures"]:
        for f in rep["failures"]:
            click.echo(f"error: demo step {f}", err=True)
        raise SystemExit(1)
