"""The ONNX Runtime internals that quantize/ort_lazy.py replaces and quantize/ort_backend.py
calls by keyword.  A new onnxruntime that renames or reshapes them fails here, loudly, before
it fails a user: re-check ort_lazy against it (benchmarks/large_model.py) and add its version
to ``TESTED_ORT``."""

from __future__ import annotations

import onnxruntime

from onnxopt.quantize import ort_lazy


def test_installed_onnxruntime_has_the_internals_onnxopt_uses():
    problems = ort_lazy.internals_changed()
    assert not problems, f"onnxruntime {onnxruntime.__version__} changed internals onnxopt relies on: {problems}"


def test_installed_onnxruntime_is_a_tested_version():
    version = ".".join(onnxruntime.__version__.split(".")[:2])
    assert version in ort_lazy.TESTED_ORT, (
        f"onnxruntime {onnxruntime.__version__} is not among the versions ort_lazy was tested with "
        f"{ort_lazy.TESTED_ORT}: run tests/quantize and benchmarks/large_model.py, then add it"
    )


def test_changed_internals_are_reported(monkeypatch):
    monkeypatch.setitem(ort_lazy.ORT_INTERNALS, "quant_utils.no_such_function", ("x",))
    monkeypatch.setitem(ort_lazy.ORT_INTERNALS, "quant_utils.quantize_nparray", ("qType",))
    problems = ort_lazy.internals_changed()
    assert any("no_such_function: missing" in p for p in problems)
    assert any("quantize_nparray: parameters" in p for p in problems)
