"""``onnxopt.bench.bench`` and ``compare_latency`` on the bundled and tiny models (tiny runs)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from onnxopt.bench import api as bench_api
from onnxopt.bench.api import bench, compare_latency
from onnxopt.bench.report import CSV_COLUMNS, render
from onnxopt.errors import DataError, ModelError, ProviderError, UsageError
from onnxopt.runtime import create_session, cuda_available
from tests.bench.bench_toys import fixed_batch_mlp, mlp

FAST = dict(runs=5, warmup=1, block=5)


@pytest.fixture(scope="module")
def digits(request):
    from tests.conftest import MODELS

    res = bench(
        [MODELS / "digits_mlp.onnx", MODELS / "digits_cnn.onnx"],
        data=MODELS / "digits_test.npz",
        batches=[1, 4],
        **FAST,
    )
    return res


def test_report_structure_and_figures(digits):
    rep = digits.report
    assert (
        digits.ok
        and not rep["interrupted"]
        and rep["command"] == "bench"
        and rep["schema_version"] == 1
    )
    assert rep["baseline"] == "digits_mlp" and rep["provider"] == "cpu"
    assert [m["name"] for m in rep["models"]] == ["digits_mlp", "digits_cnn"]
    assert len(rep["results"]) == 4  # 2 models x 2 batch sizes
    for r in rep["results"]:
        assert r["status"] == "ok" and r["batch"] == r["batch_requested"]
        lat = r["latency_ms"]
        assert (
            lat["n"] >= 5 and 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        )
        assert r["first_run_ms"] > 0 and r["input_shapes"]["image"][0] == r["batch"]
        assert r["throughput"]["samples_per_s"] > 0 and r["throughput"]["concurrency"] == 1
        lo, hi = r["speedup"]["ci95"]
        assert lo <= r["speedup"]["ratio"] <= hi
    assert rep["results"][0]["speedup"] == {
        "ratio": 1.0,
        "ci95": [1.0, 1.0],
        "verdict": "baseline",
        "ci_method": None,
    }
    # 5 runs = one round: too few to pair by round, the CI is the independent bootstrap's
    assert rep["results"][1]["speedup"]["ci_method"] == "iid"
    mlp_info, cnn_info = rep["models"]
    # accuracy from the labels matches the bundled models' manifest (96.75 %, 99.5 %)
    assert mlp_info["accuracy"]["top1"] == pytest.approx(96.75) and cnn_info["accuracy"][
        "top1"
    ] == pytest.approx(99.5)
    assert (
        mlp_info["accuracy"]["agreement"] == 100.0 and 0 < cnn_info["accuracy"]["agreement"] <= 100
    )
    assert (
        mlp_info["params"] > 0 and mlp_info["file_bytes"] > 0 and mlp_info["session_create_ms"] > 0
    )
    assert mlp_info["memory"]["rss_after_bytes"] > 0
    env = rep["environment"]
    for key in (
        "cpu",
        "cores_usable",
        "onnxruntime",
        "provider",
        "provider_options",
        "intra_op_threads_effective",
    ):
        assert key in env
    assert set(digits.samples) == {(n, b) for n in ("digits_mlp", "digits_cnn") for b in (1, 4)}


def test_every_format_renders(digits):
    rep = digits.report
    parsed = json.loads(render(rep, "json"))
    assert parsed["results"][1]["latency_ms"]["n"] == rep["results"][1]["latency_ms"]["n"]
    rows = list(csv.DictReader(io.StringIO(render(rep, "csv"))))
    assert len(rows) == 4 and list(rows[0]) == CSV_COLUMNS
    assert {(r["model"], r["batch"]) for r in rows} == {
        ("digits_mlp", "1"),
        ("digits_mlp", "4"),
        ("digits_cnn", "1"),
        ("digits_cnn", "4"),
    }
    table = render(rep, "table")
    assert "vs digits_mlp [95% CI]" in table and "digits_cnn" in table and "top1 %" in table
    md = render(rep, "markdown")
    assert md.count("| digits_cnn |") == 3 and "|---" in md
    with pytest.raises(ValueError):
        render(rep, "xml")


def test_json_is_strict_when_figures_are_not_finite(digits):
    rep = json.loads(render(digits.report, "json"))
    rep["models"][1]["accuracy"]["rel_l2"] = float("inf")
    out = json.loads(render(rep, "json"))
    assert out["models"][1]["accuracy"]["rel_l2"] == "inf"


def test_plot_writes_an_image(digits, tmp_path):
    p = digits.plot(tmp_path / "b.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert digits.plot_bytes("svg").lstrip().startswith(b"<?xml")
    with pytest.raises(UsageError, match="must end in"):
        digits.plot(tmp_path / "b.txt")


def test_fixed_batch_model_skips_configurations_with_a_note(tmp_path):
    fixed = tmp_path / "fixed.onnx"
    fixed.write_bytes(fixed_batch_mlp(1).SerializeToString())
    res = bench([mlp(), fixed], batches=[1, 3], **FAST, throughput=False)
    by = {(r["model"], r["batch_requested"]): r for r in res.report["results"]}
    assert by[("fixed", 1)]["status"] == "ok"
    skipped = by[("fixed", 3)]
    assert (
        skipped["status"] == "skipped"
        and "fixed batch dimension of 1" in skipped["notes"][0]
        and skipped["latency_ms"] is None
    )
    assert by[("mlp0", 3)]["status"] == "ok"
    assert "skipped" in render(res.report, "table")
    with pytest.raises(UsageError, match="every configuration was skipped"):
        bench([fixed], batches=[2], **FAST)


def test_synthesized_inputs_and_agreement_with_baseline():
    a, b = mlp(seed=0), mlp(seed=1)
    res = bench([a, b, a], **FAST, names=["a", "b", "a again"])
    infos = res.report["models"]
    assert infos[0]["accuracy"]["top1"] is None and infos[0]["accuracy"]["agreement"] == 100.0
    assert infos[2]["accuracy"]["rel_l2"] == 0.0 and infos[2]["accuracy"]["agreement"] == 100.0
    assert infos[1]["accuracy"]["rel_l2"] > 0.1
    assert "synthesized" in infos[0]["accuracy"]["data"]


def test_baseline_choices(models_dir):
    cnn, mlp_p = models_dir / "digits_cnn.onnx", models_dir / "digits_mlp.onnx"
    res = bench([cnn], baseline=mlp_p, **FAST, throughput=False, accuracy=False)
    assert [m["name"] for m in res.report["models"]] == ["digits_mlp", "digits_cnn"] and res.report[
        "baseline"
    ] == "digits_mlp"
    res = bench([cnn, mlp_p], baseline=1, **FAST, throughput=False, accuracy=False)
    assert res.report["baseline"] == "digits_mlp"
    res = bench([cnn, cnn], baseline="digits_cnn#2", **FAST, throughput=False, accuracy=False)
    assert [m["name"] for m in res.report["models"]] == [
        "digits_cnn",
        "digits_cnn#2",
    ] and res.report["baseline"] == "digits_cnn#2"
    with pytest.raises(UsageError, match="out of range"):
        bench([cnn], baseline=3, **FAST)


def test_bad_input_is_refused_before_measuring(tmp_path, models_dir):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="bad.onnx"):
        bench([models_dir / "digits_mlp.onnx", bad], **FAST)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, image=np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(DataError, match="does not fit model 'digits_mlp'") as exc:
        bench([models_dir / "digits_mlp.onnx"], data=wrong, **FAST)
    assert exc.value.path == str(wrong)
    for kw in (
        dict(runs=0),
        dict(duration=-1.0),
        dict(concurrency=0),
        dict(batches=[0]),
        dict(threads=0),
    ):
        with pytest.raises(UsageError):
            bench([mlp()], **{**FAST, **kw})
    with pytest.raises(UsageError, match="cuda only"):
        bench([mlp()], cudnn_conv_algo_search="HEURISTIC", **FAST)
    with pytest.raises(UsageError):
        bench([], **FAST)


@pytest.mark.skipif(cuda_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_provider_error_and_auto_falls_back():
    with pytest.raises(ProviderError, match="CUDAExecutionProvider is not available"):
        bench([mlp()], provider="cuda", **FAST)
    res = bench(
        [mlp()], provider="auto", cudnn_conv_algo_search="HEURISTIC", **FAST, throughput=False
    )
    assert res.report["provider"] == "cpu" and any("ignored" in n for n in res.report["notes"])


def test_concurrency_throughput_and_io_binding():
    res = bench([mlp()], concurrency=2, threads=1, io_binding=True, batches=[2], **FAST)
    r = res.report["results"][0]
    assert r["throughput"]["concurrency"] == 2 and r["throughput"]["runs"] >= 2 * 2 * 3
    assert (
        res.report["environment"]["io_binding"] is True and res.report["settings"]["threads"] == 1
    )


def test_duration_bounds_the_run():
    res = bench(
        [mlp(), mlp(seed=1)], runs=None, duration=0.1, warmup=1, throughput=False, accuracy=False
    )
    r = res.report["results"][0]
    assert (
        r["latency_ms"]["n"] >= 5
        and res.report["settings"]["runs"] is None
        and res.report["settings"]["duration_s"] == 0.1
    )


def test_ctrl_c_returns_partial_results(monkeypatch):
    real = bench_api.measure_interleaved

    def interrupted(run_one, n, **kw):
        count = {"k": 0}

        def run(i):
            count["k"] += 1
            if count["k"] > 12:
                raise KeyboardInterrupt
            return run_one(i)

        return real(run, n, **kw)

    monkeypatch.setattr(bench_api, "measure_interleaved", interrupted)
    res = bench([mlp(), mlp(seed=1)], runs=100, batches=[1, 2], warmup=0)
    rep = res.report
    assert not res.ok and rep["interrupted"]
    statuses = [r["status"] for r in rep["results"]]
    assert statuses[:2] == ["interrupted", "interrupted"] and statuses[2:] == [
        "not measured",
        "not measured",
    ]
    assert rep["results"][0]["latency_ms"]["n"] >= 5
    assert rep["models"][0]["accuracy"] is None  # accuracy phase never ran
    assert "INTERRUPTED" in render(rep, "table")


def test_compare_latency_with_sessions_and_protos():
    a = mlp()
    feed = {"x": np.ones((2, 16), np.float32)}
    rows = compare_latency(
        [a, create_session(mlp(seed=1), "cpu", threads=1)], feed, runs=10, warmup=1, threads=1
    )
    assert [r["verdict"] for r in rows][0] == "baseline" and rows[0]["speedup"] == 1.0
    for r in rows:
        assert r["n"] >= 10 and 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
    lo, hi = rows[1]["ci95"]
    assert lo <= rows[1]["speedup"] <= hi and rows[1]["verdict"] in ("faster", "slower", "same")
    with pytest.raises(UsageError):
        compare_latency([a, a], [feed], runs=5)


# --- audit additions -----------------------------------------------------------------


def test_few_rounds_are_noted_and_widen_the_ci():
    res = bench([mlp(), mlp(seed=1)], runs=10, warmup=1, block=5, throughput=False, accuracy=False)
    rep = res.report
    sp = rep["results"][1]["speedup"]
    assert sp["ci_method"] == "paired-block+iid" and sp["ci95"][0] <= sp["ratio"] <= sp["ci95"][1]
    assert any("2 complete round(s)" in n and "union" in n for n in rep["notes"])
    assert "widened with few rounds" in render(rep, "table")
    rows = compare_latency([mlp(), mlp(seed=1)], {"x": np.ones((1, 16), np.float32)}, runs=5)
    assert rows[1]["ci_method"] == "iid" and rows[0]["ci_method"] is None


def test_repeated_batch_sizes_are_one_configuration():
    res = bench([mlp()], batches=[2, 2, 1, 2], **FAST, throughput=False, accuracy=False)
    assert res.report["settings"]["batches"] == [2, 1]
    assert [r["batch"] for r in res.report["results"]] == [2, 1]


def test_external_data_counts_in_the_size_and_stays_on_disk(tmp_path, monkeypatch):
    import onnx

    from onnxopt import io as oio

    m = mlp(width=64)
    path = tmp_path / "ext.onnx"
    onnx.save(m, str(path), save_as_external_data=True, location="ext.bin", size_threshold=0)
    data_bytes = (tmp_path / "ext.bin").stat().st_size
    assert data_bytes >= 64 * 64 * 4
    seen = []
    real = oio.load_model

    def spy(src, **kw):
        seen.append(kw.get("load_external", True))
        return real(src, **kw)

    monkeypatch.setattr(bench_api, "load_model", spy)
    res = bench([path], **FAST, throughput=False)
    info = res.report["models"][0]
    assert info["file_bytes"] == path.stat().st_size + data_bytes
    assert info["params"] == 64 * 64 + 64 * 4
    assert seen == [False]  # the weights were validated, not read, by bench itself
    assert res.report["results"][0]["status"] == "ok" and info["accuracy"]["rel_l2"] == 0.0
    (tmp_path / "ext.bin").unlink()
    with pytest.raises(ModelError, match="ext"):
        bench([path], **FAST)
