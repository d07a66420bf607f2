"""Recipes: ready pipelines in TOML, one file per deployment target (the top-level ``passes/``).

Format::

    name = "simplify"
    description = "one line"
    target = "cpu"            # optional: cpu | cuda

    [[steps]]
    pass = "simplify"         # a key of the pass registry
    # any other keys are the pass's parameters

Other top-level tables (``[optimize]``, ``[ensemble]``) belong to the commands that read
them (``onnxopt.optimize.plan``, ``onnxopt.ensemble.recipe``); ``onnxopt run`` ignores them.
A name without a path separator or ``.toml`` is looked up among the bundled recipes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RecipeError
from .registry import make_pass

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Recipe", "Step", "bundled_dir", "bundled_recipes", "find_recipe", "load_recipe"]

_TOP_KEYS = {"name", "description", "target", "steps", "optimize", "ensemble", "when"}


@dataclass
class Step:
    key: str
    params: dict


@dataclass
class Recipe:
    name: str
    path: Path
    description: str = ""
    target: str = "cpu"
    steps: list[Step] = field(default_factory=list)
    sections: dict = field(default_factory=dict)

    def build(self):
        """The recipe's passes, instantiated (validated)."""
        passes = []
        for i, s in enumerate(self.steps, 1):
            where = f"step {i} '{s.key}'"
            try:
                passes.append(make_pass(s.key, s.params, where=where))
            except RecipeError as exc:
                msg = exc.message if exc.message.startswith(where) else f"{where}: {exc.message}"
                raise RecipeError(msg, self.path) from None
        return passes


def bundled_dir() -> Path:
    """Bundled recipes: ``onnxopt/passes`` in a wheel, the repo's ``passes/`` in a checkout."""
    here = Path(__file__).resolve().parent.parent
    for cand in (here / "passes", here.parent / "passes"):
        if cand.is_dir():
            return cand
    return here / "passes"


def bundled_recipes() -> dict[str, Path]:
    d = bundled_dir()
    return {p.stem: p for p in sorted(d.glob("*.toml"))} if d.is_dir() else {}


def find_recipe(name_or_path) -> Path:
    s = str(name_or_path)
    p = Path(s)
    if p.suffix == ".toml" or "/" in s or "\\" in s:
        if not p.is_file():
            raise RecipeError("no such recipe file", p)
        return p
    known = bundled_recipes()
    if s in known:
        return known[s]
    if p.is_file():
        return p
    raise RecipeError(f"unknown recipe '{s}' (bundled: {', '.join(known) or 'none'})")


def load_recipe(name_or_path, *, validate: bool = True) -> Recipe:
    """Parse and validate a recipe; every problem is a RecipeError naming the file (and step).

    ``validate=False`` skips instantiating the passes (listing recipes stays cheap)."""
    path = find_recipe(name_or_path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"not valid TOML: {exc}", path) from exc
    except OSError as exc:
        raise RecipeError(f"cannot read: {exc.strerror or exc}", path) from exc
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise RecipeError(f"unknown top-level key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_TOP_KEYS))})", path)
    steps_doc = doc.get("steps", [])
    if not isinstance(steps_doc, list) or not all(isinstance(s, dict) for s in steps_doc):
        raise RecipeError("'steps' must be an array of tables ([[steps]])", path)
    steps = []
    for i, s in enumerate(steps_doc, 1):
        key = s.get("pass")
        if key is None:
            raise RecipeError(f"step {i}: missing 'pass' = \"name\"", path)
        if not isinstance(key, str):
            raise RecipeError(f"step {i}: 'pass' must be a string naming a pass, found {key!r}", path)
        steps.append(Step(key, {k: v for k, v in s.items() if k != "pass"}))
    target = doc.get("target", "cpu")
    if target not in ("cpu", "cuda"):
        raise RecipeError(f"target must be 'cpu' or 'cuda', found {target!r}", path)
    recipe = Recipe(
        str(doc.get("name", path.stem)),
        path,
        str(doc.get("description", "")),
        target,
        steps,
        {k: v for k, v in doc.items() if k not in ("name", "description", "target", "steps")},
    )
    if validate:
        recipe.build()  # validates every step and its parameters
    return recipe
