"""ORT's quantizer on a lazily loaded model (``ort_lazy``): the weights are read from their
files one at a time, never materialized, and the result is the in-memory path's, exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import io as oio
from onnxopt.data import Dataset
from onnxopt.quantize import ort_backend, ort_lazy
from onnxopt.quantize.collect import collect_ranges
from onnxopt.quantize.config import QuantConfig
from onnxopt.quantize.ort_backend import quantize_with_ort

CONFIGS = [
    QuantConfig(mode="dynamic"),
    QuantConfig(mode="dynamic", per_channel=True),
    QuantConfig(mode="static"),
    QuantConfig(mode="static", per_channel=True),
    QuantConfig(mode="static", format="qoperator"),
]


def _mlp(gemm: bool = False) -> onnx.ModelProto:
    """x[N,64] -> MatMul [64,48] + bias -> Relu -> MatMul [48,32] (or Gemm transB=1): the
    weights are over io.EXTERNAL_THRESHOLD (they go to the data file), the biases not."""
    rng = np.random.default_rng(3)
    w2 = rng.standard_normal((32, 48) if gemm else (48, 32)).astype(np.float32) * 0.2
    inits = [
        numpy_helper.from_array(rng.standard_normal((64, 48)).astype(np.float32) * 0.2, "w1"),
        numpy_helper.from_array(rng.standard_normal(48).astype(np.float32), "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1) if gemm else helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _saved(tmp_path, gemm: bool = False):
    path = tmp_path / "in" / "m.onnx"
    oio.save_model(_mlp(gemm), path, external_data=True)
    m = oio.load_model(path)
    ds = Dataset("<t>", arrays={"x": np.random.default_rng(4).standard_normal((16, 64)).astype(np.float32)})
    ds.validate(m)
    return path, collect_ranges(onnx.shape_inference.infer_shapes(m), ds).ranges


def _same(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    assert [n.SerializeToString(deterministic=True) for n in a.graph.node] == [n.SerializeToString(deterministic=True) for n in b.graph.node]
    ta = {t.name: oio.tensor_array(t) for t in a.graph.initializer}
    tb = {t.name: oio.tensor_array(t) for t in b.graph.initializer}
    assert ta.keys() == tb.keys()
    for name in ta:
        assert ta[name].dtype == tb[name].dtype and np.array_equal(ta[name], tb[name]), name


@pytest.fixture
def spy(monkeypatch):
    """Counts the materializations of a lazy model (``ort_backend._reload_large``) and
    makes ``quantize_nparray`` work in slices of 100 elements (the weights have thousands)."""
    calls = []
    original = ort_backend._reload_large
    monkeypatch.setattr(ort_backend, "_reload_large", lambda m: calls.append(1) or original(m))
    monkeypatch.setattr(ort_lazy, "CHUNK", 100)
    return calls


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.label)
def test_lazy_quantization_reads_weights_from_files_and_equals_the_in_memory_one(tmp_path, spy, config):
    path, ranges = _saved(tmp_path)
    lazy = oio.load_model(path, lazy=True)
    got = quantize_with_ort(lazy, config, ranges=ranges)
    assert not spy, "the lazy path materialized the weights"
    assert oio.is_lazy(lazy) and lazy.ByteSize() < 4096, "the input proto was changed"
    assert oio.is_lazy(got), "the result is spilled to a file and loaded lazily"
    assert not any(ort_lazy.MARK in e.value for t in got.graph.initializer for e in t.external_data), "marked locations left in the result"
    _same(got, quantize_with_ort(oio.load_model(path), config, ranges=ranges))


def test_a_weight_left_in_float_stays_in_a_file(tmp_path, spy):
    path, _ = _saved(tmp_path)
    config = QuantConfig(mode="dynamic")
    got = quantize_with_ort(oio.load_model(path, lazy=True), config, exclude={"mm2"})
    assert not spy
    w2 = next(t for t in got.graph.initializer if t.name == "w2")
    assert w2.data_location == TensorProto.EXTERNAL and oio.is_lazy(got)
    _same(got, quantize_with_ort(oio.load_model(path), config, exclude={"mm2"}))


def test_a_read_ort_lazy_misses_falls_back_to_weights_in_memory(tmp_path, spy):
    """Dynamic mode: ORT transposes a Gemm's transB weight with onnx.numpy_helper (not
    covered): the marked location makes that read fail, and the model is quantized again
    with its weights in memory, with the same result."""
    path, _ = _saved(tmp_path, gemm=True)
    config = QuantConfig(mode="dynamic")
    got = quantize_with_ort(oio.load_model(path, lazy=True), config)
    assert len(spy) == 1, "expected one fallback to the in-memory path"
    _same(got, quantize_with_ort(oio.load_model(path), config))


def test_any_failure_of_the_lazy_path_falls_back_to_ort_unpatched(tmp_path, spy, monkeypatch):
    """An ORT whose internals differ from those ort_lazy replaces (here: a replacement that
    raises TypeError, as a changed signature would) costs memory, never a result."""

    def incompatible(original):
        def quantize_nparray(*args, **kw):
            raise TypeError("quantize_nparray() got an unexpected keyword argument")

        return quantize_nparray

    monkeypatch.setattr(ort_lazy, "_chunked", incompatible)
    path, ranges = _saved(tmp_path)
    config = QuantConfig(mode="dynamic")
    got = quantize_with_ort(oio.load_model(path, lazy=True), config)
    assert len(spy) == 1, "expected one fallback to the in-memory path"
    _same(got, quantize_with_ort(oio.load_model(path), config))


def test_patches_are_undone(tmp_path):
    from onnxruntime.quantization import base_quantizer, onnx_quantizer, quant_utils

    before = (
        quant_utils.quantize_nparray,
        quant_utils.tensor_proto_to_array,
        base_quantizer.tensor_proto_to_array,
        onnx_quantizer.save_and_reload_model_with_shape_infer,
    )
    with pytest.raises(RuntimeError), ort_lazy.reading_lazily():
        assert quant_utils.quantize_nparray is not before[0]
        raise RuntimeError("boom")
    assert (
        quant_utils.quantize_nparray,
        quant_utils.tensor_proto_to_array,
        base_quantizer.tensor_proto_to_array,
        onnx_quantizer.save_and_reload_model_with_shape_infer,
    ) == before


def test_chunked_quantize_nparray_equals_ort_on_odd_sizes(monkeypatch):
    from onnxruntime.quantization import quant_utils

    monkeypatch.setattr(ort_lazy, "CHUNK", 7)
    x = (np.random.default_rng(5).standard_normal((5, 13)) * 3).astype(np.float32)
    chunked = ort_lazy._chunked(quant_utils.quantize_nparray)
    for qtype, zp in ((TensorProto.INT8, np.array(0, np.int8)), (TensorProto.UINT8, np.array(121, np.uint8))):
        scale = np.array(0.021, np.float32)
        want = quant_utils.quantize_nparray(qtype, x, scale, zp)
        got = chunked(qtype, x, scale, zp)
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
