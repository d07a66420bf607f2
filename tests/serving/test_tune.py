"""tune: the search (structure, exactness, never the defaults' loser), the API and the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.serving.carry import carried_options, check_carried
from onnxopt.serving.tune import branch_width, candidate_configs, tune
from onnxopt.session_options import SessionConfig
from tests.conftest import MODELS
from tests.toy_models import tiny_cnn


def three_branches() -> onnx.ModelProto:
    """x[N,16] -> three MatMul->Relu->MatMul members -> Sum: width 3 at two depths."""
    import numpy as np

    rng = np.random.default_rng(0)
    nodes, inits, outs = [], [], []
    for k in range(3):
        inits += [
            numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), f"w{k}a"),
            numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), f"w{k}b"),
        ]
        nodes += [
            helper.make_node("MatMul", ["x", f"w{k}a"], [f"h{k}"]),
            helper.make_node("Relu", [f"h{k}"], [f"r{k}"]),
            helper.make_node("MatMul", [f"r{k}", f"w{k}b"], [f"y{k}"]),
        ]
        outs.append(f"y{k}")
    nodes.append(helper.make_node("Sum", outs, ["y"]))
    g = helper.make_graph(
        nodes,
        "three",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_branch_width_and_candidates():
    assert branch_width(tiny_cnn()) == 1
    assert branch_width(three_branches()) == 3
    chain = candidate_configs(1, 4)
    assert [c.intra_op_threads for c in chain] == [1, 2, 4] and all(c.execution_mode == "sequential" for c in chain)
    par = [c for c in candidate_configs(3, 4) if c.execution_mode == "parallel"]
    assert {c.inter_op_threads for c in par} == {2, 3}
    assert candidate_configs(3, 1) == [SessionConfig(intra_op_threads=1)]


def test_tune_writes_verified_carried_options():
    res = tune(three_branches(), duration=0.2, max_threads=2)
    rep = res.report
    assert rep["command"] == "tune" and rep["branch_width"] == 3
    stages = {r["stage"] for r in rep["rows"]}
    assert {"threads", "level/spinning"} <= stages
    assert any(r["options"]["execution_mode"] == "parallel" for r in rep["rows"])
    timed = [r for r in rep["rows"] if r["ratio"] is not None]
    assert timed and all(r["exact"] for r in timed)
    chosen = SessionConfig.from_dict(rep["chosen"])
    assert carried_options(res.model) == chosen
    assert check_carried(res.model) == chosen
    # never the defaults' loser: a non-default choice was confirmed in a fresh run
    if not chosen.is_default:
        assert rep["confirm_ratio"] >= 1.03
    assert res.model.graph == three_branches().graph  # the graph itself is untouched


def test_tune_cli_writes_and_reports(invoke, tmp_path):
    out, report = tmp_path / "t.onnx", tmp_path / "r.json"
    r = invoke("tune", MODELS / "digits_mlp.onnx", "-o", out, "--time-budget", "0.2", "--data", MODELS / "digits_test.npz", "--report", report)
    assert r.exit_code == 0, r.output
    assert "carried options:" in r.output and f"wrote {out}" in r.output
    assert carried_options(onnx.load(out)) == SessionConfig.from_dict(json.loads(report.read_text())["chosen"])


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--provider", "cuda"], "CUDAExecutionProvider"),
        (["--max-threads", "100000"], "max_threads must be within"),
        (["--max-threads", "0"], "0"),
    ],
)
def test_tune_cli_errors(invoke, tmp_path, args, msg):
    out = tmp_path / "t.onnx"
    r = invoke("tune", MODELS / "digits_mlp.onnx", "-o", out, "--time-budget", "0.1", *args)
    if msg == "CUDAExecutionProvider":
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            pytest.skip("CUDA is available here")
    assert r.exit_code == 2, r.output
    assert msg in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()


def test_tune_cli_help_and_no_overwrite(invoke):
    assert invoke("tune", "--help").exit_code == 0
    r = invoke("tune", MODELS / "digits_mlp.onnx", "-o", MODELS / "digits_mlp.onnx")
    assert r.exit_code == 2


@pytest.mark.cuda
def test_tune_and_session_on_cuda():
    from onnxopt.serving.carry import session

    res = tune(tiny_cnn(), provider="cuda", duration=0.2)
    assert res.report["provider"] == "cuda"
    cfg = carried_options(res.model)
    assert check_carried(res.model, "cuda") == cfg
    assert session(res.model, "cuda").get_providers()[0] == "CUDAExecutionProvider"


def test_tune_given_options_skip_the_search(invoke, tmp_path):
    out = tmp_path / "g.onnx"
    r = invoke(
        "tune", MODELS / "digits_mlp.onnx", "-o", out, "--time-budget", "0.2", "--intra-op-threads", "1", "--optimization-level", "basic", "--no-spinning"
    )
    assert r.exit_code == 0, r.output
    assert carried_options(onnx.load(out)) == SessionConfig(intra_op_threads=1, optimization_level="basic", allow_spinning=False)
    assert "given" in r.output


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--intra-op-threads", "-1"], "--intra-op-threads must be >= 1"),
        (["--intra-op-threads", "0"], "--intra-op-threads must be >= 1"),
        (["--inter-op-threads", "0"], "--inter-op-threads must be >= 1"),
        (["--inter-op-threads", "100000"], "more than the"),
        (["--execution-mode", "async"], "unknown execution mode"),
        (["--optimization-level", "max"], "unknown optimization level"),
    ],
)
def test_tune_given_options_validated(invoke, tmp_path, args, msg):
    out = tmp_path / "g.onnx"
    r = invoke("tune", MODELS / "digits_mlp.onnx", "-o", out, *args)
    assert r.exit_code == 2 and msg in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()


def test_outputs_are_checked_one_sample_at_a_time():
    """The search holds a session per configuration at once, each keeping the arena of its
    largest run: the check feeds are single samples, the first ``CHECK_SAMPLES`` of the data."""
    from onnxopt.data import Dataset
    from onnxopt.serving.tune import CHECK_SAMPLES, check_feeds

    x = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    feeds = check_feeds(Dataset("<t>", arrays={"x": x}))
    assert len(feeds) == CHECK_SAMPLES and all(f["x"].shape == (1, 3) for f in feeds)
    assert np.array_equal(np.concatenate([f["x"] for f in feeds]), x[:CHECK_SAMPLES])
