"""fit.py on arrays alone: logistic regression, ridge, cross-validation, simplex weights."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.ensemble.fit import (
    LAMBDA_GRID,
    _logistic_loss_grad,
    fit_logistic,
    fit_ridge,
    fit_stack_head,
    fit_weights,
    softmax,
)


def _problem(n=150, F=5, C=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, F))
    W = rng.standard_normal((F, C)) * 2
    y = np.argmax(X @ W + 0.5 * rng.standard_normal((n, C)), axis=1)
    return X, y


def test_logistic_gradient_matches_finite_differences():
    X, y = _problem(n=40, F=3, C=3)
    Xa = np.hstack([X, np.ones((len(X), 1))])
    Y = np.eye(3)[y]
    theta = np.random.default_rng(1).standard_normal((4, 3)) * 0.3
    _, G = _logistic_loss_grad(theta, Xa, Y, 0.1)
    eps = 1e-6
    num = np.zeros_like(theta)
    for idx in np.ndindex(theta.shape):
        d = np.zeros_like(theta)
        d[idx] = eps
        num[idx] = (_logistic_loss_grad(theta + d, Xa, Y, 0.1)[0] - _logistic_loss_grad(theta - d, Xa, Y, 0.1)[0]) / (2 * eps)
    np.testing.assert_allclose(G, num, atol=1e-7)


def test_newton_and_lbfgs_reach_the_same_optimum():
    X, y = _problem()
    W1, b1, i1 = fit_logistic(X, y, 3, 1e-2, solver="newton")
    W2, b2, i2 = fit_logistic(X, y, 3, 1e-2, solver="lbfgs")
    assert i1["converged"] and i2["converged"]
    np.testing.assert_allclose(W1, W2, atol=1e-5)
    np.testing.assert_allclose(b1, b2, atol=1e-5)
    assert abs(b1.sum()) < 1e-9  # bias centred over classes
    # optimality: the gradient vanishes at the solution
    Xa = np.hstack([X, np.ones((len(X), 1))])
    _, G = _logistic_loss_grad(np.vstack([W1, b1]), Xa, np.eye(3)[y], 1e-2)
    assert np.abs(G).max() < 1e-6


def test_ridge_matches_least_squares():
    X, y = _problem()
    lam = 0.05
    W, b, _ = fit_ridge(X, y, 3, lam)
    n, F = X.shape
    Y = np.eye(3)[y]
    # augmented least squares: [Xc; sqrt(n lam) I] W = [Yc; 0]
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    A = np.vstack([Xc, np.sqrt(n * lam) * np.eye(F)])
    B = np.vstack([Yc, np.zeros((F, 3))])
    W_ls = np.linalg.lstsq(A, B, rcond=None)[0]
    np.testing.assert_allclose(W, W_ls, atol=1e-10)
    np.testing.assert_allclose(b, Y.mean(0) - X.mean(0) @ W, atol=1e-12)


@pytest.mark.parametrize("kind", ["logistic", "ridge"])
def test_stack_head_folds_standardization_and_is_deterministic(kind):
    X, y = _problem()
    X = X * np.array([10.0, 0.1, 1.0, 5.0, 2.0]) + 3.0  # badly scaled features
    h1 = fit_stack_head(X, y, 3, kind=kind)
    h2 = fit_stack_head(X, y, 3, kind=kind)
    assert h1.lam in LAMBDA_GRID and h1.info["cv"]["folds"] == 5
    np.testing.assert_array_equal(h1.W, h2.W)
    np.testing.assert_array_equal(h1.b, h2.b)
    assert h1.W.shape == (5, 3) and h1.b.shape == (3,)
    # the folded head on raw features reproduces the in-sample accuracy recorded on standardized ones
    acc = 100.0 * np.mean(h1.scores(X).argmax(1) == y)
    assert acc == pytest.approx(h1.info["train_accuracy"])
    assert acc > 80.0


def test_fixed_l2_skips_cross_validation():
    X, y = _problem()
    h = fit_stack_head(X, y, 3, lam=0.5)
    assert h.lam == 0.5 and "cv" not in h.info


def test_mixture_weights_prefer_the_informative_member():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=200)
    good = softmax(np.eye(4)[y] * 4 + 0.3 * rng.standard_normal((200, 4)))
    noise = softmax(rng.standard_normal((200, 4)))
    wf = fit_weights([noise, good, noise[::-1]], y, probabilities=True)
    assert wf.weights.sum() == pytest.approx(1.0) and (wf.weights >= 0).all()
    assert wf.weights[1] > 0.9
    assert wf.nll < wf.nll_uniform


def test_logit_weights_decrease_nll_and_stay_on_the_simplex():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=150)
    good = np.eye(3)[y] * 3 + rng.standard_normal((150, 3))
    bad = rng.standard_normal((150, 3)) * 3
    wf = fit_weights([bad, good], y, probabilities=False)
    assert wf.weights.sum() == pytest.approx(1.0) and (wf.weights >= 0).all()
    assert wf.weights[1] > wf.weights[0]
    assert wf.nll < wf.nll_uniform
    again = fit_weights([bad, good], y, probabilities=False)
    np.testing.assert_array_equal(wf.weights, again.weights)
