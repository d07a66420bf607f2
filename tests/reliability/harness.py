"""Running onnxopt commands the way users do, and judging what they leave behind.

- ``run_cli`` runs a command in-process with click's ``CliRunner`` (fast; stdout and
  stderr apart; an exception that escapes the error mapping is a traceback);
- ``run_subprocess`` runs ``python -m onnxopt`` for real (file descriptor 2, exit status,
  whatever ONNX Runtime's C++ code prints);
- ``snapshot`` hashes every file under a folder (hidden ones and symlinks included), so a
  test can prove that inputs are unchanged and that a failure wrote nothing;
- ``SPECS`` says, per command, how to hand it a broken model / DATA / recipe next to valid
  companions (``Corpus``), and which file it would write.

Commands that are not importable yet (another engineer is writing them) make the tests
that need them skip with the reason, so the suite passes at every moment.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from .corpus import Corpus

__all__ = [
    "ROOT",
    "Outcome",
    "Spec",
    "SPECS",
    "command_problem",
    "require_command",
    "run_cli",
    "run_subprocess",
    "snapshot",
    "assert_clean_failure",
    "assert_valid_model",
]

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None  # escaped the CLI's error mapping (in-process)

    @property
    def traceback(self) -> bool:
        return self.exception is not None or "Traceback (most recent call last)" in self.stderr

    def describe(self) -> str:
        exc = ""
        if self.exception is not None:
            tb = "".join(traceback.format_exception(self.exception))
            exc = f"\nescaped exception:\n{tb[-3000:]}"
        return f"exit {self.exit_code}{exc}\n--- stderr ---\n{self.stderr}\n--- stdout (tail) ---\n{self.stdout[-1500:]}"


# --- commands -------------------------------------------------------------------------------


def command_problem(name: str) -> str | None:
    """Why ``onnxopt NAME`` cannot run yet (None when it can)."""
    from onnxopt.cli.main import COMMANDS

    target = COMMANDS.get(name)
    if target is None:
        return f"'{name}' is not in onnxopt.cli.main.COMMANDS"
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return f"onnxopt {name} not written yet ({module} missing)"
        return f"onnxopt {name} not importable yet: {exc}"
    except Exception as exc:  # a module half-written by its owner
        return f"onnxopt {name} not importable yet: {type(exc).__name__}: {exc}"
    if not hasattr(mod, attr):
        return f"onnxopt {name}: {module} has no '{attr}' yet"
    return None


def require_command(name: str) -> None:
    problem = command_problem(name)
    if problem:
        pytest.skip(problem)


def run_cli(args, *, catch: bool = True) -> Outcome:
    """``onnxopt ARGS`` in-process."""
    from onnxopt.cli.main import cli

    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=catch)
    exc = (
        res.exception
        if res.exception is not None and not isinstance(res.exception, SystemExit)
        else None
    )
    return Outcome(res.exit_code, res.stdout, res.stderr, exc)


def run_subprocess(args, *, cwd=None, timeout: float = 300, env: dict | None = None) -> Outcome:
    """``python -m onnxopt ARGS`` as a child process (real stderr and exit status)."""
    full_env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "onnxopt", *[str(a) for a in args]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


# --- judging --------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (symlinks by target) under ``root``."""
    out = {}
    root = Path(root)
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                out[rel + "/"] = "dir"
    return out


def error_lines(outcome: Outcome) -> list[str]:
    return [line for line in outcome.stderr.splitlines() if line.strip()]


def assert_clean_failure(outcome: Outcome, codes=(2,), *, names: str | None = None) -> str:
    """Exit code in ``codes``, exactly one stderr line ``error: ...`` (naming ``names`` when
    given), no traceback.  Returns the line."""
    assert not outcome.traceback, f"traceback:\n{outcome.describe()}"
    assert outcome.exit_code in codes, f"expected exit {codes}:\n{outcome.describe()}"
    lines = error_lines(outcome)
    assert len(lines) == 1, f"expected exactly one line on stderr:\n{outcome.describe()}"
    assert lines[0].startswith("error: "), (
        f"stderr line does not start with 'error: ':\n{outcome.describe()}"
    )
    if names is not None:
        assert names in lines[0], f"error does not name {names!r}:\n{outcome.describe()}"
    return lines[0]


def assert_valid_model(path: Path) -> onnx.ModelProto:
    """The checker accepts it (by path, so external data is found) and ORT loads it."""
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(path), load_external_data=False)


# --- how each command is handed a broken input ----------------------------------------------

