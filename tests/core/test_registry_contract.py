"""The contract every registered pass keeps, checked generically over ``PASSES``.

For each pass (default parameters) on each toy model: the class is importable and describes
itself; the input model is not mutated; the output passes ``onnx.checker`` and loads in ONNX
Runtime; output names and shapes are kept; an exact pass keeps every output within 1e-4
relative L2; two runs give byte-identical models (deterministic); where the pass claims
idempotence, running it on its own output changes nothing.

Passes receive a Context with calibration data and labelled evaluation data; a pass whose
``needs`` this test cannot satisfy, or that has required parameters, is skipped with the
reason (so new passes are covered as soon as they are registered).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxopt.core.passes import Context, Pass, PassResult
from onnxopt.core.registry import PASSES, make_pass, pass_class, pass_infos
from onnxopt.data import Dataset, load_data
from onnxopt.errors import RecipeError
from onnxopt.metrics import Budget
from onnxopt.runtime import run_dataset
from onnxopt.verify import EXACT_REL_L2, check_model
from tests.toy_models import MODELS, messy_mlp

KEYS = sorted(PASSES)
CASES = ["digits_cnn", "messy_mlp"]
SAMPLES = 64


def _subset(ds: Dataset, n: int, name: str) -> Dataset:
    arrays = {k: v[:n] for k, v in ds._arrays.items()}
    labels = None if ds.labels is None else ds.labels[:n]
    return Dataset(name, arrays=arrays, labels=labels)


@pytest.fixture(scope="module")
def cases() -> dict:
    cnn = onnx.load(str(MODELS / "digits_cnn.onnx"))
    cal = _subset(load_data(MODELS / "digits_calib.npz", cnn), SAMPLES, "digits_calib[:64]")
    ev = _subset(load_data(MODELS / "digits_test.npz", cnn), SAMPLES, "digits_test[:64]")
    mlp = messy_mlp()
    x = np.random.default_rng(0).standard_normal((SAMPLES, 4)).astype(np.float32)
    return {
        "digits_cnn": (cnn, {"data": cal, "eval_data": ev}),
        "messy_mlp": (mlp, {"data": Dataset("random[64]", arrays={"x": x}), "eval_data": None}),
    }


def _context(model, kw: dict, needs: tuple[str, ...]) -> Context:
    ctx = Context(data=kw["data"], eval_data=kw["eval_data"], seed=0, reference=model)
    if "budget" in needs:
        ctx.budget = Budget(5.0)
    return ctx


_SATISFIABLE = {"calibration", "data", "labels", "eval", "budget", "reference"}


def _skip_reason(cls, kw) -> str | None:
    needs = set(cls.needs)
    unknown = needs - _SATISFIABLE
    if unknown:
        return f"needs {', '.join(sorted(unknown))}, which this contract test cannot provide"
    if needs & {"labels", "eval"} and kw["eval_data"] is None:
        return "needs labelled evaluation data; this toy model has none"
    return None


def _outputs(model, ds):
    return run_dataset(model, ds)


def _bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def test_registry_rows_import_and_describe_themselves():
    infos = {i.key: i for i in pass_infos()}
    assert sorted(infos) == KEYS
    for key in KEYS:
        cls = pass_class(key)
        assert issubclass(cls, Pass) and cls.key == key, f"{PASSES[key]} has key {cls.key!r}"
        assert infos[key].help, f"{key}: the class needs a docstring (its first line is the help)"
        assert all(isinstance(n, str) for n in cls.needs)
        assert key == key.lower() and " " not in key and "_" not in key, f"{key}: keys are kebab-case"


def test_unknown_key_is_a_recipe_error():
    with pytest.raises(RecipeError, match="unknown step 'nope'"):
        make_pass("nope")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("key", KEYS)
def test_pass_contract(key, case, cases):
    cls = pass_class(key)
    model, kw = cases[case]
    reason = _skip_reason(cls, kw)
    if reason:
        pytest.skip(reason)
    try:
        first = make_pass(key)
    except RecipeError as exc:
        pytest.skip(f"no default configuration: {exc}")
    original = _bytes(model)

    res = first(model, _context(model, kw, cls.needs))
    assert isinstance(res, PassResult) and isinstance(res.model, onnx.ModelProto)
    assert _bytes(model) == original, f"{key} mutated its input model"
    rep = res.report
    assert rep.name == key and rep.modified == res.modified and isinstance(res.modified, bool)
    assert rep.before["nodes"] == sum(1 for _ in model.graph.node) and "nodes" in rep.after
    if not res.modified:
        assert _bytes(res.model) == original or rep.notes, f"{key} changed the model but reports modified=False"

    check_model(res.model, label=key)
    ds = kw["eval_data"] or kw["data"]
    ref, new = _outputs(model, ds), _outputs(res.model, ds)
    assert [o.name for o in res.model.graph.output] == [o.name for o in model.graph.output]
    assert [a.shape for a in new] == [a.shape for a in ref], f"{key} changed output shapes"
    if cls.exact:
        for a, b in zip(ref, new, strict=True):
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            rel = np.linalg.norm(b64 - a64) / max(np.linalg.norm(a64), 1e-30)
            assert rel <= EXACT_REL_L2 or np.abs(b64 - a64).max() <= 1e-6, f"{key} is exact but moved outputs by {rel:.3g}"

    again = make_pass(key)(model, _context(model, kw, cls.needs))
    assert _bytes(again.model) == _bytes(res.model), f"{key} is not deterministic"

    if cls.idempotent:
        twice = make_pass(key)(res.model, _context(res.model, kw, cls.needs))
        assert not twice.modified, f"{key} claims idempotence but a second run modified the model"
