"""Input discovery: feeds that the *input* model actually runs on, found without the user.

Two halves:

- ``graph_hints(model)``: pure reading of the graph.  Per symbolic dimension ("dim group":
  the ``dim_param`` name, or ``input:axis`` for an unnamed one) a required multiple (the
  product of Conv/Pool strides along that spatial axis) and an upper bound (the length of a
  position-embedding table that a sequence axis indexes); candidate values taken from
  Reshape/Slice/Concat/Resize constants.  Per input: integer ranges (ids that feed a
  ``Gather`` lie in ``[0, rows)``), masks (named ``*mask*``, or feeding ``Where``/``And``/
  ``Not``/``Cast -> Mul``) drawn as 0/1, and scalar integers compared with constants in
  ``Equal`` (a sample rate an ``If`` branches on) taking one of those constants.
- ``discover(model, shapes)``: probe candidate values on the model with ONNX Runtime, the
  hints first, then the ladder ``LADDER``, within ``budget_s`` seconds; the first feed that
  runs wins, and further working values per symbolic axis are kept for verification at
  several shapes.  Results are cached per model within the process.

The batch axis (axis 0 of a rank >= 2 input whose dim is symbolic and appears at no other
axis) is not probed: it is 1 while probing and ``samples`` in synthesized data.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from .errors import DataError, OnnxoptError

__all__ = ["LADDER", "InputHint", "GraphHints", "Discovery", "graph_hints", "discover", "dim_groups", "group_name", "draw"]

log = logging.getLogger(__name__)

LADDER = (1, 2, 8, 16, 32, 64, 128, 224, 256, 320, 512, 640)
PROBE_BUDGET_S = 3.0
MAX_TRIES = 40

# ops that pass values through unchanged (an id stays an id, a mask stays a mask)
_PASS_THROUGH = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand", "Transpose", "CastLike"}
_STRIDED = {"Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool"}
_SHAPE_ONLY = {"Shape", "Size"}


@dataclass
class InputHint:
    """How to draw one input's values: integers in ``[low, high)``, a 0/1 mask, or one of
    ``choices`` (scalar integers an ``Equal`` compares with constants)."""

    low: int = 0
    high: int | None = None
    mask: bool = False
    choices: tuple = ()
    reasons: list[str] = field(default_factory=list)


@dataclass
class GraphHints:
    inputs: dict[str, InputHint] = field(default_factory=dict)
    multiple: dict[str, int] = field(default_factory=dict)  # dim group -> required multiple
    upper: dict[str, int] = field(default_factory=dict)  # dim group -> largest allowed value
    values: list[int] = field(default_factory=list)  # candidate dim values from graph constants


def group_name(name: str, axis: int, dim) -> str:
    """The dim group of one symbolic axis: its ``dim_param``, or ``name:axis`` when it has
    none or a placeholder ("?", "-1") that does not tie axes together."""
    return dim if dim and dim not in ("?", "-1", "unk") else f"{name}:{axis}"


def dim_groups(model: onnx.ModelProto) -> tuple[dict[str, list[tuple[str, int]]], set[str]]:
    """({dim group: [(input, axis), ...]}, {batch groups}) over the real inputs' symbolic dims."""
    from .data import input_specs

    groups: dict[str, list[tuple[str, int]]] = {}
    for s in input_specs(model):
        for axis, d in enumerate(s.shape or ()):
            if not isinstance(d, int):
                groups.setdefault(group_name(s.name, axis, d), []).append((s.name, axis))
    ranks = {s.name: len(s.shape or ()) for s in input_specs(model)}
    batch = {g for g, uses in groups.items() if all(axis == 0 and ranks[name] >= 2 for name, axis in uses)}
    return groups, batch


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            if i:
                out.setdefault(i, []).append(n)
    return out


