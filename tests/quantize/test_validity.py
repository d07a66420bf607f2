"""ORT's quantizer output that is invalid, reproduced, and repaired per node."""

from __future__ import annotations

import onnx
import pytest

from onnxopt.data import Dataset
from onnxopt.errors import VerificationError
from onnxopt.quantize.collect import collect_ranges
from onnxopt.quantize.config import QuantConfig
from onnxopt.quantize.engine import CandidateBuilder
from onnxopt.quantize.ort_backend import QuantizerFailure, quantize_with_ort
from onnxopt.quantize.preprocess import infer_shapes
from onnxopt.quantize.validity import build_valid, culprits_in, validate_candidate
from onnxopt.runtime import run_dataset
from onnxopt.verify import check_model
from tests.quantize.quant_models import batched_matmul, conv_net, data_for, grouped_conv_transpose


def _builder(model, config):
    m = infer_shapes(model)
    ds = Dataset("<t>", arrays=data_for(m, 16))
    ds.validate(m)
    feed = ds.first_batch(2)
    ref = run_dataset(m, Dataset("<f>", arrays=feed, whole=True))
    ranges = collect_ranges(m, ds).ranges if config.mode == "static" else None
    return CandidateBuilder(m, config, ranges=ranges, feed=feed, reference=ref), ranges, feed


def test_per_channel_qdq_on_opset_11_is_invalid_and_falls_back_to_per_tensor():
    cfg = QuantConfig(mode="static", per_channel=True)
    b, ranges, feed = _builder(conv_net(opset=11), cfg)
    raw = quantize_with_ort(b.base, cfg, ranges=ranges)
    why = validate_candidate(raw, feed=feed)
    assert why and "axis" in why  # DequantizeLinear(axis) does not exist before opset 13
    q, fallbacks = b.build()
    check_model(q)
    assert {(f.node, f.action) for f in fallbacks} == {("conv1", "per-tensor"), ("conv2", "per-tensor")}
    assert validate_candidate(q, feed=feed, reference=b.reference) is None


def test_grouped_conv_transpose_crash_falls_back_for_that_node_only():
    cfg = QuantConfig(mode="static", per_channel=True)
    b, ranges, _ = _builder(grouped_conv_transpose(), cfg)
    with pytest.raises(QuantizerFailure):
        quantize_with_ort(b.base, cfg, ranges=ranges)
    q, fallbacks = b.build()
    assert [(f.node, f.action) for f in fallbacks] == [("deconv", "per-tensor")]
    check_model(q)
    # conv stays per-channel: its weight's DequantizeLinear has an axis and a 1-D scale
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("wc"))
    assert any(a.name == "axis" for a in dq.attribute)


def test_qoperator_per_channel_batched_matmul_fails_at_run_time_and_stays_float():
    cfg = QuantConfig(mode="static", format="qoperator", per_channel=True)
    b, ranges, feed = _builder(batched_matmul(), cfg)
    raw = quantize_with_ort(b.base, cfg, ranges=ranges)
    check_model(raw)  # loads fine ...
    assert "failed to run" in validate_candidate(raw, feed=feed)  # ... but cannot run
    q, fallbacks = b.build()
    assert [(f.node, f.action) for f in fallbacks] == [("bmm", "float")]
    assert "bmm" in [n.name for n in q.graph.node if n.op_type == "MatMul"]
    assert validate_candidate(q, feed=feed, reference=b.reference) is None


def test_unrepairable_candidate_raises():
    def build(exclude, per_tensor, only):
        raise QuantizerFailure("always broken")

    with pytest.raises(VerificationError, match="no valid quantized model"):
        build_valid(build, ["a", "b"], validate=lambda m: None, node_tensors={}, op_types={}, per_channel=False, can_per_tensor=False, max_builds=6)


def test_culprits_in_reads_ort_names():
    tensors = {"conv1": {"w1"}, "conv10": {"w10"}, "mm": set()}
    assert culprits_in("Bad node spec. Name: w1_DequantizeLinear OpType: DequantizeLinear", set(), tensors) == {"conv1"}
    assert culprits_in("running QLinearMatMul node. Name:'mm_quant' Status", set(), tensors) == {"mm"}
    assert culprits_in("nothing named", {"w10"}, tensors) == {"conv10"}


def test_topological_order_is_restored():
    cfg = QuantConfig(mode="static")
    b, ranges, feed = _builder(conv_net(), cfg)
    q = quantize_with_ort(b.base, cfg, ranges=ranges)
    onnx.checker.check_model(q)  # ORT appends Q/DQ nodes; the backend sorts them
