"""The malformed-input corpus, generated (never committed as binaries).

``build_corpus(root)`` writes, under ``root``:

- the valid assets every command needs besides the broken one: a small MLP
  (``x`` float32 ``[N, 16]`` -> ``logits`` float32 ``[N, 4]``, three MatMul/Add layers with
  Relu, weights large enough to go to external data), a head model that chains after it (``logits`` ->
  ``probs``), a labelled ``.npz`` and a folder of ``.npz`` feeds, and a one-step recipe;
- broken models: not ONNX, empty, truncated at several offsets, byte flips in the
  protobuf structure, wrong/future IR version and opset, unknown operator domain,
  duplicate node outputs, a graph input with no type, dangling inputs, a cycle, lying
  initializer sizes, missing / truncated / escaping (``../``, absolute, symlink) external
  data, a folder and a path that does not exist;
- broken DATA: not a zip, empty, truncated, wrong key, wrong dtype / rank / shape, object
  arrays, a pickle whose payload would leave a marker file if it were ever unpickled, a
  header claiming a 64 TiB array, zero samples, bad labels, folders that are empty or
  disagree;
- broken recipes: bad TOML, not UTF-8, unknown step / parameter / top-level key, a
  parameter of the wrong type, ``steps`` that is not an array of tables, a step without
  ``pass``, an unknown target, a file that does not exist.

Each :class:`Case` says what a command must do with it: ``expect=2`` (one ``error:`` line,
exit 2, nothing written) or ``expect=None`` ("graceful": exit 0 with a valid output, or
2/3 with one ``error:`` line).  ``lenient`` names commands for which the case is graceful
although others must refuse it (``inspect`` may describe a model that parses but would not
run).

Run as a script to write the corpus and list it::

    python tests/reliability/corpus.py /tmp/corpus
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "INPUT",
    "OUTPUT",
    "Case",
    "Corpus",
    "build_corpus",
    "valid_model",
    "head_model",
    "valid_arrays",
    "PICKLE_MARKER",
    "shared_corpus",
]

INPUT, OUTPUT = "x", "logits"
FEATURES, CLASSES, SAMPLES = 16, 4, 24
OPSET = 17
# a pickle payload in the corpus creates this file (next to the corpus) if it is ever
# unpickled; the tests assert it never appears
PICKLE_MARKER = "PICKLE_WAS_LOADED"


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "model" | "data" | "recipe"
    path: Path
    expect: int | None = 2  # None: graceful (0 with a valid output, or 2/3 with one error line)
    lenient: frozenset = frozenset()  # commands for which this case is graceful
    note: str = ""

    def expected_for(self, command: str) -> int | None:
        return None if command in self.lenient else self.expect

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass
class Corpus:
    root: Path
    model: Path  # valid MLP x[N,16] -> logits[N,4]
    head: Path  # valid logits[N,4] -> probs[N,4]
    data: Path  # valid .npz with x and labels
    data_dir: Path  # valid folder of .npz feeds
    recipe: Path  # valid one-step recipe
    other: Path | None = None  # valid, same interface as ``model``, other weights
    cases: list[Case] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Case]:
        return [c for c in self.cases if c.kind == kind]


# --- valid assets -------------------------------------------------------------------------


def _init(name: str, arr: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def valid_model(seed: int = 0, *, hidden: int = 32) -> onnx.ModelProto:
    """``x`` float32 [N, 16] -> 3 x (MatMul + Add), Relu between -> ``logits`` [N, 4]."""
    rng = np.random.default_rng(seed)
    dims = [FEATURES, hidden, hidden, CLASSES]
    nodes, inits = [], []
    prev = INPUT
    for i in range(3):
        w = (rng.standard_normal((dims[i], dims[i + 1])) * (1.0 / np.sqrt(dims[i]))).astype(
            np.float32
        )
        b = (rng.standard_normal(dims[i + 1]) * 0.1).astype(np.float32)
        inits += [_init(f"w{i + 1}", w), _init(f"b{i + 1}", b)]
        out = OUTPUT if i == 2 else f"h{3 * i + 1}"
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i + 1}"], [f"h{3 * i}"], name=f"fc{i + 1}"),
            helper.make_node("Add", [f"h{3 * i}", f"b{i + 1}"], [out], name=f"fc{i + 1}_bias"),
        ]
        if i < 2:
            nodes.append(helper.make_node("Relu", [out], [f"h{3 * i + 2}"], name=f"relu{i + 1}"))
            prev = f"h{3 * i + 2}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", CLASSES])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="reliability-corpus"
    )
    model.ir_version = 8
    return model


def head_model() -> onnx.ModelProto:
    """``logits`` float32 [N, 4] -> Softmax -> ``probs``: the second stage of a chain."""
    graph = helper.make_graph(
        [helper.make_node("Softmax", [OUTPUT], ["probs"], axis=-1, name="softmax")],
        "head",
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", CLASSES])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", CLASSES])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="reliability-corpus"
    )
    model.ir_version = 8
    return model


def valid_arrays(n: int = SAMPLES, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        INPUT: rng.standard_normal((n, FEATURES)).astype(np.float32),
        "labels": (np.arange(n) % CLASSES).astype(np.int64),
    }


# --- writers ------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _save(model: onnx.ModelProto, path: Path) -> Path:
    return _write(path, model.SerializeToString(deterministic=True))


def _save_external(model: onnx.ModelProto, path: Path, location: str = "weights.bin") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return path


def _set_location(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    return model


def _npz(path: Path, **arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _npz_raw(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


class _Payload:
    """Unpickling this creates the marker file: proof that a loader unpickled DATA."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _message_spans(data: bytes) -> list[int]:
    """Byte offsets of protobuf tags and length prefixes in the model's top level and its
    graph (where a flip changes structure rather than a weight value)."""

    def varint(buf, i):
        shift = value = 0
        while True:
            b = buf[i]
            value |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                return value, i
            shift += 7

    def walk(buf, base, depth, out):
        i = 0
        while i < len(buf):
            out.append(base + i)
            key, j = varint(buf, i)
            wire = key & 7
            if wire == 0:
                _, i = varint(buf, j)
            elif wire == 2:
                out.append(base + j)
                length, k = varint(buf, j)
                if depth == 0 and key >> 3 == 7:  # graph: walk its fields too
                    walk(buf[k : k + length], base + k, 1, out)
                i = k + length
            elif wire == 5:
                i = j + 4
            elif wire == 1:
                i = j + 8
            else:
                return

    out: list[int] = []
    walk(data, 0, 0, out)
    return out


