"""One exception hierarchy for onnxopt; each class carries the exit code the CLI uses.

Exit codes: 0 ok, 1 internal error (any exception that is not an ``OnnxoptError``),
2 bad input or usage, 3 verification failed or accuracy budget not met.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "blame",
    "blaming",
    "OnnxoptError",
    "UsageError",
    "InputError",
    "ModelError",
    "DataError",
    "RecipeError",
    "UnsupportedError",
    "ProviderError",
    "MissingDependencyError",
    "VerificationError",
    "BudgetError",
    "NothingToDoError",
]


class OnnxoptError(Exception):
    """Base of every error that is the user's to fix; rendered as ``error: PATH: message``."""

    exit_code = 2

    def __init__(self, message: str, path: str | os.PathLike | None = None, **details):
        super().__init__(message)
        self.message = message
        self.path = os.fspath(path) if path is not None else None
        self.details = details

    def __str__(self) -> str:
        one_line = " ".join(str(self.message).split())
        return f"{self.path}: {one_line}" if self.path else one_line


class UsageError(OnnxoptError):
    """Bad combination of options or arguments."""


class InputError(OnnxoptError):
    """A file the user handed us is unusable."""


class ModelError(InputError):
    """Not an ONNX model, truncated, missing external data, invalid graph."""


class DataError(InputError):
    """DATA (.npz or folder of .npz) does not match the model."""


class RecipeError(InputError):
    """A recipe TOML file is malformed: bad TOML, unknown step, bad parameter."""


class UnsupportedError(InputError):
    """The model uses something the requested transform cannot handle."""


class ProviderError(InputError):
    """The requested execution provider is not available."""


class MissingDependencyError(UsageError):
    """An optional dependency (a pip extra, e.g. ``onnxopt[plot]``) is not installed; the
    message says what to install."""


class VerificationError(OnnxoptError):
    """A transform's output failed verification (checker, ORT load, numbers)."""

    exit_code = 3


class BudgetError(OnnxoptError):
    """The accuracy budget (or a speed requirement) could not be met."""

    exit_code = 3


class NothingToDoError(OnnxoptError):
    """The transform found nothing it can act on (no prunable weights, no residual blocks)."""

    exit_code = 3


def first_failure(*cases: tuple[object, str]) -> str | None:
    """The message of the first ``(failed, message)`` case whose ``failed`` is true, else None
    (a table of checks; every condition is evaluated, so each must be safe on its own)."""
    return next((message for failed, message in cases if failed), None)


@contextmanager
def blame(path: str | os.PathLike | None, *, data: bool = False) -> Iterator[None]:
    """Inside, a ``ModelError`` raised without a path is about the model at ``path``: the
    CLI then prints ``error: PATH: message`` (checks on a loaded proto, such as an ONNX
    Runtime session or the graph's input types, do not know which file it came from).
    ``data=True``: a ``DataError`` without a path too (DATA errors name their file; one
    without a file is about inputs synthesized from the model: ``--shape``, dtypes)."""
    try:
        yield
    except (ModelError, DataError) as exc:
        if exc.path is None and path is not None and (data or isinstance(exc, ModelError)):
            exc.path = os.fspath(path)
        raise


def blaming(param: str = "model"):
    """Decorator form of :func:`blame` for a public function whose argument ``param`` is a
    model path (or a proto, then nothing is added)::

        @blaming("model")
        def quantize(model, ...): ...
    """
    import functools
    import inspect

    def wrap(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            src = sig.bind_partial(*args, **kwargs).arguments.get(param)
            path = src if isinstance(src, (str, os.PathLike)) else None
            with blame(path):
                return fn(*args, **kwargs)

        return inner

    return wrap
