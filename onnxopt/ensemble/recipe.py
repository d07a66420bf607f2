"""The ``[ensemble]`` table of a recipe: ``onnxopt ensemble``'s settings in a file.

Example (``passes/ensemble-cpu.toml``)::

    [ensemble]
    fusion = "mean"            # mean | weighted | vote | stack
    softmax = true
    fuse_members = true
    max_accuracy_drop = 1.0    # budget for the lossy steps below

    [[steps]]                  # run on the merged model, each verified against it
    pass = "simplify"

``ensemble(models, recipe=NAME)`` (``onnxopt ensemble ... --recipe NAME``) takes its
settings from the table; an argument given explicitly overrides the table key by key.
After the merge and its parity check the recipe's ``[[steps]]`` run on the merged model
through the pipeline runner.  A recipe without an ``[ensemble]`` table is usable too:
default settings plus its steps (as ``optimize`` uses a recipe without ``[optimize]``).
``onnxopt run`` runs the steps only and ignores the table.

The table is validated with the same rules as pass parameters: unknown keys, wrong types
and bad values are a ``RecipeError`` naming the recipe file.  Settings of the table that an
explicit argument makes meaningless are dropped with a note: the table's ``weights`` when
``fit`` is given, or when the explicit ``fusion`` takes no weights.  Data (``fit``,
``data``), shapes and the provider are the caller's, never the file's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..core.passes import validate_config
from ..core.recipe import Recipe, load_recipe
from ..errors import RecipeError, first_failure
from ..metrics import METRICS
from .heads import FUSIONS, STACK_HEADS

__all__ = ["EnsembleSettings", "EnsemblePlan", "SETTINGS", "resolve_settings"]


@dataclass
class EnsembleSettings:
    """The keys of ``[ensemble]`` (the defaults are ``onnxopt.ensemble``'s)."""

    fusion: str = field(default="mean", metadata={"choices": FUSIONS})
    weights: list[float] | None = None
    softmax: bool = False
    head: str = field(default="logistic", metadata={"choices": STACK_HEADS})
    l2: float | None = None
    keep_member_outputs: bool = False
    fuse_members: bool = False
    output: str | int | list | None = None
    input_map: dict | None = None
    max_accuracy_drop: float | None = None
    metric: str | None = field(default=None, metadata={"choices": (None, *METRICS)})

    def check(self):
        w, out = self.weights, self.output
        return first_failure(
            (w is not None and self.fusion not in ("weighted", "vote"), f"weights apply to fusion 'weighted' and 'vote', not '{self.fusion}'"),
            (w is not None and not w, "weights is empty"),
            (w is not None and any(not math.isfinite(x) or x < 0 for x in w), "weights must be finite numbers >= 0"),
            (w is not None and sum(w) <= 0, "weights are all zero"),
            (self.l2 is not None and not (self.l2 > 0 and math.isfinite(self.l2)), f"l2 must be a positive number, got {self.l2}"),
            (self.max_accuracy_drop is not None and not (self.max_accuracy_drop >= 0 and math.isfinite(self.max_accuracy_drop)),
             f"max_accuracy_drop must be a number >= 0, got {self.max_accuracy_drop}"),
            (isinstance(out, bool) or (isinstance(out, int) and out < 0), "output must be an output name, a position >= 0, or one name per member"),
            (isinstance(out, list) and (not out or not all(isinstance(o, str) or (isinstance(o, int) and not isinstance(o, bool) and o >= 0) for o in out)),
             "output must be a non-empty list of output names (or positions), one per member"),
            (self.input_map is not None and not all(isinstance(k, str) and isinstance(v, str) and v for k, v in self.input_map.items()),
             'input_map must map input names to input names ({ FROM = "TO" })'),
        )


SETTINGS = tuple(f.name for f in dataclasses.fields(EnsembleSettings))


@dataclass
class EnsemblePlan:
    """Resolved settings, where they came from, and the recipe's passes (none without one)."""

    settings: EnsembleSettings
    recipe: Recipe | None = None
    from_recipe: dict = field(default_factory=dict)  # table keys actually applied
    overridden: list[str] = field(default_factory=list)  # table keys an explicit argument replaced
    passes: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict | None:
        if self.recipe is None:
            return None
        return {
            "name": self.recipe.name,
            "file": self.recipe.path.name,
            "target": self.recipe.target,
            "table": "ensemble" in self.recipe.sections,
            "settings": dict(self.from_recipe),
            "overridden": list(self.overridden),
            "steps": [p.key for p in self.passes],
        }


def _table(recipe: Recipe) -> tuple[dict, EnsembleSettings]:
    table = recipe.sections.get("ensemble", {})
    if not isinstance(table, dict):
        raise RecipeError("'ensemble' must be a table ([ensemble])", recipe.path)
    try:
        return table, validate_config(EnsembleSettings, table, "[ensemble]", RecipeError)
    except RecipeError as exc:
        raise RecipeError(exc.message, recipe.path) from None


def resolve_settings(explicit: dict, recipe=None, *, fit=None, members: int) -> EnsemblePlan:
    """Settings from ``recipe``'s ``[ensemble]`` table (if any) overridden by ``explicit``
    (the arguments the caller gave, ``None`` ones left out).  Loads and validates the
    recipe (its steps included): a ``RecipeError`` naming the file for any problem in it."""
    unknown = sorted(set(explicit) - set(SETTINGS))
    if unknown:  # pragma: no cover - a programming error in the caller
        raise TypeError(f"unknown ensemble setting(s) {', '.join(unknown)}")
    if recipe is None:
        return EnsemblePlan(dataclasses.replace(EnsembleSettings(), **explicit))
    rec = load_recipe(recipe)
    table, file_settings = _table(rec)
    passes = rec.build()
    applied = {k: getattr(file_settings, k) for k in table}
    notes: list[str] = []
    if "weights" in applied and "weights" not in explicit:
        if fit is not None:
            del applied["weights"]
            notes.append(f"recipe '{rec.name}': its weights are not used (the weights are fitted on --fit data)")
        elif explicit.get("fusion", applied.get("fusion")) not in ("weighted", "vote"):
            del applied["weights"]
            notes.append(f"recipe '{rec.name}': its weights are not used (fusion '{explicit['fusion']}' takes none)")
        elif len(applied["weights"]) != members:
            raise RecipeError(f"[ensemble]: weights has {len(applied['weights'])} values for {members} members", rec.path)
    overridden = sorted(set(applied) & set(explicit))
    for k in overridden:
        del applied[k]
    settings = dataclasses.replace(EnsembleSettings(), **{**applied, **explicit})
    return EnsemblePlan(settings, rec, applied, overridden, passes, notes)
