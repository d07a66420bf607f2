"""Fitting an ensemble on labelled validation data, in pure numpy and deterministically.

Two things are fitted, both on the members' outputs ``Z_m`` (``[n, C]``, logits or, with
``--softmax``, probabilities) and integer labels ``y``:

**Stacking head** (``fit_stack_head``): features ``x_i = concat_m Z_m[i]`` (``F = sum C_m``),
standardized ``z = (x - mu) / sigma``; the head is ``scores = z W + b`` followed by Softmax.

- ``logistic`` (default): multinomial logistic regression with an L2 penalty on ``W``
  (not on ``b``)::

      L(W, b) = -(1/n) sum_i log softmax(z_i W + b)[y_i] + (lam / 2) ||W||_F^2
      grad_W  = Z^T (P - Y) / n + lam W,    grad_b = mean_i (P_i - Y_i)
      H[(f,c),(g,d)] = (1/n) sum_i z~_if z~_ig (p_ic [c = d] - p_ic p_id) + lam [f = g < F][c = d]

  (``z~ = [z, 1]``, ``Y`` one-hot).  Solved by ``onnxopt.adapt.heads.fit_logistic`` (the same
  objective; damped Newton with the Hessian above for small problems, L-BFGS with Armijo
  backtracking otherwise, from ``W = 0``) to a max-abs gradient of 1e-7.  ``b`` is centred over classes at the end
  (the loss is invariant to a shift of all biases), so the solution is unique.
- ``ridge``: least squares on one-hot targets, closed form
  ``W = (Z^T Z / n + lam I)^-1 Z^T (Y - mean Y) / n``, ``b = mean(Y)`` (``z`` is centred).

``lam`` is given, or chosen by deterministic 5-fold cross-validation (fold ``k`` holds the
samples with ``i mod 5 = k``) over ``LAMBDA_GRID``, minimising the held-out log-loss
(logistic) or squared error (ridge); ties go to the larger ``lam``.  Standardization is folded
into the Gemm: ``W' = W / sigma[:, None]``, ``b' = b - (mu / sigma) W``.

**Fusion weights** (``fit_weights``): ``w`` on the simplex (``w_m >= 0``, ``sum w = 1``),
minimising the fused negative log-likelihood:

- on probabilities (``--softmax``): the mixture ``p_i = sum_m w_m P_m[i]``,
  ``NLL(w) = -(1/n) sum_i log sum_m w_m P_m[i, y_i]``, by the EM fixed point
  ``w_m <- w_m (1/n) sum_i P_m[i, y_i] / sum_k w_k P_k[i, y_i]`` (monotone, convex problem);
- on logits: ``f_i = sum_m w_m Z_m[i]``, ``NLL(w) = -(1/n) sum_i log softmax(f_i)[y_i]``,
  ``dNLL/dw_m = (1/n) sum_i (softmax(f_i) - Y_i) . Z_m[i]``, by exponentiated-gradient
  (mirror) descent ``w <- w exp(-eta g) / Z`` with Armijo backtracking on ``eta``.

Everything starts from fixed points (zeros, uniform weights) and uses no randomness, so
re-runs give bit-identical results on the same machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..adapt import heads as _heads

__all__ = [
    "LAMBDA_GRID",
    "StackHead",
    "WeightFit",
    "softmax",
    "log_softmax",
    "fit_logistic",
    "fit_ridge",
    "fit_stack_head",
    "fit_weights",
]

LAMBDA_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
FOLDS = 5


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    s = x - x.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def _one_hot(y: np.ndarray, classes: int) -> np.ndarray:
    out = np.zeros((len(y), classes))
    out[np.arange(len(y)), y] = 1.0
    return out


# --- multinomial logistic regression -------------------------------------------------------


def _logistic_loss_grad(theta: np.ndarray, Xa: np.ndarray, Y: np.ndarray, lam: float):
    """Loss and gradient; ``theta`` is ``[(F + 1), C]`` (last row = bias), ``Xa = [X, 1]``.

    The objective is the one ``onnxopt.adapt.heads`` minimises (same formula), in this
    module's ``[features, classes]`` layout."""
    value, grad, _ = _heads._objective(np.asarray(theta).T, Xa, Y, lam, Y.shape[1])
    return value, grad.T


