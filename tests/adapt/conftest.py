"""Fixtures of tests/adapt: a tiny classifier on disk with learnable labelled data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.adapt.adapt_models import conv_classifier, features_of, linear_labels


@pytest.fixture
def tiny(tmp_path):
    """(model path, data path, model) with 4 learnable classes over 160 samples."""
    model = conv_classifier()
    x = np.random.default_rng(2).standard_normal((160, 2, 4, 4)).astype(np.float32)
    y = linear_labels(features_of(model, x), 4)
    mpath = tmp_path / "tiny.onnx"
    onnx.save(model, str(mpath))
    dpath = tmp_path / "data.npz"
    np.savez(dpath, x=x, labels=y)
    return mpath, dpath, model
