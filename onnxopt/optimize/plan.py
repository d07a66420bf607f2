"""The ``[optimize]`` table of a recipe: which candidates to build and how to choose.

Example (``passes/cpu.toml``)::

    [optimize]
    candidates = ["fp32", "int8-dynamic", "int8-static"]
    max_accuracy_drop = 1.0        # default budget when the caller gives none

    [optimize.int8-static]
    per_channel = [false, true]    # one candidate per value

A recipe without an ``[optimize]`` table is still usable: its leading exact steps are the
preprocessing, and the rest of its steps (quantize, prune ...) form one candidate
``recipe:NAME`` next to the simplified FP32 model.  Every table is validated with the
same rules as pass parameters: unknown keys, wrong types and bad values are a
``RecipeError`` naming the recipe file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..core.passes import validate_config
from ..core.recipe import Recipe
from ..errors import RecipeError

__all__ = ["KINDS", "OBJECTIVES", "OptimizeSettings", "CandidateSpec", "Plan", "plan_from_recipe"]

KINDS = ("fp32", "int8-dynamic", "int8-static", "int4", "prune", "fp16", "ort-offline")
OBJECTIVES = ("latency", "cold-start", "size")


@dataclass
class OptimizeSettings:
    """Top-level keys of ``[optimize]``."""

    candidates: list[str] = field(default_factory=lambda: ["fp32", "int8-dynamic", "int8-static"])
    max_accuracy_drop: float = 1.0
    metric: str | None = field(default=None, metadata={"choices": (None, "top1", "agreement", "cosine", "rel-l2")})
    min_gain: float = 0.05
    min_ratio: float = 0.97
    batch: int = 1
    threads: int = 0
    runs: int = 200
    time_budget: float = 8.0
    eval_limit: int = 512
    allow_cpu_verification: bool = False
    # what the choice weighs: steady-state latency, cold start (session creation + first
    # run, in fresh processes) or file size; every choice stays >= min_ratio vs the input
    objective: str = field(default="latency", metadata={"choices": OBJECTIVES})
    # after the choice, search ONNX Runtime session options for it and carry the winner
    session_options: bool = True
    cold_start_repeats: int = 5

    def check(self):
        bad = [c for c in self.candidates if c not in KINDS and not c.startswith("recipe:")]
        problems = [
            (not self.candidates, "'candidates' is empty"),
            (bad, f"unknown candidate(s) {', '.join(bad)} (known: {', '.join(KINDS)}, recipe:NAME)"),
            (self.max_accuracy_drop < 0, "max_accuracy_drop must be >= 0"),
            (self.min_gain < 0, "min_gain must be >= 0"),
            (not 0 < self.min_ratio <= 1.5, "min_ratio must be in (0, 1.5]"),
            (self.batch <= 0 or self.runs <= 0 or self.eval_limit <= 0 or self.threads < 0, "batch, runs and eval_limit must be positive, threads >= 0"),
            (self.time_budget <= 0, "time_budget must be positive"),
            (self.cold_start_repeats < 1, "cold_start_repeats must be >= 1"),
        ]
        return next((msg for failed, msg in problems if failed), None)


@dataclass
class Int8DynamicConfig:
    op_types: list[str] = field(default_factory=lambda: ["MatMul", "Gemm"])
    weight_type: str = field(default="int8", metadata={"choices": ("int8", "uint8")})
    per_channel: bool = False
    reduce_range: bool = False
    plain_ort: bool = False  # also ORT's quantize_dynamic on the input model, as candidate int8-dynamic-ort


@dataclass
class Int8StaticConfig:
    per_channel: list[bool] | bool = field(default_factory=lambda: [False, True])
    method: str = field(default="minmax", metadata={"choices": ("minmax", "percentile", "entropy", "auto")})
    activation_type: str = field(default="uint8", metadata={"choices": ("int8", "uint8")})
    weight_type: str = field(default="int8", metadata={"choices": ("int8", "uint8")})
    op_types: list[str] | None = None
    calibration_samples: int = 128
    budget_search: bool = True

    def check(self):
        return "calibration_samples must be positive" if self.calibration_samples <= 0 else None


@dataclass
class Int4Config:
    """Weight-only INT4 (``MatMulNBits``), built only for MatMul-heavy models: at least
    ``min_matmuls`` MatMul/Gemm nodes with a constant 2-D weight holding at least
    ``min_weight_share`` of the model's weight elements."""

    block_size: int = 32
    method: str = field(default="rtn", metadata={"choices": ("rtn", "hqq")})
    min_matmuls: int = 4
    min_weight_share: float = 0.5

    def check(self):
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            return "block_size must be a power of 2 >= 16"
        return "min_weight_share must be in [0, 1]" if not 0 <= self.min_weight_share <= 1 else None


