"""Layering rules of the tree, checked on the source (docs/architecture.md):
no private name imported from another module, no import of ``onnxopt.cli`` outside ``cli/``
(the entry point ``__main__`` excepted), and the low layers import no capability."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "onnxopt"
CAPABILITIES = {"simplify", "quantize", "prune", "ensemble", "bench", "optimize", "adapt", "demo", "cli", "diagnose", "serving"}
LOW = {"errors", "io", "data", "graph", "render", "stats", "runtime", "metrics", "session_options", "linear"}


def _imports(path: Path):
    """(importing module, imported module, imported name or None) for every import."""
    mod = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
    package = mod.split(".")[:-1] if path.name != "__init__.py" else mod.split(".")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            for alias in node.names:
                yield mod, target, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield mod, alias.name, None


MODULES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_no_private_name_crosses_modules(path):
    bad = [f"{t}.{n}" for m, t, n in _imports(path) if n and n.startswith("_") and not n.startswith("__") and t != m]
    assert not bad, f"{path.relative_to(PKG)} imports private names {bad}: make them public where they live"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_cli_is_the_top_layer(path):
    rel = path.relative_to(PKG)
    if rel.parts[0] == "cli" or rel.name == "__main__.py":
        return
    bad = [t for _, t, n in _imports(path) if t.startswith("onnxopt.cli") or (t == "onnxopt" and n == "cli")]
    assert not bad, f"{rel} imports {bad}: nothing below cli/ may import it"


@pytest.mark.parametrize("path", [p for p in MODULES if p.parent == PKG and p.stem in LOW], ids=lambda p: p.name)
def test_low_layers_import_no_capability(path):
    bad = sorted({t for _, t, _ in _imports(path) if t.startswith("onnxopt.") and t.split(".")[1] in CAPABILITIES})
    assert not bad, f"{path.name} imports capability modules {bad}"


BENCHMARKS = sorted((PKG.parent / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmarks_import_names_that_exist(path):
    """Benchmarks never run in the suite; a name they import from onnxopt that moved or was
    renamed would only fail when someone reruns them."""
    import importlib

    missing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("onnxopt"):
            mod = importlib.import_module(node.module)
            missing += [f"{node.module}.{a.name}" for a in node.names if not hasattr(mod, a.name) and not _is_submodule(node.module, a.name)]
    assert not missing, f"{path.name} imports names that do not exist: {missing}"


def _is_submodule(module: str, name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(f"{module}.{name}") is not None
