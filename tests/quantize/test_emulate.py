"""Leaving nodes in float by graph surgery (``quantize.emulate``) gives the model ONNX
Runtime's quantizer writes with those nodes excluded, to the bit, on a model holding every
case the quantizer treats specially: a Relu and a Clip it folds into the pair before them,
ops whose output borrows the input's scale (MaxPool, Reshape), a Softmax with a fixed
range, a bias quantized with its input's scale, and one weight read by two MatMuls."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.data import Dataset
from onnxopt.metrics import Budget, Evaluator
from onnxopt.quantize.collect import collect_ranges
from onnxopt.quantize.config import QuantConfig
from onnxopt.quantize.engine import CandidateBuilder
from onnxopt.quantize.preprocess import gemm_to_matmul, infer_shapes
from onnxopt.quantize.sensitivity import fit_budget
from onnxopt.runtime import create_session
from tests.quantize.quant_models import mlp


def _net() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    w = lambda *s: numpy_helper.from_array((rng.standard_normal(s) * 0.4).astype(np.float32), None)  # noqa: E731
    inits = {
        "c1w": w(4, 3, 3, 3), "c1b": w(4), "c2w": w(4, 4, 3, 3), "c2b": w(4), "shift": w(4, 1, 1),
        "lo": numpy_helper.from_array(np.float32(0.0)), "hi": numpy_helper.from_array(np.float32(1.5)),
        "shape": numpy_helper.from_array(np.array([-1, 64], np.int64)), "w1": w(64, 16), "w2": w(16, 16),
    }  # fmt: skip
    for name, t in inits.items():
        t.name = name
    nodes = [
        helper.make_node("Conv", ["x", "c1w", "c1b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2w", "c2b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "shift"], ["a1"], name="add1"),
        helper.make_node("Clip", ["a1", "lo", "hi"], ["k1"], name="clip1"),
        helper.make_node("Reshape", ["k1", "shape"], ["f1"], name="flat1"),
        helper.make_node("MatMul", ["f1", "w1"], ["m1"], name="mm1"),
        helper.make_node("Softmax", ["m1"], ["s1"], name="soft1", axis=-1),
        helper.make_node("MatMul", ["s1", "w2"], ["m2"], name="mm2"),
        helper.make_node("MatMul", ["m2", "w2"], ["y"], name="mm3"),
    ]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        initializer=list(inits.values()),
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return infer_shapes(m)


@pytest.fixture(scope="module")
def setup():
    m = _net()
    x = np.random.default_rng(0).standard_normal((48, 3, 8, 8)).astype(np.float32)
    ds = Dataset("<t>", arrays={"x": x})
    ds.validate(m)
    ranges = collect_ranges(m, ds, method="minmax").ranges
    return m, ds, x, CandidateBuilder(m, QuantConfig(mode="static"), ranges=ranges)


def _outputs(model, x):
    return create_session(model).run(None, {"x": x})[0]


def _excluded_sets(names):
    yield from ([n] for n in names)
    yield from (list(p) for p in itertools.pairwise(names))
    yield names[::2]
    yield names[1::2]


def test_leaving_nodes_in_float_is_what_the_quantizer_writes_without_them(setup):
    m, _, x, builder = setup
    emulate = builder.emulator()
    names = list(builder.candidates)
    assert {"relu1", "clip1", "pool1", "flat1", "soft1", "mm2", "mm3"} <= set(names)
    for excluded in _excluded_sets(names):
        got, want = _outputs(emulate(frozenset(excluded)), x), _outputs(builder(frozenset(excluded)), x)
        assert np.array_equal(got, want), f"{excluded}: max diff {np.abs(got - want).max():.3g}"


def test_the_fully_quantized_model_is_left_as_it_is(setup):
    _, _, x, builder = setup
    assert np.array_equal(_outputs(builder.emulator()(frozenset()), x), _outputs(builder(frozenset()), x))


@pytest.mark.parametrize("model", ["net", "mlp"])
def test_a_dynamic_node_back_in_float_is_what_the_quantizer_writes_without_it(model):
    """Dynamic INT8: the float node in place of its DynamicQuantizeLinear / MatMulInteger
    chain; one shared weight (``w2``) and Gemms rewritten as MatMul + Add."""
    if model == "net":
        base, x = _net(), np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    else:
        base = mlp(hidden=16)
        gemm_to_matmul(base)
        base, x = infer_shapes(base), np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    builder = CandidateBuilder(base, QuantConfig(mode="dynamic"))
    emulate, names = builder.emulator(), list(builder.candidates)
    assert len(names) >= 2
    for excluded in _excluded_sets(names):
        got, want = _outputs(emulate(frozenset(excluded)), x), _outputs(builder(frozenset(excluded)), x)
        assert np.array_equal(got, want), f"{excluded}: max diff {np.abs(got - want).max():.3g}"


def test_the_budget_search_ranks_and_bisects_on_emulated_models_and_confirms_on_builds(setup, monkeypatch):
    """The ranking and the bisection score emulated models (no quantizer run); the full data
    scores builds only, and the model returned is a build, scored as such."""
    m, ds, _, builder = setup
    ev, search = Evaluator(m, ds, "cosine"), Evaluator(m, ds, "cosine", limit=24)
    built: list[frozenset] = []
    real = builder.build

    def counting(excluded=frozenset(), remedies=None):
        built.append(frozenset(excluded))
        return real(excluded, remedies)

    monkeypatch.setattr(builder, "build", counting)
    emulate, emulated = builder.emulator(), []
    nodes = list(builder.candidates)
    fit = fit_budget(builder, nodes, Budget(0.05), ev, search_evaluator=search, max_evals=40, emulate=lambda ex: emulated.append(ex) or emulate(ex))
    assert fit.met and fit.excluded
    bisected = [h for h in fit.history if "search_score" in h and h["excluded"]]
    assert len(emulated) == len(nodes) + len(bisected) and bisected  # one emulated model per unit, then per bisection step
    confirmed = [h for h in fit.history if "score" in h]
    assert set(built) <= {frozenset(), *(frozenset(e["node"] for e in fit.excluded),)} and len(confirmed) >= 1
    assert abs(ev.score(fit.model) - fit.score) < 1e-9


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_a_base_kept_on_disk_builds_and_emulates_the_same_models(setup, monkeypatch, mode):
    """A base of ``LAZY_BASE_BYTES`` of weights or more waits in a file while its candidates
    are built (ORT's quantizer reads it lazily, its results go to files): every build and
    every emulated model equals, to the bit, those of the same base held in memory."""
    import onnxopt.quantize.engine as engine
    from onnxopt.io import is_lazy, is_lazy_tensor, stored_nbytes

    m, ds, x, static = setup
    ranges = static.ranges if mode == "static" else None
    in_memory = static if mode == "static" else CandidateBuilder(m, QuantConfig(mode=mode))
    monkeypatch.setattr(engine, "LAZY_BASE_BYTES", 1)
    on_disk = CandidateBuilder(m, QuantConfig(mode=mode), ranges=ranges)
    assert is_lazy(on_disk.base) and not is_lazy(m) and on_disk.candidates == in_memory.candidates
    names, lazy = list(on_disk.candidates), 0
    for excluded in [[], names[:1], names[1::2]]:
        built = on_disk(frozenset(excluded))
        assert is_lazy(built) and stored_nbytes(built) > built.ByteSize()
        want = _outputs(in_memory(frozenset(excluded)), x)
        assert np.array_equal(_outputs(built, x), want), excluded
        emulated = on_disk.emulator()(frozenset(excluded))
        assert np.array_equal(_outputs(emulated, x), want), excluded
        if mode == "static":  # the excluded nodes' float weights in the base's file are named there, not copied
            floats = [t for t in emulated.graph.initializer if t.name.endswith("_float")]
            assert all(is_lazy_tensor(t) or len(t.raw_data) < 1024 for t in floats), excluded
            lazy += sum(map(is_lazy_tensor, floats))
    assert mode == "dynamic" or lazy > 0


def test_a_build_outlives_its_builders_base_on_disk(setup, monkeypatch):
    """The builds of a base kept on disk own their weights: the base's folder goes with the
    builder, a build chosen by the budget search lives on (optimize read a removed file)."""
    import gc

    import onnxopt.quantize.engine as engine

    m, ds, x, static = setup
    want = _outputs(static(frozenset({"mm1"})), x)  # mm1's 4 KB weight stays float: in a file
    monkeypatch.setattr(engine, "LAZY_BASE_BYTES", 1)
    on_disk = CandidateBuilder(m, QuantConfig(mode="static"), ranges=static.ranges)
    folder = Path(on_disk._base_folder.name)
    built = on_disk(frozenset({"mm1"}))
    del on_disk
    gc.collect()
    assert not folder.exists()
    assert np.array_equal(_outputs(built, x), want)
