"""Control flow: every registered pass on models with If / Loop / Scan bodies.

For each pass in ``onnxopt.core.registry.PASSES`` and each model of ``subgraph_models``:
the output passes the full checker and loads in ONNX Runtime; exact passes keep every
output within 1e-4 relative L2 (lossy ones keep the output shapes, and the same numbers
when they changed nothing); where a body is left as it was, the report says so (a note
naming If / Loop / Scan / subgraph / body).  Bodies read outer-scope tensors, so a pass
that ignores them breaks the model (dead-code removal of an initializer only a body reads,
deduplication that does not rename inside bodies).

Ensembles and chains of such models keep every name unique across the main graph and all
bodies, and compute what the members compute.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

from onnxopt.core.passes import Context
from onnxopt.core.registry import PASSES, make_pass
from onnxopt.data import synthesize
from onnxopt.verify import EXACT_REL_L2, check_model, compare

from .harness import command_problem
from .subgraph_models import SUBGRAPH_MODELS

SHAPES = {"x": (16, 8)}
BODY_NOTE = re.compile(r"\b(If|Loop|Scan|subgraphs?|bod(y|ies))\b", re.IGNORECASE)


def _bodies(graph, where=""):
    for n in graph.node:
        for a in n.attribute:
            for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                yield f"{where}{n.name}.{a.name}", g
                yield from _bodies(g, f"{where}{n.name}.{a.name}/")


def _pass_or_skip(key):
    try:
        return make_pass(key)
    except ImportError as exc:  # a pass module still being written
        pytest.skip(f"pass '{key}' not importable yet: {exc}")


@pytest.mark.parametrize("model_name", list(SUBGRAPH_MODELS))
@pytest.mark.parametrize("key", list(PASSES))
def test_pass_on_control_flow(key, model_name):
    model = SUBGRAPH_MODELS[model_name]()
    original = model.SerializeToString(deterministic=True)
    p = _pass_or_skip(key)
    ds = synthesize(model, SHAPES)
    res = p(model, Context(data=ds, shapes=SHAPES))
    assert model.SerializeToString(deterministic=True) == original, "the pass modified its input"
    check_model(res.model)  # full checker (strict shape inference where possible) + ORT load
    comp = compare(model, res.model, ds)
    assert [o.shape for o in comp.outputs] == [
        list(o.shape) for o in compare(model, model, ds).outputs
    ]
    if p.exact or not res.modified:
        assert comp.worst_rel_l2 <= EXACT_REL_L2, (
            f"{key} moved outputs by {comp.worst_rel_l2:.3g} relative L2"
        )
    else:
        assert all(o.cosine > 0.9 for o in comp.outputs), (
            f"{key} wrecked the outputs: {comp.to_dict()}"
        )
    before = {label: g.SerializeToString(deterministic=True) for label, g in _bodies(model.graph)}
    after = {g.SerializeToString(deterministic=True) for _, g in _bodies(res.model.graph)}
    intact = [label for label, b in before.items() if b in after]
    if intact:
        assert any(BODY_NOTE.search(n) for n in res.report.notes), (
            f"{key} left {intact} unchanged without saying so; notes: {res.report.notes}"
        )


def _all_names(model: onnx.ModelProto):
    """(node names, defined tensor names) over the main graph and every body."""
    nodes, defined = [], []

    def walk(g):
        defined.extend(i.name for i in g.input)
        defined.extend(t.name for t in g.initializer)
        for n in g.node:
            nodes.append(n.name)
            defined.extend(o for o in n.output if o)
            for a in n.attribute:
                for sg in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    walk(sg)

    walk(model.graph)
    return nodes, defined


def _dupes(names):
    seen, dup = set(), set()
    for n in names:
        (dup if n in seen else seen).add(n)
    return sorted(dup)


def _member_outputs(models, ds):
    from onnxopt.runtime import run_dataset

    return [run_dataset(m, ds)[0] for m in models]


@pytest.mark.parametrize("members", [("if", "if"), ("if", "loop", "scan"), ("loop", "loop")])
def test_ensemble_names_unique_in_bodies(members):
    problem = command_problem("ensemble")
    if problem:
        pytest.skip(problem)
    from onnxopt.ensemble.api import ensemble

    models = [SUBGRAPH_MODELS[name](seed=i) for i, name in enumerate(members)]
    res = ensemble(models, fusion="mean", shapes=SHAPES)
    merged = res.model
    check_model(merged)
    nodes, defined = _all_names(merged)
    assert _dupes([n for n in nodes if n]) == [], "node names repeat across members' bodies"
    assert _dupes(defined) == [], "tensor names defined twice (a body shadows or repeats a name)"
    ds = synthesize(models[0], SHAPES)
    from onnxopt.runtime import run_dataset

    got = run_dataset(merged, ds)[0]
    want = np.mean(_member_outputs(models, ds), axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_chain_names_unique_in_bodies():
    problem = command_problem("chain")
    if problem:
        pytest.skip(problem)
    from onnxopt.ensemble.api import chain

    a, b = SUBGRAPH_MODELS["if"](seed=0), SUBGRAPH_MODELS["loop"](seed=1)
    # the loop model reads "x": feed it the if model's output "y"
    res = chain([a, b], map=[("y", "x")], shapes=SHAPES)
    check_model(res.model)
    nodes, defined = _all_names(res.model)
    assert _dupes([n for n in nodes if n]) == []
    assert _dupes(defined) == []
    ds = synthesize(a, SHAPES)
    from onnxopt.data import Dataset
    from onnxopt.runtime import run_dataset

    mid = run_dataset(a, ds)[0]
    want = run_dataset(b, Dataset("mid", arrays={"x": mid}))[0]
    np.testing.assert_allclose(run_dataset(res.model, ds)[0], want, rtol=1e-4, atol=1e-5)
