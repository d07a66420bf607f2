"""Least-squares reconstruction of a layer (layer-wise distillation), in pure numpy.

After channels are removed upstream, a consumer layer ``y = x W + b`` sees fewer inputs.
Its new weights are fitted so that, on calibration samples, its output on the *pruned*
model's input rows ``X`` (n x d) matches the *original* model's output rows ``Y`` (n x m):

    [W; b] = argmin ||[X 1] [W; b] - Y||^2 + lam ||W||^2 = (A^T A + lam D)^-1 A^T Y

with ``A = [X 1]``, ``D = diag(1, ..., 1, 0)`` (the bias is not penalized) and
``lam = ridge * trace(X^T X) / d``.  ``A^T A``, ``A^T Y``, ``sum(Y^2)`` and ``n`` are
accumulated batch by batch, so memory is ``O((d + 1)(d + 1 + m))`` whatever the number of
samples.  The residual of any ``[W; b]`` follows from the same sums:
``||A B - Y||^2 = tr(B^T A^T A B) - 2 tr(B^T A^T Y) + sum(Y^2)``.

A convolution is a matrix product on patches (im2col): each output position of each
sample is one row of ``C * prod(kernel)`` input values, ordered like the weight's
``[C, k1, k2, ...]`` axes.  Positions are subsampled per batch to bound the cost.

A (group 1) ConvTranspose with strides ``s``, dilations ``d``, pads ``(p_b, p_e)`` and
``output_padding`` ``q`` is the same kind of product: insert ``s - 1`` zeros between the
input's pixels, pad each spatial axis by ``(k - 1) d - p_b`` before and ``(k - 1) d - p_e
+ q`` after (a negative amount crops), and correlate with stride 1, dilation ``d`` and the
weight ``W'[o, c, t] = W[c, o, k - 1 - t]`` (the kernel flipped, input/output axes swapped).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "RidgeAccumulator",
    "conv_pads",
    "conv_output_shape",
    "conv_patches",
    "conv_transpose_input",
    "conv_transpose_as_conv",
    "conv_transpose_from_conv",
    "gather_outputs",
    "sample_positions",
]


class RidgeAccumulator:
    """Streams ``(X, Y)`` row blocks; ``solve`` returns the ridge solution ``(W, b)``."""

    def __init__(self, d: int, m: int, *, bias: bool = True):
        self.d, self.m, self.bias = int(d), int(m), bool(bias)
        k = self.d + (1 if self.bias else 0)
        self.ata = np.zeros((k, k), dtype=np.float64)
        self.aty = np.zeros((k, self.m), dtype=np.float64)
        self.yty = 0.0
        self.n = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        a = np.asarray(x, dtype=np.float64).reshape(-1, self.d)
        a = np.hstack([a, np.ones((a.shape[0], 1))]) if self.bias else a
        y = np.asarray(y, dtype=np.float64).reshape(-1, self.m)
        if a.shape[0] != y.shape[0]:
            raise ValueError(f"X has {a.shape[0]} rows, Y has {y.shape[0]}")
        self.ata += a.T @ a
        self.aty += a.T @ y
        self.yty += float(np.sum(y * y))
        self.n += a.shape[0]

    def solve(self, ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray | None]:
        """``(W [d, m], b [m] or None)``; ``ridge`` is relative to the mean diagonal of X^T X."""
        if self.n == 0:
            raise ValueError("no rows accumulated")
        diag = np.ones(self.ata.shape[0])
        if self.bias:
            diag[-1] = 0.0
        scale = float(np.trace(self.ata[: self.d, : self.d])) / max(self.d, 1)
        lam = max(float(ridge), 0.0) * (scale if scale > 0 else 1.0)
        lhs = self.ata + np.diag(lam * diag)
        try:
            sol = np.linalg.solve(lhs, self.aty)
        except np.linalg.LinAlgError:
            sol = np.linalg.lstsq(lhs, self.aty, rcond=None)[0]
        return (sol[:-1], sol[-1]) if self.bias else (sol, None)

    def residual(self, w: np.ndarray, b: np.ndarray | None = None) -> float:
        """``||[X 1][W; b] - Y||^2`` over every accumulated row."""
        w = np.asarray(w, dtype=np.float64).reshape(self.d, self.m)
        if self.bias:
            bb = np.zeros(self.m) if b is None else np.asarray(b, dtype=np.float64).reshape(self.m)
            sol = np.vstack([w, bb[None, :]])
        else:
            sol = w
        val = float(np.sum(sol * (self.ata @ sol)) - 2.0 * np.sum(sol * self.aty) + self.yty)
        return max(val, 0.0)

    def relative_error(self, w: np.ndarray, b: np.ndarray | None = None) -> float:
        """``sqrt(residual / sum(Y^2))``: 0 is a perfect fit."""
        return float(np.sqrt(self.residual(w, b) / self.yty)) if self.yty > 0 else 0.0


def conv_pads(
    auto_pad: str,
    pads: Sequence[int] | None,
    in_spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> list[int]:
    """Explicit ``[b1, b2, ..., e1, e2, ...]`` pads for ONNX Conv's ``auto_pad`` modes."""
    r = len(kernel)
    auto_pad = (auto_pad or "NOTSET").upper()
    if auto_pad in ("NOTSET", ""):
        return list(pads) if pads else [0] * (2 * r)
    if auto_pad == "VALID":
        return [0] * (2 * r)
    begin, end = [], []
    for i in range(r):
        out = -(-in_spatial[i] // strides[i])
        total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_spatial[i], 0)
        small, big = total // 2, total - total // 2
        begin.append(big if auto_pad == "SAME_LOWER" else small)
        end.append(small if auto_pad == "SAME_LOWER" else big)
    return begin + end


