"""``onnxopt diagnose``: where two models part ways, which step broke it, why one is slower.

Modules: ``match`` (tensors of one graph in the other), ``layerwise`` (per-tensor error in
slices, first diverging node, top-k by error added), ``bisect`` (recipe steps, ONNX Runtime
optimizers, FP16 nodes), ``profile`` (ORT profiler trace grouped and diffed), ``hints`` (the
``onnxopt diagnose ...`` line other commands' errors end with), ``plot`` (``--plot``),
``api`` (the public ``diagnose``).
"""

from ..core.public import callable_module

# ``onnxopt.diagnose(...)`` is the public function even once this package is imported
callable_module(__name__, "onnxopt.diagnose.api:diagnose")
