"""run_pipeline: verification after every step, first failure stops and names the step,
provenance written, outputs deterministic, input untouched."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnxopt.core.passes import Context, Pass
from onnxopt.core.pipeline import run_pipeline
from onnxopt.core.provenance import read_provenance
from onnxopt.data import Dataset
from onnxopt.errors import BudgetError, VerificationError
from onnxopt.metrics import Budget
from onnxopt.simplify.passes import FoldConstantsPass, RemoveUnusedPass
from tests.toy_models import messy_mlp, tiny_cnn


class ScaleHeadPass(Pass):
    """Multiply the classifier weights by ``factor`` (test pass)."""

    key = "scale-head"

    @dataclass
    class Config:
        factor: float = 1.0

    def call(self, model, ctx):
        for t in model.graph.initializer:
            if t.name == "fc.w":
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(self.config.factor), t.name))
        return self.result(model, self.config.factor != 1.0, counts={"scaled": 1})


class LossyScaleHeadPass(ScaleHeadPass):
    """Same, declared lossy: judged by the metric and the budget."""

    key = "lossy-scale-head"
    exact = False


class DropClassPass(Pass):
    """Cut the classifier to 4 classes: the output shape changes (test pass)."""

    key = "drop-class"

    def call(self, model, ctx):
        for t in model.graph.initializer:
            if t.name in ("fc.w", "fc.b"):
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:4], t.name))
        model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 4
        return self.result(model, True)


class BreakGraphPass(Pass):
    """Point a node at a value nobody produces (test pass)."""

    key = "break-graph"

    def call(self, model, ctx):
        model.graph.node[-1].input[0] = "nowhere"
        return self.result(model, True)


def _labelled_ctx(model, n=32, **kw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
    from onnxopt.runtime import run_dataset

    ds = Dataset("test-data", arrays={"x": x})
    labels = run_dataset(model, ds)[0].argmax(1)
    return Context(eval_data=Dataset("test-data", arrays={"x": x}, labels=labels), **kw)


def test_exact_pipeline_records_verification_and_provenance():
    m = messy_mlp()
    before = m.SerializeToString(deterministic=True)
    res = run_pipeline(m, [RemoveUnusedPass(), FoldConstantsPass()], command="test")
    assert m.SerializeToString(deterministic=True) == before  # functional: input untouched
    assert res.ok and [s.name for s in res.steps] == ["remove-unused", "fold-constants"]
    dead, fold = res.steps
    assert dead.modified and dead.counts["nodes_removed"] == 1 and dead.counts["initializers_removed"] == 1
    assert fold.modified and fold.counts["nodes_folded"] == 1
    for s in res.steps:
        comp = s.verification["comparison"]
        assert s.verification["check"]["checker"] and s.verification["check"]["ort_loaded"]
        assert comp["ok"] and max(o["rel_l2"] for o in comp["outputs"]) <= 1e-4
    assert res.report["before"]["nodes"] == 10 and res.report["after"]["nodes"] == 6  # dead, Add, 2 Constants
    prov = read_provenance(res.model)
    assert prov["command"] == "test" and [s["name"] for s in prov["steps"]] == ["remove-unused", "fold-constants"]
    assert "seconds" not in prov["steps"][0] and "onnxopt" in prov["versions"]
    json.loads(res.to_json())  # the report is standard JSON


def test_pipeline_is_deterministic_and_provenance_accumulates():
    a = run_pipeline(messy_mlp(), [FoldConstantsPass()], command="first")
    b = run_pipeline(messy_mlp(), [FoldConstantsPass()], command="first")
    assert a.model.SerializeToString(deterministic=True) == b.model.SerializeToString(deterministic=True)
    c = run_pipeline(a.model, [RemoveUnusedPass()], command="second")
    prov = read_provenance(c.model)
    assert prov["command"] == "second" and [h["command"] for h in prov["history"]] == ["first"]


def test_extra_may_be_a_function_of_the_steps():
    """``extra`` computed from the steps' reports (``quantize``: the chosen candidate)."""
    res = run_pipeline(messy_mlp(), [FoldConstantsPass()], command="t", extra=lambda steps: {"folded": steps[0].counts["nodes_folded"]})
    assert read_provenance(res.model)["folded"] == res.report["folded"] == 1


def test_exact_step_that_moves_outputs_fails_naming_the_step():
    with pytest.raises(VerificationError, match=r"step 2 'scale-head': output 'logits' moved by .* relative L2"):
        run_pipeline(tiny_cnn(), [RemoveUnusedPass(), ScaleHeadPass(factor=1.01)])
    assert run_pipeline(tiny_cnn(), [ScaleHeadPass(factor=1.0)]).ok