def _small_constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Integer/float constants of at most 64 elements (initializers and Constant nodes)."""
    from onnx import numpy_helper

    def value(t):
        try:  # a malformed tensor is no hint (the checker or ORT reports it)
            return numpy_helper.to_array(t)
        except Exception:
            return None

    inputs = {i.name for i in graph.input}
    small = (t for t in graph.initializer if int(np.prod(t.dims, dtype=np.int64)) <= 64 and t.data_location != onnx.TensorProto.EXTERNAL)
    out = {t.name: value(t) for t in small if t.name not in inputs}
    for n in graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value" and int(np.prod(a.t.dims, dtype=np.int64)) <= 64:
                    out[n.output[0]] = value(a.t)
                elif a.name in ("value_int", "value_ints"):
                    out[n.output[0]] = np.asarray(onnx.helper.get_attribute_value(a))
    return {k: v for k, v in out.items() if v is not None}


def _reach(start: str, consumers):
    """(node, input index) pairs that read ``start`` or a pass-through copy of it."""
    seen, todo, hits = {start}, [start], []
    while todo:
        name = todo.pop()
        for n in consumers.get(name, ()):
            idx = [i for i, x in enumerate(n.input) if x == name]
            hits.extend((n, i) for i in idx)
            if n.op_type in _PASS_THROUGH and 0 in idx:
                for o in n.output:
                    if o and o not in seen:
                        seen.add(o)
                        todo.append(o)
    return hits


def _value_tainted(graph: onnx.GraphProto, sources: set[str]) -> set[str]:
    """Names whose values depend on ``sources``' values (Shape/Size cut the dependency)."""
    tainted = set(sources)
    for n in graph.node:
        if n.op_type in _SHAPE_ONLY:
            continue
        if any(i in tainted for i in n.input if i):
            tainted.update(o for o in n.output if o)
    return tainted


def _strides(graph: onnx.GraphProto, name: str) -> tuple[int, int]:
    """Largest cumulative (height, width) stride of Conv/Pool chains fed by input ``name``."""
    acc = {name: (1, 1)}
    best = (1, 1)
    for n in graph.node:
        ins = [acc[i] for i in n.input if i in acc]
        if not ins:
            continue
        sh, sw = max(s[0] for s in ins), max(s[1] for s in ins)
        st = next((list(a.ints) for a in n.attribute if a.name == "strides"), [])
        if n.op_type in _STRIDED and len(st) == 2:
            sh, sw = sh * st[0], sw * st[1]
        elif n.op_type == "ConvTranspose" and len(st) == 2:  # upsamples: the stride divides
            sh, sw = max(sh // st[0], 1), max(sw // st[1], 1)
        acc.update((o, (sh, sw)) for o in n.output if o)
        best = (max(best[0], sh), max(best[1], sw))
    return best


def _input_hint(graph, spec, consumers, consts, dims: dict[str, list]) -> InputHint:
    hint = InputHint()
    hits = _reach(spec.name, consumers)
    if spec.dtype.kind in "iub" or "mask" in spec.name.lower():
        if "mask" in spec.name.lower():
            hint.mask = True
            hint.reasons.append("named *mask*")
        for n, i in hits:
            if n.op_type in ("Where", "And", "Or", "Not", "Xor") and (n.op_type != "Where" or i == 0):
                hint.mask, _ = True, hint.reasons.append(f"feeds {n.op_type}")
    if spec.dtype.kind in "iu":
        tables = []
        for n, i in hits:
            if n.op_type == "Gather" and i == 1 and n.input[0] in dims:
                axis = next((int(a.i) for a in n.attribute if a.name == "axis"), 0)
                shape = dims[n.input[0]]
                if len(shape) > axis:
                    tables.append(int(shape[axis]))
        if tables:
            hint.high = min(tables)
            hint.reasons.append(f"ids of a Gather table of {hint.high} rows")
        if spec.shape is not None and int(np.prod([d for d in spec.shape if isinstance(d, int)] or [1])) == 1 and all(isinstance(d, int) for d in spec.shape):
            others = [consts.get(n.input[1 - i]) for n, i in hits if n.op_type == "Equal"]
            choices = [int(np.asarray(o).reshape(-1)[0]) for o in others if o is not None and o.size == 1]
            if choices:
                hint.choices = tuple(dict.fromkeys(choices))
                hint.reasons.append(f"compared with {', '.join(map(str, hint.choices))}")
    return hint


def graph_hints(model: onnx.ModelProto) -> GraphHints:
    """What the graph says about its inputs (see the module docstring)."""
    from .data import input_specs

    graph = model.graph
    consumers = _consumers(graph)
    consts = _small_constants(graph)
    dims = {t.name: list(t.dims) for t in graph.initializer}
    dims.update((n.output[0], list(a.t.dims)) for n in graph.node if n.op_type == "Constant" and n.output for a in n.attribute if a.name == "value")
    specs = input_specs(model)
    hints = GraphHints({s.name: _input_hint(graph, s, consumers, consts, dims) for s in specs})
    groups, batch = dim_groups(model)
    for s in specs:
        if s.shape and len(s.shape) == 4 and s.dtype.kind == "f":
            sh, sw = _strides(graph, s.name)
            for axis, mult in ((2, sh), (3, sw)):
                d = s.shape[axis]
                if not isinstance(d, int) and mult > 1:
                    g = group_name(s.name, axis, d)
                    hints.multiple[g] = max(hints.multiple.get(g, 1), mult)
    # position tables: a Gather on a weight whose indices no input's values reach
    tainted = _value_tainted(graph, {s.name for s in specs})
    tables = [
        int(dims[n.input[0]][0])
        for n in graph.node
        if n.op_type == "Gather" and n.input[0] in dims and dims[n.input[0]] and len(n.input) > 1 and n.input[1] not in tainted and n.input[1] not in consts
    ]
    if tables:
        hints.upper = {g: min(tables) for g, uses in groups.items() if g not in batch and any(hints.inputs[name].high for name, _ in uses)}
    shaping = [consts.get(i) for n in graph.node if n.op_type in ("Reshape", "Slice", "Concat", "Resize", "Expand") for i in n.input[1:]]
    ints = (np.asarray(v).reshape(-1).tolist() for v in shaping if v is not None and v.dtype.kind in "iu")
    values = Counter(int(x) for xs in ints for x in xs if 2 < x <= 1024)
    hints.values = [v for v, _ in sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))][:4]
    return hints


