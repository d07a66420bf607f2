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
    for n in names:
        if n not in have:
            copy.graph.output.append(onnx.ValueInfoProto(name=n))
            have.add(n)
    return copy


def upstream(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that computes ``names`` (its only outputs) and nothing else."""
    from ..graph import _outer_reads, subgraphs

    g = model.graph
    needed = set(names)
    keep = []
    for node in reversed(g.node):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(x for x in node.input if x)
            for sub in subgraphs(node):
                needed |= _outer_reads(sub)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    og = out.graph
    del og.node[:]
    og.node.extend(reversed(keep))
    inits = [t for t in g.initializer if t.name in needed]
    del og.initializer[:]
    og.initializer.extend(inits)
    del og.value_info[:]
    del og.output[:]
    og.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names))
    # inputs backed by a dropped initializer go too (they would become required feeds)
    kept, backed = {t.name for t in inits}, {t.name for t in g.initializer}
    real = [i for i in g.input if i.name in kept or i.name not in backed]
    del og.input[:]
    og.input.extend(real)
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
