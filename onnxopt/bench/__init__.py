"""Benchmarking: interleaved latency measurement, statistics, reports."""

from ..core.public import callable_module

# ``onnxopt.bench(...)`` is the public function even once this package is imported
callable_module(__name__, "onnxopt.bench.api:bench")
