"""``onnxopt quantize MODEL -o OUT``."""

from __future__ import annotations

import click

from ..render import fmt, human_bytes, table
from .options import (
    budget_options,
    calibration_option,
    fix_shapes_option,
    json_option,
    output_option,
    provider_option,
    report_option,
    shape_option,
    shapes_dict,
)
from .outputs import check_outputs, write_result
from .render import echo_json
from .types import CsvList

__all__ = ["command", "render", "render_candidates", "MODEL_TYPES"]

# onnxopt.quantize.transformer.MODEL_TYPES, spelled out so that --help imports no onnx
# (tests/quantize/test_cli.py checks that the two agree)
MAX_DETAIL_LINES = 20  # left-in-float lines printed per candidate

MODEL_TYPES = ("bart", "bert", "bert_keras", "bert_tf", "clip", "conformer", "gpt2", "gpt2_tf", "gpt_neox", "phi", "swin", "t5", "tnlr", "vit")


def _speed(c: dict) -> str:
    sp = c.get("speed")
    if not sp:
        return "-"
    lo, hi = sp["ci95"]
    return f"{sp['ratio']:.2f}x [{lo:.2f}, {hi:.2f}]"


def render_candidates(report: dict) -> str:
    """The candidates table: status, nodes, accuracy, speed vs FP32 (95% CI), size."""
    metric = (report.get("metric") or {}).get("name", "metric")
    rows = []
    for c in report.get("candidates", []):
        excluded = len(c.get("excluded") or [])
        fallbacks = len(c.get("fallbacks") or [])
        rows.append([
            c["label"], c["status"], f"{c['quantized_nodes']}/{c['quantizable_nodes']}", c.get("score"),
            None if c.get("drop") is None else round(c["drop"], 3), _speed(c), None if c.get("size_ratio") is None else round(c["size_ratio"], 3),
            excluded, fallbacks,
        ])  # fmt: skip
    return table(["candidate", "status", "quantized", metric, "drop", "speed vs FP32", "size", "excluded", "fallbacks"], rows)


def _signed(gain) -> str:
    return fmt(gain) if gain is None or gain < 0 else "+" + fmt(gain)


def _excluded_lines(label: str, excluded: list[dict], max_lines: int = MAX_DETAIL_LINES) -> list[str]:
    """One line per excluded node, or per group of nodes measured together (consecutive
    entries with the same group size and gain), at most ``max_lines``."""
    groups: list[list[dict]] = []
    lines = []
    scope = [e for e in excluded if e.get("scope")]
    if scope:
        names = ", ".join(x["node"] for x in scope[:3]) + (f", ... {scope[-1]['node']}" if len(scope) > 3 else "")
        what = f"the {len(scope)} nodes without weights" if len(scope) > 1 else "the one node without weights"
        lines.append(f"{label}: left {what} in float ({names}): {_signed(scope[0].get('gain'))} points together; "
                     "the search then chose among the nodes with weights")
    for e in excluded:
        if e.get("scope"):
            continue
        last = groups[-1][-1] if groups else None
        if (
            last is not None
            and e.get("group_size", 1) > 1
            and last.get("group_size") == e.get("group_size")
            and last.get("gain") == e.get("gain")
            and len(groups[-1]) < e["group_size"]
        ):
            groups[-1].append(e)
        else:
            groups.append([e])
    for g in groups:
        e = g[0]
        if len(g) == 1:
            what = f"{e['node']} ({e['op_type']})"
        else:
            names = ", ".join(x["node"] for x in g[:3]) + (f", ... {g[-1]['node']}" if len(g) > 3 else "")
            what = f"{len(g)} nodes ({names})"
        how = f" (measured as a group of {e['group_size']})" if e.get("group_size", 1) > 1 else ""
        tried = f"; remedies tried: {', '.join(e['remedies_tried'])}" if e.get("remedies_tried") else ""
        lines.append(f"{label}: left {what} in float: {_signed(e.get('gain'))} points when alone in float{how}{tried}")
    if len(lines) > max_lines:
        rest = len(lines) - max_lines + 1
        lines = lines[: max_lines - 1] + [f"{label}: ... {rest} more line(s) of left-in-float nodes (the full list: --report FILE or --json)"]
    return lines


