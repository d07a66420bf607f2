"""The ``.ort`` format: ONNX Runtime's optimized graph in its own flatbuffer container.

``ort_format(model)`` builds it the way ``onnxruntime.tools.convert_onnx_models_to_ort``
does: a session optimizes the graph and saves it with the session config entry
``session.save_model_format = ORT`` beside ``optimized_model_filepath``.  A model that
already carries ``graph_optimization_level = disable`` (the offline candidate, whose
optimization is done) is saved at ``disable``, unchanged; any other is optimized at the
level it carries (``all`` by default) first.  The ``.ort`` file keeps the model's
``metadata_props``, so it carries its session options too, with ``disable`` as the level.

Verification: ONNX Runtime loads the bytes (``session.load_model_format = ORT``) and their
outputs on the feeds must equal the ONNX model's own session's under the exact-transform
rule (``verify.is_exact``).  The file is bound to the provider and CPU it was built on and to
the ONNX Runtime version that reads it (``offline.CAVEAT``).

Two things ONNX Runtime 1.32 does differently with an ``.ort`` file, both handled here:
the ``ORT_LOAD_CONFIG_FROM_MODEL=1`` switch makes it parse the file as protobuf and fail,
so the carried options are read from the flatbuffer (``ort_format_options``) and applied by
``serving.session``; and ``session.use_ort_model_bytes_for_initializers`` crashes a Python
process (its bytes object is copied and freed), so it is never set.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import onnx

from ..errors import ModelError, VerificationError
from ..runtime import is_ort_format
from ..session_options import SessionConfig

__all__ = ["ORT_SUFFIX", "OrtFormatModel", "ort_format", "ort_format_metadata", "ort_format_options", "ort_format_path"]

ORT_SUFFIX = ".ort"


def ort_format_path(onnx_path) -> Path:
    """Where ``optimize --ort-format`` writes the ``.ort`` beside ``onnx_path``."""
    return Path(onnx_path).with_suffix(ORT_SUFFIX)


def ort_format_metadata(src) -> dict[str, str]:
    """The ``metadata_props`` an ``.ort`` file (path or bytes) holds, read from its
    flatbuffer (the reader classes ship with onnxruntime); ``ModelError`` when it is not one."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import InferenceSession

    buf = bytes(src) if isinstance(src, (bytes, bytearray, memoryview)) else Path(src).read_bytes()
    if not is_ort_format(buf):
        raise ModelError("not an ONNX Runtime .ort file (no ORTM flatbuffer identifier)", None if isinstance(src, (bytes, bytearray, memoryview)) else src)
    model = InferenceSession.InferenceSession.GetRootAs(buf, 0).Model()
    entries = [model.MetadataProps(i) for i in range(model.MetadataPropsLength() if model is not None else 0)]
    return {e.Key().decode(): e.Value().decode() for e in entries}


def ort_format_options(src) -> SessionConfig | None:
    """The session options an ``.ort`` file carries (``carry.carried_options`` on its
    metadata), or None."""
    from .carry import carried_options

    holder = onnx.ModelProto()
    onnx.helper.set_model_props(holder, ort_format_metadata(src))
    return carried_options(holder)


@dataclasses.dataclass
class OrtFormatModel:
    """An ``.ort`` model built and verified by ``ort_format``: ``data`` (the file's bytes)
    and ``report`` (level, bytes, seconds, the comparison with the ONNX model)."""

    data: bytes
    report: dict

    def save(self, path, *, guard=()) -> Path:
        """Write ``data`` atomically, never over a path in ``guard``."""
        from ..io import atomic_write_bytes, check_output_path

        check_output_path(path, list(guard))
        return atomic_write_bytes(path, self.data)


def _saved_level(model: onnx.ModelProto) -> tuple[SessionConfig, str]:
    """(the options the ``.ort`` carries, the level ORT optimizes at before saving)."""
    from .carry import carried_options

    carried = carried_options(model) or SessionConfig()
    return dataclasses.replace(carried, optimization_level="disable"), carried.optimization_level


def _build(model: onnx.ModelProto, provider: str) -> tuple[bytes, str]:
    from ..runtime import create_session
    from .carry import carry_options

    config, level = _saved_level(model)
    source = onnx.ModelProto()
    source.CopyFrom(model)
    carry_options(source, config)  # the .ort holds the graph optimized: nothing left to do at load
    with tempfile.TemporaryDirectory(prefix="onnxopt-ort-") as tmp:
        path = Path(tmp) / f"model{ORT_SUFFIX}"
        create_session(source, provider, config=SessionConfig(optimization_level=level), optimized_path=path, save_ort_format=True, error=VerificationError)
        return path.read_bytes(), level


def _verify(data: bytes, model: onnx.ModelProto, feeds: list[dict], provider: str):
    from ..runtime import create_session
    from ..verify import compare_outputs
    from .carry import carried_options

    ref = create_session(model, provider, config=carried_options(model))
    new = create_session(data, provider, config=ort_format_options(data), error=VerificationError)
    names = [o.name for o in ref.get_outputs()]
    if [o.name for o in new.get_outputs()] != names:
        raise VerificationError(f"the .ort model's outputs {[o.name for o in new.get_outputs()]} differ from the ONNX model's {names}")
    comps = [compare_outputs(names, ref.run(None, f), new.run(None, f)) for f in feeds]
    bad = [c.inexact()[0] for c in comps if c.inexact()]
    if bad:
        worst = max(bad, key=lambda o: o.rel_l2)
        raise VerificationError(f"the .ort model changed output {worst.name}: rel-L2 {worst.rel_l2:.3g}, max |diff| {worst.max_abs:.3g} (exact-transform rule)")
    return comps


def ort_format(model: onnx.ModelProto, provider: str = "cpu", *, feeds: list[dict] | None = None, seed: int = 0) -> OrtFormatModel:
    """``model`` as an ``.ort`` file's bytes (module docstring), verified against ``model``
    on ``feeds`` (default: two synthesized feeds).  ``VerificationError`` (exit 3) when ORT
    cannot save or load it or its outputs differ; ``UnsupportedError`` over 2 GB."""
    from ..data import synthesize
    from ..errors import UnsupportedError
    from ..io import exceeds_protobuf
    from .offline import CAVEAT

    if exceeds_protobuf(model, margin=2**24):
        raise UnsupportedError("the .ort format is built for models under 2 GB only")
    t0 = time.perf_counter()
    data, level = _build(model, provider)
    if feeds is None:
        feeds = list(synthesize(model, seed=seed, samples=2).batches(1, 2))
    comps = _verify(data, model, feeds, provider)
    report = {
        "bytes": len(data),
        "optimized_at": level,
        "provider": provider,
        "feeds": len(feeds),
        "max_rel_l2": max((o.rel_l2 for c in comps for o in c.outputs), default=0.0),
        "max_abs": max((o.max_abs for c in comps for o in c.outputs), default=0.0),
        "seconds": time.perf_counter() - t0,
        "caveat": CAVEAT,
    }
    return OrtFormatModel(data, report)
