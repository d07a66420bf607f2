"""INT8 quantization with ONNX Runtime: valid, faster and within an accuracy budget.

Modules, one concern each: ``config`` (a candidate configuration), ``preprocess``
(exported graphs made quantizable), ``calibrate`` (streaming range statistics, numpy only),
``collect`` (activations streamed through an augmented model), ``ort_backend`` (ORT's
quantizer driven with those ranges), ``ort_lazy`` (that quantizer reading a large model's
weights from their files, one at a time), ``validity`` (invalid graphs repaired per node),
``sensitivity`` (per-node sensitivity and the budget search), ``speed`` (interleaved
timing vs FP32), ``engine`` (one candidate end to end), ``api`` (``quantize``: a
``QuantizeConfig`` run as one ``quantize`` pass by the pipeline; and the building
blocks), ``stages`` (the stages of one run), ``candidates`` (the entry points ``optimize``
calls), ``passes`` (``quantize`` pass), ``transformer`` (``transformer-fusion`` pass).  Nothing is imported
here, so ``import onnxopt`` stays fast.
"""

from ..core.public import callable_module

# ``onnxopt.quantize(...)`` is the public function even once this package is imported
callable_module(__name__, "onnxopt.quantize.api:quantize")
