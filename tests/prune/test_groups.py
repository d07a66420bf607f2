"""Channel dependency groups and rewiring on tiny models.

Numbers: before pruning, the consumers' weights of the channels to be removed are set to
zero, so removing those channels must not change the output (checked to 1e-5 abs); the
structure (shapes of the sliced weights, reasons of intact groups) is checked directly.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from onnx import numpy_helper

from onnxopt.prune.channels import apply_keep, keep_count, select_keep
from onnxopt.prune.groups import Segment, analyze, kept_positions, layout_size
from onnxopt.verify import check_model

from . import builders


def _zero_removed(model, analysis, keep):
    """Zero what the consumers read from the channels that ``keep`` drops (in place)."""
    src_keep = analysis.source_keep(keep)
    inits = {t.name: t for t in model.graph.initializer}
    for slot in analysis.consumers():
        if not any(s.source in src_keep for s in slot.layout):
            continue
        name = model.graph.node[slot.node].input[slot.input]
        w = numpy_helper.to_array(inits[name]).copy()
        removed = np.setdiff1d(
            np.arange(layout_size(slot.layout)), kept_positions(slot.layout, src_keep)
        )
        idx = [slice(None)] * w.ndim
        idx[slot.axis] = removed
        w[tuple(idx)] = 0
        inits[name].CopyFrom(numpy_helper.from_array(w, name))


def _prune_exact(model, keep_fn, x):
    a = analyze(model)
    keep = {g.id: keep_fn(g) for g in a.prunable}
    ref = copy.deepcopy(model)
    _zero_removed(ref, a, keep)
    pruned = copy.deepcopy(ref)
    counts = apply_keep(pruned, a, keep)
    check_model(pruned)
    np.testing.assert_allclose(builders.run(pruned, x), builders.run(ref, x), atol=1e-5, rtol=1e-4)
    return a, pruned, counts


def _init(model, name):
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def test_kept_positions_follow_segments_and_repeats():
    layout = (Segment(0, 3), Segment(None, 2), Segment(1, 2, repeat=2))
    assert layout_size(layout) == 9
    pos = kept_positions(layout, {0: np.array([0, 2]), 1: np.array([1])})
    assert pos.tolist() == [0, 2, 3, 4, 7, 8]


def test_select_keep_ratio_alignment_and_ties():
    assert keep_count(32, 0.5) == 16
    assert keep_count(32, 0.3) == 22
    assert keep_count(32, 0.3, align=8) == 24
    assert keep_count(3, 0.9) == 1
    assert keep_count(20, 0.3, align=8) == 16
    assert keep_count(10, 0.3, align=8) == 7  # fewer than align kept: not rounded
    # ties keep the lower index; the most important survive
    assert select_keep(np.array([1.0, 5.0, 1.0, 1.0]), 0.5).tolist() == [0, 1]


def test_bn_flatten_gemm_groups_and_rewiring(rng):
    m = builders.conv_bn_net(rng)
    x = rng.standard_normal((3, 2, 4, 4))
    a, pruned, counts = _prune_exact(m, lambda g: np.arange(0, g.channels, 2), x)
    labels = {g.label: g for g in a.groups}
    assert labels["conv1"].prunable and labels["conv2"].prunable
    assert "graph output 'y'" in labels["fc"].blocked
    assert _init(pruned, "w1").shape == (4, 2, 3, 3)
    assert _init(pruned, "w2").shape == (4, 4, 3, 3)
    for p in ("g", "beta", "mean", "var", "b1"):
        assert _init(pruned, p).shape == (4,)
    # Flatten of [C, 4, 4]: every removed channel takes its 16 consecutive features along
    assert _init(pruned, "wf").shape == (4, 4 * 16)
    assert counts["channels_removed"] == 8


def test_reshape_flatten_shape_constant_follows(rng):
    m = builders.conv_bn_net(rng, reshape=True)
    x = rng.standard_normal((2, 2, 4, 4))
    _, pruned, _ = _prune_exact(m, lambda g: np.arange(g.channels // 2), x)
    assert _init(pruned, "shape").tolist() == [-1, 4 * 16]


def test_residual_add_ties_stem_and_branch(rng):
    m = builders.residual_net(rng)
    x = rng.standard_normal((2, 1, 6, 6))
    a, pruned, _ = _prune_exact(m, lambda g: np.array([1, 2, 5, 6]), x)
    tied = next(g for g in a.groups if len(g.sources) == 2)
    assert sorted(a.sources[s].label for s in tied.sources) == ["block_conv2", "stem"]
    assert _init(pruned, "ws").shape[0] == 4 and _init(pruned, "wb").shape[0] == 4
    assert _init(pruned, "wa").shape == (4, 4, 3, 3)
    assert _init(pruned, "wf").shape == (3, 4)


def test_concat_offsets_and_fixed_input_channels(rng):
    m = builders.concat_net(rng, with_input=True)
    x = rng.standard_normal((2, 2, 5, 5))
    a, pruned, _ = _prune_exact(m, lambda g: np.array([0, 3, 7]), x)
    assert {g.label for g in a.prunable} == {"conv_a", "conv_b"}
    # 3 + 3 kept branch channels + the 2 input channels, which are never removed
    assert _init(pruned, "wc").shape == (4, 8, 1, 1)


def test_unknown_op_leaves_its_group_intact_with_reason(rng):
    m = builders.concat_net(rng, unknown_op=True)
    a = analyze(m)
    by = {g.label: g for g in a.groups}
    assert by["conv_a"].prunable
    assert not by["conv_b"].prunable
    assert "LpNormalization 'lpnorm'" in by["conv_b"].blocked
    x = rng.standard_normal((2, 2, 5, 5))
    _prune_exact(m, lambda g: np.arange(4), x)


def test_depthwise_follows_its_input_channels(rng):
    m = builders.depthwise_net(rng)
    x = rng.standard_normal((2, 3, 4, 4))
    _, pruned, _ = _prune_exact(m, lambda g: np.array([0, 1, 4]), x)
    dw = next(n for n in pruned.graph.node if n.name == "dw")
    assert next(at.i for at in dw.attribute if at.name == "group") == 3
    assert _init(pruned, "wd").shape == (3, 1, 3, 3) and _init(pruned, "bd").shape == (3,)


def test_grouped_conv_is_reported_and_left_intact(rng):
    a = analyze(builders.grouped_net(rng))
    assert not a.prunable
    assert all(
        "grouped convolution 'gconv' (group=2)" in g.blocked or "graph output" in g.blocked
        for g in a.groups
    )


def test_matmul_with_bias_add(rng):
    m = builders.mlp(rng)
    x = rng.standard_normal((4, 6))
    _, pruned, _ = _prune_exact(m, lambda g: np.arange(0, 16, 2), x)
    assert _init(pruned, "w1").shape == (6, 8)
    assert _init(pruned, "b1").shape == (8,)
    assert _init(pruned, "w2").shape == (3, 8)


@pytest.mark.parametrize("name", ["digits_cnn", "digits_resnet", "digits_mlp"])
def test_bundled_models_groups(models_dir, name):
    import onnx

    a = analyze(onnx.load(str(models_dir / f"{name}.onnx")))
    assert a.prunable
    assert [g.label for g in a.intact] == [
        "/fc/Gemm" if name != "digits_mlp" else "/net/net.5/Gemm"
    ]
    if name == "digits_resnet":
        assert max(len(g.sources) for g in a.groups) == 5  # stem + 4 residual convs tied


def test_parameters_computed_from_constants_are_folded_and_follow(rng):
    """A PaddlePaddle-style ``Reshape(b)`` bias and an ``Unsqueeze`` of a ConstantOfShape
    scale: folded into constants, so conv1's group is prunable and both are sliced (the
    scale stays a fill)."""
    from onnxopt.prune.weights import WeightStore, fold_weight_expressions

    m = builders.computed_params_net(rng)
    assert not analyze(copy.deepcopy(m)).prunable  # unfolded: the computed bias blocks it
    work = copy.deepcopy(m)
    assert fold_weight_expressions(work) == 2
    assert {n.op_type for n in work.graph.node} == {"Conv", "Add", "ConstantOfShape", "Mul", "Relu"}
    x = rng.standard_normal((2, 2, 5, 5))
    np.testing.assert_allclose(builders.run(work, x), builders.run(m, x), rtol=1e-6, atol=1e-6)
    a, pruned, _ = _prune_exact(work, lambda g: np.arange(0, g.channels, 2), x)
    assert [g.label for g in a.prunable] == ["conv1"]
    assert _init(pruned, "b4").shape == (1, 4, 1, 1)
    ws = WeightStore(pruned)
    assert [ws.fill(n).shape for n in ws.fills] == [(4, 1, 1)]


def test_prune_pass_folds_computed_parameters(rng):
    """The channel pass folds before it analyses: the model above loses half its channels
    and the result is valid."""
    from onnxopt.core.passes import Context
    from onnxopt.core.registry import make_pass

    m = builders.computed_params_net(rng)
    res = make_pass("prune-channels", {"ratio": 0.5, "align": 1})(m, Context())
    assert res.modified
    assert [(p["group"], p["kept"]) for p in res.report.details["groups"]["pruned"]] == [
        ("conv1", 4)
    ]
    check_model(res.model)


def test_symbolic_dims_are_fixed_from_the_given_input_shapes(rng):
    m = builders.symbolic_residual_net(rng)
    from onnxopt.prune.groups import static_shapes

    assert static_shapes(m)["a"][2:] == (None, None)
    assert static_shapes(m, {"x": (2, 1, 6, 6)})["a"] == (2, 8, 6, 6)
    # a shape that contradicts a fixed dim is ignored
    assert static_shapes(m, {"x": (2, 3, 6, 6)})["a"][2:] == (None, None)


def test_mul_sub_ties_and_per_channel_constant(rng):
    """A gate ``a * sigmoid(b)``, then ``- c`` and a per-channel scale: the three convs are
    one group and lose the same channels; the scale constant is sliced with them."""
    from onnx import helper

    inits = {
        "wa": rng.standard_normal((8, 2, 3, 3)),
        "wb": rng.standard_normal((8, 2, 3, 3)),
        "wc": rng.standard_normal((8, 2, 1, 1)),
        "bc": rng.standard_normal(8),
        "k": rng.standard_normal((1, 8, 1, 1)),
        "w2": rng.standard_normal((4, 8, 1, 1)) * 0.3,
    }
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="ca", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="cb", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wc", "bc"], ["c"], name="cc"),
        helper.make_node("Sigmoid", ["b"], ["bs"], name="sig"),
        helper.make_node("Mul", ["a", "bs"], ["ab"], name="gate"),
        helper.make_node("Sub", ["ab", "c"], ["d"], name="sub"),
        helper.make_node("Mul", ["d", "k"], ["dk"], name="scale"),
        helper.make_node("Conv", ["dk", "w2"], ["y"], name="c2"),
    ]
    m = builders._model(nodes, inits, ["N", 2, 5, 5], ["N", 4, 5, 5])
    x = rng.standard_normal((2, 2, 5, 5))
    a, pruned, _ = _prune_exact(m, lambda g: np.array([0, 3, 4, 6]), x)
    (group,) = a.prunable
    assert sorted(a.sources[s].label for s in group.sources) == ["ca", "cb", "cc"]
    assert _init(pruned, "k").shape == (1, 4, 1, 1) and _init(pruned, "bc").shape == (4,)
    assert _init(pruned, "w2").shape == (4, 4, 1, 1)


def test_flatten_into_matmul(rng):
    """Conv -> Flatten ([C, 3, 3] -> 9 features per channel) -> MatMul + Add -> MatMul."""
    from onnx import helper

    inits = {
        "w1": rng.standard_normal((6, 2, 3, 3)),
        "wm": rng.standard_normal((6 * 9, 5)),
        "bm": rng.standard_normal(5),
        "w3": rng.standard_normal((5, 3)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat", axis=1),
        helper.make_node("MatMul", ["f", "wm"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "bm"], ["hb"], name="fc1_bias"),
        helper.make_node("Relu", ["hb"], ["hr"], name="relu2"),
        helper.make_node("MatMul", ["hr", "w3"], ["y"], name="fc2"),
    ]
    m = builders._model(nodes, inits, ["N", 2, 5, 5], ["N", 3])
    x = rng.standard_normal((3, 2, 5, 5))
    a, pruned, _ = _prune_exact(m, lambda g: np.arange(0, g.channels, 2), x)
    assert {g.label for g in a.prunable} == {"c1", "fc1"}
    assert _init(pruned, "w1").shape == (3, 2, 3, 3)
    assert _init(pruned, "wm").shape == (3 * 9, 3) and _init(pruned, "bm").shape == (3,)
    assert _init(pruned, "w3").shape == (3, 3)


def test_convtranspose_as_source_and_consumer(rng):
    """Conv -> ConvTranspose (stride 2) -> Conv: the ConvTranspose loses input channels on
    its weight axis 0 and output channels (and bias) on axis 1."""
    from onnx import helper

    inits = {
        "w1": rng.standard_normal((8, 2, 3, 3)),
        "wt": rng.standard_normal((8, 6, 2, 2)) * 0.3,
        "bt": rng.standard_normal(6),
        "w2": rng.standard_normal((3, 6, 3, 3)) * 0.3,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"], name="relu1"),
        helper.make_node("ConvTranspose", ["ar", "wt", "bt"], ["t"], name="up", strides=[2, 2]),
        helper.make_node("Relu", ["t"], ["tr"], name="relu2"),
        helper.make_node("Conv", ["tr", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    m = builders._model(nodes, inits, ["N", 2, 5, 5], ["N", 3, 10, 10])
    x = rng.standard_normal((2, 2, 5, 5))
    a, pruned, _ = _prune_exact(m, lambda g: np.arange(0, g.channels, 2), x)
    assert {g.label for g in a.prunable} == {"conv1", "up"}
    assert _init(pruned, "wt").shape == (4, 3, 2, 2) and _init(pruned, "bt").shape == (3,)
    assert _init(pruned, "w2").shape == (3, 3, 3, 3)