# --- the corpus ---------------------------------------------------------------------------


def build_corpus(root: str | os.PathLike) -> Corpus:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    valid = root / "valid"
    model_p = _save(valid_model(), valid / "mlp.onnx")
    head_p = _save(head_model(), valid / "head.onnx")
    arrays = valid_arrays()
    data_p = _npz(valid / "data.npz", **arrays)
    data_dir = valid / "feeds"
    for i in range(3):
        sl = slice(8 * i, 8 * i + 8)
        _npz(data_dir / f"feed{i:02d}.npz", **{k: v[sl] for k, v in arrays.items()})
    recipe_p = _write(
        valid / "simplify.toml", b'name = "corpus"\n[[steps]]\npass = "remove-unused"\n'
    )
    other_p = _save(valid_model(seed=7), valid / "mlp_other.onnx")
    corpus = Corpus(root, model_p, head_p, data_p, data_dir, recipe_p, other_p)
    cases = corpus.cases
    good_bytes = model_p.read_bytes()

    # --- models ---------------------------------------------------------------------------
    m = root / "models"

    def model_case(name, path, expect=2, lenient=(), note=""):
        cases.append(Case(name, "model", path, expect, frozenset(lenient), note))

    model_case(
        "not-onnx", _write(m / "not_onnx.onnx", b"this is a text file, not an ONNX model\n" * 4)
    )
    model_case("empty", _write(m / "empty.onnx", b""))
    model_case("zeros", _write(m / "zeros.onnx", b"\0" * 512))
    model_case("png-bytes", _write(m / "image.onnx", b"\x89PNG\r\n\x1a\n" + bytes(range(256))))
    for frac in (0.01, 0.25, 0.5, 0.9):
        cut = max(1, int(len(good_bytes) * frac))
        model_case(
            f"truncated-{int(frac * 100)}pct",
            _write(m / f"truncated_{int(frac * 100)}.onnx", good_bytes[:cut]),
        )
    model_case("truncated-last-byte", _write(m / "truncated_last.onnx", good_bytes[:-1]))

    # flips in tags and length prefixes (structure, not weight values); seeded, so the same
    # corpus every run.  A flip may still leave a parseable model: graceful.
    spans = _message_spans(good_bytes)
    rng = np.random.default_rng(1234)
    for k, off in enumerate(rng.choice(spans, size=min(8, len(spans)), replace=False)):
        flipped = bytearray(good_bytes)
        flipped[int(off)] ^= 1 << int(rng.integers(0, 8))
        model_case(
            f"flip-{k}",
            _write(m / f"flip_{k}.onnx", bytes(flipped)),
            expect=None,
            note=f"bit flip at byte {int(off)}",
        )

    bad = valid_model()
    bad.ir_version = 99
    model_case("ir-version-99", _save(bad, m / "ir99.onnx"), lenient={"inspect"})
    bad = valid_model()
    bad.ir_version = 0
    model_case("ir-version-0", _save(bad, m / "ir0.onnx"))
    bad = valid_model()
    bad.opset_import[0].version = 99
    model_case("opset-99", _save(bad, m / "opset99.onnx"), lenient={"inspect"})
    bad = valid_model()
    del bad.opset_import[:]
    model_case("no-opset-import", _save(bad, m / "no_opset.onnx"))
    bad = valid_model()
    bad.ClearField("graph")
    model_case("no-graph", _save(bad, m / "no_graph.onnx"))

    bad = valid_model()
    bad.graph.node[2].domain = "com.example.unknown"
    bad.graph.node[2].op_type = "MysteryRelu"
    bad.opset_import.append(helper.make_opsetid("com.example.unknown", 1))
    model_case("unknown-domain", _save(bad, m / "unknown_domain.onnx"), lenient={"inspect"})
    bad = valid_model()
    bad.graph.node[2].op_type = "NoSuchOp"
    model_case("unknown-op", _save(bad, m / "unknown_op.onnx"), lenient={"inspect"})
    bad = valid_model()
    bad.graph.node[1].output[0] = "h0"  # fc1 and fc1_bias both produce h0
    bad.graph.node[2].input[0] = "h0"
    model_case(
        "duplicate-node-outputs", _save(bad, m / "duplicate_outputs.onnx"), lenient={"inspect"}
    )
    bad = valid_model()
    bad.graph.input[0].ClearField("type")
    model_case("input-without-type", _save(bad, m / "input_no_type.onnx"), lenient={"inspect"})
    bad = valid_model()
    bad.graph.node[3].input[0] = "nowhere"
    model_case("dangling-input", _save(bad, m / "dangling.onnx"), lenient={"inspect"})
    bad = valid_model()
    bad.graph.node[0].input[0] = "h2"  # fc1 reads relu1's output: a cycle
    model_case("cycle", _save(bad, m / "cycle.onnx"), lenient={"inspect"})
    bad = valid_model()
    bad.graph.initializer[0].raw_data = bad.graph.initializer[0].raw_data[:100]
    model_case(
        "initializer-size-lies", _save(bad, m / "short_initializer.onnx"), lenient={"inspect"}
    )
    bad = valid_model()
    bad.graph.initializer[0].dims[0] = -16
    model_case("negative-dim", _save(bad, m / "negative_dim.onnx"), lenient={"inspect"})
    bad = valid_model()
    bad.graph.output[0].name = "not_produced"
    model_case(
        "output-not-produced", _save(bad, m / "output_not_produced.onnx"), lenient={"inspect"}
    )
    bad = valid_model()
    bad.graph.node[2].ClearField("input")
    model_case("missing-node-input", _save(bad, m / "missing_node_input.onnx"), lenient={"inspect"})

    # external data
    ext = m / "ext_missing"
    _save_external(valid_model(), ext / "model.onnx")
    (ext / "weights.bin").unlink()
    model_case("external-data-missing", ext / "model.onnx")
    ext = m / "ext_truncated"
    _save_external(valid_model(), ext / "model.onnx")
    wb = ext / "weights.bin"
    wb.write_bytes(wb.read_bytes()[:1000])
    model_case("external-data-truncated", ext / "model.onnx")
    ext = m / "ext_escape"
    _save_external(valid_model(), ext / "model.onnx")
    (m / "outside.bin").write_bytes(
        (ext / "weights.bin").read_bytes()
    )  # exists: refused for escaping, not for missing
    (ext / "weights.bin").unlink()
    _save(
        _set_location(
            onnx.load(str(ext / "model.onnx"), load_external_data=False), "../outside.bin"
        ),
        ext / "model.onnx",
    )
    model_case("external-data-escapes", ext / "model.onnx")
    ext = m / "ext_absolute"
    _save_external(valid_model(), ext / "model.onnx")
    _save(
        _set_location(
            onnx.load(str(ext / "model.onnx"), load_external_data=False),
            str((ext / "weights.bin").resolve()),
        ),
        ext / "model.onnx",
    )
    model_case("external-data-absolute", ext / "model.onnx")
    ext = m / "ext_symlink"
    _save_external(valid_model(), ext / "model.onnx")
    (ext / "weights.bin").unlink()
    try:
        os.symlink(m / "outside.bin", ext / "weights.bin")
        model_case("external-data-symlink-escapes", ext / "model.onnx")
    except OSError:  # no symlinks on this file system
        pass
    ext = m / "ext_no_location"
    _save_external(valid_model(), ext / "model.onnx")
    bare = onnx.load(str(ext / "model.onnx"), load_external_data=False)
    for t in bare.graph.initializer:
        keep = [(e.key, e.value) for e in t.external_data if e.key != "location"]
        del t.external_data[:]
        for k, v in keep:
            e = t.external_data.add()
            e.key, e.value = k, v
    _save(bare, ext / "model.onnx")
    model_case("external-data-no-location", ext / "model.onnx")

    (m / "a_folder.onnx").mkdir(exist_ok=True)
    model_case("is-a-directory", m / "a_folder.onnx")
    model_case("does-not-exist", m / "missing.onnx")

    # --- data -----------------------------------------------------------------------------
    d = root / "data"

    def data_case(name, path, expect=2, note=""):
        cases.append(Case(name, "data", path, expect, frozenset(), note))

    x, labels = arrays[INPUT], arrays["labels"]
    data_case("not-npz", _write(d / "text.npz", b"x,y\n1,2\n"))
    data_case("empty-file", _write(d / "empty.npz", b""))
    data_case(
        "truncated",
        _write(d / "truncated.npz", data_p.read_bytes()[: len(data_p.read_bytes()) // 2]),
    )
    data_case("wrong-key", _npz(d / "wrong_key.npz", image=x, labels=labels))
    data_case(
        "wrong-dtype",
        _npz(d / "wrong_dtype.npz", **{INPUT: x.astype(np.float64), "labels": labels}),
    )
    data_case(
        "int-dtype", _npz(d / "int_dtype.npz", **{INPUT: x.astype(np.int32), "labels": labels})
    )
    data_case(
        "wrong-rank",
        _npz(d / "wrong_rank.npz", **{INPUT: x.reshape(SAMPLES, 4, 4), "labels": labels}),
    )
    data_case("wrong-shape", _npz(d / "wrong_shape.npz", **{INPUT: x[:, :15], "labels": labels}))
    data_case("scalar", _npz(d / "scalar.npz", **{INPUT: np.float32(1.0)}))
    data_case("zero-samples", _npz(d / "zero_samples.npz", **{INPUT: x[:0], "labels": labels[:0]}))
    data_case(
        "object-array",
        _npz(
            d / "object.npz",
            **{INPUT: np.array([x[0], "text", None], dtype=object), "labels": labels[:3]},
        ),
    )
    data_case(
        "string-array",
        _npz(d / "strings.npz", **{INPUT: np.array(["a"] * SAMPLES), "labels": labels}),
    )
    marker = str(root / PICKLE_MARKER)
    data_case("pickle-file", _write(d / "pickle.npz", pickle.dumps({INPUT: _Payload(marker)})))
    data_case(
        "pickle-in-npz",
        _npz_raw(
            d / "pickle_member.npz",
            {
                f"{INPUT}.npy": _npy_pickle_member(_Payload(marker)),
                "labels.npy": _npy_bytes(labels),
            },
        ),
    )
    data_case(
        "header-claims-64TiB",
        _npz_raw(
            d / "lying_header.npz",
            {
                f"{INPUT}.npy": _npy_header_only("<f4", (2**40, FEATURES)) + b"\0" * 64,
                "labels.npy": _npy_bytes(labels),
            },
        ),
    )
    data_case(
        "bad-labels-2d-float",
        _npz(d / "bad_labels.npz", **{INPUT: x, "labels": np.ones((SAMPLES, 2), np.float32)}),
    )
    data_case(
        "labels-count-differs", _npz(d / "labels_count.npz", **{INPUT: x, "labels": labels[:5]})
    )
    data_case("only-labels", _npz(d / "only_labels.npz", labels=labels))
    data_case("no-arrays", _npz(d / "no_arrays.npz"))
    data_case(
        "samples-disagree", _npz(d / "disagree.npz", **{INPUT: x, "other": x[:5], "labels": labels})
    )
    data_case("npy-not-npz", _write(d / "array.npz", _npy_bytes(x)))
    data_case("does-not-exist", d / "missing.npz")
    (d / "empty_dir").mkdir(parents=True, exist_ok=True)
    data_case("empty-folder", d / "empty_dir")
    _write(d / "txt_dir" / "readme.txt", b"no npz here")
    data_case("folder-without-npz", d / "txt_dir")
    _npz(d / "mixed_dir" / "a.npz", **{INPUT: x[:8], "labels": labels[:8]})
    _npz(d / "mixed_dir" / "b.npz", **{INPUT: x[8:16].astype(np.float64), "labels": labels[8:16]})
    data_case("folder-one-bad-dtype", d / "mixed_dir")
    _npz(d / "keys_dir" / "a.npz", **{INPUT: x[:8]})
    _npz(d / "keys_dir" / "b.npz", image=x[8:16])
    data_case("folder-keys-disagree", d / "keys_dir")
    _npz(d / "corrupt_dir" / "a.npz", **{INPUT: x[:8]})
    _write(d / "corrupt_dir" / "b.npz", b"PK\x03\x04 corrupt")
    data_case("folder-one-corrupt", d / "corrupt_dir")

    # --- recipes --------------------------------------------------------------------------
    r = root / "recipes"

    def recipe_case(name, path, expect=2, note=""):
        cases.append(Case(name, "recipe", path, expect, frozenset(), note))

    recipe_case("bad-toml", _write(r / "bad_toml.toml", b'name = "x"\n[[steps]\npass = simplify\n'))
    recipe_case("not-utf8", _write(r / "binary.toml", b"\xff\xfe\x00name = \x80\x81\n"))
    recipe_case(
        "unknown-step", _write(r / "unknown_step.toml", b'[[steps]]\npass = "no-such-pass"\n')
    )
    recipe_case(
        "unknown-parameter",
        _write(r / "unknown_param.toml", b'[[steps]]\npass = "fold-constants"\nmax_bites = 3\n'),
    )
    recipe_case(
        "wrong-parameter-type",
        _write(r / "wrong_type.toml", b'[[steps]]\npass = "fold-constants"\nmax_bytes = "lots"\n'),
    )
    recipe_case(
        "bad-parameter-value",
        _write(r / "bad_value.toml", b'[[steps]]\npass = "fold-constants"\nmax_bytes = -1\n'),
    )
    recipe_case("steps-not-tables", _write(r / "steps_not_tables.toml", b'steps = ["simplify"]\n'))
    recipe_case("step-without-pass", _write(r / "no_pass.toml", b"[[steps]]\nmax_bytes = 3\n"))
    recipe_case(
        "unknown-top-level-key",
        _write(
            r / "unknown_key.toml", b'name = "x"\nstepz = 1\n[[steps]]\npass = "remove-unused"\n'
        ),
    )
    recipe_case(
        "unknown-target",
        _write(r / "bad_target.toml", b'target = "tpu"\n[[steps]]\npass = "remove-unused"\n'),
    )
    recipe_case("does-not-exist", r / "missing.toml")
    recipe_case("no-steps", _write(r / "no_steps.toml", b'name = "empty"\n'), expect=None)
    return corpus


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _npy_header_only(descr: str, shape: tuple) -> bytes:
    from numpy.lib import format as npf

    buf = io.BytesIO()
    npf.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _npy_pickle_member(obj) -> bytes:
    """A .npy member holding an object array (numpy stores those as a pickle)."""
    arr = np.empty(1, dtype=object)
    arr[0] = obj
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


_SHARED: dict[str, Corpus] = {}


def shared_corpus() -> Corpus:
    """One corpus per process, in a temporary folder removed at exit (the test modules
    parametrize over its cases at collection time)."""
    if "corpus" not in _SHARED:
        import atexit
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="onnxopt-corpus-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        _SHARED["corpus"] = build_corpus(tmp / "corpus")
    return _SHARED["corpus"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python tests/reliability/corpus.py OUT_DIR", file=sys.stderr)
        return 2
    corpus = build_corpus(argv[0])
    for c in corpus.cases:
        expect = "2" if c.expect == 2 else "graceful"
        lenient = f" (graceful for {', '.join(sorted(c.lenient))})" if c.lenient else ""
        print(
            f"{c.kind:6s} {c.name:32s} expect {expect}{lenient}  {c.path.relative_to(corpus.root)}"
        )
    kinds = {k: len(corpus.of_kind(k)) for k in ("model", "data", "recipe")}
    print(f"{len(corpus.cases)} cases: " + ", ".join(f"{v} {k}" for k, v in kinds.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
