"""onnxopt.verify: error statistics by formula, check_model, and the public verify()."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxopt.errors import ModelError, VerificationError
from onnxopt.verify import check_model, compare_outputs, verify
from tests.toy_models import if_model, tiny_cnn, two_outputs


def test_identical_outputs():
    a = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    comp = compare_outputs(["y"], [a], [a.copy()])
    (o,) = comp.outputs
    assert comp and o.ok and o.max_abs == 0 and o.rel_l2 == 0 and o.cosine == pytest.approx(1.0)
    assert o.top1_agreement == 1.0 and comp.worst_rel_l2 == 0


def test_statistics_match_their_formulas():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((20, 5))
    b = a + rng.standard_normal((20, 5)) * 0.1
    (o,) = compare_outputs(["y"], [a], [b], atol=0, rtol=0).outputs
    d = np.abs(b - a)
    assert o.max_abs == pytest.approx(d.max())
    assert o.mean_abs == pytest.approx(d.mean())
    assert o.rel_l2 == pytest.approx(np.linalg.norm(b - a) / np.linalg.norm(a))
    cos = np.mean([(x @ y) / np.linalg.norm(x) / np.linalg.norm(y) for x, y in zip(a, b, strict=True)])
    assert o.cosine == pytest.approx(cos)
    assert o.top1_agreement == pytest.approx(np.mean(a.argmax(1) == b.argmax(1)))
    assert not o.ok


def test_tolerance_is_elementwise_atol_plus_rtol():
    a = np.array([[1.0, 100.0]], np.float32)
    b = a + np.array([[0.011, 0.5]], np.float32)
    assert compare_outputs(["y"], [a], [b], atol=0.01, rtol=0.005)  # 0.011 <= 0.01+0.005, 0.5 <= 0.51
    assert not compare_outputs(["y"], [a], [b], atol=0.01, rtol=0.0)


def test_shape_dtype_and_nan_mismatches_fail():
    a = np.ones((2, 3), np.float32)
    (o,) = compare_outputs(["y"], [a], [np.ones((3, 2), np.float32)]).outputs
    assert not o.ok and "shape" in o.note
    nan = a.copy()
    nan[0, 0] = np.nan
    (o,) = compare_outputs(["y"], [a], [nan]).outputs
    assert not o.ok and "NaN" in o.note
    ints = np.arange(6).reshape(2, 3)
    assert compare_outputs(["i"], [ints], [ints.copy()])
    assert not compare_outputs(["i"], [ints], [ints + 1])
    strs = np.array(["a", "b"])
    assert compare_outputs(["s"], [strs], [strs.copy()]) and not compare_outputs(["s"], [strs], [np.array(["a", "c"])])


def test_check_model_accepts_and_rejects():
    rec = check_model(tiny_cnn())
    assert rec.checker and rec.ort_loaded and rec.strict_shape_inference
    bad = copy.deepcopy(tiny_cnn())
    bad.graph.node[2].op_type = "NoSuchOp"
    with pytest.raises(VerificationError, match="step 1: onnx.checker rejects"):
        check_model(bad, label="step 1")
    with pytest.raises(ModelError):
        check_model(bad, error=ModelError)



def _big_weight_model(k: int = 256, n: int = 128, reshape_to: int = 128) -> onnx.ModelProto:
    """x[1,256] -> MatMul(W[256,128] as a Constant node inside an If branch) -> Reshape by an
    initializer shape: the weight is over the skeleton's threshold, the shape is not."""
    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    out_vi = helper.make_tensor_value_info("branch_out", onnx.TensorProto.FLOAT, [1, n])
    then_g = helper.make_graph(
        [helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w, "W")), helper.make_node("MatMul", ["x", "W"], ["branch_out"])],
        "then",
        [],
        [out_vi],
    )
    else_g = helper.make_graph([helper.make_node("MatMul", ["x", "W2"], ["branch_out"])], "else", [], [out_vi])
    g = helper.make_graph(
        [helper.make_node("If", ["flag"], ["h"], then_branch=then_g, else_branch=else_g), helper.make_node("Reshape", ["h", "shape"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 256]), helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["a", "b"])],
        [numpy_helper.from_array(w[:, :n] * 2, "W2"), numpy_helper.from_array(np.array([reshape_to, -1], np.int64), "shape")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_check_model_checks_a_skeleton_without_copying_weights(tmp_path):
    """The checker and strict shape inference run on a skeleton whose large tensors (here one
    in an initializer and one in a Constant node inside an If branch) point at sparse files:
    the skeleton is small, keeps every dim, and still lets inference read a small shape tensor."""
    from onnxopt.verify import _checker, _skeleton

    model = _big_weight_model()
    skeleton, lazy = _skeleton(model, tmp_path)
    assert not lazy and len(skeleton.SerializeToString()) < 4096 < len(model.SerializeToString())
    assert sorted(p.stat().st_size for p in tmp_path.glob("*.bin")) == [256 * 128 * 4] * 2
    inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=True, data_prop=True)
    assert [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim] == [128, 1]
    rec = check_model(model)
    assert rec.checker and rec.ort_loaded and rec.strict_shape_inference, rec.notes
    # a large weight of the wrong shape is still caught by shape inference on the skeleton
    bad = copy.deepcopy(model)
    bad.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.zeros((200, 128), np.float32), "W2"))
    notes: list[str] = []
    assert not _checker(bad, notes) and "Incompatible dimensions for matrix multiplication" in notes[0]

def _scaled(model, factor):
    m = copy.deepcopy(model)
    for t in m.graph.initializer:
        if t.name == "fc.w":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * factor, t.name))
    return m


