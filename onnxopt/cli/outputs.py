"""What every model-writing command does once the library call returned: write the model
(atomically, never over an input), the JSON report if asked, and print JSON if asked."""

from __future__ import annotations

__all__ = ["check_outputs", "write_result"]


def check_outputs(output, inputs, *extras) -> None:
    """Refuse, before any work, an ``-o`` or an extra output (``--report``, ``--plot``) that
    is an input model (or its external data), a folder or in a folder that cannot be
    written, and an extra output equal to ``-o``.  ``None`` extras are skipped."""
    from pathlib import Path

    from ..errors import UsageError
    from ..io import check_output_path, check_writable

    check_output_path(output, list(inputs))
    check_writable(output)
    for extra in extras:
        if not extra:
            continue
        check_output_path(extra, list(inputs))
        check_writable(extra)
        if Path(extra).resolve() == Path(output).resolve():
            raise UsageError("--report / --plot must differ from -o", extra)


def write_result(result, output, *, inputs, report_path=None, as_json: bool = False, external_data: bool = False) -> bool:
    """Save ``result``; returns True when the caller should still render its text report."""
    from .render import echo_json

    check_outputs(output, inputs, report_path)  # nothing is written when one is refused
    result.save(output, guard=list(inputs), external_data=external_data or None)
    if report_path:
        result.save_report(report_path)
    if as_json:
        echo_json(result.report)
        return False
    return True
