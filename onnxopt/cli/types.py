"""click parameter types for onnxopt's domain values."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["ShapeSpec", "CsvList", "FloatList", "IntList", "Fraction", "NameMap", "LayerRatio", "ClassNames"]


class _Parsed(click.ParamType):
    """A type parsed from text by ``parse``; a value already converted (a list or tuple:
    click converts defaults and values passed on again) is returned as it is."""

    def convert(self, value, param, ctx):
        return value if isinstance(value, (list, tuple)) else self.parse(str(value), param, ctx)


class ShapeSpec(_Parsed):
    """``NAME:1,3,224,224`` -> ``("NAME", (1, 3, 224, 224))``."""

    name = "NAME:D1,D2,..."

    def parse(self, value: str, param, ctx):
        name, sep, dims = value.rpartition(":")
        if not sep or not name:
            self.fail(f"'{value}' is not NAME:D1,D2,... (e.g. input:1,3,224,224)", param, ctx)
        try:
            shape = tuple(int(d) for d in dims.split(",") if d.strip() != "")
        except ValueError:
            self.fail(f"'{value}': dimensions must be integers", param, ctx)
        if not shape or any(d <= 0 for d in shape):
            self.fail(f"'{value}': dimensions must be positive integers", param, ctx)
        return name, shape


class CsvList(_Parsed):
    """``a,b,c`` -> ``["a", "b", "c"]`` (optionally restricted to ``choices``)."""

    name = "A,B,..."

    def __init__(self, choices=None):
        self.choices = tuple(choices) if choices else None

    def parse(self, value: str, param, ctx):
        items = [v.strip() for v in value.split(",") if v.strip()]
        if not items:
            self.fail("empty list", param, ctx)
        if self.choices:
            bad = [v for v in items if v not in self.choices]
            if bad:
                self.fail(f"{', '.join(bad)} not among {', '.join(self.choices)}", param, ctx)
        return items


class FloatList(_Parsed):
    """``0.5,0.3,0.2`` -> ``[0.5, 0.3, 0.2]``."""

    name = "X,Y,..."

    def parse(self, value: str, param, ctx):
        try:
            return [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            self.fail(f"'{value}' is not a comma-separated list of numbers", param, ctx)


class IntList(_Parsed):
    """``1,8,32`` -> ``[1, 8, 32]`` (positive)."""

    name = "N,M,..."

    def parse(self, value: str, param, ctx):
        try:
            vals = [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            self.fail(f"'{value}' is not a comma-separated list of integers", param, ctx)
        if not vals or any(v <= 0 for v in vals):
            self.fail(f"'{value}': values must be positive integers", param, ctx)
        return vals


class Fraction(click.ParamType):
    """A number strictly between 0 and 1 (or in [0, 1) with ``closed_low``)."""

    name = "FRACTION"

    def __init__(self, closed_low: bool = False):
        self.closed_low = closed_low

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"'{value}' is not a number", param, ctx)
        low_ok = v >= 0 if self.closed_low else v > 0
        if not (low_ok and v < 1):
            self.fail(f"{value} is outside {'[0' if self.closed_low else '(0'}, 1)", param, ctx)
        return v


class NameMap(_Parsed):
    """``FROM:TO`` -> ``("FROM", "TO")``."""

    name = "FROM:TO"

    def parse(self, value: str, param, ctx):
        a, sep, b = value.partition(":")
        if not sep or not a or not b:
            self.fail(f"'{value}' is not FROM:TO", param, ctx)
        return a, b


class LayerRatio(_Parsed):
    """``LAYER=RATIO`` -> ``("LAYER", 0.5)``; the layer is a node, output or weight name."""

    name = "LAYER=RATIO"

    def parse(self, value: str, param, ctx):
        layer, sep, r = value.rpartition("=")
        if not sep or not layer:
            self.fail(f"'{value}' is not LAYER=RATIO (e.g. conv2=0.5)", param, ctx)
        try:
            v = float(r)
        except ValueError:
            self.fail(f"'{value}': the ratio is not a number", param, ctx)
        if not 0 < v < 1:
            self.fail(f"'{value}': the ratio is outside (0, 1)", param, ctx)
        return layer, v


class ClassNames(_Parsed):
    """``cat,dog,bird`` or ``@names.txt`` (one name per line) -> list of names."""

    name = "A,B,...|@FILE"

    def parse(self, value: str, param, ctx):
        text = value
        if text.startswith("@"):
            path = Path(text[1:])
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                self.fail(f"cannot read class names from '{path}': {exc.strerror or exc}", param, ctx)
            names = [line.strip() for line in lines if line.strip()]
        else:
            names = [v.strip() for v in text.split(",") if v.strip()]
        if not names:
            self.fail("no class names given", param, ctx)
        return names
