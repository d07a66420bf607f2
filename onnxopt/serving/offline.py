"""ONNX Runtime's own optimized graph, saved for the target: the offline-optimized candidate.

ORT optimizes every graph when a session is created (constant folding, fusions, and at
``all`` the NCHWc layout for the CPU's vector width).  Saving that graph
(``SessionOptions.optimized_model_filepath``) and carrying ``graph_optimization_level =
disable`` with it moves the work from every start of a serving process to build time.
The saved graph holds ``com.microsoft`` / ``com.microsoft.nchwc`` kernels chosen for this
provider and this CPU's instruction set: it is bound to them (ORT warns so itself), and
``optimize`` chooses it only where it wins on the objective, with that caveat in its
report.  The candidate is saved as ONNX: the same graph in ORT's ``.ort`` flatbuffer format
(``ortformat.py``, ``optimize --ort-format``) gave no consistent cold-start gain on a full
ONNX Runtime build (magika, PP-OCR); that format is for ORT's minimal and mobile builds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from ..errors import UnsupportedError, VerificationError
from ..session_options import SessionConfig
from .carry import carry_options

__all__ = ["CAVEAT", "ort_optimized"]

CAVEAT = (
    "ONNX Runtime's optimized graph is bound to the provider and CPU features it was built on (NCHWc layout, fused "
    "kernels): rebuild it for another machine or ORT version"
)


def ort_optimized(model: onnx.ModelProto, provider: str = "cpu", *, level: str = "all") -> onnx.ModelProto:
    """``model`` as ONNX Runtime optimizes it at ``level`` on ``provider``, carrying
    ``graph_optimization_level = disable`` (the work is done).  Models over the protobuf
    limit are refused (``UnsupportedError``)."""
    from ..io import exceeds_protobuf, load_model
    from ..runtime import create_session

    if exceeds_protobuf(model, margin=2**24):
        raise UnsupportedError("the offline-optimized candidate is built for models under 2 GB only")
    model = _layernorms_at_17(model)
    with tempfile.TemporaryDirectory(prefix="onnxopt-offline-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        create_session(model, provider, config=SessionConfig(optimization_level=level), optimized_path=path, error=VerificationError)
        out = load_model(path)
    onnx.helper.set_model_props(out, {p.key: p.value for p in model.metadata_props})
    carry_options(out, SessionConfig(optimization_level="disable"))
    return out


def _layernorms_at_17(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its decomposed layer norms fused (``simplify.layernorm``) when its
    opset is below 17: ORT's own fusion writes ``LayerNormalization`` into the default domain
    at the model's opset, where ``onnx.checker`` knows no such op (PP-OCRv4 rec, opset 12:
    the candidate failed verification).  Fused by us, the opset is converted to 17 first."""
    from ..graph import default_opset
    from ..simplify.layernorm import MIN_OPSET, fuse_layernorms

    if default_opset(model) >= MIN_OPSET:
        return model
    fused, n, _ = fuse_layernorms(model)
    return fused if n else model
