"""``onnxopt.diagnose``: where two models part ways, which step broke it, why one is slower.

Modes (one per call):

- ``diagnose(REFERENCE, CANDIDATE)``: layer-wise divergence (``layerwise``), and with
  ``config.profile`` the profiler diff (``profile``);
- ``diagnose(MODEL, recipe=R)``: the recipe's steps one by one (``bisect.bisect_steps``),
  then the layer-wise comparison of the model before and after the pinned step;
- ``diagnose(MODEL, ort_optimizers=True)``: ONNX Runtime's levels and optimizers;
- ``diagnose(MODEL, fp16=True)``: the first node whose FP16 conversion breaks the outputs.

Never writes a model.  Bad input raises ``InputError`` subclasses (exit 2): unreadable
models, models whose inputs differ (nothing to match), data that fits neither model.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..bench.environment import cpu_isa
from ..data import check_shapes, dataset_for
from ..errors import OnnxoptError, RecipeError, UsageError, blame
from ..verify import EXACT_REL_L2, paired_datasets

__all__ = ["DiagnoseConfig", "Diagnosis", "diagnose", "sensitive_nodes", "output_ranking", "own_params", "FP16_REL_L2"]

log = logging.getLogger(__name__)

# default limit of the FP16 bisection: FP16 rounding alone moves outputs by ~1e-3
FP16_REL_L2 = 1e-2
# models above this are saved once with external data and read lazily (one copy in ORT)
OFFLOAD_BYTES = 64 * 2**20


@dataclass
class DiagnoseConfig:
    threshold: float | None = None  # rel-L2 limit of the exact rule (None: 1e-4; FP16: 1e-2)
    top: int = 5
    limit: int | None = 64  # samples of DATA
    provider: str = "cpu"
    profile: bool = False
    profile_runs: int = 10
    seed: int = 0
    slice_tensors: int = 48
    slice_bytes: int = 128 * 2**20
    metric: str | None = None  # of the outputs, for ranking nodes in float (None: metrics.default_metric)
    rank_outputs: bool = True  # QDQ candidate: rank nodes by the outputs with each left in float


@dataclass
class Diagnosis:
    mode: str
    reference: str
    candidate: str | None = None
    layerwise: object = None
    steps: object = None
    ort: object = None
    fp16: object = None
    profile: object = None
    sensitive: list = field(default_factory=list)  # exclude.OutputEffect: nodes hurting the outputs most
    cpu_isa: dict = field(default_factory=dict)

    @property
    def report(self) -> dict:
        """The JSON-able report (``to_dict()``), as every public function's result has."""
        return self.to_dict()

    def to_dict(self) -> dict:
        out = {"mode": self.mode, "reference": self.reference, "candidate": self.candidate, "cpu_isa": self.cpu_isa}
        out.update({key: getattr(self, key).to_dict() for key in ("layerwise", "steps", "ort", "fp16", "profile") if getattr(self, key) is not None})
        if self.sensitive:
            out["sensitive"] = [e.to_dict() for e in self.sensitive]
        return out


def _load(src, tmp: Path, tag: str) -> tuple[onnx.ModelProto, str]:
    """The model (lazy when large: weights stay in a file ORT reads) and its label."""
    from ..io import is_lazy, load_model, load_offloaded, model_nbytes, save_model

    label = "<model>" if isinstance(src, onnx.ModelProto) else str(src)
    if not isinstance(src, onnx.ModelProto) and Path(src).is_file() and Path(src).stat().st_size > OFFLOAD_BYTES:
        folder = tmp / tag
        folder.mkdir()
        model = load_offloaded(src, folder)  # weights streamed to a file: no 2x peak
        if model is not None:
            return model, label
    with blame(None if isinstance(src, onnx.ModelProto) else src):
        model = load_model(src, lazy=None)
    if not is_lazy(model) and model_nbytes(model) > OFFLOAD_BYTES:
        path = tmp / f"{tag}.onnx"
        save_model(model, path, external_data=True)
        del model
        model = load_model(path, lazy=True)
    return model, label


def _path(src):
    return None if isinstance(src, onnx.ModelProto) else src


def _layerwise(ref, cand, ds, ds_b, cfg, pb=None):
    from .layerwise import LayerwiseConfig, compare_layers
    from .match import match_tensors

    with blame(pb):
        matching = match_tensors(ref, cand)
    lw = LayerwiseConfig(
        cfg.threshold if cfg.threshold is not None else EXACT_REL_L2, cfg.top, cfg.limit, None, cfg.slice_tensors, cfg.slice_bytes, cfg.provider
    )
    return compare_layers(ref, cand, ds, ds_b, matching, lw)


