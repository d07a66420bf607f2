"""The ``fp16`` pass: a recipe step run and verified by ``run_pipeline`` (Python and ``onnxopt run``)."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto

from onnxopt.core.passes import Context
from onnxopt.core.pipeline import run_pipeline
from onnxopt.core.registry import make_pass
from onnxopt.errors import RecipeError

STEP = '[[steps]]\npass = "fp16"\n'


def _float16_inits(model: onnx.ModelProto) -> int:
    return sum(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)


def test_pipeline_converts_verifies_and_records(models_dir):
    src = onnx.load(str(models_dir / "digits_mlp.onnx"))
    res = run_pipeline(src, [make_pass("fp16")], Context(), command="run")
    step = res.report["steps"][0]
    assert step["name"] == "fp16" and step["modified"]
    assert step["counts"]["nodes_fp16"] == 3 + 2 + 1 and step["counts"]["casts_added"] == 2
    # half the weight bytes, FP32 interface kept
    assert res.report["after"]["bytes"] * 2 == res.report["before"]["bytes"]
    assert _float16_inits(res.model) == len(res.model.graph.initializer)
    assert res.model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    # lossy: judged by the metric against the input, which it keeps here
    ver = step["verification"]
    assert ver["check"]["ort_loaded"] and ver["metric"]["drop"] == 0.0
    assert ver["comparison"]["outputs"][0]["rel_l2"] < 1e-2
    assert "onnxopt" in {p.key for p in res.model.metadata_props}


def test_keep_fp32_names_a_node(models_dir):
    src = onnx.load(str(models_dir / "digits_mlp.onnx"))
    first_gemm = next(n.name for n in src.graph.node if n.op_type == "Gemm")
    res = run_pipeline(src, [make_pass("fp16", {"keep_fp32": [first_gemm]})], Context(), command="run")
    counts = res.report["steps"][0]["counts"]
    assert counts["nodes_fp32"] == 1 and counts["nodes_fp16"] == 5
    node = next(n for n in res.model.graph.node if n.name == first_gemm)
    inits = {t.name: t.data_type for t in res.model.graph.initializer}
    assert all(inits[i] == TensorProto.FLOAT for i in node.input if i in inits)


def test_bad_option_is_a_recipe_error():
    with pytest.raises(RecipeError, match="keep_fp32"):
        make_pass("fp16", {"keep_fp32": "fc1"})


def test_cli_run_writes_the_fp16_model(invoke, models_dir, tmp_path):
    recipe, out, rep = tmp_path / "half.toml", tmp_path / "o.onnx", tmp_path / "r.json"
    recipe.write_text('name = "half"\n' + STEP)
    res = invoke("run", recipe, models_dir / "digits_mlp.onnx", "-o", out, "--report", rep)
    assert res.exit_code == 0, res.output
    model = onnx.load(str(out))
    assert _float16_inits(model) == len(model.graph.initializer)
    assert json.loads(rep.read_text())["steps"][0]["name"] == "fp16"


def test_cli_run_nothing_to_convert_writes_nothing(invoke, tmp_path):
    # Softmax only: numerically sensitive, kept FP32, so nothing can run in FP16
    m = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 4] y) {
            y = Softmax<axis = 1>(x)
        }
        """
    )
    src, recipe, out = tmp_path / "m.onnx", tmp_path / "half.toml", tmp_path / "o.onnx"
    onnx.save(m, str(src))
    recipe.write_text('name = "half"\n' + STEP)
    res = invoke("run", recipe, src, "-o", out)
    assert res.exit_code == 2, res.output
    assert "no node can run in FP16" in res.output and not out.exists()
