"""optimize() end to end on the bundled models: guarantee, budget, provenance, determinism."""

from __future__ import annotations

import json

import onnx
import pytest

from onnxopt.core.provenance import read_provenance
from onnxopt.errors import DataError, ModelError, ProviderError, RecipeError, UsageError
from onnxopt.optimize.api import optimize, render_decision_table
from onnxopt.runtime import cuda_available
from onnxopt.verify import check_model

FAST = {"threads": 1, "time_budget": 0.5}


@pytest.fixture(scope="module")
def mlp_result():
    from tests.conftest import MODELS

    return optimize(
        MODELS / "digits_mlp.onnx",
        calibration=MODELS / "digits_calib.npz",
        eval_data=MODELS / "digits_test.npz",
        max_accuracy_drop=1.0,
        **FAST,
    )


def test_mlp_guarantee_and_table(mlp_result):
    d = mlp_result.report["decision"]
    names = [r["name"] for r in d["rows"]]
    assert names == [
        "fp32",
        "int8-dynamic",
        "int8-dynamic-ort",
        "int8-static",
        "int8-static-per-channel",
        "int4",
        "ort-offline",
    ]
    chosen = [r for r in d["rows"] if r["status"] == "chosen"]
    # which candidate wins is a timing decision (this machine is shared): the test checks
    # the guarantee, whichever it is; "input" = no candidate survived its confirmation run
    if d["chosen"] == "input":
        assert chosen == [] and all(r["status"] != "chosen" for r in d["rows"])
    else:
        assert len(chosen) == 1 and chosen[0]["name"] == d["chosen"]
        c = chosen[0]
        assert c["drop"] <= 1.0 and c["confirm_ratio"] >= 0.97
    assert all(r["reason"] for r in d["rows"])
    check_model(mlp_result.model)
    text = render_decision_table(mlp_result.report)
    assert d["chosen"] in text and "top1" in text
    json.dumps(mlp_result.report)  # JSON-able


def test_provenance_names_choice_without_timings(mlp_result):
    prov = read_provenance(mlp_result.model)
    assert prov["command"] == "optimize"
    last = prov["steps"][-1]
    assert last["candidate"] == mlp_result.report["decision"]["chosen"]
    text = json.dumps(prov)
    assert '"ratio"' not in text and "latency" not in text and "seconds" not in text


def test_written_bytes_deterministic_for_a_choice(models_dir, tmp_path):
    # input already simplified: the FP32 candidate has the input's graph (ratio 1 by
    # construction, never timed) and min_gain forbids the lossy one, so the choice is fixed
    # and two runs must write the same bytes
    from onnxopt.simplify.api import simplify

    src = tmp_path / "mlp.sim.onnx"
    simplify(models_dir / "digits_mlp.onnx").save(src)
    r = tmp_path / "fp32.toml"
    r.write_text(
        'name = "fp32only"\n[[steps]]\npass = "simplify"\n[optimize]\ncandidates = ["fp32", "int8-dynamic"]\nmin_gain = 100.0\nsession_options = false\n'
    )
    # (the session-option search is a timing choice too: off, so that the choice is fixed)
    outs = []
    for _ in range(2):
        res = optimize(src, recipe=r, **FAST)
        rows = {x["name"]: x for x in res.report["decision"]["rows"]}
        assert res.report["decision"]["chosen"] == "fp32" and rows["fp32"]["same_as_input"]
        assert "nothing beat the input" in res.report["decision"]["summary"]
        outs.append(res.model.SerializeToString(deterministic=True))
    assert outs[0] == outs[1]


def test_without_calibration_static_is_refused(models_dir):
    res = optimize(models_dir / "digits_cnn.onnx", **FAST)
    rows = {r["name"]: r for r in res.report["decision"]["rows"]}
    assert (
        rows["int8-static"]["status"] == "refused"
        and "calibration" in rows["int8-static"]["reason"]
    )
    assert res.report["decision"]["data"] == "<synthesized>"
    assert res.report["decision"]["metric"] == "agreement"


@pytest.mark.skipif(cuda_available(), reason="checks the no-CUDA path")
def test_cuda_target_without_cuda(models_dir, tmp_path):
    with pytest.raises(ProviderError, match="CUDAExecutionProvider"):
        optimize(models_dir / "digits_mlp.onnx", target="cuda")
    text = (
        (models_dir.parent / "passes" / "cuda.toml")
        .read_text()
        .replace("allow_cpu_verification = false", "allow_cpu_verification = true")
    )
    r = tmp_path / "cuda-cpu.toml"
    r.write_text(text)
    res = optimize(
        models_dir / "digits_mlp.onnx",
        target="cuda",
        recipe=r,
        eval_data=models_dir / "digits_test.npz",
        **FAST,
    )
    rows = {x["name"]: x for x in res.report["decision"]["rows"]}
    assert rows["fp16"]["status"] == "not timed" and rows["fp16"]["verified"]
    assert rows["fp16"]["verification"].startswith("reference evaluator")
    assert res.report["decision"]["chosen"] in ("fp32", "input")