def conv_output_shape(
    in_spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
) -> list[int]:
    r = len(kernel)
    return [
        (in_spatial[i] + pads[i] + pads[i + r] - ((kernel[i] - 1) * dilations[i] + 1)) // strides[i]
        + 1
        for i in range(r)
    ]


def sample_positions(
    n: int, out_spatial: Sequence[int], max_rows: int | None, rng: np.random.Generator
) -> np.ndarray:
    """Flat indices over ``n * prod(out_spatial)`` positions: all, or ``max_rows`` sorted picks."""
    total = int(n * int(np.prod(out_spatial, dtype=np.int64)))
    if max_rows is None or total <= max_rows:
        return np.arange(total, dtype=np.int64)
    return np.sort(rng.choice(total, size=int(max_rows), replace=False)).astype(np.int64)


def conv_patches(
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    positions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """im2col rows of ``x`` [N, C, *spatial] for a (group 1) convolution.

    Returns ``(rows [R, C * prod(kernel)], positions, out_spatial)``; row ``i`` holds the
    patch of flat output position ``positions[i]`` (over ``N * prod(out_spatial)``), its
    columns ordered ``(c, k1, k2, ...)`` like ``W[o].reshape(-1)``.
    """
    x = np.asarray(x)
    r = len(kernel)
    n, c = x.shape[0], x.shape[1]
    out = conv_output_shape(x.shape[2:], kernel, strides, pads, dilations)
    padded = np.pad(x, [(0, 0), (0, 0)] + [(int(pads[i]), int(pads[i + r])) for i in range(r)])
    if positions is None:
        positions = np.arange(n * int(np.prod(out, dtype=np.int64)), dtype=np.int64)
    idx = np.unravel_index(positions, [n] + list(out))
    ni, oi = idx[0], idx[1:]
    offsets = list(np.ndindex(*kernel))
    rows = np.empty((len(positions), c, len(offsets)), dtype=x.dtype)
    for j, off in enumerate(offsets):
        coords = tuple(oi[a] * strides[a] + off[a] * dilations[a] for a in range(r))
        rows[:, :, j] = padded[(ni, slice(None)) + coords] if r else padded[ni]
    return rows.reshape(len(positions), c * len(offsets)), positions, out


def conv_transpose_input(
    x: np.ndarray,
    kernel: Sequence[int],
    strides: Sequence[int],
    pads: Sequence[int],
    dilations: Sequence[int],
    output_padding: Sequence[int],
) -> np.ndarray:
    """``x`` [N, C, *spatial] zero-upsampled and padded (or cropped) so that a stride-1
    correlation with the flipped kernel (``conv_transpose_as_conv``) and no padding gives
    the ConvTranspose output."""
    x = np.asarray(x)
    r = len(kernel)
    n, c = x.shape[0], x.shape[1]
    up_shape = [(x.shape[2 + i] - 1) * strides[i] + 1 for i in range(r)]
    z = np.zeros((n, c, *up_shape), dtype=x.dtype)
    z[(slice(None), slice(None)) + tuple(slice(None, None, strides[i]) for i in range(r))] = x
    full = [(kernel[i] - 1) * dilations[i] for i in range(r)]
    before = [full[i] - int(pads[i]) for i in range(r)]
    after = [full[i] - int(pads[i + r]) + int(output_padding[i]) for i in range(r)]
    z = np.pad(
        z, [(0, 0), (0, 0)] + [(max(b, 0), max(a, 0)) for b, a in zip(before, after, strict=True)]
    )
    crop = tuple(
        slice(max(-b, 0), z.shape[2 + i] - max(-a, 0))
        for i, (b, a) in enumerate(zip(before, after, strict=True))
    )
    return z[(slice(None), slice(None)) + crop]


def conv_transpose_as_conv(w: np.ndarray) -> np.ndarray:
    """ConvTranspose weight ``[C, O, *k]`` -> the equivalent Conv weight ``[O, C, *k]``."""
    spatial = tuple(range(2, w.ndim))
    return np.flip(np.swapaxes(w, 0, 1), axis=spatial)


# its inverse is itself: flipping the spatial axes and swapping the first two commute, and
# each undoes itself
conv_transpose_from_conv = conv_transpose_as_conv


def gather_outputs(y: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Rows ``[R, C_out]`` of a conv output ``y`` [N, C_out, *out] at flat ``positions``."""
    y = np.asarray(y)
    return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])[positions]
