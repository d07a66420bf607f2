"""GPTQ weight rounding: on arrays (nearest when the inputs are uncorrelated, a smaller
output error when they are), the Hessians of a Conv's patches, and a static QDQ model whose
weights are rounded again with the quantizer's scales kept."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.data import Dataset
from onnxopt.errors import UsageError
from onnxopt.quantize.api import quantize
from onnxopt.quantize.config import QuantConfig
from onnxopt.quantize.rounding import _patches, gptq_round, inputs_to_round, layer_hessians
from onnxopt.runtime import run_dataset
from onnxopt.verify import check_model


def _output_error(w, q, scale, x):
    return float(np.mean(((w - q * scale[:, None]) @ x.T) ** 2))


def test_uncorrelated_inputs_round_to_nearest():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 10))
    scale = np.abs(w).max(axis=1) / 127
    q = gptq_round(w, np.eye(10) * 3.0, scale, np.zeros(6), -127, 127)
    np.testing.assert_array_equal(q, np.round(w / scale[:, None]))


def test_correlated_inputs_get_a_smaller_output_error_within_the_grid():
    """Neighbouring inputs nearly equal (a smooth image under a kernel): GPTQ's integers move
    the layer's output less than nearest rounding's, and stay within [lo, hi] + zero."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((4000, 1))
    x = base + 0.05 * rng.standard_normal((4000, 9))  # nine nearly equal inputs
    w = rng.standard_normal((8, 9)) * 4.0
    scale = np.abs(w).max(axis=1) / 15  # a coarse grid: the effect shows
    h = x.T @ x / len(x)
    near = np.clip(np.round(w / scale[:, None]), -15, 15)
    q = gptq_round(w, h, scale, np.zeros(8), -15, 15)
    assert q.min() >= -15 and q.max() <= 15
    assert _output_error(w, q, scale, x) < 0.5 * _output_error(w, near, scale, x)
    shifted = gptq_round(w, h, scale, np.full(8, 3.0), -15, 15)  # a zero point moves the integers, not the choice
    np.testing.assert_array_equal(shifted, q + 3)


def _conv_model(group: int = 1, strides=(1, 1), dilations=(1, 1)) -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 4 // group, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", group=group, pads=[1, 1, 1, 1], strides=list(strides), dilations=list(dilations),
                            kernel_shape=[3, 3])  # fmt: skip
    g = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 7, 7])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("group,strides,dilations", [(1, (1, 1), (1, 1)), (4, (1, 1), (1, 1)), (2, (2, 2), (1, 1)), (1, (1, 1), (2, 2))])
def test_patches_are_what_the_conv_reads(group, strides, dilations):
    """The Conv's output equals its weight rows times the patches (for each group)."""
    import onnxruntime as ort

    m = _conv_model(group, strides, dilations)
    x = np.random.default_rng(3).standard_normal((2, 4, 7, 7)).astype(np.float32)
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    w = numpy_helper.to_array(m.graph.initializer[0]).reshape(4, -1)
    cols = _patches(x, m.graph.node[0], group)  # [groups, N*positions, d]
    per = 4 // group
    for g in range(group):
        got = cols[g] @ w[g * per : (g + 1) * per].T  # [N*positions, per]
        want = y[:, g * per : (g + 1) * per].transpose(0, 2, 3, 1).reshape(-1, per)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    ds = Dataset("<x>", arrays={"x": x})
    h = layer_hessians(m, ds, inputs_to_round(m, ["conv"]), limit=None)["conv"]
    np.testing.assert_allclose(h, np.einsum("gmi,gmj->gij", cols, cols) / cols.shape[1], rtol=1e-4, atol=1e-5)


