"""onnxopt.data: DATA validated against the model, streamed in batches, synthesized inputs."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.data import dataset_for, input_specs, load_data, synthesize
from onnxopt.errors import DataError
from tests.toy_models import if_model, messy_mlp, tiny_cnn


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _images(n=10, dtype=np.float32):
    return np.random.default_rng(0).standard_normal((n, 3, 8, 8)).astype(dtype)


def test_input_specs():
    (spec,) = input_specs(tiny_cnn())
    assert spec.name == "x" and spec.dtype == np.float32 and spec.shape == ("N", 3, 8, 8)
    assert spec.batch_fixed is None and spec.describe() == "float32[N,3,8,8]"
    assert [s.name for s in input_specs(if_model())] == ["x", "flag"]


def test_load_npz_batches_and_labels(tmp_path):
    x = _images(10)
    labels = np.arange(10) % 5
    ds = load_data(_npz(tmp_path / "d.npz", x=x, labels=labels), tiny_cnn())
    assert len(ds) == 10 and ds.keys == ["x"]
    batches = list(ds.batches(4))
    assert [b["x"].shape[0] for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), x)
    assert [b["x"].shape[0] for b in ds.batches(4, limit=6)] == [4, 2]
    np.testing.assert_array_equal(ds.labels, labels)


def test_load_folder_of_feeds(tmp_path):
    folder = tmp_path / "feeds"
    folder.mkdir()
    x = _images(6)
    _npz(folder / "a.npz", x=x[:4], labels=np.arange(4))
    _npz(folder / "b.npz", x=x[4:], labels=np.arange(2))
    ds = load_data(folder, tiny_cnn())
    assert len(ds) == 6
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in ds.batches()]), x)
    assert ds.labels.tolist() == [0, 1, 2, 3, 0, 1]


def test_extra_keys_are_ignored(tmp_path):
    ds = load_data(_npz(tmp_path / "d.npz", x=_images(3), other=np.zeros(3)), tiny_cnn())
    assert list(ds.first_batch()) == ["x"]


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"image": _images(4)}, "missing key 'x'"),
        ({"x": _images(4, np.float64)}, "expected dtype float32, found float64"),
        ({"x": _images(4).reshape(4, 3, 64)}, "expected rank 4"),
        ({"x": np.zeros((4, 3, 7, 8), np.float32)}, r"expected shape float32\[N,3,8,8\], found \[4, 3, 7, 8\] \(axis 2\)"),
        ({"x": _images(4), "labels": np.zeros(3, np.int64)}, "'labels' has 3 entries"),
        ({"x": _images(4), "labels": np.zeros(4, np.float32)}, "'labels' must be a 1-D integer array"),
        ({"x": _images(4), "y": np.zeros(3, np.float32)}, "disagree on the number of samples"),
        ({"labels": np.zeros(4, np.int64)}, "only 'labels'"),
    ],
    ids=["missing-key", "wrong-dtype", "wrong-rank", "wrong-dim", "labels-length", "labels-dtype", "sample-count", "labels-only"],
)
def test_bad_npz(tmp_path, arrays, message):
    p = _npz(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=message) as exc:
        load_data(p, tiny_cnn())
    assert exc.value.path == str(p)


def test_unreadable_data(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_data(tmp_path / "none.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DataError, match=r"not a (readable )?\.npz"):
        load_data(tmp_path / "text.npz")
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(DataError, match="empty .npz"):
        load_data(tmp_path / "empty.npz")
    (tmp_path / "nofeeds").mkdir()
    with pytest.raises(DataError, match="no .npz files"):
        load_data(tmp_path / "nofeeds")


def test_pickled_object_arrays_are_refused(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="object arrays|pickles"):
        load_data(p)


def test_folder_with_mixed_labels(tmp_path):
    folder = tmp_path / "feeds"
    folder.mkdir()
    _npz(folder / "a.npz", x=_images(2), labels=np.arange(2))
    _npz(folder / "b.npz", x=_images(2))
    with pytest.raises(DataError, match="some .npz files have 'labels'"):
        load_data(folder)


def test_synthesize_is_deterministic_and_typed():
    a = synthesize(if_model(), seed=3).first_batch()
    b = synthesize(if_model(), seed=3).first_batch()
    assert a.keys() == b.keys() == {"x", "flag"}
    np.testing.assert_array_equal(a["x"], b["x"])
    assert a["x"].shape == (2, 4) and a["flag"].dtype == np.bool_ and a["flag"].shape == ()
    c = synthesize(if_model(), seed=4).first_batch()
    assert not np.array_equal(a["x"], c["x"])


def test_synthesize_symbolic_dims():
    ds = synthesize(tiny_cnn(), samples=5)
    assert ds.first_batch()["x"].shape == (5, 3, 8, 8)
    ds = synthesize(tiny_cnn(), {"x": (2, 3, 8, 8)})
    assert ds.first_batch()["x"].shape == (2, 3, 8, 8)
    with pytest.raises(DataError, match="has rank 2"):
        synthesize(tiny_cnn(), {"x": (2, 3)})
    with pytest.raises(DataError, match="is \\[2, 4, 8, 8\\]"):
        synthesize(tiny_cnn(), {"x": (2, 4, 8, 8)})


def test_dataset_for_and_view_keep_models_apart(tmp_path):
    p = _npz(tmp_path / "d.npz", x=_images(3), flag=np.ones(3, bool))
    ds = dataset_for(tiny_cnn(), p)
    assert list(ds.first_batch()) == ["x"]  # 'flag' dropped for this model
    raw = load_data(p)
    view = raw.view()
    dataset_for(tiny_cnn(), view)
    assert sorted(raw.first_batch()) == ["flag", "x"]  # the original is untouched
    assert dataset_for(messy_mlp(), None).first_batch()["x"].shape == (8, 4)


def _fixed_batch_cnn(batch: int = 4):
    m = tiny_cnn()
    for vi in (m.graph.input[0], m.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = batch
    return m


def test_fixed_model_batch_counts_the_samples_fed(tmp_path):
    """A model whose batch is fixed to 4 gets 4-sample feeds; a final partial batch is
    dropped, and ``fed`` says how many samples really went through."""
    ds = load_data(_npz(tmp_path / "d.npz", x=_images(10), labels=np.arange(10) % 5), _fixed_batch_cnn())
    assert [b["x"].shape[0] for b in ds.batches(32)] == [4, 4]
    assert len(ds) == 10 and ds.fed == 8
    assert [b["x"].shape[0] for b in ds.batches(limit=5)] == [4] and ds.fed == 4
    folder = tmp_path / "feeds"
    folder.mkdir()
    for i in range(3):
        _npz(folder / f"{i}.npz", x=_images(2))
    fds = load_data(folder, tiny_cnn())
    assert len(list(fds.batches(limit=3))) == 2 and fds.fed == 4  # whole files until the limit


def test_shapes_must_name_model_inputs():
    from onnxopt.data import check_shapes

    check_shapes(tiny_cnn(), {"x": (2, 3, 8, 8)})
    check_shapes(tiny_cnn(), None)
    with pytest.raises(DataError, match=r"--shape names 'image', not an input of the model \(inputs: x\)") as exc:
        check_shapes(tiny_cnn(), {"image": (2, 3, 8, 8)}, "m.onnx")
    assert exc.value.path == "m.onnx"


def test_nan_in_data_is_refused_naming_file_and_key(tmp_path):
    x = _images(4)
    x[2, 0, 1, 1] = np.nan
    with pytest.raises(DataError, match=r"key 'x': 1 NaN value\(s\) of 768") as exc:
        load_data(_npz(tmp_path / "nan.npz", x=x), tiny_cnn())
    assert str(exc.value.path).endswith("nan.npz")
    folder = tmp_path / "feeds"
    folder.mkdir()
    _npz(folder / "a.npz", x=_images(2))
    _npz(folder / "b.npz", x=x[:3])  # streamed: refused when its file is read
    ds = load_data(folder, tiny_cnn())
    with pytest.raises(DataError, match="NaN") as exc:
        list(ds.batches(2))
    assert str(exc.value.path).endswith("b.npz")
    inf = _images(2)
    inf[0, 0, 0, 0] = -np.inf  # additive masks use infinities: accepted
    assert len(load_data(_npz(tmp_path / "inf.npz", x=inf), tiny_cnn())) == 2