@dataclass
class Discovery:
    """Concrete dims per input (batch axis 1), value hints, further working shapes."""

    shapes: dict[str, tuple]
    hints: GraphHints
    batch_groups: set[str]
    extra: list[dict[str, tuple]] = field(default_factory=list)
    probed: list[str] = field(default_factory=list)  # dim groups whose value probing found
    choices: dict[str, int] = field(default_factory=dict)  # scalar input -> chosen constant
    tries: int = 0
    seconds: float = 0.0

    def describe(self, shapes: Mapping[str, tuple] | None = None) -> str:
        """'images[1,3,64,64] (height/width found by probing)'."""
        shapes = shapes or self.shapes
        text = ", ".join(f"{k}[{','.join(map(str, v))}]" for k, v in shapes.items())
        notes = [f"{'/'.join(self.probed)} found by probing"] if self.probed else []
        notes.extend(f"{k}={v} from the graph" for k, v in self.choices.items())
        notes.extend(f"{k} in [0,{h.high})" for k, h in self.hints.inputs.items() if h.high)
        return text + (f" ({'; '.join(notes)})" if notes else "")


def draw(spec, dims: tuple, hint: InputHint | None, rng: np.random.Generator) -> np.ndarray:
    """Random values for one input following its hint: floats ~ N(0, 1), integers in
    [low, high) (else [0, 10)), masks 1 with trailing zeros (padding), choices[0]."""
    if hint and hint.choices:
        return np.full(dims, hint.choices[0], dtype=spec.dtype)
    if hint and hint.mask:
        arr = np.ones(dims, dtype=spec.dtype if spec.dtype.kind != "b" else bool)
        if len(dims) >= 2 and dims[-1] > 4:
            pad = rng.integers(0, dims[-1] // 4 + 1, size=dims[:-1])
            keep = np.arange(dims[-1]) < (dims[-1] - pad)[..., None]
            arr = (arr * keep).astype(arr.dtype)
        return arr
    if spec.dtype.kind == "f":
        return rng.standard_normal(dims).astype(spec.dtype)
    if spec.dtype.kind in "iu":
        high = hint.high if hint and hint.high else 10
        return rng.integers(hint.low if hint else 0, high, size=dims).astype(spec.dtype)
    if spec.dtype.kind == "b":
        return rng.integers(0, 2, size=dims).astype(bool)
    if spec.dtype.kind == "O":
        raise DataError(f"input '{spec.name}' is a string tensor: onnxopt can neither synthesize it nor read strings from DATA")
    raise DataError(f"cannot synthesize input '{spec.name}' of dtype {spec.dtype}; pass --data")


def _candidates(group: str, hints: GraphHints) -> list[int]:
    mult = hints.multiple.get(group, 1)
    upper = hints.upper.get(group)
    first = [mult * k for k in (1, 2, 3, 5)] if mult > 1 else []
    # graph constants last: a fallback for dims that must match one (Reshape to [-1, 576])
    cands = first + [v for v in LADDER if v % mult == 0] + [v for v in hints.values if v % mult == 0]
    return [v for v in dict.fromkeys(cands) if upper is None or v <= upper]


def _combos(cands: dict[str, list[int]]) -> list[dict[str, int]]:
    """The diagonal (every group at its i-th candidate) first, then one group at a time."""
    if not cands:
        return [{}]
    out = [{g: c[min(i, len(c) - 1)] for g, c in cands.items()} for i in range(max(len(c) for c in cands.values()))]
    out += [{**{o: oc[0] for o, oc in cands.items()}, g: v} for g, c in cands.items() for v in c[1:]]
    return list({tuple(sorted(combo.items())): combo for combo in out}.values())


_CACHE: dict[str, Discovery] = {}


def fingerprint(model: onnx.ModelProto) -> str:
    """A digest of the graph's structure (nodes, interface, weight names and dims)."""
    h = hashlib.sha1()
    g = model.graph
    for vi in list(g.input) + list(g.output):
        h.update(vi.SerializeToString(deterministic=True))
    for t in g.initializer:
        h.update(f"{t.name}{list(t.dims)}{t.data_type}".encode())
    for n in g.node:
        h.update(f"{n.op_type}|{n.domain}|{','.join(n.input)}|{','.join(n.output)}".encode())
        for a in n.attribute:
            if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS, onnx.AttributeProto.FLOAT, onnx.AttributeProto.STRING):
                h.update(a.SerializeToString(deterministic=True))
            elif a.type == onnx.AttributeProto.TENSOR and int(np.prod(a.t.dims, dtype=np.int64)) <= 64:
                h.update(a.t.SerializeToString(deterministic=True))
            elif a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                h.update(a.SerializeToString(deterministic=True)[:4096])
    return h.hexdigest()


