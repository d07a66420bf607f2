"""An architecture model from the onnx wheel (IR 3, weights via ConstantOfShape): after
``simplify``, channel pruning stays valid and fills are sliced without being materialized.
The full set (resnet50, densenet121, ...) is covered by ``benchmarks/prune.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxopt.prune.api import prune
from onnxopt.prune.weights import WeightStore
from onnxopt.simplify.api import simplify

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.mark.skipif(
    not (LIGHT / "light_squeezenet.onnx").is_file(), reason="onnx wheel without light models"
)
def test_squeezenet_channels_valid_and_fills_stay_fills():
    sim = simplify(LIGHT / "light_squeezenet.onnx").model
    fills_before = WeightStore(sim).fills
    assert fills_before  # conv10's weight is a ConstantOfShape fill
    res = prune(sim, method="channels", ratio=0.5, timing_runs=0)
    after = res.model
    ws = WeightStore(after)
    assert len(ws.fills) == len(fills_before)
    assert max(ws.fill(n).size for n in ws.fills) < max(
        WeightStore(sim).fill(n).size for n in fills_before
    )
    fig = res.report["figures"]
    assert fig["after"]["flops"] < 0.45 * fig["before"]["flops"]
    intact = res.report["details"]["groups"]["intact"]
    assert [g["reason"] for g in intact] == ["Softmax 'n65' normalizes over the channels"]
    assert res.steps[0].verification["check"]["checker"]
    out = res.steps[0].verification["comparison"]["outputs"][0]
    assert out["shape"] == [1, 1000, 1, 1] and np.isfinite(out["rel_l2"])
