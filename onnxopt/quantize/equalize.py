"""Equalization math on arrays (numpy only): the scales that make a layer easier to quantize
without changing what the float model computes.

SmoothQuant (Xiao et al., 2023).  For ``Y = X @ W`` (``X[rows, C]``, ``W[C, N]``) and any
positive ``s[C]``: ``Y = (X / s) @ (s[:, None] * W)``.  With ``a = alpha``::

    s_j = max|X_j| ** a / max|W_j| ** (1 - a)

moves the outliers of activation channel ``j`` into the weights (``a = 0.5`` balances
them).  ``alpha`` is chosen per layer by the error of the fake-quantized product
(``smooth_error``): ``|| fq(X / s) @ fq(s W) - X @ W || / || X @ W ||``, activations
per-tensor asymmetric 8-bit and weights symmetric 8-bit, as ONNX Runtime's static QDQ does.

Cross-layer equalization (Nagel et al., 2019).  Two layers ``W1`` (output channel ``i``) and
``W2`` (input channel ``i``) joined by a positive-homogeneous ``f`` (``f(x / s) = f(x) / s``
for ``s > 0``: Relu, LeakyRelu, identity) compute the same with ``W1_i / s_i``, ``b1_i / s_i``
and ``W2[:, i] * s_i``.  With ranges ``r1_i = max|W1_i|`` and ``r2_i = max|W2[:, i]|``::

    s_i = sqrt(r1_i / r2_i)

gives both layers the range ``sqrt(r1_i * r2_i)`` on channel ``i``.

Bias absorption (same paper).  Where the pre-activation ``h_i`` of a Relu channel stays
above ``c_i > 0``, ``relu(h_i) = relu(h_i - c_i) + c_i``, so ``c_i`` leaves layer 1's bias and
enters layer 2's as ``W2 @ c``; the activation's range shrinks by ``c_i``.  ``c_i`` is taken
as ``max(0, min(lo_i, mean_i - 6 std_i))`` over calibration data (conservative: exact on
every input whose pre-activation stays above it, which the pipeline verifies).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ALPHAS",
    "smooth_scales",
    "fake_quant",
    "smooth_error",
    "choose_alpha",
    "cle_scales",
    "absorb_amounts",
]

ALPHAS = (0.25, 0.4, 0.5, 0.6, 0.75, 0.85)
# scales are clipped to this range: a channel that is all zero in X or W keeps s = 1
_SCALE_RANGE = (1e-4, 1e4)
# bias absorption keeps c below mean - SIGMAS * std: a Gaussian channel falls under it about
# once in 10^9 values (Nagel et al. use 3, which is not exact on 1 value in 740)
SIGMAS = 6.0


def _clip_scales(s: np.ndarray) -> np.ndarray:
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    return np.clip(s, *_SCALE_RANGE).astype(np.float32)


def smooth_scales(x_absmax: np.ndarray, w_absmax: np.ndarray, alpha: float) -> np.ndarray:
    """``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` per input channel ``j``; channels
    where either maximum is 0 get ``s = 1``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    x, w = np.asarray(x_absmax, dtype=np.float64), np.asarray(w_absmax, dtype=np.float64)
    ok = (x > 0) & (w > 0)
    s = np.ones_like(x)
    s[ok] = x[ok] ** alpha / w[ok] ** (1.0 - alpha)
    return _clip_scales(s)


def fake_quant(a: np.ndarray, *, symmetric: bool, bits: int = 8, axis: int | None = None) -> np.ndarray:
    """``a`` quantized to ``bits`` and back: symmetric (``scale = max|a| / (2^(b-1) - 1)``,
    zero point 0) or asymmetric over ``[min(lo, 0), max(hi, 0)]`` (as ONNX Runtime makes
    its ranges include 0); per tensor, or per slice along ``axis``."""
    a = np.asarray(a, dtype=np.float64)
    red = None if axis is None else tuple(i for i in range(a.ndim) if i != axis % a.ndim)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = np.max(np.abs(a), axis=red, keepdims=axis is not None) / qmax
        scale = np.where(scale > 0, scale, 1.0)
        return np.clip(np.round(a / scale), -qmax, qmax) * scale
    lo = np.minimum(np.min(a, axis=red, keepdims=axis is not None), 0.0)
    hi = np.maximum(np.max(a, axis=red, keepdims=axis is not None), 0.0)
    qmax = 2**bits - 1
    scale = (hi - lo) / qmax
    scale = np.where(scale > 0, scale, 1.0)
    zero = np.round(-lo / scale)
    return (np.clip(np.round(a / scale) + zero, 0, qmax) - zero) * scale


def smooth_error(x: np.ndarray, w: np.ndarray, s: np.ndarray | None = None, *, per_channel: bool = False) -> float:
    """Relative L2 error of ``fq(X / s) @ fq(s W)`` against ``X @ W`` (``x[rows, C]``,
    ``w[C, N]``; ``s`` None: no smoothing)."""
    x, w = np.asarray(x, dtype=np.float64), np.asarray(w, dtype=np.float64)
    ref = x @ w
    if s is not None:
        s = np.asarray(s, dtype=np.float64)
        x, w = x / s, w * s[:, None]
    y = fake_quant(x, symmetric=False) @ fake_quant(w, symmetric=True, axis=1 if per_channel else None)
    den = np.linalg.norm(ref)
    return float(np.linalg.norm(y - ref) / den) if den > 0 else float(np.linalg.norm(y))


def choose_alpha(x: np.ndarray, w: np.ndarray, alphas=ALPHAS, *, per_channel: bool = False) -> tuple[float | None, np.ndarray | None, dict]:
    """The ``alpha`` of ``alphas`` whose scales give the smallest ``smooth_error``; returns
    ``(alpha, s, errors)`` with ``errors[None]`` the error without smoothing, and
    ``(None, None, errors)`` when no alpha beats it."""
    x_absmax = np.max(np.abs(x), axis=0)
    w_absmax = np.max(np.abs(w), axis=1)
    errors: dict = {None: smooth_error(x, w, per_channel=per_channel)}
    best, best_s = None, None
    for a in alphas:
        s = smooth_scales(x_absmax, w_absmax, a)
        errors[a] = smooth_error(x, w, s, per_channel=per_channel)
        if errors[a] < errors[best]:
            best, best_s = a, s
    return best, best_s, errors


def cle_scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """``s_i = sqrt(r1_i / r2_i)`` (``r1``: layer 1's range per output channel, ``r2``: layer
    2's per input channel); channels with a zero range keep ``s = 1``."""
    r1, r2 = np.asarray(r1, dtype=np.float64), np.asarray(r2, dtype=np.float64)
    ok = (r1 > 0) & (r2 > 0)
    s = np.ones_like(r1)
    s[ok] = np.sqrt(r1[ok] / r2[ok])
    return _clip_scales(s)


def absorb_amounts(lo: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Per channel, the part ``c = max(0, min(lo, mean - 6 std))`` of a Relu pre-activation
    that is always positive on the calibration data (0: nothing to absorb)."""
    c = np.minimum(np.asarray(lo, dtype=np.float64), np.asarray(mean, dtype=np.float64) - SIGMAS * np.asarray(std, dtype=np.float64))
    return np.maximum(c, 0.0).astype(np.float32)
