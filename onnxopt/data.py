"""DATA: calibration / evaluation inputs, loaded without unpickling and streamed in batches.

DATA is either a ``.npz`` file whose arrays are keyed by the model's input names (the
first axis indexes samples) or a folder of ``.npz`` files, each one complete feed (its
first axis is the batch it holds).  An optional ``labels`` array gives ground truth.
Without DATA, inputs are synthesized from the model's input types and shapes; symbolic
dimensions come from ``shapes`` (``{"input": (1, 3, 224, 224)}``) or default to 1.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .errors import DataError, ModelError

__all__ = [
    "LABELS_KEY",
    "InputSpec",
    "Dataset",
    "input_specs",
    "load_data",
    "synthesize",
    "dataset_for",
    "check_shapes",
]

log = logging.getLogger(__name__)

LABELS_KEY = "labels"
DEFAULT_BATCH = 32


@dataclass(frozen=True)
class InputSpec:
    """A graph input: name, numpy dtype and dims (ints, or str/None for symbolic)."""

    name: str
    dtype: np.dtype
    shape: tuple | None  # None: rank unknown

    @property
    def batch_fixed(self) -> int | None:
        """The fixed size of the first axis, or None when it is symbolic."""
        if not self.shape:
            return None
        d = self.shape[0]
        return d if isinstance(d, int) else None

    def describe(self) -> str:
        dims = "?" if self.shape is None else "[" + ",".join(str(d) if d is not None else "?" for d in self.shape) + "]"
        return f"{self.dtype}{dims}"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (initializer-backed inputs of IR < 4 models excluded)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or tt.elem_type == 0:
            raise ModelError(f"graph input '{vi.name}' has no tensor type")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        dims = [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None) for d in tt.shape.dim]
        specs.append(InputSpec(vi.name, dtype, tuple(dims) if tt.HasField("shape") else None))
    return specs


class Dataset:
    """A source of feeds: iterate ``batches()``; ``labels`` is None or an int array.

    A folder of .npz files is streamed: read one file at a time, so memory holds one feed
    (only array headers are read to validate it).  A single .npz is read into memory once
    (its arrays, never unpickled) and sliced into batches: give a folder for data sets
    larger than memory.
    """

    def __init__(self, source: str, files: list[Path] | None = None, arrays: Mapping[str, np.ndarray] | None = None, labels=None, whole: bool = False):
        self.source = source
        self.whole = whole  # feeds are complete as they are: never re-batched
        self._files = files
        self._arrays = dict(arrays) if arrays is not None else None
        self.labels = labels
        self.specs: list[InputSpec] | None = None
        self.note = ""  # what the data is, for reports ("synthesized x[8,3,64,64] (...)")
        self.alternatives: list[dict[str, tuple]] = []  # further shapes the model runs on
        # samples yielded by the latest ``batches()`` iteration (a model with a fixed batch
        # drops a final partial batch, so this can be less than ``len(self)``)
        self.fed = 0

    # --- construction helpers -------------------------------------------------
    @property
    def keys(self) -> list[str]:
        if self._arrays is not None:
            return list(self._arrays)
        with _open_npz(self._files[0]) as z:
            return [k for k in z.files if k != LABELS_KEY]

    def __len__(self) -> int:
        if self._arrays is not None:
            if not self._arrays:  # a model without inputs: one run with an empty feed
                return 1
            first = next((v for v in self._arrays.values() if v.ndim), None)
            return int(first.shape[0]) if first is not None and not self.whole else 1
        n = 0
        for f in self._files:
            with _open_npz(f) as z:
                keys = [k for k in z.files if k != LABELS_KEY]
                if not keys:
                    raise DataError("no input arrays (only 'labels')", f)
                shape = next((sh for sh in (_npy_shape(z, k, f) for k in keys) if sh), ())
                n += int(shape[0]) if shape else 1
        return n

    def batches(self, batch_size: int | None = None, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Yield feeds of at most ``batch_size`` samples (the model's fixed batch wins)."""
        fixed_sizes = {s.batch_fixed for s in self.specs} if self.specs else set()
        fixed = fixed_sizes.pop() if len(fixed_sizes) == 1 else None
        size = fixed or batch_size or DEFAULT_BATCH
        seen = 0
        self.fed = 0
        if self.whole:
            self.fed = len(self)
            yield dict(self._arrays)
            return
        if self._arrays is not None:
            n = len(self)
            for start in range(0, n, size):
                stop = min(start + size, n, n if limit is None else limit)
                if stop <= start:
                    return
                if fixed and stop - start != fixed:
                    log.info("%s: dropping a final partial batch of %d samples (model batch is fixed to %d)", self.source, stop - start, fixed)
                    return
                self.fed += stop - start
                yield {k: np.ascontiguousarray(v[start:stop]) if v.ndim else v for k, v in self._arrays.items()}
            return
        wanted = {s.name for s in self.specs} if self.specs else None  # keys the model consumes
        for f in self._files:
            if limit is not None and seen >= limit:
                return
            with _open_npz(f) as z:
                feed = {k: _read_array(z, k, f) for k in z.files if k != LABELS_KEY and (wanted is None or k in wanted)}
            first = next((v for v in feed.values() if v.ndim), None)
            n = int(first.shape[0]) if first is not None else 1
            seen += n
            self.fed += n
            yield feed

    def view(self) -> Dataset:
        """A Dataset over the same arrays/files that can be validated against another model
        (``validate`` remembers the model's specs and drops the keys it does not consume)."""
        other = Dataset(self.source, files=self._files, arrays=self._arrays, labels=self.labels, whole=self.whole)
        other.specs = self.specs
        other.note, other.alternatives = self.note, self.alternatives
        return other

    def describe(self) -> str:
        """What these inputs are, for reports and logs."""
        return self.note or self.source

    def first_batch(self, batch_size: int | None = None) -> dict[str, np.ndarray]:
        return next(self.batches(batch_size))

    def label_array(self, limit: int | None = None) -> np.ndarray | None:
        return self.labels if self.labels is None or limit is None else self.labels[:limit]

    def validate(self, model: onnx.ModelProto) -> Dataset:
        """Check keys, dtypes, ranks and fixed dims against the model; remember its specs."""
        self.specs = specs = input_specs(model)
        names = {s.name for s in specs}
        samples = self._sample_arrays()
        for s in specs:
            if s.name not in samples:
                raise DataError(
                    f"missing key '{s.name}' (model inputs: {', '.join(sorted(names))}; found: {', '.join(sorted(samples)) or 'none'})", self.source
                )
            shape, dtype = samples[s.name]
            if dtype != s.dtype:
                raise DataError(f"key '{s.name}': expected dtype {s.dtype}, found {dtype}", self.source)
            if s.shape is not None and (len(s.shape) == 0) != (len(shape) == 0):
                if not s.shape:
                    raise DataError(
                        f"key '{s.name}': the model input is a scalar ({s.describe()}); store one value as a 0-d array, found shape {list(shape)}", self.source
                    )
                raise DataError(f"key '{s.name}' is a scalar, the model input is {s.describe()}", self.source)
            if s.shape is not None:
                if len(shape) != len(s.shape):
                    raise DataError(f"key '{s.name}': expected rank {len(s.shape)} {s.describe()}, found shape {list(shape)}", self.source)
                for i, (want, got) in enumerate(zip(s.shape, shape, strict=True)):
                    if i == 0 and self._arrays is not None:
                        continue  # the sample axis; re-batched
                    if isinstance(want, int) and want != got:
                        raise DataError(f"key '{s.name}': expected shape {s.describe()}, found {list(shape)} (axis {i})", self.source)
        extra = set(samples) - names
        if extra:
            log.info("%s: ignoring keys not consumed by the model: %s", self.source, ", ".join(sorted(extra)))
            if self._arrays is not None:
                self._arrays = {k: v for k, v in self._arrays.items() if k not in extra}
        if self.labels is not None and len(self.labels) != len(self):
            raise DataError(f"'labels' has {len(self.labels)} entries but the inputs have {len(self)} samples", self.source)
        return self

    def _sample_arrays(self) -> dict[str, tuple[tuple, np.dtype]]:
        if self._arrays is not None:
            return {k: (v.shape, v.dtype) for k, v in self._arrays.items()}
        out = {}
        for f in self._files:
            with _open_npz(f) as z:
                cur = {k: (_npy_shape(z, k, f), _npy_dtype(z, k, f)) for k in z.files if k != LABELS_KEY}
            if any(len(shape) and shape[0] == 0 for shape, _ in cur.values()):
                raise DataError("holds no samples (an array's first axis is 0)", f)
            if not out:
                out = cur
            elif set(cur) != set(out):
                raise DataError(f"file '{f.name}' has keys {sorted(cur)}, others have {sorted(out)}", self.source)
            else:
                # every file is checked, not only the first: a feed that differs would fail
                # later inside onnxruntime, far from the file at fault
                for k, (shape, dtype) in cur.items():
                    first_shape, first_dtype = out[k]
                    if dtype != first_dtype or len(shape) != len(first_shape):
                        raise DataError(f"key '{k}': {dtype}{list(shape)}, other files have {first_dtype}{list(first_shape)}", f)
        return out


