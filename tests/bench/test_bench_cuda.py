"""The CUDA path (skipped without onnxruntime's CUDAExecutionProvider)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.bench.api import bench, compare_latency
from onnxopt.bench.feeds import make_feed
from onnxopt.bench.runner import Invoker
from onnxopt.io import load_model
from onnxopt.runtime import create_session

pytestmark = pytest.mark.cuda


def test_io_binding_on_device_matches_cpu(models_dir):
    m = load_model(models_dir / "digits_cnn.onnx")
    feed, _ = make_feed(m, None, None, 8)
    cpu = create_session(m, "cpu").run(None, feed)
    sess = create_session(
        m, "cuda", cuda_options={"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC"}
    )
    inv = Invoker(sess, feed, io_binding=True, device="cuda")
    out = inv.outputs()
    np.testing.assert_allclose(out[0], cpu[0], rtol=1e-3, atol=1e-4)


def test_bench_on_cuda_records_provider_options_and_gpu_memory(models_dir):
    res = bench(
        [models_dir / "digits_mlp.onnx", models_dir / "digits_cnn.onnx"],
        provider="cuda",
        data=models_dir / "digits_test.npz",
        batches=[1, 16],
        runs=10,
        warmup=2,
        cudnn_conv_algo_search="HEURISTIC",
        concurrency=2,
    )
    rep = res.report
    assert rep["provider"] == "cuda" and rep["settings"]["io_binding"] is True
    env = rep["environment"]
    assert env["ort_providers"][0] == "CUDAExecutionProvider"
    assert env["provider_options"]["CUDAExecutionProvider"]["cudnn_conv_algo_search"] == "HEURISTIC"
    assert all(r["status"] == "ok" for r in rep["results"])
    mem = rep["models"][0]["memory"]
    assert "gpu_used_after_bytes" in mem and "gpu_scope" in mem
    assert rep["models"][1]["accuracy"]["top1"] == pytest.approx(99.5, abs=0.5)


def test_compare_latency_on_cuda(models_dir):
    feed = {"image": np.load(models_dir / "digits_test.npz")["image"][:4]}
    rows = compare_latency(
        [models_dir / "digits_cnn.onnx", models_dir / "digits_resnet.onnx"],
        feed,
        provider="cuda",
        runs=10,
        warmup=2,
    )
    assert rows[0]["verdict"] == "baseline" and rows[1]["n"] >= 10
