"""The ``smooth-quant`` pass: SmoothQuant-style outlier migration, exact in FP32.

A *site* is an activation ``X`` read as input A by MatMul / Gemm nodes with constant
weights (``layers.layer_of``).  Per input channel ``j``, ``s_j = max|X_j|^a / max|W_j|^(1-a)``
(``equalize.smooth_scales``; ``max|W_j|`` over every weight of the site) from calibration
data; ``1/s`` is folded into what produces ``X`` and ``s`` into the rows of each weight:

- a ``LayerNormalization`` over the last axis: ``gamma / s``, ``beta / s``.  When ``X`` has
  other readers too (a residual ``Add``), or ``gamma`` / ``beta`` are shared, the layer norm
  is duplicated for the site's MatMuls and the original keeps feeding the others;
- a MatMul / Gemm with a constant weight (``W0[:, j] / s_j``, its bias too), possibly through
  an ``Add`` of a constant bias (``bias / s``), when ``X`` has no other reader;
- a decomposed layer norm's affine tail, ``Mul(., gamma)`` or ``Add(Mul(., gamma), beta)``
  with per-channel constants (as jax2tf exports it), when ``X`` has no other reader.

A ``Reshape`` to a constant shape whose last dimension is the channel count may sit between
the producer and ``X`` (exporters flatten ``[B, S, C]`` to ``[B*S, C]`` before a Gemm).

``alpha`` is searched per site (``equalize.choose_alpha``: the quantized layer's output error
on sampled rows of ``X``); a site where no alpha beats leaving it alone is not changed.
Sites that cannot be folded (``X`` produced by Gelu, Reshape, a graph input; shared weights)
are skipped with the reason in the report, never an error.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import onnx

from ..core.passes import Context, Pass, PassResult
from ..graph import unique_name
from .equalize import ALPHAS, choose_alpha, smooth_error, smooth_scales
from .layers import Layer, WeightTable, layer_of

__all__ = ["SmoothQuantPass", "SmoothSite", "smooth_sites", "apply_smoothing"]

log = logging.getLogger(__name__)


@dataclass
class SmoothSite:
    """``x``: the smoothed activation; ``layers``: its MatMul / Gemm readers; ``fold``:
    ``layernorm`` | ``linear`` | ``affine``; ``producer``: the layer-norm node, the producing ``Layer``, or the affine constants;
    ``add_bias``: the bias of an ``Add`` between producer and ``x``; ``duplicate``: the layer
    norm is copied for the site's readers."""

    x: str
    layers: list[Layer]
    fold: str
    producer: object
    add_bias: str = ""
    duplicate: bool = False
    via: onnx.NodeProto | None = None  # a channel-keeping Reshape between producer and x

    @property
    def names(self) -> str:
        return ", ".join(lay.node.name for lay in self.layers)


def _layernorm_fold(p: onnx.NodeProto, table: WeightTable, has_others: bool) -> tuple[bool, str]:
    """(duplicate?, why not foldable)."""
    axis = next((a.i for a in p.attribute if a.name == "axis"), -1)
    if axis != -1:
        return False, f"LayerNormalization '{p.name}' normalizes axis {axis}, not the channel axis"
    params = [x for x in p.input[1:3] if x]
    if any(x not in table.inits or x in table.inputs for x in params):
        return False, f"LayerNormalization '{p.name}' has a non-constant scale or bias"
    return has_others or not all(table.private(x) for x in params), ""


