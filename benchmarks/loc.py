"""Lines of code in ``onnxopt/`` at a git revision (issue #16's "lines of code go down").

Three counts: physical lines (``wc -l``); SLOC, the lines holding a token that is neither a
comment nor part of a docstring (blank lines excluded); and ``ast`` statements, which no
formatting changes.

Run: ``python benchmarks/loc.py c4fef41 HEAD`` (from the repository root).
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import tokenize

DOCSTRING_HOLDERS = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
SKIPPED = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None) if isinstance(node, DOCSTRING_HOLDERS) else None
        first = body[0] if body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def count(rev: str) -> dict:
    """``{files, physical, sloc, statements}`` of the ``.py`` files under ``onnxopt/`` at ``rev``."""
    files = [f for f in _git("ls-tree", "-r", "--name-only", rev, "onnxopt").split() if f.endswith(".py")]
    out = {"files": len(files), "physical": 0, "sloc": 0, "statements": 0}
    for f in files:
        src = _git("show", f"{rev}:{f}")
        tree = ast.parse(src)
        code = {n for tok in tokenize.generate_tokens(io.StringIO(src).readline) if tok.type not in SKIPPED for n in range(tok.start[0], tok.end[0] + 1)}
        out["physical"] += src.count("\n")
        out["sloc"] += len(code - _docstring_lines(tree))
        out["statements"] += sum(isinstance(x, ast.stmt) for x in ast.walk(tree))
    return out


def main(argv: list[str]) -> None:
    for rev in argv or ["HEAD"]:
        c = count(rev)
        print(f"{rev}: {c['files']} files, {c['physical']} physical lines, {c['sloc']} SLOC, {c['statements']} statements")


if __name__ == "__main__":
    main(sys.argv[1:])