def discover(model: onnx.ModelProto, shapes: Mapping[str, tuple] | None = None, *, seed: int = 0, budget_s: float = PROBE_BUDGET_S) -> Discovery:
    """Dims (batch axis 1) and value hints under which ``model`` runs (``shapes`` fixed).

    Probes only when some non-batch dim is symbolic or a scalar input has several
    candidate constants.  Raises DataError naming what was tried when nothing runs; a model
    ONNX Runtime cannot load is not probed (its own error comes later, from the command).
    """
    key = f"{fingerprint(model)}|{sorted((k, tuple(v)) for k, v in (shapes or {}).items())}|{seed}"
    if key in _CACHE:
        return _CACHE[key]
    result = _discover(model, dict(shapes or {}), seed, budget_s)
    _CACHE[key] = result
    if result.tries:
        log.info("input discovery: %s (%d feed(s) tried in %.2f s)", result.describe(), result.tries, result.seconds)
    return result


def _discover(model: onnx.ModelProto, shapes: dict, seed: int, budget_s: float) -> Discovery:
    from .data import input_specs

    specs = input_specs(model)
    hints = graph_hints(model)
    groups, batch = dim_groups(model)
    free = {g: uses for g, uses in groups.items() if not all(name in shapes for name, _ in uses)}
    probe = {g: _candidates(g, hints) for g in free if g not in batch}
    choice_inputs = {s.name: list(hints.inputs[s.name].choices) for s in specs if hints.inputs[s.name].choices and s.name not in shapes}
    disc = Discovery({}, hints, batch)
    base = {g: 1 for g in free if g in batch}
    if not probe and all(len(c) <= 1 for c in choice_inputs.values()):
        disc.shapes = _dims_for(specs, shapes, {**base, **{g: c[0] for g, c in probe.items()}})
        disc.choices = {k: c[0] for k, c in choice_inputs.items()}
        return disc
    return _probe(model, specs, shapes, hints, disc, base, probe, choice_inputs, seed, budget_s)


def _dims_for(specs, shapes: Mapping, values: Mapping[str, int]) -> dict[str, tuple]:
    def dims(s) -> tuple:
        if s.name in shapes:
            return tuple(int(d) for d in shapes[s.name])
        return tuple(d if isinstance(d, int) else values.get(group_name(s.name, i, d), 1) for i, d in enumerate(s.shape))

    return {s.name: dims(s) for s in specs if s.name in shapes or s.shape is not None}  # unknown rank: data.synthesize refuses it


def _feed(specs, dims: dict, hints: GraphHints, choice: Mapping[str, int], seed: int) -> dict:
    rng = np.random.default_rng(seed)
    feed = {}
    for s in specs:
        if s.name not in dims:
            raise DataError(f"input '{s.name}' has unknown rank; give --shape {s.name}:D1,D2,...")
        feed[s.name] = np.full(dims[s.name], choice[s.name], dtype=s.dtype) if s.name in choice else draw(s, dims[s.name], hints.inputs.get(s.name), rng)
    return feed


