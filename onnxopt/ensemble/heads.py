"""Fusion heads: ONNX nodes that combine the members' outputs, and the same math in numpy.

For members ``m = 1..M`` with outputs ``x_m`` (``[..., C]`` scores; with ``softmax`` each is
first replaced by ``softmax(x_m)`` over the last axis):

- ``mean``:     ``y = (1/M) sum_m x_m``                                  (``Mean``; float64:
  ``Sum`` / ``M``, as ORT's CPU provider has no float64 ``Mean``, nor ``OneHot``: a float64
  vote casts a float32 0/1 one-hot and multiplies it by the weight)
- ``weighted``: ``y = sum_m w_m x_m`` with ``w >= 0``, ``sum w = 1``        (``Mul`` + ``Sum``)
- ``vote``:     ``k_m = argmax(x_m)``; ``votes = sum_m w_m onehot(k_m, C)`` (``w_m = 1`` unless
  weights are given); ``label = argmax(votes)``  (``ArgMax`` -> ``OneHot`` -> ``Sum`` -> ``ArgMax``).
  Ties go to the lowest class index, both inside a member (equal top scores) and between
  classes with equal vote totals: ONNX ``ArgMax`` with ``select_last_index = 0`` returns the
  first maximum, as does ``numpy.argmax``.  Outputs ``label`` (int64) and ``votes``.
- ``stack``:    ``y = softmax(concat_m(x_m) W + b)`` with a fitted head (``Concat`` -> ``Gemm``
  -> ``Softmax``); needs 2-D ``[N, C_m]`` outputs (the ``C_m`` may differ).

Output names, for one fused position whose members' output is called ``B``: ``B`` for mean
and weighted, ``probabilities`` for stack, ``label`` and ``votes`` for vote; with several
fused positions the stack and vote names are prefixed ``B_``.  ``softmax`` does not change
votes (argmax is invariant to it), so vote ignores it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .fit import StackHead, softmax

__all__ = ["FUSIONS", "STACK_HEADS", "Fusion", "HeadIO", "output_names", "build_head", "reference"]

FUSIONS = ("mean", "weighted", "vote", "stack")
STACK_HEADS = ("logistic", "ridge")  # how ``fit`` fits the stacking head


@dataclass
class Fusion:
    """What to build: ``kind``; ``weights`` (normalised for weighted, as given for vote);
    ``softmax``; ``head`` (stack)."""

    kind: str
    weights: list[float] | None = None
    softmax: bool = False
    head: StackHead | None = None

    def summary(self) -> dict:
        d = {"kind": self.kind, "softmax": self.softmax}
        if self.weights is not None:
            d["weights"] = [float(w) for w in self.weights]
        if self.head is not None:
            d["head"] = self.head.summary()
        return d


@dataclass
class HeadIO:
    """One fused position: the members' value names, their dtype and shapes, the output names."""

    inputs: list[str]
    elem: int
    shapes: list[tuple | None]
    outputs: list[str]


def output_names(kind: str, base: str, positions: int) -> list[str]:
    if kind in ("mean", "weighted"):
        return [base]
    pre = f"{base}_" if positions > 1 else ""
    return [f"{pre}probabilities"] if kind == "stack" else [f"{pre}label", f"{pre}votes"]


def _classes(shapes) -> int | None:
    cs = {s[-1] for s in shapes if s and isinstance(s[-1], int)}
    return cs.pop() if len(cs) == 1 else None


def _merged_shape(shapes):
    from .merge import merge_shapes

    return functools.reduce(merge_shapes, shapes, None)


class _Builder:
    def __init__(self, prefix: str, taken: set[str]):
        self.prefix = prefix
        self.taken = taken
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def name(self, base: str) -> str:
        from ..graph import unique_name

        return unique_name(self.prefix + base, self.taken)

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        out = output or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(f"{op}"), **attrs))
        return out


