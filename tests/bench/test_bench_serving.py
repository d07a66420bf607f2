"""bench and serving: carried session options used by default, --no-model-options, cold start."""

from __future__ import annotations

import json

import onnx

from onnxopt.bench.api import bench
from onnxopt.bench.report import CSV_COLUMNS, render
from onnxopt.serving.carry import carry_options
from onnxopt.serving.coldstart import COLD_FIELDS
from onnxopt.session_options import SessionConfig
from tests.toy_models import tiny_cnn

CFG = SessionConfig(intra_op_threads=1, optimization_level="basic")


def _carrying(tmp_path):
    m = tiny_cnn()
    carry_options(m, CFG)
    path = tmp_path / "tuned.onnx"
    onnx.save(m, path)
    return path


def _applied(result, i=0):
    return result.report["models"][i]


def test_bench_uses_carried_options_by_default(tmp_path):
    path = _carrying(tmp_path)
    r = bench([path], runs=5, warmup=1, throughput=False, accuracy=False)
    info = _applied(r)
    assert info["session_options_source"] == "model"
    assert SessionConfig.from_dict(info["session_options"]) == CFG
    assert "carried: intra 1" in render(r.report, "table")
    off = bench([path], runs=5, warmup=1, throughput=False, accuracy=False, model_options=False)
    assert _applied(off)["session_options"] is None and off.report["settings"]["model_options"] is False
    # --threads overrides the carried intra-op threads, the rest stays
    two = bench([path], runs=5, warmup=1, throughput=False, accuracy=False, threads=2)
    assert SessionConfig.from_dict(_applied(two)["session_options"]) == SessionConfig(intra_op_threads=2, optimization_level="basic")


def test_bench_cold_start_fields(tmp_path):
    path = _carrying(tmp_path)
    r = bench([path], runs=5, warmup=1, throughput=False, accuracy=False, cold_start=2)
    cold = _applied(r)["cold_start"]
    assert cold["repeats"] == 2 and len(cold["runs"]) == 2
    for k in COLD_FIELDS:
        assert k in cold
    assert cold["create_ms"] > 0 and cold["first_run_ms"] > 0
    assert "cold create ms" in render(r.report, "table")
    assert {"cold_create_ms", "cold_first_run_ms", "cold_peak_rss_bytes"} <= set(CSV_COLUMNS)
    assert json.loads(render(r.report, "json"))["settings"]["cold_start_repeats"] == 2


def test_bench_cli_model_options_and_errors(invoke, tmp_path):
    path = _carrying(tmp_path)
    r = invoke("bench", path, "--runs", "5", "--warmup", "1", "--no-throughput", "--no-accuracy", "--no-model-options", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["models"][0]["session_options_source"] == "default"
    r = invoke("bench", path, "--cold-start", "-1")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    bad = tiny_cnn()
    bad.metadata_props.add(key="ort_config", value="{oops")
    onnx.save(bad, tmp_path / "bad.onnx")
    r = invoke("bench", tmp_path / "bad.onnx", "--runs", "5")
    assert r.exit_code == 2 and "ort_config" in r.output and len(r.output.strip().splitlines()) == 1
