"""The verifier checks every step at several discovered shapes and keeps dynamic axes
dynamic; ``--fix-shapes`` is the way to ask for static ones."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxopt.core.passes import Context, Pass
from onnxopt.core.pipeline import run_pipeline
from onnxopt.errors import VerificationError
from onnxopt.simplify.fix_shapes import FixShapesPass
from onnxopt.verify import frozen_dims
from tests.discover_models import gather_ids, strided_detector


class SumNotMeanPass(Pass):
    """ReduceMean over the sequence -> ReduceSum: right only when the sequence is 1 long."""

    key = "sum-not-mean"

    def call(self, model, ctx):
        for n in model.graph.node:
            if n.op_type == "ReduceMean":
                n.op_type = "ReduceSum"
                del n.attribute[:]
                n.attribute.append(helper.make_attribute("keepdims", 0))
                axes = onnx.numpy_helper.from_array(np.array([1], np.int64), "sum_axes")
                model.graph.initializer.append(axes)
                n.input.append("sum_axes")
        return self.result(model, True)


class FreezeSeqPass(Pass):
    """Write the discovered sequence length into the input's type (test pass)."""

    key = "freeze-seq"

    def call(self, model, ctx):
        dim = model.graph.input[0].type.tensor_type.shape.dim[1]
        dim.Clear()
        dim.dim_value = 1
        return self.result(model, True)


def test_a_transform_right_at_one_shape_only_fails_at_the_other():
    m = gather_ids()
    with pytest.raises(VerificationError) as err:
        run_pipeline(m, [SumNotMeanPass()], Context())
    msg = err.value.message
    assert "step 1 'sum-not-mean': at synthesized ids[1," in msg and "moved by" in msg


def test_each_step_records_its_other_shapes():
    res = run_pipeline(
        strided_detector(),
        [FixShapesPass(shapes={"images": [1, 3, 64, 64]})],
        Context(shapes={"images": (1, 3, 64, 64)}, fixed_shapes={"images": [1, 3, 64, 64]}),
    )
    assert res.report["steps"][0]["verification"]["comparison"]["ok"]
    from onnxopt.simplify.api import simplify

    rec = simplify(strided_detector()).report["steps"][0]["verification"]
    assert rec["other_shapes"] and all(o["worst_rel_l2"] <= 1e-6 for o in rec["other_shapes"])
    assert rec["other_shapes"][0]["data"] != rec["comparison"]["data"]


def test_a_step_that_freezes_a_dynamic_dim_is_refused():
    with pytest.raises(VerificationError, match=r"input 'ids' axis 1 \(seq\) was dynamic and is now fixed to 1"):
        run_pipeline(gather_ids(), [FreezeSeqPass()], Context())


def test_frozen_dims_allows_what_the_user_fixed():
    m = strided_detector()
    fixed = FixShapesPass(shapes={"images": [1, 3, 64, 64]})(m, Context()).model
    assert [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 64]
    assert [d.dim_value for d in fixed.graph.output[0].type.tensor_type.shape.dim] == [1, 6, 4096]
    assert "was dynamic" in frozen_dims(m, fixed)
    assert frozen_dims(m, fixed, fixed={"images"}) == ""


def test_cli_fix_shapes_and_dynamic_dims_kept(invoke, tmp_path):
    src = tmp_path / "det.onnx"
    onnx.save(strided_detector(), str(src))
    out = tmp_path / "static.onnx"
    res = invoke("simplify", src, "--fix-shapes", "images:1,3,64,96", "-o", out)
    assert res.exit_code == 0, res.output
    got = onnx.load(str(out))
    assert [d.dim_value for d in got.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 96]
    dyn = tmp_path / "dynamic.onnx"
    assert invoke("simplify", src, "-o", dyn).exit_code == 0
    assert frozen_dims(onnx.load(str(src)), onnx.load(str(dyn))) == ""
    for args in (["run", "simplify", src], ["optimize", src, "--time-budget", "0.2"]):
        path = tmp_path / f"{args[0]}.onnx"
        res = invoke(*args, "--fix-shapes", "images:1,3,32,32", "-o", path)
        assert res.exit_code == 0, res.output
        assert [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]
    rep = tmp_path / "opt.json"
    res = invoke("optimize", src, "--time-budget", "0.2", "-o", tmp_path / "dyn_opt.onnx", "--report", rep)
    assert res.exit_code == 0, res.output
    others = __import__("json").loads(rep.read_text())["decision"]["other_shapes"]
    assert others and others[0]["data"].startswith("synthesized images[1,3,") and "32,32" not in others[0]["data"]


def test_cli_fix_shapes_bad_input_exits_2(invoke, tmp_path):
    src = tmp_path / "det.onnx"
    onnx.save(strided_detector(), str(src))
    out = tmp_path / "o.onnx"
    res = invoke("simplify", src, "--fix-shapes", "image:1,3,64,64", "-o", out)
    assert res.exit_code == 2 and "--fix-shapes names 'image'" in res.output and not out.exists()
    res = invoke("quantize", src, "--fix-shapes", "images:1,3,64", "-o", out)
    assert res.exit_code == 2 and "rank 3" in res.output and not out.exists()


def test_a_recipe_fix_shapes_step(invoke, tmp_path):
    src = tmp_path / "det.onnx"
    onnx.save(strided_detector(), str(src))
    recipe = tmp_path / "static.toml"
    recipe.write_text('[[steps]]\npass = "fix-shapes"\nshapes = {images = [1, 3, 64, 64]}\n\n[[steps]]\npass = "simplify"\n')
    out = tmp_path / "o.onnx"
    res = invoke("run", recipe, src, "-o", out)
    assert res.exit_code == 0, res.output
    assert [d.dim_value for d in onnx.load(str(out)).graph.output[0].type.tensor_type.shape.dim] == [1, 6, 4096]


def test_quantize_checks_the_chosen_model_at_the_other_shapes():
    from onnx import TensorProto, numpy_helper

    from onnxopt.quantize.api import quantize

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "seq_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 64])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    res = quantize(m, mode="dynamic", allow_slower=True, timing=False)
    others = res.report["other_shapes"]
    assert others and "x[1," in others[0]["data"]
    assert frozen_dims(m, res.model) == ""


def test_verify_command_compares_at_the_other_shapes_too(invoke, tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(gather_ids(), str(a))
    wrong = SumNotMeanPass()(gather_ids(), Context()).model  # right at seq 1 only
    onnx.save(wrong, str(b))
    res = invoke("verify", a, a)
    assert res.exit_code == 0 and "also at synthesized ids[1," in res.output
    res = invoke("verify", a, b)
    assert res.exit_code == 3 and "OUT OF TOLERANCE" in res.output and "y at synthesized ids[1," in res.output
