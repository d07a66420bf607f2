"""Activation ranges streamed through an augmented model."""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.data import Dataset
from onnxopt.quantize.collect import augment_for_calibration, collect_ranges, tensors_to_calibrate
from onnxopt.quantize.preprocess import infer_shapes
from onnxopt.runtime import create_session
from tests.quantize.quant_models import conv_net, data_for


def _dataset(model, n=40):
    ds = Dataset("<t>", arrays=data_for(model, n))
    ds.validate(model)
    return ds


def test_minmax_ranges_equal_the_activations_extremes():
    m = infer_shapes(conv_net())
    ds = _dataset(m)
    names = tensors_to_calibrate(m)
    assert names == ["x", "c1", "r1", "y"]
    got = collect_ranges(m, ds, method="minmax", batch_size=7)
    assert got.samples == 40 and got.batches == 6 and got.tensors == 4
    # reference: all activations at once
    aug = onnx.ModelProto()
    aug.CopyFrom(m)
    for n in ("c1", "r1"):
        aug.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    x = ds.first_batch(40)["x"]
    outs = dict(zip([o.name for o in aug.graph.output], create_session(aug).run(None, {"x": x}), strict=True))
    outs["x"] = x
    for name in names:
        lo, hi = got.ranges[name]
        assert np.isclose(lo, outs[name].min(), rtol=1e-5) and np.isclose(hi, outs[name].max(), rtol=1e-5)


def test_histogram_methods_stay_inside_minmax_and_do_not_depend_on_batch_count():
    m = infer_shapes(conv_net())
    ds = _dataset(m, 48)
    mm = collect_ranges(m, ds, method="minmax").ranges
    for method in ("percentile", "entropy"):
        r = collect_ranges(m, ds, method=method, batch_size=16).ranges
        for name, (lo, hi) in r.items():
            assert mm[name][0] <= lo <= hi <= mm[name][1]
    # the augmented model exposes only statistics for minmax (two scalars per tensor)
    aug, reads = augment_for_calibration(m, ["c1"], "minmax")
    assert [n.op_type for n in aug.graph.node[-2:]] == ["ReduceMin", "ReduceMax"]
    assert reads == [("c1", reads[0][1], reads[0][2])]
    assert np.isscalar(create_session(aug).run([reads[0][1]], ds.first_batch(4))[0].item())


def test_batch_bounded_by_the_calibrated_tensors_bytes(monkeypatch):
    """ORT keeps every calibrated tensor of a batch alive: the default batch shrinks to fit
    ``CALIBRATION_BYTES``, with a note; MinMax ranges do not change."""
    from onnxopt.quantize import collect
    from onnxopt.stats import activation_bytes

    m = infer_shapes(conv_net())
    ds = _dataset(m)
    names = tensors_to_calibrate(m)
    per = sum(activation_bytes(m, ds.first_batch(1), names).values())
    assert per > 0
    free = collect_ranges(m, ds, method="minmax")
    assert free.batches == 2 and not any("calibration batch" in n for n in free.notes)  # 40 samples at the default 32
    monkeypatch.setattr(collect, "CALIBRATION_BYTES", 3 * per)
    bounded = collect_ranges(m, ds, method="minmax")
    assert bounded.batches == 14 and bounded.samples == 40  # batches of 3
    assert any(n.startswith("calibration batch 3:") for n in bounded.notes)
    assert bounded.ranges == free.ranges
    # a batch the caller asked for is kept
    assert collect_ranges(m, ds, method="minmax", batch_size=20).batches == 2


def test_activation_bytes_from_inferred_shapes():
    from onnxopt.stats import activation_bytes

    m = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 8] x) => (float[N, 16] y) {
            h = Relu(x)
            y = Concat<axis = 1>(h, h)
        }
        """
    )
    sizes = activation_bytes(m, {"x": np.zeros((5, 8), np.float32)}, ["h", "y", "unknown"])
    assert sizes == {"h": 8 * 4, "y": 16 * 4, "unknown": 16 * 4}


def test_the_calibration_batch_is_bounded_by_measured_bytes_where_shape_inference_misses_dims(monkeypatch):
    """A dim computed from constants (magika's one-hot depth) is unknown to shape inference
    without data propagation: one batch-1 run with the tensors exposed measures it."""
    from onnx import TensorProto, helper

    from onnxopt.quantize import collect
    from onnxopt.stats import activation_bytes

    m = helper.make_model(
        helper.make_graph(
            [helper.make_node("Concat", ["one", "reps"], ["repeats"], axis=0), helper.make_node("Tile", ["x", "repeats"], ["t"]),
             helper.make_node("Relu", ["t"], ["r"]), helper.make_node("ReduceMean", ["r"], ["y"], axes=[1], keepdims=1)],
            "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
            [helper.make_tensor("one", TensorProto.INT64, [1], [1]), helper.make_tensor("reps", TensorProto.INT64, [1], [512])],
        ),
        opset_imports=[helper.make_opsetid("", 13)],
    )  # fmt: skip
    ds = Dataset("<t>", arrays={"x": np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)})
    names = tensors_to_calibrate(m)
    one = ds.first_batch(1)
    estimated = sum(activation_bytes(m, one, names).values())
    measured = collect.measured_bytes(m, one, names)
    assert measured >= 2 * 8 * 512 * 4 > 4 * estimated  # t and r: 4096 floats each per sample, not seen by shape inference
    monkeypatch.setattr(collect, "CALIBRATION_BYTES", 4 * measured)
    got = collect_ranges(m, ds, method="minmax")
    assert got.batches == 10 and any(n.startswith("calibration batch 4:") for n in got.notes)
