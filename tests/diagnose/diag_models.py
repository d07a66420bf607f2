"""Model pairs for the diagnose tests: a planted fault, a QDQ copy, a renamed copy."""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from tests.toy_models import tiny_cnn

__all__ = ["scaled", "renamed", "qdq", "feeds"]


def scaled(model: onnx.ModelProto, weight: str, factor: float = 1.5, channel: int | None = None) -> onnx.ModelProto:
    """A copy with initializer ``weight`` (one output channel of it, if given) times ``factor``."""
    out = copy.deepcopy(model)
    for t in out.graph.initializer:
        if t.name == weight:
            a = numpy_helper.to_array(t).copy()
            if channel is None:
                a *= factor
            else:
                a[channel] *= factor
            t.CopyFrom(numpy_helper.from_array(a, t.name))
            return out
    raise KeyError(weight)


def renamed(model: onnx.ModelProto, keep_outputs: bool = True) -> onnx.ModelProto:
    """Every intermediate tensor and node renamed (graph outputs kept): only structure matches."""
    out = copy.deepcopy(model)
    g = out.graph
    keep = {o.name for o in g.output} | {i.name for i in g.input} | {t.name for t in g.initializer}
    mapping = {y: f"t{k}" for k, n in enumerate(g.node) for y in n.output if y not in keep}
    for k, n in enumerate(g.node):
        n.name = f"n{k}"
        n.input[:] = [mapping.get(x, x) for x in n.input]
        n.output[:] = [mapping.get(y, y) for y in n.output]
    del g.value_info[:]
    return out


def feeds(n: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)}


def qdq(model: onnx.ModelProto | None = None, x: np.ndarray | None = None, qoperator: bool = False, exclude=()) -> onnx.ModelProto:
    """Static QDQ INT8 (per-tensor) of ``model`` (default ``tiny_cnn``) by ONNX Runtime's
    quantizer (MinMax on 32 samples of ``x``, default ``feeds``); ``qoperator``: in the
    QOperator format instead; ``exclude``: nodes it leaves in float."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    model = model or tiny_cnn()
    x = feeds(32)["x"] if x is None else x
    name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: x[i : i + 8]} for i in range(0, 32, 8)])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(model, str(src))
        fmt = QuantFormat.QOperator if qoperator else QuantFormat.QDQ
        quantize_static(str(src), str(dst), Reader(), quant_format=fmt, nodes_to_exclude=list(exclude))
        return onnx.load(str(dst))
