"""Least squares on arrays: ridge normal equations, streaming, im2col."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.prune.reconstruct import (
    RidgeAccumulator,
    conv_pads,
    conv_patches,
    gather_outputs,
    sample_positions,
)


def _conv_reference(x, w, strides, pads, dilations):
    """Direct (loop) 2-D convolution, group 1."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    oh = (h + pads[0] + pads[2] - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (wd + pads[1] + pads[3] - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    y = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[
                :,
                :,
                i * strides[0] : i * strides[0] + (kh - 1) * dilations[0] + 1 : dilations[0],
                j * strides[1] : j * strides[1] + (kw - 1) * dilations[1] + 1 : dilations[1],
            ]
            y[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    return y


def test_ridge_recovers_an_exact_linear_map(rng):
    x = rng.standard_normal((500, 6))
    w = rng.standard_normal((6, 3))
    b = rng.standard_normal(3)
    acc = RidgeAccumulator(6, 3)
    acc.add(x, x @ w + b)
    w_hat, b_hat = acc.solve(ridge=0.0)
    np.testing.assert_allclose(w_hat, w, atol=1e-8)
    np.testing.assert_allclose(b_hat, b, atol=1e-8)
    assert acc.relative_error(w_hat, b_hat) < 1e-7
    assert acc.relative_error(np.zeros((6, 3)), np.zeros(3)) == pytest.approx(1.0)


def test_streaming_equals_one_batch_and_residual_matches_direct(rng):
    x = rng.standard_normal((300, 5))
    y = rng.standard_normal((300, 2))
    whole, streamed = RidgeAccumulator(5, 2), RidgeAccumulator(5, 2)
    whole.add(x, y)
    for s in range(0, 300, 64):
        streamed.add(x[s : s + 64], y[s : s + 64])
    assert streamed.n == 300
    for a, b in zip(whole.solve(1e-2), streamed.solve(1e-2), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-10)
    w, b = rng.standard_normal((5, 2)), rng.standard_normal(2)
    direct = float(np.sum((x @ w + b - y) ** 2))
    assert streamed.residual(w, b) == pytest.approx(direct, rel=1e-9)


def test_ridge_shrinks_weights_but_not_the_bias(rng):
    x = rng.standard_normal((200, 4))
    y = x @ rng.standard_normal((4, 1)) + 10.0
    acc = RidgeAccumulator(4, 1)
    acc.add(x, y)
    w0, _ = acc.solve(0.0)
    w1, b1 = acc.solve(10.0)
    assert np.linalg.norm(w1) < 0.5 * np.linalg.norm(w0)
    assert b1[0] == pytest.approx(10.0, abs=0.5)  # the intercept is not penalized


def test_without_bias(rng):
    x = rng.standard_normal((100, 3))
    w = rng.standard_normal((3, 2))
    acc = RidgeAccumulator(3, 2, bias=False)
    acc.add(x, x @ w)
    w_hat, b_hat = acc.solve(0.0)
    assert b_hat is None
    np.testing.assert_allclose(w_hat, w, atol=1e-8)


@pytest.mark.parametrize(
    "strides,pads,dilations", [((1, 1), (1, 1, 1, 1), (1, 1)), ((2, 1), (1, 0, 0, 2), (1, 2))]
)
def test_conv_patches_reproduce_a_convolution(rng, strides, pads, dilations):
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 2))
    y = _conv_reference(x, w, strides, pads, dilations)
    rows, pos, out = conv_patches(x, (3, 2), strides, pads, dilations)
    assert list(y.shape[2:]) == out
    np.testing.assert_allclose(rows @ w.reshape(4, -1).T, gather_outputs(y, pos), atol=1e-10)
    # a sample of positions picks the matching rows
    some = sample_positions(2, out, 7, np.random.default_rng(1))
    rows_s, pos_s, _ = conv_patches(x, (3, 2), strides, pads, dilations, some)
    assert len(rows_s) == 7 and np.all(np.diff(pos_s) > 0)
    np.testing.assert_allclose(rows_s @ w.reshape(4, -1).T, gather_outputs(y, pos_s), atol=1e-10)


def test_conv_pads_auto_pad_modes():
    assert conv_pads("NOTSET", [1, 2, 3, 4], [5, 5], [3, 3], [1, 1], [1, 1]) == [1, 2, 3, 4]
    assert conv_pads("VALID", None, [5, 5], [3, 3], [1, 1], [1, 1]) == [0, 0, 0, 0]
    # SAME: output = ceil(in / stride); the odd pixel goes at the end (UPPER) or start (LOWER)
    assert conv_pads("SAME_UPPER", None, [6], [4], [1], [1]) == [1, 2]
    assert conv_pads("SAME_LOWER", None, [6], [4], [1], [1]) == [2, 1]


def test_sample_positions_all_or_subset(rng):
    assert sample_positions(2, [3, 3], None, rng).tolist() == list(range(18))
    assert sample_positions(2, [3, 3], 100, rng).tolist() == list(range(18))
    assert len(set(sample_positions(2, [3, 3], 5, rng).tolist())) == 5


@pytest.mark.parametrize(
    "strides,pads,dilations,output_padding,kernel",
    [
        ((2, 2), (0, 0, 0, 0), (1, 1), (0, 0), (2, 2)),
        ((2, 1), (1, 0, 2, 1), (1, 2), (1, 0), (3, 2)),
        ((3, 2), (2, 2, 2, 2), (1, 1), (0, 1), (2, 3)),  # pads > (k-1)*d: the input is cropped
    ],
)
def test_conv_transpose_as_patches_matches_onnxruntime(
    rng, strides, pads, dilations, output_padding, kernel
):
    """Tolerance: float32 ONNX Runtime against float64 numpy, 1e-5 absolute."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from onnxopt.prune.reconstruct import (
        conv_transpose_as_conv,
        conv_transpose_from_conv,
        conv_transpose_input,
    )

    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    w = rng.standard_normal((3, 4, *kernel)).astype(np.float32)
    node = helper.make_node(
        "ConvTranspose",
        ["x", "w"],
        ["y"],
        strides=list(strides),
        pads=list(pads),
        dilations=list(dilations),
        output_padding=list(output_padding),
    )
    graph = helper.make_graph(
        [node],
        "ct",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0]
    z = conv_transpose_input(x.astype(np.float64), kernel, strides, pads, dilations, output_padding)
    rows, pos, out = conv_patches(z, kernel, (1, 1), (0, 0, 0, 0), dilations)
    assert out == list(y.shape[2:])
    wc = conv_transpose_as_conv(w.astype(np.float64))
    assert wc.shape == (4, 3, *kernel)
    np.testing.assert_allclose(rows @ wc.reshape(4, -1).T, gather_outputs(y, pos), atol=1e-5)
    np.testing.assert_array_equal(conv_transpose_from_conv(wc), w)