def test_lossy_step_within_and_over_budget():
    m = tiny_cnn()
    ctx = _labelled_ctx(m, budget=Budget(1.0, "top1"))
    res = run_pipeline(m, [LossyScaleHeadPass(factor=1.5)], ctx)  # argmax unchanged by a positive scale
    metric = res.steps[0].verification["metric"]
    assert metric["name"] == "top1" and metric["drop"] == pytest.approx(0.0)
    with pytest.raises(BudgetError, match=r"step 1 'lossy-scale-head': top1 dropped .* points \(budget 1\)"):
        run_pipeline(m, [LossyScaleHeadPass(factor=-1.0)], _labelled_ctx(m, budget=Budget(1.0, "top1")))


def test_shape_change_and_broken_graph_fail():
    with pytest.raises(VerificationError, match="step 1 'drop-class': output 'logits' changed shape"):
        run_pipeline(tiny_cnn(), [DropClassPass()])
    with pytest.raises(VerificationError, match="step 1 'break-graph': onnx.checker rejects"):
        run_pipeline(tiny_cnn(), [BreakGraphPass()])


class RenameInputPass(Pass):
    """Rename the graph input (test pass)."""

    key = "rename-input"

    def call(self, model, ctx):
        model.graph.input[0].name = "image"
        for n in model.graph.node:
            n.input[:] = ["image" if x == "x" else x for x in n.input]
        return self.result(model, True)


def test_interface_change_fails():
    with pytest.raises(VerificationError, match="step 1 'rename-input': graph inputs changed; removed: x; added: image"):
        run_pipeline(tiny_cnn(), [RenameInputPass()], _labelled_ctx(tiny_cnn()))


def test_pass_config_is_validated():
    from onnxopt.errors import RecipeError

    with pytest.raises(RecipeError, match="unknown parameter"):
        ScaleHeadPass(nope=1)
    with pytest.raises(RecipeError, match="wrong type"):
        ScaleHeadPass(factor="big")


def test_inputs_for_prefers_given_data():
    m = tiny_cnn()
    x = np.zeros((3, 3, 8, 8), np.float32)
    ctx = Context(data=Dataset("cal", arrays={"x": x}))
    assert ctx.inputs_for(m).source == "cal"
    assert Context().inputs_for(m).source == "<synthesized>"
    bad = copy.deepcopy(m)
    bad.graph.input[0].type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(np.dtype("float64"))
    from onnxopt.errors import DataError

    with pytest.raises(DataError):
        ctx.inputs_for(bad)


class RefusePass(Pass):
    """Refuse with a user error, as a pass does when the model does not fit it (test pass)."""

    key = "refuse"

    def call(self, model, ctx):
        from onnxopt.errors import UnsupportedError

        raise UnsupportedError("nothing here to work on")


def test_a_refusing_step_is_named():
    from onnxopt.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match=r"^step 2 'refuse': nothing here to work on$"):
        run_pipeline(tiny_cnn(), [RemoveUnusedPass(), RefusePass()])
    with pytest.raises(UnsupportedError, match=r"^nothing here to work on$"):  # one step: no prefix
        run_pipeline(tiny_cnn(), [RefusePass()])


class RebuildPass(Pass):
    """Builds its result from a serialized copy of the input (test pass): reads only."""

    key = "rebuild"
    reads_only = True

    @dataclass
    class Config:
        change: bool = True

    def call(self, model, ctx):
        if not self.config.change:
            return self.result(model, False)
        out = type(model)()
        out.ParseFromString(model.SerializeToString())
        out.doc_string = "rebuilt"
        return self.result(out, True)


def test_a_pass_that_reads_only_gets_no_working_copy_and_never_hands_back_its_input(monkeypatch):
    """``reads_only``: the pass is handed the caller's model itself (no deep copy: one copy of
    the weights less at its peak); when it returns that model unchanged, the caller gets a
    copy, so that the pipeline's provenance never lands in the caller's model."""
    model = tiny_cnn()
    copies = []
    real = copy.deepcopy
    monkeypatch.setattr("onnxopt.core.passes.copy.deepcopy", lambda x, *a: copies.append(x) or real(x, *a))
    res = RebuildPass()(model)
    assert res.model.doc_string == "rebuilt" and model.doc_string != "rebuilt" and not any(c is model for c in copies)
    same = RebuildPass(change=False)(model)
    assert same.model is not model and same.model == model and sum(c is model for c in copies) == 1
    before = model.SerializeToString()
    run_pipeline(model, [RebuildPass(change=False)], Context())
    assert model.SerializeToString() == before
