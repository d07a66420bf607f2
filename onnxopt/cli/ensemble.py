"""``onnxopt ensemble M1 M2 [M3 ...] -o OUT --fusion mean|weighted|vote|stack``."""

from __future__ import annotations

import click

from .options import (
    data_option,
    json_option,
    provider_option,
    report_option,
    shape_option,
    shapes_dict,
)
from .outputs import check_outputs, write_result
from .render import fmt, human_bytes, table
from .types import FloatList, NameMap

__all__ = ["command"]


@click.command("ensemble")
@click.argument("models", nargs=-1, required=True, type=click.Path())
# -o only: --output is the name for picking a member output (see --output below)
@click.option("-o", "output", type=click.Path(dir_okay=False), required=True, help="Output model path (written atomically; never an input model).")
@click.option("--fusion", type=click.Choice(["mean", "weighted", "vote", "stack"]), default="mean", show_default=True, help="How member outputs are combined.")
@click.option("--weights", type=FloatList(), default=None, help="Member weights W1,W2,... (weighted: normalised to sum 1; vote: weighted votes).")
@click.option("--fit", "fit_data", type=click.Path(), default=None, help="DATA with 'labels' to fit the weights (weighted) or the head (stack).")
@click.option("--head", type=click.Choice(["logistic", "ridge"]), default="logistic", show_default=True, help="Stacking head: multinomial logistic regression or ridge.")
@click.option("--l2", type=float, default=None, help="L2 strength of the stacking head (default: 5-fold cross-validation).")
@click.option("--softmax", is_flag=True, help="Normalise each member's scores with softmax before fusing.")
@click.option("--keep-member-outputs", is_flag=True, help="Also expose each member's output (named m<i>/<output>).")
@click.option("--output", "output_name", metavar="NAME[,NAME...]", default=None, help="The member output to fuse, when members have several: one NAME for all members, or one per member, comma-separated (default: all, position-wise).")
@click.option("--input-map", "input_map", type=NameMap(), multiple=True, help="Rename a member input FROM:TO so members share inputs (repeatable).")
@click.option("--fuse-members", is_flag=True, help="Fuse members of one architecture into one wider network (batched MatMul, grouped Conv).")
@data_option(help="DATA for the parity check (and member vs ensemble accuracy when it has 'labels'); default: synthesized inputs.")
@shape_option
@provider_option
@click.option("--external-data", is_flag=True, help="Save weights to an external-data file (automatic over 2 GB).")
@json_option
@report_option
def command(models, output, fusion, weights, fit_data, head, l2, softmax, keep_member_outputs, output_name, input_map, fuse_members, data, shapes, provider, external_data, as_json, report_path):
    """Fuse N models into one .onnx whose outputs combine theirs.

    The members share one set of inputs; their graphs are namespaced, identical weights are
    stored once, opsets are reconciled, and the fused model is compared with the members run
    separately (exit 3 on mismatch) before anything is written.

    Examples:

      onnxopt ensemble a.onnx b.onnx c.onnx -o vote.onnx --fusion vote --data test.npz

      onnxopt ensemble a.onnx b.onnx c.onnx -o stack.onnx --fusion stack --fit calib.npz --data test.npz

      onnxopt ensemble ft1.onnx ft2.onnx ft3.onnx -o mean.onnx --fuse-members
    """
    from ..ensemble.api import ensemble
    check_outputs(output, models, report_path)
    result = ensemble(
        list(models),
        fusion=fusion,
        weights=weights,
        fit=fit_data,
        softmax=softmax,
        keep_member_outputs=keep_member_outputs,
        output=output_name.split(",") if output_name and "," in output_name else output_name,
        input_map=dict(input_map) if input_map else None,
        fuse_members=fuse_members,
        data=data,
        shapes=shapes_dict(shapes),
        provider=provider,
        head=head,
        l2=l2,
    )
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
        if "kind" in f:
            click.echo(f"head: {f['kind']} on {f['features']} features -> {f['classes']} classes, l2 {f['l2']:g}, {f['iterations']} iterations ({'converged' if f['converged'] else 'NOT converged'}), fitted on {f['samples']} samples of {f['data']}")
        else:
            click.echo(f"weights fitted on {f['samples']} samples of {f['data']}: NLL {f['nll_uniform']:.4g} (uniform) -> {f['nll']:.4g}")
    if acc:
        click.echo(f"ensemble top1: {acc['ensemble']:.2f} % on {acc['data']} (best member {acc['best_member']:.2f} %)")
    for c in rep["conversions"]:
        changed = ", ".join(f"{k} ({v})" for k, v in c["ops_changed"].items()) or "no op schema changed"
        click.echo(f"converted {c['member']}: opset {c['from']} -> {c['to']}; {changed}")
    sh = rep["shared_initializers"]
    if sh["initializers_merged"]:
        click.echo(f"shared weights: {sh['initializers_merged']} duplicate tensors (initializers, Constant nodes) stored once, {human_bytes(sh['bytes_saved'])} saved")
    for g in rep["horizontal"]["groups"]:
        if g["applied"]:
            counts = ", ".join(f"{k} {v}" for k, v in g["counts"].items())
            click.echo(f"fused members {', '.join(g['members'])}: {g['nodes_before']} -> {g['nodes_after']} nodes ({counts})")
    for note in rep["horizontal"]["notes"]:
        click.echo(f"note: {note}")
    size = rep["size"]
    click.echo(f"size: {human_bytes(size['merged'])} merged vs {human_bytes(size['members_total'])} for the members ({size['ratio']:.2f}x)")
    par = rep["parity"]
    worst = max((o.get("rel_l2", 0.0) for o in par["members"] + par["fused"]), default=0.0)
    amb = sum(o.get("ambiguous_skipped", 0) for o in par["fused"] if "mismatches" in o)
    click.echo(f"parity vs members run separately on {par['data']} ({par['samples']} samples): worst relative L2 {fmt(worst)}" + (f", {amb} ambiguous vote(s) skipped" if amb else ""))
    for note in rep["notes"]:
        click.echo(f"note: {note}")
