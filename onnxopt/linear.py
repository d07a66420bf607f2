"""Linear classification heads fitted in pure numpy: the one linear-model module, used by
``adapt`` (a new head on extracted features) and by ``ensemble``'s stacking head.

Notation: ``X`` is ``[N, D]`` features, ``y`` integer labels in ``[0, K)``, ``Y`` their
one-hot ``[N, K]``.  A head is ``scores = X W^T + b`` (``W`` ``[K, D]``, ``b`` ``[K]``),
emitted as one ONNX ``Gemm``.

**Standardization** (``standardize=True``): the head is fitted on ``Z = (X - mu) / s``
with ``mu``, ``s`` the training mean and standard deviation per feature (``s = 1`` where
a feature is constant).  It is folded into the emitted weights:
``W = W_z / s`` (column-wise) and ``b = b_z - W_z (mu / s)``, so the emitted head reads
raw features and ``X W^T + b == Z W_z^T + b_z``.

**logistic**: multinomial logistic regression with an L2 penalty on the weights (not
the biases), minimising the mean negative log-likelihood

    f(W, b) = -(1/N) sum_i log softmax(W z_i + b)[y_i] + (l2/2) ||W||_F^2

    grad_W = (1/N) (P - Y)^T Z + l2 W,    grad_b = (1/N) sum_i (p_i - y_i)

with ``P = softmax(Z W^T + b)``.  Small problems (``K (D+1) <= NEWTON_MAX_PARAMS``) use
Newton's method with the exact Hessian

    H = (1/N) sum_i (diag(p_i) - p_i p_i^T) (x) (z~_i z~_i^T) + l2 (I_K (x) diag(1,..,1,0))

(``z~ = [z; 1]``, ``(x)`` the Kronecker product) and Armijo backtracking; larger ones use
L-BFGS (memory 10) with the same line search.  Both start from zero (or a warm start
along the l2 path), use no randomness, and stop when ``max |grad| < tol``.  The bias
direction ``b + c 1`` leaves ``f`` unchanged; a ``1e-8`` ridge on the bias block keeps the
Newton system definite and the biases are centred (``sum b = 0``) at the end.

**linear**: ridge regression on one-hot targets, in closed form

    min (1/N) ||Z W^T + 1 b^T - Y||^2 + l2 ||W||^2
    W^T = V diag(s_j / (s_j^2 + N l2)) U^T (Y - mean(Y)),   b = mean(Y) - W mean(Z)

from the thin SVD ``Z - mean(Z) = U diag(s) V^T`` (one SVD serves every l2 of a path).

**l2 by cross-validation** when not given: stratified k-fold (``k = min(5, smallest
class count)``, at least 2) over a fixed grid; the score is the mean held-out accuracy,
ties broken by the lower held-out loss (log-loss for ``logistic``, squared error for
``linear``), then by the larger l2.  Each fold standardizes with its own training
statistics.  Folds come from ``numpy.random.default_rng(seed)``: deterministic.

Classes in ``[0, K)`` without a training sample are not fitted: their row of ``W`` is 0
and their bias is ``ABSENT_SCORE``, so they are never predicted.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "HEADS",
    "LOGISTIC_GRID",
    "LINEAR_GRID",
    "ABSENT_SCORE",
    "LinearHead",
    "CVResult",
    "standardization",
    "fit_logistic",
    "fit_ridge_path",
    "fit_head",
    "cross_validate",
    "stratified_split",
    "stratified_folds",
    "softmax",
    "log_softmax",
    "one_hot",
    "one_blas_thread",
]

log = logging.getLogger(__name__)

HEADS = ("logistic", "linear")
# l2 grids (in units of the mean loss on standardized features), searched by CV
LOGISTIC_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
LINEAR_GRID = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0)
ABSENT_SCORE = -1.0e4
NEWTON_MAX_PARAMS = 200
# CV only ranks l2 values: a looser gradient tolerance than the final fit (1e-8) suffices
CV_TOL = 1e-5
_BIAS_RIDGE = 1e-8


@dataclass
class LinearHead:
    """``scores = X @ weight.T + bias`` over K classes; ``info`` says how it was fitted."""

    weight: np.ndarray  # [K, D] float64
    bias: np.ndarray  # [K] float64
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def scores(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.weight.T + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(self.scores(x), axis=1)

    def as_float32(self) -> LinearHead:
        """The head with float32-rounded parameters (what the emitted Gemm holds)."""
        return LinearHead(self.weight.astype(np.float32).astype(np.float64), self.bias.astype(np.float32).astype(np.float64), dict(self.info))


@dataclass
class CVResult:
    """Cross-validation of l2: the chosen value and, per grid value, accuracy (percent) and loss."""

    l2: float
    folds: int
    scores: list[dict]

    def to_dict(self) -> dict:
        return {"l2": self.l2, "folds": self.folds, "scores": self.scores}


@contextmanager
def one_blas_thread():
    """Run numpy math on one BLAS thread (``threadpoolctl``): the matrices here are small,
    multi-threaded OpenBLAS next to ONNX Runtime's threads was measured up to 10x slower on
    a busy machine, and one thread makes results independent of the core count."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a declared dependency
        yield False
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield True


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def one_hot(y: np.ndarray, k: int) -> np.ndarray:
    """``[N, k]`` float64 one-hot rows of integer labels ``y``."""
    out = np.zeros((len(y), k))
    out[np.arange(len(y)), y] = 1.0
    return out


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    s = z - z.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def standardization(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature ``(mean, std)`` of ``x``; std is 1 where a feature is (numerically) constant."""
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    scale = np.maximum(np.abs(mu), 1.0)
    sd = np.where(sd > 1e-7 * scale, sd, 1.0)
    return mu, sd


# ----------------------------------------------------------------------------- logistic


def _objective(theta: np.ndarray, z1: np.ndarray, y1h: np.ndarray, l2: float, k: int):
    """Value, gradient and probabilities at ``theta`` ([K, D+1], last column the bias)."""
    n = z1.shape[0]
    logits = z1 @ theta.T
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    s = e.sum(axis=1, keepdims=True)
    p = e / s
    logp_true = (logits - m - np.log(s))[y1h.astype(bool)]
    w = theta[:, :-1]
    value = -logp_true.sum() / n + 0.5 * l2 * float(np.sum(w * w))
    grad = (p - y1h).T @ z1 / n
    grad[:, :-1] += l2 * w
    return value, grad, p


def _hessian(z1: np.ndarray, p: np.ndarray, l2: float) -> np.ndarray:
    n, d1 = z1.shape
    k = p.shape[1]
    size = k * d1
    h = np.zeros((size, size))
    chunk = 4096
    for start in range(0, n, chunk):
        zc, pc = z1[start : start + chunk], p[start : start + chunk]
        g = (pc[:, :, None] * zc[:, None, :]).reshape(len(zc), size)
        h -= g.T @ g
        for c in range(k):
            blk = slice(c * d1, (c + 1) * d1)
            h[blk, blk] += (zc * pc[:, c : c + 1]).T @ zc
    h /= n
    reg = np.full(d1, l2)
    reg[-1] = _BIAS_RIDGE
    h[np.diag_indices(size)] += np.tile(reg, k)
    return h


def _armijo(theta, direction, value, grad, z1, y1h, l2, k, max_halvings: int = 40):
    """Backtracking until f(theta + t d) <= f + 1e-4 t <grad, d>; returns the accepted
    point with its value, gradient and probabilities (t = 0: no decrease found)."""
    slope = float(np.sum(grad * direction))
    if slope >= 0:  # not a descent direction (numerical trouble): fall back to the gradient
        direction = -grad
        slope = -float(np.sum(grad * grad))
    t = 1.0
    for _ in range(max_halvings):
        cand = theta + t * direction
        v, g, p = _objective(cand, z1, y1h, l2, k)
        if v <= value + 1e-4 * t * slope:
            return cand, t, v, g, p
        t *= 0.5
    return theta, 0.0, value, grad, None


def fit_logistic(
    z: np.ndarray, y: np.ndarray, k: int, l2: float, *, init: np.ndarray | None = None, solver: str = "auto", tol: float = 1e-8, max_iter: int | None = None
):
    """Multinomial logistic regression on ``z`` (see the module docstring).

    Returns ``(theta [K, D+1], info)``; ``info`` holds the solver, iterations, final
    objective and gradient norm.  Deterministic for a given input.
    """
    n, d = z.shape
    z1 = np.concatenate([z, np.ones((n, 1))], axis=1)
    y1h = one_hot(y, k)
    theta = np.zeros((k, d + 1)) if init is None else np.array(init, dtype=np.float64)
    if solver == "auto":
        solver = "newton" if k * (d + 1) <= NEWTON_MAX_PARAMS else "lbfgs"
    if solver not in ("newton", "lbfgs"):
        raise ValueError(f"unknown solver {solver!r}")
    newton = solver == "newton"
    theta, it, value, gnorm = _minimize(
        theta, z1, y1h, l2, k, tol, max_iter or (100 if newton else 2000), newton=newton
    )
    theta[:, -1] -= theta[:, -1].mean()
    return theta, {"solver": solver, "iterations": int(it), "objective": float(value), "grad_max": float(gnorm), "converged": bool(gnorm < tol * 10)}


def _minimize(theta, z1, y1h, l2, k, tol, max_iter, *, newton: bool, memory: int = 10):
    """Newton steps (exact Hessian) or L-BFGS steps (two-loop recursion over the last
    ``memory`` curvature pairs), each with Armijo backtracking, until max |grad| < tol."""
    s_hist: list[np.ndarray] = []
    y_hist: list[np.ndarray] = []
    value, grad, p = _objective(theta, z1, y1h, l2, k)
    gnorm = float(np.abs(grad).max())
    it = 0
    while gnorm >= tol and it < max_iter:
        it += 1
        if newton:
            step = np.linalg.solve(_hessian(z1, p, l2), -grad.reshape(-1))
        else:
            q = grad.reshape(-1).copy()
            alphas = []
            for s, yv in zip(reversed(s_hist), reversed(y_hist), strict=True):
                rho = 1.0 / float(yv @ s)
                a = rho * float(s @ q)
                alphas.append((a, rho))
                q -= a * yv
            if s_hist:
                q *= float(s_hist[-1] @ y_hist[-1]) / float(y_hist[-1] @ y_hist[-1])
            else:
                q /= max(1.0, float(np.linalg.norm(q)))
            for (a, rho), s, yv in zip(reversed(alphas), s_hist, y_hist, strict=True):
                q += (a - rho * float(yv @ q)) * s
            step = -q
        new_theta, t, new_value, new_grad, p = _armijo(
            theta, step.reshape(theta.shape), value, grad, z1, y1h, l2, k
        )
        if t == 0.0:
            break
        s = (new_theta - theta).reshape(-1)
        yv = (new_grad - grad).reshape(-1)
        if not newton and float(s @ yv) > 1e-12 * float(yv @ yv):
            s_hist, y_hist = (s_hist + [s])[-memory:], (y_hist + [yv])[-memory:]
        theta, value, grad = new_theta, new_value, new_grad
        gnorm = float(np.abs(grad).max())
    return theta, it, value, gnorm


# ----------------------------------------------------------------------------- ridge


def fit_ridge_path(z: np.ndarray, y: np.ndarray, k: int, l2s) -> list[np.ndarray]:
    """Ridge on one-hot targets for each l2 in ``l2s``: list of ``theta [K, D+1]``."""
    n, d = z.shape
    y1h = one_hot(y, k)
    zm, ym = z.mean(axis=0), y1h.mean(axis=0)
    u, s, vt = np.linalg.svd(z - zm, full_matrices=False)
    uty = u.T @ (y1h - ym)
    out = []
    for l2 in l2s:
        wt = vt.T @ ((s / (s * s + n * l2))[:, None] * uty)  # [D, K]
        theta = np.concatenate([wt.T, (ym - zm @ wt)[:, None]], axis=1)
        out.append(theta)
    return out


# ----------------------------------------------------------------------------- fitting


def _fit_path(x: np.ndarray, y: np.ndarray, k: int, kind: str, l2s, standardize: bool, solver: str = "auto", tol: float = 1e-8) -> list[LinearHead]:
    """Heads for each l2 of ``l2s`` (fitted largest l2 first, warm-started)."""
    mu, sd = standardization(x) if standardize else (np.zeros(x.shape[1]), np.ones(x.shape[1]))
    z = (x - mu) / sd
    classes, yr = np.unique(y, return_inverse=True)  # the classes present, y as their index
    kp = len(classes)
    fits: dict[int, tuple[np.ndarray, dict]] = {}
    if kind == "logistic":
        prev = None
        for i in sorted(range(len(l2s)), key=lambda i: -l2s[i]):
            fits[i] = fit_logistic(z, yr, kp, float(l2s[i]), init=prev, solver=solver, tol=tol)
            prev = fits[i][0]
    elif kind == "linear":
        fits = {
            i: (theta, {"solver": "svd"})
            for i, theta in enumerate(fit_ridge_path(z, yr, kp, [float(v) for v in l2s]))
        }
    else:
        raise ValueError(f"unknown head {kind!r}")
    absent = sorted(set(range(k)) - set(classes.tolist()))
    heads = []
    for i in range(len(l2s)):
        theta, info = fits[i]
        weight = np.zeros((k, x.shape[1]))
        bias = np.full(k, ABSENT_SCORE)
        w_raw = theta[:, :-1] / sd[None, :]  # the standardization folded in (module docstring)
        weight[classes], bias[classes] = w_raw, theta[:, -1] - w_raw @ mu
        info = dict(info, l2=float(l2s[i]), standardized=bool(standardize))
        if absent:
            info["absent_classes"] = list(absent)
        heads.append(LinearHead(weight, bias, info))
    return heads


def fit_head(
    x: np.ndarray, y: np.ndarray, num_classes: int, *, kind: str = "logistic", l2: float = 1e-2, standardize: bool = True, solver: str = "auto"
) -> LinearHead:
    """Fit one head on features ``x`` ``[N, D]`` and labels ``y`` in ``[0, num_classes)``."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    return _fit_path(x, y, num_classes, kind, [float(l2)], standardize, solver)[0]


def _loss(kind: str, scores: np.ndarray, y: np.ndarray) -> float:
    if kind == "logistic":
        p = softmax(scores)
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-15, None))))
    return float(np.mean(np.sum((scores - one_hot(y, scores.shape[1])) ** 2, axis=1)))


