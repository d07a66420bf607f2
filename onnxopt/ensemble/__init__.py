"""Ensembles: N models fused into one verified graph (mean, weighted, vote, stack) and serial chains."""

from ..core.public import callable_module

# ``onnxopt.ensemble(...)`` is the public function even once this package is imported
callable_module(__name__, "onnxopt.ensemble.api:ensemble")
