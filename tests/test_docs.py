"""The front door and the docs site stay in shape: README.md short, its relative links (and
DEVELOPING.md's) resolve, every docs page is in mkdocs.yml's nav and the other way round,
every command has a page and every public name an API entry.  ``mkdocs build --strict``
itself runs in ``.ci/run`` (and below when mkdocs is installed: ``pip install -e '.[docs]'``)."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README_MAX_LINES = 260

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~)")


def _prose(text: str) -> str:
    """The Markdown outside fenced and indented code blocks (links there are not links)."""
    out, fence = [], False
    for line in text.splitlines():
        if _FENCE.match(line.lstrip()):
            fence = not fence
            continue
        if not fence and not line.startswith("    "):
            out.append(line)
    return "\n".join(out)


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug (what mkdocs uses for anchors)."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[-\s]+", "-", text).strip("-")


def _anchors(md: Path) -> set[str]:
    return {
        _slug(m.group(1))
        for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", _prose(md.read_text()), re.M)
    }


def relative_links(md: Path) -> list[str]:
    """Links of ``md`` that point into the repository (not http(s), mailto or in-page)."""
    links = _LINK.findall(_prose(md.read_text(encoding="utf-8")))
    return [u for u in links if not re.match(r"^[a-z][a-z0-9+.-]*:", u) and not u.startswith("#")]


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < README_MAX_LINES, (
        f"README.md has {len(lines)} lines: move reference to docs/"
    )


@pytest.mark.parametrize("name", ["README.md", "DEVELOPING.md"])
def test_relative_links_resolve(name):
    md = ROOT / name
    links = relative_links(md)
    assert links, f"{name} links nowhere"
    broken = []
    for url in links:
        path, _, anchor = url.partition("#")
        target = (md.parent / path).resolve()
        if not target.exists():
            broken.append(url)
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(url)
    assert not broken, f"{name}: broken relative links {broken}"


def test_readme_setup_commands_unchanged():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert (
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[dev]'\n    onnxopt demo\n"
        in text
    )


def _nav_pages() -> list[str]:
    return re.findall(r":\s*([\w./-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = _nav_pages()
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(set(nav)) == pages
    assert len(nav) == len(set(nav)), "a page is listed twice in mkdocs.yml's nav"


def test_every_command_has_a_page():
    from onnxopt.cli.main import COMMANDS

    missing = [c for c in COMMANDS if not (DOCS / "commands" / f"{c}.md").is_file()]
    assert not missing, f"commands without docs/commands/<command>.md: {missing}"


def _public_api() -> dict[str, str]:
    """``onnxopt/__init__.py``'s table of public names, read from the source (name -> "module:attr")."""
    tree = ast.parse((ROOT / "onnxopt" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == "_API" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError("onnxopt/__init__.py has no _API table")


def test_every_public_name_is_in_the_api_reference():
    api = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^::: ([\w.]+)$", api, re.M))
    for name, target in _public_api().items():
        assert target.replace(":", ".") in documented, (
            f"docs/api.md lacks onnxopt.{name} ({target})"
        )


@pytest.mark.skipif(
    any(
        importlib.util.find_spec(m) is None
        for m in ("mkdocs", "mkdocstrings", "mkdocs_click", "material")
    ),
    reason="the docs extra is not installed (pip install -e '.[docs]')",
)
def test_mkdocs_build_strict(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-d",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").is_file()
