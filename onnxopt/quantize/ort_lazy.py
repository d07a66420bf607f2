"""ONNX Runtime's quantizer on a large model whose weights stay in their files.

On a model loaded lazily (``io.is_lazy``: weights left in their external-data files), ORT's
quantizer is handed the small proto, not the weights: for the duration of the quantization
``reading_lazily()`` replaces, in ORT's quantization modules,

- ``tensor_proto_to_array`` (where ORT reads a float weight or bias to quantize it) by a
  reader that takes one lazy tensor at a time from its file;
- ``save_and_reload_model_with_shape_infer`` (a deep copy, a save and a reload of the whole
  model: dynamic mode's ``ONNXQuantizer`` calls it unconditionally, three copies of the
  weights at its peak) by ONNX shape inference on the small proto;
- ``quantize_nparray`` (``(w / scale).round() + zero_point``, clipped, cast: four
  weight-sized float temporaries) by the same function applied to slices of at most
  ``CHUNK`` elements, for a scalar scale and zero point (per-tensor weights).

Nothing else changes: the same ORT code computes the same ranges, scales and integers, so
the result is the model the in-memory path gives (tests check it byte for byte).  Reads
this module does not cover would silently see nothing, so ``working_copy`` points each
lazy tensor at a location that does not exist (``MARK`` prefixed): such a read fails with
the marker in its message, ``missed_read`` recognizes it, and the caller quantizes again
with the weights in memory.  ``unmark`` restores the locations on ORT's output, whose
unquantized float tensors (biases, nodes left in float) stay lazy.

Peak memory, for weights ``s`` bytes in the largest tensor: ORT's quantized weights
(a quarter of the FP32 ones, int8) plus about ``2.5 s`` (that tensor read, ORT's
``flatten()`` copy of it and its int8 result), instead of the whole FP32 model in memory
plus three copies in the reload plus ``4.5 s``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading
from pathlib import Path

import numpy as np
import onnx

from .. import io as oio
from ..errors import ModelError

__all__ = ["CHUNK", "MARK", "TESTED_ORT", "ORT_INTERNALS", "internals_changed", "inferred_copy", "working_copy", "unmark", "reading_lazily", "missed_read"]

log = logging.getLogger(__name__)

# a folder name no model folder has: a read that does not go through ``reading_lazily``
# fails on it instead of finding a file
MARK = ".onnxopt-lazy-weights"
# elements per slice of ``quantize_nparray`` (16 MiB of float32 per temporary)
CHUNK = 1 << 22

_ORT = "onnxruntime.quantization."
# the modules that import tensor_proto_to_array / save_and_reload_model_with_shape_infer by name
_MODULES = ("quant_utils", "base_quantizer", "onnx_quantizer", "qdq_quantizer")
# ORT versions (major.minor) whose internals this module and ``ort_backend`` were tested with
# (tests/quantize/test_ort_internals.py, benchmarks/large_model.py); on any other version
# the lazy path is skipped unless the internals below are unchanged
TESTED_ORT = ("1.32",)
# the parameters both quantizer classes end with
_QUANTIZER_ARGS = ("weight_qType", "activation_qType", "tensors_range", "nodes_to_quantize", "nodes_to_exclude", "op_types_to_quantize", "extra_options")
# the ORT internals replaced here or called by keyword from ``ort_backend``: where -> the
# parameter names they must keep
ORT_INTERNALS = {
    "quant_utils.tensor_proto_to_array": ("initializer",),
    "quant_utils.save_and_reload_model_with_shape_infer": ("model",),
    "quant_utils.quantize_nparray": ("qType", "arr", "scale", "zero_point", "low", "high"),
    "quant_utils.add_infer_metadata": ("model",),
    "onnx_quantizer.ONNXQuantizer.__init__": ("self", "model", "per_channel", "reduce_range", "mode", "static", *_QUANTIZER_ARGS),
    "qdq_quantizer.QDQQuantizer.__init__": ("self", "model", "per_channel", "reduce_range", *_QUANTIZER_ARGS),
}
_INTEGER_TYPES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16, onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
_NP_DTYPES = {onnx.TensorProto.FLOAT: np.dtype("<f4"), onnx.TensorProto.FLOAT16: np.dtype("<f2")}


def internals_changed() -> list[str]:
    """The entries of ``ORT_INTERNALS`` that the installed ORT lacks or whose parameters
    differ, each as a short sentence; empty when everything is as tested."""
    import inspect

    problems = []
    for where, params in ORT_INTERNALS.items():
        module, _, path = where.partition(".")
        try:
            obj = importlib.import_module(_ORT + module)
            for part in path.split("."):
                obj = getattr(obj, part)
            found = tuple(inspect.signature(obj).parameters)
        except (ImportError, AttributeError, ValueError, TypeError) as exc:
            problems.append(f"{where}: missing ({type(exc).__name__})")
            continue
        if found != params:
            problems.append(f"{where}: parameters {found} (tested: {params})")
    return problems


def _usable() -> bool:
    import onnxruntime

    if ".".join(onnxruntime.__version__.split(".")[:2]) in TESTED_ORT:
        return True
    problems = internals_changed()
    if problems:
        log.info("onnxruntime %s: lazy weight reading off (%s)", onnxruntime.__version__, "; ".join(problems))
    return not problems


def _lazy_tensors(model: onnx.ModelProto):
    return [t for t in oio.all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL and any(e.key == oio.BASEPATH for e in t.external_data)]


def _set_location(t: onnx.TensorProto, location: str) -> None:
    for e in t.external_data:
        if e.key == "location":
            e.value = location


def working_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """What ORT's ``save_and_reload_model_with_shape_infer`` gives (shapes inferred, ORT's
    "inferred" mark), as a new small proto whose lazy tensors are marked (``MARK``)."""
    m = inferred_copy(model)
    for t in _lazy_tensors(m):
        _set_location(t, f"{MARK}/{oio.external_info(t)['location']}")
    return m


def unmark(model: onnx.ModelProto) -> onnx.ModelProto:
    """The lazy tensors of ORT's output pointed back at their files, in place."""
    prefix = MARK + "/"
    for t in _lazy_tensors(model):
        loc = oio.external_info(t).get("location", "")
        if loc.startswith(prefix):
            _set_location(t, loc[len(prefix) :])
    return model


