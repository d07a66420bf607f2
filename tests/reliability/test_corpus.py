"""Every command on every applicable case of the malformed-input corpus (``corpus.py``).

For each (command, case): exit 2 (or, for "graceful" cases, 0 with a valid output or 2/3),
exactly one stderr line starting with ``error:`` that names the file at fault, no
traceback, no output file (nor temporary file, nor anything in the working directory), and
every corpus file byte-identical before and after.  In-process with ``CliRunner`` for all
cases; as real subprocesses for a sample per command (ONNX Runtime's C++ logging and
Python warnings only show on the real stderr); the whole corpus as subprocesses is the
``slow`` sweep (``sweep.py``).

Each command's argument lists are proven right by a control run on the valid companions
(exit 0, valid output); otherwise an option typo would make every case "fail cleanly".
"""

from __future__ import annotations

import pytest

from .corpus import PICKLE_MARKER, build_corpus, shared_corpus
from .harness import (
    SPECS,
    assert_clean_failure,
    assert_valid_model,
    require_command,
    run_cli,
    run_subprocess,
    snapshot,
)

CORPUS = shared_corpus()
BASELINE = snapshot(CORPUS.root)
CASES = [
    (cmd, case)
    for cmd, spec in SPECS.items()
    for case in CORPUS.cases
    if getattr(spec, case.kind) is not None
]


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    out.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return out, cwd


def _assert_corpus_untouched():
    after = snapshot(CORPUS.root)
    if after != BASELINE:
        changed = sorted(k for k in set(after) | set(BASELINE) if after.get(k) != BASELINE.get(k))
        build_corpus(CORPUS.root)  # restore for the next tests
        pytest.fail(f"inputs modified or files added next to them: {changed}")
    assert not (CORPUS.root / PICKLE_MARKER).exists(), "a pickle in DATA was unpickled"


def judge(outcome, case, command, out, cwd):
    """The contract for one invocation on one corpus case."""
    _assert_corpus_untouched()
    assert snapshot(cwd) == {}, f"files written to the working directory: {sorted(snapshot(cwd))}"
    expect = case.expected_for(command)
    if expect is not None or outcome.exit_code != 0:
        codes = (expect,) if expect is not None else (2, 3)
        # a refused case names the file at fault (a graceful one may blame its companion,
        # e.g. verify's other model, or a step when verification fails)
        line = assert_clean_failure(
            outcome, codes, names=case.path.name if expect is not None else None
        )
        assert "--help')" not in line, (
            f"a click usage error, not the case's error (wrong options in SPECS?): {line}"
        )
        assert snapshot(out) == {}, f"files left after a failure: {sorted(snapshot(out))}"
        return
    assert not outcome.traceback, outcome.describe()
    written = SPECS[command].writes
    if written and written.endswith(".onnx"):
        assert_valid_model(out / written)


@pytest.mark.parametrize(
    ("command", "case"), CASES, ids=[f"{cmd}-{case.kind}-{case.name}" for cmd, case in CASES]
)
def test_case(command, case, dirs):
    require_command(command)
    out, cwd = dirs
    for argv in getattr(SPECS[command], case.kind)(CORPUS, case.path, out):
        outcome = run_cli(argv)
        judge(outcome, case, command, out, cwd)
        for f in out.iterdir():  # a graceful success: clear for the next variant
            f.unlink()


CONTROLS = [
    (cmd, kind)
    for cmd, spec in SPECS.items()
    for kind in ("model", "data", "recipe")
    if getattr(spec, kind) is not None
]


@pytest.mark.parametrize(("command", "kind"), CONTROLS, ids=[f"{c}-{k}" for c, k in CONTROLS])
def test_control_valid_inputs(command, kind, dirs):
    """The same argument lists with the valid companions succeed: the corpus tests above
    exercise the case, not a typo in an option name."""
    require_command(command)
    out, cwd = dirs
    valid = {"model": CORPUS.model, "data": CORPUS.data, "recipe": CORPUS.recipe}[kind]
    for argv in getattr(SPECS[command], kind)(CORPUS, valid, out):
        outcome = run_cli(argv)
        assert outcome.exit_code == 0 and not outcome.traceback, f"{argv}\n{outcome.describe()}"
        written = SPECS[command].writes
        if written and written.endswith(".onnx"):
            assert_valid_model(out / written)
        for f in out.iterdir():
            f.unlink()
    _assert_corpus_untouched()
    assert snapshot(cwd) == {}


WRITERS = [
    cmd for cmd, spec in SPECS.items() if spec.writes == "out.onnx" and spec.model is not None
]


