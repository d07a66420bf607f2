"""chain: serial fusion, junction matching and checks, parity with the stages run in turn."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.ensemble.api import chain
from onnxopt.errors import InputError, UsageError
from tests.ensemble.ensemble_models import mlp, two_outputs


def stage2(in_name="feat", features=8, classes=3, dtype=TensorProto.FLOAT, seed=7, out_name="logits"):
    rng = np.random.default_rng(seed)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    inits = [numpy_helper.from_array(rng.standard_normal((classes, features)).astype(np_dtype), "w"), numpy_helper.from_array(np.zeros(classes, np_dtype), "b")]
    nodes = [helper.make_node("Gemm", [in_name, "w", "b"], [out_name], name="fc", transB=1)]
    g = helper.make_graph(
        nodes, "s2", [helper.make_tensor_value_info(in_name, dtype, ["N", features])], [helper.make_tensor_value_info(out_name, dtype, ["N", classes])], inits
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _run(m, x):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_chain_by_name_equals_running_the_stages():
    a, b = two_outputs(0), stage2()  # a: x -> (y, feat); b: feat -> logits
    res = chain([a, b])
    m = res.model
    assert [i.name for i in m.graph.input] == ["x"]
    assert [o.name for o in m.graph.output] == ["logits"]
    (j,) = res.report["junctions"]
    assert (j["from"], j["to"], j["how"], j["dtype"]) == ("feat", "feat", "name", "float32")
    assert any("removed" in n for n in res.report["notes"])  # a's 'y' head is dead code now
    x = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    feat = _run(a, x)[1]
    expect = ort.InferenceSession(b.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"feat": feat})[0]
    np.testing.assert_allclose(_run(m, x)[0], expect, rtol=1e-5, atol=1e-6)
    assert res.report["parity"]["ok"]


def test_single_output_to_single_input_connects_by_position():
    res = chain([mlp(0, classes=8), stage2(in_name="h")])
    assert res.report["junctions"][0]["how"] == "position"


def test_map_connects_named_outputs_and_unknown_pairs_are_errors():
    a, b = two_outputs(0), stage2(in_name="hidden")
    with pytest.raises(UsageError, match="fed by nothing"):
        chain([a, b])
    res = chain([a, b], map=["feat:hidden"])
    assert res.report["junctions"][0]["how"] == "map"
    with pytest.raises(UsageError, match="matches no junction"):
        chain([a, b], map=["feat:hidden", "nope:hidden"])


def test_junction_dtype_and_shape_are_checked():
    with pytest.raises(InputError, match="dtype float32 does not match float64"):
        chain([two_outputs(0), stage2(dtype=TensorProto.DOUBLE)])
    with pytest.raises(InputError, match="does not fit"):
        chain([two_outputs(0), stage2(features=5)])


def test_three_stages_and_determinism():
    stages = [mlp(0, classes=8), stage2(in_name="y", classes=8, features=8, seed=1, out_name="z"), stage2(in_name="z", features=8, seed=2)]
    a = chain(stages)
    b = chain(stages)
    assert a.model.SerializeToString(deterministic=True) == b.model.SerializeToString(deterministic=True)
    assert [j["stage"] for j in a.report["junctions"]] == [1, 2]
    onnx.checker.check_model(a.model, full_check=True)


def test_chain_needs_two_models():
    with pytest.raises(UsageError, match="at least 2"):
        chain([mlp(0)])


def test_a_stage_that_feeds_nothing_is_an_error_not_dropped():
    # stage 1 reads 'x' like stage 0: matched as the shared chain input, so stage 0 would vanish
    with pytest.raises(UsageError, match="feed nothing in stage 1"):
        chain([mlp(0), mlp(1)])


def test_later_stages_may_also_read_chain_inputs():
    a = mlp(0, classes=6)  # x -> y[N,6]
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 6)).astype(np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["y", "w"], ["t"]), helper.make_node("Add", ["t", "x"], ["out"])]
    g = helper.make_graph(
        nodes,
        "side",
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6]), helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 6])],
        inits,
    )
    b = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    b.ir_version = 8
    res = chain([a, b])
    assert sorted(j["how"] for j in res.report["junctions"]) == ["name", "shared input"]
    assert [i.name for i in res.model.graph.input] == ["x"] and res.report["parity"]["ok"]


def test_provenance_names_the_stages_and_holds_the_parity_check(tmp_path):
    from onnxopt.core.provenance import read_provenance

    a, b = two_outputs(0), stage2()
    onnx.save(a, tmp_path / "a.onnx")
    res = chain([tmp_path / "a.onnx", b])
    (step,) = read_provenance(res.model)["steps"]
    assert step["name"] == "chain" and step["params"]["models"] == ["a.onnx", b.graph.name]
    assert step["details"]["junctions"][0]["how"] == "name" and "file" not in step["details"]["stages"][0]
    assert step["verification"]["comparison"]["ok"] and step["verification"]["check"]["ort_loaded"]
    assert res.report["stages"][0]["file"] == str(tmp_path / "a.onnx") and res.report["stages"][1]["file"] is None