def _site_for(x: str, readers: list, table: WeightTable) -> tuple[SmoothSite | None, str]:
    found = [(n, layer_of(n, table)[0] if n.op_type in ("MatMul", "Gemm") and n.input[0] == x else None) for n in readers]
    layers, others = [lay for _, lay in found if lay is not None], [n for n, lay in found if lay is None]
    p = table.producer.get(x)
    via = None
    if p is not None and p.op_type == "Reshape" and not others and _keeps_channels(p, table, layers):
        # [B, S, C] -> [B*S, C] before a Gemm: the channels stay on the last axis
        via, x_in = p, p.input[0]
        p = table.producer.get(x_in)
        others = [n for n in table.readers.get(x_in, []) if n is not via and n != via]
    if p is None:
        return None, "a graph input: nothing to fold 1/s into"
    channels = table.inits[layers[0].weight].dims[layers[0].in_axis] if layers else 0
    if p.op_type == "LayerNormalization":
        if via is not None and (len(p.input) < 2 or p.input[1] not in table.inits or int(np.prod(table.inits[p.input[1]].dims)) != channels):
            return None, f"Reshape '{via.name}' after LayerNormalization '{p.name}' moves the channels"
        dup, why = _layernorm_fold(p, table, bool(others))
        return (None, why) if why else (SmoothSite(x, layers, "layernorm", p, duplicate=dup, via=via), "")
    if others:
        return None, f"also read by {others[0].op_type} '{others[0].name}' (only a layer norm is duplicated)"
    affine = _affine_consts(p, table, channels)
    if affine:
        return SmoothSite(x, layers, "affine", affine, via=via), ""
    bias = ""
    if p.op_type == "Add":
        const = [i for i in p.input if i in table.inits]
        if len(const) != 1 or not table.per_channel(const[0], max(table.inits[const[0]].dims, default=1)):
            return None, f"produced by Add '{p.name}' without one private per-channel bias"
        bias = const[0]
        src = next(i for i in p.input if i != bias)
        p = table.producer.get(src)
        if p is None or len(table.readers.get(src, [])) != 1:
            return None, f"produced by Add '{table.producer[x].name}' of a value that is not a private MatMul/Gemm output"
    lay, why = layer_of(p, table) if p.op_type in ("MatMul", "Gemm") else (None, f"produced by {p.op_type} '{p.name}': no weight to fold 1/s into")
    if lay is None:
        return None, why
    if via is not None and table.inits[lay.weight].dims[lay.out_axis] != channels:
        return None, f"Reshape '{via.name}' after {p.op_type} '{p.name}' moves the channels"
    return SmoothSite(x, layers, "linear", lay, add_bias=bias, via=via), ""


def _per_channel_const(n: onnx.NodeProto, table: WeightTable, channels: int) -> str:
    """The private constant of a Mul / Add with one value per channel on the last axis."""
    const = [i for i in n.input if i in table.inits and i not in table.inputs]
    if len(const) != 1 or len(n.input) != 2 or not table.private(const[0]):
        return ""
    dims = list(table.inits[const[0]].dims)
    return const[0] if dims and dims[-1] == channels and int(np.prod(dims)) == channels else ""


def _affine_consts(p: onnx.NodeProto, table: WeightTable, channels: int) -> list[str]:
    """The per-channel constants of a decomposed layer norm's affine tail producing ``x``:
    ``Mul(., gamma)`` or ``Add(Mul(., gamma), beta)`` (the Mul read by the Add only);
    [] when ``p`` is not that."""
    if p.op_type == "Mul":
        g = _per_channel_const(p, table, channels)
        return [g] if g else []
    if p.op_type != "Add":
        return []
    b = _per_channel_const(p, table, channels)
    src = next((i for i in p.input if i != b), "")
    m = table.producer.get(src)
    if not b or m is None or m.op_type != "Mul" or len(table.readers.get(src, [])) != 1:
        return []
    g = _per_channel_const(m, table, channels)
    return [g, b] if g else []


def _keeps_channels(reshape: onnx.NodeProto, table: WeightTable, layers: list[Layer]) -> bool:
    """A Reshape to a constant shape whose last dimension is the layers' input channels
    (its input's last axis is checked by the fold target: a layer norm's scale or a
    weight's output channels of that size)."""
    if not layers or len(reshape.input) < 2 or reshape.input[1] not in table.inits:
        return False
    shape = table.array(reshape.input[1]).reshape(-1)
    channels = table.inits[layers[0].weight].dims[layers[0].in_axis]
    return shape.size >= 1 and int(shape[-1]) == channels


def smooth_sites(model: onnx.ModelProto) -> tuple[list[SmoothSite], list[str], WeightTable]:
    """The foldable sites of ``model``'s main graph and one line per skipped one."""
    table = WeightTable(model.graph)
    sites, skipped, seen = [], [], set()
    for n in model.graph.node:
        if n.op_type not in ("MatMul", "Gemm") or not n.input or n.input[0] in seen:
            continue
        x = n.input[0]
        seen.add(x)
        readers = table.readers.get(x, [])
        usable = [r for r in readers if r.op_type in ("MatMul", "Gemm") and r.input[0] == x and layer_of(r, table)[0] is not None]
        if not usable:
            why = layer_of(n, table)[1]
            if "shared" in why:
                skipped.append(f"{x} -> {n.name}: skipped: {why}")
            continue
        site, why = _site_for(x, readers, table)
        if site is None:
            skipped.append(f"{x} -> {', '.join(r.name for r in usable)}: skipped: {why}")
        else:
            sites.append(site)
    return sites, skipped, table


