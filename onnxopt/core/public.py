"""Public functions that share their name with a submodule stay callable.

``onnxopt.verify`` is both a function (the public API) and a module (``onnxopt/verify.py``);
likewise ``onnxopt.simplify``, ``onnxopt.quantize``, ...  Python binds a submodule to its
package's attribute when the submodule is first imported, which replaces the lazily loaded
function: after any internal ``import onnxopt.verify``, ``onnxopt.verify(a, b)`` would
raise "'module' object is not callable".  A module passed to ``callable_module`` forwards
calls to its public function, so both spellings work whatever was imported first, and
``import onnxopt.simplify.passes`` keeps working.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import types

__all__ = ["callable_module", "check_options"]


class _CallableModule(types.ModuleType):
    """A module that, called, calls the function named by ``__onnxopt_call__``."""

    def __call__(self, *args, **kwargs):
        module, _, attr = self.__onnxopt_call__.partition(":")
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)


def callable_module(name: str, target: str) -> None:
    """Make the module ``name`` callable as the function ``target`` ("module:function"),
    imported on first call.  Call it at the end of the module: ``callable_module(__name__,
    "onnxopt.simplify.api:simplify")``."""
    module = sys.modules[name]
    module.__onnxopt_call__ = target
    module.__class__ = _CallableModule


def check_options(config_cls, function: str, options: dict) -> dict:
    """``options`` when every name is a field of the dataclass ``config_cls``; else the
    ``TypeError`` Python raises for an unknown keyword argument of ``function``.  Public
    functions whose options are a config take ``**options`` and keep their keyword API."""
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(config_cls)})
    if unknown:
        raise TypeError(f"{function}() got unexpected keyword argument(s) {', '.join(unknown)}")
    return options
