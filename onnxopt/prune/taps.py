"""Intermediate activations: a copy of a model with extra graph outputs, run batch by batch.

The copy only gains outputs (no type information is needed by ONNX Runtime); the model
passed in is never modified.  Batches are streamed, so memory holds one batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx

from ..errors import VerificationError
from ..runtime import create_session

__all__ = ["with_outputs", "tap_session", "iter_taps"]


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``names`` (existing outputs kept first)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    have = {o.name for o in copy.graph.output}
    for n in names:
        if n not in have:
            copy.graph.output.append(onnx.ValueInfoProto(name=n))
            have.add(n)
    return copy


def tap_session(model: onnx.ModelProto, names: list[str], provider: str = "cpu"):
    return create_session(with_outputs(model, names), provider, error=VerificationError)


def iter_taps(session, names: list[str], feeds) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
    """Yield ``(feed, {name: activation})`` for each feed."""
    for feed in feeds:
        try:
            values = session.run(names, feed)
        except Exception as exc:
            raise VerificationError(
                f"onnxruntime failed to run the model for intermediate activations: {' '.join(str(exc).split())[:300]}"
            ) from exc
        yield feed, dict(zip(names, values, strict=True))
