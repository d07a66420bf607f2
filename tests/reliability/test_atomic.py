"""Atomic writes: a failure or a kill at any moment of ``save_model`` leaves at the target
path either the old complete model (with its external data) or the new complete one.

- A child process saves two different models to one path in a loop (with and without
  external data).  The parent freezes it (SIGSTOP) at random moments and checks the
  target — what a kill at that instant would leave, since bytes still in the child's
  buffers never reach the file system either way — then lets it go on, and finally
  SIGKILLs it and checks again.  Hidden ``.NAME.*.tmp`` files of the killed writer are
  the only litter allowed.
- Exceptions injected into the writer (while writing the data, on renaming the data file,
  on renaming the model file between the two) leave the old model and its data intact and
  no temporary or orphaned data file.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt import io as oio
from onnxopt.errors import UsageError

from .harness import ROOT


def big_model(seed: int, rows: int = 512) -> onnx.ModelProto:
    """x[N, 256] -> MatMul(w1 [256, rows]) -> MatMul(w2 [rows, 8]); ~``rows`` KiB of weights."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((256, rows)).astype(np.float32)
    w2 = rng.standard_normal((rows, 8)).astype(np.float32)
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("MatMul", ["h", "w2"], ["y"]),
        ],
        f"big{seed}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def weights_digest(model: onnx.ModelProto) -> str:
    h = hashlib.sha256()
    for t in model.graph.initializer:
        h.update(numpy_helper.to_array(t).tobytes())
    return h.hexdigest()


def check_target(path: Path, allowed: set[str]) -> str:
    """The model at ``path`` loads completely (external data present and long enough) and
    its weights are exactly one of ``allowed``."""
    assert path.is_file(), "the target disappeared"
    model = oio.load_model(path)
    onnx.checker.check_model(model)
    digest = weights_digest(model)
    assert digest in allowed, "the target holds weights of neither the old nor the new model"
    return digest