def _probe(model, specs, shapes, hints, disc, base, probe, choice_inputs, seed, budget_s) -> Discovery:
    from .runtime import create_session

    start = time.perf_counter()
    try:
        sess = create_session(model, "cpu")
    except OnnxoptError as exc:
        log.info("input discovery skipped: %s", exc.message)
        disc.shapes = _dims_for(specs, shapes, {**base, **{g: c[0] for g, c in probe.items()}})
        return disc
    choice_sets = [dict(zip(choice_inputs, vals, strict=True)) for vals in zip(*choice_inputs.values(), strict=False)] if choice_inputs else [{}]
    if choice_inputs:  # every constant of the first input, the others at their first
        first = next(iter(choice_inputs))
        choice_sets += [{**choice_sets[0], first: v} for v in choice_inputs[first][1:]]
    tried, last_error, found = [], "", None
    for choice, combo in ((ch, co) for ch in choice_sets for co in _combos(probe)):
        if len(tried) >= MAX_TRIES or (tried and time.perf_counter() - start > budget_s):
            break
        dims = _dims_for(specs, shapes, {**base, **combo})
        tried.append(_describe_dims(dims, choice))
        ok, last_error = _runs(sess, _feed(specs, dims, hints, choice, seed))
        if ok:
            found = (combo, choice)
            break
    disc.tries, disc.seconds = len(tried), time.perf_counter() - start
    if found is None:
        shown = "; ".join(tried[:6]) + (f"; ... ({len(tried)} feeds)" if len(tried) > 6 else "")
        raise DataError(f"the model runs on none of the probed inputs (tried {shown}; last error: {last_error}); give --shape NAME:D1,D2,... or --data")
    combo, choice = found
    combo = _shrink(sess, specs, shapes, hints, base, probe, combo, choice, seed, start, budget_s)
    disc.shapes = _dims_for(specs, shapes, {**base, **combo})
    disc.choices = dict(choice)
    disc.probed = [g.split(":")[0] + f" axis {g.split(':')[1]}" if ":" in g else g for g, c in probe.items() if c and len(tried) > 0]
    disc.extra = _alternatives(sess, specs, shapes, hints, base, probe, combo, choice, seed, start, budget_s)
    disc.seconds = time.perf_counter() - start
    return disc


def _shrink(sess, specs, shapes, hints, base, probe, combo, choice, seed, start, budget_s) -> dict:
    """Each group back to its earliest candidate that still runs (the diagonal moves every
    group together: a batch axis shared with a state input need not be 128 because the
    sequence axis must be)."""
    combo = dict(combo)
    for g, cands in probe.items():
        for v in cands[: cands.index(combo[g])] if combo[g] in cands else []:
            if time.perf_counter() - start > budget_s:
                return combo
            trial = {**combo, g: v}
            if _runs(sess, _feed(specs, _dims_for(specs, shapes, {**base, **trial}), hints, choice, seed))[0]:
                combo = trial
                break
    return combo


def _alternatives(sess, specs, shapes, hints, base, probe, combo, choice, seed, start, budget_s) -> list[dict]:
    """Other working dims, each probed group at a second value (jointly if that runs, else
    one group at a time), for verification at several shapes."""
    later = {g: [v for v in c if v != combo[g] and v > 1] for g, c in probe.items()}
    later = {g: c for g, c in later.items() if c}
    if not later:
        return []
    joint = [{**combo, **{g: c[i] for g, c in later.items() if i < len(c)}} for i in range(3)]
    singles = [{**combo, g: v} for g, c in later.items() for v in c[:3]]
    found, covered = [], set()
    for cand in joint + singles:
        if time.perf_counter() - start > 2 * budget_s or covered >= set(later):
            break
        changed = {g for g in later if cand.get(g) != combo[g]}
        if not changed - covered:
            continue
        dims = _dims_for(specs, shapes, {**base, **cand})
        if _runs(sess, _feed(specs, dims, hints, choice, seed + 1))[0]:
            found.append(dims)
            covered |= changed
    return found


def _runs(sess, feed) -> tuple[bool, str]:
    from .runtime import ort_message

    try:
        sess.run(None, feed)
        return True, ""
    except Exception as exc:  # any ORT failure means: not this feed
        return False, ort_message(exc, 160)


def _describe_dims(dims: dict, choice: Mapping) -> str:
    parts = [f"{k}[{','.join(map(str, v))}]" for k, v in dims.items() if v]
    parts += [f"{k}={v}" for k, v in choice.items()]
    return " ".join(parts)
