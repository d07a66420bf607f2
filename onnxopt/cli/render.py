"""JSON on stdout for ``--json``; tables and numbers are rendered by ``onnxopt.render``."""

from __future__ import annotations

import click

__all__ = ["echo_json"]


def echo_json(obj) -> None:
    """Standard JSON on stdout (non-finite floats as strings)."""
    from ..render import to_json

    click.echo(to_json(obj))
