"""The ``onnxopt`` command group: lazy sub-commands, logging, and the one place where
errors become exit codes.

``OnnxoptError`` -> ``error: PATH: message`` on one line, exit code from the class (2 bad
input/usage, 3 verification/budget).  click usage errors -> one line, exit 2.  Anything
else is a bug: traceback, exit 1.  ``--debug`` shows tracebacks for user errors too.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import traceback
from contextlib import suppress

import click

from ..errors import OnnxoptError

__all__ = ["cli", "main", "COMMANDS"]

_HELP = {
    "inspect": "Describe a model: IR, opsets, I/O, ops, parameters, FLOPs.",
    "simplify": "Fold constants, drop dead nodes and duplicate weights (verified).",
    "verify": "Compare two models' outputs on the same inputs.",
    "run": "Run a recipe (a pipeline of passes) on a model.",
    "quantize": "INT8 quantization (dynamic/static) within an accuracy budget.",
    "prune": "Prune weights, channels or residual blocks (verified).",
    "ensemble": "Fuse N models into one .onnx (mean, weighted, vote, stack).",
    "chain": "Chain N models serially into one .onnx.",
    "bench": "Benchmark models side by side (latency, throughput, memory, accuracy).",
    "optimize": "Fastest verified model for a target within an accuracy budget.",
    "tune": "Fastest verified ONNX Runtime session options, carried in the model.",
    "adapt": "Transfer learning: cut at a feature tensor, fit a new head.",
    "diagnose": "Where two models part ways, which step broke it, why one is slower.",
    "demo": "Run the main job on the bundled models and print a summary.",
    "passes": "List the registered passes and bundled recipes.",
}
# name -> "module:function"; imported only when the command runs (fast --help)
COMMANDS = {name: f"onnxopt.cli.{name}:command" for name in _HELP}

_state = {"debug": False}


class _Group(click.Group):
    def list_commands(self, ctx):
        return [c for c in COMMANDS if _importable(COMMANDS[c])]

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None or not _importable(target):
            return None
        module, _, attr = target.partition(":")
        cmd = getattr(importlib.import_module(module), attr)
        if not cmd.short_help:
            cmd.short_help = _HELP[name]
        return cmd

    def format_commands(self, ctx, formatter):
        rows = [(name, _HELP[name]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        # click runs non-standalone so that every error is rendered here, on one line; in that
        # mode click *returns* the code of a ``ctx.exit(code)`` instead of exiting with it.
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            if standalone_mode:
                sys.exit(exc.exit_code)
            raise
        except (OnnxoptError, click.ClickException, click.Abort) as exc:
            code = _report_error(exc)
            if standalone_mode:
                sys.exit(code)
            raise click.exceptions.Exit(code) from None
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


def _report_error(exc: Exception) -> int:
    """The one line on stderr for a user error (with the traceback under ``--debug`` for an
    ``OnnxoptError``); returns the exit code."""
    if isinstance(exc, OnnxoptError):
        if _state["debug"]:
            traceback.print_exc()
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    if isinstance(exc, click.Abort):
        click.echo("error: aborted", err=True)
        return 130
    hint = f" (see '{exc.ctx.command_path} --help')" if isinstance(exc, click.UsageError) and exc.ctx else ""
    click.echo(f"error: {' '.join(exc.format_message().split())}{hint}", err=True)
    return 2 if isinstance(exc, click.UsageError) else exc.exit_code


def _importable(target: str) -> bool:
    module = target.partition(":")[0]
    return importlib.util.find_spec(module) is not None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="onnxopt", prog_name="onnxopt")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no progress bars.")
@click.option("--debug", is_flag=True, help="Show tracebacks for every error.")
def cli(verbose: int, quiet: bool, debug: bool):
    """onnxopt: verified graph-level optimization of ONNX models.

    Every transform is checked (onnx.checker, an ONNX Runtime session, outputs compared with
    the input model) before anything is written.  Exit codes: 0 ok, 1 internal error, 2 bad
    input or usage, 3 verification failed or accuracy budget not met.
    """
    _state["debug"] = debug
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    if verbose < 2:
        # ONNX Runtime's C++ warnings and errors ("Removing initializer ...", from sessions that its
        # quantizer and transformer optimizer create) go straight to file descriptor 2, where
        # they would break the one-line error contract; -vv shows them
        with suppress(Exception):  # pragma: no cover - a broken onnxruntime is reported where it is used
            import onnxruntime

            onnxruntime.set_default_logger_severity(4)
    from ..core.progress import set_progress

    set_progress(False if quiet else None)


def main(argv=None):
    cli.main(args=argv, prog_name="onnxopt")

