"""onnxopt.io: every unusable file is a ModelError naming it; saves are atomic and deterministic."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxopt.errors import ModelError, UsageError
from onnxopt.io import (
    atomic_write_text,
    check_output_path,
    is_lazy,
    load_model,
    model_nbytes,
    resolve_model,
    save_model,
)
from tests.toy_models import messy_mlp, save_external, tiny_cnn


def _arrays(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _assert_same_weights(a, b):
    wa, wb = _arrays(a), _arrays(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])


def test_load_returns_proto_unchanged():
    m = tiny_cnn()
    assert load_model(m) is m
    assert resolve_model(m) == (m, None)


def test_load_roundtrip(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(tiny_cnn(), str(p))
    m, path = resolve_model(p)
    assert path == p
    _assert_same_weights(m, tiny_cnn())


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"this is a text file, not a model\n", "not an ONNX model"),
        (onnx.ModelProto().SerializeToString() + b"\x08\x07", "not an ONNX model"),  # parses, no graph / opset
    ],
    ids=["empty", "text", "no-graph"],
)
def test_load_rejects_non_models(tmp_path, content, message):
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    with pytest.raises(ModelError, match=message) as exc:
        load_model(p)
    assert exc.value.path == str(p)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.9, 0.999])
def test_load_rejects_truncated(tmp_path, fraction):
    data = tiny_cnn().SerializeToString()
    p = tmp_path / "trunc.onnx"
    p.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelError, match="not an ONNX model"):
        load_model(p)


def test_load_missing_and_directory(tmp_path):
    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match="is a directory"):
        load_model(tmp_path)


def _external(tmp_path, location="weights.data"):
    p = save_external(tiny_cnn(), tmp_path / "ext.onnx", location)
    return p


def test_external_data_loaded_or_left_external(tmp_path):
    p = _external(tmp_path)
    full = load_model(p)
    _assert_same_weights(full, tiny_cnn())
    lazy = load_model(p, load_external=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in lazy.graph.initializer)
    assert model_nbytes(lazy) == model_nbytes(full) == sum(a.nbytes for a in _arrays(tiny_cnn()).values())


def test_a_model_saved_with_external_data_reads_back_as_it_was(tmp_path):
    """``save_model(external_data=True)`` then ``load_model``: the same proto, byte for byte
    (what ``SharedWork.park`` relies on to hand the prepared model back unchanged)."""
    w = numpy_helper.from_array(np.arange(64 * 64, dtype=np.float32).reshape(64, 64), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])], [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])], [w],
    )  # fmt: skip
    m = helper.make_model(g)
    path = save_model(m, tmp_path / "m.onnx", external_data=True)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.load(str(path), load_external_data=False).graph.initializer)
    assert load_model(path).SerializeToString() == m.SerializeToString()


def _relocate(p, new_location):
    m = onnx.load(str(p), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = new_location
    onnx.save(m, str(p))


def test_external_data_missing(tmp_path):
    p = _external(tmp_path)
    (tmp_path / "weights.data").unlink()
    with pytest.raises(ModelError, match="external data file 'weights.data'.*missing"):
        load_model(p)


@pytest.mark.parametrize("location", ["../x.data", "sub/../../x.data"])
def test_external_data_outside_folder(tmp_path, location):
    sub = tmp_path / "model"
    sub.mkdir()
    p = _external(sub)
    (tmp_path / "x.data").write_bytes((sub / "weights.data").read_bytes())
    _relocate(p, location)
    with pytest.raises(ModelError, match="outside the model folder"):
        load_model(p)
    with pytest.raises(ModelError, match="outside the model folder"):
        load_model(p, load_external=False)


def test_external_data_absolute_and_symlink_escape(tmp_path):
    sub = tmp_path / "model"
    sub.mkdir()
    p = _external(sub)
    outside = tmp_path / "real.data"
    outside.write_bytes((sub / "weights.data").read_bytes())
    _relocate(p, str(outside))
    with pytest.raises(ModelError, match="absolute"):
        load_model(p)
    (sub / "link.data").symlink_to(outside)
    _relocate(p, "link.data")
    with pytest.raises(ModelError, match="outside the model folder"):
        load_model(p)


def test_external_data_truncated(tmp_path):
    p = _external(tmp_path)
    data = tmp_path / "weights.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ModelError, match="truncated"):
        load_model(p)


def test_save_is_deterministic_and_atomic(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    save_model(messy_mlp(), a)
    save_model(messy_mlp(), b)
    assert a.read_bytes() == b.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["a.onnx", "b.onnx"]  # no temporary left behind
    _assert_same_weights(load_model(a), messy_mlp())


def test_save_refuses_to_overwrite_an_input(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(tiny_cnn(), str(p))
    before = p.read_bytes()
    with pytest.raises(UsageError, match="refusing to overwrite the input"):
        save_model(messy_mlp(), tmp_path / "." / "m.onnx", guard=[p])
    link = tmp_path / "alias.onnx"
    link.symlink_to(p)
    with pytest.raises(UsageError, match="refusing to overwrite the input"):
        save_model(messy_mlp(), link, guard=[p])
    assert p.read_bytes() == before


def test_check_output_path(tmp_path):
    with pytest.raises(UsageError, match="directory"):
        check_output_path(tmp_path)
    assert check_output_path(tmp_path / "new.onnx", [tmp_path / "in.onnx", None, tiny_cnn()]) == tmp_path / "new.onnx"


def _wide(seed: int) -> onnx.ModelProto:
    """x[N,64] @ W[64,64] (16 KB of weights: over the external-data threshold)."""
    w = np.random.default_rng(seed).standard_normal((64, 64)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "wide",
        [helper.make_tensor_value_info("x", 1, ["N", 64])],
        [helper.make_tensor_value_info("y", 1, ["N", 64])],
        [numpy_helper.from_array(w, "W")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_save_external_roundtrip_and_stale_data_cleanup(tmp_path):
    p = tmp_path / "out.onnx"
    m = _wide(0)
    save_model(m, p, external_data=True)
    first = sorted(f.name for f in tmp_path.iterdir())
    assert len(first) == 2 and first[1].startswith("out.onnx.") and first[1].endswith(".data")
    assert (tmp_path / first[1]).stat().st_size >= 64 * 64 * 4
    # the in-memory model keeps its weights
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    _assert_same_weights(load_model(p), _wide(0))
    # re-saving different weights writes a new (content-named) data file and removes the old one
    save_model(_wide(1), p, external_data=True)
    second = sorted(f.name for f in tmp_path.iterdir())
    assert len(second) == 2 and second != first
    _assert_same_weights(load_model(p), _wide(1))
    # weights under the threshold stay inline: no empty data file, the stale one is removed
    save_model(tiny_cnn(), p, external_data=True)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["out.onnx"]
    _assert_same_weights(load_model(p), tiny_cnn())


def test_atomic_write_text(tmp_path):
    p = atomic_write_text(tmp_path / "sub" / "r.json", "{}\n")
    assert p.read_text() == "{}\n"


def _typed_mlp() -> onnx.ModelProto:
    """x[N,64] @ W[64,64] with W held in ``float_data`` (as PaddlePaddle's exporter writes it)."""
    w = np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32)
    t = helper.make_tensor("W", onnx.TensorProto.FLOAT, [64, 64], w.reshape(-1).tolist(), raw=False)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "typed",
        [helper.make_tensor_value_info("x", 1, ["N", 64])],
        [helper.make_tensor_value_info("y", 1, ["N", 64])],
        [t],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_save_external_moves_typed_field_tensors_too(tmp_path):
    m = _typed_mlp()
    assert not m.graph.initializer[0].HasField("raw_data") and len(m.graph.initializer[0].float_data) == 64 * 64
    before = m.SerializeToString(deterministic=True)
    p = save_model(m, tmp_path / "out.onnx", external_data=True)
    assert m.SerializeToString(deterministic=True) == before  # the caller's proto as it was
    names = sorted(f.name for f in tmp_path.iterdir())
    assert len(names) == 2 and names[1].endswith(".data")
    assert (tmp_path / names[1]).stat().st_size >= 64 * 64 * 4
    assert p.stat().st_size < 1024  # the weights left the .onnx
    on_disk = onnx.load(str(p), load_external_data=False)
    assert on_disk.graph.initializer[0].data_location == onnx.TensorProto.EXTERNAL
    _assert_same_weights(load_model(p), _typed_mlp())


