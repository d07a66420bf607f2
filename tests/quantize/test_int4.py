"""``--mode int4``: weight-only INT4 (MatMulNBits) through ONNX Runtime's MatMulNBitsQuantizer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxopt.data import Dataset
from onnxopt.errors import BudgetError, UsageError
from onnxopt.quantize.api import quantize
from onnxopt.quantize.config import QuantConfig
from onnxopt.quantize.int4 import nbits_weight_nodes, quantize_nbits
from onnxopt.verify import check_model
from tests.conftest import save
from tests.quantize.quant_models import data_for, matmul_add_mlp, mlp, no_weights

FAST = dict(allow_slower=True, timing=False)
pytest.importorskip("onnx_ir", reason="ORT's MatMulNBitsQuantizer imports onnx_ir (the int4 extra)")


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _run(model, x):
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def test_quantize_nbits_replaces_constant_weight_matmuls_within_int4_error():
    m = matmul_add_mlp()
    assert nbits_weight_nodes(m) == ["mm", "mm2"]
    q = quantize_nbits(m, block_size=16)
    assert _ops(q).count("MatMulNBits") == 2 and "MatMul" not in _ops(q)
    check_model(q)
    x = np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)
    ref, out = _run(m, x), _run(q, x)
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert 0 < rel < 0.15  # 4-bit blocks of 16: a few percent, never exact
    # the weight is stored in 4 bits: about 1/8 of the FP32 bytes plus one scale per block
    def nbytes(model):
        return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer if t.name in ("w", "w_Q4", "w_scales"))

    assert nbytes(q) <= 0.19 * nbytes(m)  # (1/2 byte + 4/16 byte of scale) per 4-byte weight
    only = quantize_nbits(m, block_size=16, exclude=["mm2"])
    assert _ops(only).count("MatMulNBits") == 1 and "MatMul" in _ops(only)


def test_int4_mode_rewrites_gemm_and_reports():
    m = mlp(hidden=64)
    r = quantize(m, mode="int4", calibration=Dataset("<x>", arrays=data_for(m, 64)), block_size=16, **FAST)
    c = r.report["candidates"][0]
    assert r.report["chosen"] == "int4 rtn block 16" and c["status"] == "ok" and c["quantized_nodes"] == 2
    assert _ops(r.model).count("MatMulNBits") == 2  # both Gemm nodes, rewritten as MatMul + Add
    assert c["score"] >= 90 and r.report["collapse_check"]["scores"]["int4 rtn block 16"] >= 0.9
    check_model(r.model)


def _activation_matmul() -> onnx.ModelProto:
    w3 = numpy_helper.from_array(np.ones((2, 16, 16), np.float32), "w3")
    nodes = [helper.make_node("MatMul", ["x", "x"], ["h"], name="self"), helper.make_node("MatMul", ["h", "w3"], ["y"], name="bmm")]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 16, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 16, 16])],
        [w3],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_int4_nothing_to_quantize_exit_3_and_nothing_written(invoke, tmp_path):
    for model in (no_weights(), _activation_matmul()):  # no MatMul; MatMuls of activations or a 3-D weight
        with pytest.raises(BudgetError, match="nothing to quantize"):
            quantize(model, mode="int4", **FAST)
    src, out = save(no_weights(), tmp_path / "m.onnx"), tmp_path / "q.onnx"
    r = invoke("quantize", src, "-o", out, "--mode", "int4", "--allow-slower")
    assert r.exit_code == 3 and "nothing to quantize" in r.output and not out.exists()


def test_int4_cli_writes_a_model(invoke, tmp_path):
    m = mlp(hidden=64)
    src, out, cal = save(m, tmp_path / "m.onnx"), tmp_path / "q.onnx", tmp_path / "d.npz"
    np.savez(cal, **data_for(m, 64))
    r = invoke("quantize", src, "-o", out, "--mode", "int4", "--block-size", "16", "--calibration", cal, "--batch", "1", "--allow-slower")
    assert r.exit_code == 0, r.output
    assert "int4 rtn block 16" in r.output
    assert _ops(onnx.load(str(out))).count("MatMulNBits") == 2
    bad = invoke("quantize", src, "-o", out.with_name("b.onnx"), "--mode", "int4", "--block-size", "24")
    assert bad.exit_code == 2 and "power of 2" in bad.output


def test_block_size_and_method_are_checked():
    with pytest.raises(UsageError, match="power of 2"):
        QuantConfig(mode="int4", block_size=48)
    with pytest.raises(UsageError, match="int4 method"):
        QuantConfig(mode="int4", int4_method="gptq")
    assert QuantConfig(mode="int4", block_size=64, int4_method="hqq").to_dict() == {"mode": "int4", "block_size": 64, "int4_method": "hqq"}