def _details(report: dict) -> list[str]:
    lines = []
    for c in report.get("candidates", []):
        lines += [f"{c['label']}: {e['node']} ({e['op_type']}) kept quantized with remedy {e['remedy']} instead of float" for e in c.get("remedied") or []]
        lines += _excluded_lines(c["label"], c.get("excluded") or [])
        lines += [f"{c['label']}: {f['node']} ({f['op_type']}) -> {f['action']}: {f['reason'][:200]}" for f in c.get("fallbacks") or []]
    return lines


@click.command("quantize")
@click.argument("model", type=click.Path())
@output_option()
@click.option(
    "--mode",
    type=click.Choice(["auto", "dynamic", "static", "int4"]),
    default="auto",
    show_default=True,
    help=(
        "auto: try dynamic, static per-tensor and static per-channel, keep the fastest within the budget; "
        "int4: weight-only INT4 of every MatMul with a constant weight (MatMulNBits)."
    ),
)
@click.option("--format", "fmt_", type=click.Choice(["qdq", "qoperator"]), default="qdq", show_default=True, help="Static model format.")
@calibration_option
@click.option(
    "--method", type=click.Choice(["minmax", "percentile", "entropy", "auto"]), default="minmax", show_default=True,
    help="Calibration method (streamed statistics); auto: per tensor, the range of the three with the least quantization error.",
)
@click.option("--per-channel", is_flag=True, help="Per-channel weights (static mode; auto tries both).")
@click.option("--reduce-range", is_flag=True, help="7-bit weights (helps u8s8 accuracy on CPUs without VNNI).")
@click.option("--weight-type", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True)
@click.option("--activation-type", type=click.Choice(["int8", "uint8"]), default="uint8", show_default=True)
@click.option("--op-types", type=CsvList(), default=None, help="Op types to quantize, e.g. MatMul,Gemm (default: the mode's; dynamic skips Conv on CPU).")
@click.option("--exclude-nodes", type=CsvList(), default=None, help="Node names to keep in float.")
@provider_option
@budget_options
@click.option("--allow-slower", is_flag=True, help="Write the best valid candidate even when it is not faster than FP32.")
@click.option(
    "--allow-collapse", is_flag=True,
    help="Write a static or INT4 result even when it scores below 0.5 against FP32 on the calibration data (top-1 agreement or cosine).",
)
@click.option(
    "--equalize", type=click.Choice(["auto", "always", "off"]), default="auto", show_default=True,
    help="Static candidates that lose accuracy are built again after the exact equalize + smooth-quant passes (auto); always; or never.",
)
@click.option(
    "--bias-correction", is_flag=True, help="Static QDQ: remove each quantized weight's expected output shift (on the calibration data) from its bias."
)
@click.option(
    "--weight-rounding", type=click.Choice(["nearest", "gptq"]), default="nearest", show_default=True,
    help="Static QDQ: round each weight to nearest, or GPTQ (on the calibration data: the rounding that least moves the layer's output).",
)
@click.option("--block-size", type=click.IntRange(min=16), default=32, show_default=True, help="--mode int4: weights per quantization block (a power of 2).")
@click.option(
    "--int4-method", type=click.Choice(["rtn", "hqq"]), default="rtn", show_default=True, help="--mode int4: round to nearest, or HQQ (needs torch)."
)
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True, help="Batch size of the timing run.")
@click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="Intra-op threads of the timing sessions (default: ONNX Runtime's; 1 is steadier on a loaded machine).",
)
@click.option("--calibration-batch", type=click.IntRange(min=1), default=None, help="Batch size of the calibration runs (default 32).")
@click.option("--no-preprocess", is_flag=True, help="Skip ORT's quant_pre_process (onnxopt's own pre-processing still runs).")
@click.option(
    "--model-type", type=click.Choice(MODEL_TYPES), default=None,
    help="Run the transformer-fusion pass (ORT's transformer optimizer, verified) for this architecture before quantizing.",
)
@click.option("--num-heads", type=click.IntRange(min=0), default=0, show_default=True, help="Attention heads for --model-type (0: detect).")
@click.option("--hidden-size", type=click.IntRange(min=0), default=0, show_default=True, help="Hidden size for --model-type (0: detect).")
@shape_option
@fix_shapes_option
@json_option
@report_option
def command(model, output, fmt_, no_preprocess, shapes, fix_shapes, as_json, report_path, **options):
    """Quantize MODEL to INT8 with ONNX Runtime, and write it only when it is valid (checker
    + ORT session), within --max-accuracy-drop points of --metric on --eval, and faster than
    the FP32 model (timed side by side), unless --allow-slower.  Exit 3 with the measured
    table otherwise.

    Examples:

      onnxopt quantize model.onnx -o model.int8.onnx --mode dynamic

      onnxopt quantize model.onnx -o q.onnx --calibration calib.npz --eval test.npz --max-accuracy-drop 1

      onnxopt quantize bert.onnx -o bert.int8.onnx --mode dynamic --model-type bert

      onnxopt quantize llm.onnx -o llm.int4.onnx --mode int4 --block-size 32 --batch 1
    """
    check_outputs(output, [model], report_path)
    shaped = {"shapes": shapes_dict(shapes), "fix_shapes": shapes_dict(fix_shapes)}
    result = _quantize(model, as_json, format=fmt_, preprocess=not no_preprocess, **shaped, **options)
    if not write_result(result, output, inputs=[model], report_path=report_path, as_json=as_json):
        return
    render(result.report)
    click.echo(f"wrote {output}")


