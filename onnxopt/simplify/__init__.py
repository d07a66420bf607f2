"""Simplification: constant folding, dead code and duplicate weights removal (exact transforms)."""

from ..core.public import callable_module

# ``onnxopt.simplify(...)`` is the public function even once this package is imported
callable_module(__name__, "onnxopt.simplify.api:simplify")
