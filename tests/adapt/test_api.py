"""``onnxopt.adapt.api``: structure, validity, numbers and refusals of adapted models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxopt.adapt.api import adapt, evaluate
from onnxopt.adapt.emit import read_class_names
from onnxopt.core.provenance import read_provenance
from onnxopt.data import Dataset
from onnxopt.errors import DataError, UnsupportedError, UsageError
from onnxopt.linear import softmax as np_softmax
from tests.adapt.adapt_models import conv_classifier, features_of, linear_labels

MODELS = Path(__file__).resolve().parents[2] / "models"


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_adapt_replaces_the_head_and_learns_the_new_labels(tiny):
    mpath, dpath, model = tiny
    res = adapt(mpath, dpath, l2=1e-3)
    out = res.model
    onnx.checker.check_model(out, full_check=True)
    # structure: extractor untouched, old head gone, a Gemm head with 4 classes appended
    assert [n.op_type for n in out.graph.node] == ["Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"]
    assert "fc.w" not in {t.name for t in out.graph.initializer}
    assert [i.name for i in out.graph.input] == ["x"] and [o.name for o in out.graph.output] == ["logits"]
    dims = out.graph.output[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and dims[1].dim_value == 4
    rep = res.report
    assert rep["cut"]["feature"] == "feat" and rep["head"]["l2_source"] == "given"
    assert rep["verification"]["features"]["bitwise_equal"] and rep["verification"]["head"]["ok"]
    assert rep["train_samples"] + rep["holdout_samples"] == 160 and 28 <= rep["holdout_samples"] <= 36  # 20% of each class
    assert rep["accuracy"]["train"] >= 95.0 and rep["accuracy"]["holdout"] >= 85.0
    # numbers: the ONNX head equals the numpy head on the extracted features
    with np.load(dpath) as z:
        x, y = z["x"], z["labels"]
    feats = features_of(model, x).astype(np.float64)
    w = onnx.numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "adapt.head.weight"))
    b = onnx.numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "adapt.head.bias"))
    np.testing.assert_allclose(_run(out, x), feats @ w.T.astype(np.float64) + b, rtol=1e-4, atol=1e-4)
    assert read_provenance(out)["command"] == "adapt"
    assert evaluate(out, dpath).accuracy == pytest.approx(100.0 * np.mean(np.argmax(_run(out, x), 1) == y))


def test_adapt_is_byte_identical_on_rerun(tiny):
    mpath, dpath, _ = tiny
    a = adapt(mpath, dpath, holdout=0.25, seed=3).model
    b = adapt(mpath, dpath, holdout=0.25, seed=3).model
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def test_cv_chooses_l2_when_not_given(tiny):
    mpath, dpath, _ = tiny
    rep = adapt(mpath, dpath, head="linear").report
    assert rep["head"]["l2_source"] == "cv" and rep["head"]["l2"] in [s["l2"] for s in rep["head"]["cv"]["scores"]]
    assert rep["head"]["kind"] == "linear" and rep["accuracy"]["holdout"] >= 75.0


@pytest.mark.parametrize("pool, op, width", [("mean", "GlobalAveragePool", 6), ("max", "GlobalMaxPool", 6), ("flatten", "Flatten", 96)])
def test_spatial_features_are_pooled(tiny, pool, op, width):
    mpath, dpath, _ = tiny
    res = adapt(mpath, dpath, features="relu", pool=pool, l2=1e-2)
    ops = [n.op_type for n in res.model.graph.node]
    assert ops[:2] == ["Conv", "Relu"] and op in ops[2:] and ops[-1] == "Gemm"
    assert res.report["cut"]["width"] == width and res.report["verification"]["head"]["ok"]
    assert res.report["verification"]["features"]["shape"] == ["N", 6, 4, 4]


def test_softmax_follows_the_input_model_and_class_names_are_stored(tmp_path):
    model = conv_classifier(softmax=True)
    x = np.random.default_rng(5).standard_normal((90, 2, 4, 4)).astype(np.float32)
    y = linear_labels(features_of(model, x), 3, seed=4)
    res = adapt(model, Dataset("mem", arrays={"x": x}, labels=y), l2=1e-2, class_names=["a", "b", "c"])
    assert res.model.graph.node[-1].op_type == "Softmax"
    probs = _run(res.model, x)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert read_class_names(res.model) == ["a", "b", "c"]
    plain = adapt(model, Dataset("mem", arrays={"x": x}, labels=y), l2=1e-2, softmax=False).model
    assert plain.graph.node[-1].op_type == "Gemm" and read_class_names(plain) is None
    np.testing.assert_allclose(np_softmax(_run(plain, x).astype(np.float64)), probs, atol=1e-5)


def test_quantized_extractor_keeps_its_int8_part(tmp_path, tiny):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    mpath, dpath, _ = tiny
    qpath = tmp_path / "q.onnx"
    quantize_dynamic(str(mpath), str(qpath), weight_type=QuantType.QInt8)
    res = adapt(qpath, dpath, l2=1e-3)
    ops = [n.op_type for n in res.model.graph.node]
    assert "ConvInteger" in ops and "DynamicQuantizeLinear" in ops and "MatMulInteger" not in ops
    assert ops[-1] == "Gemm" and res.report["cut"]["auto"]["op"] == "MatMulInteger"
    assert res.report["verification"]["features"]["ok"] and res.report["accuracy"]["train"] >= 90.0


def test_classes_beyond_the_labels_and_original_accuracy(tiny):
    mpath, dpath, _ = tiny
    rep = adapt(mpath, dpath, classes=6, l2=1e-2).report
    assert rep["head"]["classes"] == 6 and any("never predicted" in n for n in rep["notes"])
    orig = rep["accuracy"]["original"]
    # the tiny model has 3 classes, the labels 4: accuracy is also given on labels < 3
    assert orig["classes"] == 3 and not orig["same_label_space"] and orig["in_label_space"]["samples"] < orig["samples"]


def _data(tmp_path, **arrays):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    return p


def test_bad_inputs_raise_user_errors(tmp_path, tiny):
    mpath, dpath, _ = tiny
    x = np.random.default_rng(0).standard_normal((20, 2, 4, 4)).astype(np.float32)
    with pytest.raises(DataError, match="no 'labels'"):
        adapt(mpath, _data(tmp_path, x=x))
    with pytest.raises(DataError, match="fewer than 2 classes"):
        adapt(mpath, _data(tmp_path, x=x, labels=np.zeros(20, np.int64)))
    with pytest.raises(DataError, match=r"outside \[0, 3\): 3, 4, 5"):
        adapt(mpath, _data(tmp_path, x=x, labels=np.arange(20) % 6), classes=3)
    with pytest.raises(UsageError, match="at least 2 classes"):
        adapt(mpath, dpath, classes=1)
    with pytest.raises(UsageError, match="no such tensor"):
        adapt(mpath, dpath, features="missing")
    with pytest.raises(UsageError, match="output being replaced"):
        adapt(mpath, dpath, features="logits")
    with pytest.raises(UsageError, match="holdout"):
        adapt(mpath, dpath, holdout=1.0)
    with pytest.raises(UsageError, match="l2"):
        adapt(mpath, dpath, l2=0)
    with pytest.raises(UsageError, match="2 class names for 3"):
        adapt(mpath, dpath, classes=3, class_names=["a", "b"])


def test_non_float_features_and_headless_models_are_refused(tmp_path):
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ArgMax", ["x"], ["idx"], axis=1, keepdims=1), helper.make_node("Cast", ["idx"], ["y"], to=TensorProto.FLOAT)]
    g = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])]
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / "nohead.onnx"
    onnx.save(m, str(path))
    data = _data(tmp_path, x=np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32), labels=np.arange(10) % 2)
    with pytest.raises(UnsupportedError, match="no Gemm/MatMul head") as exc:
        adapt(path, data)
    assert str(path) in str(exc.value)
    with pytest.raises(UsageError, match="int64, not a float tensor"):
        adapt(path, data, features="idx")


def test_digits_cnn04_adapted_to_ten_digits():
    """The demo path: the 0-4 CNN, refitted on all ten digits of the calibration set."""
    res = adapt(MODELS / "digits_cnn04.onnx", MODELS / "digits_calib.npz", l2=1e-4, eval_data=MODELS / "digits_test.npz")
    rep = res.report
    assert rep["head"]["classes"] == 10 and rep["cut"]["feature"] == "/flatten/Flatten_output_0"
    assert rep["verification"]["features"]["bitwise_equal"]
    ev = rep["evaluation"]
    assert ev["adapted"]["accuracy"] >= 88.0 and ev["original"]["accuracy"] < 55.0
    assert ev["original"]["in_label_space"]["accuracy"] >= 95.0
    # ready for ensemble: same input and output names, [N, 10] scores
    assert [i.name for i in res.model.graph.input] == ["image"] and [o.name for o in res.model.graph.output] == ["logits"]


def test_after_prune_and_before_ensemble(tmp_path):
    """A pruned extractor is adapted as it is (its narrower features), and adapted members
    keep the input/output names, so they fuse in an ensemble."""
    from onnxopt.ensemble.api import ensemble
    from onnxopt.prune.api import prune

    model = conv_classifier(channels=16)
    x = np.random.default_rng(3).standard_normal((120, 2, 4, 4)).astype(np.float32)
    pruned = prune(model, ratio=0.5, timing_runs=0).model
    assert next(t for t in pruned.graph.initializer if t.name == "conv.w").dims[0] == 8
    y = linear_labels(features_of(pruned, x), 3, seed=2)
    data = Dataset("mem", arrays={"x": x}, labels=y)
    a = adapt(pruned, data, l2=1e-2)
    assert a.report["cut"]["width"] == 8 and a.report["accuracy"]["train"] >= 90.0
    b = adapt(model, data, head="linear", l2=1e-2).model
    ens = ensemble([a.model, b], fusion="mean", data=data).model
    onnx.checker.check_model(ens, full_check=True)
    np.testing.assert_allclose(_run(ens, x), (_run(a.model, x) + _run(b, x)) / 2, rtol=1e-4, atol=1e-5)
