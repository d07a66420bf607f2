"""The numpy heads on arrays alone: optimality, folding, closed form, CV and splits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxopt import linear as H


def _blobs(n=240, d=8, k=3, seed=0, sep=2.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centres = rng.standard_normal((k, d)) * sep
    x = centres[y] + rng.standard_normal((n, d)) * 3.0 + 5.0  # offset and scale: standardization matters
    return x, y


def _gradient(x, y, k, w, b, l2):
    """The gradient of the module's logistic objective, written out independently."""
    n = len(y)
    s = x @ w.T + b
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(n), y] -= 1.0
    return p.T @ x / n + l2 * w, p.mean(0)


@pytest.mark.parametrize("solver", ["newton", "lbfgs"])
def test_logistic_solution_is_stationary(solver):
    x, y = _blobs()
    head = H.fit_head(x, y, 3, kind="logistic", l2=0.05, standardize=False, solver=solver)
    gw, gb = _gradient(x, y, 3, head.weight, head.bias, 0.05)
    assert head.info["solver"] == solver and head.info["converged"]
    assert np.abs(gw).max() < 1e-6 and np.abs(gb).max() < 1e-6
    assert abs(head.bias.sum()) < 1e-9  # biases centred


def test_solvers_agree_and_are_deterministic():
    x, y = _blobs(seed=3)
    a = H.fit_head(x, y, 3, l2=0.01, solver="newton")
    b = H.fit_head(x, y, 3, l2=0.01, solver="lbfgs")
    np.testing.assert_allclose(a.scores(x), b.scores(x), atol=1e-5)
    again = H.fit_head(x, y, 3, l2=0.01, solver="lbfgs")
    assert np.array_equal(b.weight, again.weight) and np.array_equal(b.bias, again.bias)


def test_standardization_is_folded_into_the_weights():
    x, y = _blobs(seed=1)
    mu, sd = H.standardization(x)
    folded = H.fit_head(x, y, 3, l2=0.02, standardize=True)
    on_z = H.fit_head((x - mu) / sd, y, 3, l2=0.02, standardize=False)
    # the folded head reads raw features and gives the scores of the head fitted on Z
    np.testing.assert_allclose(folded.scores(x), on_z.scores((x - mu) / sd), atol=1e-6)


def test_constant_feature_gets_zero_weight():
    x, y = _blobs()
    x = np.concatenate([x, np.full((len(x), 1), 7.0)], axis=1)
    head = H.fit_head(x, y, 3, l2=0.01)
    assert np.all(np.isfinite(head.weight)) and np.abs(head.weight[:, -1]).max() < 1e-9


def test_ridge_matches_the_normal_equations():
    x, y = _blobs(n=60, d=5, k=4, seed=2)
    l2 = 0.3
    head = H.fit_head(x, y, 4, kind="linear", l2=l2, standardize=False)
    n = len(y)
    xc, yc = x - x.mean(0), np.eye(4)[y] - np.eye(4)[y].mean(0)
    w = np.linalg.solve(xc.T @ xc / n + l2 * np.eye(5), xc.T @ yc / n).T
    np.testing.assert_allclose(head.weight, w, atol=1e-10)
    np.testing.assert_allclose(head.bias, np.eye(4)[y].mean(0) - w @ x.mean(0), atol=1e-10)


@pytest.mark.parametrize("kind", ["logistic", "linear"])
def test_absent_classes_are_never_predicted(kind):
    x, y = _blobs(k=3, sep=5.0)
    head = H.fit_head(x, y, 5, kind=kind, l2=0.01)
    assert head.num_classes == 5 and head.info["absent_classes"] == [3, 4]
    assert np.all(head.weight[3:] == 0) and np.all(head.bias[3:] == H.ABSENT_SCORE)
    assert set(np.unique(head.predict(x))) <= {0, 1, 2}
    assert np.mean(head.predict(x) == y) > 0.9


@pytest.mark.parametrize("kind", ["logistic", "linear"])
def test_cross_validation_picks_from_the_grid_deterministically(kind):
    x, y = _blobs(n=120, seed=4)
    a = H.cross_validate(x, y, 3, kind=kind, seed=0)
    b = H.cross_validate(x, y, 3, kind=kind, seed=0)
    grid = H.LOGISTIC_GRID if kind == "logistic" else H.LINEAR_GRID
    assert a.l2 in grid and a.folds == 5 and a.to_dict() == b.to_dict()
    best = max(s["accuracy"] for s in a.scores)
    assert next(s for s in a.scores if s["l2"] == a.l2)["accuracy"] == pytest.approx(best, abs=1e-9)


def test_cross_validation_with_tiny_classes_uses_two_folds():
    x, y = _blobs(n=9, k=3)
    y[:] = [0, 0, 0, 0, 1, 1, 1, 2, 2]
    assert H.cross_validate(x, y, 3).folds == 2


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=2, max_size=80), st.floats(0.0, 0.9), st.integers(0, 3))
def test_stratified_split_partitions_and_keeps_every_class(labels, fraction, seed):
    y = np.asarray(labels)
    train, hold = H.stratified_split(y, fraction, seed)
    assert sorted(np.concatenate([train, hold]).tolist()) == list(range(len(y)))
    assert set(y[train].tolist()) == set(y.tolist())  # each class keeps a training sample
    for c in np.unique(y):
        n_c = int(np.sum(y == c))
        assert int(np.sum(y[hold] == c)) == min(int(np.floor(fraction * n_c + 0.5)), n_c - 1)
    again = H.stratified_split(y, fraction, seed)
    assert np.array_equal(train, again[0]) and np.array_equal(hold, again[1])


def test_stratified_folds_are_disjoint_and_balanced():
    y = np.repeat(np.arange(3), [10, 7, 5])
    parts = H.stratified_folds(y, 5, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(y)))
    for c, n in ((0, 10), (1, 7), (2, 5)):
        counts = [int(np.sum(y[p] == c)) for p in parts]
        assert max(counts) - min(counts) <= 1 and sum(counts) == n


def test_logistic_matches_scikit_learn():
    """Same objective as sklearn's multinomial LogisticRegression with C = 1 / (N l2)
    (intercept unpenalized): the predicted probabilities agree."""
    lm = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 6))
    y = np.argmax(x @ rng.standard_normal((6, 4)) + 0.7 * rng.standard_normal((200, 4)), axis=1)
    l2 = 0.01
    head = H.fit_head(x, y, 4, kind="logistic", l2=l2, standardize=False)
    ref = lm.LogisticRegression(C=1.0 / (len(y) * l2), tol=1e-10, max_iter=10000).fit(x, y)
    np.testing.assert_allclose(H.softmax(head.scores(x)), ref.predict_proba(x), atol=1e-5)


def test_ridge_matches_scikit_learn():
    """Ridge on one-hot targets: sklearn's Ridge with alpha = N l2 gives the same weights."""
    lm = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((120, 5)) * np.array([1.0, 3.0, 0.5, 2.0, 1.0]) + 1.0
    y = rng.integers(0, 3, 120)
    l2 = 0.05
    head = H.fit_head(x, y, 3, kind="linear", l2=l2, standardize=False)
    ref = lm.Ridge(alpha=len(y) * l2).fit(x, H.one_hot(y, 3))
    np.testing.assert_allclose(head.weight, ref.coef_, atol=1e-9)
    np.testing.assert_allclose(head.bias, ref.intercept_, atol=1e-9)
