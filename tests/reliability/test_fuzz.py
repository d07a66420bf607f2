"""Property-based fuzzing (hypothesis, bounded example counts) of model bytes and DATA files.

Properties, for every generated input and every command run on it:
- no traceback; the exit code is 0, 2 or 3;
- a failure prints exactly one ``error:`` line and leaves no output file;
- a success writes a model that passes the checker and loads in ONNX Runtime;
- the input file is byte-identical afterwards;
- DATA that is accepted really fits the model (float32 ``[n >= 1, 16]``): bad data is
  never silently used.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .corpus import FEATURES, INPUT, valid_arrays, valid_model
from .harness import assert_clean_failure, assert_valid_model, run_cli, snapshot

# The default run is bounded and derandomized (the same examples every run, < 15 s).  For a
# campaign: ONNXOPT_FUZZ_EXAMPLES=2000 pytest tests/reliability/test_fuzz.py (random seeds).
_CAMPAIGN = int(os.environ.get("ONNXOPT_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_CAMPAIGN or 40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not _CAMPAIGN,
    database=None,
)
FUZZ_SLOW = settings(
    max_examples=_CAMPAIGN or 15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not _CAMPAIGN,
    database=None,
)

GOOD = valid_model().SerializeToString(deterministic=True)


def _check(outcome, inp: Path, before: str, out: Path | None, codes=(0, 2, 3)):
    assert not outcome.traceback, outcome.describe()
    assert outcome.exit_code in codes, outcome.describe()
    assert hashlib.sha256(inp.read_bytes()).hexdigest() == before, "input modified"
    if outcome.exit_code != 0:
        assert_clean_failure(outcome, codes)
        if out is not None:
            assert snapshot(out.parent) == {}, f"left behind: {sorted(snapshot(out.parent))}"
    elif out is not None:
        assert_valid_model(out)


# --- model bytes ----------------------------------------------------------------------------


@st.composite
def mutated_bytes(draw):
    """Truncation, bit flips, deleted / inserted / overwritten spans of a valid model."""
    data = bytearray(GOOD)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "flip", "delete", "insert", "overwrite"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if op == "truncate":
            data = data[:pos]
        elif op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos : pos + len(chunk)] = chunk
    return bytes(data)


def _mutations():
    """Structured edits of a valid model that keep it parseable (what exporters get wrong)."""

    def op_type(m, d):
        m.graph.node[d.draw(st.integers(0, len(m.graph.node) - 1))].op_type = d.draw(
            st.sampled_from(["Relu", "Sigmoid", "Identity", "Foo", "Conv", "MatMul", ""])
        )

    def drop_node(m, d):
        del m.graph.node[d.draw(st.integers(0, len(m.graph.node) - 1))]

    def rename_input(m, d):
        n = m.graph.node[d.draw(st.integers(0, len(m.graph.node) - 1))]
        if n.input:
            n.input[d.draw(st.integers(0, len(n.input) - 1))] = d.draw(
                st.sampled_from(["x", "w1", "h2", "logits", "ghost", ""])
            )

    def init_dtype(m, d):
        m.graph.initializer[
            d.draw(st.integers(0, len(m.graph.initializer) - 1))
        ].data_type = d.draw(st.sampled_from([0, 2, 6, 7, 10, 11, 16, 99]))

    def init_dims(m, d):
        t = m.graph.initializer[d.draw(st.integers(0, len(m.graph.initializer) - 1))]
        t.dims[:] = d.draw(st.lists(st.integers(-2, 64), max_size=3))

    def input_dims(m, d):
        shape = m.graph.input[0].type.tensor_type.shape
        del shape.dim[:]
        for v in d.draw(st.lists(st.integers(-1, 20), max_size=4)):
            dim = shape.dim.add()
            if v >= 0:
                dim.dim_value = v
            else:
                dim.dim_param = "N"

    def input_dtype(m, d):
        m.graph.input[0].type.tensor_type.elem_type = d.draw(
            st.sampled_from([0, 2, 6, 7, 9, 10, 11, 13])
        )

    def opset(m, d):
        m.opset_import[0].version = d.draw(st.sampled_from([1, 7, 11, 13, 21, 23, 30]))

    def ir(m, d):
        m.ir_version = d.draw(st.sampled_from([1, 3, 4, 7, 10, 11, 12]))

    def add_attribute(m, d):
        n = m.graph.node[d.draw(st.integers(0, len(m.graph.node) - 1))]
        n.attribute.append(
            onnx.helper.make_attribute(
                d.draw(st.sampled_from(["axis", "alpha", "bogus"])), d.draw(st.integers(-3, 3))
            )
        )

    def duplicate_initializer(m, d):
        m.graph.initializer.append(
            m.graph.initializer[d.draw(st.integers(0, len(m.graph.initializer) - 1))]
        )

    def extra_output(m, d):
        m.graph.output.append(
            onnx.helper.make_tensor_value_info(
                d.draw(st.sampled_from(["h1", "h2", "w1", "x", "nothing"])),
                onnx.TensorProto.FLOAT,
                None,
            )
        )

    return [
        op_type,
        drop_node,
        rename_input,
        init_dtype,
        init_dims,
        input_dims,
        input_dtype,
        opset,
        ir,
        add_attribute,
        duplicate_initializer,
        extra_output,
    ]


@st.composite
def mutated_models(draw):
    m = valid_model()
    for fn in draw(st.lists(st.sampled_from(_mutations()), min_size=1, max_size=3)):
        fn(m, _Drawer(draw))
    return m.SerializeToString()


class _Drawer:
    """Hands a mutation hypothesis' ``draw``."""

    def __init__(self, draw):
        self.draw = draw


