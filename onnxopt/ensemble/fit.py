"""Fitting an ensemble on labelled validation data, in pure numpy and deterministically.

Two things are fitted, both on the members' outputs ``Z_m`` (``[n, C]``, logits or, with
``--softmax``, probabilities) and integer labels ``y``:

**Stacking head** (``fit_stack_head``): features ``x_i = concat_m Z_m[i]`` (``F = sum C_m``);
the head is ``scores = x W + b`` followed by Softmax, fitted by ``onnxopt.linear`` (the one
linear-model module, shared with ``adapt``): ``logistic`` is its multinomial logistic
regression, ``ridge`` its closed-form ridge on one-hot targets (``linear`` there), both on
standardized features with the standardization folded into ``W`` and ``b``.  ``lam`` is given,
or chosen by ``onnxopt.linear.cross_validate`` (stratified, seeded k-fold) over
``LAMBDA_GRID``.  Formulas are in ``onnxopt/linear.py``.

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

from ..linear import cross_validate, fit_head, log_softmax, one_hot, softmax

__all__ = [
    "LAMBDA_GRID",
    "StackHead",
    "WeightFit",
    "softmax",
    "log_softmax",
    "fit_stack_head",
    "fit_weights",
]

LAMBDA_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
FOLDS = 5


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


def fit_stack_head(X: np.ndarray, y: np.ndarray, classes: int, *, kind: str = "logistic", lam: float | None = None, folds: int = FOLDS) -> StackHead:
    """Fit the stacking head on member features ``X`` ``[n, F]`` and labels ``y``.

    ``lam=None`` picks the L2 strength by ``folds``-fold cross-validation over ``LAMBDA_GRID``.
    """
    if kind not in ("logistic", "ridge"):
        raise ValueError(f"unknown head {kind!r}")
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    linear_kind = "logistic" if kind == "logistic" else "linear"
    cv = None
    if lam is None:
        res = cross_validate(X, y, classes, kind=linear_kind, grid=LAMBDA_GRID, max_folds=folds)
        lam = res.l2
        cv = {"folds": res.folds, "grid": list(LAMBDA_GRID), "scores": res.scores}
    head = fit_head(X, y, classes, kind=linear_kind, l2=float(lam))
    info = dict(head.info)
    info["train_accuracy"] = float(100.0 * np.mean(head.predict(X) == y))
    if cv:
        info["cv"] = cv
    return StackHead(head.weight.T, head.bias, kind, float(lam), info)


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
        for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
            mix = np.maximum(Py @ w, 1e-300)
            w = w * (Py / mix[:, None]).mean(axis=0)
            w = w / w.sum()
            cur = _mixture_nll(w, Py)
            if prev - cur < tol:
                break
            prev = cur
        return WeightFit(w, start, _mixture_nll(w, Py), it, "em")
    Zs = np.stack([np.asarray(o, dtype=np.float64) for o in outputs])  # [M, n, C]
    Y = one_hot(y, Zs.shape[2])
    nll, g = _logit_nll_grad(w, Zs, Y)
    start = nll
    eta = 1.0 / max(float(np.abs(g).max()), 1e-12)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        for _ in range(40):
            cand = w * np.exp(-eta * (g - g.max()))
            cand = cand / cand.sum()
            c_nll, c_g = _logit_nll_grad(cand, Zs, Y)
            if c_nll <= nll - 1e-4 * float(g @ (w - cand)) or c_nll < nll - tol:
                break
            eta *= 0.5
        else:  # no step decreased the NLL
            break
        improvement = nll - c_nll
        w, nll, g = cand, c_nll, c_g
        eta *= 2.0
        if improvement < tol:
            break
    return WeightFit(w, start, nll, it, "exponentiated-gradient")
