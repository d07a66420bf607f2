"""The ``session-options`` pass: options carried by a recipe step (and by ``tune``), verified by ``run_pipeline``."""

from __future__ import annotations

import onnx
import pytest

from onnxopt.core.passes import Context
from onnxopt.core.pipeline import run_pipeline
from onnxopt.core.provenance import read_provenance
from onnxopt.core.registry import make_pass
from onnxopt.errors import RecipeError
from onnxopt.serving.carry import ORT_CONFIG_KEY, carried_options, session
from onnxopt.session_options import SessionConfig
from tests.toy_models import tiny_cnn

ONE_THREAD = {"intra_op_threads": 1, "allow_spinning": False}


def test_step_carries_options_with_spinning_mirrored():
    src = tiny_cnn()
    res = run_pipeline(src, [make_pass("session-options", ONE_THREAD)], Context(), command="run")
    step = res.report["steps"][0]
    assert step["modified"] and step["verification"]["comparison"]["outputs"][0]["rel_l2"] == 0.0
    assert ORT_CONFIG_KEY in {p.key for p in res.model.metadata_props}
    assert ORT_CONFIG_KEY not in {p.key for p in src.metadata_props}
    # ORT has no key for spinning: it comes back from the step's details in the provenance
    assert carried_options(res.model) == SessionConfig(intra_op_threads=1, allow_spinning=False)
    assert read_provenance(res.model)["steps"][0]["details"]["session_options"]["allow_spinning"] is False
    so = session(res.model).get_session_options()
    assert so.intra_op_num_threads == 1 and so.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_second_run_changes_nothing():
    once = run_pipeline(tiny_cnn(), [make_pass("session-options", ONE_THREAD)], Context(), command="run").model
    twice = run_pipeline(once, [make_pass("session-options", ONE_THREAD)], Context(), command="run")
    assert not twice.report["steps"][0]["modified"]
    assert carried_options(twice.model) == carried_options(once)


@pytest.mark.parametrize(
    "params, message",
    [({"intra_op_threads": 10_000}, "cores"), ({"execution_mode": "async"}, "execution_mode"), ({"allow_spinning": "no"}, "allow_spinning")],
)
def test_bad_options_are_refused_before_any_work(params, message):
    with pytest.raises(RecipeError, match=message):
        make_pass("session-options", params)


def test_cli_run_recipe_step(invoke, tmp_path):
    src, recipe, out = tmp_path / "m.onnx", tmp_path / "serve.toml", tmp_path / "o.onnx"
    onnx.save(tiny_cnn(), str(src))
    recipe.write_text('name = "serve"\n[[steps]]\npass = "simplify"\n[[steps]]\npass = "session-options"\nintra_op_threads = 1\n')
    res = invoke("run", recipe, src, "-o", out)
    assert res.exit_code == 0, res.output
    assert carried_options(onnx.load(str(out))) == SessionConfig(intra_op_threads=1)
    bad = recipe.with_name("bad.toml")
    bad.write_text('name = "bad"\n[[steps]]\npass = "session-options"\ninter_op_threads = -1\n')
    res = invoke("run", bad, src, "-o", tmp_path / "o2.onnx")
    assert res.exit_code == 2 and "inter_op_threads" in res.output and not (tmp_path / "o2.onnx").exists()