_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _open_npz(path: Path):
    # np.load also reads .npy files (whole, into memory) and returns an array, not an
    # NpzFile: check the zip signature first
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror or exc}", path) from exc
    if head not in _ZIP_MAGIC:
        kind = "a .npy file" if head.startswith(b"\x93NUM") else ("an empty file" if not head else "not a zip archive")
        raise DataError(f"not a .npz file ({kind}; expected arrays saved with numpy.savez)", path)
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # a corrupt zip raises BadZipFile, NotImplementedError, zlib.error, ...
        raise DataError(f"not a readable .npz file ({' '.join(str(exc).split()) or type(exc).__name__})", path) from exc


def _read_array(z, key: str, path: Path) -> np.ndarray:
    try:
        arr = z[key]
    except ValueError as exc:  # object arrays need pickle: refused
        raise DataError(f"key '{key}': object arrays / pickles are not accepted", path) from exc
    except Exception as exc:
        raise DataError(f"key '{key}': unreadable array ({exc})", path) from exc
    if arr.dtype == object or arr.dtype.kind in "OUSV":
        raise DataError(f"key '{key}': unsupported dtype {arr.dtype}", path)
    if arr.dtype.kind in "fc":
        # NaN is never a sample: it would poison calibration ranges, least-squares fits and
        # every metric silently; infinities may be meant (additive masks) and pass
        nan = int(np.isnan(arr).sum())
        if nan:
            raise DataError(f"key '{key}': {nan} NaN value(s) of {arr.size}", path)
    return arr


