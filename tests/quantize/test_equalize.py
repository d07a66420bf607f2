"""Equalization: the numpy math on arrays, and the ``smooth-quant`` / ``equalize`` passes on
tiny models (exact in FP32 within 1e-5 relative L2, what changed, what was skipped and why)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxopt.core.passes import Context
from onnxopt.core.pipeline import run_pipeline
from onnxopt.core.registry import make_pass
from onnxopt.data import Dataset
from onnxopt.quantize.collect import collect_channel_stats
from onnxopt.quantize.equalize import (
    absorb_amounts,
    choose_alpha,
    cle_scales,
    fake_quant,
    smooth_error,
    smooth_scales,
)
from onnxopt.runtime import run_dataset
from onnxopt.verify import check_model
from tests.quantize.eq_models import conv_pair, gemm_chain, outlier_block

TIGHT = 1e-5  # the bound for the equalization passes (verify's exact rule is 1e-4)


def _data(model, n=64, seed=0, scale=1.0):
    dims = [d.dim_value if d.dim_value > 0 else n for d in model.graph.input[0].type.tensor_type.shape.dim]
    return Dataset("<x>", arrays={"x": (np.random.default_rng(seed).standard_normal(dims) * scale).astype(np.float32)})


def _rel(model, new, ds) -> float:
    a, b = run_dataset(model, ds)[0].astype(np.float64), run_dataset(new, ds)[0].astype(np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def _w(model, name):
    from onnx import numpy_helper

    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


# -- math on arrays --------------------------------------------------------------------


def test_smooth_scales_formula_and_zero_channels():
    x, w = np.array([8.0, 1.0, 0.0]), np.array([2.0, 4.0, 3.0])
    s = smooth_scales(x, w, 0.5)
    np.testing.assert_allclose(s, [np.sqrt(8 / 2), np.sqrt(1 / 4), 1.0], rtol=1e-6)
    np.testing.assert_allclose(smooth_scales(x, w, 1.0)[:2], [8.0, 1.0])
    with pytest.raises(ValueError):
        smooth_scales(x, w, 1.5)


def test_fake_quant_steps():
    a = np.array([-1.0, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(fake_quant(a, symmetric=True), np.round(a * 127) / 127)
    q = fake_quant(np.array([0.0, 1.0, 2.0, 255.0]), symmetric=False)
    np.testing.assert_allclose(q, [0, 1, 2, 255])  # an exact grid stays exact
    per = fake_quant(np.array([[1.0, 100.0], [0.5, 50.0]]), symmetric=True, axis=1)
    np.testing.assert_allclose(per[:, 0], [1.0, np.round(0.5 * 127) / 127], rtol=1e-6)


def test_choose_alpha_migrates_an_activation_outlier():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 16))
    x[:, 3] *= 60.0  # one outlier channel, as after a LayerNorm with a large gamma
    w = rng.standard_normal((16, 8)) * 0.2
    alpha, s, errors = choose_alpha(x, w)
    assert alpha is not None and errors[alpha] < 0.5 * errors[None]
    assert s[3] == s.max()  # the outlier channel is divided the most
    assert smooth_error(x, w, s) == pytest.approx(errors[alpha])
    # an already balanced layer: no alpha beats leaving it alone, or barely
    flat = rng.uniform(-1, 1, (512, 16))
    a2, _, e2 = choose_alpha(flat, rng.uniform(-1, 1, (16, 8)))
    assert a2 is None or e2[a2] > 0.8 * e2[None]


def test_cle_scales_equalize_the_two_ranges():
    r1, r2 = np.array([30.0, 1.0, 0.0]), np.array([0.3, 4.0, 2.0])
    s = cle_scales(r1, r2)
    np.testing.assert_allclose((r1 / s)[:2], (r2 * s)[:2], rtol=1e-6)  # sqrt(r1 r2) both
    assert s[2] == 1.0


def test_absorb_amounts_only_what_stays_positive():
    c = absorb_amounts(np.array([5.0, -1.0, 2.0]), np.array([6.0, 3.0, 2.5]), np.array([0.1, 0.1, 1.0]))  # min(lo, mean - 6 std)
    np.testing.assert_allclose(c, [5.0, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(absorb_amounts(np.array([5.0]), np.array([6.0]), np.array([0.5])), [3.0], rtol=1e-6)


def test_channel_stats_per_axis():
    m = gemm_chain()
    ds = _data(m, 40)
    st = collect_channel_stats(m, ds, {"x": -1, "h": -1}, max_rows=16)
    x = ds._arrays["x"]
    np.testing.assert_allclose(st["x"].lo, x.min(axis=0), rtol=1e-6)
    np.testing.assert_allclose(st["x"].absmax, np.abs(x).max(axis=0), rtol=1e-6)
    np.testing.assert_allclose(st["x"].mean, x.mean(axis=0), atol=1e-5)
    assert st["h"].rows.shape == (16, 16) and st["x"].count == 40


def test_a_tensor_whose_channel_axis_follows_the_batch_is_left_out():
    """Bounded batches of 40 samples come as 32 + 8: a tensor whose "channel" axis is the
    batch (here the transposed input) has no per-channel statistics and is left out."""
    m = gemm_chain()
    m.graph.node.append(helper.make_node("Transpose", ["x"], ["xt"], name="t", perm=[1, 0]))
    m.graph.output.append(helper.make_tensor_value_info("xt", TensorProto.FLOAT, None))
    st = collect_channel_stats(m, _data(m, 40), {"x": -1, "xt": -1}, batch_size=32)
    assert set(st) == {"x"} and st["x"].count == 40


def test_channel_stats_batches_fit_the_calibration_bound(monkeypatch):
    """Without a batch size, the batch is bounded by what the exposed tensors take per
    sample (``CALIBRATION_BYTES``); the statistics do not depend on it."""
    import onnxopt.quantize.collect as collect

    m = gemm_chain()
    ds = _data(m, 40)
    whole = collect_channel_stats(m, ds, {"x": -1, "h": -1}, batch_size=40)
    sizes = []
    batches = ds.batches
    monkeypatch.setattr(ds, "batches", lambda size=None, limit=None: (sizes.append(size), batches(size, limit))[1])
    monkeypatch.setattr(collect, "CALIBRATION_BYTES", 1)
    bounded = collect_channel_stats(m, ds, {"x": -1, "h": -1})
    assert sizes[-1] == 1  # (first_batch reads one sample for the bound first)
    for k in ("x", "h"):
        np.testing.assert_allclose(bounded[k].mean, whole[k].mean, atol=1e-5)
        np.testing.assert_allclose(bounded[k].hi, whole[k].hi, rtol=1e-6)


# -- passes ------------------------------------------------------------------------------


def test_smooth_quant_is_exact_and_lowers_the_quantized_error():
    m = outlier_block()
    ds = _data(m)
    res = make_pass("smooth-quant")(m, Context(data=ds))
    assert res.modified and res.report.counts["smoothed"] >= 1
    new = res.model
    check_model(new)
    assert _rel(m, new, ds) <= TIGHT
    sites = {d["tensor"]: d for d in res.report.details["sites"]}
    ln = sites["ln"]
    assert ln["fold"] == "layernorm" and sorted(ln["layers"]) == ["k", "q"] and ln["error_after"] < 0.7 * ln["error_before"]
    # the residual still reads the original LayerNorm; q and k read a smoothed copy
    nodes = {n.name: n for n in new.graph.node}
    assert nodes["residual"].input[0] == "ln" and nodes["q"].input[0] == nodes["k"].input[0] != "ln"
    copy_ = next(n for n in new.graph.node if n.op_type == "LayerNormalization" and n.name != "ln")
    assert _w(new, copy_.input[1])[3] < 40.0 and (_w(new, "gamma") == _w(m, "gamma")).all()
    # a site skipped with its reason
    assert any(n.startswith("g -> f: skipped: produced by Sigmoid 'act'") for n in res.report.notes)
    # through the pipeline: verified exact (1e-4 relative L2)
    out = run_pipeline(m, [make_pass("smooth-quant")], Context(data=ds))
    assert out.steps[0].verification["comparison"]


def test_smooth_quant_fixed_alpha_and_linear_fold():
    m = outlier_block()
    ds = _data(m)
    res = make_pass("smooth-quant", {"alpha": 0.5})(m, Context(data=ds))
    assert _rel(m, res.model, ds) <= TIGHT
    sites = {d["tensor"]: d for d in res.report.details["sites"]}
    assert sites["qb"]["fold"] == "linear" and sites["qb"]["alpha"] == 0.5


def test_equalize_pair_exact_ranges_equal_and_skips_with_reasons():
    m = conv_pair()
    ds = _data(m, 16)
    res = make_pass("equalize")(m, Context())  # no data: no bias absorption
    assert res.modified and res.report.counts["pairs"] == 1 and res.report.counts["bias_absorbed"] == 0
    assert _rel(m, res.model, ds) <= TIGHT
    r1 = np.abs(_w(res.model, "w1")).max(axis=(1, 2, 3))
    r2 = np.abs(_w(res.model, "w2")).max(axis=(0, 2, 3))
    np.testing.assert_allclose(r1, r2, rtol=1e-4)  # both layers: sqrt(r1 r2) per channel
    notes = "\n".join(res.report.notes)
    assert "conv2 -> Sigmoid 'sig': not positive-homogeneous" in notes
    assert "conv3: skipped: weight 'w3' is shared with another node" in notes
    spread = res.report.details["pairs"][0]
    assert spread["range_spread_after"] < spread["range_spread_before"] / 5


def test_bias_absorption_with_calibration_data():
    m = gemm_chain()
    ds = _data(m, 128)
    res = make_pass("equalize")(m, Context(data=ds))
    assert res.report.counts["bias_absorbed"] == 1
    assert _rel(m, res.model, _data(m, 64, seed=5)) <= TIGHT  # other inputs too
    assert (_w(res.model, "b1") < _w(m, "b1") / 1.0).any() and np.abs(_w(res.model, "b2")).max() > 0
    # a Conv that pads cannot carry the absorbed constant: skipped with the reason
    padded = conv_pair(pads=1)
    rp = make_pass("equalize")(padded, Context(data=_data(padded, 16)))
    assert any("conv2 pads with zeros" in n for n in rp.report.notes)
    assert _rel(padded, rp.model, _data(padded, 16)) <= TIGHT


def test_quantize_builds_an_equalized_candidate_when_static_loses(tmp_path, invoke):
    """A LayerNorm outlier channel: plain static INT8 collapses (cosine ~0), the equalized
    build of the same configuration keeps cosine >= 99 and is the one chosen."""
    from onnxopt.errors import BudgetError
    from onnxopt.quantize.api import quantize
    from tests.conftest import save
    from tests.quantize.eq_models import ln_matmul

    m = ln_matmul()
    x = np.random.default_rng(0).standard_normal((64, 8, 32)).astype(np.float32)
    ds = Dataset("<x>", arrays={"x": x})
    fast = dict(mode="static", calibration=ds, metric="cosine", allow_slower=True, timing=False)
    r = quantize(m, **fast)
    rows = {c["label"]: c for c in r.report["candidates"]}
    assert rows["static per-tensor"]["status"] == "collapsed" and rows["static per-tensor"]["score"] < 10
    assert rows["static per-tensor equalized bias-corrected"]["score"] >= 99 and r.report["chosen"] == "static per-tensor equalized bias-corrected"
    assert rows["static per-tensor equalized bias-corrected"]["config"]["equalized"] is True
    assert any("1 SmoothQuant site(s)" in n for n in r.report["notes"])
    with pytest.raises(BudgetError, match="collapsed"):
        quantize(m, equalize="off", **fast)
    src, out, cal = save(m, tmp_path / "m.onnx"), tmp_path / "q.onnx", tmp_path / "d.npz"
    np.savez(cal, x=x)
    res = invoke("quantize", src, "-o", out, "--mode", "static", "--calibration", cal, "--metric", "cosine", "--allow-slower", "--batch", "8")
    assert res.exit_code == 0 and "static per-tensor equalized" in res.output, res.output
    res = invoke(
        "quantize", src, "-o", tmp_path / "q2.onnx", "--mode", "static", "--calibration", cal, "--metric", "cosine", "--allow-slower", "--equalize", "off"
    )
    assert res.exit_code == 3 and "collapsed" in res.output and not (tmp_path / "q2.onnx").exists()


def test_smooth_quant_folds_through_a_channel_keeping_reshape():
    from tests.quantize.eq_models import ln_reshape_gemm

    m = ln_reshape_gemm()
    ds = Dataset("<x>", arrays={"x": np.random.default_rng(0).standard_normal((32, 4, 16)).astype(np.float32)})
    from onnxopt.data import dataset_for

    ds = dataset_for(m, ds)
    res = make_pass("smooth-quant")(m, Context(data=ds))
    assert res.report.counts["smoothed"] == 1, res.report.notes
    assert _rel(m, res.model, ds) <= TIGHT
    nodes = {n.name: n for n in res.model.graph.node}
    assert nodes["flatten"].input[0] != "ln" and nodes["residual"].input[1] == "ln"  # the Reshape reads the smoothed copy


def test_smooth_quant_folds_into_a_decomposed_layernorm_affine_tail():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    gamma = np.ones(16, np.float32)
    gamma[2] = 60.0
    inits = [
        numpy_helper.from_array(gamma, "gamma"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Tanh", ["x"], ["t"], name="norm"),
        helper.make_node("Mul", ["t", "gamma"], ["g"], name="scale"),
        helper.make_node("Add", ["g", "beta"], ["h"], name="shift"),
        helper.make_node("MatMul", ["h", "w"], ["y"], name="dense"),
    ]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    ds = Dataset("<x>", arrays={"x": rng.standard_normal((128, 16)).astype(np.float32)})
    res = make_pass("smooth-quant")(m, Context(data=ds))
    assert res.report.counts["smoothed"] == 1 and res.report.details["sites"][0]["fold"] == "affine"
    assert _rel(m, res.model, ds) <= TIGHT
    assert _w(res.model, "gamma")[2] < 60.0