def _quantize(model, as_json: bool, **options):
    """``onnxopt.quantize``; a refusal with a measured table (exit 3) prints it first."""
    from ..errors import BudgetError, VerificationError
    from ..quantize.api import quantize

    try:
        return quantize(model, **options)
    except (BudgetError, VerificationError) as exc:
        rep = exc.details.get("report")
        if rep and as_json:
            echo_json(rep)
        elif rep:
            _render_table(rep)
        raise


def _render_table(rep: dict) -> None:
    click.echo(render_candidates(rep))
    for line in _details(rep):
        click.echo(line)


def render(rep: dict) -> None:
    """The candidates table and details, the metric, the transformer fusion, the notes
    (warnings on stderr) and the chosen candidate."""
    _render_table(rep)
    m = rep["metric"]
    budget = f"; budget {rep['budget']['max_drop']:g} points" if rep.get("budget") else "; no budget (--max-accuracy-drop)"
    click.echo(f"metric: {m['name']} on {m['data']} ({m['samples']} samples); FP32 {m['reference']:.2f}" + budget)
    tf = rep.get("transformer_fusion")
    if tf:
        fused = {k[len("fused_") :]: v for k, v in tf["counts"].items() if k.startswith("fused_") and k != "fused_ops"}
        what = ", ".join(f"{k} {v}" for k, v in fused.items()) + " fused" if tf["modified"] else "model unchanged"
        click.echo(f"transformer-fusion ({tf['model_type']}): " + what)
    for note in rep.get("notes", []):
        warning = note.startswith("warning: ")
        click.echo(note if warning else f"note: {note}", err=warning)
    before, after = rep["before"], rep["after"]
    size = f"size {human_bytes(before['bytes'])} -> {human_bytes(after['bytes'])}"
    click.echo(f"chosen: {rep.get('chosen') or 'none (input unchanged)'}; {size}; timing batch {rep['timing']['batch']}")