def build_head(fusion: Fusion, io: HeadIO, *, prefix: str, taken: set[str]) -> tuple[list, list, list[onnx.ValueInfoProto]]:
    """Nodes, initializers and typed graph outputs of the head for one fused position."""
    b = _Builder(prefix, taken)
    np_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(io.elem))
    xs = list(io.inputs)
    M = len(xs)
    kind = fusion.kind
    if fusion.softmax and kind != "vote":
        xs = [b.node("Softmax", [x], b.name(f"softmax{i}"), axis=-1) for i, x in enumerate(xs)]
    if kind in ("mean", "weighted"):
        if kind == "weighted":
            scaled = [
                b.node(
                    "Mul",
                    [x, b.const(f"w{i}", np.asarray(fusion.weights[i], dtype=np_dtype))],
                    b.name(f"weighted{i}"),
                )
                for i, x in enumerate(xs)
            ]
            b.node("Sum", scaled, io.outputs[0])
        elif io.elem == onnx.TensorProto.DOUBLE:
            # ORT's CPU provider has no float64 Mean kernel: Sum / M
            b.node("Div", [b.node("Sum", xs, b.name("sum")), b.const("count", np.asarray(M, dtype=np_dtype))], io.outputs[0])
        else:
            b.node("Mean", xs, io.outputs[0])
        shape = _merged_shape(io.shapes)
        outs = [helper.make_tensor_value_info(io.outputs[0], io.elem, None if shape is None else list(shape))]
    elif kind == "vote":
        weights = fusion.weights if fusion.weights is not None else [1.0] * M
        C = _classes(io.shapes)
        if C is not None:
            depth = b.const("depth", np.asarray([C], dtype=np.int64))
        else:
            shp = b.node("Shape", [xs[0]], b.name("shape"))
            depth = b.node("Gather", [shp, b.const("last", np.asarray(-1, dtype=np.int64))], b.name("depth"), axis=0)
        onehots = []
        for i, x in enumerate(xs):
            k = b.node("ArgMax", [x], b.name(f"argmax{i}"), axis=-1, keepdims=0)
            if io.elem == onnx.TensorProto.DOUBLE:
                # ORT's CPU provider has no float64 OneHot kernel: a float32 0/1 one-hot
                # (exact), cast, times the weight in float64
                vals = b.const(f"onehot_values{i}", np.asarray([0.0, 1.0], dtype=np.float32))
                hot = b.node("Cast", [b.node("OneHot", [k, depth, vals], b.name(f"onehot{i}"), axis=-1)], b.name(f"onehot{i}_f64"), to=onnx.TensorProto.DOUBLE)
                if weights[i] != 1.0:
                    hot = b.node("Mul", [hot, b.const(f"vote_weight{i}", np.asarray(weights[i], dtype=np_dtype))], b.name(f"weighted_onehot{i}"))
                onehots.append(hot)
                continue
            vals = b.const(f"onehot_values{i}", np.asarray([0.0, weights[i]], dtype=np_dtype))
            onehots.append(b.node("OneHot", [k, depth, vals], b.name(f"onehot{i}"), axis=-1))
        votes = b.node("Sum", onehots, io.outputs[1])
        b.node("ArgMax", [votes], io.outputs[0], axis=-1, keepdims=0)
        shape = _merged_shape(io.shapes)
        lead = None if shape is None else list(shape[:-1])
        outs = [
            helper.make_tensor_value_info(io.outputs[0], onnx.TensorProto.INT64, lead),
            helper.make_tensor_value_info(io.outputs[1], io.elem, None if shape is None else lead + [C if C is not None else shape[-1]]),
        ]
    elif kind == "stack":
        head = fusion.head
        cat = b.node("Concat", xs, b.name("features"), axis=-1)
        W = b.const("head_weight", head.W.astype(np_dtype))
        bias = b.const("head_bias", head.b.astype(np_dtype))
        scores = b.node("Gemm", [cat, W, bias], b.name("head_scores"))
        b.node("Softmax", [scores], io.outputs[0], axis=-1)
        lead = next((s[0] for s in io.shapes if s), None)
        outs = [helper.make_tensor_value_info(io.outputs[0], io.elem, [lead, int(head.W.shape[1])])]
    else:  # pragma: no cover - validated by the API
        raise ValueError(f"unknown fusion {kind!r}")
    return b.nodes, b.inits, outs


def reference(fusion: Fusion, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The fusion computed in numpy (float64, cast to the members' dtype) for one position."""
    dtype = np.asarray(arrays[0]).dtype
    xs = [np.asarray(a, dtype=np.float64) for a in arrays]
    if fusion.softmax and fusion.kind != "vote":
        xs = [softmax(x) for x in xs]
    if fusion.kind == "mean":
        return [np.mean(xs, axis=0).astype(dtype)]
    if fusion.kind == "weighted":
        return [sum(w * x for w, x in zip(fusion.weights, xs, strict=True)).astype(dtype)]
    if fusion.kind == "vote":
        weights = fusion.weights if fusion.weights is not None else [1.0] * len(xs)
        C = xs[0].shape[-1]
        votes = np.zeros(xs[0].shape, dtype=dtype)
        for w, x in zip(weights, xs, strict=True):
            votes += np.eye(C, dtype=dtype)[np.argmax(x, axis=-1)] * dtype.type(w)
        return [np.argmax(votes, axis=-1).astype(np.int64), votes]
    if fusion.kind == "stack":
        feats = np.concatenate(xs, axis=-1)
        head = fusion.head
        return [softmax(feats @ head.W.astype(dtype).astype(np.float64) + head.b.astype(dtype).astype(np.float64)).astype(dtype)]
    raise ValueError(f"unknown fusion {fusion.kind!r}")
