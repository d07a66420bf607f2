"""Reconstruction end to end: a consumer whose removed inputs are a linear function of the
kept ones is refitted to the original output (Conv and ConvTranspose), batch by batch."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.core.passes import Context
from onnxopt.core.registry import make_pass
from onnxopt.data import Dataset
from onnxopt.verify import check_model

from . import builders


def _calib(rng, n=48):
    ds = Dataset("calib", arrays={"x": rng.standard_normal((n, 2, 5, 5)).astype(np.float32)})
    return ds


@pytest.mark.parametrize("transpose", [True, False])
def test_refit_recovers_removed_linear_channels(rng, transpose):
    """Tolerance: ridge 1e-8 on 48 samples; the exact solution exists, so the relative error
    of the refitted layer and of the model output is below 1e-3."""
    m = builders.duplicated_convt_net(rng, transpose=transpose)
    data = _calib(rng)
    p = make_pass("prune-channels", {"ratio": 0.5, "align": 1, "ridge": 1e-8})
    res = p(m, Context(data=data, reference=m))
    check_model(res.model)
    w1 = next(t for t in res.model.graph.initializer if t.name == "w1")
    assert list(w1.dims) == [8, 2, 3, 3]  # the scaled copies went
    (rec,) = res.report.details["reconstruction"]
    assert rec["op"] == ("ConvTranspose" if transpose else "Conv") and rec["applied"]
    assert rec["error_before"] > 0.1 and rec["error_after"] < 1e-3
    assert rec["rows"] > 48  # sampled output positions of every batch
    x = rng.standard_normal((4, 2, 5, 5))
    ref, out = builders.run(m, x), builders.run(res.model, x)
    assert out.shape == ref.shape
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-3


def test_refit_streams_batches(rng, tmp_path):
    """The normal equations are accumulated batch by batch: the same 48 samples as one .npz
    (batches of 32 + 16) or as a folder of six .npz files (six batches of 8) give the same
    rows and the same refit, to float rounding."""
    from onnxopt.data import load_data

    m = builders.duplicated_convt_net(rng, transpose=False)
    x = rng.standard_normal((48, 2, 5, 5)).astype(np.float32)
    np.savez(tmp_path / "all.npz", x=x)
    folder = tmp_path / "parts"
    folder.mkdir()
    for i in range(6):
        np.savez(folder / f"p{i}.npz", x=x[8 * i : 8 * (i + 1)])
    p = make_pass("prune-channels", {"ratio": 0.5, "align": 1, "ridge": 1e-3})
    recs = []
    for src in (tmp_path / "all.npz", folder):
        res = p(m, Context(data=load_data(src, m), reference=m))
        recs.append(res.report.details["reconstruction"][0])
    assert recs[0]["rows"] == recs[1]["rows"] == 48 * 25  # every output position
    assert recs[1]["error_after"] == pytest.approx(recs[0]["error_after"], rel=1e-6, abs=1e-9)
    assert recs[0]["error_after"] < 0.05 < recs[0]["error_before"]