Argv = list[str]
Builder = Callable[[Corpus, Path, Path], list[Argv]]  # (corpus, broken input, out dir) -> argvs


@dataclass(frozen=True)
class Spec:
    """How to run one command on a broken input of each kind (None: not applicable).

    ``writes``: the output file name the command would create in the out folder (None for
    read-only commands); every builder places every output inside the out folder."""

    name: str
    model: Builder | None = None
    data: Builder | None = None
    recipe: Builder | None = None
    writes: str | None = "out.onnx"


def _o(out: Path) -> str:
    return str(out / "out.onnx")


# short measurements: these runs check behaviour, not speed
_BENCH = ["--runs", "3", "--warmup", "1", "--no-throughput", "--format", "json"]
_OPT = ["--time-budget", "0.2"]


SPECS: dict[str, Spec] = {
    "inspect": Spec(
        "inspect",
        model=lambda c, m, out: [["inspect", m], ["inspect", m, "--json"]],
        writes=None,
    ),
    "simplify": Spec(
        "simplify",
        model=lambda c, m, out: [["simplify", m, "-o", _o(out), "--report", out / "report.json"]],
        data=lambda c, d, out: [
            ["simplify", c.model, "-o", _o(out), "--data", d, "--report", out / "report.json"]
        ],
    ),
    "verify": Spec(
        "verify",
        model=lambda c, m, out: [["verify", c.model, m], ["verify", m, c.model]],
        data=lambda c, d, out: [["verify", c.model, c.model, "--data", d]],
        writes=None,
    ),
    "run": Spec(
        "run",
        model=lambda c, m, out: [
            ["run", c.recipe, m, "-o", _o(out), "--report", out / "report.json"]
        ],
        data=lambda c, d, out: [
            ["run", c.recipe, c.model, "-o", _o(out), "--calibration", d],
            ["run", c.recipe, c.model, "-o", _o(out), "--eval", d, "--max-accuracy-drop", "1"],
        ],
        recipe=lambda c, r, out: [["run", r, c.model, "-o", _o(out)]],
    ),
    "quantize": Spec(
        "quantize",
        model=lambda c, m, out: [
            ["quantize", m, "-o", _o(out), "--mode", "dynamic", "--allow-slower"]
        ],
        data=lambda c, d, out: [
            [
                "quantize",
                c.model,
                "-o",
                _o(out),
                "--mode",
                "static",
                "--calibration",
                d,
                "--allow-slower",
            ]
        ],
    ),
    "prune": Spec(
        "prune",
        model=lambda c, m, out: [
            ["prune", m, "-o", _o(out), "--method", "magnitude", "--sparsity", "0.5"]
        ],
        data=lambda c, d, out: [
            [
                "prune",
                c.model,
                "-o",
                _o(out),
                "--method",
                "channels",
                "--ratio",
                "0.25",
                "--calibration",
                d,
            ]
        ],
    ),
    "ensemble": Spec(
        "ensemble",
        model=lambda c, m, out: [["ensemble", c.model, m, "-o", _o(out), "--fusion", "mean"]],
        data=lambda c, d, out: [
            ["ensemble", c.model, c.model, "-o", _o(out), "--fusion", "stack", "--fit", d],
            ["ensemble", c.model, c.model, "-o", _o(out), "--data", d],
        ],
    ),
    "chain": Spec(
        "chain",
        model=lambda c, m, out: [["chain", m, c.head, "-o", _o(out)]],
        data=lambda c, d, out: [["chain", c.model, c.head, "-o", _o(out), "--data", d]],
    ),
    "bench": Spec(
        "bench",
        model=lambda c, m, out: [["bench", m, *_BENCH, "-o", out / "bench.json"]],
        data=lambda c, d, out: [["bench", c.model, "--data", d, *_BENCH, "-o", out / "bench.json"]],
        writes="bench.json",
    ),
    "optimize": Spec(
        "optimize",
        model=lambda c, m, out: [["optimize", m, "-o", _o(out), *_OPT]],
        data=lambda c, d, out: [
            ["optimize", c.model, "-o", _o(out), "--calibration", d, *_OPT],
            ["optimize", c.model, "-o", _o(out), "--eval", d, "--max-accuracy-drop", "5", *_OPT],
        ],
        recipe=lambda c, r, out: [["optimize", c.model, "-o", _o(out), "--recipe", r, *_OPT]],
    ),
    "adapt": Spec(
        "adapt",
        model=lambda c, m, out: [["adapt", m, "-o", _o(out), "--data", c.data]],
        data=lambda c, d, out: [["adapt", c.model, "-o", _o(out), "--data", d]],
    ),
}
