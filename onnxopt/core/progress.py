"""Progress bars on stderr for steps that take more than a second (tqdm), off when quiet."""

from __future__ import annotations

import contextvars
import sys

__all__ = ["progress", "set_progress"]

_enabled = contextvars.ContextVar("onnxopt_progress", default=None)


def set_progress(enabled: bool | None) -> None:
    """True/False forces bars on/off; None (default) shows them when stderr is a terminal."""
    _enabled.set(enabled)


def progress(iterable, desc: str = "", total: int | None = None, unit: str = "it"):
    on = _enabled.get()
    if on is None:
        on = sys.stderr.isatty()
    if not on:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, mininterval=1.0, delay=1.0, file=sys.stderr)
