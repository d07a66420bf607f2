"""onnxopt.simplify on the bundled models and two architecture models of the onnx wheel."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxopt
from onnxopt.core.provenance import read_provenance
from onnxopt.simplify.api import simplify
from onnxopt.verify import check_model, verify
from tests.toy_models import MODELS, light_model

BUNDLED = ["digits_mlp", "digits_cnn", "digits_cnn04", "digits_resnet"]


@pytest.mark.parametrize("name", BUNDLED)
def test_simplify_bundled(name, tmp_path):
    src = MODELS / f"{name}.onnx"
    res = simplify(src, data=MODELS / "digits_test.npz")
    assert res.ok and res.report["input"] == str(src)
    step = res.steps[0]
    comp = step.verification["comparison"]
    assert comp["data"].endswith("digits_test.npz") and comp["samples"] == 400
    assert max(o["rel_l2"] for o in comp["outputs"]) <= 1e-4
    assert step.verification["metric"]["drop"] == pytest.approx(0.0)
    if name.startswith("digits_cnn"):  # explicit BatchNormalization nodes are folded into Conv
        assert "BatchNormalization" not in [n.op_type for n in res.model.graph.node]
        assert res.report["after"]["nodes"] < res.report["before"]["nodes"]
    out = res.save(tmp_path / "s.onnx", guard=[src])
    saved = onnx.load(str(out))
    prov = read_provenance(saved)
    assert prov["command"] == "simplify" and prov["steps"][0]["verification"]["comparison"]["ok"]
    assert verify(src, out, data=MODELS / "digits_test.npz")


@pytest.mark.parametrize("name", ["squeezenet", "shufflenet"])
def test_simplify_architecture_models(name):
    src = light_model(name)
    before = onnx.load(str(src))
    res = simplify(src)
    m = res.model
    check_model(m)
    assert m.ir_version >= 4 or len(m.graph.input) <= len(before.graph.input)
    assert res.report["after"]["nodes"] < res.report["before"]["nodes"]
    assert sum(n.op_type == "ConstantOfShape" for n in m.graph.node) < sum(n.op_type == "ConstantOfShape" for n in before.graph.node)
    comp = verify(src, m)
    assert comp and comp.worst_rel_l2 <= 1e-4
    assert read_provenance(m)["steps"][0]["name"] == "simplify"


def test_simplify_is_deterministic_and_idempotent_on_bundled():
    src = MODELS / "digits_cnn.onnx"
    a = simplify(src).model.SerializeToString(deterministic=True)
    b = simplify(src).model.SerializeToString(deterministic=True)
    assert a == b
    m = onnx.ModelProto()
    m.ParseFromString(a)
    again = simplify(m)
    assert not again.steps[0].modified
    assert len(read_provenance(again.model)["history"]) == 1


def test_simplify_external_data_model(tmp_path):
    from tests.toy_models import save_external

    src = save_external(onnx.load(str(MODELS / "digits_mlp.onnx")), tmp_path / "mlp.onnx")
    res = simplify(src)
    out = res.save(tmp_path / "out.onnx", guard=[src], external_data=True)
    assert any(p.name.startswith("out.onnx.") and p.suffix == ".data" for p in tmp_path.iterdir())
    x = np.load(MODELS / "digits_test.npz")["image"][:5]
    import onnxruntime as ort

    a = ort.InferenceSession(str(src)).run(None, {"image": x})[0]
    b = ort.InferenceSession(str(out)).run(None, {"image": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_public_simplify_stays_callable_after_the_package_is_imported():
    import onnxopt
    import onnxopt.simplify.passes as sp

    res = onnxopt.simplify(MODELS / "digits_mlp.onnx")
    assert res.ok and res.steps[0].name == sp.SimplifyPass.key
    assert onnxopt.verify(MODELS / "digits_mlp.onnx", res.model)


def test_saving_over_the_input_is_refused_from_python(tmp_path):
    """The Python API keeps the CLI's promise: a result never overwrites its input model."""
    from onnxopt.errors import UsageError

    src = tmp_path / "m.onnx"
    src.write_bytes((MODELS / "digits_mlp.onnx").read_bytes())
    before = src.read_bytes()
    for res in (onnxopt.simplify(src), onnxopt.run("simplify", src)):
        with pytest.raises(UsageError, match="refusing to overwrite the input model"):
            res.save(tmp_path / "." / "m.onnx")
    assert src.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert onnxopt.simplify(src).save(tmp_path / "o.onnx").is_file()
