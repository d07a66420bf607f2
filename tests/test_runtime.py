"""onnxopt.runtime: sessions on the asked provider, or a clean refusal."""

from __future__ import annotations

import pytest

import onnxopt.runtime as rt
from onnxopt.errors import ProviderError
from tests.toy_models import tiny_cnn


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_a_cuda_session_that_falls_back_to_cpu_is_refused(monkeypatch):
    """onnxruntime-gpu without its CUDA libraries lists CUDA yet builds the session on the
    CPU; every figure would then be a CPU figure labelled CUDA.  Simulated here: CUDA is
    reported available, and the CPU-only onnxruntime falls back as it does."""
    if rt.cuda_available():
        pytest.skip("CUDA is really available here")
    monkeypatch.setattr(rt, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    for provider in ("cuda", "auto"):
        with pytest.raises(ProviderError, match="did not create the session on CUDAExecutionProvider") as exc:
            rt.create_session(tiny_cnn(), provider)
        assert exc.value.exit_code == 2
    assert rt.create_session(tiny_cnn(), "cpu").get_providers()[0] == "CPUExecutionProvider"