def _npy_header(z, key, path):
    from numpy.lib import format as npf

    try:
        with z.zip.open(key + ".npy") as fh:
            version = npf.read_magic(fh)
            return npf.read_array_header_1_0(fh) if version == (1, 0) else npf.read_array_header_2_0(fh)
    except Exception as exc:  # never fall back to reading the whole array for its shape
        raise DataError(f"key '{key}': unreadable array header ({exc})", path) from exc


def _npy_shape(z, key, path=None) -> tuple:
    return tuple(_npy_header(z, key, path)[0])


def _npy_dtype(z, key, path) -> np.dtype:
    dtype = np.dtype(_npy_header(z, key, path)[2])
    if dtype.hasobject or dtype.kind in "OUSV":
        raise DataError(f"key '{key}': unsupported dtype {dtype} (object arrays / pickles are not accepted)", path)
    return dtype


def load_data(path, model: onnx.ModelProto | None = None) -> Dataset:
    """Open DATA (a .npz file or a folder of .npz files); validate against ``model`` if given."""
    p = Path(path)
    if not p.exists():
        raise DataError("no such file or folder", p)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix == ".npz" and f.is_file())
        if not files:
            raise DataError("folder holds no .npz files", p)
        labels = []
        for f in files:
            with _open_npz(f) as z:
                if LABELS_KEY in z.files:
                    labels.append(_check_labels(_read_array(z, LABELS_KEY, f), f))
        if labels and len(labels) != len(files):
            raise DataError("some .npz files have 'labels' and some do not", p)
        ds = Dataset(str(p), files=files, labels=_check_labels(np.concatenate(labels), p) if labels else None)
    else:
        with _open_npz(p) as z:
            if not z.files:
                raise DataError("empty .npz (no arrays)", p)
            arrays = {k: _read_array(z, k, p) for k in z.files}
        labels = arrays.pop(LABELS_KEY, None)
        if not arrays:
            raise DataError("no input arrays (only 'labels')", p)
        # 0-d arrays (a sample rate, a flag) are fed as they are with every batch
        lens = {k: v.shape[0] for k, v in arrays.items() if v.ndim}
        # inputs without a batch axis (a state[2, batch, 128] beside input[batch, n]): the
        # file is one complete feed when every array fits its input as it is
        if len(set(lens.values())) > 1 and (model is None or not _one_feed(arrays, input_specs(model))):
            raise DataError(f"arrays disagree on the number of samples (first axis): {lens}", p)
        whole = len(set(lens.values())) != 1  # no batched array, or one complete feed
        if 0 in lens.values():
            raise DataError("holds no samples (the first axis is 0)", p)
        ds = Dataset(str(p), arrays=arrays, labels=_check_labels(labels, p) if labels is not None else None, whole=whole)
    if model is not None:
        ds.validate(model)
    return ds


def _one_feed(arrays: Mapping[str, np.ndarray], specs: list[InputSpec]) -> bool:
    """Whether ``arrays`` are one complete feed: every input has an array of its rank whose
    fixed dims match, and some input has a fixed first axis (no common sample axis)."""
    if not specs or not any(s.shape and isinstance(s.shape[0], int) for s in specs):
        return False
    for s in specs:
        a = arrays.get(s.name)
        if a is None or s.shape is None or a.ndim != len(s.shape) or any(isinstance(d, int) and d != n for d, n in zip(s.shape, a.shape, strict=True)):
            return False
    return True


