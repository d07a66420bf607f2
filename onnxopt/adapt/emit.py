"""Emit a fitted head into the cut model: ``Gemm`` (+ ``Softmax``), one output.

The head reads the pooled ``[N, D]`` features (cast to float32 first when they are float16
or float64) and computes ``scores = features @ W^T + b`` with ``W`` ``[K, D]`` and ``b``
``[K]`` stored as float32 initializers (``Gemm`` with ``transB=1``).  With ``softmax`` a
``Softmax(axis=1)`` follows.  The output keeps the adapted output's name, typed float32
``[batch, K]``.  Class names, when given, go to ``metadata_props["class_names"]`` as a JSON
list; a stale ``class_names`` entry of the input model is always removed.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import replace_repeated, unique_name
from ..linear import LinearHead
from .cut import all_names

__all__ = ["CLASS_NAMES_KEY", "append_head", "read_class_names"]

CLASS_NAMES_KEY = "class_names"


def append_head(
    model: onnx.ModelProto,
    features: str,
    feature_type: int,
    head: LinearHead,
    *,
    output: str,
    batch_dim,
    softmax: bool = False,
    class_names: list[str] | None = None,
) -> onnx.ModelProto:
    """Append the head after ``features`` (in place) and make ``output`` the only output."""
    graph = model.graph
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset == 0:
        model.opset_import.add(domain="", version=13)
        opset = 13
    taken = all_names(graph) | {output}
    src = features
    if feature_type != onnx.TensorProto.FLOAT:
        cast = unique_name("adapt/features_f32", taken)
        graph.node.append(helper.make_node("Cast", [src], [cast], name=unique_name("adapt/Cast", taken), to=onnx.TensorProto.FLOAT))
        src = cast
    w_name, b_name = unique_name("adapt.head.weight", taken), unique_name("adapt.head.bias", taken)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.ascontiguousarray(head.weight, dtype=np.float32), w_name),
            numpy_helper.from_array(np.ascontiguousarray(head.bias, dtype=np.float32), b_name),
        ]
    )
    scores = unique_name("adapt/scores", taken) if softmax else output
    gemm_attrs = {"transB": 1} | ({"broadcast": 1} if opset < 7 else {})
    graph.node.append(helper.make_node("Gemm", [src, w_name, b_name], [scores], name=unique_name("adapt/Gemm", taken), **gemm_attrs))
    if softmax:
        graph.node.append(helper.make_node("Softmax", [scores], [output], name=unique_name("adapt/Softmax", taken), axis=1))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, [batch_dim, head.num_classes]))
    replace_repeated(model.metadata_props, [p for p in model.metadata_props if p.key != CLASS_NAMES_KEY])
    if class_names:
        model.metadata_props.add(key=CLASS_NAMES_KEY, value=json.dumps(list(class_names), ensure_ascii=False))
    return model


def read_class_names(model: onnx.ModelProto) -> list[str] | None:
    """The class names an adapted model carries, or None."""
    for p in model.metadata_props:
        if p.key == CLASS_NAMES_KEY:
            try:
                names = json.loads(p.value)
            except ValueError:
                return None
            return [str(n) for n in names] if isinstance(names, list) else None
    return None