def _run_on_model(data: bytes, commands):
    with tempfile.TemporaryDirectory(prefix="onnxopt-fuzz-") as tmp:
        tmp = Path(tmp)
        inp = tmp / "in" / "model.onnx"
        inp.parent.mkdir()
        inp.write_bytes(data)
        ref = tmp / "ref" / "ref.onnx"
        ref.parent.mkdir()
        ref.write_bytes(GOOD)
        before = hashlib.sha256(data).hexdigest()
        for cmd in commands:
            out = tmp / "out" / "out.onnx"
            out.parent.mkdir(exist_ok=True)
            if cmd == "inspect":
                _check(run_cli(["inspect", inp, "--json"]), inp, before, None, codes=(0, 2))
            elif cmd == "verify":
                _check(run_cli(["verify", ref, inp]), inp, before, None)
            elif cmd == "simplify":
                _check(run_cli(["simplify", inp, "-o", out]), inp, before, out)
            elif cmd == "run":
                _check(run_cli(["run", "simplify", inp, "-o", out]), inp, before, out)
            if out.exists():
                out.unlink()
            assert snapshot(inp.parent) == {"model.onnx": before}, "files added next to the input"


@FUZZ
@given(mutated_bytes())
def test_model_bytes_inspect_verify(data):
    _run_on_model(data, ["inspect", "verify"])


@FUZZ_SLOW
@given(mutated_bytes())
def test_model_bytes_simplify(data):
    _run_on_model(data, ["simplify"])


@FUZZ
@given(mutated_models())
def test_model_structure_inspect_verify(data):
    _run_on_model(data, ["inspect", "verify"])


@FUZZ_SLOW
@given(mutated_models())
def test_model_structure_simplify_run(data):
    _run_on_model(data, ["simplify", "run"])


# --- DATA -----------------------------------------------------------------------------------

DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8, np.bool_]


@st.composite
def data_files(draw):
    """An .npz (or folder of .npz) with plausible-but-maybe-wrong keys, dtypes and shapes."""
    n = draw(st.integers(0, 6))
    arrays = {}
    for key in draw(
        st.lists(
            st.sampled_from([INPUT, INPUT, "labels", "y", "image"]),
            min_size=0,
            max_size=3,
            unique=True,
        )
    ):
        if key == "labels":
            dtype = draw(st.sampled_from([np.int64, np.int32, np.float32]))
            shape = draw(st.sampled_from([(n,), (n, 1), (max(n - 1, 0),), ()]))
        else:
            dtype = draw(st.sampled_from(DTYPES))
            shape = draw(
                st.sampled_from(
                    [(n, FEATURES), (n, FEATURES), (n, FEATURES - 1), (n,), (n, FEATURES, 1), ()]
                )
            )
        arrays[key] = (
            (np.arange(int(np.prod(shape)) if shape else 1) % 3).astype(dtype).reshape(shape)
        )
    layout = draw(st.sampled_from(["npz", "npz", "folder", "bytes"]))
    return layout, arrays, draw(st.binary(max_size=64))


def _write_data(tmp: Path, layout, arrays, junk) -> Path:
    if layout == "bytes":  # a valid .npz with bytes overwritten
        buf = io.BytesIO()
        np.savez(buf, **valid_arrays(4))
        data = bytearray(buf.getvalue())
        pos = (len(junk) * 7919) % len(data)
        data[pos : pos + len(junk)] = junk
        p = tmp / "data.npz"
        p.write_bytes(bytes(data))
        return p
    if layout == "folder":
        d = tmp / "feeds"
        d.mkdir()
        for i in range(2):
            with open(d / f"f{i}.npz", "wb") as fh:
                np.savez(fh, **arrays)
        return d
    p = tmp / "data.npz"
    with open(p, "wb") as fh:
        np.savez(fh, **arrays)
    return p


def _fits(path: Path) -> bool:
    """Whether DATA that a command accepted is float32 [n >= 1, 16] with sane labels."""
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as z:
                x = z[INPUT]
                labels = z["labels"] if "labels" in z.files else None
        except (KeyError, ValueError, OSError, zipfile.BadZipFile):
            return False
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != FEATURES or x.shape[0] < 1:
            return False
        if labels is not None and (
            labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(x)
        ):
            return False
    return True


@FUZZ
@given(data_files())
def test_data_files(spec):
    layout, arrays, junk = spec
    with tempfile.TemporaryDirectory(prefix="onnxopt-fuzz-") as tmp:
        tmp = Path(tmp)
        model = tmp / "model.onnx"
        model.write_bytes(GOOD)
        data = _write_data(tmp, layout, arrays, junk)
        before = snapshot(tmp)
        for argv in (
            ["verify", model, model, "--data", data],
            ["run", "simplify", model, "-o", tmp / "out" / "out.onnx", "--calibration", data],
        ):
            outcome = run_cli(argv)
            assert not outcome.traceback, outcome.describe()
            assert outcome.exit_code in (0, 2), outcome.describe()
            assert snapshot(tmp) == before or outcome.exit_code == 0, "a failure left files behind"
            if outcome.exit_code == 2:
                assert_clean_failure(outcome, (2,), names=data.name)
            else:
                assert _fits(data), (
                    f"accepted DATA that does not fit the model: {layout} {[(k, v.dtype, v.shape) for k, v in arrays.items()]}"
                )
            out = tmp / "out" / "out.onnx"
            if out.exists():
                assert_valid_model(out)
                out.unlink()
        snap = {k: v for k, v in snapshot(tmp).items() if not k.startswith("out")}
        assert snap == {k: v for k, v in before.items() if not k.startswith("out")}, (
            "inputs modified"
        )