def _profile(ref, cand, ds, cfg):
    from .profile import diff_profiles, profile_model

    feed_a = ds.first_batch()
    feed_b = {k: v for k, v in feed_a.items() if k in {i.name for i in cand.graph.input}}
    pa, pb = (profile_model(m, feed, runs=cfg.profile_runs, provider=cfg.provider) for m, feed in ((ref, feed_a), (cand, feed_b)))
    return diff_profiles(pa, pb, cpu_isa())


def output_ranking(ref, cand, ds, ds_b, lw, *, top: int = 5, metric: str | None = None, limit: int | None = 64, provider: str = "cpu") -> list:
    """Up to ``top`` nodes of a static INT8 ``cand`` (QDQ or QOperator) whose leaving in float
    helps its outputs most (``exclude.rank_by_outputs``), tried among the nodes ``lw`` (a
    ``Divergence``) finds adding the most error; [] when ``cand`` is neither or nothing diverges."""
    from ..metrics import Evaluator
    from .exclude import candidate_nodes, is_static_int8, rank_by_outputs

    if lw is None or lw.first is None or not is_static_int8(cand):
        return []
    nodes = candidate_nodes(ref, cand, lw.tensors)
    if not nodes:
        return []
    evaluator = Evaluator(ref, ds, metric, provider=provider, limit=limit)
    evaluator.dataset = ds_b  # the same samples, as the candidate takes them
    return rank_by_outputs(ref, cand, evaluator, nodes, top=top, qparams=own_params(ref, cand, ds, limit=limit, provider=provider))


def own_params(ref: onnx.ModelProto, cand: onnx.ModelProto, ds, *, limit: int | None = 64, provider: str = "cpu"):
    """For a QDQ ``cand``: ``tensor -> (scale, zero point)`` as ONNX Runtime's quantizer
    computes them from the tensor's MinMax range, measured on the reference with ``ds``
    standing in for the calibration data ``diagnose`` does not have (``emulate.activation_params``):
    what a pair gets once the node it borrowed its parameters from is left in float.  None
    for a QOperator model, or when the ranges cannot be measured."""
    from ..quantize.collect import collect_ranges
    from ..quantize.emulate import activation_params
    from .exclude import is_qdq

    if not is_qdq(cand):
        return None
    inits = {t.name: t for t in cand.graph.initializer}
    zps = [inits[n.input[2]] for n in cand.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]
    kind = "int8" if zps and zps[0].data_type == onnx.TensorProto.INT8 else "uint8"
    try:
        ranges = collect_ranges(ref, dataset_for(ref, ds.view()), method="minmax", limit=limit, provider=provider).ranges
    except OnnxoptError as exc:
        log.info("no ranges for the emulated exclusions (%s): borrowed parameters kept", exc)
        return None
    return activation_params(ranges, kind)


def sensitive_nodes(
    reference: onnx.ModelProto, candidate: onnx.ModelProto, dataset, *, fit=None, top: int = 5, limit: int = 16, provider: str = "cpu",
    metric: str | None = None,
) -> list[dict]:
    """The ``top`` nodes that hurt ``candidate`` most: from a budget search's measured
    sensitivity when there is one (``fit``); else, for a QDQ candidate, by the score of
    the outputs (``metric``) with each node left in float (``output_ranking``, greedy); else
    by the error each node adds in a layer-wise comparison; on ``limit`` samples of
    ``dataset``.  [] when none can be had."""
    if fit is not None and fit.sensitivity:
        ranked = sorted(fit.sensitivity, key=lambda e: (-e.gain, -e.rel_l2))[:top]
        group = {e["node"] for e in fit.excluded if e.get("scope")}  # ``sensitivity._scoped``: measured first, the others with it in float
        how = "budget search: score gained when left in float" + (" (with the nodes without weights in float)" if group else "")

        def label(e) -> str:
            return "budget search: the nodes without weights, left in float together" if group and set(e.nodes) <= group else how

        return [{"nodes": list(e.nodes), "gain": e.gain, "rel_l2": e.rel_l2, "how": label(e)} for e in ranked]
    cfg = DiagnoseConfig(top=top, limit=limit, provider=provider)
    try:
        ds_b = dataset_for(candidate, dataset.view())
        lw = _layerwise(reference, candidate, dataset, ds_b, cfg)
        effects = output_ranking(reference, candidate, dataset, ds_b, lw, top=top, metric=metric, limit=limit, provider=provider)
    except OnnxoptError as exc:
        log.info("sensitive nodes not measured: %s", exc)
        return []
    if effects:
        return [
            {"nodes": [e.reference_node or e.node], "candidate_node": e.node, "op": e.op, "score": e.score, "gain": e.gain, "rel_l2": e.rel_l2,
             "metric": e.metric, "how": e.how}
            for e in effects
        ]
    return [{"nodes": [t.node], "op": t.op, "added": t.added, "rel_l2": t.rel_l2, "how": "diagnose: relative L2 added by the node"} for t in lw.top]