def test_verify_public_api(tmp_path):
    a = tmp_path / "a.onnx"
    onnx.save(tiny_cnn(), str(a))
    comp = verify(a, tiny_cnn())
    assert comp and comp.samples == 8 and comp.source == "synthesized x[8,3,8,8]"
    assert comp.to_dict()["outputs"][0]["name"] == "logits"
    off = verify(a, _scaled(tiny_cnn(), 1.01))
    assert not off and 0.001 < off.worst_rel_l2 < 0.1
    assert verify(a, _scaled(tiny_cnn(), 1.01), atol=1.0, rtol=0.1)


def test_verify_on_data(tmp_path):
    x = np.random.default_rng(0).standard_normal((12, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    comp = verify(tiny_cnn(), tiny_cnn(), tmp_path / "d.npz", limit=5)
    assert comp and comp.samples == 5


def test_verify_interface_mismatches(tmp_path):
    b = tmp_path / "b.onnx"
    onnx.save(if_model(), str(b))
    with pytest.raises(ModelError, match="inputs differ") as exc:
        verify(tiny_cnn(), b)
    assert exc.value.path == str(b)
    two = tmp_path / "two.onnx"
    m = two_outputs()
    onnx.save(m, str(two))
    single = copy.deepcopy(m)
    del single.graph.output[1]
    with pytest.raises(ModelError, match="has 1 output"):
        verify(two, single)


def test_verify_reports_a_runtime_failure_as_model_error():
    m = tiny_cnn()
    broken = copy.deepcopy(m)
    # a Reshape to an impossible shape: loads, fails at run time
    broken.graph.initializer.append(numpy_helper.from_array(np.array([7, 7], np.int64), "bad_shape"))
    broken.graph.node.append(helper.make_node("Reshape", ["logits", "bad_shape"], ["reshaped"]))
    broken.graph.output[0].name = "reshaped"
    del broken.graph.output[0].type.tensor_type.shape.dim[:]
    with pytest.raises(ModelError, match="onnxruntime"):
        verify(m, broken)


def test_public_verify_stays_callable_after_the_module_is_imported():
    import onnxopt
    import onnxopt.verify  # noqa: F401  (binds the submodule over the lazy attribute)

    assert onnxopt.verify(tiny_cnn(), tiny_cnn())
    from onnxopt import verify as public

    assert public(tiny_cnn(), tiny_cnn(), atol=0, rtol=0)


def test_verify_counts_the_samples_it_compared(tmp_path):
    """A model with a fixed batch of 4 on 10 samples compares 8 (the partial batch cannot
    run): the report says 8, not 10."""
    m = tiny_cnn()
    for vi in (m.graph.input[0], m.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = 4
    x = np.random.default_rng(0).standard_normal((10, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    comp = verify(m, m, tmp_path / "d.npz")
    assert comp and comp.samples == 8 and comp.outputs[0].shape == [8, 5]
    assert verify(m, m, tmp_path / "d.npz", limit=6).samples == 4


def test_verify_refuses_a_shape_for_no_input(tmp_path):
    from onnxopt.errors import DataError

    a = tmp_path / "a.onnx"
    onnx.save(tiny_cnn(), str(a))
    with pytest.raises(DataError, match="--shape names 'image'") as exc:
        verify(a, a, shapes={"image": (1, 3, 8, 8)})
    assert exc.value.path == str(a)


def test_exact_rule_is_one_function():
    from onnxopt.verify import EXACT_MAX_ABS, EXACT_REL_L2, compare_outputs, is_exact

    assert is_exact(EXACT_REL_L2, 1.0) and is_exact(1.0, EXACT_MAX_ABS)
    assert not is_exact(2 * EXACT_REL_L2, 2 * EXACT_MAX_ABS)
    assert is_exact(5e-4, 1.0, limit=1e-3)
    a = np.ones((4, 3), np.float32)
    comp = compare_outputs(["x", "y", "z"], [a, a, a], [a, a * 1.01, a[:2]])
    assert [o.name for o in comp.inexact()] == ["z", "y"]  # worst first (shape mismatch = inf)
    assert comp.outputs[0].exact and not comp.outputs[1].exact


def test_comparison_carries_quantiles_and_nonfinite_counts():
    from onnxopt.verify import compare_arrays

    a = np.zeros((10, 100), np.float32)
    b = a.copy()
    b[0, :10] = 1.0  # 1% of the elements off by 1
    b[1, 0] = np.nan
    o = compare_arrays("y", a, b)
    assert o.max_abs == 1.0 and o.median_abs == 0.0 and o.p90_abs == 0.0
    assert 0.0 < o.p99_abs <= 1.0 and o.nonfinite == 1 and not o.ok
    assert set(o.to_dict()) >= {"median_abs", "p90_abs", "p99_abs", "nonfinite"}


def test_comparison_on_blocks_of_samples_matches_one_block(monkeypatch):
    import onnxopt.verify as verify

    rng = np.random.default_rng(0)
    a = rng.standard_normal((9, 4, 5)).astype(np.float32)
    b = (a + 1e-3 * rng.standard_normal(a.shape)).astype(np.float32)
    b[2, 1, 1], a[5, 0, 0], b[5, 0, 0] = np.nan, np.inf, np.inf
    whole = verify.compare_arrays("y", a, b).to_dict()
    monkeypatch.setattr(verify, "CHUNK_ELEMENTS", 7)  # one sample (20 values) per block
    blocks = verify.compare_arrays("y", a, b).to_dict()
    assert blocks.keys() == whole.keys()
    for k, v in whole.items():
        assert blocks[k] == pytest.approx(v, rel=1e-12, nan_ok=True) if isinstance(v, float) else blocks[k] == v, k