@pytest.mark.cuda
def test_cuda_fp16_timed(models_dir):
    res = optimize(
        models_dir / "digits_resnet.onnx",
        target="cuda",
        eval_data=models_dir / "digits_test.npz",
        time_budget=1.0,
    )
    rows = {x["name"]: x for x in res.report["decision"]["rows"]}
    assert rows["fp16"]["timed"] and rows["fp16"]["verification"] == "onnxruntime/cuda"


def test_bad_input(models_dir, tmp_path):
    with pytest.raises(UsageError, match="unknown target"):
        optimize(models_dir / "digits_mlp.onnx", target="tpu")
    with pytest.raises(RecipeError, match="unknown recipe"):
        optimize(models_dir / "digits_mlp.onnx", recipe="no-such-recipe")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError):
        optimize(bad)
    import numpy as np

    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, image=np.zeros((4, 1, 6, 6), np.float32))
    with pytest.raises(DataError, match="wrong.npz"):
        optimize(models_dir / "digits_mlp.onnx", eval_data=wrong, max_accuracy_drop=1.0)


def test_input_model_not_modified(models_dir):
    m = onnx.load(str(models_dir / "digits_cnn.onnx"))
    before = m.SerializeToString(deterministic=True)
    optimize(m, recipe="simplify", **FAST)
    assert m.SerializeToString(deterministic=True) == before


def test_recipe_without_optimize_table_is_a_candidate(models_dir):
    # cpu-int8 (quantize engineer's recipe): simplify = preprocessing, the quantize step = one candidate
    res = optimize(
        models_dir / "digits_mlp.onnx",
        recipe="cpu-int8",
        eval_data=models_dir / "digits_test.npz",
        **FAST,
    )
    rows = {r["name"]: r for r in res.report["decision"]["rows"]}
    assert set(rows) == {"fp32", "recipe:cpu-int8"}
    assert rows["recipe:cpu-int8"]["verified"] and not rows["recipe:cpu-int8"]["lossless"]
    assert res.report["decision"]["chosen"] in ("fp32", "recipe:cpu-int8", "input")


def test_bert_like_graph_is_fused_and_fp16_checked(tmp_path):
    # transformer fusion runs on BERT-like graphs only, and is kept only if not slower; the
    # FP16 candidate of a fused graph (com.microsoft ops the reference evaluator lacks) is
    # checked on onnxruntime/cpu instead, not timed
    import numpy as np

    from onnxopt.data import Dataset
    from tests.optimize.opt_models import bert_like

    m = bert_like()
    cal = Dataset(
        "cal",
        arrays={"x": np.random.default_rng(0).standard_normal((16, 8, 32)).astype(np.float32)},
    )
    r = tmp_path / "bert.toml"
    r.write_text(
        'name = "b"\n[[steps]]\npass = "simplify"\n[[steps]]\npass = "transformer-fusion"\nmodel_type = "bert"\n'
        '[optimize]\ncandidates = ["fp32", "int8-dynamic", "fp16"]\n[optimize.int8-dynamic]\nplain_ort = false\n'
    )
    res = optimize(m, recipe=r, calibration=cal, **FAST)
    rep = res.report
    steps = {s["name"]: s for s in rep["steps"]}
    kept = [n for n in rep["notes"] if n.startswith("transformer-fusion ")]
    assert len(kept) == 1 and ("kept" in kept[0] or "dropped" in kept[0])
    # kept or dropped is a timing decision: the steps are those of the base actually used
    if "kept" in kept[0]:
        assert steps["transformer-fusion"]["modified"]
    else:
        assert "transformer-fusion" not in steps and "simplify" in steps
    rows = {x["name"]: x for x in rep["decision"]["rows"]}
    assert set(rows) == {"fp32", "int8-dynamic", "fp16"}
    assert rows["fp16"]["status"] == "not timed" and rows["fp16"]["verified"]
    assert rows["fp16"]["drop"] <= 1.0 and rows["fp16"]["ratio"] is None
    base_fused = "kept" in kept[0]
    assert rows["fp16"]["verification"].startswith(
        "onnxruntime/cpu" if base_fused else "reference evaluator"
    )
    assert rep["decision"]["chosen"] in ("fp32", "int8-dynamic", "input")
    check_model(res.model)
    chosen = next((x for x in rep["decision"]["rows"] if x["status"] == "chosen"), None)
    assert chosen is None or (chosen["drop"] <= 1.0 and chosen["confirm_ratio"] >= 0.97)


def test_non_bert_graph_skips_fusion(models_dir):
    res = optimize(models_dir / "digits_mlp.onnx", **FAST)
    assert "transformer-fusion skipped: the graph is not BERT-like" in res.report["notes"]
    assert "transformer-fusion" not in {s["name"] for s in res.report["steps"]}


