"""SessionConfig: validation, ORT SessionOptions, serialization."""

from __future__ import annotations

import pytest

from onnxopt.errors import UsageError
from onnxopt.runtime import create_session
from onnxopt.session_options import SessionConfig, machine_cores
from tests.toy_models import tiny_cnn


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"intra_op_threads": -1}, "intra_op_threads must be"),
        ({"inter_op_threads": 1.5}, "inter_op_threads must be"),
        ({"intra_op_threads": 10_000}, "more than the"),
        ({"execution_mode": "async"}, "unknown execution mode"),
        ({"optimization_level": "max"}, "unknown optimization level"),
        ({"allow_spinning": "yes"}, "allow_spinning"),
    ],
)
def test_validate_refuses(kwargs, match):
    with pytest.raises(UsageError, match=match) as info:
        SessionConfig(**kwargs).validate()
    assert info.value.exit_code == 2


def test_validate_accepts_cores_and_default():
    n = machine_cores()
    cfg = SessionConfig(intra_op_threads=n, inter_op_threads=1, execution_mode="parallel")
    assert cfg.validate() is cfg
    assert SessionConfig().is_default and not cfg.is_default


def test_session_options_built_and_applied():
    cfg = SessionConfig(intra_op_threads=1, inter_op_threads=2, execution_mode="parallel", optimization_level="basic", allow_spinning=False)
    so = cfg.session_options()
    assert so.intra_op_num_threads == 1 and so.inter_op_num_threads == 2
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    sess = create_session(tiny_cnn(), config=cfg)
    got = sess.get_session_options()
    assert (got.intra_op_num_threads, got.inter_op_num_threads, int(got.execution_mode), int(got.graph_optimization_level)) == (1, 2, 1, 1)


def test_round_trips():
    cfg = SessionConfig(intra_op_threads=2, inter_op_threads=2, execution_mode="parallel", optimization_level="extended", allow_spinning=False)
    assert SessionConfig.from_dict(cfg.to_dict()) == cfg
    ort_form = cfg.ort_session_options()
    assert ort_form == {"intra_op_num_threads": 2, "inter_op_num_threads": 2, "execution_mode": 1, "graph_optimization_level": 2}
    assert SessionConfig.from_ort_session_options(ort_form, allow_spinning=False) == cfg
    # ORT's defaults leave the thread keys out (0 is "ORT decides", not a count)
    assert SessionConfig().ort_session_options() == {"execution_mode": 0, "graph_optimization_level": 99}
    with pytest.raises(UsageError, match="unknown session option"):
        SessionConfig.from_dict({"threads": 2})