def litter(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


_CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from reliability.test_atomic import big_model
    from onnxopt.io import save_model
    target, external = sys.argv[1], sys.argv[2] == "1"
    models = [big_model(1, {rows}), big_model(2, {rows})]
    print("ready", flush=True)
    i = 0
    while True:
        save_model(models[i % 2], target, external_data=external)
        i += 1
    """
)


@pytest.mark.parametrize("external", [True, False], ids=["external-data", "single-file"])
def test_freeze_and_kill_mid_write(tmp_path, external):
    rows = 2048  # 2 MiB + 64 KiB of weights per model: each save takes a few milliseconds
    target = tmp_path / "out.onnx"
    oio.save_model(big_model(0, rows), target, external_data=external)
    allowed = {weights_digest(big_model(s, rows)) for s in (0, 1, 2)}
    code = _CHILD.format(tests=str(ROOT / "tests"), rows=rows)
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(target), "1" if external else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    seen = set()
    try:
        assert child.stdout.readline().strip() == "ready"
        rng = random.Random(0)
        for _ in range(25):
            time.sleep(rng.uniform(0.0, 0.03))
            child.send_signal(signal.SIGSTOP)
            try:
                seen.add(check_target(target, allowed))
            finally:
                child.send_signal(signal.SIGCONT)
        time.sleep(rng.uniform(0.0, 0.03))
        child.kill()
        child.wait(timeout=30)
        seen.add(check_target(target, allowed))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    assert len(seen) >= 2, (
        "the child never completed a save while observed: the test observed nothing"
    )
    # what a SIGKILL may leave: hidden temporary files, and data files no model references
    model = onnx.load(str(target), load_external_data=False)
    refs = {
        e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"
    }
    for name in litter(tmp_path, {"out.onnx", *refs}):
        assert (
            name.startswith(".out.onnx.")
            and name.endswith(".tmp")
            or (name.startswith("out.onnx.") and name.endswith(".data"))
        ), f"unexpected file {name}"


def _saved_pair(tmp_path) -> tuple[Path, str, dict]:
    target = tmp_path / "out.onnx"
    old = big_model(0)
    oio.save_model(old, target, external_data=True)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    return target, weights_digest(old), before


def _assert_old_intact(tmp_path, target, old_digest, before):
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    assert after == before, f"files changed: {sorted(set(after) ^ set(before))}"
    assert check_target(target, {old_digest}) == old_digest


class Boom(RuntimeError):
    pass


def test_exception_between_data_and_model(tmp_path, monkeypatch):
    """The data file is renamed into place, then renaming the model fails."""
    target, old_digest, before = _saved_pair(tmp_path)
    real_replace = os.replace

    def replace(src, dst, *a, **kw):
        if Path(dst).name == target.name:
            raise Boom("disk gone between the data file and the model")
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Boom):
        oio.save_model(big_model(1), target, external_data=True)
    monkeypatch.undo()
    _assert_old_intact(tmp_path, target, old_digest, before)


def test_exception_renaming_data(tmp_path, monkeypatch):
    target, old_digest, before = _saved_pair(tmp_path)
    real_replace = os.replace

    def replace(src, dst, *a, **kw):
        if Path(dst).name.endswith(".data"):
            raise Boom("rename of the data file fails")
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Boom):
        oio.save_model(big_model(1), target, external_data=True)
    monkeypatch.undo()
    _assert_old_intact(tmp_path, target, old_digest, before)


def test_exception_while_writing_data(tmp_path, monkeypatch):
    """The writer fails half-way through the data file (disk full)."""
    target, old_digest, before = _saved_pair(tmp_path)
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(UsageError, match="cannot write: No space left on device"):  # exit 2, one line
        oio.save_model(big_model(1), target, external_data=True)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert calls["n"] >= 1
    _assert_old_intact(tmp_path, target, old_digest, before)


def test_exception_while_writing_single_file(tmp_path, monkeypatch):
    target = tmp_path / "out.onnx"
    old = big_model(0)
    oio.save_model(old, target)
    before = target.read_bytes()
    monkeypatch.setattr(
        os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device"))
    )
    with pytest.raises(UsageError, match="cannot write: No space left on device"):
        oio.save_model(big_model(1), target)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert litter(tmp_path, {"out.onnx"}) == []


def test_save_keeps_the_in_memory_model(tmp_path):
    """Saving with external data must not leave the caller's proto without its weights."""
    m = big_model(3)
    digest = weights_digest(m)
    oio.save_model(m, tmp_path / "a.onnx", external_data=True)
    assert weights_digest(m) == digest
    assert all(t.data_location != TensorProto.EXTERNAL for t in m.graph.initializer)


def test_resave_over_external_removes_stale_data(tmp_path):
    """Saving a new model over one with external data removes the old data file (only
    after the new model is in place), whether the new one is external or not."""
    target = tmp_path / "out.onnx"
    oio.save_model(big_model(0), target, external_data=True)
    oio.save_model(big_model(1), target, external_data=True)
    assert len([p for p in tmp_path.iterdir() if p.suffix == ".data"]) == 1
    check_target(target, {weights_digest(big_model(1))})
    oio.save_model(big_model(2), target, external_data=False)
    assert litter(tmp_path, {"out.onnx"}) == []
    check_target(target, {weights_digest(big_model(2))})


def test_cli_failure_leaves_existing_output(tmp_path):
    """A command that fails does not touch a file already at -o (from an earlier run)."""
    from .corpus import build_corpus
    from .harness import assert_clean_failure, run_cli

    c = build_corpus(tmp_path / "c")
    out = tmp_path / "out.onnx"
    oio.save_model(big_model(0), out)
    before = out.read_bytes()
    bad = next(case for case in c.cases if case.name == "duplicate-node-outputs")
    assert_clean_failure(run_cli(["simplify", bad.path, "-o", out]), (2,))
    assert out.read_bytes() == before


def test_refuses_to_overwrite_input_external_data(tmp_path):
    """-o naming the input's external-data file is refused like -o naming the input."""
    src = tmp_path / "in.onnx"
    oio.save_model(big_model(0), src, external_data=True)
    data = next(p for p in tmp_path.iterdir() if p.suffix == ".data")
    with pytest.raises(UsageError):
        oio.check_output_path(data, [src])
    assert src.is_file() and data.is_file()


@pytest.mark.parametrize("external", [True, False], ids=["external-data", "single-file"])
def test_sigkill_at_random_moments(tmp_path, external):
    """Ten real SIGKILLs of a writer, each at a random moment of its save loop."""
    rows = 2048
    target = tmp_path / "out.onnx"
    oio.save_model(big_model(0, rows), target, external_data=external)
    allowed = {weights_digest(big_model(s, rows)) for s in (0, 1, 2)}
    code = _CHILD.format(tests=str(ROOT / "tests"), rows=rows)
    rng = random.Random(1)
    for _ in range(10):
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(target), "1" if external else "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            child.kill()
            child.wait(timeout=30)
        check_target(target, allowed)
