"""Residual block detection and removal."""

from __future__ import annotations

import copy

import numpy as np
import onnx

from onnxopt.prune.blocks import find_blocks, remove_blocks
from onnxopt.verify import check_model

from . import builders


def test_identity_shortcut_block_found_and_removed(rng):
    m = builders.residual_net(rng)
    blocks, refused = find_blocks(m)
    assert refused == []
    assert [(b.label, b.skip, b.branch) for b in blocks] == [("block_add", "sr", "b")]
    assert blocks[0].params == 8 * 8 * 9 * 2 + 16  # two 3x3 convs and their biases
    work = copy.deepcopy(m)
    assert remove_blocks(work, [blocks[0].add]) == ["sum"]
    check_model(work)
    assert {n.name for n in work.graph.node} == {
        "stem",
        "stem_relu",
        "block_out",
        "gap",
        "flat",
        "fc",
    }
    assert {t.name for t in work.graph.initializer} == {"ws", "bs", "wf", "bf"}
    # without the branch, y = fc(gap(relu(relu(stem(x))))) exactly
    ref = copy.deepcopy(m)
    for t in ref.graph.initializer:
        if t.name in ("wb", "bb"):
            t.CopyFrom(
                onnx.numpy_helper.from_array(np.zeros_like(onnx.numpy_helper.to_array(t)), t.name)
            )
    x = rng.standard_normal((2, 1, 6, 6))
    np.testing.assert_allclose(builders.run(work, x), builders.run(ref, x), atol=1e-5)


def test_projection_shortcut_is_refused_with_reason(rng):
    blocks, refused = find_blocks(builders.residual_net(rng, projection=True))
    assert blocks == []
    assert refused == [
        "Add 'block_add' is not a residual block: neither input is computed from the other (a projection shortcut or two branches)"
    ]


def test_branch_read_outside_is_not_a_block(rng):
    m = builders.residual_net(rng)
    extra = onnx.helper.make_tensor_value_info("ar", onnx.TensorProto.FLOAT, None)
    m.graph.output.append(extra)
    blocks, refused = find_blocks(m)
    assert blocks == [] and "'ar' is a graph output" in refused[0]


def test_digits_resnet_has_four_blocks(models_dir):
    m = onnx.load(str(models_dir / "digits_resnet.onnx"))
    blocks, _ = find_blocks(m)
    assert [b.label for b in blocks] == [f"/blocks/blocks.{i}/Add" for i in range(4)]
    work = copy.deepcopy(m)
    assert len(remove_blocks(work, [blocks[3].add, blocks[1].add])) == 2
    check_model(work)
    assert sum(n.op_type == "Conv" for n in work.graph.node) == 5


def test_branch_without_weight_layer_is_not_a_block(rng):
    """tanh-GELU's ``h + 0.044715 h^3`` has the form x + f(x) but removing f changes the
    activation, not the depth: refused with the reason."""
    blocks, refused = find_blocks(builders.gelu_like(rng))
    assert blocks == []
    assert refused == [
        "Add 'inner' is not a residual block: the branch holds no weight layer (Conv / Gemm / MatMul)"
    ]


def test_symbolic_spatial_dims_need_shapes(rng):
    m = builders.symbolic_residual_net(rng)
    blocks, refused = find_blocks(m)
    assert blocks == [] and "give --shape or data" in refused[0]
    blocks, refused = find_blocks(m, {"x": (1, 1, 6, 6)})
    assert [b.label for b in blocks] == ["block_add"] and refused == []
    work = copy.deepcopy(m)
    assert remove_blocks(work, [blocks[0].add], {"x": (1, 1, 6, 6)}) == ["sum"]
    check_model(work)


def test_block_params_count_fills(rng):
    """A branch whose weights are ConstantOfShape fills (the onnx wheel's models) counts them."""
    m = builders.residual_net(rng)
    g = m.graph
    wb = next(t for t in g.initializer if t.name == "wb")
    dims = list(wb.dims)
    g.initializer.remove(wb)
    g.initializer.append(onnx.numpy_helper.from_array(np.array(dims, dtype=np.int64), "wb_shape"))
    fill = onnx.helper.make_node(
        "ConstantOfShape",
        ["wb_shape"],
        ["wb"],
        value=onnx.numpy_helper.from_array(np.array([0.01], dtype=np.float32)),
    )
    g.node.insert(0, fill)
    (blk,) = find_blocks(m)[0]
    assert blk.params == 8 * 8 * 9 * 2 + 16
