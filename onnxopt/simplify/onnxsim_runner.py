"""onnxsim, called defensively: any failure is a note, never an error.

onnxsim fails on some real models (unsupported ops, models over 2 GB, IR < 4 graphs with
weights as inputs); callers then use onnxopt's own passes.
"""

from __future__ import annotations

import copy
import logging

import onnx

__all__ = ["run_onnxsim"]

log = logging.getLogger(__name__)


def run_onnxsim(model: onnx.ModelProto, *, max_fold_bytes: int = 16 * 2**20) -> tuple[onnx.ModelProto | None, str]:
    """(simplified model, "") or (None, why onnxsim was not used)."""
    try:
        import onnxsim
    except Exception as exc:  # not installed or broken build
        return None, f"onnxsim unavailable ({exc.__class__.__name__})"
    if model.ByteSize() > 2**31 - 2**26:
        return None, "onnxsim skipped: model over 2 GB"
    kwargs = dict(check_n=0, skip_fuse_bn=False, tensor_size_threshold=f"{max(1, max_fold_bytes // 2**20)}MB")
    try:
        try:
            out, _ = onnxsim.simplify(copy.deepcopy(model), initializers_as_constants=False, **kwargs)
        except TypeError:  # older onnxsim without the keyword
            out, _ = onnxsim.simplify(copy.deepcopy(model), **kwargs)
    except Exception as exc:
        msg = " ".join(str(exc).split())[:200]
        log.info("onnxsim failed: %s", msg)
        return None, f"onnxsim failed ({exc.__class__.__name__}: {msg}); used onnxopt's own passes"
    return out, ""
