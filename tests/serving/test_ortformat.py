"""The .ort format: built, verified, carrying its options, loaded by session(), cold start."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxopt.errors import ModelError, VerificationError
from onnxopt.runtime import create_session, is_ort_format
from onnxopt.serving.carry import carry_options, session
from onnxopt.serving.coldstart import BREAKDOWN_FIELDS, COLD_FIELDS, measure_cold_start
from onnxopt.serving.offline import ort_optimized
from onnxopt.serving.ortformat import (
    ort_format,
    ort_format_metadata,
    ort_format_options,
    ort_format_path,
)
from onnxopt.session_options import SessionConfig
from tests.conftest import MODELS
from tests.toy_models import tiny_cnn


def _feed(seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32)}


def test_ort_format_of_the_offline_graph_keeps_graph_options_and_outputs(tmp_path):
    m = tiny_cnn()
    off = ort_optimized(m)
    carry_options(off, SessionConfig(intra_op_threads=1, optimization_level="disable"))
    packed = ort_format(off, feeds=[_feed(0), _feed(1)])
    assert is_ort_format(packed.data) and not is_ort_format(off.SerializeToString())
    assert packed.report["optimized_at"] == "disable" and packed.report["feeds"] == 2
    assert packed.report["max_abs"] == 0.0  # the same graph in another container
    path = packed.save(tmp_path / "m.ort")
    assert is_ort_format(path) and "ort_config" in ort_format_metadata(path)
    assert ort_format_options(path) == SessionConfig(intra_op_threads=1, optimization_level="disable")
    # session() applies the carried options; outputs equal the ONNX model's
    s = session(path)
    so = s.get_session_options()
    assert so.intra_op_num_threads == 1 and int(so.graph_optimization_level) == 0
    ref = create_session(m).run(None, _feed(3))
    np.testing.assert_allclose(s.run(None, _feed(3))[0], ref[0], rtol=1e-5, atol=1e-6)
    # a file named otherwise is still recognized by its flatbuffer identifier
    other = tmp_path / "m.bin"
    other.write_bytes(packed.data)
    assert session(other).run(None, _feed(3))[0].shape == ref[0].shape


def test_ort_format_of_a_plain_model_is_optimized_first_and_loads_with_the_env_switch(tmp_path, monkeypatch):
    packed = ort_format(tiny_cnn())
    assert packed.report["optimized_at"] == "all"
    assert ort_format_options(packed.data).optimization_level == "disable"
    path = packed.save(tmp_path / "m.ort")
    # ORT 1.32 parses an .ort as protobuf when ORT_LOAD_CONFIG_FROM_MODEL=1: switched off around the load
    monkeypatch.setenv("ORT_LOAD_CONFIG_FROM_MODEL", "1")
    assert session(path).run(None, _feed())[0].shape == (1, 5)
    import os

    assert os.environ["ORT_LOAD_CONFIG_FROM_MODEL"] == "1"


def test_not_an_ort_file(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(tiny_cnn(), p)
    assert not is_ort_format(p) and not is_ort_format(tmp_path / "missing.ort")
    with pytest.raises(ModelError, match="not an ONNX Runtime .ort file"):
        ort_format_metadata(p)
    assert ort_format_path(tmp_path / "a.opt.onnx").name == "a.opt.ort"


def test_ort_format_refuses_a_model_onnxruntime_cannot_load():
    m = tiny_cnn()
    m.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(VerificationError):
        ort_format(m, feeds=[_feed()])


def test_cold_start_of_an_ort_file_with_breakdown(tmp_path):
    path = ort_format(tiny_cnn()).save(tmp_path / "m.ort")
    c = measure_cold_start(path, _feed(), config=ort_format_options(path), repeats=1, breakdown=True)
    for k in COLD_FIELDS + BREAKDOWN_FIELDS:
        assert c[k] is not None and c[k] >= 0, k
    assert c["create_ms"] > 0 and c["create_cpu_ms"] > 0
    assert c["load_ms"] + c["initialize_ms"] <= c["create_ms"] + 1e-6


def test_optimize_ort_format_cli(invoke, tmp_path):
    out = tmp_path / "o.onnx"
    rep = tmp_path / "r.json"
    args = [
        "optimize",
        MODELS / "digits_mlp.onnx",
        "-o",
        out,
        "--ort-format",
        "--no-session-options",
        "--threads",
        "1",
        "--time-budget",
        "0.2",
        "--report",
        rep,
    ]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    ort_path = tmp_path / "o.ort"
    assert is_ort_format(ort_path) and "ONNX Runtime .ort format" in r.output
    block = json.loads(rep.read_text())["ort_format"]
    assert block["bytes"] == ort_path.stat().st_size and block["max_abs"] == 0.0
    feed = {"image": np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(session(ort_path).run(None, feed)[0], session(out).run(None, feed)[0], rtol=1e-6, atol=1e-7)
    # -o naming the .ort itself is refused before any work
    bad = tmp_path / "x.ort"
    r = invoke("optimize", MODELS / "digits_mlp.onnx", "-o", bad, "--ort-format")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and not bad.exists()
