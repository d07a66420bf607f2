"""Scalar (0-d) and batch-less inputs through DATA, calibration, bench, ensemble and prune."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxopt.data import load_data
from onnxopt.errors import DataError
from onnxopt.graph import sort_nodes
from tests.discover_models import scalar_rate


@pytest.fixture
def rate(tmp_path):
    model = tmp_path / "rate.onnx"
    onnx.save(scalar_rate(), str(model))
    rng = np.random.default_rng(0)
    data = tmp_path / "rate.npz"
    np.savez(data, audio=rng.standard_normal((16, 64)).astype(np.float32), sr=np.array(16000, np.int64))
    return model, data


def test_a_0d_array_in_data_is_fed_with_every_batch(rate):
    model, data = rate
    ds = load_data(data, onnx.load(str(model)))
    feeds = list(ds.batches(5))
    assert len(ds) == 16 and [f["audio"].shape[0] for f in feeds] == [5, 5, 5, 1]
    assert all(f["sr"].shape == () and int(f["sr"]) == 16000 for f in feeds)


def test_a_data_scalar_that_disagrees_with_the_model_names_the_key(rate, tmp_path, invoke):
    model, _ = rate
    per_sample = tmp_path / "per_sample.npz"
    np.savez(per_sample, audio=np.zeros((4, 64), np.float32), sr=np.full(4, 16000, np.int64))
    with pytest.raises(DataError, match="key 'sr': the model input is a scalar"):
        load_data(per_sample, onnx.load(str(model)))
    scalar_audio = tmp_path / "scalar_audio.npz"
    np.savez(scalar_audio, audio=np.array(1.0, np.float32), sr=np.array(16000, np.int64))
    out = tmp_path / "q.onnx"
    res = invoke("quantize", model, "--mode", "static", "--calibration", scalar_audio, "-o", out)
    assert res.exit_code == 2 and "key 'audio' is a scalar" in res.output and not out.exists()


def test_quantize_static_with_a_scalar_input(rate, tmp_path, invoke):
    model, data = rate
    out = tmp_path / "q.onnx"
    res = invoke("quantize", model, "--mode", "static", "--calibration", data, "--allow-slower", "-o", out)
    assert res.exit_code == 0, res.output
    q = onnx.load(str(out))
    onnx.checker.check_model(q, full_check=True)  # If body reads stay after their producers
    assert any(n.op_type in ("QuantizeLinear", "QLinearMatMul", "MatMulInteger") for n in q.graph.node)
    res = invoke("verify", model, out, "--data", data, "--atol", "0.5", "--rtol", "0.5")
    assert res.exit_code == 0, res.output


def test_bench_with_a_scalar_in_data_and_synthesized(rate, invoke, tmp_path):
    model, data = rate
    for extra in (["--data", data], []):
        out = tmp_path / "b.json"
        res = invoke("bench", model, model, "--runs", "3", "--warmup", "1", "--no-throughput", "--format", "json", "-o", out, *extra)
        assert res.exit_code == 0, res.output
        assert json.loads(out.read_text())["results"]


def test_ensemble_and_prune_with_a_scalar_input(rate, invoke, tmp_path):
    model, data = rate
    res = invoke("ensemble", model, model, "-o", tmp_path / "e.onnx")
    assert res.exit_code == 0, res.output
    res = invoke("ensemble", model, model, "--data", data, "-o", tmp_path / "e2.onnx")
    assert res.exit_code == 0, res.output
    res = invoke("prune", model, "--calibration", data, "-o", tmp_path / "p.onnx")
    assert res.exit_code == 0, res.output
    assert "left intact: read inside a subgraph" in res.output


def test_sort_nodes_counts_reads_of_subgraphs():
    m = scalar_rate()
    g = m.graph
    nodes = list(g.node)
    # the If (last) moved before the MatMul producing 'h', which its body reads
    g.ClearField("node")
    g.node.extend([nodes[-1], *nodes[:-1]])
    assert sort_nodes(g)
    onnx.checker.check_model(m, full_check=True)
    assert [n.op_type for n in g.node][-1] == "If"
    assert not sort_nodes(g)  # already in order: unchanged


def test_a_data_file_with_a_batch_less_input_is_one_feed(tmp_path):
    """state[2, batch, 128] has no sample axis: the file is one complete feed."""
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["state"], ["s"], keepdims=0, axes=[0, 2]),
            helper.make_node("ReduceSum", ["x"], ["t"], keepdims=0, axes=[1]),
            helper.make_node("Add", ["s", "t"], ["y"]),
        ],
        "stateful",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]), helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])
    data = tmp_path / "feed.npz"
    np.savez(data, x=np.ones((1, 4), np.float32), state=np.ones((2, 1, 3), np.float32))
    ds = load_data(data, m)
    assert ds.whole and len(ds) == 1 and list(ds.batches(8))[0]["state"].shape == (2, 1, 3)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.ones((1, 4), np.float32), state=np.ones((3, 1, 3), np.float32))
    with pytest.raises(DataError, match="arrays disagree on the number of samples"):
        load_data(bad, m)
