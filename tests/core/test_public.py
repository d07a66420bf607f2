"""Public functions whose options are a config dataclass (``core.public.check_options``):
every field is a keyword argument, anything else is the ``TypeError`` Python gives."""

from __future__ import annotations

import dataclasses

import pytest

from onnxopt.adapt.api import AdaptConfig, adapt
from onnxopt.bench.api import BenchConfig, bench
from onnxopt.core.public import check_options
from onnxopt.ensemble.api import EnsembleConfig, ensemble
from onnxopt.prune.api import PruneConfig, prune
from tests.conftest import MODELS

CASES = [
    (bench, BenchConfig, ([MODELS / "digits_mlp.onnx"],)),
    (ensemble, EnsembleConfig, ([MODELS / "digits_mlp.onnx", MODELS / "digits_cnn.onnx"],)),
    (prune, PruneConfig, (MODELS / "digits_mlp.onnx",)),
    (adapt, AdaptConfig, (MODELS / "digits_cnn04.onnx", MODELS / "digits_test.npz")),
]


@pytest.mark.parametrize("fn,config,args", CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_an_unknown_option_is_a_type_error_naming_it(fn, config, args):
    with pytest.raises(TypeError, match=rf"{fn.__name__}\(\) got unexpected keyword argument\(s\) colour, sped"):
        fn(*args, sped=2, colour="red")


def test_check_options_passes_every_field_through():
    names = {f.name: i for i, f in enumerate(dataclasses.fields(BenchConfig))}
    assert check_options(BenchConfig, "bench", names) is names
    assert BenchConfig(**names).seed == names["seed"]