@dataclass
class PruneConfig:
    """``ratio``: the amounts to try, one candidate each: the channel ratio (``channels``),
    the sparsity (``magnitude``), both in (0, 1), or the number of residual blocks to remove
    (``blocks``, a positive integer); empty: ``onnxopt.prune`` searches the largest amount
    within the budget (one candidate)."""

    method: str = field(default="channels", metadata={"choices": ("channels", "magnitude", "blocks")})
    ratio: list[float] | float = field(default_factory=list)

    def check(self):
        vals = self.ratio if isinstance(self.ratio, list) else [self.ratio]
        if self.method == "blocks":
            bad = any(float(v) != int(v) or v < 1 for v in vals)
            return "ratio values must be whole numbers of blocks >= 1 for method blocks" if bad else None
        return "ratio values must be in (0, 1)" if any(not 0 < r < 1 for r in vals) else None


@dataclass
class Fp16Config:
    keep_fp32: list[str] = field(default_factory=list)
    reference_samples: int = 8

    def check(self):
        return "reference_samples must be positive" if self.reference_samples <= 0 else None


@dataclass
class RecipeCandidateConfig:
    pass


@dataclass
class OrtOfflineConfig:
    """ONNX Runtime's optimized graph saved at ``level`` (``serving.offline``)."""

    level: str = field(default="all", metadata={"choices": ("basic", "extended", "all")})


CONFIGS = {
    "fp32": RecipeCandidateConfig,
    "int8-dynamic": Int8DynamicConfig,
    "int8-static": Int8StaticConfig,
    "int4": Int4Config,
    "prune": PruneConfig,
    "fp16": Fp16Config,
    "ort-offline": OrtOfflineConfig,
}


@dataclass
class CandidateSpec:
    kind: str  # a KINDS entry or "recipe:NAME"
    config: object


@dataclass
class Plan:
    recipe: Recipe
    settings: OptimizeSettings
    candidates: list[CandidateSpec]
    preprocess: list  # Pass instances (exact steps)
    recipe_tail: list  # Pass instances forming the "recipe:NAME" candidate (no [optimize] table)

    def describe(self) -> dict:
        return {
            "recipe": self.recipe.name,
            "settings": dataclasses.asdict(self.settings),
            "candidates": [{"kind": c.kind, **dataclasses.asdict(c.config)} for c in self.candidates],
            "preprocess": [p.key for p in self.preprocess],
        }


def _validate(cls, params: dict, where: str, recipe: Recipe):
    try:
        return validate_config(cls, params, where, RecipeError)
    except RecipeError as exc:
        raise RecipeError(exc.message, recipe.path) from None


def plan_from_recipe(recipe: Recipe) -> Plan:
    """Validate ``recipe``'s ``[optimize]`` table (or derive a plan from its steps)."""
    passes = recipe.build()
    table = recipe.sections.get("optimize")
    if table is None:
        # leading exact steps = preprocessing; the rest = one candidate
        cut = next((i for i, p in enumerate(passes) if not p.exact), len(passes))
        pre, tail = passes[:cut], passes[cut:]
        kinds = ["fp32"] + ([f"recipe:{recipe.name}"] if tail else [])
        settings = OptimizeSettings(candidates=kinds)
        specs = [CandidateSpec(k, RecipeCandidateConfig()) for k in kinds]
        return Plan(recipe, settings, specs, pre, tail)
    if not isinstance(table, dict):
        raise RecipeError("'optimize' must be a table ([optimize])", recipe.path)
    top = {k: v for k, v in table.items() if not isinstance(v, dict)}
    subs = {k: v for k, v in table.items() if isinstance(v, dict)}
    settings = _validate(OptimizeSettings, top, "[optimize]", recipe)
    unknown = sorted(set(subs) - set(CONFIGS))
    if unknown:
        raise RecipeError(
            f"[optimize]: unknown table(s) {', '.join(f'[optimize.{u}]' for u in unknown)} (known: {', '.join(k for k in CONFIGS if k != 'fp32')})",
            recipe.path,
        )
    specs = [
        CandidateSpec(k, RecipeCandidateConfig() if k.startswith("recipe:") else _validate(CONFIGS[k], subs.get(k, {}), f"[optimize.{k}]", recipe))
        for k in settings.candidates
    ]
    if "fp32" not in settings.candidates:
        specs.insert(0, CandidateSpec("fp32", RecipeCandidateConfig()))
        settings.candidates = ["fp32"] + list(settings.candidates)
    lossy = [p.key for p in passes if not p.exact]
    if lossy:
        raise RecipeError(
            f"[optimize] recipes keep [[steps]] exact (preprocessing); lossy step(s) {', '.join(lossy)} belong in candidates",
            recipe.path,
        )
    return Plan(recipe, settings, specs, passes, [])
