"""Steps with their own reference (``Pass.own_reference`` + ``Expected``) and source passes:
verified by ``run_pipeline`` against the outputs they say they must give, the steps after
them against the model they made; ``PassReport.extras`` stays out of reports and provenance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.core.passes import Context, Expected, Pass
from onnxopt.core.pipeline import run_pipeline
from onnxopt.core.provenance import read_provenance
from onnxopt.data import Dataset
from onnxopt.errors import VerificationError
from onnxopt.simplify.passes import RemoveUnusedPass

X = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)


def scale_model(factor: float, *, dead: bool = False) -> onnx.ModelProto:
    """``y = x * factor`` (plus an unused initializer with ``dead``)."""
    inits = [numpy_helper.from_array(np.array(factor, np.float32), "k")]
    if dead:
        inits.append(numpy_helper.from_array(np.ones(3, np.float32), "unused"))
    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


class BuildScalePass(Pass):
    """A source: builds ``y = x * factor`` and says ``y`` must be ``x * claim``."""

    key = "build-scale"
    own_reference = True
    idempotent = False

    @dataclass
    class Config:
        factor: float = 2.0
        claim: float = 2.0
        broken: bool = False

    calls: list = []

    def call(self, model, ctx):
        assert model is None
        built = scale_model(self.config.factor, dead=True)
        if self.config.broken:
            built.graph.node[0].op_type = "NoSuchOp"

        def dataset():
            BuildScalePass.calls.append("dataset")
            return Dataset("x.npz", arrays={"x": X})

        res = self.result(built, True, details={"factor": self.config.factor})
        res.report.extras = {"array": np.arange(3)}
        res.expected = Expected(dataset, lambda ds: [X * np.float32(self.config.claim)], "built model", failure="{label}: '{name}' is off by {max_abs:.3g}")
        return res


def test_source_step_is_verified_against_its_expected_outputs_then_later_steps_against_it():
    res = run_pipeline(None, [BuildScalePass(), RemoveUnusedPass()], Context(), command="build")
    first, second = res.steps
    assert first.verification["comparison"]["ok"] and first.verification["comparison"]["data"] == "x.npz"
    assert first.verification["check"]["checker"] and first.verification["check"]["ort_loaded"]
    # the second step is exact against the built model (the unused initializer went)
    assert second.modified and [t.name for t in res.model.graph.initializer] == ["k"]
    assert second.verification["comparison"]["outputs"][0]["max_abs"] == 0.0
    np.testing.assert_array_equal(res.expected.verified[0], X * np.float32(2.0))
    prov = read_provenance(res.model)
    assert [s["name"] for s in prov["steps"]] == ["build-scale", "remove-unused"]
    assert "extras" not in prov["steps"][0] and "extras" not in first.to_dict() and "seconds" not in prov["steps"][0]
    assert first.extras["array"].tolist() == [0, 1, 2]


def test_outputs_that_differ_from_the_expected_ones_fail_with_the_pass_message():
    with pytest.raises(VerificationError, match=r"^built model: 'y' is off by 2\.33$") as info:
        run_pipeline(None, [BuildScalePass(factor=2.0, claim=1.0)], Context())
    assert info.value.exit_code == 3


def test_a_model_failing_the_checker_fails_before_the_expected_outputs_are_computed():
    BuildScalePass.calls.clear()
    with pytest.raises(VerificationError, match="built model"):
        run_pipeline(None, [BuildScalePass(broken=True)], Context())
    assert BuildScalePass.calls == []


def test_an_own_reference_pass_must_return_expected_outputs():
    class NoExpectedPass(Pass):
        key = "no-expected"
        own_reference = True

        def call(self, model, ctx):
            return self.result(scale_model(1.0), True)

    with pytest.raises(TypeError, match="no Expected"):
        run_pipeline(None, [NoExpectedPass()], Context())


class JudgedScalePass(BuildScalePass):
    """The same source, judged by its own function instead of an output comparison."""

    key = "judged-scale"
    judged: list = []

    def call(self, model, ctx):
        res = super().call(model, ctx)

        def judge(built, ds):
            y = numpy_helper.to_array(built.graph.initializer[0]) * next(ds.batches())["x"]
            JudgedScalePass.judged.append(ds.source)
            if not np.allclose(y, X * np.float32(self.config.claim)):
                raise VerificationError("judged: the scale is not the one claimed")
            return {"judged": {"ok": True, "samples": len(y)}}

        res.expected.outputs, res.expected.judge = None, judge
        return res


def test_a_judge_decides_instead_of_the_comparison_after_the_checker():
    JudgedScalePass.judged.clear()
    res = run_pipeline(None, [JudgedScalePass()], Context())
    (step,) = res.steps
    assert step.verification["judged"] == {"ok": True, "samples": 6} and step.verification["check"]["ort_loaded"]
    assert "comparison" not in step.verification and JudgedScalePass.judged == ["x.npz"]
    assert read_provenance(res.model)["steps"][0]["verification"]["judged"]["ok"]
    with pytest.raises(VerificationError, match="^judged: the scale is not the one claimed$"):
        run_pipeline(None, [JudgedScalePass(claim=1.0)], Context())
    JudgedScalePass.judged.clear()
    with pytest.raises(VerificationError, match="built model"):  # the checker first: the judge never runs
        run_pipeline(None, [JudgedScalePass(broken=True)], Context())
    assert JudgedScalePass.judged == []
