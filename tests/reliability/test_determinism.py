"""Determinism: the same command on the same inputs writes byte-identical files.

Every command that writes a model runs in two separate processes with different
``PYTHONHASHSEED`` values (so that any dependence on set / dict-of-str iteration order,
``id()``, temporary names, timestamps or unseeded randomness shows), and the output model
(and its external-data file, when there is one) must be byte-identical across the two.

``optimize`` chooses its candidate by timing, so its run uses a recipe that leaves one
candidate (``candidates = ["fp32"]``, ``min_ratio`` low enough that timing noise cannot
reject it) and no session-option search (``session_options = false``: the options it
carries are a timing choice too): what is compared is everything else it writes (the
simplified model and its provenance, which must not carry timings).  With more than one
candidate the bytes are the same only when the same candidate wins.  ``ensemble`` runs
with ``--no-parallel`` for the same reason (whether it carries parallel-execution options
is decided by timing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .corpus import shared_corpus
from .harness import ROOT, command_problem, snapshot

MODELS = ROOT / "models"
CORPUS = shared_corpus()

OPT_RECIPE = """name = "fixed-fp32"
target = "cpu"
[[steps]]
pass = "simplify"
[optimize]
candidates = ["fp32"]
min_ratio = 0.01
time_budget = 0.2
session_options = false
"""


def jobs(out: Path, recipe: Path) -> dict[str, list[str]]:
    m = MODELS
    return {
        "simplify": ["simplify", m / "digits_cnn.onnx", "-o", out / "simplify.onnx"],
        "simplify-external": [
            "simplify",
            m / "digits_mlp.onnx",
            "-o",
            out / "simplify-ext.onnx",
            "--external-data",
        ],
        "run": ["run", "simplify", m / "digits_resnet.onnx", "-o", out / "run.onnx"],
        "quantize": [
            "quantize",
            m / "digits_mlp.onnx",
            "-o",
            out / "quantize.onnx",
            "--mode",
            "static",
            "--calibration",
            m / "digits_calib.npz",
            "--allow-slower",
        ],
        "quantize-dynamic": [
            "quantize",
            m / "digits_mlp.onnx",
            "-o",
            out / "quantize-dyn.onnx",
            "--mode",
            "dynamic",
            "--allow-slower",
        ],
        "prune": [
            "prune",
            m / "digits_cnn.onnx",
            "-o",
            out / "prune.onnx",
            "--method",
            "channels",
            "--ratio",
            "0.3",
            "--calibration",
            m / "digits_calib.npz",
        ],
        "prune-magnitude": [
            "prune",
            m / "digits_mlp.onnx",
            "-o",
            out / "prune-mag.onnx",
            "--method",
            "magnitude",
            "--sparsity",
            "0.5",
        ],
        "ensemble": [
            "ensemble",
            m / "digits_mlp.onnx",
            m / "digits_cnn.onnx",
            m / "digits_resnet.onnx",
            "-o",
            out / "ensemble.onnx",
            "--fusion",
            "stack",
            "--fit",
            m / "digits_calib.npz",
            "--no-parallel",
        ],
        "ensemble-vote": [
            "ensemble",
            m / "digits_mlp.onnx",
            m / "digits_cnn.onnx",
            m / "digits_resnet.onnx",
            "-o",
            out / "ensemble-vote.onnx",
            "--fusion",
            "vote",
            "--no-parallel",
        ],
        "chain": ["chain", CORPUS.model, CORPUS.head, "-o", out / "chain.onnx"],
        "adapt": [
            "adapt",
            m / "digits_cnn04.onnx",
            "-o",
            out / "adapt.onnx",
            "--data",
            m / "digits_calib.npz",
        ],
        "optimize": [
            "optimize",
            m / "digits_mlp.onnx",
            "-o",
            out / "optimize.onnx",
            "--recipe",
            recipe,
            "--time-budget",
            "0.2",
        ],
    }


def _command(job: str) -> str:
    return job.split("-")[0]


_DRIVER = textwrap.dedent(
    """
    import json, sys
    from onnxopt.cli.main import cli
    spec = json.load(open(sys.argv[1]))
    codes = {}
    for name, argv in spec.items():
        try:
            cli.main(args=["-q", *argv], prog_name="onnxopt", standalone_mode=False)
            codes[name] = 0
        except SystemExit as exc:
            codes[name] = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:
            codes[name] = f"{type(exc).__name__}: {exc}"
    json.dump(codes, open(sys.argv[2], "w"))
    """
)


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    """Each available job, run once in each of two processes (hash seeds 1 and 2, in
    parallel); returns (root, {job: (code_a, code_b)}, skipped)."""
    root = tmp_path_factory.mktemp("determinism")
    recipe = root / "fixed-fp32.toml"
    recipe.write_text(OPT_RECIPE)
    skipped = {}
    procs = []
    for tag, seed in (("a", "1"), ("b", "2")):
        out = root / tag
        out.mkdir()
        spec = {}
        for name, argv in jobs(out, recipe).items():
            problem = command_problem(_command(name))
            if problem:
                skipped[name] = problem
                continue
            spec[name] = [str(a) for a in argv]
        (root / f"{tag}.json").write_text(json.dumps(spec))
        env = {**os.environ, "PYTHONHASHSEED": seed}
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _DRIVER,
                    str(root / f"{tag}.json"),
                    str(root / f"{tag}.codes.json"),
                ],
                env=env,
                cwd=out,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    errs = [p.communicate(timeout=900)[1] for p in procs]
    for p, err in zip(procs, errs, strict=True):
        assert p.returncode == 0, err
    codes_a = json.loads((root / "a.codes.json").read_text())
    codes_b = json.loads((root / "b.codes.json").read_text())
    return root, {k: (codes_a.get(k), codes_b.get(k)) for k in codes_a}, skipped, errs


@pytest.mark.parametrize("job", list(jobs(Path("."), Path("."))))
def test_byte_identical_across_processes(twice, job):
    root, codes, skipped, errs = twice
    if job in skipped:
        pytest.skip(skipped[job])
    assert codes[job] == (0, 0), f"{job}: exit codes {codes[job]}\n{errs[0][-2000:]}"
    a, b = snapshot(root / "a"), snapshot(root / "b")
    stem = jobs(Path("."), Path("."))[job][jobs(Path("."), Path("."))[job].index("-o") + 1].stem
    files_a = {k: v for k, v in a.items() if k.startswith(stem + ".")}
    files_b = {k: v for k, v in b.items() if k.startswith(stem + ".")}
    assert files_a, f"{job} wrote nothing"
    assert files_a == files_b, (
        f"{job}: outputs differ between two runs: {sorted(set(files_a.items()) ^ set(files_b.items()))}"
    )


def quick_jobs(out: Path, recipe: Path) -> dict[str, list]:
    """Every writing command on the corpus' tiny models (fast enough for the default run)."""
    c = CORPUS
    return {
        "simplify": ["simplify", c.model, "-o", out / "simplify.onnx"],
        "run": ["run", c.recipe, c.model, "-o", out / "run.onnx"],
        "quantize": [
            "quantize",
            c.model,
            "-o",
            out / "quantize.onnx",
            "--mode",
            "static",
            "--calibration",
            c.data,
            "--allow-slower",
        ],
        "prune": [
            "prune",
            c.model,
            "-o",
            out / "prune.onnx",
            "--method",
            "channels",
            "--ratio",
            "0.25",
            "--calibration",
            c.data,
        ],
        "ensemble": [
            "ensemble",
            c.model,
            c.model,
            "-o",
            out / "ensemble.onnx",
            "--fusion",
            "stack",
            "--fit",
            c.data,
            "--no-parallel",
        ],
        "chain": ["chain", c.model, c.head, "-o", out / "chain.onnx"],
        "adapt": ["adapt", c.model, "-o", out / "adapt.onnx", "--data", c.data],
        "optimize": [
            "optimize",
            c.model,
            "-o",
            out / "optimize.onnx",
            "--recipe",
            recipe,
            "--time-budget",
            "0.2",
        ],
    }


@pytest.mark.parametrize("job", list(quick_jobs(Path("."), Path("."))))
def test_twice_in_process(job, tmp_path):
    """The default-suite version: each command twice in this process on tiny inputs,
    byte-identical outputs (the cross-process run above also varies the hash seed)."""
    from .harness import run_cli

    problem = command_problem(_command(job))
    if problem:
        pytest.skip(problem)
    recipe = tmp_path / "fixed-fp32.toml"
    recipe.write_text(OPT_RECIPE)
    snaps = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        out.mkdir()
        res = run_cli(quick_jobs(out, recipe)[job])
        assert res.exit_code == 0, res.describe()
        snaps.append(snapshot(out))
    assert snaps[0], f"{job} wrote nothing"
    assert snaps[0] == snaps[1], f"{job}: outputs differ between two runs"