def _duplicate_layernorm(site: SmoothSite, table: WeightTable) -> onnx.NodeProto:
    ln = site.producer
    new = copy.deepcopy(ln)
    new.name = unique_name(f"{ln.name or 'LayerNormalization'}/smooth", table.taken)
    new.output[0] = unique_name(f"{site.x}/smooth", table.taken)
    del new.output[1:]
    for i in (1, 2):
        if len(ln.input) > i and ln.input[i]:
            new.input[i] = table.add(f"{ln.input[i]}/smooth", table.array(ln.input[i]))
    graph = table.graph
    at = next(i for i, n in enumerate(graph.node) if n is ln or n == ln)
    graph.node.insert(at + 1, new)
    if site.via is not None:
        site.via.input[0] = new.output[0]
    else:
        for lay in site.layers:
            lay.node.input[0] = new.output[0]
    return graph.node[at + 1]


def apply_smoothing(site: SmoothSite, s: np.ndarray, table: WeightTable) -> None:
    """Fold ``1/s`` into the producer of ``site.x`` and ``s`` into its readers' weights."""
    inv = (1.0 / s.astype(np.float64))
    if site.fold == "layernorm":
        ln = _duplicate_layernorm(site, table) if site.duplicate else site.producer
        for i in (1, 2):
            if len(ln.input) > i and ln.input[i]:
                v = table.array(ln.input[i]).astype(np.float64)
                table.set(ln.input[i], v * inv.reshape(v.shape) if v.size == inv.size else v * inv)
    elif site.fold == "affine":
        for name in site.producer:
            table.channelwise(name, lambda v: v * inv)
    else:
        site.producer.scale_out(table, inv)
        if site.add_bias:
            table.channelwise(site.add_bias, lambda b: b * inv)
    for lay in site.layers:
        lay.scale_in(table, s.astype(np.float64))


@dataclass
class _SmoothConfig:
    alpha: float | None = None  # None: searched per site among equalize.ALPHAS
    max_rows: int = 1024  # sampled rows of each X for the alpha search
    limit: int = 256  # calibration samples streamed
    per_channel: bool = False  # the error model's weights: per-channel (True) or per-tensor

    def check(self):
        if self.alpha is not None and not 0 <= self.alpha <= 1:
            return "alpha must be in [0, 1]"
        return "max_rows and limit must be positive" if self.max_rows <= 0 or self.limit <= 0 else None


class SmoothQuantPass(Pass):
    """SmoothQuant outlier migration for MatMul/Gemm (exact in FP32; alpha searched per site).

    Needs calibration data (``X``'s channel ranges and sampled rows).  Each applied site is
    reported with its alpha and the quantized layer's error before and after; skipped sites
    with their reason.
    """

    key = "smooth-quant"
    needs = ("calibration",)
    exact = True
    idempotent = False
    Config = _SmoothConfig

    def call(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        from .collect import collect_channel_stats

        c = self.config
        sites, skipped, table = smooth_sites(model)
        if not sites:
            return self.result(
                model, False, counts={"smoothed": 0, "skipped": len(skipped)}, notes=skipped or ["no MatMul/Gemm reads an activation with a foldable producer"]
            )
        stats = collect_channel_stats(
            model, ctx.inputs_for(model), {s.x: -1 for s in sites}, provider=ctx.provider, limit=c.limit, max_rows=c.max_rows, seed=ctx.seed
        )
        done, details = 0, []
        for site in sites:
            st = stats[site.x]
            w = np.concatenate([lay.weight_in_by_out(table) for lay in site.layers], axis=1)
            if c.alpha is None:
                alpha, s, errors = choose_alpha(st.rows, w, ALPHAS, per_channel=c.per_channel)
                before, after = errors[None], errors.get(alpha)
            else:
                alpha, s = c.alpha, smooth_scales(st.absmax, np.abs(w).max(axis=1), c.alpha)
                before, after = smooth_error(st.rows, w, per_channel=c.per_channel), smooth_error(st.rows, w, s, per_channel=c.per_channel)
            rec = {
                "tensor": site.x,
                "layers": [lay.node.name for lay in site.layers],
                "fold": site.fold,
                "alpha": alpha,
                "error_before": round(before, 6),
                "error_after": None if after is None else round(after, 6),
            }
            details.append(rec)
            if s is None or after >= before:
                skipped.append(f"{site.x} -> {site.names}: skipped: no alpha lowers the quantized layer's error ({before:.4f})")
                continue
            apply_smoothing(site, s, table)
            done += 1
            log.info("smooth-quant %s: alpha %s, error %.4f -> %.4f", site.x, alpha, before, after)
        notes = [
            f"{d['tensor']} -> {', '.join(d['layers'])}: alpha {d['alpha']}, quantized error {d['error_before']:.4f} -> {d['error_after']:.4f}"
            for d in details
            if d["alpha"] is not None and d["error_after"] is not None and d["error_after"] < d["error_before"]
        ]
        return self.result(model, done > 0, counts={"smoothed": done, "skipped": len(skipped)}, notes=notes + skipped, details={"sites": details})
