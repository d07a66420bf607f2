"""Activation ranges from calibration data, streamed batch by batch.

The model is augmented to expose the tensors to calibrate (every float tensor that a node
reads or writes, initializers excluded, as ONNX Runtime's calibrator selects them):

- ``minmax``: each tensor gets a ``ReduceMin`` and a ``ReduceMax`` over all axes
  (``keepdims=0``), so a batch returns two scalars per tensor;
- ``percentile`` / ``entropy``: each tensor becomes a graph output and its values go into a
  fixed-size histogram (``calibrate.Histogram``).

The augmented model runs once per batch of ``Dataset.batches()``; after each batch only
the statistics are kept, so peak memory is one batch's activations whatever the number of
samples (ORT's memory pattern is off for this session: it would allocate a second block on
the second batch).  Graph inputs are read from the feed itself.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..core.progress import progress
from ..data import DEFAULT_BATCH
from ..errors import DataError, VerificationError
from ..runtime import create_session
from .calibrate import DEFAULT_BINS, DEFAULT_PERCENTILE, DEFAULT_QUANTIZED_BINS, RangeStats

__all__ = [
    "method_counts",
    "CalibrationRanges",
    "ChannelStats",
    "tensors_to_calibrate",
    "augment_for_calibration",
    "collect_ranges",
    "collect_channel_stats",
    "exposed_batches",
    "bounded_batch",
    "CALIBRATION_BYTES",
]

log = logging.getLogger(__name__)

_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16}
# the calibrated tensors one calibration batch may hold at once: magika (25 MiB per sample)
# calibrates at batch 10 in 353 MB instead of batch 32 in 933 MB, no slower
CALIBRATION_BYTES = 1 << 28


def method_counts(choices: dict) -> dict[str, int]:
    """How many tensors got each range method (``RangeStats.choices``)."""
    return dict(Counter(c["method"] for c in choices.values()))


@dataclass
class CalibrationRanges:
    """``ranges``: tensor name -> ``(lo, hi)``; what was measured, on how much data."""

    method: str
    ranges: dict[str, tuple[float, float]]
    samples: int = 0
    batches: int = 0
    tensors: int = 0
    notes: list[str] = field(default_factory=list)
    choices: dict = field(default_factory=dict)  # auto / percentile: tensor -> {method, clipped}

    def summary(self) -> dict:
        d = {"method": self.method, "samples": self.samples, "batches": self.batches, "tensors": self.tensors, "notes": list(self.notes)}
        if self.choices:
            clipped = [c["clipped"] for c in self.choices.values()]
            d["range_choice"] = {
                "methods": method_counts(self.choices),
                "clipped_max": max(clipped),
                "clipped_mean": sum(clipped) / len(clipped),
                "per_tensor": dict(self.choices),
            }
        return d


def _typed_values(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value the model knows (after ONNX shape inference)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # keep what the model already declares
        log.debug("shape inference failed for calibration: %s", exc)
        inferred = model
    g = inferred.graph
    typed = [vi for vi in [*g.input, *g.value_info, *g.output] if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type]
    return {vi.name: vi.type.tensor_type.elem_type for vi in typed}


def tensors_to_calibrate(model: onnx.ModelProto, op_types=None) -> list[str]:
    """Float tensors read or written by the main graph's nodes (initializers excluded), in
    graph order; ``op_types`` restricts to the inputs/outputs of those op types."""
    inits = {t.name for t in model.graph.initializer}
    types = _typed_values(model)
    names = dict.fromkeys(x for n in model.graph.node if not op_types or n.op_type in op_types for x in [*n.input, *n.output] if x and x not in inits)
    return [x for x in names if types.get(x) in _FLOATS]


def augment_for_calibration(
    model: onnx.ModelProto, tensors: list[str], method: str, types: dict[str, int] | None = None
) -> tuple[onnx.ModelProto, list[tuple[str, str, str]]]:
    """A copy of ``model`` exposing the statistics of ``tensors``.

    Returns the augmented model and, per calibrated tensor that is not a graph input, the
    ``(tensor, output_a, output_b)`` names to read (``output_b`` is empty for histograms).
    """
    types = types if types is not None else _typed_values(model)
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    graph = aug.graph
    inputs = {i.name for i in graph.input}
    existing = {o.name for o in graph.output}
    taken = {n for node in graph.node for n in list(node.input) + list(node.output)} | inputs | {t.name for t in graph.initializer}
    reads = []
    for i, name in enumerate(tensors):
        if name in inputs:
            continue
        if method == "minmax":
            outs = []
            for op in ("ReduceMin", "ReduceMax"):
                out = f"onnxopt_calib_{i}_{op}"
                while out in taken:
                    out += "_"
                taken.add(out)
                # no axes: reduce over all axes (attribute before opset 18, input after)
                graph.node.append(helper.make_node(op, [name], [out], name=out, keepdims=0))
                graph.output.append(helper.make_tensor_value_info(out, types.get(name, TensorProto.FLOAT), None))
                outs.append(out)
            reads.append((name, outs[0], outs[1]))
        else:
            if name not in existing:
                graph.output.append(helper.make_tensor_value_info(name, types.get(name, TensorProto.FLOAT), None))
                existing.add(name)
            reads.append((name, name, ""))
    return aug, reads


def _batch_count(dataset, batch_size: int | None, limit: int | None) -> int | None:
    """How many feeds ``dataset.batches(batch_size, limit)`` yields (for the progress bar),
    None when that is not known without reading the data."""
    try:
        if getattr(dataset, "whole", False):
            return 1
        files = getattr(dataset, "_files", None)
        if files is not None:
            return None if limit is not None else len(files)  # one feed per file
        n = len(dataset) if limit is None else min(len(dataset), limit)
        sizes = {s.batch_fixed for s in getattr(dataset, "specs", None) or ()}
        fixed = sizes.pop() if len(sizes) == 1 else None
        return n // fixed if fixed else -(-n // (batch_size or DEFAULT_BATCH))  # a fixed batch drops a final partial one
    except Exception:  # a Dataset-like object without these attributes
        return None


def bounded_batch(model: onnx.ModelProto, dataset, names: list[str], budget: int | None = None) -> tuple[int, str | None]:
    """The calibration batch (at most ``data.DEFAULT_BATCH``) whose calibrated tensors fit in
    ``budget`` bytes (default ``CALIBRATION_BYTES``), and a note when that is smaller than
    the default.

    ONNX Runtime keeps every tensor the augmented model reduces alive until the run ends, so
    a batch holds all its activations at once: measured on PP-OCRv4 rec (769 tensors, input
    1x3x48x320), 6.5 GB at batch 32 against 125 MB for the plain model at batch 8.  Moving
    the reductions next to their producers or joining them into one output did not change
    it; a smaller batch does (MinMax ranges do not depend on the batch).
    """
    from ..stats import activation_bytes

    budget = CALIBRATION_BYTES if budget is None else budget
    try:
        one = dataset.first_batch(1)
        per = sum(activation_bytes(model, one, names).values())
    except Exception as exc:  # a dataset-like object without first_batch, or odd shapes
        log.debug("calibration batch not bounded: %s", exc)
        return DEFAULT_BATCH, None
    per = max(per, measured_bytes(model, one, names))  # shape inference can miss dims: one sample run says
    fit = max(1, min(DEFAULT_BATCH, budget // max(per, 1)))
    return fit, None if fit >= DEFAULT_BATCH else (
        f"calibration batch {fit}: the {len(names)} calibrated tensors take {per / 2**20:.0f} MiB per sample (bound {budget / 2**30:g} GiB)"
    )


def measured_bytes(model: onnx.ModelProto, feed: dict, names: list[str], provider: str = "cpu") -> int:
    """Bytes of the tensors ``names`` when ``model`` runs on ``feed``, per sample: one run
    with them exposed.  Shape inference on a weightless copy (``stats.activation_bytes``)
    misses dims that come from constant values: magika's one-hot over 257 byte values read
    as 8 KiB per sample, 25 MiB measured.  0 when the model cannot run so."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    have = {o.name for o in exposed.graph.output} | {i.name for i in exposed.graph.input}
    exposed.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    try:
        sess = create_session(exposed, provider, optimization_level="disable", error=VerificationError)
        del exposed
        wanted = [n for n in names if n not in {i.name for i in sess.get_inputs()}]
        total = sum(np.asarray(v).nbytes for v in sess.run(wanted, feed))
    except Exception as exc:  # noqa: BLE001 - the estimate stays as it was
        log.debug("calibrated tensors not measured: %s", exc)
        return 0
    batch = max((int(np.shape(v)[0]) for v in feed.values() if np.ndim(v)), default=1) or 1
    return int(total // batch)


def collect_ranges(
    model: onnx.ModelProto,
    dataset,
    *,
    method: str = "minmax",
    batch_size: int | None = None,
    limit: int | None = None,
    provider: str = "cpu",
    tensors: list[str] | None = None,
    bins: int = DEFAULT_BINS,
    percentile: float = DEFAULT_PERCENTILE,
    num_quantized_bins: int = DEFAULT_QUANTIZED_BINS,
) -> CalibrationRanges:
    """Stream ``dataset`` through the augmented model and return the activation ranges.

    Raises ``DataError`` when the dataset yields no batch, ``VerificationError`` when the
    augmented model cannot run (the input model itself was checked before).
    """
    stats = RangeStats(method, bins=bins, percentile=percentile, num_quantized_bins=num_quantized_bins)
    names = tensors if tensors is not None else tensors_to_calibrate(model)
    batch_size, bound_note = bounded_batch(model, dataset, names) if batch_size is None else (batch_size, None)
    aug, reads = augment_for_calibration(model, names, method)
    # no memory pattern: with it ORT allocates a second arena block on the second run
    sess = create_session(aug, provider, optimization_level="disable", mem_pattern=False, error=VerificationError)
    wanted = sorted({r[1] for r in reads} | {r[2] for r in reads if r[2]}, key=[o.name for o in sess.get_outputs()].index)
    input_names = {i.name for i in sess.get_inputs()}
    graph_inputs = [n for n in names if n in input_names]
    samples = batches = 0
    for feed in progress(dataset.batches(batch_size, limit), desc="calibrate", total=_batch_count(dataset, batch_size, limit), unit="batch"):
        try:
            values = dict(zip(wanted, sess.run(wanted, feed), strict=True))
        except Exception as exc:
            raise VerificationError(f"calibration run failed: {' '.join(str(exc).split())[:300]}") from exc
        for tensor, a, b in reads:
            if b:
                lo, hi = np.asarray(values[a]), np.asarray(values[b])
                if lo.size and hi.size:
                    stats.update_range(tensor, float(lo.min()), float(hi.max()))
            else:
                stats.update(tensor, values[a])
        for name in graph_inputs:
            stats.update(name, feed[name])
        first = next(iter(feed.values()))
        samples += int(first.shape[0]) if first.ndim else 1
        batches += 1
        del values
    if batches == 0:
        raise DataError("calibration data yielded no batch (empty, or fewer samples than the model's fixed batch size)", getattr(dataset, "source", None))
    ranges = stats.ranges()
    notes = list(stats.warnings) + ([bound_note] if bound_note else [])
    missing = [n for n in names if n not in ranges]
    if missing:
        notes.append(
            f"{len(missing)} tensor(s) had no finite value in the calibration data and get no range: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    if stats.choices:
        counts = method_counts(stats.choices)
        worst = max(stats.choices.items(), key=lambda kv: kv[1]["clipped"])
        notes.append(
            f"ranges ({method}): "
            + ", ".join(f"{k} for {v} tensor(s)" for k, v in sorted(counts.items()))
            + f"; clipped at most {worst[1]['clipped']:.3%} of a tensor's values ('{worst[0]}')"
        )
    return CalibrationRanges(method, ranges, samples, batches, len(names), notes, dict(stats.choices))


@dataclass
class ChannelStats:
    """Per-channel statistics of one tensor over the calibration data: ``lo`` / ``hi`` /
    ``absmax`` / ``mean`` / ``std`` per channel, and up to ``max_rows`` sampled rows
    ``[rows, C]`` (each row: one position's values across the channels)."""

    lo: np.ndarray
    hi: np.ndarray
    absmax: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    rows: np.ndarray
    count: int


class _ChannelAccumulator:
    def __init__(self, max_rows: int, rng: np.random.Generator):
        self.max_rows, self.rng = max_rows, rng
        self.lo, self.hi, self.sum, self.sumsq = np.inf, -np.inf, 0.0, 0.0  # arrays after the first batch
        self.count = 0
        self.keys = np.zeros(0)
        self.pool: np.ndarray | None = None

    def update(self, flat: np.ndarray) -> None:
        flat = flat.astype(np.float64)
        self.lo, self.hi = np.minimum(self.lo, flat.min(axis=0)), np.maximum(self.hi, flat.max(axis=0))
        self.sum, self.sumsq = self.sum + flat.sum(axis=0), self.sumsq + (flat**2).sum(axis=0)
        self.count += flat.shape[0]
        if self.max_rows:
            # a uniform sample of every row seen: each row gets a random key, the smallest
            # max_rows keys stay (bottom-k sampling)
            keys = np.concatenate([self.keys, self.rng.random(flat.shape[0])])
            pool = np.concatenate([self.pool, flat.astype(np.float32)]) if self.pool is not None else flat.astype(np.float32)
            if keys.size > self.max_rows:
                keep = np.argpartition(keys, self.max_rows)[: self.max_rows]
                keys, pool = keys[keep], pool[keep]
            self.keys, self.pool = keys, pool

    def stats(self) -> ChannelStats:
        mean = self.sum / self.count
        std = np.sqrt(np.maximum(self.sumsq / self.count - mean**2, 0.0))
        rows = self.pool if self.pool is not None else np.zeros((0, self.lo.size), np.float32)
        return ChannelStats(self.lo, self.hi, np.maximum(np.abs(self.lo), np.abs(self.hi)), mean, std, rows, self.count)


def exposed_batches(
    model: onnx.ModelProto, dataset, tensors: list[str], *, provider: str = "cpu", limit: int | None = None, batch_size: int | None = None,
    what: str = "statistics",
):
    """``{tensor: value}`` of ``tensors`` (graph inputs or computed ones) for each batch of
    ``dataset``, from one session of ``model`` with them exposed as outputs; without
    ``batch_size``, batches whose exposed tensors fit ``CALIBRATION_BYTES``
    (``bounded_batch``).  Raises ``DataError`` when the dataset yields no batch."""
    if batch_size is None:
        batch_size, note = bounded_batch(model, dataset, list(tensors))
        if note:
            log.info("%s: %s", what, note)
    types = _typed_values(model)
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    inputs = {i.name for i in aug.graph.input}
    outputs = {o.name for o in aug.graph.output}
    aug.graph.output.extend(helper.make_tensor_value_info(n, types.get(n, TensorProto.FLOAT), None) for n in tensors if n not in inputs and n not in outputs)
    sess = create_session(aug, provider, optimization_level="disable", mem_pattern=False, error=VerificationError)
    fetch = [n for n in tensors if n not in inputs]
    fed = 0
    for feed in dataset.batches(batch_size, limit):
        fed += 1
        values = dict(zip(fetch, sess.run(fetch, feed), strict=True)) if fetch else {}
        values.update({n: feed[n] for n in tensors if n in inputs})
        yield values
    if not fed:
        raise DataError("calibration data yielded no batch", getattr(dataset, "source", None))


def collect_channel_stats(
    model: onnx.ModelProto,
    dataset,
    tensors: dict[str, int],
    *,
    provider: str = "cpu",
    limit: int | None = None,
    batch_size: int | None = None,
    max_rows: int = 0,
    seed: int = 0,
) -> dict[str, ChannelStats]:
    """Per-channel statistics of ``tensors`` (name -> channel axis) over ``dataset``,
    streamed batch by batch (the equalization passes' and bias correction's input); without
    ``batch_size``, batches whose exposed tensors fit ``CALIBRATION_BYTES`` (``bounded_batch``:
    bias correction of PP-OCRv4 rec held 7.4 GB at batch 32).  A tensor whose size along its
    channel axis changes between batches (the axis follows the batch) is left out of the
    result.  Raises ``DataError`` when the dataset yields no batch."""
    rng = np.random.default_rng(seed)
    acc = {n: _ChannelAccumulator(max_rows, rng) for n in tensors}
    channels: dict[str, int] = {}
    for values in exposed_batches(model, dataset, list(tensors), provider=provider, limit=limit, batch_size=batch_size, what="channel statistics"):
        for name, axis in tensors.items():
            v = np.asarray(values[name])
            if channels.setdefault(name, v.shape[axis]) != v.shape[axis]:
                channels[name] = -1  # the axis follows the batch: no channels to speak of
            if channels[name] > 0:
                acc[name].update(np.moveaxis(v, axis, -1).reshape(-1, v.shape[axis]))
    varying = [n for n, c in channels.items() if c < 0]
    if varying:
        log.info("channel statistics: %d tensor(s) left out, their channel axis changes with the batch: %s", len(varying), ", ".join(varying[:3]))
    return {n: a.stats() for n, a in acc.items() if channels.get(n, 0) > 0}
