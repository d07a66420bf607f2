"""``onnxopt ensemble M1 M2 [M3 ...] -o OUT --fusion mean|weighted|vote|stack``."""

from __future__ import annotations

import json

import click

from ..render import fmt, human_bytes, table
from .options import (
    data_option,
    json_option,
    metric_option,
    provider_option,
    report_option,
    shape_option,
    shapes_dict,
)
from .outputs import check_outputs, write_result
from .types import FloatList, NameMap

__all__ = ["command"]


@click.command("ensemble")
@click.argument("models", nargs=-1, required=True, type=click.Path())
# -o only: --output is the name for picking a member output (see --output below)
@click.option("-o", "output", type=click.Path(dir_okay=False), required=True, help="Output model path (written atomically; never an input model).")
@click.option(
    "--recipe",
    default=None,
    metavar="NAME|FILE",
    help=(
        "Recipe (ensemble-cpu, ensemble-stack, ensemble-vote, ... or a TOML file): settings from its [ensemble] table "
        "(options given here override them), then its [[steps]] on the merged model, each verified."
    ),
)
@click.option(
    "--fusion",
    type=click.Choice(["mean", "weighted", "vote", "stack"]),
    default=None,
    help="How member outputs are combined (default: the recipe's, else mean).",
)
@click.option("--weights", type=FloatList(), default=None, help="Member weights W1,W2,... (weighted: normalised to sum 1; vote: weighted votes).")
@click.option("--fit", "fit_data", type=click.Path(), default=None, help="DATA with 'labels' to fit the weights (weighted) or the head (stack).")
@click.option("--head", type=click.Choice(["logistic", "ridge"]), default=None, help="Stacking head: multinomial logistic regression (default) or ridge.")
@click.option("--l2", type=float, default=None, help="L2 strength of the stacking head (default: 5-fold cross-validation).")
@click.option("--softmax/--no-softmax", default=None, help="Normalise each member's scores with softmax before fusing (default: the recipe's, else no).")
@click.option("--keep-member-outputs/--no-keep-member-outputs", default=None, help="Also expose each member's output (named m<i>/<output>).")
@click.option(
    "--output",
    "output_name",
    metavar="NAME[,NAME...]",
    default=None,
    help="The member output to fuse, when members have several: one NAME for all members, or one per member, comma-separated (default: all, position-wise).",
)
@click.option("--input-map", "input_map", type=NameMap(), multiple=True, help="Rename a member input FROM:TO so members share inputs (repeatable).")
@click.option("--fuse-members/--no-fuse-members", default=None, help="Fuse members of one architecture into one wider network (batched MatMul, grouped Conv).")
@data_option(
    help="DATA for the parity check and the recipe steps' verification (and member vs ensemble accuracy when it has 'labels'); default: synthesized inputs."
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    default=None,
    help="Budget of the recipe's lossy steps: points of --metric against the merged model (default: the recipe's; none: recorded only).",
)
@metric_option(help="Metric of that budget (default: top1 with labels, agreement for [N,C] scores, else cosine).")
@shape_option
@provider_option
@click.option(
    "--parallel/--no-parallel",
    default=True,
    show_default=True,
    help=(
        "Time members run separately vs the merged model run sequentially vs with its branches in parallel, and carry "
        "the parallel session options when they win."
    ),
)
@click.option("--external-data", is_flag=True, help="Save weights to an external-data file (automatic over 2 GB).")
@json_option
@report_option
def command(models, output, fit_data, output_name, input_map, shapes, external_data, as_json, report_path, **options):
    """Fuse N models into one .onnx whose outputs combine theirs.

    The members share one set of inputs; their graphs are namespaced, identical weights are
    stored once, opsets are reconciled, and the fused model is compared with the members run
    separately (exit 3 on mismatch) before anything is written.  With --recipe, the recipe's
    steps then run on the merged model, each verified against it (exit 3 when one fails).

    Examples:

      onnxopt ensemble a.onnx b.onnx c.onnx -o vote.onnx --fusion vote --data test.npz

      onnxopt ensemble a.onnx b.onnx c.onnx -o stack.onnx --fusion stack --fit calib.npz --data test.npz

      onnxopt ensemble ft1.onnx ft2.onnx ft3.onnx -o mean.onnx --fuse-members

      onnxopt ensemble a.onnx b.onnx c.onnx -o cpu.onnx --recipe ensemble-cpu --data test.npz
    """
    from ..ensemble.api import ensemble
    check_outputs(output, models, report_path)
    output_name = output_name.split(",") if output_name and "," in output_name else output_name
    result = ensemble(list(models), fit=fit_data, output=output_name, input_map=dict(input_map) if input_map else None, shapes=shapes_dict(shapes), **options)
    if not write_result(result, output, inputs=list(models), report_path=report_path, as_json=as_json, external_data=external_data):
        return
    render(result.report)
    click.echo(f"wrote {output}")