def test_unwritable_output_is_a_usage_error(tmp_path):
    """An output below a regular file (or on a read-only file system): a UsageError naming
    it, not an OSError traceback; nothing is created."""
    from onnxopt.io import atomic_write_bytes, check_writable

    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "sub" / "m.onnx"
    with pytest.raises(UsageError, match="'.*afile' is not a folder") as exc:
        check_writable(target)
    assert exc.value.path == str(target)
    with pytest.raises(UsageError, match="cannot write"):
        save_model(tiny_cnn(), target)
    with pytest.raises(UsageError, match="cannot write"):
        atomic_write_bytes(target, b"{}")
    check_writable(tmp_path / "new" / "deeper" / "m.onnx")  # creatable: fine, nothing made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_lazy_source_that_vanished_is_a_read_error_of_the_source(tmp_path):
    """The weights of a lazily loaded model are read while the output is written: losing
    them is about the input's data file, not 'cannot write' the output."""
    src = save_external(tiny_cnn(), tmp_path / "in.onnx")
    lazy = load_model(src, lazy=True)
    assert is_lazy(lazy)
    (tmp_path / "weights.data").unlink()
    out = tmp_path / "out" / "o.onnx"
    with pytest.raises(ModelError, match="cannot read the external data") as exc:
        save_model(lazy, out, external_data=True)
    assert str(exc.value.path).endswith("weights.data")
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_weights_on_disk_and_a_save_leave_the_model_as_it_was(tmp_path):
    """``weights_on_disk``: a lazy copy whose weights wait in a temporary file (the caller's
    model untouched, as by every save); an already lazy model comes back as it is."""
    from onnxopt.io import is_lazy, save_model, stored_nbytes, weights_on_disk, with_tensors

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])], [w],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    before = m.SerializeToString()
    lazy, folder = weights_on_disk(m)
    with folder:
        assert is_lazy(lazy) and not is_lazy(m) and m.SerializeToString() == before
        assert lazy.ByteSize() < 1024 < 64 * 64 * 4 <= stored_nbytes(lazy)
        again, other = weights_on_disk(lazy)
        assert again is lazy and not os.listdir(other.name)
        other.cleanup()
    save_model(m, tmp_path / "m.onnx", external_data=True)
    assert m.SerializeToString() == before
    # with_tensors: a new model with stand-ins, the source untouched
    copy_ = with_tensors(m, lambda t: onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims) if t.name == m.graph.initializer[0].name else t)
    assert copy_.graph.initializer[0].raw_data == b"" and m.SerializeToString() == before
    assert [n.op_type for n in copy_.graph.node] == [n.op_type for n in m.graph.node]
