"""matplotlib is an extra (``onnxopt[plot]``): with it hidden, every plot path refuses with one
line and exit 2, before any work and without writing a file."""

from __future__ import annotations

import sys

import pytest

from onnxopt.errors import MissingDependencyError
from onnxopt.plotting import PLOT_HINT, require_matplotlib

HINT_LINE = "error: --plot needs matplotlib: pip install 'onnxopt[plot]'"


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Make ``import matplotlib`` (and any submodule) raise ImportError, as when not installed."""
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_require_matplotlib_returns_the_module_when_installed():
    pytest.importorskip("matplotlib")
    assert require_matplotlib().__name__ == "matplotlib"


def test_require_matplotlib_refuses_with_the_install_hint(no_matplotlib):
    with pytest.raises(MissingDependencyError) as info:
        require_matplotlib()
    assert info.value.exit_code == 2
    assert str(info.value) == PLOT_HINT == "--plot needs matplotlib: pip install 'onnxopt[plot]'"


def test_bench_plot_refused_before_any_timing(invoke, models_dir, tmp_path, no_matplotlib):
    png, out = tmp_path / "b.png", tmp_path / "b.json"
    model = models_dir / "digits_mlp.onnx"
    res = invoke("bench", model, model, "--runs", "5", "--format", "json", "-o", out, "--plot", png)
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [HINT_LINE]
    assert res.stdout == ""  # refused before the table: nothing was measured
    assert not png.exists() and not out.exists()


def test_bench_api_plot_refused(no_matplotlib, tmp_path):
    from onnxopt.bench.plot import plot_bytes, plot_report

    with pytest.raises(MissingDependencyError, match="onnxopt\\[plot\\]"):
        plot_report({"results": [], "models": []}, {}, tmp_path / "b.png")
    with pytest.raises(MissingDependencyError):
        plot_bytes({"results": [], "models": []}, {}, "png")
    assert not (tmp_path / "b.png").exists()


def test_prune_plot_refused_before_any_work(invoke, models_dir, tmp_path, no_matplotlib):
    out, png = tmp_path / "p.onnx", tmp_path / "curve.png"
    model, data = models_dir / "digits_resnet.onnx", models_dir / "digits_test.npz"
    args = ["-o", out, "--method", "blocks", "--eval", data, "--max-accuracy-drop", "1"]
    res = invoke("prune", model, *args, "--plot", png)
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [HINT_LINE]
    assert not out.exists() and not png.exists()


def test_prune_plot_curve_refused(no_matplotlib, tmp_path):
    from onnxopt.prune.plot import plot_curve

    with pytest.raises(MissingDependencyError):
        plot_curve(None, tmp_path / "c.png", xlabel="ratio")
    assert not (tmp_path / "c.png").exists()
