"""What every model-writing command does once the library call returned: write the model
(atomically, never over an input), the JSON report if asked, and print JSON if asked."""

from __future__ import annotations

__all__ = ["write_result"]


def write_result(result, output, *, inputs, report_path=None, as_json: bool = False, external_data: bool = False) -> bool:
    """Save ``result``; returns True when the caller should still render its text report."""
    from .render import echo_json

    result.save(output, guard=list(inputs), external_data=external_data or None)
    if report_path:
        result.save_report(report_path)
    if as_json:
        echo_json(result.report)
        return False
    return True