def _passes(recipe):
    """(the recipe's passes, its path): a recipe name or file, or one registered pass key
    with its default parameters (``--recipe prune-channels``)."""
    from ..core.recipe import bundled_recipes, load_recipe
    from ..core.registry import PASSES, make_pass

    if isinstance(recipe, str) and recipe in PASSES and recipe not in bundled_recipes():
        return [make_pass(recipe, {}, where=f"pass '{recipe}'")], None
    rec = load_recipe(recipe)
    if not rec.steps:
        raise RecipeError("the recipe has no [[steps]]: nothing to diagnose", rec.path)
    return rec.build(), rec.path


def _recipe(model, recipe, data, shapes, cfg, path) -> Diagnosis:
    from ..core.runner import make_context
    from .bisect import bisect_steps

    passes, _ = _passes(recipe)
    with blame(path, data=True):
        check_shapes(model, shapes, path)
        ctx = make_context(model, calibration=data, shapes=shapes, provider=cfg.provider, seed=cfg.seed)
        ds = ctx.inputs_for(model)
    steps = bisect_steps(model, passes, ctx, ds, limit=cfg.limit)
    out = Diagnosis("recipe", str(path or "<model>"), None, steps=steps)
    if steps.before is not None and steps.after is not None:
        out.layerwise = _layerwise(steps.before, steps.after, ds, dataset_for(steps.after, ds.view()), cfg)
    return out


def diagnose(
    reference, candidate=None, data=None, *, shapes=None, recipe=None, ort_optimizers: bool = False, fp16: bool = False, config: DiagnoseConfig | None = None
) -> Diagnosis:
    """Diagnose a model pair, a recipe run, ONNX Runtime's optimizers or an FP16 conversion
    (see the module docstring).  ``reference``/``candidate``: paths or protos; ``data``:
    DATA (.npz, folder, or a Dataset) or None for synthesized inputs (``shapes``)."""
    from ..runtime import resolve_provider

    cfg = config or DiagnoseConfig()
    cfg.provider = resolve_provider(cfg.provider)
    modes = [m for m, on in (("pair", candidate is not None), ("recipe", recipe is not None), ("ort", ort_optimizers), ("fp16", fp16)) if on]
    if len(modes) != 1:
        raise UsageError("give exactly one of: a CANDIDATE model, --recipe, --ort-optimizers, --fp16" + (f" (got {', '.join(modes)})" if modes else ""))
    if cfg.profile and modes[0] != "pair":
        raise UsageError("--profile compares two models: give REFERENCE and CANDIDATE")
    with tempfile.TemporaryDirectory(prefix="onnxopt-diagnose-") as tmpdir:
        tmp = Path(tmpdir)
        ref, label = _load(reference, tmp, "reference")
        pa = _path(reference)
        if modes[0] == "recipe":
            out = _recipe(ref, recipe, data, shapes, cfg, pa)
        elif modes[0] == "pair":
            cand, label_b = _load(candidate, tmp, "candidate")
            pb = _path(candidate)
            from .match import check_inputs

            with blame(pb):  # "nothing to match" first: it explains a data error too
                check_inputs(ref, cand)
            ds, ds_b = paired_datasets(ref, cand, data, shapes, seed=cfg.seed, paths=(pa, pb))
            out = Diagnosis("pair", label, label_b, layerwise=_layerwise(ref, cand, ds, ds_b, cfg, pb))
            if cfg.rank_outputs:
                out.sensitive = output_ranking(ref, cand, ds, ds_b, out.layerwise, top=cfg.top, metric=cfg.metric, limit=cfg.limit, provider=cfg.provider)
            if cfg.profile:
                out.profile = _profile(ref, cand, ds, cfg)
        else:
            with blame(pa, data=True):
                check_shapes(ref, shapes, pa)
                ds = dataset_for(ref, data, shapes, seed=cfg.seed)
            out = Diagnosis(modes[0], label)
            with blame(pa):
                if modes[0] == "ort":
                    from .bisect import bisect_ort

                    out.ort = bisect_ort(ref, ds, provider=cfg.provider, limit=cfg.limit, rel_l2=cfg.threshold)
                else:
                    from ..io import materialize
                    from .bisect import bisect_fp16

                    out.fp16 = bisect_fp16(materialize(ref), ds, limit_rel_l2=cfg.threshold or FP16_REL_L2, provider=cfg.provider, limit=cfg.limit)
    out.cpu_isa = cpu_isa()
    return out
