"""Magnitude pruning: exact counts, scopes, skipped layers, compressed size."""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.prune.magnitude import magnitude_keep_masks, prune_magnitude, zip_size
from onnxopt.verify import check_model

from . import builders


def test_global_masks_zero_exactly_k_smallest():
    a = np.array([[0.1, -3.0], [0.2, 0.05]])
    b = np.array([-0.15, 2.0, 0.0])
    ma, mb = magnitude_keep_masks([a, b], 3 / 7, "global")
    assert ma.tolist() == [[False, True], [True, False]]
    assert mb.tolist() == [True, True, False]


def test_ties_broken_by_position_and_deterministic():
    a = np.ones(10)
    m1 = magnitude_keep_masks([a], 0.3)[0]
    assert m1.tolist() == [False] * 3 + [True] * 7
    assert np.array_equal(m1, magnitude_keep_masks([a.copy()], 0.3)[0])


def test_layer_scope_prunes_each_tensor_alike(rng):
    a, b = rng.standard_normal(100), rng.standard_normal(40) * 100
    ma, mb = magnitude_keep_masks([a, b], 0.25, "layer")
    assert (~ma).sum() == 25 and (~mb).sum() == 10
    ga, gb = magnitude_keep_masks([a, b], 0.25, "global")
    assert (~ga).sum() == 35 and (~gb).sum() == 0  # the large tensor keeps everything


def test_prune_magnitude_skips_first_last_and_small(models_dir):
    m = onnx.load(str(models_dir / "digits_mlp.onnx"))
    work = copy.deepcopy(m)
    records, skipped = prune_magnitude(work, 0.6, min_params=1024)
    assert [r["initializer"] for r in records] == ["net.3.weight"]
    assert {s["reason"] for s in skipped} == {"first weight layer", "last weight layer"}
    w = numpy_helper.to_array(next(t for t in work.graph.initializer if t.name == "net.3.weight"))
    assert abs((w == 0).mean() - 0.6) < 1e-4
    assert records[0]["sparsity"] == (w == 0).mean()
    check_model(work)
    assert zip_size(work) < 0.75 * zip_size(m)

    work2 = copy.deepcopy(m)
    records2, skipped2 = prune_magnitude(work2, 0.6, skip_first_last=False, min_params=4000)
    assert len(records2) == 2 and skipped2[0]["reason"].startswith("fewer than min_params")


def test_nothing_eligible(rng):
    records, skipped = prune_magnitude(builders.no_weights(rng), 0.5)
    assert records == [] and skipped == []
