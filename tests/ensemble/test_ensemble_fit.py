"""fit.py on arrays alone: the stacking head (on onnxopt.linear) and simplex weights."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.ensemble.fit import LAMBDA_GRID, fit_stack_head, fit_weights, softmax


def _problem(n=150, F=5, C=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, F))
    W = rng.standard_normal((F, C)) * 2
    y = np.argmax(X @ W + 0.5 * rng.standard_normal((n, C)), axis=1)
    return X, y


@pytest.mark.parametrize("kind", ["logistic", "ridge"])
def test_stack_head_folds_standardization_and_is_deterministic(kind):
    X, y = _problem()
    X = X * np.array([10.0, 0.1, 1.0, 5.0, 2.0]) + 3.0  # badly scaled features
    h1 = fit_stack_head(X, y, 3, kind=kind)
    h2 = fit_stack_head(X, y, 3, kind=kind)
    assert h1.lam in LAMBDA_GRID and h1.info["cv"]["folds"] == 5 and len(h1.info["cv"]["scores"]) == len(LAMBDA_GRID)
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
