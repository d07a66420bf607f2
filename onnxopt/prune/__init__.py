"""Pruning on the ONNX graph: magnitude (zeros), channels by dependency group with
least-squares reconstruction, and residual blocks; see ``api.prune``."""

from ..core.public import callable_module

# ``onnxopt.prune(...)`` is the public function even once this package is imported
callable_module(__name__, "onnxopt.prune.api:prune")
