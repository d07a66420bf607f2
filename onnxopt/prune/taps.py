"""Intermediate activations: a copy of a model with extra graph outputs, run batch by batch.

The copy only gains outputs (no type information is needed by ONNX Runtime); the model
passed in is never modified.  Batches are streamed, so memory holds one batch at a time.
ONNX Runtime runs every node whatever is fetched, so ``upstream`` cuts a copy down to the
nodes the wanted tensors depend on (the graph inputs stay, so the same feeds work).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx

from ..errors import VerificationError
from ..runtime import create_session

__all__ = ["with_outputs", "upstream", "tap_session", "iter_taps"]


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``names`` (existing outputs kept first)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    have = {o.name for o in copy.graph.output}
    copy.graph.output.extend(
        onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names) if n not in have
    )
    return copy


def upstream(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that computes ``names`` (its only outputs) and nothing else: the
    dead-code sweep of ``simplify`` on a copy whose outputs are ``names`` (inputs backed by
    a dropped initializer go too: they would become required feeds)."""
    from ..simplify.dead import remove_unused

    out = onnx.ModelProto()
    out.CopyFrom(model)
    og = out.graph
    del og.output[:]
    og.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names))
    remove_unused(out)
    return out


def tap_session(
    model: onnx.ModelProto, names: list[str], provider: str = "cpu", *, only: bool = False
):
    """A session that outputs ``names``; with ``only``, computing nothing else."""
    m = upstream(model, names) if only else with_outputs(model, names)
    return create_session(m, provider, error=VerificationError)


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