@pytest.mark.parametrize("command", WRITERS)
def test_output_is_the_input(command, dirs):
    """``-o`` naming the input model is refused before any work; the input is untouched."""
    require_command(command)
    out, cwd = dirs
    target = CORPUS.model if command != "chain" else CORPUS.model
    argv = SPECS[command].model(CORPUS, CORPUS.model, out)[0]
    argv = [str(target) if str(a) == str(out / "out.onnx") else a for a in argv]
    outcome = run_cli(argv)
    assert_clean_failure(outcome, (2,), names=CORPUS.model.name)
    _assert_corpus_untouched()


@pytest.mark.parametrize("command", WRITERS)
def test_output_is_a_folder(command, dirs):
    require_command(command)
    out, cwd = dirs
    argv = [
        str(out) if str(a) == str(out / "out.onnx") else a
        for a in SPECS[command].model(CORPUS, CORPUS.model, out)[0]
    ]
    outcome = run_cli(argv)
    assert_clean_failure(outcome, (2,))
    assert snapshot(out) == {}
    _assert_corpus_untouched()


REPORTERS = ["simplify", "run", "quantize", "prune", "ensemble", "chain", "optimize", "adapt"]


@pytest.mark.parametrize("command", REPORTERS)
def test_report_is_the_input(command, dirs):
    """``--report`` naming the input model is refused like ``-o`` naming it: exit 2, the
    input untouched, nothing written (a JSON report over a model would destroy it)."""
    require_command(command)
    out, cwd = dirs
    argv = list(SPECS[command].model(CORPUS, CORPUS.model, out)[0])
    if "--report" in argv:
        i = argv.index("--report")
        del argv[i : i + 2]
    outcome = run_cli([*argv, "--report", CORPUS.model])
    assert_clean_failure(outcome, (2,), names=CORPUS.model.name)
    assert snapshot(out) == {} and snapshot(cwd) == {}
    _assert_corpus_untouched()


# where the issues say 3: valid input, but verification or the request cannot succeed
EXIT3 = {
    "verify-out-of-tolerance": ("verify", lambda c, o: ["verify", c.model, c.other]),
    "quantize-nothing-quantizable": (
        "quantize",
        lambda c, o: ["quantize", c.head, "-o", o / "out.onnx", "--mode", "dynamic"],
    ),
    "prune-no-residual-blocks": (
        "prune",
        lambda c, o: ["prune", c.model, "-o", o / "out.onnx", "--method", "blocks"],
    ),
    "prune-no-prunable-weights": (
        "prune",
        lambda c, o: [
            "prune",
            c.head,
            "-o",
            o / "out.onnx",
            "--method",
            "magnitude",
            "--sparsity",
            "0.5",
        ],
    ),
}


@pytest.mark.parametrize("name", list(EXIT3))
def test_exit_3(name, dirs):
    """Exit 3, one error line naming the model, nothing written, inputs untouched."""
    command, build = EXIT3[name]
    require_command(command)
    out, cwd = dirs
    outcome = run_cli(build(CORPUS, out))
    assert_clean_failure(outcome, (3,))
    assert snapshot(out) == {} and snapshot(cwd) == {}
    _assert_corpus_untouched()


# one case per command as a real process: a different kind of failure for each, chosen to
# go through ONNX Runtime (C++ logging), numpy (warnings) and the recipe loader
SAMPLE = {
    "inspect": ("model", "truncated-50pct"),
    "simplify": ("model", "unknown-domain"),
    "verify": ("model", "external-data-escapes"),
    "run": ("recipe", "unknown-step"),
    "quantize": ("data", "wrong-dtype"),
    "prune": ("model", "duplicate-node-outputs"),
    "ensemble": ("model", "external-data-missing"),
    "chain": ("model", "not-onnx"),
    "bench": ("data", "pickle-in-npz"),
    "optimize": ("model", "opset-99"),
    "adapt": ("data", "bad-labels-2d-float"),
}


@pytest.mark.parametrize("command", list(SAMPLE))
def test_subprocess_sample(command, tmp_path):
    require_command(command)
    kind, name = SAMPLE[command]
    case = next(c for c in CORPUS.cases if c.kind == kind and c.name == name)
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    out.mkdir()
    cwd.mkdir()
    argv = getattr(SPECS[command], kind)(CORPUS, case.path, out)[0]
    outcome = run_subprocess(argv, cwd=cwd)
    judge(outcome, case, command, out, cwd)


@pytest.mark.slow
def test_sweep_subprocess():
    """Every case x command as a real process (about 900 runs, ~10 minutes on 2 cores)."""
    from .sweep import render, sweep

    report = sweep()
    text = render(report)
    assert not any(r["problems"] for r in report["results"].values()), text
    assert not report["modified"] and not report["unpickled"], text