def test_shapes_checked_and_synthesized_budget_uses_many_samples(models_dir):
    with pytest.raises(DataError, match="'imag'"):
        optimize(models_dir / "digits_cnn.onnx", shapes={"imag": (1, 1, 8, 8)}, **FAST)
    # --shape fixes one feed; the budget is still judged on 64 synthesized samples of it
    res = optimize(
        models_dir / "digits_cnn.onnx", recipe="simplify", shapes={"image": (1, 1, 8, 8)}, **FAST
    )
    d = res.report["decision"]
    assert d["data"] == "<synthesized>" and d["samples"] == 64
    assert "(64 samples)" in render_decision_table(res.report)


def _prune_recipe(tmp_path, table: str):
    """A recipe whose candidates are fp32 and the prune candidate ``[optimize.prune]`` sets."""
    r = tmp_path / "prune.toml"
    r.write_text(
        'name = "p"\n[[steps]]\npass = "simplify"\n[optimize]\ncandidates = ["fp32", "prune"]\n'
        f"[optimize.prune]\n{table}\n"
    )
    return r


def test_prune_candidate_when_the_recipe_asks(models_dir, tmp_path):
    r = _prune_recipe(tmp_path, "ratio = [0.25]")
    res = optimize(
        models_dir / "digits_cnn.onnx",
        recipe=r,
        calibration=models_dir / "digits_calib.npz",
        eval_data=models_dir / "digits_test.npz",
        **FAST,
    )
    rows = {x["name"]: x for x in res.report["decision"]["rows"]}
    assert set(rows) == {"fp32", "prune-channels-0.25"}
    p = rows["prune-channels-0.25"]
    assert p["source"] == "onnxopt.prune" and not p["lossless"] and p["reason"]
    # seeded and deterministic: 25% of the channels, refitted, lose 0.25 points (of 1)
    assert p["verified"] and p["drop"] == pytest.approx(0.25)
    assert p["size_bytes"] < rows["fp32"]["size_bytes"]
    check_model(res.model)


def test_prune_blocks_candidate_removes_blocks(models_dir, tmp_path):
    """``method = "blocks"``: the recipe's value is a number of blocks, handed to prune as such."""
    r = _prune_recipe(tmp_path, 'method = "blocks"\nratio = [1]')
    res = optimize(
        models_dir / "digits_resnet.onnx",
        recipe=r,
        calibration=models_dir / "digits_calib.npz",
        eval_data=models_dir / "digits_test.npz",
        max_accuracy_drop=5.0,
        **FAST,
    )
    rows = {x["name"]: x for x in res.report["decision"]["rows"]}
    p = rows["prune-blocks-1"]
    assert p["verified"], p["reason"]
    assert p["size_bytes"] < rows["fp32"]["size_bytes"] and p["drop"] is not None
    check_model(res.model)


def test_prune_blocks_recipe_needs_whole_numbers(models_dir, tmp_path):
    r = _prune_recipe(tmp_path, 'method = "blocks"\nratio = [0.5]')
    with pytest.raises(RecipeError, match="whole numbers of blocks"):
        optimize(models_dir / "digits_resnet.onnx", recipe=r, **FAST)


@pytest.mark.parametrize("fused_ratio, ci, kept", [(1.3, (1.2, 1.4), True), (0.7, (0.6, 0.8), False), (0.97, (0.9, 1.05), True)])
def test_fusion_is_kept_or_dropped_by_its_timing(tmp_path, monkeypatch, fused_ratio, ci, kept):
    """Both branches of the timed fusion decision, pinned: the fused FP32 model's measured
    ratio vs the unfused one decides which base every candidate is built from; a ratio
    under 1 whose CI reaches 1 is noise, and the (exact) fusion stays."""
    import numpy as np

    import onnxopt.optimize.api as oapi
    from onnxopt.bench.timing import Speedup
    from onnxopt.data import Dataset
    from tests.optimize.opt_models import bert_like

    class FixedFusionTimer(oapi.Timer):
        def measure(self, names, **kw):
            if names == ["fused"]:
                return {"fused": (Speedup(fused_ratio, *ci), None, None)}
            return super().measure(names, **kw)

    monkeypatch.setattr(oapi, "Timer", FixedFusionTimer)
    cal = Dataset("cal", arrays={"x": np.random.default_rng(0).standard_normal((16, 8, 32)).astype(np.float32)})
    r = tmp_path / "bert.toml"
    r.write_text(
        'name = "b"\n[[steps]]\npass = "simplify"\n[[steps]]\npass = "transformer-fusion"\nmodel_type = "bert"\n'
        '[optimize]\ncandidates = ["fp32"]\n'
    )
    rep = optimize(bert_like(), recipe=r, calibration=cal, **FAST).report
    steps = {s["name"]: s for s in rep["steps"]}
    note = next(n for n in rep["notes"] if n.startswith("transformer-fusion "))
    if kept:
        assert note.startswith(f"transformer-fusion kept: the fused FP32 model ran {fused_ratio:.2f}x")
        assert steps["transformer-fusion"]["modified"]
    else:
        assert note.startswith(f"transformer-fusion dropped: the fused FP32 model ran {fused_ratio:.2f}x")
        assert "transformer-fusion" not in steps and "simplify" in steps
