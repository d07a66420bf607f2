"""Two onnxopt processes writing the same output path leave one complete, valid file.

- ``onnxopt simplify`` twice at once, on two different models, to one ``-o`` (with and
  without external data): both exit 0 and the output is exactly one of the two results,
  loadable with its external data, with no temporary or orphaned data file next to it.
- Two writers saving different models to one path in a tight loop (the library's
  ``save_model``), which makes the interleavings that matter likely: a writer must never
  delete the data file that the other's model, now at the path, references.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import onnx
import pytest

from onnxopt import io as oio

from .harness import ROOT, assert_valid_model
from .test_atomic import big_model, check_target, weights_digest


def _folder_state(folder, target):
    model = onnx.load(str(target), load_external_data=False)
    refs = {
        e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"
    }
    others = sorted(
        p.name for p in folder.iterdir() if p.name != target.name and p.name not in refs
    )
    return refs, others


@pytest.mark.parametrize("external", [False, True], ids=["single-file", "external-data"])
def test_two_simplify_processes_same_output(tmp_path, external):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    oio.save_model(big_model(1, 256), a)
    oio.save_model(big_model(2, 256), b)
    outdir = tmp_path / "out"
    outdir.mkdir()
    target = outdir / "model.onnx"
    extra = ["--external-data"] if external else []
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "onnxopt",
                "-q",
                "simplify",
                str(src),
                "-o",
                str(target),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for src in (a, b)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert "Traceback" not in err
    assert_valid_model(target)
    digest = check_target(
        target, {weights_digest(big_model(1, 256)), weights_digest(big_model(2, 256))}
    )
    assert digest
    refs, others = _folder_state(outdir, target)
    assert bool(refs) == external
    assert others == [], f"left next to the output: {others}"


_WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from reliability.test_atomic import big_model
    from onnxopt.io import save_model
    target, seed, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    models = [big_model(seed, 128), big_model(seed + 10, 128)]
    for i in range(rounds):
        save_model(models[i % 2], target, external_data=True)
    """
)


def test_two_writers_race_on_one_path(tmp_path):
    target = tmp_path / "model.onnx"
    code = _WRITER.format(tests=str(ROOT / "tests"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(target), str(seed), "60"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    allowed = {weights_digest(big_model(s, 128)) for s in (1, 11, 2, 12)}
    check_target(target, allowed)
    refs, others = _folder_state(tmp_path, target)
    assert len(refs) == 1
    assert others == [], f"orphaned or temporary files: {others}"
