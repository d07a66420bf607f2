"""Transfer learning on the ONNX graph: cut at a feature tensor, fit a new head (see ``api.adapt``)."""

from ..core.public import callable_module

# ``onnxopt.adapt(...)`` is the public function even once this package is imported
callable_module(__name__, "onnxopt.adapt.api:adapt")
