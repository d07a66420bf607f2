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
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import onnx
from onnx import external_data_helper as edh

from .errors import ModelError, UsageError

__all__ = [
    "ModelSource",
    "TWO_GB",
    "load_model",
    "resolve_model",
    "save_model",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_path",
    "model_nbytes",
]

log = logging.getLogger(__name__)

ModelSource = "str | os.PathLike | onnx.ModelProto"
TWO_GB = 2**31 - 1
# Tensors at least this large go to the external-data file when saving externally.
EXTERNAL_THRESHOLD = 1024


def _all_tensors(model: onnx.ModelProto):
    return edh._get_all_tensors(model)


def model_nbytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data held by the model (in memory or external)."""
    total = 0
    for t in _all_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            total += int(info.get("length", 0) or 0)
        else:
            total += len(t.raw_data) if t.HasField("raw_data") else 0
    return total


def _check_external(model: onnx.ModelProto, path: Path) -> None:
    base = path.parent.resolve()
    for t in _all_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
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


def load_model(src, *, load_external: bool = True) -> onnx.ModelProto:
    """Load a model from a path (or return a ``ModelProto`` as is).

    External data is validated (relative, inside the model folder, present, long enough)
    and loaded unless ``load_external`` is false.
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
    _check_external(model, path)
    if load_external and any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model)):
        try:
            edh.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise ModelError(f"cannot load external data: {exc}", path) from exc
    return model


def resolve_model(src) -> tuple[onnx.ModelProto, Path | None]:
    """``(model, path)`` for a path or a proto (path is ``None`` for a proto)."""
    if isinstance(src, onnx.ModelProto):
        return src, None
    return load_model(src), Path(src)


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
    return out


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_temp(folder: Path, name: str, chunks: Iterable[bytes]) -> Path:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + rename)."""
    path = Path(path)
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


def _old_data_files(path: Path) -> set[str]:
    """External-data files referenced by the model currently at ``path`` (to clean up)."""
    if not path.is_file():
        return set()
    old = onnx.ModelProto()
    try:
        old.ParseFromString(path.read_bytes())
    except Exception:
        return set()
    locs = set()
    for t in _all_tensors(old):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for e in t.external_data:
                if e.key == "location":
                    locs.add(e.value)
    return locs


def save_model(
    model: onnx.ModelProto,
    path,
    *,
    external_data: bool | None = None,
    guard: Iterable = (),
) -> Path:
    """Save ``model`` to ``path`` atomically.

    ``external_data``: ``True`` forces an external-data file, ``None`` uses one only when
    the model would not fit a 2 GB protobuf.  ``guard`` lists input paths never to overwrite.
    Output bytes are deterministic for a given model.
    """
    path = check_output_path(path, guard)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = model.ByteSize() > TWO_GB - 64 * 2**20
    if not external_data:
        if model.ByteSize() > TWO_GB:
            raise ModelError("model exceeds 2 GB; save it with external data", path)
        atomic_write_bytes(path, model.SerializeToString(deterministic=True))
        log.debug("saved %s", path)
        return path
    return _save_external(model, path)


def _save_external(model: onnx.ModelProto, path: Path) -> Path:
    big = [
        t
        for t in _all_tensors(model)
        if t.data_location != onnx.TensorProto.EXTERNAL and t.HasField("raw_data") and len(t.raw_data) >= EXTERNAL_THRESHOLD
    ]
    if not big:  # nothing reaches the threshold: an empty data file would only confuse
        old = _old_data_files(path)
        atomic_write_bytes(path, model.SerializeToString(deterministic=True))
        _remove_stale(path, old)
        return path
    digest = hashlib.blake2b(digest_size=8)
    for t in big:
        digest.update(t.name.encode())
        digest.update(t.raw_data)
    data_name = f"{path.name}.{digest.hexdigest()}.data"
    old = _old_data_files(path) - {data_name}

    def chunks():
        offset = 0
        for t in big:
            raw = t.raw_data
            pad = (-offset) % 4096
            if pad:
                yield b"\0" * pad
                offset += pad
            yield raw
            del t.external_data[:]
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            t.data_location = onnx.TensorProto.EXTERNAL
            t.ClearField("raw_data")
            offset += len(raw)

    tmp_data = _write_temp(path.parent, data_name, chunks())
    try:
        os.replace(tmp_data, path.parent / data_name)
        atomic_write_bytes(path, model.SerializeToString(deterministic=True))
    except BaseException:
        tmp_data.unlink(missing_ok=True)
        raise
    finally:
        # the in-memory model gets its data back from the file just written
        edh.load_external_data_for_model(model, str(path.parent))
    _remove_stale(path, old)
    log.debug("saved %s with external data %s", path, data_name)
    return path


def _remove_stale(path: Path, names) -> None:
    """Delete data files the previous model at ``path`` used (only inside its folder)."""
    base = str(path.parent.resolve())
    for name in names:
        stale = path.parent / name
        if stale.is_file() and not stale.is_symlink() and os.path.commonpath([base, str(stale.resolve())]) == base:
            stale.unlink(missing_ok=True)
