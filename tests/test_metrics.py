"""onnxopt.metrics: each metric by its formula; the Evaluator against the manifest's accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxopt.data import load_data
from onnxopt.errors import DataError, UsageError
from onnxopt.metrics import Budget, Evaluator, default_metric, is_class_scores, score
from tests.toy_models import MODELS


def _scores(seed=0, n=50, c=4):
    return np.random.default_rng(seed).standard_normal((n, c)).astype(np.float32)


def test_top1_and_agreement():
    r = _scores()
    labels = r.argmax(1).copy()
    labels[:5] = (labels[:5] + 1) % 4  # 5 of 50 wrong
    assert score("top1", [r], [r], labels) == pytest.approx(90.0)
    c = r.copy()
    c[:10] = c[:10, ::-1]  # reversed columns: argmax changes for most of these rows
    changed = np.mean(c.argmax(1) != r.argmax(1))
    assert score("agreement", [r], [c]) == pytest.approx(100 * (1 - changed))


def test_cosine_and_rel_l2():
    r = _scores(1).astype(np.float64)
    c = r + 0.1 * _scores(2)
    cos = np.mean([(a @ b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(r, c, strict=True)])
    assert score("cosine", [r], [c]) == pytest.approx(100 * cos)
    assert score("rel-l2", [r], [c]) == pytest.approx(100 * (1 - np.linalg.norm(c - r) / np.linalg.norm(r)))
    assert score("cosine", [r], [r]) == pytest.approx(100.0)


def test_worst_output_counts_and_shape_change_scores_zero():
    r = _scores()
    good, bad = r.copy(), -r
    assert score("cosine", [r, r], [good, bad]) == pytest.approx(-100.0)
    assert score("cosine", [r], [r[:, :2]]) == 0.0


def test_default_metric():
    r = _scores()
    assert is_class_scores(r) and not is_class_scores(r[:, :1])
    assert default_metric([r], np.zeros(50, np.int64)) == "top1"
    assert default_metric([r]) == "agreement"
    assert default_metric([np.zeros((50, 3, 4), np.float32)]) == "cosine"


def test_metric_errors():
    r = _scores()
    with pytest.raises(UsageError, match="unknown metric"):
        score("f1", [r], [r])
    with pytest.raises(DataError, match="needs 'labels'"):
        score("top1", [r], [r])
    with pytest.raises(DataError, match="'labels' has 3 entries"):
        score("top1", [r], [r], np.zeros(3, np.int64))
    with pytest.raises(DataError, match="applies to none"):
        score("top1", [np.zeros((5, 2, 2), np.float32)], [np.zeros((5, 2, 2), np.float32)], np.zeros(5, np.int64))
    with pytest.raises(UsageError, match=">= 0"):
        Budget(-1.0)
    with pytest.raises(UsageError, match="unknown metric"):
        Budget(1.0, "f1")


def test_evaluator_reproduces_the_manifest_accuracy():
    manifest = json.loads((MODELS / "manifest.json").read_text())["models"]["digits_mlp"]
    model = MODELS / "digits_mlp.onnx"
    import onnx

    ds = load_data(MODELS / "digits_test.npz", onnx.load(str(model)))
    ev = Evaluator(model, ds)
    assert ev.metric == "top1"
    assert ev.reference_score == pytest.approx(100 * manifest["test_accuracy"], abs=1e-9)
    assert ev.drop(model) == pytest.approx(0.0)
    ok, s = ev.within(model, Budget(0.0))
    assert ok and s == pytest.approx(ev.reference_score)


def test_evaluator_labels_follow_the_samples_a_fixed_batch_runs(tmp_path):
    """10 labelled samples, a model whose batch is fixed to 4: 8 are scored, against the
    first 8 labels (not an error about 10 labels vs 8 outputs)."""
    from tests.toy_models import tiny_cnn

    m = tiny_cnn()
    for vi in (m.graph.input[0], m.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = 4
    x = np.random.default_rng(0).standard_normal((10, 3, 8, 8)).astype(np.float32)
    from onnxopt.runtime import run_dataset

    labels = run_dataset(tiny_cnn(), load_data(_save(tmp_path, x=x)))[0].argmax(1)
    labels[8:] = (labels[8:] + 1) % 5  # the dropped samples' labels must not count
    ds = load_data(_save(tmp_path, x=x, labels=labels), m)
    ev = Evaluator(m, ds, "top1")
    assert len(ev.labels) == 8 and ev.reference_score == pytest.approx(100.0)


def _save(tmp_path, **arrays):
    p = tmp_path / f"d{len(list(tmp_path.iterdir()))}.npz"
    np.savez(p, **arrays)
    return p


def test_the_scoring_batch_is_bounded_by_the_reference_live_activations(monkeypatch):
    """Candidates are scored at the batch whose live activations (``stats.live_bytes``)
    fit ``runtime.SCORING_BYTES``: PP-OCRv4 rec's optimize peaked at 1060 MB scoring
    at batch 32, 717 MB at 8; small models keep the default batch."""
    import onnxopt.runtime as rt
    from onnxopt.data import DEFAULT_BATCH, Dataset
    from tests.test_stats import _chain

    m = _chain(1000, 4)  # 4000 bytes a tensor per sample, two alive: 8000
    ds = Dataset("<mem>", arrays={"x": np.ones((40, 1000), np.float32)})
    assert rt.scoring_batch(m, ds) == DEFAULT_BATCH
    assert rt.scoring_batch(m, ds, budget=8000 * 5) == 5
    monkeypatch.setattr(rt, "SCORING_BYTES", 8000 * 3)
    ev = Evaluator(m, ds, "rel-l2")
    assert ev.batch_size == 3 and ds.fed == 40
    assert ev.drop(m) == pytest.approx(0)
