"""Input discovery: graph hints, probing, what synthesized data says it is."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from onnxopt import discover as disc
from onnxopt.data import synthesize
from onnxopt.errors import DataError
from tests.discover_models import (
    gather_ids,
    masked_mean,
    position_encoder,
    runs_on_nothing,
    scalar_rate,
    strided_detector,
)


def _runs(model, feed) -> list:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)


def test_strided_detector_gets_height_width_divisible_by_32():
    m = strided_detector()
    hints = disc.graph_hints(m)
    assert hints.multiple == {"height": 32, "width": 32}
    ds = synthesize(m)
    feed = ds.first_batch()
    n, c, h, w = feed["images"].shape
    assert (c, h % 32, w % 32) == (3, 0, 0) and n == 8
    assert _runs(m, feed)[0].shape == (8, 6, h * w)
    assert "height/width found by probing" in ds.describe()
    # a second working shape for verification at several shapes
    assert ds.alternatives and all(alt["images"][2] != h and alt["images"][2] % 32 == 0 for alt in ds.alternatives)


def test_gather_ids_stay_below_the_table_size():
    m = gather_ids(rows=5)
    assert disc.graph_hints(m).inputs["ids"].high == 5
    ds = synthesize(m)
    ids = ds.first_batch()["ids"]
    assert ids.max() < 5 and ids.min() >= 0 and ids.shape[0] == 8
    _runs(m, ds.first_batch())
    assert "ids in [0,5)" in ds.describe()


def test_scalar_compared_in_equal_takes_the_constant():
    m = scalar_rate()
    assert disc.graph_hints(m).inputs["sr"].choices == (16000,)
    ds = synthesize(m)
    feed = ds.first_batch()
    assert feed["sr"].shape == () and int(feed["sr"]) == 16000
    assert ds.whole  # a scalar input: the feed is used whole
    from onnx import numpy_helper

    w1, w2 = (numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == n)) for n in ("W1", "W2"))
    np.testing.assert_allclose(_runs(m, feed)[0], np.maximum(feed["audio"] @ w1, 0) @ w2 * 2, rtol=1e-4)


def test_mask_is_zero_one():
    m = masked_mean()
    hint = disc.graph_hints(m).inputs["attention_mask"]
    assert hint.mask
    feed = synthesize(m, {"x": (2, 16, 4), "attention_mask": (2, 16)}).first_batch()
    assert set(np.unique(feed["attention_mask"]).tolist()) <= {0, 1} and feed["attention_mask"][:, 0].all()


def test_nothing_runs_is_a_data_error_naming_the_tries():
    with pytest.raises(DataError) as err:
        synthesize(runs_on_nothing())
    msg = err.value.message
    assert "runs on none of the probed inputs" in msg and "x[1," in msg and "--shape" in msg and err.value.exit_code == 2


def test_user_shapes_override_discovery():
    ds = synthesize(strided_detector(), {"images": (1, 3, 64, 96)})
    assert ds.first_batch()["images"].shape == (1, 3, 64, 96) and ds.alternatives == []


def test_discovery_is_cached_per_model(monkeypatch):
    m = strided_detector(seed=3)
    first = disc.discover(m)
    assert first.tries >= 1
    monkeypatch.setattr(disc, "_discover", lambda *a, **k: pytest.fail("probed twice"))
    assert disc.discover(m) is first


def test_cli_simplify_zero_config_on_a_strided_detector(invoke, tmp_path):
    src = tmp_path / "det.onnx"
    src.write_bytes(strided_detector().SerializeToString())
    res = invoke("simplify", src, "-o", tmp_path / "out.onnx")
    assert res.exit_code == 0, res.output
    assert "found by probing" in res.output


def test_cli_model_that_runs_on_nothing_exits_2(invoke, tmp_path):
    src = tmp_path / "m.onnx"
    src.write_bytes(runs_on_nothing().SerializeToString())
    out = tmp_path / "out.onnx"
    res = invoke("simplify", src, "-o", out)
    assert res.exit_code == 2 and "runs on none of the probed inputs" in res.output and not out.exists()


def test_a_position_table_bounds_the_sequence_axis():
    m = position_encoder(max_len=16, vocab=50)
    hints = disc.graph_hints(m)
    assert hints.upper == {"seq": 16} and hints.inputs["input_ids"].high == 50
    assert all(v <= 16 for v in disc._candidates("seq", hints))
    ds = synthesize(m)
    assert ds.first_batch()["input_ids"].shape[1] <= 16 and ds.first_batch()["input_ids"].max() < 50
    _runs(m, ds.first_batch())
    # every further shape runs too, and stays within the table
    assert all(alt["input_ids"][1] <= 16 for alt in ds.alternatives)


def test_verbose_cli_logs_what_discovery_found(invoke, tmp_path, monkeypatch):
    monkeypatch.setattr(disc, "_CACHE", {})  # a new process: discovery runs (and logs) once
    src = tmp_path / "det.onnx"
    src.write_bytes(strided_detector().SerializeToString())
    res = invoke("-v", "simplify", src, "-o", tmp_path / "o.onnx")
    assert res.exit_code == 0 and "input discovery: images[1,3,32,32] (height/width found by probing)" in res.output
