"""``onnxopt demo``: its foundation steps on the bundled models, and the command's summary,
outputs and exit codes (the later capabilities' steps are exercised by their own tests; the
whole demo takes about a minute and a half, too long for the default suite)."""

from __future__ import annotations

import onnx

from onnxopt.demo import DemoLog, find_models_dir, run_demo
from onnxopt.demo.steps import foundation
from tests.toy_models import MODELS

# README "Bundled models": test accuracy of each model (ONNX Runtime)
ACCURACY = {"digits_mlp": "96.75%", "digits_cnn": "99.50%", "digits_resnet": "99.50%"}


def test_foundation_steps_on_the_bundled_models(tmp_path):
    dlog = DemoLog()
    written = foundation(dlog, MODELS, tmp_path, list(ACCURACY))
    assert dlog.failures == [] and [r["step"] for r in dlog.rows] == [f"{s} {n}" for n in ACCURACY for s in ("inspect", "simplify", "verify")]
    for name, acc in ACCURACY.items():
        verify_row = next(r for r in dlog.rows if r["step"] == f"verify {name}")
        assert verify_row["result"].startswith("ok: rel-L2 0.0e+00") and f"accuracy {acc}" in verify_row["result"]
        m = onnx.load(str(written[name]))
        onnx.checker.check_model(m, full_check=True)
        assert any(p.key == "onnxopt" for p in m.metadata_props)
    cnn = next(r for r in dlog.rows if r["step"] == "simplify digits_cnn")
    assert cnn["result"].startswith("nodes 12 -> 9")  # BatchNormalization folded into Conv


def test_demo_command_summary_and_exit_codes(invoke, tmp_path, monkeypatch):
    """The command prints each section and the summary table; a failing step is reported
    on stderr and exits 1 (a demo step failing on the bundled models is a bug)."""
    import onnxopt.demo.steps as steps

    def only_foundation(dlog, mdir, out, *, quick=False):
        foundation(dlog, mdir, out, ["digits_mlp"])
        dlog.sections.append(("a section", "its text"))

    monkeypatch.setattr(steps, "run_all", only_foundation)
    res = invoke("demo", "--out", tmp_path / "demo", "--quick")
    assert res.exit_code == 0, res.stderr
    for text in (
        "== a section ==",
        "its text",
        "== summary ==",
        "inspect digits_mlp",
        "simplify digits_mlp",
        "verify digits_mlp",
        f"outputs in {tmp_path / 'demo'}/",
    ):
        assert text in res.stdout, text
    assert (tmp_path / "demo" / "digits_mlp.sim.onnx").is_file()

    def failing(dlog, mdir, out, *, quick=False):
        dlog.step("broken step", lambda: 1 / 0)

    monkeypatch.setattr(steps, "run_all", failing)
    res = invoke("demo", "--out", tmp_path / "demo2")
    assert res.exit_code == 1 and "FAIL" in res.stdout
    assert res.stderr.strip() == "error: demo step broken step: division by zero"
    line = invoke("demo", "--models", tmp_path / "nowhere", "--out", tmp_path / "demo3")
    assert line.exit_code == 2 and line.stderr.startswith("error: bundled models not found")


def test_models_are_found_and_the_api_reports(tmp_path, monkeypatch):
    import onnxopt.demo.steps as steps

    assert find_models_dir() == MODELS
    monkeypatch.setattr(steps, "run_all", lambda dlog, mdir, out, quick=False: dlog.step("noop", lambda: {"result": "fine"}))
    res = run_demo(None, tmp_path / "d")
    assert res.ok and res.report["rows"][0]["result"] == "fine" and res.report["models"] == str(MODELS)
