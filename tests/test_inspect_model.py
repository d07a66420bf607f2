"""onnxopt.inspect: the report's fields, computed without running or loading weights."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import numpy_helper

import onnxopt
from onnxopt.errors import ModelError
from onnxopt.stats import model_stats
from tests.toy_models import MODELS, if_model, light_model, messy_mlp, save_external, tiny_cnn


def test_bundled_model_report():
    rep = onnxopt.inspect(MODELS / "digits_cnn.onnx").report
    manifest = json.loads((MODELS / "manifest.json").read_text())["models"]["digits_cnn"]
    assert rep["command"] == "inspect" and rep["file_size"] == manifest["file_size"]
    assert rep["ir_version"] == 8 and rep["opsets"] == {"ai.onnx": manifest["opset"]}
    assert rep["producer"]["name"] == "pytorch"
    assert rep["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["N", 1, 8, 8]}]
    assert rep["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["N", 10]}]
    assert rep["ops"] == manifest["ops"] and rep["nodes"] == sum(manifest["ops"].values())
    assert rep["parameters"]["total"] == manifest["onnx_initializer_elements"]
    assert rep["parameters"]["per_dtype"]["float32"]["bytes"] == 4 * manifest["onnx_initializer_elements"]
    assert rep["flops"] == model_stats(onnx.load(str(MODELS / "digits_cnn.onnx")), flops=True)["flops"] > 0
    assert rep["flops_detail"]["by_op"].keys() == {"Conv", "Gemm"}
    assert rep["unused_initializers"]["count"] == 0 and rep["subgraphs"]["count"] == 0
    assert rep["external_data"]["tensors"] == 0
    assert rep["metadata"]["onnxopt_provenance"] is None
    json.dumps(rep)


def test_unused_initializers_and_proto_input():
    rep = onnxopt.inspect(messy_mlp()).report
    assert rep["file"] is None
    assert rep["unused_initializers"] == {"count": 1, "bytes": 64, "names": ["unused_junk"]}
    assert rep["ops"]["Constant"] == 2


def test_subgraphs_are_located():
    m = if_model()
    m.graph.node[0].name = "choose"
    rep = onnxopt.inspect(m).report
    assert rep["subgraphs"]["count"] == 2 and rep["subgraphs"]["by_op"] == {"If": 2}
    assert sorted(s["where"] for s in rep["subgraphs"]["sites"]) == ["main/choose.else_branch", "main/choose.then_branch"]
    assert rep["nodes"] == 3 and rep["nodes_main_graph"] == 1
    assert rep["inputs"][1] == {"name": "flag", "dtype": "bool", "shape": []}


def test_external_data_is_described_but_never_loaded(tmp_path, monkeypatch):
    src = save_external(tiny_cnn(), tmp_path / "ext.onnx", "w.bin")
    expected = sum(numpy_helper.to_array(t).nbytes for t in tiny_cnn().graph.initializer)

    def refuse(*a, **k):
        raise AssertionError("inspect must not load external data")

    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_model", refuse)
    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_tensor", refuse)
    rep = onnxopt.inspect(src).report
    ext = rep["external_data"]
    assert ext["tensors"] == 8 and ext["bytes"] == expected
    assert ext["files"]["w.bin"]["file_size"] == (tmp_path / "w.bin").stat().st_size
    assert rep["parameters"]["total"] == expected // 4 and rep["flops"] > 0


def test_missing_external_data_is_a_model_error(tmp_path):
    src = save_external(tiny_cnn(), tmp_path / "ext.onnx", "w.bin")
    (tmp_path / "w.bin").unlink()
    with pytest.raises(ModelError, match="'w.bin'.*missing"):
        onnxopt.inspect(src)


def test_provenance_and_generated_constants():
    from onnxopt.simplify.api import simplify

    res = simplify(light_model("squeezenet"))
    before = onnxopt.inspect(light_model("squeezenet")).report
    after = onnxopt.inspect(res.model).report
    assert before["generated_constants"]["nodes"] == 39 and before["initializer_inputs"] == 52
    assert before["metadata"]["onnxopt_provenance"] is None
    prov = after["metadata"]["onnxopt_provenance"]
    assert prov["commands"] == ["simplify"] and prov["steps"] == ["simplify"]
    assert after["parameters"]["total"] > before["parameters"]["total"]  # weights folded into initializers
    assert after["flops"] == before["flops"]


def test_flops_can_be_skipped():
    rep = onnxopt.inspect(tiny_cnn(), flops=False).report
    assert rep["flops"] is None and "flops_detail" not in rep


def test_inspects_a_3gb_model_without_reading_its_weights(tmp_path):
    """Three 1 GiB MatMul weights in a sparse external-data file: the report is exact and
    nothing of the data file is read (a sparse file reads back as zeros; memory stays small)."""
    import resource

    from onnx import TensorProto, helper

    n = 2**14
    inits = []
    for i in range(3):
        t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[n, n])
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "big.data"), ("offset", str(i * n * n * 4)), ("length", str(n * n * 4))):
            e = t.external_data.add()
            e.key, e.value = k, v
        inits.append(t)
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["a"]), helper.make_node("MatMul", ["a", "w1"], ["b"]), helper.make_node("MatMul", ["b", "w2"], ["y"])]
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", 1, ["N", n])], [helper.make_tensor_value_info("y", 1, ["N", n])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "big.onnx"))
    with open(tmp_path / "big.data", "wb") as fh:
        fh.truncate(3 * n * n * 4)
    if (tmp_path / "big.data").stat().st_blocks * 512 > 2**20:
        pytest.skip("this filesystem has no sparse files")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rep = onnxopt.inspect(tmp_path / "big.onnx").report
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert rep["parameters"]["total"] == 3 * n * n and rep["external_data"]["bytes"] == 3 * n * n * 4
    assert rep["flops"] == 3 * 2 * n * n  # symbolic batch N counted as 1
    assert grown_kb < 512 * 1024, f"peak memory grew by {grown_kb} KB"


def test_flops_say_what_bodies_hold():
    """FLOPs cover the main graph; MatMuls inside If/Loop/Scan bodies are counted as not
    counted (a body runs a data-dependent number of times), and the text says so."""
    from onnxopt.cli.inspect import render_inspect
    from tests.reliability.subgraph_models import if_model as if_with_matmuls

    rep = onnxopt.inspect(if_with_matmuls()).report
    assert rep["flops"] == 0 and rep["flops_detail"]["nodes_in_subgraphs"] == 3
    assert "3 node(s) inside If/Loop/Scan bodies not counted" in render_inspect(rep)
    assert onnxopt.inspect(tiny_cnn()).report["flops_detail"]["nodes_in_subgraphs"] == 0
