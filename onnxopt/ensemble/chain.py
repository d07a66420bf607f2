"""Serial fusion: stage k's outputs feed stage k+1's inputs, in one graph.

Wiring at each junction (stage ``k-1`` -> stage ``k``), for each input ``X`` of stage ``k``:

1. an explicit pair ``OUT:X`` from ``map`` whose ``OUT`` is an output of stage ``k-1``;
2. else an output of stage ``k-1`` with the same name ``X``;
3. else a graph input of the chain (stage 0's inputs) with the same name (shared);
4. else, when stage ``k-1`` has exactly one output and stage ``k`` exactly one input, that
   pair ("by position", noted in the report).

Anything left unfed is a UsageError naming the stage and input, and so is a stage none of
whose outputs feeds the next one (it would be dropped silently).  At every junction the
dtype must be equal and the shapes compatible (same rank, fixed dims equal).  Stages are
namespaced ``s0/``, ``s1/`` ...; the chain's inputs are stage 0's inputs and its outputs are
the last stage's outputs under their own names.  Intermediate outputs nobody reads are dropped.

``ChainStagesPass`` is the chain as a source pass: it builds the chained model from its
stages, and its ``Expected`` outputs are the stages run one after another in separate
sessions (``run_stages``), which ``core.run_pipeline`` checks the model against (exact
rule, ``verify.OutputComparison.exact``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.passes import Context, Expected, Pass, PassResult
from ..data import dataset_for
from ..errors import InputError, UnsupportedError, UsageError, blame
from ..graph import real_inputs
from ..runtime import concat_outputs, create_session
from ..simplify.dead import remove_unused
from .merge import (
    Member,
    Part,
    assemble,
    dtype_name,
    load_members,
    merge_shapes,
    namespace_member,
    reconcile_opsets,
    shape_str,
    source_names,
    value_dtype,
    value_shape,
)
from .parity import LIMIT, says_little, weak_note
from .share import share_initializers

__all__ = ["ChainStagesPass", "wire_chain", "run_stages"]

PARITY_FAILED = "parity check failed: output '{name}' differs from the stages run one after another: relative L2 {rel_l2:.3g}, max abs {max_abs:.3g}"


class ChainStagesPass(Pass):
    """Wire models serially into one graph (a source: called with no model, it builds one).

    ``models``: paths or protos, at least 2; ``map``: ``OUT:IN`` pairs (see the module
    docstring).  Details: the stages (without their files), junctions, the chain's inputs
    and outputs, opsets, conversions and shared initializers."""

    key = "chain"
    own_reference = True
    idempotent = False

    @dataclass
    class Config:
        models: list
        map: list | dict | None = None

    def __init__(self, _where: str | None = None, _error=UsageError, **params):
        super().__init__(_where, _error, **params)
        # the report and provenance name the stages; they do not hold them
        self.params["models"] = source_names(self.config.models)

    def call(self, model, ctx: Context) -> PassResult:
        stages = load_members(self.config.models, what="a chain", prefix="s")
        opsets, ir_version, conversions, notes = reconcile_opsets(stages, min_default=1)
        inputs, parts, junctions, final_names = wire_chain(stages, self.config.map)
        typed = {o.name: o for o in stages[-1].model.graph.output}
        outputs = [typed[n] for n in final_names]
        built = assemble(parts, inputs, outputs, opsets, ir_version, name="chain", doc=f"onnxopt chain of {' -> '.join(s.label for s in stages)}")
        shared = share_initializers(built, {s.prefix: s.label for s in stages})
        dead = remove_unused(built)
        if dead.get("nodes"):
            notes.append(f"removed {dead['nodes']} node(s) computing intermediate outputs nobody reads")
        details = {
            "stages": [{k: v for k, v in s.describe().items() if k != "file"} for s in stages],
            "junctions": junctions,
            "inputs": [i.name for i in inputs],
            "outputs": final_names,
            "opset": opsets,
            "ir_version": ir_version,
            "conversions": conversions,
            "shared_initializers": shared,
        }
        res = self.result(built, True, notes=notes, details=details)

        def dataset():
            with blame(stages[0].path, data=True):  # the chain's inputs are the first stage's
                return dataset_for(built, ctx.data, ctx.shapes)

        def reference(ds) -> list[np.ndarray]:
            ref = run_stages(stages, parts, ds, final_names, provider=ctx.provider, limit=LIMIT)
            weak = [n for n, a in zip(final_names, ref, strict=True) if says_little(a)]
            if weak:
                res.report.notes.append(weak_note(weak, ds))
            return ref

        res.expected = Expected(dataset, reference, "chained model", failure=PARITY_FAILED, limit=LIMIT)
        return res


def _normalize_pairs(mapping) -> list[tuple[str, str]]:
    if mapping is None:
        return []
    if isinstance(mapping, dict):
        return list(mapping.items())
    pairs = []
    for p in mapping:
        if isinstance(p, str):
            a, sep, b = p.partition(":")
            if not sep or not a or not b:
                raise UsageError(f"--map '{p}' is not OUT_NAME:IN_NAME")
            pairs.append((a, b))
        else:
            a, b = p
            pairs.append((str(a), str(b)))
    return pairs


def wire_chain(stages: list[Member], mapping=None) -> tuple[list, list[Part], list[dict], list[str]]:
    """Set each stage's ``input_rename``/``outputs`` and namespace it.

    Returns (graph inputs, parts, junctions, final output names).
    """
    from onnx import helper

    pairs = _normalize_pairs(mapping)
    used_pairs: set[tuple[str, str]] = set()
    graph_inputs = {vi.name: vi for vi in real_inputs(stages[0].model.graph)}
    stages[0].input_rename = {name: name for name in graph_inputs}
    parts: list[Part] = []
    junctions: list[dict] = []
    for k, st in enumerate(stages):
        st.outputs = [o.name for o in st.model.graph.output]
        if k > 0:
            _feed_stage(k, stages, parts, pairs, used_pairs, graph_inputs, junctions)
        final = k == len(stages) - 1  # the last stage keeps its output names
        for name in st.outputs if final else ():
            if name in graph_inputs:
                raise UnsupportedError(
                    f"final output '{name}' has the name of a chain input; rename it first",
                    st.where,
                )
        parts.append(
            namespace_member(st, output_names={n: n for n in st.outputs} if final else None)
        )
    final_names = list(stages[-1].outputs)
    unused = [f"{a}:{b}" for a, b in pairs if (a, b) not in used_pairs]
    if unused:
        raise UsageError(f"--map {', '.join(unused)} matches no junction (an output of one stage and an input of the next)")
    inputs = [
        helper.make_tensor_value_info(vi.name, value_dtype(vi), None if value_shape(vi) is None else list(value_shape(vi))) for vi in graph_inputs.values()
    ]
    return inputs, parts, junctions, final_names


def _feed_stage(k: int, stages: list[Member], parts: list[Part], pairs, used_pairs: set, graph_inputs: dict, junctions: list[dict]) -> None:
    """Wire stage ``k``'s inputs: from the previous stage's outputs (``--map`` pairs, same
    names, or by position for a single output and input) or from the chain inputs; records
    each junction and refuses a stage the previous one does not feed."""
    st = stages[k]
    prev = stages[k - 1]
    prev_out = {o.name: o for o in prev.model.graph.output}
    ins = real_inputs(st.model.graph)
    st.input_rename = {}
    unfed = []
    for vi in ins:
        explicit = [(a, b) for a, b in pairs if b == vi.name and a in prev_out]
        if explicit:
            src, how = explicit[0][0], "map"
            used_pairs.add(explicit[0])
        elif vi.name in prev_out:
            src, how = vi.name, "name"
        elif vi.name in graph_inputs:
            _check_junction(graph_inputs[vi.name], vi, st, f"chain input '{vi.name}' -> stage {k} input '{vi.name}'")
            st.input_rename[vi.name] = vi.name
            junctions.append(_junction(k, f"input {vi.name}", vi, "shared input", vi))
            continue
        elif len(ins) == 1 and len(prev_out) == 1:
            src, how = next(iter(prev_out)), "position"
        else:
            unfed.append(vi)
            continue
        _check_junction(prev_out[src], vi, st, f"stage {k - 1} output '{src}' -> stage {k} input '{vi.name}'")
        st.input_rename[vi.name] = parts[k - 1].outputs[(k - 1, src)]
        junctions.append(_junction(k, src, vi, how, prev_out[src]))
    if not unfed and not any(j["stage"] == k and j["how"] != "shared input" for j in junctions):
        raise UsageError(
            (
                f"stage {k - 1} outputs [{', '.join(prev_out)}] feed nothing in stage {k} (its inputs "
                f"[{', '.join(v.name for v in ins)}] are chain inputs); connect them with --map OUT_NAME:IN_NAME"
            ),
            st.where,
        )
    if unfed:
        names = ", ".join(v.name for v in unfed)
        raise UsageError(
            f"stage {k} input(s) {names} are fed by nothing: stage {k - 1} outputs [{', '.join(prev_out)}]; connect them with --map OUT_NAME:IN_NAME",
            st.where,
        )


def _junction(k: int, src: str, vi, how: str, shape_of) -> dict:
    """The report's record of one junction into stage ``k`` (the shape is ``shape_of``'s)."""
    return {"stage": k, "from": src, "to": vi.name, "how": how, "dtype": dtype_name(value_dtype(vi)), "shape": shape_str(value_shape(shape_of))}


def _check_junction(src_vi, dst_vi, st: Member, what: str) -> None:
    a, b = value_dtype(src_vi), value_dtype(dst_vi)
    if a and b and a != b:
        raise InputError(f"{what}: dtype {dtype_name(a)} does not match {dtype_name(b)}", st.where)
    try:
        merge_shapes(value_shape(src_vi), value_shape(dst_vi))
    except ValueError as exc:
        raise InputError(f"{what}: shape {shape_str(value_shape(src_vi))} does not fit {shape_str(value_shape(dst_vi))} ({exc})", st.where) from None


def run_stages(stages: list[Member], parts: list[Part], dataset, final_names: list[str], *, provider: str = "cpu", limit: int | None = 512) -> list[np.ndarray]:
    """The chain computed stage by stage in separate sessions (numpy glue); final outputs."""
    from ..errors import ModelError

    sessions = [create_session(s.original, provider) for s in stages]
    batches = []
    for feed in dataset.batches(None, limit):
        env = dict(feed)
        for k, (st, sess) in enumerate(zip(stages, sessions, strict=True)):
            stage_feed = {local: env[merged] for local, merged in st.input_rename.items()}
            try:
                outs = sess.run(st.outputs, stage_feed)
            except Exception as exc:
                raise ModelError(f"onnxruntime failed to run stage {k}: {' '.join(str(exc).split())[:300]}", st.where) from exc
            for name, val in zip(st.outputs, outs, strict=True):
                env[parts[k].outputs[(k, name)]] = val
        batches.append([env[n] for n in final_names])
    return concat_outputs(batches)
