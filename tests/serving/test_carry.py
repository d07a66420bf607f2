"""Options carried in the model: ort_config written, honoured by plain ORT, read back."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxopt.core.provenance import write_provenance
from onnxopt.errors import ModelError, VerificationError
from onnxopt.serving.carry import (
    LOAD_ENV,
    carried_options,
    carry_options,
    check_carried,
    ort_loads_config,
    session,
)
from onnxopt.session_options import SessionConfig
from tests.toy_models import tiny_cnn

CFG = SessionConfig(intra_op_threads=1, inter_op_threads=2, execution_mode="parallel", optimization_level="basic", allow_spinning=False)


def _carrying(cfg=CFG) -> onnx.ModelProto:
    m = tiny_cnn()
    carry_options(m, cfg)
    write_provenance(m, "tune", [], {"session_options": cfg.to_dict()})
    return m


def _applied(sess) -> tuple:
    so = sess.get_session_options()
    return so.intra_op_num_threads, so.inter_op_num_threads, int(so.execution_mode), int(so.graph_optimization_level)


def test_ort_config_is_orts_own_form_and_round_trips(tmp_path):
    m = _carrying()
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["ort_config"]) == {
        "session_options": {"intra_op_num_threads": 1, "inter_op_num_threads": 2, "execution_mode": 1, "graph_optimization_level": 1}
    }
    onnx.save(m, tmp_path / "m.onnx")
    assert carried_options(onnx.load(tmp_path / "m.onnx")) == CFG  # spinning from the mirror
    assert carried_options(tiny_cnn()) is None


def test_plain_onnxruntime_honours_carried_options(tmp_path):
    m = _carrying()
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    before = os.environ.get(LOAD_ENV)
    with ort_loads_config():
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert os.environ.get(LOAD_ENV) == before
    assert _applied(sess) == (1, 2, 1, 1)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(tiny_cnn().SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-5, atol=1e-6)


def test_session_uses_carried_options(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_carrying(), path)
    assert _applied(session(path)) == (1, 2, 1, 1)
    plain = _applied(session(path, model_options=False))
    assert plain[2:] == (0, 99)


def test_check_carried_accepts_and_refuses():
    assert check_carried(_carrying()) == CFG
    assert check_carried(tiny_cnn()) is None
    bad = tiny_cnn()
    bad.metadata_props.add(key="ort_config", value=json.dumps({"session_options": {"intra_op_num_threads": -1}}))
    with pytest.raises(VerificationError, match="intra_op_num_threads"):
        check_carried(bad)
    broken = tiny_cnn()
    broken.metadata_props.add(key="ort_config", value="{not json")
    with pytest.raises(VerificationError, match="JSON"):
        check_carried(broken)
    with pytest.raises(ModelError):
        carried_options(broken)


def test_every_verified_output_refuses_options_ort_rejects(invoke, tmp_path):
    """verify.check_model (the one verification) loads carried options as ORT would: a
    command whose output carries options ORT rejects fails (exit 3) and writes nothing."""
    from onnxopt.verify import check_model

    bad = tiny_cnn()
    bad.metadata_props.add(key="ort_config", value=json.dumps({"session_options": {"execution_mode": 7}}))
    with pytest.raises(VerificationError, match="execution_mode"):
        check_model(bad)
    src = tmp_path / "bad.onnx"
    onnx.save(bad, src)
    out = tmp_path / "out.onnx"
    r = invoke("simplify", src, "-o", out)
    assert r.exit_code in (2, 3) and "execution_mode" in r.output and not out.exists()


def test_check_model_loads_one_session_with_the_carried_options(monkeypatch):
    """``verify.check_model`` loads the model once, as an application would (with the options
    it carries, checked to be applied as written): the session it keeps runs with them, and no
    second session is loaded to check the options."""
    import onnxopt.runtime as runtime
    from onnxopt.verify import check_model

    created = []
    real = runtime.create_session
    monkeypatch.setattr(runtime, "create_session", lambda *a, **k: created.append(1) or real(*a, **k))
    rec = check_model(_carrying(), keep_session=True)
    assert len(created) == 1 and _applied(rec.session) == (1, 2, 1, 1)
    created.clear()
    plain = check_model(tiny_cnn(), keep_session=True)
    assert len(created) == 1 and plain.session is not None
