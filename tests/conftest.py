"""Shared fixtures: bundled models, the onnx wheel's architecture models, a CLI runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def light_models() -> list[Path]:
    return sorted(LIGHT.glob("light_*.onnx"))


def pytest_collection_modifyitems(config, items):
    try:
        import onnxruntime as ort

        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    except Exception:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="CUDAExecutionProvider not available")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def models_dir() -> Path:
    return MODELS


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def invoke(runner):
    """Run ``onnxopt ARGS`` in-process; returns click's Result (exit_code, stdout, stderr)."""
    from onnxopt.cli.main import cli

    def _invoke(*args):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=True)

    return _invoke


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)