def _read(t: onnx.TensorProto) -> np.ndarray | None:
    """A marked lazy float tensor read from its file; None for any other tensor."""
    info = oio.external_info(t)
    loc = info.get("location", "")
    dtype = _NP_DTYPES.get(t.data_type)
    if oio.BASEPATH not in info or not loc.startswith(MARK + "/") or dtype is None:
        return None
    path = Path(info[oio.BASEPATH]) / loc[len(MARK) + 1 :]
    count = int(np.prod([int(d) for d in t.dims], dtype=np.int64))
    arr = np.fromfile(path, dtype=dtype, count=count, offset=int(info.get("offset", 0) or 0))
    if arr.size != count:
        raise ModelError(f"external data of tensor '{t.name}' ends early (file changed while in use?)", path)
    return arr.astype(dtype.newbyteorder("="), copy=False).reshape([int(d) for d in t.dims])


def _lazy_reader(original):
    def tensor_proto_to_array(initializer):
        arr = _read(initializer)
        return original(initializer) if arr is None else arr

    return tensor_proto_to_array


def inferred_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """``save_and_reload_model_with_shape_infer`` for a small (lazy) proto: a new proto with
    shapes inferred and ORT's "inferred" mark; the weights stay in their files."""
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    m = onnx.shape_inference.infer_shapes(model)
    add_infer_metadata(m)
    return m


def _chunked(original):
    def quantize_nparray(qType, arr, scale, zero_point, *rest, **kw):  # noqa: N803 - ORT's signature
        arr = np.asarray(arr)
        # elementwise with a scalar scale and zero point: slices give the same integers;
        # whatever else ORT passes (low, high, ...) goes through unchanged
        scalar = all(np.size(x) == 1 and np.ndim(x) <= 1 for x in (scale, zero_point))
        if arr.ndim == 0 or arr.size <= CHUNK or not scalar or arr.dtype.kind != "f" or qType not in _INTEGER_TYPES:
            return original(qType, arr, scale, zero_point, *rest, **kw)
        flat = arr.reshape(-1)
        first = np.asarray(original(qType, flat[:CHUNK], scale, zero_point, *rest, **kw))
        out = np.empty(flat.shape, dtype=first.dtype)
        out[:CHUNK] = first
        del first
        for i in range(CHUNK, flat.size, CHUNK):
            out[i : i + CHUNK] = original(qType, flat[i : i + CHUNK], scale, zero_point, *rest, **kw)
        return out.reshape(arr.shape)

    return quantize_nparray


# the replacements are module globals of ORT: one quantization at a time in this process
# runs with them (another thread's quantization waits rather than run half-patched)
_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def reading_lazily():
    """ORT's quantization modules patched as the module docstring says, restored on exit
    (an attribute a given ORT version lacks is left alone: the marked locations make any
    read that then misses this module fail, see ``missed_read``)."""
    # every module imported before any is patched: one imported in between would keep the
    # patched function it imported by name
    mods = {name: importlib.import_module(_ORT + name) for name in _MODULES}
    saved = []
    if not _usable():  # untested ORT with changed internals: marked reads fail, the caller falls back
        yield
        return
    with _PATCH_LOCK:
        try:
            _patch(mods, saved)
            yield
        finally:
            for mod, attr, value in reversed(saved):
                setattr(mod, attr, value)


def _patch(mods, saved) -> None:
    """Install the replacements, recording ``(module, name, original)`` in ``saved``."""
    each = {"tensor_proto_to_array": _lazy_reader, "save_and_reload_model_with_shape_infer": lambda _: inferred_copy}
    targets = [(mod, attr, make) for mod in mods.values() for attr, make in each.items()] + [(mods["quant_utils"], "quantize_nparray", _chunked)]
    for mod, attr, make in targets:
        if hasattr(mod, attr):
            saved.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, make(getattr(mod, attr)))


def missed_read(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a read of a marked tensor that did not go
    through ``reading_lazily``."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if MARK in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
