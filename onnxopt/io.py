"""Model files in and out: the only module that reads or writes ``.onnx`` files.

Guarantees:
- ``load_model`` turns every way a file can be unusable (missing, empty, not protobuf,
  truncated, no graph, external data missing/truncated/outside the model folder) into a
  ``ModelError`` naming the file.
- ``save_model`` writes atomically: a temporary file in the target folder, fsync, then
  ``os.replace``.  With external data, the data file is named after a hash of its content
  and renamed into place *before* the model, so a crash at any point leaves either the old
  model with its old data or the new one with its new data.  It refuses to overwrite any
  input model (``guard``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper as edh
from onnx import helper, numpy_helper

from .errors import ModelError, UsageError
from .graph import subgraphs

__all__ = [
    "ModelSource",
    "TWO_GB",
    "load_model",
    "load_offloaded",
    "resolve_model",
    "save_model",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_path",
    "check_writable",
    "model_nbytes",
    "exceeds_protobuf",
    "external_info",
    "is_lazy",
    "is_lazy_tensor",
    "lazy_folders",
    "strip_basepath",
    "tensor_bytes",
    "tensor_array",
    "materialize",
    "all_tensors",
    "inline_nbytes",
    "set_external_data",
    "stored_nbytes",
    "weights_on_disk",
    "with_tensors",
]

log = logging.getLogger(__name__)

ModelSource = "str | os.PathLike | onnx.ModelProto"
TWO_GB = 2**31 - 1
# Tensors at least this large go to the external-data file when saving externally.
EXTERNAL_THRESHOLD = 1024
# A model whose external data reaches this many bytes is loaded *lazily* where the caller
# allows it (``load_model(lazy=None)``): its big tensors stay in their files and the proto
# only refers to them (see ``is_lazy``).  Tests scale it (and TWO_GB) down to megabytes.
LARGE_MODEL_BYTES = 2**30
# external_data entry naming the absolute folder a lazy tensor's location is relative to
BASEPATH = "basepath"
_COPY_CHUNK = 64 * 2**20


def all_tensors(model: onnx.ModelProto):
    return edh._get_all_tensors(model)


def with_tensors(model: onnx.ModelProto, replace) -> onnx.ModelProto:
    """A new model equal to ``model`` except that each tensor (initializers and node
    attributes, in every subgraph) is ``replace(tensor)``: the tensor itself is copied, another
    one stands in for it.  The caller's model is not touched, and a tensor replaced is never
    copied (saving or checking a model without copying its weights; with the upb protobuf
    runtime, clearing and re-setting a tensor's bytes in place grows the model's arena by their
    size each time).  Functions (``model.functions``) are copied as they are."""

    def graph(src: onnx.GraphProto, dst: onnx.GraphProto) -> None:
        _copy_fields(src, dst, {"node", "initializer"})
        dst.initializer.extend(replace(t) for t in src.initializer)
        for n in src.node:
            m = dst.node.add()
            _copy_fields(n, m, {"attribute"})
            for a in n.attribute:
                b = m.attribute.add()
                _copy_fields(a, b, {"t", "g", "graphs", "tensors"})
                if a.HasField("t"):
                    b.t.CopyFrom(replace(a.t))
                b.tensors.extend(replace(t) for t in a.tensors)
                if a.HasField("g"):
                    graph(a.g, b.g)
                for g in a.graphs:
                    graph(g, b.graphs.add())

    out = onnx.ModelProto()
    _copy_fields(model, out, {"graph"})
    if model.HasField("graph"):
        graph(model.graph, out.graph)
    return out


def _copy_fields(src, dst, skip: set[str]) -> None:
    """Copy the set fields of protobuf message ``src`` into ``dst``, except those in ``skip``."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED:
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def set_external_data(t: onnx.TensorProto, entries) -> None:
    """Replace the ``external_data`` entries of ``t`` with the ``(key, value)`` pairs ``entries``."""
    del t.external_data[:]
    for key, value in entries:
        entry = t.external_data.add()
        entry.key, entry.value = key, value