def stratified_split(y: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout) index arrays, sorted: ``round(fraction * n_c)`` of each class to the
    holdout, at least one sample of each class kept for training."""
    rng = np.random.default_rng(seed)
    train, hold = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        m = min(int(math.floor(fraction * len(idx) + 0.5)), len(idx) - 1) if fraction > 0 else 0
        hold.append(idx[:m])
        train.append(idx[m:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(hold))


def stratified_folds(y: np.ndarray, folds: int, seed: int = 0) -> list[np.ndarray]:
    """``folds`` disjoint index arrays covering ``y``; each class dealt round-robin after a
    seeded shuffle, so class proportions are as equal as the counts allow."""
    rng = np.random.default_rng(seed)
    dealt = np.concatenate(
        [idx[rng.permutation(len(idx))] for idx in (np.flatnonzero(y == c) for c in np.unique(y))]
    )
    return [np.sort(dealt[f::folds]).astype(np.int64) for f in range(folds)]


def cross_validate(
    x: np.ndarray, y: np.ndarray, num_classes: int, *, kind: str = "logistic", grid=None, standardize: bool = True, seed: int = 0, max_folds: int = 5
) -> CVResult:
    """Choose l2 from ``grid`` by stratified k-fold CV (see the module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    grid = tuple(float(v) for v in (grid or (LOGISTIC_GRID if kind == "logistic" else LINEAR_GRID)))
    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min())
    folds = max(2, min(max_folds, smallest, len(y) // 2))
    parts = stratified_folds(y, folds, seed)
    acc = np.zeros((folds, len(grid)))
    loss = np.zeros((folds, len(grid)))
    for f, test_idx in enumerate(parts):
        mask = np.ones(len(y), dtype=bool)
        mask[test_idx] = False
        heads = _fit_path(x[mask], y[mask], num_classes, kind, grid, standardize, tol=CV_TOL)
        for g, head in enumerate(heads):
            sc = head.scores(x[test_idx])
            acc[f, g] = 100.0 * float(np.mean(np.argmax(sc, axis=1) == y[test_idx]))
            loss[f, g] = _loss(kind, sc, y[test_idx])
    mean_acc, mean_loss = acc.mean(axis=0), loss.mean(axis=0)
    best = max(range(len(grid)), key=lambda g: (round(mean_acc[g], 9), -round(mean_loss[g], 12), grid[g]))
    scores = [{"l2": grid[g], "accuracy": float(mean_acc[g]), "loss": float(mean_loss[g])} for g in range(len(grid))]
    log.info("cv (%d folds): l2=%g accuracy %.2f%%", folds, grid[best], mean_acc[best])
    return CVResult(grid[best], folds, scores)
