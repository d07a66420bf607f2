"""``onnxopt passes``: the pass registry and the bundled recipes."""

from __future__ import annotations

import click

from ..render import table
from .options import json_option
from .render import echo_json

__all__ = ["command", "listing"]


def listing() -> dict:
    """{"passes": [...], "recipes": [...]} from the registry and the bundled recipe folder."""
    from ..core.recipe import bundled_dir, bundled_recipes, load_recipe
    from ..core.registry import pass_infos
    from ..errors import RecipeError

    passes = [{"key": i.key, "exact": i.exact, "needs": list(i.needs), "help": i.help, "target": i.target} for i in pass_infos()]
    recipes = []
    for name, path in bundled_recipes().items():
        try:
            rec = load_recipe(path, validate=False)
            recipes.append({"name": name, "description": rec.description, "target": rec.target, "steps": [s.key for s in rec.steps], "file": path.name})
        except RecipeError as exc:
            recipes.append({"name": name, "description": f"(unreadable: {exc.message})", "target": None, "steps": [], "file": path.name})
    return {"passes": passes, "recipes": recipes, "recipes_dir": str(bundled_dir())}


@click.command("passes")
@json_option
def command(as_json):
    """List the registered passes (key, exact or lossy, what they need, what they do) and
    the bundled recipes usable with 'onnxopt run NAME MODEL -o OUT'."""
    info = listing()
    if as_json:
        echo_json(info)
        return
    rows = [[p["key"], "exact" if p["exact"] else "lossy", ", ".join(p["needs"]) or "-", p["help"]] for p in info["passes"]]
    click.echo(table(["pass", "kind", "needs", "what it does"], rows))
    click.echo("")
    rows = [[r["name"], r["target"] or "-", " > ".join(r["steps"]), r["description"]] for r in info["recipes"]]
    click.echo(table(["recipe", "target", "steps", "description"], rows) if rows else "no bundled recipes")
    click.echo(
        f"\nrecipes in {info['recipes_dir']}; run one with: onnxopt run NAME MODEL -o OUT (optimize --recipe / ensemble "
        "--recipe use their [optimize] / [ensemble] tables)"
    )