def smooth_convnet() -> onnx.ModelProto:
    """x[N,3,12,12] -> 3x3 Conv (8) -> Relu -> depthwise 3x3 Conv -> Flatten -> MatMul -> y[N,10]."""
    rng = np.random.default_rng(4)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((8, 1, 3, 3)) * 3).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b2"),
        numpy_helper.from_array((rng.standard_normal((8 * 144, 10)) * 0.05).astype(np.float32), "w3"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", pads=[1, 1, 1, 1], kernel_shape=[3, 3], group=8),
        helper.make_node("Flatten", ["c2"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "w3"], ["y"], name="fc"),
    ]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits,
    )  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def smooth_images(n: int, seed: int) -> np.ndarray:
    """Smooth random images: neighbouring pixels nearly equal, as in real ones."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, 3, 4, 4))
    return (np.kron(coarse, np.ones((3, 3))) + 0.05 * rng.standard_normal((n, 3, 12, 12))).astype(np.float32)


def test_gptq_rounding_keeps_the_scales_and_moves_the_outputs_less():
    m = smooth_convnet()
    cal = Dataset("<cal>", arrays={"x": smooth_images(128, 5)})
    ev = Dataset("<ev>", arrays={"x": smooth_images(64, 6)})
    kw = dict(mode="static", calibration=cal, metric="cosine", allow_slower=True, timing=False, equalize="off", preprocess=False, per_channel=True)
    plain = quantize(m, **kw)
    gptq = quantize(m, weight_rounding="gptq", **kw)
    assert gptq.report["chosen"] == "static per-channel gptq-rounded"
    assert any(n.startswith("GPTQ weight rounding: 3 layer(s) rounded") for n in gptq.report["candidates"][0]["notes"])
    check_model(gptq.model)
    a = {t.name: numpy_helper.to_array(t) for t in plain.model.graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in gptq.model.graph.initializer}
    assert a.keys() == b.keys()
    changed = [k for k in a if not np.array_equal(a[k], b[k])]
    assert changed and all(a[k].dtype == np.int8 for k in changed)  # only weight integers moved
    q1 = a[next(k for k in a if k.startswith("w1") and a[k].dtype == np.int8)]
    q2 = b[next(k for k in b if k.startswith("w1") and b[k].dtype == np.int8)]
    assert np.abs(q2.astype(int)).max() <= np.abs(q1.astype(int)).max()  # within the quantizer's magnitude
    ref = run_dataset(m, ev)[0]

    def err(q):
        return float(np.mean((run_dataset(q, ev)[0] - ref) ** 2))

    assert err(gptq.model) < err(plain.model)


def test_gptq_rounding_needs_static_qdq():
    with pytest.raises(UsageError, match="static QDQ"):
        QuantConfig(mode="dynamic", weight_rounding="gptq")
    with pytest.raises(UsageError, match="static QDQ"):
        QuantConfig(mode="static", format="qoperator", weight_rounding="gptq")
    with pytest.raises(UsageError, match="weight rounding"):
        QuantConfig(mode="static", weight_rounding="adaround")


def test_cli_weight_rounding(tmp_path):
    from click.testing import CliRunner

    from onnxopt.cli.main import cli

    m = smooth_convnet()
    onnx.save(m, tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", x=smooth_images(32, 7))
    out = tmp_path / "q.onnx"
    args = ["quantize", str(tmp_path / "m.onnx"), "-o", str(out), "--mode", "static", "--calibration", str(tmp_path / "cal.npz"), "--allow-slower"]
    r = CliRunner().invoke(cli, [*args, "--weight-rounding", "gptq", "--per-channel"])
    assert r.exit_code == 0, r.output
    assert "gptq-rounded" in r.output and out.exists()
    r = CliRunner().invoke(cli, ["quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "d.onnx"), "--mode", "dynamic", "--weight-rounding", "gptq"])
    assert r.exit_code == 2 and "static QDQ" in r.output and not (tmp_path / "d.onnx").exists()


def test_a_cache_rounds_each_layer_once(monkeypatch):
    """The budget search's builds share one cache: the second model gets the same integers
    without GPTQ running again."""
    import copy

    from onnxopt.quantize import rounding

    m = smooth_convnet()
    cal = Dataset("<cal>", arrays={"x": smooth_images(64, 8)})
    q = quantize(m, mode="static", calibration=cal, allow_slower=True, timing=False, equalize="off", preprocess=False, per_channel=True).model
    h = layer_hessians(m, cal, inputs_to_round(m, ["conv1", "dw", "fc"]))
    cache: dict = {}
    first, second = copy.deepcopy(q), copy.deepcopy(q)
    assert rounding.round_weights(first, m, h, cache)[0] == 3 and len(cache) == 3
    monkeypatch.setattr(rounding, "gptq_round", lambda *a, **k: pytest.fail("rounded again"))
    assert rounding.round_weights(second, m, h, cache)[0] == 3
    assert [t.raw_data for t in first.graph.initializer] == [t.raw_data for t in second.graph.initializer]