def inline_nbytes(t: onnx.TensorProto) -> int:
    """Bytes of an in-memory tensor's data, from its dims (reading ``raw_data`` would copy it)."""
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except Exception:
        itemsize = 1
    return math.prod(max(int(d), 0) for d in t.dims) * itemsize


def external_info(t: onnx.TensorProto) -> dict[str, str]:
    """A tensor's ``external_data`` entries as a dict (``location``, ``offset``, ``length``, ``basepath``)."""
    return {e.key: e.value for e in t.external_data}


def model_nbytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data held by the model (in memory or external)."""
    total = 0
    for t in all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += int(external_info(t).get("length", 0) or 0)
        elif t.HasField("raw_data") or t.dims:
            total += inline_nbytes(t)
    return total


def exceeds_protobuf(model: onnx.ModelProto, margin: int = 0) -> bool:
    """Whether ``model`` (its in-memory tensors) is too big to serialize as one protobuf.

    An estimate from tensor dims (``ByteSize()`` walks, and in upb encodes, the whole
    message: seconds for gigabytes); ``margin`` bytes of headroom are kept for the graph.
    Reads ``TWO_GB`` at call time, so tests can scale the limit down."""
    inline = sum(inline_nbytes(t) for t in all_tensors(model) if t.data_location != onnx.TensorProto.EXTERNAL)
    if inline + margin > TWO_GB:
        return True
    return inline + margin > TWO_GB // 2 and model.ByteSize() + margin > TWO_GB  # close: pay for the exact figure


def stored_nbytes(model: onnx.ModelProto) -> int:
    """Bytes of ``model`` saved: its proto plus the data of its lazy tensors (``is_lazy``),
    which the proto only refers to."""
    lazy = (t for t in all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL and BASEPATH in external_info(t))
    return int(model.ByteSize()) + sum(int(external_info(t).get("length", 0) or 0) for t in lazy)


def is_lazy_tensor(t: onnx.TensorProto) -> bool:
    """Whether ``t`` is left in its external-data file (lazy load): it carries a ``basepath``
    entry with the absolute folder of its file."""
    return t.data_location == onnx.TensorProto.EXTERNAL and any(e.key == BASEPATH for e in t.external_data)


def is_lazy(model: onnx.ModelProto) -> bool:
    """Whether some tensors of ``model`` are left in their external-data files (``is_lazy_tensor``)."""
    return any(is_lazy_tensor(t) for t in all_tensors(model))


def lazy_folders(model: onnx.ModelProto) -> set[str]:
    """The folders the lazy tensors of ``model`` live in."""
    bases = (external_info(t).get(BASEPATH) for t in all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL)
    return {b for b in bases if b}


def strip_basepath(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove the ``basepath`` entries in place (ONNX Runtime and the checker do not know
    the key); locations stay relative to the lazy folder."""
    for t in all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL and any(e.key == BASEPATH for e in t.external_data):
            set_external_data(t, [(e.key, e.value) for e in t.external_data if e.key != BASEPATH])
    return model


def _lazy_file(t: onnx.TensorProto) -> tuple[Path, int, int]:
    info = external_info(t)
    return Path(info[BASEPATH]) / info["location"], int(info.get("offset", 0) or 0), int(info["length"])


def tensor_bytes(t: onnx.TensorProto) -> bytes:
    """The raw bytes of a tensor, in memory or lazy (read from its file)."""
    if t.data_location == onnx.TensorProto.EXTERNAL and any(e.key == BASEPATH for e in t.external_data):
        path, offset, length = _lazy_file(t)
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(length)
    return t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()


def tensor_array(t: onnx.TensorProto) -> np.ndarray:
    """``numpy_helper.to_array`` that also reads lazy tensors."""
    if t.data_location == onnx.TensorProto.EXTERNAL and any(e.key == BASEPATH for e in t.external_data):
        return numpy_helper.to_array(t, base_dir=external_info(t)[BASEPATH])
    return numpy_helper.to_array(t)


