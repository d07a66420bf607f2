"""Feeds (re-batching, fixed batch), accuracy math, memory probes, environment."""

from __future__ import annotations

import os

import numpy as np
import pytest

from onnxopt.bench import accuracy as acc
from onnxopt.bench.environment import (
    capture,
    effective_threads,
    oversubscription_warning,
)
from onnxopt.bench.feeds import SkipConfig, feed_batch, fixed_batch_conflict, make_feed
from onnxopt.bench.memory import (
    MemoryProbe,
    parse_compute_apps,
    parse_gpu_used,
    peak_rss_bytes,
    rss_bytes,
)
from onnxopt.bench.runner import Invoker, measure_throughput
from onnxopt.data import load_data
from onnxopt.errors import DataError
from onnxopt.io import load_model
from onnxopt.runtime import create_session
from onnxopt.session_options import machine_cores
from tests.bench.bench_toys import fixed_batch_mlp, mlp, two_input

# --- feeds -------------------------------------------------------------------------


def test_data_is_rebatched_and_repeated_beyond_its_size(models_dir):
    m = load_model(models_dir / "digits_mlp.onnx")
    ds = load_data(models_dir / "digits_test.npz", m)
    full = np.load(models_dir / "digits_test.npz")["image"]
    feed, notes = make_feed(m, ds, None, 8)
    assert (
        feed["image"].shape == (8, 1, 8, 8)
        and np.array_equal(feed["image"], full[:8])
        and not notes
    )
    feed, notes = make_feed(m, ds, None, None)
    assert feed["image"].shape == (1, 1, 8, 8)
    feed, notes = make_feed(m, ds, None, 450)
    assert feed["image"].shape[0] == 450 and np.array_equal(feed["image"][400:], full[:50])
    assert notes and "repeats" in notes[0]


def test_folder_of_feeds_is_concatenated(tmp_path):
    m = two_input()
    rng = np.random.default_rng(0)
    for k in range(3):
        np.savez(
            tmp_path / f"f{k}.npz",
            a=rng.random((2, 8), dtype=np.float32),
            b=rng.random((2, 8), dtype=np.float32),
        )
    ds = load_data(tmp_path, m)
    feed, _ = make_feed(m, ds, None, 5)
    assert feed["a"].shape == (5, 8) and feed["b"].shape == (5, 8)
    feed, _ = make_feed(m, ds, None, None)
    assert feed["a"].shape == (2, 8)


def test_fixed_batch_forbids_other_batches():
    m = fixed_batch_mlp(1)
    assert fixed_batch_conflict(m, 1) is None
    assert "fixed batch dimension of 1" in fixed_batch_conflict(m, 4)
    with pytest.raises(SkipConfig, match="batch 4 skipped"):
        make_feed(m, None, None, 4)
    feed, _ = make_feed(m, None, None, None)
    assert feed["x"].shape == (1, 16)


def test_synthesized_feeds_take_the_batch_and_shapes():
    m = mlp()
    feed, _ = make_feed(m, None, None, 3, seed=1)
    assert feed["x"].shape == (3, 16) and feed_batch(m, feed) == 3
    again, _ = make_feed(mlp(seed=5), None, None, 3, seed=1)
    assert np.array_equal(feed["x"], again["x"])  # same inputs for same-input models
    feed, _ = make_feed(m, None, {"x": (2, 16)}, 6)
    assert feed["x"].shape == (6, 16)
    with pytest.raises(DataError, match="not an input of the model"):
        make_feed(m, None, {"nope": (1, 2)}, None)


# --- accuracy ------------------------------------------------------------------------


def test_rel_l2_and_agreement():
    r = np.array([[1.0, 0.0], [0.0, 1.0]])
    c = np.array([[0.0, 1.0], [0.0, 1.0]])
    assert acc.rel_l2_error([r], [r]) == 0.0
    assert acc.rel_l2_error([r], [c]) == pytest.approx(1.0)
    assert acc.agreement([r], [c]) == 50.0
    assert acc.agreement([np.zeros(3)], [np.zeros(3)]) is None
    assert acc.rel_l2_error([np.zeros(2)], [np.ones(2)]) == float("inf")


def test_evaluate_labels_baseline_and_mismatch():
    labels = np.array([0, 1, 1])
    base = [np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0]], dtype=np.float32)]
    other = [np.array([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]], dtype=np.float32)]
    odd = [np.zeros((3, 5), dtype=np.float32)]
    rows = acc.evaluate([base, other, odd, None], 0, labels, "test")
    assert rows[0]["top1"] == 100.0 and rows[0]["agreement"] == 100.0 and rows[0]["rel_l2"] == 0.0
    assert rows[1]["top1"] == pytest.approx(200 / 3) and rows[1]["agreement"] == pytest.approx(
        200 / 3
    )
    assert rows[2]["agreement"] is None and "shape" in rows[2]["note"]
    assert rows[3]["note"] == "not evaluated on these inputs"


# --- memory --------------------------------------------------------------------------


def test_nvidia_smi_parsers():
    apps = "123, 512\n456, 1024\n123, 256\n"
    assert parse_compute_apps(apps, 123) == 768 * 2**20
    assert parse_compute_apps(apps, 999) is None
    assert parse_gpu_used("0, 1000\n1, 2000\n", 1) == 2000 * 2**20
    assert parse_gpu_used("garbage", 0) is None


