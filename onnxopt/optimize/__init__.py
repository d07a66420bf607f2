"""``onnxopt optimize``: candidates (FP32, INT8, pruned, FP16) built, verified, timed against
the input on the target, and the fastest one within the accuracy budget chosen."""

from ..core.public import callable_module

# ``onnxopt.optimize(...)`` is the public function even once this package is imported
callable_module(__name__, "onnxopt.optimize.api:optimize")
