"""Which step broke it: recipe steps, ONNX Runtime optimizers, FP16 nodes."""

from __future__ import annotations

from dataclasses import dataclass

import onnx

import onnxopt
from onnxopt.core.passes import Context, Pass
from onnxopt.core.registry import make_pass
from onnxopt.data import synthesize
from onnxopt.diagnose.bisect import bisect_first, bisect_fp16, bisect_ort, bisect_steps
from onnxopt.errors import UnsupportedError
from tests.diagnose.diag_models import scaled
from tests.toy_models import tiny_cnn

SHAPES = {"x": (4, 3, 8, 8)}


class ScaleWeightPass(Pass):
    """Claims to be exact but scales one channel of a weight (a buggy pass)."""

    key = "scale-weight"
    exact = True

    @dataclass
    class Config:
        weight: str = "bn.scale"

    def call(self, model, ctx):
        return self.result(scaled(model, self.config.weight, 1.5, channel=1), True)


class RefusePass(Pass):
    """Always refuses."""

    key = "refuse"

    def call(self, model, ctx):
        raise UnsupportedError("cannot handle this model")


def test_bisect_first():
    calls = []

    def bad(i):
        calls.append(i)
        return i >= 37

    assert bisect_first(100, bad) == 37 and len(calls) <= 8
    assert bisect_first(100, lambda i: False) is None
    assert bisect_first(0, bad) is None


def test_inexact_step_in_the_middle_is_pinned():
    m = tiny_cnn()
    passes = [make_pass("remove-unused"), ScaleWeightPass(), make_pass("infer-shapes")]
    ctx = Context()
    res = bisect_steps(m, passes, ctx, synthesize(m, SHAPES))
    assert res.culprit is not None and res.culprit.index == 2 and res.culprit.key == "scale-weight"
    assert "moved by" in res.reason and res.steps[0].rel_l2 == 0.0 and len(res.steps) == 2  # stops there
    assert res.before is not None and res.after is not None


def test_refusing_step_is_pinned_with_its_message():
    m = tiny_cnn()
    res = bisect_steps(m, [make_pass("remove-unused"), RefusePass()], Context(), synthesize(m, SHAPES))
    assert res.culprit.index == 2 and "cannot handle" in res.reason and res.after is None


def test_recipe_pins_the_lossy_step_and_names_its_nodes(tmp_path, invoke):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'name = "r"\n[[steps]]\npass = "simplify"\n[[steps]]\npass = "quantize"\nmode = "dynamic"\nop_types = ["Gemm"]\n[[steps]]\npass = "remove-unused"\n'
    )
    model = tmp_path / "m.onnx"
    onnx.save(tiny_cnn(), str(model))
    d = onnxopt.diagnose(model, recipe=recipe, shapes=SHAPES)
    st = d.steps
    assert st.culprit.key == "quantize" and [s.key for s in st.steps] == ["simplify", "quantize", "remove-unused"]
    assert st.steps[0].rel_l2 < 1e-6 and st.steps[1].rel_l2 > 0 and "lossy step 2 'quantize'" in st.reason
    assert d.layerwise is not None and d.layerwise.first is not None  # inside the quantize step
    r = invoke("diagnose", "--recipe", recipe, model, "--shape", "x:4,3,8,8")
    assert r.exit_code == 0, r.output
    assert "pinned: step 2 'quantize'" in r.output and "inside the pinned step:" in r.output
    bad = invoke("diagnose", "--recipe", tmp_path / "none.toml", model)
    assert bad.exit_code == 2 and "no such recipe file" in bad.stderr


def test_ort_optimizer_bisection_names_the_optimizer():
    # logits ~1e4, so ConvBNFusion's float rounding (~6e-8 relative) is past a 1e-9 limit
    m = scaled(scaled(tiny_cnn(), "fc.w", 1e4), "fc.b", 1e4)
    res = bisect_ort(m, synthesize(m, SHAPES), rel_l2=1e-9)
    assert res.level == "basic" and res.optimizer == "ConvBNFusion" and res.confirmed
    clean = bisect_ort(tiny_cnn(), synthesize(m, SHAPES))
    assert clean.level is None and clean.optimizer is None


def test_fp16_bisection_finds_the_overflowing_node():
    # Gemm weights x 1e5: logits overflow FP16 (inf) only once the Gemm runs in FP16
    m = scaled(scaled(tiny_cnn(), "fc.w", 1e5), "fc.b", 1e5)
    res = bisect_fp16(m, synthesize(m, SHAPES))
    assert res.full and res.node == "fc" and res.op == "Gemm" and res.confirmed
    ok = bisect_fp16(tiny_cnn(), synthesize(m, SHAPES))
    assert not ok.full and ok.node is None


def test_cli_ort_and_fp16(tmp_path, invoke):
    model = tmp_path / "m.onnx"
    onnx.save(scaled(scaled(tiny_cnn(), "fc.w", 1e5), "fc.b", 1e5), str(model))
    r = invoke("diagnose", "--fp16", model, "--shape", "x:4,3,8,8")
    assert r.exit_code == 0, r.output
    assert "converting node 'fc' (Gemm) to FP16" in r.output
    r = invoke("diagnose", "--ort-optimizers", model, "--shape", "x:4,3,8,8", "--threshold", "1e-9")
    assert r.exit_code == 0 and "ConvBNFusion" in r.output and "disabled_optimizers=['ConvBNFusion']" in r.output