def render(rep: dict) -> None:
    acc = rep.get("accuracy", {})
    rows = []
    for m in rep["members"]:
        opset = ",".join(f"{d or 'ai.onnx'}:{v}" for d, v in m["opset"].items())
        rows.append([m["label"], opset, ", ".join(m["selected_outputs"]), acc.get("members", {}).get(m["label"])])
    headers = ["member", "opset", "fused output", f"top1 % ({acc.get('samples')} samples)" if acc else "top1 %"]
    click.echo(table(headers, rows))
    fus = rep["fusion"]
    line = f"fusion: {fus['kind']}" + (" (softmax first)" if fus.get("softmax") else "")
    if fus.get("weights") is not None:
        line += "; weights " + ", ".join(f"{w:.4g}" for w in fus["weights"])
    click.echo(line)
    if "fit" in rep:
        f = rep["fit"]
        click.echo(
            f"head: {f['kind']} on {f['features']} features -> {f['classes']} classes, l2 {f['l2']:g}, {f['iterations']} "
            f"iterations ({'converged' if f['converged'] else 'NOT converged'}), fitted on {f['samples']} samples of {f['data']}"
            if "kind" in f
            else f"weights fitted on {f['samples']} samples of {f['data']}: NLL {f['nll_uniform']:.4g} (uniform) -> {f['nll']:.4g}"
        )
    if acc:
        before = f"; {acc['before_steps']:.2f} % before the recipe's steps" if acc.get("before_steps", acc["ensemble"]) != acc["ensemble"] else ""
        click.echo(f"ensemble top1: {acc['ensemble']:.2f} % on {acc['data']} (best member {acc['best_member']:.2f} %{before})")
    for c in rep["conversions"]:
        changed = ", ".join(f"{k} ({v})" for k, v in c["ops_changed"].items()) or "no op schema changed"
        click.echo(f"converted {c['member']}: opset {c['from']} -> {c['to']}; {changed}")
    sh = rep["shared_initializers"]
    if sh["initializers_merged"]:
        click.echo(
            f"shared weights: {sh['initializers_merged']} duplicate tensors (initializers, Constant nodes) stored once, {human_bytes(sh['bytes_saved'])} saved"
        )
    for g in rep["horizontal"]["groups"]:
        if g["applied"]:
            counts = ", ".join(f"{k} {v}" for k, v in g["counts"].items())
            click.echo(f"fused members {', '.join(g['members'])}: {g['nodes_before']} -> {g['nodes_after']} nodes ({counts})")
    for note in rep["horizontal"]["notes"]:
        click.echo(f"note: {note}")
    size = rep["size"]
    before = f" after the recipe's steps ({human_bytes(size['before_steps'])} before)" if "before_steps" in size else " merged"
    click.echo(f"size: {human_bytes(size['merged'])}{before} vs {human_bytes(size['members_total'])} for the members ({size['ratio']:.2f}x)")
    par = rep["parity"]
    worst = max((o.get("rel_l2", 0.0) for o in par["members"] + par["fused"]), default=0.0)
    amb = sum(o.get("ambiguous_skipped", 0) for o in par["fused"] if "mismatches" in o)
    click.echo(
        f"parity vs members run separately on {par['data']} ({par['samples']} samples): worst relative L2 {fmt(worst)}"
        + (f", {amb} ambiguous vote(s) skipped" if amb else "")
    )
    if rep.get("recipe"):
        _render_recipe(rep)
    _render_concurrency(rep.get("concurrency"))
    for note in rep["notes"]:
        click.echo(f"note: {note}")


def _render_concurrency(c: dict | None) -> None:
    if not c:
        return
    if "parallel_ms" in c:
        pv = c["parallel_vs_separate"]["ratio"]
        click.echo(
            f"serving ({c['branch_width']} branches, {c['cores']} cores): members in separate sessions {c['separate_ms']:.3f} ms, "
            f"merged sequential {c['sequential_ms']:.3f} ms, merged parallel {c['parallel_ms']:.3f} ms ({1 / pv:.2f}x the separate sessions' time)"
            + (f", merged one thread {c['one_thread_ms']:.3f} ms ({1 / c['one_thread_vs_separate']['ratio']:.2f}x)" if "one_thread_ms" in c else "")
        )
    carried = f"carried: {c.get('carried_way', '').replace('_', ' ')}" if c["carried"] else "none carried"
    click.echo(f"session options: {carried} ({c['reason']})")


def _render_recipe(rep: dict) -> None:
    from .run import render_steps

    rec = rep["recipe"]
    settings = ", ".join(f"{k} = {json.dumps(v)}" for k, v in rec["settings"].items()) or (
        "no [ensemble] table: default settings" if not rec["table"] else "no setting applied"
    )
    line = f"recipe {rec['name']} ({rec['file']}): {settings}"
    if rec["overridden"]:
        line += f"; overridden by options: {', '.join(rec['overridden'])}"
    if "budget" in rec:
        b = rec["budget"]
        drop = b["max_accuracy_drop"]
        line += f"; lossy steps within {drop:g} point{'' if drop == 1 else 's'} of {b['metric'] or 'the default metric'}"
    click.echo(line)
    if rep.get("steps"):
        click.echo("recipe steps on the merged model, each verified against it:")
        click.echo(render_steps(rep))
        for i, s in enumerate(rep["steps"], 1):
            for note in s.get("notes", []):
                click.echo(f"note: step {i} '{s['name']}': {note}")
