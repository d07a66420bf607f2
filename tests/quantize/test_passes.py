"""The ``quantize`` and ``transformer-fusion`` passes, alone and in recipes."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.core.passes import Context
from onnxopt.core.pipeline import run_pipeline
from onnxopt.core.provenance import read_provenance
from onnxopt.core.recipe import load_recipe
from onnxopt.core.registry import make_pass, pass_class
from onnxopt.core.runner import run
from onnxopt.data import Dataset
from onnxopt.errors import RecipeError, UsageError
from onnxopt.quantize.api import quantize
from onnxopt.verify import check_model
from tests.conftest import MODELS
from tests.quantize.quant_models import data_for, ffn_block, mlp


def test_registry_rows():
    assert pass_class("quantize").exact is False
    assert pass_class("transformer-fusion").exact is True
    with pytest.raises(RecipeError, match="mode"):
        make_pass("quantize", {"mode": "fast"})
    with pytest.raises(RecipeError, match="unknown op type"):
        make_pass("quantize", {"op_types": ["Nope"]})


def test_quantize_pass_in_a_pipeline_is_deterministic():
    m = mlp()
    x = data_for(m, 32)["x"]
    ctx = Context(data=Dataset("<x>", arrays={"x": x}))
    outs = [run_pipeline(m, [make_pass("quantize")], ctx, command="t").model for _ in range(2)]
    assert outs[0].SerializeToString(deterministic=True) == outs[1].SerializeToString(deterministic=True)
    step = run_pipeline(m, [make_pass("quantize")], ctx, command="t").steps[0]
    assert step.counts["chosen"] == "dynamic" and step.counts["quantized_nodes"] == 2
    assert step.verification["metric"]["drop"] <= 5.0


def test_the_api_is_the_pass_run_by_the_pipeline():
    """``quantize()`` runs one ``QuantizePass``: the same model as the recipe step with the
    same options, the pipeline's verification and provenance, the input left as it was."""
    m = mlp()
    ds = Dataset("<x>", arrays={"x": data_for(m, 32)["x"]})
    before = m.SerializeToString(deterministic=True)
    api = quantize(m, mode="dynamic", calibration=ds, allow_slower=True, timing=False)
    step = run_pipeline(m, [make_pass("quantize", {"mode": "dynamic"})], Context(data=ds), command="t").model
    assert api.model.graph.SerializeToString(deterministic=True) == step.graph.SerializeToString(deterministic=True)
    assert m.SerializeToString(deterministic=True) == before
    prov = read_provenance(api.model)
    (rec,) = prov["steps"]
    assert prov["command"] == "quantize" and prov["mode"] == "dynamic" and prov["chosen"] == api.report["chosen"] == "dynamic"
    assert rec["name"] == "quantize" and rec["params"]["mode"] == "dynamic" and rec["counts"]["quantized_nodes"] == 2
    assert rec["verification"]["check"]["ort_loaded"] and api.report["verification"]["comparison"]["outputs"]


def test_the_api_options_are_a_config():
    with pytest.raises(TypeError, match="unexpected keyword argument.*nope"):
        quantize(mlp(), nope=1)
    with pytest.raises(UsageError, match="mode must be one of"):
        quantize(mlp(), mode="fast")
    with pytest.raises(UsageError, match="timing=False needs allow_slower=True"):
        quantize(mlp(), timing=False)


def test_static_step_without_calibration_is_refused():
    with pytest.raises(UsageError, match="calibration"):
        make_pass("quantize", {"mode": "static"})(mlp(), Context())


def test_cpu_int8_recipe_on_digits_mlp():
    rec = load_recipe("cpu-int8")
    assert [s.key for s in rec.steps] == ["simplify", "quantize"]
    res = run("cpu-int8", MODELS / "digits_mlp.onnx", eval_data=MODELS / "digits_test.npz", max_accuracy_drop=1.0)
    check_model(res.model)
    assert res.steps[-1].verification["metric"]["drop"] <= 1.0
    assert "DynamicQuantizeLinear" in {n.op_type for n in res.model.graph.node}


def test_transformer_fusion_fuses_and_verifies():
    m = ffn_block()
    x = np.random.default_rng(0).standard_normal((3, 4, 16)).astype(np.float32)
    ctx = Context(data=Dataset("<x>", arrays={"x": x}))
    res = run_pipeline(m, [make_pass("transformer-fusion", {"model_type": "bert"})], ctx, command="t")
    step = res.steps[0]
    assert step.modified and step.counts["fused_SkipLayerNormalization"] == 1 and step.counts["fused_BiasGelu"] == 1
    assert [n.op_type for n in res.model.graph.node] == ["MatMul", "BiasGelu", "SkipLayerNormalization"]
    assert step.verification["comparison"]["outputs"][0]["rel_l2"] <= 1e-4
    # then dynamic quantization of what is left
    q = run_pipeline(res.model, [make_pass("quantize", {"mode": "dynamic"})], ctx, command="t").model
    check_model(q)


def test_transformer_fusion_leaves_other_models_unchanged():
    m = mlp()
    res = make_pass("transformer-fusion")(m, Context())
    assert not res.modified and any("no bert subgraph fused" in n for n in res.report.notes)
    assert res.model.SerializeToString(deterministic=True) == m.SerializeToString(deterministic=True)
