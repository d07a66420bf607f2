"""Feeds for one benchmark configuration: DATA or synthesized inputs, re-batched.

The batch axis of an input is its first axis.  An input whose first axis is symbolic takes
any batch; one whose first axis is fixed to ``K`` only takes batch ``K`` (any other batch
is a skipped configuration, with the reason).  ``batch=None`` means the model's own
batch: its fixed size, else 1 (synthesized, or a slice of DATA), else the first feed of a
folder of .npz feeds as it is.

Synthesized inputs: symbolic dims past the batch axis that ``shapes`` does not set are 1,
and the configuration says so.  DATA re-batching takes the first ``batch`` samples; when
DATA holds fewer, samples are repeated cyclically (``feed[i] = data[i mod n]``) and the
configuration says so.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from ..data import Dataset, check_shapes, input_specs, synthesize

__all__ = ["SkipConfig", "fixed_batch_conflict", "make_feed", "feed_batch"]


class SkipConfig(Exception):  # noqa: N818 - a signal, not an error: the configuration is skipped
    """This model cannot run this configuration; ``str()`` says why."""


def fixed_batch_conflict(model: onnx.ModelProto, batch: int | None) -> str | None:
    """Why ``batch`` is impossible for this model (a fixed first axis), or None."""
    if batch is None:
        return None
    for s in input_specs(model):
        if s.shape and isinstance(s.shape[0], int) and s.shape[0] != batch:
            return f"batch {batch} skipped: input '{s.name}' has a fixed batch dimension of {s.shape[0]}"
    return None


def feed_batch(model: onnx.ModelProto, feed: Mapping[str, np.ndarray]) -> int | None:
    """The batch a feed holds: the first axis of the first input with a batch axis."""
    for s in input_specs(model):
        arr = feed.get(s.name)
        if arr is not None and arr.ndim >= 1 and (s.shape is None or len(s.shape) >= 1):
            return int(arr.shape[0])
    return None


def _take(arr: np.ndarray, batch: int) -> np.ndarray:
    if not arr.ndim:  # a 0-d input (a sample rate) is fed as it is
        return arr
    n = arr.shape[0]
    return np.ascontiguousarray(arr[:batch] if batch <= n else np.take(arr, np.arange(batch) % n, axis=0))


def _from_arrays(model, ds: Dataset, batch: int | None) -> tuple[dict, list[str]]:
    specs = input_specs(model)
    arrays = ds._arrays
    n = len(ds)
    fixed = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
    size = batch if batch is not None else (fixed.pop() if len(fixed) == 1 else 1)
    notes = []
    if size > n:
        notes.append(f"DATA holds {n} samples; batch {size} repeats them")
    return {s.name: _take(arrays[s.name], size) for s in specs}, notes


def _from_files(model, ds: Dataset, batch: int | None) -> tuple[dict, list[str]]:
    specs = input_specs(model)
    names = [s.name for s in specs]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
    have = 0
    for feed in ds.batches(None):
        for k in names:
            parts[k].append(feed[k])
        batched = next((feed[k] for k in names if feed[k].ndim), None)
        have += int(batched.shape[0]) if batched is not None else 1
        if batch is None or have >= batch:
            break
    if batch is None:
        return {k: np.ascontiguousarray(v[0]) for k, v in parts.items()}, []
    notes = []
    joined = {k: np.concatenate(v, axis=0) if v[0].ndim else v[0] for k, v in parts.items()}
    if have < batch:
        notes.append(f"DATA holds {have} samples; batch {batch} repeats them")
    return {k: _take(v, batch) for k, v in joined.items()}, notes


def make_feed(
    model: onnx.ModelProto,
    dataset: Dataset | None,
    shapes: Mapping[str, tuple] | None,
    batch: int | None,
    *,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """``(feed, notes)`` for ``batch`` (``SkipConfig`` when the model's fixed batch forbids it).

    ``dataset`` must already be validated against ``model``.  Without it, inputs are
    synthesized (seeded: models with the same inputs get the same arrays); ``shapes`` fills
    symbolic dims and ``batch`` replaces the first axis of inputs whose first axis is
    not fixed.
    """
    reason = fixed_batch_conflict(model, batch)
    if reason:
        raise SkipConfig(reason)
    if dataset is not None:
        return (_from_arrays if dataset._arrays is not None and not dataset.whole else _from_files)(model, dataset, batch)
    specs = input_specs(model)
    shp = {k: tuple(v) for k, v in (shapes or {}).items()}
    check_shapes(model, shp)
    if batch is not None:
        for s in specs:
            if s.name in shp and s.shape and not isinstance(s.shape[0], int) and shp[s.name]:
                shp[s.name] = (batch,) + shp[s.name][1:]
    ds = synthesize(model, shp or None, batch=batch, samples=batch or 1, seed=seed)
    feed = next(ds.batches(max(len(ds), 1)))
    return {k: np.ascontiguousarray(v) for k, v in feed.items()}, _defaulted_dims(specs, shp, ds)


def _defaulted_dims(specs, shapes: Mapping[str, tuple], ds: Dataset) -> list[str]:
    """A note when symbolic dims past the batch axis were discovered rather than given: the
    figure is timed at the smallest size the model runs on, not at a realistic one."""
    free = [s.name for s in specs if s.name not in shapes and s.shape and any(i > 0 and not isinstance(d, int) for i, d in enumerate(s.shape))]
    return [f"inputs {ds.describe()}; give --shape NAME:D1,D2,... for a realistic size"] if free else []
