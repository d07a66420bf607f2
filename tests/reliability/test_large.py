"""The large-model path, scaled down: the 2 GB protobuf limit and the lazy-load threshold of
``onnxopt.io`` are patched to a few hundred KB, so that a 3 MB model takes every branch a
3 GB one takes (external data in and out, weights left in their files, sessions that read
them from the folder, checks on a skeleton, file-to-file copies) in a second.

``benchmarks/large_model.py`` runs the same commands on a real > 2 GB model and reports
peak RSS.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import io as oio

from .harness import assert_valid_model, command_problem, run_cli

SCALED_TWO_GB = 512 * 1024
SCALED_LARGE = 256 * 1024


def big_mlp(rows: int = 384, layers: int = 3, seed: int = 0) -> onnx.ModelProto:
    """x [N, rows] -> layers x (MatMul [rows, rows] + Relu) -> y [N, 10]; ~0.6 MB per layer."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        inits.append(
            numpy_helper.from_array(
                (rng.standard_normal((rows, rows)) / np.sqrt(rows)).astype(np.float32), f"w{i}"
            )
        )
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
            helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}"),
        ]
        prev = f"r{i}"
    inits.append(
        numpy_helper.from_array(
            (rng.standard_normal((rows, 10)) / np.sqrt(rows)).astype(np.float32), "head"
        )
    )
    nodes.append(helper.make_node("MatMul", [prev, "head"], ["y"], name="head_mm"))
    g = helper.make_graph(
        nodes,
        "big_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.fixture
def scaled(monkeypatch):
    monkeypatch.setattr(oio, "TWO_GB", SCALED_TWO_GB)
    monkeypatch.setattr(oio, "LARGE_MODEL_BYTES", SCALED_LARGE)


@pytest.fixture
def large(tmp_path, scaled):
    src = tmp_path / "in" / "model.onnx"
    src.parent.mkdir()
    oio.save_model(big_mlp(), src)  # over the (scaled) limit: external data chosen automatically
    return src


def _external_files(path):
    m = onnx.load(str(path), load_external_data=False)
    return {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}


def _run_both(a, b, n=6):
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((n, 384)).astype(np.float32)
    outs = []
    for p in (a, b):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        outs.append(
            ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]).run(
                None, {"x": x}
            )[0]
        )
    return outs


def test_scaled_save_uses_external_data(large):
    assert _external_files(large), (
        "a model over the (scaled) limit must be saved with external data"
    )
    lazy = oio.load_model(large, lazy=None)
    assert oio.is_lazy(lazy), "a model over the (scaled) large threshold loads lazily"
    assert lazy.ByteSize() < 64 * 1024, "the lazy proto holds no weights"
    assert oio.model_nbytes(lazy) > 3 * 384 * 384 * 4


def test_inspect(large):
    out = run_cli(["inspect", large, "--json"])
    assert out.exit_code == 0, out.describe()
    assert "external" in out.stdout.lower()


def test_simplify_keeps_weights_in_files(large, tmp_path):
    out = tmp_path / "out" / "simple.onnx"
    res = run_cli(["simplify", large, "-o", out])
    assert res.exit_code == 0, res.describe()
    assert _external_files(out), "output must use external data"
    assert_valid_model(out)
    a, b = _run_both(large, out)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in large.parent.iterdir()) == sorted(
        ["model.onnx", *_external_files(large)]
    ), "input folder changed"


def test_simplify_api_lazy_and_deterministic(large, tmp_path):
    from onnxopt.simplify.api import simplify

    r1 = simplify(large)
    assert oio.is_lazy(r1.model), "simplify should work on the lazily loaded model"
    notes = [n for s in r1.report["steps"] for n in s["notes"]]
    assert any("onnxsim skipped" in n for n in notes), notes
    p1, p2 = tmp_path / "a" / "m.onnx", tmp_path / "b" / "m.onnx"
    r1.save(p1)
    simplify(large).save(p2)
    assert p1.read_bytes() == p2.read_bytes()
    assert (p1.parent / next(iter(_external_files(p1)))).read_bytes() == (
        p2.parent / next(iter(_external_files(p2)))
    ).read_bytes()


def test_verify(large, tmp_path):
    copy = tmp_path / "copy" / "model.onnx"
    oio.save_model(oio.load_model(large), copy)
    res = run_cli(["verify", large, copy])
    assert res.exit_code == 0, res.describe()


@pytest.mark.parametrize("mode", ["dynamic"])
def test_quantize(large, tmp_path, mode):
    if command_problem("quantize"):
        pytest.skip(command_problem("quantize"))
    out = tmp_path / "out" / "q.onnx"
    res = run_cli(["quantize", large, "-o", out, "--mode", mode, "--allow-slower"])
    assert res.exit_code == 0, res.describe()
    assert_valid_model(out)
    assert _external_files(out), "quantized output over the (scaled) limit must use external data"


def test_ensemble(large, tmp_path):
    if command_problem("ensemble"):
        pytest.skip(command_problem("ensemble"))
    out = tmp_path / "out" / "ens.onnx"
    res = run_cli(["ensemble", large, large, "-o", out, "--fusion", "mean"])
    assert res.exit_code == 0, res.describe()
    assert_valid_model(out)
    assert _external_files(out)
    a, b = _run_both(large, out)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_lazy_session_and_check(large):
    """The pieces the large path relies on, directly: a session and the full checker on a
    lazy proto, without reading its weights into this process."""
    from onnxopt.runtime import create_session
    from onnxopt.verify import check_model

    lazy = oio.load_model(large, lazy=True)
    rec = check_model(lazy)
    assert rec.checker and rec.ort_loaded
    assert any("left in their files" in n for n in rec.notes)
    x = np.ones((2, 384), np.float32)
    full = oio.load_model(large)
    got = create_session(lazy).run(None, {"x": x})[0]
    want = create_session(full).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)
    materialized = oio.materialize(oio.load_model(large, lazy=True))
    assert not oio.is_lazy(materialized)
    assert materialized.SerializeToString(deterministic=True) == full.SerializeToString(
        deterministic=True
    )