def test_memory_probe_sees_an_allocation():
    assert rss_bytes() > 0 and peak_rss_bytes() >= rss_bytes() // 2
    with MemoryProbe() as p:
        big = np.ones(64 * 2**20 // 8)  # 64 MB, touched
    r = p.to_dict()
    assert r["rss_delta_bytes"] >= 48 * 2**20
    assert r["peak_rss_delta_bytes"] >= 48 * 2**20
    assert r["peak_scope"] in ("window", "process")
    del big


# --- runner --------------------------------------------------------------------------


def test_io_binding_invoker_matches_plain_run():
    m = mlp()
    sess = create_session(m, "cpu", threads=1)
    feed, _ = make_feed(m, None, None, 4)
    plain = Invoker(sess, feed).outputs()
    bound = Invoker(sess, feed, io_binding=True).outputs()
    np.testing.assert_array_equal(plain[0], bound[0])


def test_throughput_is_measured_with_concurrent_workers():
    m = mlp()
    sess = create_session(m, "cpu", threads=1)
    feed, _ = make_feed(m, None, None, 4)
    workers = [[Invoker(sess, feed).call for _ in range(2)], [Invoker(sess, feed).call]]
    out = measure_throughput(workers, [4, 4], [5, 5], rounds=2)
    assert out[0]["concurrency"] == 2 and out[0]["runs"] == 2 * 5 * 2
    assert out[1]["concurrency"] == 1 and out[1]["runs"] == 5 * 2
    for t in out:
        assert t["samples_per_s"] == pytest.approx(4 * t["runs_per_s"]) and t["samples_per_s"] > 0
        assert len(t["rounds_samples_per_s"]) == 2


# --- environment ---------------------------------------------------------------------


def test_environment_and_oversubscription():
    sess = create_session(mlp(), "cpu", threads=1)
    env = capture("cpu", session=sess, threads=1, concurrency=1)
    assert (
        env["onnxruntime"]
        and env["cores_usable"] == machine_cores()
        and env["ort_providers"] == ["CPUExecutionProvider"]
    )
    assert env["intra_op_threads_effective"] == 1 and env["gpu"] is None
    assert effective_threads(None) >= 1
    assert oversubscription_warning(1, 1, "cpu") is None
    w = oversubscription_warning(2, (os.cpu_count() or 1) + 1, "cpu")
    assert w and "usable cores" in w
    assert oversubscription_warning(64, 64, "cuda") is None


# --- audit additions -----------------------------------------------------------------


def _image_model():
    """``x float32[N, 3, H, W] -> ReduceMean(axes 2, 3) -> y float32[N, 3, 1, 1]``."""
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["y"])],
        "image",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 1, 1])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_discovered_symbolic_dims_are_noted():
    m = _image_model()
    feed, notes = make_feed(m, None, None, 2)
    assert feed["x"].shape == (2, 3, 1, 1)  # the smallest size the model runs on
    assert len(notes) == 1 and "x[2,3,1,1] (H/W found by probing)" in notes[0] and "--shape" in notes[0]
    feed, notes = make_feed(m, None, {"x": (1, 3, 32, 48)}, 2)
    assert feed["x"].shape == (2, 3, 32, 48) and notes == []
    assert make_feed(mlp(), None, None, 4)[1] == []  # a symbolic batch axis alone is no news


def test_cuda_device_index_follows_cuda_visible_devices():
    from onnxopt.bench.memory import nvml_device

    assert nvml_device(0, "") == 0 and nvml_device(1, "") == 1
    assert nvml_device(0, "3") == 3 and nvml_device(1, "2, 5") == 5
    assert nvml_device(0, "GPU-8f0c2a1e-aaaa") == "GPU-8f0c2a1e-aaaa"
    assert nvml_device(0, "MIG-1234,0") == "MIG-1234" and nvml_device(1, "MIG-1234,0") == 0
    assert nvml_device(4, "1,2") == 4  # out of range: CUDA will refuse the device anyway


def test_a_session_that_fell_back_to_cpu_is_refused_on_cuda():
    from onnxopt.errors import ProviderError
    from onnxopt.runtime import check_provider_active

    class FellBack:
        def get_providers(self):
            return ["CPUExecutionProvider"]

    class OnCuda:
        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    check_provider_active(FellBack(), "cpu")
    check_provider_active(OnCuda(), "cuda")
    with pytest.raises(
        ProviderError, match="did not create the session on CUDAExecutionProvider"
    ) as exc:
        check_provider_active(FellBack(), "cuda", "m.onnx")
    assert exc.value.exit_code == 2 and exc.value.path == "m.onnx"


def test_io_binding_keeps_non_contiguous_inputs_alive():
    import gc

    m = mlp()
    sess = create_session(m, "cpu", threads=1)
    wide = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    feed = {"x": wide[:, ::2]}  # a strided view: binding needs a contiguous copy
    assert not feed["x"].flags.c_contiguous
    inv = Invoker(sess, feed, io_binding=True)
    gc.collect()
    np.testing.assert_array_equal(
        inv.outputs()[0], sess.run(None, {"x": np.ascontiguousarray(feed["x"])})[0]
    )


def test_throughput_workers_really_run_at_the_same_time():
    """Each worker's call sleeps (releasing the GIL like ``session.run``): with 4 workers
    calls overlap (4 threads, at least 2 calls in flight at once; 4 unless the scheduler
    staggers the starts), i.e. the throughput is measured under real concurrency, not
    derived from one thread's latency."""
    import threading
    import time

    lock = threading.Lock()
    state = {"active": 0, "peak": 0, "threads": set()}

    def call():
        with lock:
            state["active"] += 1
            state["peak"] = max(state["peak"], state["active"])
            state["threads"].add(threading.get_ident())
        time.sleep(0.005)
        with lock:
            state["active"] -= 1

    out = measure_throughput([[call] * 4], [2], [6], rounds=2)
    assert out[0]["runs"] == 4 * 6 * 2 and out[0]["concurrency"] == 4
    assert state["peak"] >= 2 and len(state["threads"]) >= 4
    assert out[0]["samples_per_s"] == pytest.approx(2 * out[0]["runs_per_s"])