def _check_labels(labels: np.ndarray, path) -> np.ndarray:
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"'labels' must be a 1-D integer array, found {labels.dtype}{list(labels.shape)}", path)
    return labels.astype(np.int64)


def _resolve_dims(spec: InputSpec, shapes: Mapping[str, tuple] | None, batch: int | None) -> tuple[int, ...]:
    if shapes and spec.name in shapes:
        given = tuple(int(d) for d in shapes[spec.name])
        if spec.shape is not None:
            if len(given) != len(spec.shape):
                raise DataError(f"--shape for '{spec.name}' has rank {len(given)}, model input is {spec.describe()}")
            for want, got in zip(spec.shape, given, strict=True):
                if isinstance(want, int) and want != got:
                    raise DataError(f"--shape for '{spec.name}' is {list(given)}, model input is {spec.describe()}")
        return given
    if spec.shape is None:
        raise DataError(f"input '{spec.name}' has unknown rank; give --shape {spec.name}:D1,D2,...")
    return tuple(d if isinstance(d, int) else (batch if (i == 0 and batch) else 1) for i, d in enumerate(spec.shape))


def check_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple] | None, path=None) -> None:
    """Refuse ``--shape`` values that name no input of ``model`` (a typo would otherwise be
    ignored silently and the input synthesized with its symbolic dims set to 1)."""
    if not shapes:
        return
    names = [s.name for s in input_specs(model)]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise DataError(f"--shape names {', '.join(repr(u) for u in unknown)}, not an input of the model (inputs: {', '.join(names) or 'none'})", path)


def synthesize(model: onnx.ModelProto, shapes: Mapping[str, tuple] | None = None, *, batch: int | None = None, samples: int = 8, seed: int = 0) -> Dataset:
    """Deterministic inputs for every model input, shaped and drawn so that the model runs.

    Symbolic dims come from ``shapes``, else from input discovery (``discover.discover``:
    graph hints, then probing with ONNX Runtime); a symbolic batch axis holds ``samples``.
    Values follow the graph's hints (ids below their table size, 0/1 masks, a constant a
    scalar is compared with), else floats ~ N(0, 1), integers in [0, 10), random bools.
    The Dataset's ``describe()`` says what was used; ``alternatives`` holds further working
    shapes (for verification at several shapes)."""
    from .discover import discover, draw

    check_shapes(model, shapes)
    specs = input_specs(model)
    for s in specs:
        if s.shape is None and not (shapes and s.name in shapes):
            raise DataError(f"input '{s.name}' has unknown rank; give --shape {s.name}:D1,D2,...")
        if s.dtype.kind == "O":
            raise DataError(f"input '{s.name}' is a string tensor: onnxopt can neither synthesize it nor read strings from DATA")
    disc = discover(model, shapes, seed=seed)
    batched = _batched_inputs(specs, disc.batch_groups)
    # inputs without a batch axis (scalars, fixed or shared first axes) make every feed
    # whole: the batch axis then keeps the value the model ran with
    whole = not specs or len(batched) < len(specs) or bool(shapes)
    rng = np.random.default_rng(seed)
    arrays = {}
    for s in specs:
        dims = _resolve_dims(s, shapes, batch) if shapes and s.name in shapes else disc.shapes[s.name]
        if s.name in batched and not whole:
            dims = (samples,) + tuple(dims[1:])
        arrays[s.name] = draw(s, tuple(dims), disc.hints.inputs.get(s.name), rng)
    ds = Dataset("<synthesized>", arrays=arrays, whole=whole)
    ds.specs = specs
    ds.note = "synthesized " + disc.describe({k: list(v.shape) for k, v in arrays.items()})
    # further shapes for verification: discovery's, else the batch axis at 1 (not samples)
    ds.alternatives = [] if shapes else list(disc.extra) or ([disc.shapes] if batched and not whole else [])
    return ds


def _batched_inputs(specs: list[InputSpec], batch_groups: set[str]) -> set[str]:
    """Inputs whose first axis is a symbolic batch axis."""
    from .discover import group_name

    return {s.name for s in specs if s.shape and not isinstance(s.shape[0], int) and group_name(s.name, 0, s.shape[0]) in batch_groups}


def dataset_for(model: onnx.ModelProto, data=None, shapes: Mapping[str, tuple] | None = None, *, seed: int = 0, samples: int = 8) -> Dataset:
    """DATA validated against the model, or synthesized inputs when ``data`` is None; a
    ``shapes`` entry naming no input of the model is refused either way."""
    check_shapes(model, shapes)
    if data is None:
        return synthesize(model, shapes, samples=samples, seed=seed)
    return data.validate(model) if isinstance(data, Dataset) else load_data(data, model)
