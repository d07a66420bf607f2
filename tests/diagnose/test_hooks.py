"""Other commands' failures end with the ``onnxopt diagnose`` command that explains them;
``quantize``'s report lists the nodes that hurt most."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxopt.errors import BudgetError, VerificationError
from tests.conftest import MODELS
from tests.diagnose.diag_models import feeds, scaled
from tests.toy_models import tiny_cnn


def test_verify_failure_ends_with_the_diagnose_command(invoke, tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(tiny_cnn(), str(a))
    onnx.save(scaled(tiny_cnn(), "conv.w", 1.5, channel=0), str(b))
    np.savez(tmp_path / "d.npz", **feeds(8))
    r = invoke("verify", a, b, "--data", tmp_path / "d.npz")
    assert r.exit_code == 3
    line = r.stderr.strip().splitlines()[-1]
    assert line.endswith(f"; explain: onnxopt diagnose {a} {b} --data {tmp_path / 'd.npz'}")


def test_run_failure_ends_with_the_recipe_diagnosis(invoke, tmp_path):
    from onnxopt.core.runner import run

    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\n[[steps]]\npass = "quantize"\nmode = "dynamic"\nop_types = ["Gemm"]\n')
    model = tmp_path / "m.onnx"
    onnx.save(tiny_cnn(), str(model))
    np.savez(tmp_path / "ev.npz", **feeds(16), labels=np.zeros(16, np.int64))
    with pytest.raises((BudgetError, VerificationError)) as exc:
        run(recipe, model, eval_data=tmp_path / "ev.npz", max_accuracy_drop=0.0, metric="rel-l2")
    assert f"; explain: onnxopt diagnose --recipe {recipe} {model} --data {tmp_path / 'ev.npz'}" in exc.value.message


def test_prune_budget_failure_ends_with_the_diagnose_command():
    from onnxopt import prune

    with pytest.raises(BudgetError) as exc:
        prune(MODELS / "digits_resnet.onnx", method="blocks", blocks=2, eval_data=MODELS / "digits_test.npz", max_accuracy_drop=0.5, timing_runs=0)
    assert exc.value.message.endswith(f"; explain: onnxopt diagnose --recipe prune-blocks {MODELS / 'digits_resnet.onnx'} --data {MODELS / 'digits_test.npz'}")


def test_quantize_report_lists_sensitive_nodes(tmp_path):
    from onnxopt import quantize

    np.savez(tmp_path / "ev.npz", **feeds(32))
    r = quantize(tiny_cnn(), mode="dynamic", op_types=["Gemm", "Conv"], eval_data=tmp_path / "ev.npz", allow_slower=True, timing=False, preprocess=False)
    nodes = r.report["sensitive_nodes"]
    assert nodes and all(n["how"].startswith("diagnose") for n in nodes)
    assert nodes[0]["nodes"][0] in {"conv", "fc", "bn", "relu", "pool", "flatten"} and nodes[0]["added"] > 0


def test_quantize_budget_failure_ends_with_the_diagnose_command(tmp_path):
    from onnxopt import quantize
    from tests.quantize.quant_models import data_for, mlp

    m = mlp(outlier=30.0, hidden=64, classes=8)
    w = m.graph.initializer[0]
    a = onnx.numpy_helper.to_array(w).copy()
    a[0, 0] = 30.0
    w.CopyFrom(onnx.numpy_helper.from_array(a, w.name))
    onnx.save(m, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "ev.npz", **data_for(m, 300, labels=True))
    with pytest.raises(BudgetError) as exc:
        quantize(
            tmp_path / "m.onnx",
            mode="dynamic",
            eval_data=tmp_path / "ev.npz",
            max_accuracy_drop=0.0,
            metric="agreement",
            allow_slower=True,
            timing=False,
            preprocess=False,
        )
    assert exc.value.message.endswith(f"; explain: onnxopt diagnose --recipe cpu-int8 {tmp_path / 'm.onnx'} --data {tmp_path / 'ev.npz'}")


def _int8_recipe(tmp_path):
    r = tmp_path / "r.toml"
    r.write_text('name = "r"\n[[steps]]\npass = "simplify"\n[optimize]\ncandidates = ["fp32", "int8-dynamic"]\n[optimize.int8-dynamic]\nplain_ort = true\n')
    return r


def test_optimize_over_budget_rows_end_with_the_diagnose_command(tmp_path):
    from onnxopt import optimize

    model, ev = MODELS / "digits_mlp.onnx", MODELS / "digits_test.npz"
    res = optimize(
        model, recipe=_int8_recipe(tmp_path), eval_data=ev, max_accuracy_drop=0.0, metric="rel-l2", threads=1, time_budget=0.3,
        session_options=False,
    )
    rows = {r["name"]: r for r in res.report["decision"]["rows"]}
    over = [r for r in rows.values() if r["reason"].startswith("over budget")]
    assert over, rows
    for r in over:  # the model is not on disk: rebuilt from the input by the recipe it came from
        assert r["explain"] == f"onnxopt diagnose --recipe cpu-int8 {model} --data {ev}"
        assert r["reason"].endswith("; explain: " + r["explain"])
    assert rows["fp32"]["explain"] == "" and res.report["decision"]["chosen"] in ("fp32", "input")


def test_optimize_cli_table_names_the_diagnose_command(invoke, tmp_path):
    model, ev = MODELS / "digits_mlp.onnx", MODELS / "digits_test.npz"
    out = tmp_path / "o.onnx"
    r = invoke(
        "optimize", model, "-o", out, "--recipe", _int8_recipe(tmp_path), "--eval", ev, "--max-accuracy-drop", "0", "--metric", "rel-l2",
        "--threads", "1", "--time-budget", "0.3", "--no-session-options",
    )
    assert r.exit_code == 0, r.output  # the budget holds: the FP32 model is written
    assert f"explain: onnxopt diagnose --recipe cpu-int8 {model} --data {ev}" in " ".join(r.output.split())


def test_optimize_hint_per_kind():
    from onnxopt.core.recipe import load_recipe
    from onnxopt.optimize.select import Row, explain_rejections

    rows = [
        Row("fp16", "fp16", False, reason="over budget: cosine drop 3.00 > 1 points"),
        Row("ort-offline", "ort-offline", False, reason="failed verification: out of tolerance"),
        Row("prune-blocks-2", "prune", False, params={"method": "blocks"}, reason="over budget: x"),
        Row("recipe:simplify", "recipe", False, reason="over budget: x"),
        Row("int4", "int4", False, reason="over budget: x"),
        Row("int8-static", "int8-static", False, reason="slower than the input: 0.9x < 0.97"),
    ]
    explain_rejections(rows, "m.onnx", "d.npz", load_recipe("simplify"))
    assert [r.explain for r in rows] == [
        "onnxopt diagnose --fp16 m.onnx --data d.npz",
        "onnxopt diagnose --ort-optimizers m.onnx --data d.npz",
        "onnxopt diagnose --recipe prune-blocks m.onnx --data d.npz",
        "onnxopt diagnose --recipe simplify m.onnx --data d.npz",
        "",
        "",
    ]
    mem = Row("fp16", "fp16", False, reason="over budget: x")
    explain_rejections([mem], None, "d.npz")  # a model only in memory: no command names it
    assert mem.explain == "" and mem.reason == "over budget: x"


def test_quantize_collapse_ends_with_the_diagnose_command(tmp_path, invoke):
    from tests.quantize.quant_models import data_for, wide_softmax

    m = wide_softmax()
    onnx.save(m, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", **data_for(m, 32))
    r = invoke(
        "quantize", tmp_path / "m.onnx", "-o", tmp_path / "q.onnx", "--mode", "static", "--calibration", tmp_path / "d.npz", "--metric", "cosine",
        "--allow-slower", "--no-preprocess",
    )
    assert r.exit_code == 3 and "collapsed" in r.output
    assert r.stderr.strip().splitlines()[-1].endswith(f"; explain: onnxopt diagnose --recipe cpu-int8-static {tmp_path / 'm.onnx'} --data {tmp_path / 'd.npz'}")
