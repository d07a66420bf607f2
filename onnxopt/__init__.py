"""onnxopt: verified graph-level optimization of ONNX models.

Every public function takes a path or an ``onnx.ModelProto`` and returns a ``Result``
(model + report) or, for ``verify``, a truthy ``Comparison``.  Functions are imported on
first use so that ``import onnxopt`` (and ``onnxopt --help``) stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "inspect": "onnxopt.inspect_model:inspect",
    "simplify": "onnxopt.simplify.api:simplify",
    "verify": "onnxopt.verify:verify",
    "run": "onnxopt.core.runner:run",
    "quantize": "onnxopt.quantize.api:quantize",
    "prune": "onnxopt.prune.api:prune",
    "ensemble": "onnxopt.ensemble.api:ensemble",
    "chain": "onnxopt.ensemble.api:chain",
    "bench": "onnxopt.bench.api:bench",
    "optimize": "onnxopt.optimize.api:optimize",
    "adapt": "onnxopt.adapt.api:adapt",
    "tune": "onnxopt.serving.tune:tune",
    "session": "onnxopt.serving.carry:session",
    "diagnose": "onnxopt.diagnose.api:diagnose",
    "load_model": "onnxopt.io:load_model",
    "save_model": "onnxopt.io:save_model",
    "load_data": "onnxopt.data:load_data",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'onnxopt' has no attribute '{name}'")
    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_API))
