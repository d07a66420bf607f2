"""matplotlib is optional (the ``onnxopt[plot]`` extra): the one place that imports it for
the plot modules (``bench/plot.py``, ``prune/plot.py``) or refuses, with one line, when it
is not installed.

Call :func:`require_matplotlib` where a ``--plot`` option is checked, before any work, and
again where the figure is drawn; both are cheap once matplotlib is imported.
"""

from __future__ import annotations

import importlib

from .errors import MissingDependencyError

__all__ = ["PLOT_HINT", "require_matplotlib"]

PLOT_HINT = "--plot needs matplotlib: pip install 'onnxopt[plot]'"


def require_matplotlib():
    """Return the ``matplotlib`` module; raise ``MissingDependencyError`` (exit 2) with
    :data:`PLOT_HINT` when it cannot be imported."""
    try:
        return importlib.import_module("matplotlib")
    except ImportError:
        raise MissingDependencyError(PLOT_HINT) from None