def fit_logistic(X: np.ndarray, y: np.ndarray, classes: int, lam: float, *, solver: str = "auto", max_iter: int = 200, tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray, dict]:
    """Multinomial logistic regression on (already standardized) ``X``: ``(W, b, info)``.

    Solved by ``onnxopt.adapt.heads.fit_logistic`` (damped Newton for small problems,
    L-BFGS otherwise); ``b`` comes back centred over classes."""
    X = np.asarray(X, dtype=np.float64)
    if solver not in ("auto", "newton", "lbfgs"):
        raise ValueError(f"unknown solver {solver!r}")
    iters = max_iter if solver == "newton" else (None if solver == "auto" else max(max_iter, 1000))
    theta, info = _heads.fit_logistic(X, np.asarray(y), classes, lam, solver=solver, tol=tol, max_iter=iters)
    W, b = theta[:, :-1].T, theta[:, -1]
    return W, b, {"solver": info["solver"], "iterations": info["iterations"], "converged": info["converged"], "loss": info["objective"]}


def fit_ridge(X: np.ndarray, y: np.ndarray, classes: int, lam: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Ridge regression on one-hot targets (closed form; ``X`` standardized): ``(W, b, info)``."""
    X = np.asarray(X, dtype=np.float64)
    n, F = X.shape
    Y = _one_hot(y, classes)
    mx, my = X.mean(axis=0), Y.mean(axis=0)
    Xc, Yc = X - mx, Y - my
    A = Xc.T @ Xc / n + lam * np.eye(F)
    W = np.linalg.solve(A, Xc.T @ Yc / n)
    b = my - mx @ W
    resid = X @ W + b - Y
    return W, b, {"solver": "closed-form", "iterations": 1, "converged": True, "loss": float((resid**2).sum() / n + lam * (W * W).sum())}


def _held_out_loss(kind: str, W, b, X, y, classes) -> float:
    S = X @ W + b
    if kind == "logistic":
        return -float(log_softmax(S)[np.arange(len(y)), y].mean())
    return float(((S - _one_hot(y, classes)) ** 2).sum(axis=1).mean())


@dataclass
class StackHead:
    """A fitted linear head: ``scores = x W + b`` on raw (unstandardized) features, then Softmax."""

    W: np.ndarray  # [F, C]
    b: np.ndarray  # [C]
    kind: str
    lam: float
    info: dict = field(default_factory=dict)

    def scores(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) @ self.W.astype(np.float64) + self.b.astype(np.float64)

    def summary(self) -> dict:
        return {"kind": self.kind, "l2": self.lam, "features": int(self.W.shape[0]), "classes": int(self.W.shape[1]), **self.info}


def _standardize(X: np.ndarray):
    mu = X.mean(axis=0)
    sigma = X.std(axis=0)
    sigma = np.where(sigma > 1e-12, sigma, 1.0)
    return (X - mu) / sigma, mu, sigma


def fit_stack_head(X: np.ndarray, y: np.ndarray, classes: int, *, kind: str = "logistic", lam: float | None = None, folds: int = FOLDS) -> StackHead:
    """Fit the stacking head on member features ``X`` ``[n, F]`` and labels ``y``.

    ``lam=None`` picks the L2 strength by ``folds``-fold cross-validation over ``LAMBDA_GRID``.
    """
    if kind not in ("logistic", "ridge"):
        raise ValueError(f"unknown head {kind!r}")
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    Z, mu, sigma = _standardize(X)

    def fit(Xs, ys, lam_):
        if kind == "logistic":
            return fit_logistic(Xs, ys, classes, lam_)
        return fit_ridge(Xs, ys, classes, lam_)

    cv = None
    if lam is None:
        idx = np.arange(len(y))
        k = min(folds, len(y))
        losses = []
        for lam_ in LAMBDA_GRID:
            total = 0.0
            for f in range(k):
                test = idx % k == f
                Zt, mt, st = _standardize(X[~test])
                W, b, _ = fit(Zt, y[~test], lam_)
                total += _held_out_loss(kind, W, b, (X[test] - mt) / st, y[test], classes) * int(test.sum())
            losses.append(total / len(y))
        best = min(range(len(LAMBDA_GRID)), key=lambda i: (round(losses[i], 12), -LAMBDA_GRID[i]))
        lam = LAMBDA_GRID[best]
        cv = {"folds": k, "grid": list(LAMBDA_GRID), "held_out_loss": losses}
    W, b, info = fit(Z, y, float(lam))
    W_raw = W / sigma[:, None]
    b_raw = b - (mu / sigma) @ W
    S = Z @ W + b
    info["train_accuracy"] = float(100.0 * np.mean(S.argmax(axis=1) == y))
    if cv:
        info["cv"] = cv
    return StackHead(W_raw, b_raw, kind, float(lam), info)


# --- fusion weights on the simplex --------------------------------------------------------


@dataclass
class WeightFit:
    weights: np.ndarray
    nll_uniform: float
    nll: float
    iterations: int
    method: str

    def summary(self) -> dict:
        d = asdict(self)
        d["weights"] = [float(w) for w in self.weights]
        return d


def _mixture_nll(w, Py):
    return -float(np.log(np.maximum(Py @ w, 1e-300)).mean())


def _logit_nll_grad(w, Zs, Y):
    f = np.tensordot(w, Zs, axes=1)  # [n, C]
    logp = log_softmax(f)
    nll = -float((Y * logp).sum(axis=1).mean())
    R = np.exp(logp) - Y
    g = np.einsum("mic,ic->m", Zs, R) / Y.shape[0]
    return nll, g


def fit_weights(outputs: list[np.ndarray], y: np.ndarray, *, probabilities: bool, max_iter: int = 1000, tol: float = 1e-12) -> WeightFit:
    """Simplex weights minimising the fused NLL (see the module docstring).

    ``outputs``: per member ``[n, C]`` arrays (probabilities when ``probabilities``, else logits).
    """
    M = len(outputs)
    y = np.asarray(y, dtype=np.int64)
    w = np.full(M, 1.0 / M)
    if probabilities:
        Py = np.stack([np.asarray(o, dtype=np.float64)[np.arange(len(y)), y] for o in outputs], axis=1)  # [n, M]
        start = prev = _mixture_nll(w, Py)
        it = 0
        while it < max_iter:
            it += 1
            mix = np.maximum(Py @ w, 1e-300)
            w = w * (Py / mix[:, None]).mean(axis=0)
            w = w / w.sum()
            cur = _mixture_nll(w, Py)
            if prev - cur < tol:
                break
            prev = cur
        return WeightFit(w, start, _mixture_nll(w, Py), it, "em")
    Zs = np.stack([np.asarray(o, dtype=np.float64) for o in outputs])  # [M, n, C]
    Y = _one_hot(y, Zs.shape[2])
    nll, g = _logit_nll_grad(w, Zs, Y)
    start = nll
    eta = 1.0 / max(float(np.abs(g).max()), 1e-12)
    it = 0
    while it < max_iter:
        it += 1
        accepted = False
        for _ in range(40):
            cand = w * np.exp(-eta * (g - g.max()))
            cand = cand / cand.sum()
            c_nll, c_g = _logit_nll_grad(cand, Zs, Y)
            if c_nll <= nll - 1e-4 * float(g @ (w - cand)) or c_nll < nll - tol:
                accepted = True
                break
            eta *= 0.5
        if not accepted:
            break
        improvement = nll - c_nll
        w, nll, g = cand, c_nll, c_g
        eta *= 2.0
        if improvement < tol:
            break
    return WeightFit(w, start, nll, it, "exponentiated-gradient")