def materialize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Read every lazy tensor into memory, in place (for code that needs the bytes of all
    weights, e.g. ONNX Runtime's quantizer).  Returns ``model``."""
    for t in all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL and any(e.key == BASEPATH for e in t.external_data):
            raw = tensor_bytes(t)
            del t.external_data[:]
            t.ClearField("data_location")  # as ``load_model`` reads it in
            t.raw_data = raw
            del raw
    return model


def _check_external(model: onnx.ModelProto, path: Path) -> None:
    base = path.parent.resolve()
    for t in all_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = external_info(t)
        loc = info.get("location")
        if not loc:
            raise ModelError(f"tensor '{t.name}' is external but has no location", path)
        if os.path.isabs(loc):
            raise ModelError(f"external data location '{loc}' of tensor '{t.name}' is absolute; it must be relative to the model folder", path)
        target = (base / loc).resolve()
        if os.path.commonpath([str(base), str(target)]) != str(base):
            raise ModelError(f"external data location '{loc}' of tensor '{t.name}' points outside the model folder", path)
        if not target.is_file():
            raise ModelError(f"external data file '{loc}' (tensor '{t.name}') is missing", path)
        offset = int(info.get("offset", 0) or 0)
        length = info.get("length")
        size = target.stat().st_size
        if length is not None and offset + int(length) > size:
            raise ModelError(f"external data file '{loc}' is truncated: tensor '{t.name}' needs bytes {offset}..{offset + int(length)}, file has {size}", path)


def _invalid_text(model: onnx.ModelProto) -> str | None:
    """The first string field that protobuf could not decode as UTF-8 (it then hands out
    ``bytes``, which every name lookup, sort and JSON report downstream would trip on).
    Names, op types, domains and symbolic dims are checked; tensor bytes are never read."""

    def type_dims(tp):
        while tp is not None:
            which = tp.WhichOneof("value")
            if which == "tensor_type" or which == "sparse_tensor_type":
                return [d.dim_param for d in getattr(tp, which).shape.dim]
            if which in ("sequence_type", "optional_type"):
                tp = getattr(tp, which).elem_type
            elif which == "map_type":
                tp = tp.map_type.value_type
            else:
                return []
        return []

    def graph(g, where):
        yield f"{where} name", g.name
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            yield f"{where} value name", vi.name
            for d in type_dims(vi.type):
                yield f"symbolic dim of '{vi.name}'", d
        for t in g.initializer:
            yield f"{where} initializer name", t.name
        for n in g.node:
            yield from node(n, where)

    def node(n, where):
        for label, value in (("node name", n.name), ("op type", n.op_type), ("domain", n.domain)):
            yield f"{where} {label}", value
        for v in list(n.input) + list(n.output):
            yield f"{where} tensor name of node '{n.name}'", v
        for a in n.attribute:
            yield f"{where} attribute name", a.name
        for sg in subgraphs(n):
            yield from graph(sg, f"subgraph of '{n.name}':")

    def fields():
        yield "producer name", model.producer_name
        yield "model domain", model.domain
        for op in model.opset_import:
            yield "opset domain", op.domain
        for p in model.metadata_props:
            yield "metadata key", p.key
            yield "metadata value", p.value
        yield from graph(model.graph, "graph")
        for f in model.functions:
            yield "function name", f.name
            for n in f.node:
                yield from node(n, f"function '{f.name}'")

    for label, value in fields():
        if isinstance(value, bytes):
            return label
    return None


def load_model(src, *, load_external: bool = True, lazy: bool | None = False) -> onnx.ModelProto:
    """Load a model from a path (or return a ``ModelProto`` as is).

    External data is validated (relative, inside the model folder, present, long enough)
    and loaded unless ``load_external`` is false.  ``lazy=True`` (or ``None`` and at least
    ``LARGE_MODEL_BYTES`` of external data) leaves it in its files instead, each external
    tensor marked with the absolute folder of its file (``is_lazy``): the proto stays small,
    ONNX Runtime reads the weights itself (``runtime.create_session``), ``save_model``
    copies them file to file, and ``materialize`` reads them in when a step needs them.
    """
    if isinstance(src, onnx.ModelProto):
        return src
    path = Path(src)
    if not path.exists():
        raise ModelError("no such file", path)
    if path.is_dir():
        raise ModelError("is a directory, expected an .onnx file", path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read: {exc.strerror or exc}", path) from exc
    if not data:
        raise ModelError("empty file, not an ONNX model", path)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, or RuntimeWarning-ish errors in upb
        raise ModelError("not an ONNX model (protobuf parse failed: truncated or not ONNX)", path) from exc
    del data
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise ModelError("not an ONNX model (no IR version, opset import or graph)", path)
    bad = _invalid_text(model)
    if bad:
        raise ModelError(f"corrupt model: {bad} is not valid UTF-8 text", path)
    _check_external(model, path)
    external = [t for t in all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    if external and load_external and (lazy or (lazy is None and sum(int(external_info(t).get("length", 0) or 0) for t in external) >= LARGE_MODEL_BYTES)):
        base = str(path.parent.resolve())
        for t in external:
            entry = t.external_data.add()
            entry.key, entry.value = BASEPATH, base
        log.debug("%s: %d external tensors left in their files (lazy)", path, len(external))
        return model
    if load_external and external:
        try:
            edh.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise ModelError(f"cannot load external data: {exc}", path) from exc
        for t in external:  # onnx sets the default location explicitly: a saved model reads back as it was
            t.ClearField("data_location")
    return model


def resolve_model(src, *, lazy: bool | None = False) -> tuple[onnx.ModelProto, Path | None]:
    """``(model, path)`` for a path or a proto (path is ``None`` for a proto).  ``lazy``: see
    ``load_model`` (callers whose steps all handle lazy tensors pass ``None``)."""
    return (src, None) if isinstance(src, onnx.ModelProto) else (load_model(src, lazy=lazy), Path(src))


def check_output_path(out, inputs: Iterable = ()) -> Path:
    """Refuse an output path that is an input model (or its external data) or a folder."""
    out = Path(out)
    if out.is_dir():
        raise UsageError("output path is a directory", out)
    for src in inputs:
        if src is None or isinstance(src, onnx.ModelProto):
            continue
        src = Path(src)
        try:
            same = out.exists() and src.exists() and os.path.samefile(out, src)
        except OSError:
            same = False
        if same or out.resolve() == src.resolve():
            raise UsageError("refusing to overwrite the input model; choose another -o", out)
    if out.exists() and out.resolve() in _data_files_of(inputs):
        raise UsageError("refusing to overwrite the external data of an input model; choose another -o", out)
    return out


def _fsync_dir(folder: Path) -> None:
    with suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _new_file_mode() -> int:
    """What ``open()`` gives a new file (0o666 minus the umask); mkstemp's 0o600 would stick
    to the renamed output."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write_temp(folder: Path, name: str, chunks: Iterable[bytes]) -> Path:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _new_file_mode())
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


@contextmanager
def _writing(path: Path):
    """An operating-system failure while writing ``path`` (no such folder, read-only file
    system, disk full) is the user's to fix: a ``UsageError`` naming the file."""
    try:
        yield
    except OSError as exc:
        raise UsageError(f"cannot write: {exc.strerror or exc}", path) from exc


def check_writable(path) -> None:
    """Refuse, before any work, an output whose folder cannot be created or written: the
    nearest existing ancestor must be a folder where a file can be created (probed with a
    temporary file, removed at once; nothing is created otherwise)."""
    path = Path(path)
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot write: '{probe}' is not a folder", path)
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".onnxopt-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UsageError(f"cannot write in '{probe}': {exc.strerror or exc}", path) from None


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + rename)."""
    path = Path(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _write_temp(path.parent, path.name, [data])
        try:
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


# Reading a model file only to learn which data files it references is skipped above this
# size: a model with external data has a small .onnx, and re-reading a 2 GB single-file
# model would cost its size in memory for a clean-up.
_REF_SCAN_LIMIT = 256 * 2**20


def _old_data_files(path: Path) -> set[str]:
    """External-data files referenced by the model currently at ``path`` (to clean up)."""
    if not path.is_file() or path.stat().st_size > _REF_SCAN_LIMIT:
        return set()
    old = onnx.ModelProto()
    try:
        old.ParseFromString(path.read_bytes())
    except Exception:
        return set()
    return {e.value for t in all_tensors(old) if t.data_location == onnx.TensorProto.EXTERNAL for e in t.external_data if e.key == "location"}


def _data_files_of(models: Iterable) -> set[Path]:
    """Resolved paths of the external-data files the model files ``models`` reference."""
    paths = [Path(src) for src in models if src is not None and not isinstance(src, onnx.ModelProto)]
    return {(src.parent / loc).resolve() for src in paths for loc in _old_data_files(src)}


@contextmanager
def _folder_lock(folder: Path):
    """Serialize the commit phase (renames + clean-up) of saves into one folder, so that two
    processes writing the same path never delete a data file the other's model uses.  An
    advisory ``flock`` on the folder itself: no lock file; released by the kernel when the
    holder dies."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: best effort
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def save_model(
    model: onnx.ModelProto,
    path,
    *,
    external_data: bool | None = None,
    guard: Iterable = (),
) -> Path:
    """Save ``model`` to ``path`` atomically.

    ``external_data``: ``True`` forces an external-data file, ``None`` uses one only when
    the model would not fit a 2 GB protobuf.  ``guard`` lists input paths never to overwrite
    (nor their external-data files).  Output bytes are deterministic for a given model.  The
    in-memory ``model`` is left as it was, also when saving fails.
    """
    guard = list(guard)
    path = check_output_path(path, guard)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if is_lazy(model):  # its weights are in files: they go to the output's data file
            external_data = True
        if external_data is None:
            external_data = exceeds_protobuf(model, margin=64 * 2**20)
        if not external_data:
            if exceeds_protobuf(model):
                raise ModelError("model exceeds 2 GB; save it with external data", path)
            _commit_single(path, model.SerializeToString(deterministic=True), guard)
            log.debug("saved %s", path)
            return path
        return _save_external(model, path, guard)


def _commit_single(path: Path, data: bytes, guard) -> None:
    tmp = _write_temp(path.parent, path.name, [data])
    try:
        with _folder_lock(path.parent):
            old = _old_data_files(path)
            os.replace(tmp, path)
            _remove_stale(path, old, _data_files_of(guard) if old else set())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


# tensors kept in the typed repeated fields (float_data, int32_data, ...: some exporters,
# PaddlePaddle's among them, write weights that way) go to the data file too; packed 4-bit
# types and strings stay inline
_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def _typed_to_raw(model: onnx.ModelProto) -> list[tuple[onnx.TensorProto, onnx.TensorProto]]:
    """Re-encode large in-memory tensors held in typed fields as ``raw_data``, in place;
    returns ``(tensor, original)`` pairs so that the caller can restore them."""
    typed = []
    for t in all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL or t.HasField("raw_data") or t.data_type == onnx.TensorProto.STRING:
            continue
        nbytes = inline_nbytes(t)
        if nbytes < EXTERNAL_THRESHOLD:
            continue
        try:
            raw = numpy_helper.to_array(t).tobytes()
        except Exception:
            continue
        if len(raw) != nbytes:  # packed or unusual encodings: left inline
            continue
        orig = onnx.TensorProto()
        orig.CopyFrom(t)
        for name in _TYPED_FIELDS:
            t.ClearField(name)
        t.raw_data = raw
        typed.append((t, orig))
    return typed


def _save_external(model: onnx.ModelProto, path: Path, guard=()) -> Path:
    """``_save_external_raw`` for every large tensor, typed-field ones included; the
    caller's model gets its original tensors back."""
    typed = _typed_to_raw(model)
    try:
        return _save_external_raw(model, path, guard)
    finally:
        for t, orig in typed:
            t.CopyFrom(orig)


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The tensors that go to the data file: inline ones of ``EXTERNAL_THRESHOLD`` bytes or
    more, and lazy ones (still in their source file)."""
    return [
        t
        for t in all_tensors(model)
        if (t.data_location != onnx.TensorProto.EXTERNAL and t.HasField("raw_data") and inline_nbytes(t) >= EXTERNAL_THRESHOLD)
        or (t.data_location == onnx.TensorProto.EXTERNAL and any(e.key == BASEPATH for e in t.external_data))
    ]


def _data_name(path: Path, big: list[onnx.TensorProto]) -> str:
    """``NAME.<hash of the tensors' names and bytes>.data``."""
    digest = hashlib.blake2b(digest_size=8)
    for t in big:
        digest.update(t.name.encode())
        for chunk in _chunks(t):
            digest.update(chunk)
    return f"{path.name}.{digest.hexdigest()}.data"


def _write_data(fh, big: list[onnx.TensorProto], data_name: str) -> dict[int, onnx.TensorProto]:
    """Write ``big`` to ``fh`` (4 KiB aligned, fsynced), one tensor at a time; returns, by
    ``id`` of each tensor of ``big``, the tensor that stands for it in the saved proto (its
    name, type and dims, pointing at the data file).  The tensors themselves are not touched."""
    os.fchmod(fh.fileno(), _new_file_mode())
    offset = 0
    stand_ins: dict[int, onnx.TensorProto] = {}
    for t in big:
        pad = (-offset) % 4096
        if pad:
            fh.write(b"\0" * pad)
            offset += pad
        length = 0
        for chunk in _chunks(t):
            fh.write(chunk)
            length += len(chunk)
            chunk = None  # noqa: PLW2901 - drop a tensor-sized copy before the next one
        ref = onnx.TensorProto()
        _copy_fields(t, ref, {"raw_data", "external_data", "data_location", *_TYPED_FIELDS})
        set_external_data(ref, (("location", data_name), ("offset", str(offset)), ("length", str(length))))
        ref.data_location = onnx.TensorProto.EXTERNAL
        stand_ins[id(t)] = ref
        offset += length
    fh.flush()
    os.fsync(fh.fileno())
    return stand_ins


def _save_external_raw(model: onnx.ModelProto, path: Path, guard=()) -> Path:
    """Weights to ``NAME.<content hash>.data`` (4 KiB aligned), then the model.

    Order: the data file is written to a temporary file and fsynced; then, holding the
    folder lock, it is renamed into place, the model is written and renamed over ``path``,
    and the data files of the model it replaced are removed.  A crash before the model's
    rename leaves the old model with its old data (plus, at worst, an unreferenced data or
    hidden temporary file); after it, the new model with its data.  On an exception the
    new data file is removed unless a model references it.  In-memory tensors go to the
    file one at a time and the proto written is a copy whose large tensors point at the file
    (``with_tensors``: no weight copied, the caller's model untouched); lazy tensors are
    copied file to file in chunks.
    """
    big = _external_tensors(model)
    if not big:  # nothing reaches the threshold: an empty data file would only confuse
        _commit_single(path, model.SerializeToString(deterministic=True), guard)
        return path
    data_name = _data_name(path, big)
    data_path = path.parent / data_name
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{data_name}.", suffix=".tmp")
    tmp_data = Path(tmp_name)
    renamed = committed = False
    try:
        with os.fdopen(fd, "wb") as fh:
            stand_ins = _write_data(fh, big, data_name)
        used: list[int] = []
        skeleton = with_tensors(model, lambda t: stand_ins[id(t)] if id(t) in stand_ins and not used.append(id(t)) else t)
        if len(set(used)) != len(stand_ins):  # a protobuf runtime whose wrappers are not stable objects
            raise RuntimeError(f"saving {path.name}: {len(stand_ins) - len(set(used))} tensor(s) not found again by identity")
        proto = skeleton.SerializeToString(deterministic=True)
        del skeleton
        tmp_model = _write_temp(path.parent, path.name, [proto])
        del proto
        try:
            with _folder_lock(path.parent):
                old = _old_data_files(path) - {data_name}
                os.replace(tmp_data, data_path)
                renamed = True
                os.replace(tmp_model, path)
                committed = True
                _remove_stale(path, old, _data_files_of(guard) if old else set())
        finally:
            tmp_model.unlink(missing_ok=True)
        _fsync_dir(path.parent)
    except BaseException:
        if not renamed:
            tmp_data.unlink(missing_ok=True)
        elif not committed:
            with _folder_lock(path.parent):
                keep = _data_files_of([path, *guard])
                if data_path.resolve() not in keep:
                    data_path.unlink(missing_ok=True)
        raise
    log.debug("saved %s with external data %s", path, data_name)
    return path


def _chunks(t: onnx.TensorProto):
    """The bytes of an in-memory or lazy tensor, in pieces of at most ``_COPY_CHUNK``."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        src, offset, length = _lazy_file(t)
        try:
            fh = open(src, "rb")  # noqa: SIM115 - closed below; a read failure is the source's
        except OSError as exc:  # not the output's: ``_writing`` would call it "cannot write"
            raise ModelError(f"cannot read the external data of tensor '{t.name}': {exc.strerror or exc}", src) from exc
        with fh:
            fh.seek(offset)
            left = length
            while left > 0:
                chunk = fh.read(min(_COPY_CHUNK, left))
                if not chunk:
                    raise ModelError(f"external data of tensor '{t.name}' ends early (file changed while in use?)", src)
                left -= len(chunk)
                yield chunk
        return
    yield t.raw_data


def _remove_stale(path: Path, names, protected: set[Path] = frozenset()) -> None:
    """Delete data files the previous model at ``path`` used (only inside its folder, never
    one an input model uses)."""
    base = str(path.parent.resolve())
    for name in names:
        stale = path.parent / name
        if not stale.is_file() or stale.is_symlink():
            continue
        real = stale.resolve()
        if os.path.commonpath([base, str(real)]) == base and real not in protected:
            stale.unlink(missing_ok=True)


def _read_varint(f) -> tuple[int, bytes] | None:
    """(value, its bytes) of a protobuf varint read from ``f``; None at end of file."""
    raw = bytearray()
    while True:
        b = f.read(1)
        if not b:
            if raw:
                raise ValueError("truncated varint")
            return None
        raw += b
        if not b[0] & 0x80:
            break
    return sum((byte & 0x7F) << (7 * i) for i, byte in enumerate(raw)), bytes(raw)


def _fields(f, end: int | None = None):
    """(field number, wire type, tag + length bytes, payload length or None, payload start)
    of the protobuf fields read from ``f`` up to offset ``end``; length-delimited payloads are
    left unread (the caller reads or skips them)."""
    fixed = {0: None, 1: 8, 5: 4}
    while end is None or f.tell() < end:
        tag = _read_varint(f)
        if tag is None:
            return
        field, wire = tag[0] >> 3, tag[0] & 7
        if wire == 2:
            length, lraw = _read_varint(f)
            yield field, wire, tag[1] + lraw, length, f.tell()
        elif wire == 0:
            _, vraw = _read_varint(f)
            yield field, wire, tag[1] + vraw, None, f.tell()
        elif wire in fixed:
            yield field, wire, tag[1] + f.read(fixed[wire]), None, f.tell()
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


class _HasExternal(Exception):
    pass


def _offload_tensor(payload: bytes, out, name: str, min_bytes: int) -> bytes:
    t = onnx.TensorProto()
    t.ParseFromString(payload)
    if t.data_location == onnx.TensorProto.EXTERNAL:
        raise _HasExternal
    data = t.raw_data if t.HasField("raw_data") else None
    if data is None and t.data_type != onnx.TensorProto.STRING:
        data = numpy_helper.to_array(t).tobytes() if int(np.prod(t.dims)) * 4 >= min_bytes else None
    if data is None or len(data) < min_bytes:
        return payload
    offset = out.tell()
    out.write(data)
    for field in ("raw_data", *_TYPED_FIELDS):
        t.ClearField(field)
    t.data_location = onnx.TensorProto.EXTERNAL
    set_external_data(t, (("location", name), ("offset", str(offset)), ("length", str(len(data)))))
    return t.SerializeToString()


def load_offloaded(src, folder, *, min_bytes: int = 1024) -> onnx.ModelProto | None:
    """Load the model file ``src`` with its inline initializers of ``min_bytes`` or more
    written to ``folder/weights.bin`` one tensor at a time, and return it lazy (``is_lazy``:
    ONNX Runtime reads them from that file).  Peak memory is about the largest tensor, not
    the file size twice (its bytes plus the parsed proto, as ``load_model`` needs).  None
    when the model already has external data or is not a plain model file (then use
    ``load_model``)."""
    folder = Path(folder)
    name = "weights.bin"
    rest, graph_rest = bytearray(), bytearray()
    try:
        with open(src, "rb") as f, open(folder / name, "wb") as out:
            for field, wire, head, length, start in _fields(f):
                if not (field == 7 and wire == 2):  # ModelProto.graph is field 7
                    rest += head + (f.read(length) if length is not None else b"")
                    continue
                for gfield, gwire, ghead, glen, _ in _fields(f, start + length):
                    payload = f.read(glen) if glen is not None else b""
                    if gfield == 5 and gwire == 2:  # GraphProto.initializer
                        payload = _offload_tensor(payload, out, name, min_bytes)
                        graph_rest += _tag_len(gfield, len(payload)) + payload
                    else:
                        graph_rest += ghead + payload
    except (_HasExternal, ValueError, OSError, TypeError):
        return None
    skeleton = onnx.ModelProto()
    try:
        skeleton.ParseFromString(bytes(rest))
        skeleton.graph.ParseFromString(bytes(graph_rest))
    except Exception:  # not a model: load_model reports it
        return None
    path = folder / "model.onnx"
    path.write_bytes(skeleton.SerializeToString())
    return load_model(path, lazy=True)


def _tag_len(field: int, length: int) -> bytes:
    def varint(v: int) -> bytes:
        out = bytearray()
        while True:
            byte = v & 0x7F
            v >>= 7
            out.append(byte | (0x80 if v else 0))
            if not v:
                return bytes(out)

    return varint(field << 3 | 2) + varint(length)


def weights_on_disk(model: onnx.ModelProto, prefix: str = "onnxopt-weights-", *, own: bool = False):
    """``model`` with its weights in an external-data file in a new temporary folder, loaded
    back lazily; returns (the lazy model, the ``tempfile.TemporaryDirectory``: the file lives
    as long as it does).  A model already lazy (``is_lazy``) is returned as it is, with an
    empty folder: its weights are in files already, copying them would only cost time; with
    ``own``, its weights are copied to the new folder all the same (a model that must outlive
    the files it reads from, e.g. a quantizer's result on a base in a temporary folder)."""
    folder = tempfile.TemporaryDirectory(prefix=prefix)
    if is_lazy(model) and not own:
        return model, folder
    path = save_model(model, Path(folder.name) / "model.onnx", external_data=True)
    return load_model(path, lazy=True), folder
