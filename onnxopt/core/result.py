"""The result every public function returns: the model (or None) and a JSON-able report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ..render import to_json

__all__ = ["Result"]


@dataclass
class Result:
    """``model``: the output ModelProto (None for read-only commands); ``report``: a dict
    with at least ``command``; ``ok``: False when verification or the budget failed."""

    model: onnx.ModelProto | None
    report: dict = field(default_factory=dict)
    ok: bool = True

    def __bool__(self) -> bool:
        return self.ok

    def save(self, path, *, guard=(), external_data: bool | None = None) -> Path:
        """Write the model atomically, never over a path listed in ``guard`` nor over the
        input model the report names (``report["input"]``, a path)."""
        from ..io import save_model

        if self.model is None:
            raise ValueError("this result holds no model")
        source = self.report.get("input")
        guard = [*guard, *([source] if isinstance(source, str) else [])]
        return save_model(self.model, path, guard=guard, external_data=external_data)

    def to_json(self, **kw) -> str:
        return to_json(self.report, **kw)

    def save_report(self, path) -> Path:
        from ..io import atomic_write_text

        return atomic_write_text(path, self.to_json() + "\n")
