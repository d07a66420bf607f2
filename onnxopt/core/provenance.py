"""Provenance: the ``onnxopt`` entry of an output model's ``metadata_props``.

JSON with the tool and library versions and, per step, the pass, its parameters, what it
changed and its verification figures.  Nothing time- or machine-dependent goes in (no
timestamps, no seconds), so identical runs write byte-identical files.  Running onnxopt
on its own output appends to the earlier steps.
"""

from __future__ import annotations

import json
from contextlib import suppress

import onnx

from ..graph import replace_repeated
from ..render import json_safe

__all__ = ["KEY", "tool_versions", "read_provenance", "write_provenance"]

KEY = "onnxopt"


def tool_versions() -> dict:
    import numpy
    import onnxruntime

    from .. import __version__

    versions = {"onnxopt": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}
    with suppress(Exception):
        from importlib.metadata import version

        versions["onnxsim"] = version("onnxsim")
    return versions


def read_provenance(model: onnx.ModelProto) -> dict | None:
    for p in model.metadata_props:
        if p.key == KEY:
            try:
                return json.loads(p.value)
            except ValueError:
                return None
    return None


def write_provenance(model: onnx.ModelProto, command: str, steps: list[dict], extra: dict | None = None) -> None:
    """Set the ``onnxopt`` metadata entry (in place), keeping earlier runs' steps."""
    previous = read_provenance(model)
    history = []
    if previous:
        history = list(previous.get("history", [])) + [{k: previous.get(k) for k in ("command", "steps") if k in previous}]
    record = {"command": command, "versions": tool_versions(), "steps": json_safe(steps, digits=6)}
    if extra:
        record.update(json_safe(extra, digits=6))
    if history:
        record["history"] = history
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str, allow_nan=False)
    replace_repeated(model.metadata_props, [p for p in model.metadata_props if p.key != KEY])
    model.metadata_props.add(key=KEY, value=text)
