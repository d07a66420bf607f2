"""Rendering shared by the capabilities and the CLI: aligned text and markdown tables,
numbers, byte sizes, and the one JSON sanitizer.  Pure functions of plain values; nothing
here prints (``cli/render.py`` echoes)."""

from __future__ import annotations

import json
import math

import numpy as np

__all__ = ["fmt", "human_bytes", "human_count", "table", "markdown_table", "json_safe", "to_json"]


def human_bytes(n, *, signed: bool = False) -> str:
    """``1536 -> "1.5 KB"`` (binary units); ``signed`` writes a leading ``+`` for growth."""
    if n is None:
        return "-"
    n = float(n)
    sign = ("+" if n >= 0 else "-") if signed else ("-" if n < 0 else "")
    v = abs(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if v < 1024 or unit == "TB":
            return f"{sign}{v:.0f} {unit}" if unit == "B" else f"{sign}{v:.1f} {unit}"
        v /= 1024


def human_count(n, unit: str = "") -> str:
    """1234567 -> '1.23 M' (SI prefixes, three significant digits)."""
    if n is None:
        return "-"
    n = float(n)
    for prefix in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000 or prefix == "P":
            text = f"{n:.0f}" if prefix == "" else f"{n:.3g}"
            return f"{text} {prefix}{unit}".rstrip()
        n /= 1000


def fmt(v, digits: int = 4) -> str:
    """A table cell: None -> "-", bools as yes/no, floats to ``digits`` significant digits."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v == 0:
            return "0"
        return f"{v:.{digits - 1}e}" if abs(v) >= 1e5 or abs(v) < 1e-3 else f"{v:.{digits}g}"
    return str(v)


def _cells(headers, rows, right):
    cells = [[fmt(c) for c in r] for r in rows]
    if right is None:  # numbers right-aligned
        right = {i for i in range(len(headers)) if rows and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows)}
    return cells, right


def table(headers: list[str], rows: list[list], *, right: set[int] | None = None) -> str:
    """A plain aligned text table; columns in ``right`` (default: the numeric ones) right-aligned."""
    cells, right = _cells(headers, rows, right)
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(vals):
        return "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths, strict=True))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def markdown_table(headers: list[str], rows: list[list], *, right: set[int] | None = None) -> str:
    """The same table as GitHub-flavoured markdown (``|`` in cells escaped)."""
    cells, right = _cells(headers, rows, right)

    def esc(v: str) -> str:
        return v.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|")
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in cells]
    return "\n".join(lines)


def json_safe(obj, *, digits: int | None = None):
    """``obj`` with non-finite floats as strings ("inf", "-inf", "nan"), tuples as lists and
    numpy scalars as Python numbers, so that ``json.dumps`` writes standard JSON; with
    ``digits``, finite floats rounded to that many significant digits.  The one sanitizer:
    every JSON report, CSV cell and provenance record goes through it."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return str(obj)
        return float(f"{obj:.{digits}g}") if digits else obj
    if isinstance(obj, dict):
        return {str(k): json_safe(v, digits=digits) for k, v in obj.items()}
    return [json_safe(v, digits=digits) for v in obj] if isinstance(obj, (list, tuple)) else obj


def to_json(obj, **kw) -> str:
    """Standard JSON (sanitized, keys sorted, indented)."""
    return json.dumps(json_safe(obj), indent=2, sort_keys=True, default=str, allow_nan=False, **kw)
