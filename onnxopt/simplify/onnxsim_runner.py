"""onnxsim, called defensively: any failure is a note, never an error.

onnxsim fails on some real models (unsupported ops, models over 2 GB, IR < 4 graphs with
weights as inputs); callers then use onnxopt's own passes.
"""

from __future__ import annotations

import copy
import logging

import onnx

from ..graph import replace_repeated

__all__ = ["run_onnxsim"]

log = logging.getLogger(__name__)

ONNXSIM_MAX_TENSOR = 2**20


def run_onnxsim(model: onnx.ModelProto, *, max_fold_bytes: int = 16 * 2**20) -> tuple[onnx.ModelProto | None, str]:
    """(simplified model, "") or (None, why onnxsim was not used)."""
    from ..io import exceeds_protobuf, is_lazy

    # decided before the import: importing onnxsim alone costs ~240 MB of resident memory
    if is_lazy(model) or exceeds_protobuf(model, margin=2**26):
        return None, "onnxsim skipped: model over 2 GB"
    try:
        import onnxsim
    except Exception as exc:  # not installed or broken build
        return None, f"onnxsim unavailable ({exc.__class__.__name__})"
    # onnxsim's threshold bounds each folded tensor whatever its inputs' size, so it is kept at
    # 1 MB: ConstantOfShape / Expand cannot blow a file up.  onnxopt's own folding runs after it
    # and folds larger tensors only when they do not grow the file (see fold.py).
    threshold = min(max_fold_bytes, ONNXSIM_MAX_TENSOR)
    kwargs = dict(check_n=0, skip_fuse_bn=False, tensor_size_threshold=f"{max(1, threshold // 1024)}KB")
    # Initializers are weights (so BatchNormalization folds into Conv, weight Transposes fold)
    # unless an IR >= 4 model lists one as a graph input too: that one is meant to be overridable.
    inits = {t.name for t in model.graph.initializer}
    as_constants = model.ir_version < 4 or not any(i.name in inits for i in model.graph.input)
    try:
        try:
            out, _ = onnxsim.simplify(copy.deepcopy(model), initializers_as_constants=as_constants, mutable_initializer=not as_constants, **kwargs)
        except TypeError:  # older onnxsim without the keyword
            out, _ = onnxsim.simplify(copy.deepcopy(model), **kwargs)
    except Exception as exc:
        msg = " ".join(str(exc).split())[:200]
        log.info("onnxsim failed: %s", msg)
        return None, f"onnxsim failed ({exc.__class__.__name__}: {msg}); used onnxopt's own passes"
    # onnxsim records its settings and the names of every removed node in metadata_props
    # (megabytes on big graphs); onnxopt's provenance already says what changed.
    replace_repeated(out.metadata_props, [p for p in out.metadata_props if not p.key.startswith("onnxsim.")])
    return out, ""
