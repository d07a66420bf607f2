"""Session options carried with the model.

Two entries of ``metadata_props``:

- ``ort_config``: ``{"session_options": {...}}`` in the form ONNX Runtime itself reads
  when the environment variable ``ORT_LOAD_CONFIG_FROM_MODEL=1`` is set
  (``onnxruntime/core/session/inference_session_utils.cc``): ``intra_op_num_threads``,
  ``inter_op_num_threads``, ``execution_mode`` (0 sequential, 1 parallel),
  ``graph_optimization_level`` (0, 1, 2, 99).  Options from the model then replace the
  application's, so a plain ``InferenceSession(path)`` gets them;
- onnxopt's provenance (``core/provenance.py``) mirrors the whole ``SessionConfig`` under
  ``session_options``, spinning included (ORT's parser has no key for it).

``session(path)`` builds an ``InferenceSession`` with the carried options whatever the
environment says.  ``check_carried`` is the verification: ORT must accept the carried
options (a session with ``ORT_LOAD_CONFIG_FROM_MODEL=1``) and report back the same values;
a model whose options ORT rejects is refused, never written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os

import onnx

from ..core.provenance import read_provenance
from ..errors import ModelError, VerificationError
from ..session_options import SessionConfig

__all__ = ["ORT_CONFIG_KEY", "LOAD_ENV", "carry_options", "carried_options", "carried_session", "check_carried", "ort_loads_config", "session"]

log = logging.getLogger(__name__)

ORT_CONFIG_KEY = "ort_config"
LOAD_ENV = "ORT_LOAD_CONFIG_FROM_MODEL"


def _set_meta(model: onnx.ModelProto, key: str, value: str | None) -> None:
    props = {p.key: p.value for p in model.metadata_props if p.key != key}
    onnx.helper.set_model_props(model, props if value is None else {**props, key: value})


def carry_options(model: onnx.ModelProto, config: SessionConfig) -> None:
    """Write ``config`` into ``model``'s ``ort_config`` metadata (in place).  The
    provenance mirror is the ``session-options`` step's details (``passes.SessionOptionsPass``)
    or a command's ``session_options`` entry (``optimize``, ``ensemble``)."""
    text = json.dumps({"session_options": config.ort_session_options()}, sort_keys=True, separators=(",", ":"))
    _set_meta(model, ORT_CONFIG_KEY, text)


def _mirrored(model: onnx.ModelProto) -> dict | None:
    rec = read_provenance(model)
    if not rec:
        return None
    for entry in [rec, *reversed(rec.get("history", []))]:
        opts = entry.get("session_options")
        if isinstance(opts, dict):
            return opts
        for step in reversed(entry.get("steps") or []):  # a 'session-options' recipe step
            opts = (step.get("details") or {}).get("session_options") if isinstance(step, dict) else None
            if isinstance(opts, dict):
                return opts
    return None


def carried_options(model: onnx.ModelProto) -> SessionConfig | None:
    """The options ``model`` carries, or None.  ``ort_config`` is what ORT applies, so it
    decides the values ORT knows; spinning comes from the provenance mirror.  A malformed
    ``ort_config`` is a ``ModelError``."""
    raw = next((p.value for p in model.metadata_props if p.key == ORT_CONFIG_KEY), None)
    if raw is None:
        return None
    try:
        opts = json.loads(raw).get("session_options", {})
        if not isinstance(opts, dict):
            raise ValueError("session_options is not an object")
    except (ValueError, AttributeError) as exc:
        raise ModelError(f"the model's ort_config metadata is not onnxruntime's JSON form: {exc}") from None
    spin = (_mirrored(model) or {}).get("allow_spinning", True)
    try:
        return SessionConfig.from_ort_session_options(opts, allow_spinning=bool(spin))
    except Exception as exc:
        raise ModelError(f"the model's ort_config cannot be read: {getattr(exc, 'message', exc)}") from None


@contextlib.contextmanager
def ort_loads_config():
    """Inside, ONNX Runtime applies the ``ort_config`` of every model it loads (it reads
    ``ORT_LOAD_CONFIG_FROM_MODEL`` at each session's construction)."""
    before = os.environ.get(LOAD_ENV)
    os.environ[LOAD_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(LOAD_ENV, None)
        else:
            os.environ[LOAD_ENV] = before


def check_carried(model: onnx.ModelProto, provider: str = "cpu", *, error=VerificationError) -> SessionConfig | None:
    """Verify that ONNX Runtime accepts the options ``model`` carries and applies them as
    written: a session built the way a plain application would (``ORT_LOAD_CONFIG_FROM_MODEL=1``)
    must load and report the same threads, mode and level.  Returns the carried config."""
    return None if _carried(model, error) is None else carried_session(model, provider, error=error)[1]


def _carried(model, error) -> SessionConfig | None:
    """``carried_options(model)``, an unreadable ``ort_config`` raised as ``error``."""
    try:
        return carried_options(model)
    except ModelError as exc:
        raise error(exc.message) from None


def carried_session(model, provider: str = "cpu", *, error=VerificationError):
    """``(session, carried config or None)``: a session of ``model`` built the way a plain
    application builds it: with the options the model carries (``ORT_LOAD_CONFIG_FROM_MODEL=1``),
    checked to be applied as written (``check_carried``), or ORT's defaults when it carries
    none.  ``verify.check_model`` loads its one session this way."""
    from ..runtime import create_session

    config = _carried(model, error)
    if config is None:
        return create_session(model, provider, error=error), None
    with ort_loads_config():
        sess = create_session(model, provider, error=error)
    so = sess.get_session_options()
    keys = ("intra_op_num_threads", "inter_op_num_threads", "execution_mode", "graph_optimization_level")
    got = SessionConfig.from_ort_session_options({k: int(getattr(so, k)) for k in keys}, allow_spinning=config.allow_spinning)
    if got != config:
        raise error(f"onnxruntime applied the carried session options as ({got.describe()}), not as written ({config.describe()})")
    return sess, config


def session(model, provider: str = "cpu", *, model_options: bool = True, config: SessionConfig | None = None):
    """An ``onnxruntime.InferenceSession`` for ``model`` (path or proto, or an ``.ort``
    file: ``serving.ortformat``) built with the session options it carries
    (``model_options=False``: ORT's defaults); ``config`` overrides both."""
    from ..io import load_model
    from ..runtime import create_session, is_ort_format

    if config is None and model_options:
        if is_ort_format(model):
            from .ortformat import ort_format_options

            config = ort_format_options(model)
        else:
            proto = model if isinstance(model, onnx.ModelProto) else load_model(model, load_external=False)
            config = carried_options(proto)
    return create_session(model, provider, config=config)
