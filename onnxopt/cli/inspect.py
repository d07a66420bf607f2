"""``onnxopt inspect MODEL [--json]``."""

from __future__ import annotations

import click

from ..render import human_bytes, human_count, table
from .options import json_option
from .render import echo_json

__all__ = ["command", "render_inspect"]


def _dims(v: dict) -> str:
    if "dtype" not in v:
        return v.get("type", "?")
    shape = v.get("shape")
    dims = "?" if shape is None else "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"
    return f"{v['dtype']}{dims}"


def render_inspect(r: dict) -> str:
    """The inspect report as readable text."""
    opsets = ", ".join(f"{d} {v}" for d, v in r["opsets"].items())
    producer = " ".join(x for x in (r["producer"]["name"], r["producer"]["version"]) if x) or "unknown"
    lines = [f"{r.get('file') or '<model>'}  ({human_bytes(r['file_size'])})"]
    lines.append(f"IR {r['ir_version']}; opsets: {opsets}; producer: {producer}; graph: {r['graph_name'] or '-'}")
    if r.get("doc"):
        lines.append(f"doc: {r['doc']}")
    io_rows = [["input", v["name"], _dims(v)] for v in r["inputs"]] + [["output", v["name"], _dims(v)] for v in r["outputs"]]
    lines += ["", table(["", "name", "type"], io_rows)]
    if r.get("initializer_inputs"):
        lines.append(f"({r['initializer_inputs']} more graph inputs are initializers: IR < 4 style)")
    sub = f" ({r['nodes_main_graph']} in the main graph)" if r["nodes"] != r["nodes_main_graph"] else ""
    lines += ["", f"nodes: {r['nodes']}{sub}", "ops: " + (", ".join(f"{k} {v}" for k, v in r["ops"].items()) or "none")]
    par = r["parameters"]
    constants = r["ops"].get("Constant", 0)
    lines.append(
        f"parameters: {par['total']:,} ({human_bytes(par['bytes'])}) in {r['initializers']} initializers"
        + (f" and {constants} Constant nodes" if constants else "")
    )
    if par["per_dtype"]:
        rows = [[dt, e["params"], human_bytes(e["bytes"])] for dt, e in par["per_dtype"].items()]
        lines.append(table(["dtype", "params", "bytes"], rows))
    gen = r.get("generated_constants")
    if gen:
        lines.append(f"generated at run time: {gen['elements']:,} elements by {gen['nodes']} ConstantOfShape node(s) fed by constant shapes")
    unused = r["unused_initializers"]
    more = "" if unused["count"] <= len(unused["names"]) else ", ..."
    names = f"{unused['count']} ({human_bytes(unused['bytes'])}): {', '.join(unused['names'])}{more}"
    lines.append(f"unused initializers: {names if unused['count'] else 'none'}")
    subs = r["subgraphs"]
    by_op = ", ".join(f"{k} {v}" for k, v in subs["by_op"].items())
    lines.append(f"subgraphs: {subs['count']} ({by_op})" if subs["count"] else "subgraphs: none")
    lines += [f"  {s['where']} ({s['nodes']} nodes)" for s in subs["sites"][:20]]
    if len(subs["sites"]) > 20:
        lines.append(f"  ... {len(subs['sites']) - 20} more")
    if r["functions"]:
        lines.append(f"local functions: {', '.join(r['functions'])}")
    ext = r["external_data"]
    files = f"{ext['tensors']} tensors, {human_bytes(ext['bytes'])} in {len(ext['files'])} file(s)"
    lines.append(f"external data: {files if ext['tensors'] else 'none'}")
    lines += [f"  {loc}: {e['tensors']} tensors, {human_bytes(e['bytes'])}" for loc, e in ext["files"].items()]
    fl = r.get("flops_detail")
    if r.get("flops") is not None and fl is not None:
        parts = ", ".join(f"{k} {human_count(v)}" for k, v in fl["by_op"].items())
        missing = fl["nodes_of_counted_ops"] - fl["nodes_counted"]
        extra = f"; {missing} node(s) without inferred shapes not counted" if missing else ""
        if fl.get("nodes_in_subgraphs"):
            extra += f"; {fl['nodes_in_subgraphs']} node(s) inside If/Loop/Scan bodies not counted"
        lines.append(f"FLOPs (Conv/Gemm/MatMul, symbolic dims = 1): {human_count(r['flops'], 'FLOP')}" + (f" ({parts})" if parts else "") + extra)
    meta = r["metadata"]
    lines += [f"metadata {k}: {' '.join(v.split())}" for k, v in meta["props"].items()]  # one line each (values may hold newlines)
    prov = meta["onnxopt_provenance"]
    if prov is None:
        lines.append("onnxopt provenance: none")
    elif prov.get("unreadable"):
        lines.append("onnxopt provenance: present but not valid JSON")
    else:
        lines.append(f"onnxopt provenance: {' -> '.join(c for c in prov['commands'] if c)} (steps: {', '.join(s for s in prov['steps'] if s) or 'none'})")
    return "\n".join(lines)


@click.command("inspect")
@click.argument("model", type=click.Path())
@click.option("--no-flops", is_flag=True, help="Skip the FLOPs estimate (no shape inference).")
@json_option
def command(model, no_flops, as_json):
    """Describe MODEL: IR version, opsets, producer, inputs/outputs, op histogram, parameters
    and bytes per dtype, unused initializers, subgraphs, external data, FLOPs, metadata and
    onnxopt provenance.  External data is checked but not loaded.

    Example: onnxopt inspect model.onnx --json
    """
    from ..inspect_model import inspect

    result = inspect(model, flops=not no_flops)
    if as_json:
        echo_json(result.report)
        return
    click.echo(render_inspect(result.report))
