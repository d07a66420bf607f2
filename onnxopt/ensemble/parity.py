"""Parity: the merged model against the members run on their own, fused in numpy.

On the same inputs (DATA or synthesized), each member *as given* (before any opset
conversion) runs in its own ONNX Runtime session; the fusion is then computed in numpy
(``heads.reference``).  A probe copy of the merged model that also exposes every member's
value is run once, and two things are compared, output by output:

- each member's value inside the merged graph vs the member alone (catches namespacing,
  opset conversion and horizontal fusion errors that a fusion could hide);
- each fused output vs the numpy fusion.

An output passes like an exact transform (``verify.EXACT_REL_L2``): relative L2 error at most
1e-4, or max abs error at most 1e-6, with equal shapes.  A float16 fused output is computed
in float16 by the head's kernels but in float64 (then rounded) by numpy, so its limit is
``FP16_REL_L2`` (4e-3, about 8 float16 ulps); the members' values inside the merged graph run
the same kernels and keep the exact limit.  Vote labels must be equal except on
*ambiguous* samples, where a member's top-2 scores are within ``1e-4 * max(1, |top|)`` (float
noise may flip its argmax) or, with non-integer vote weights, the two best vote totals are
within ``1e-5 * sum(w)``; those are counted and reported, not failed.

A member output whose values are all within 1e-6 of 0 on the inputs used passes on the
absolute floor whatever the merged graph computes; it is listed in ``weak`` (and the API
adds a note) so that nobody mistakes that for evidence.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..adapt.features import predictions
from ..errors import VerificationError
from ..runtime import concat_outputs, create_session
from ..verify import EXACT_REL_L2, compare_outputs, is_exact
from .heads import Fusion, reference
from .merge import Member

__all__ = [
    "ParityReport", "member_feed", "run_members", "check_parity", "ambiguous_samples", "accuracy", "parity_ok", "parity_record", "says_little",
    "weak_note",
]

LIMIT = 512
FP16_REL_L2 = 4e-3
TIE_REL = 1e-4
VOTE_REL = 1e-5


@dataclass
class ParityReport:
    ok: bool
    samples: int
    data: str
    members: list[dict] = field(default_factory=list)
    fused: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    weak: list[str] = field(default_factory=list)  # outputs whose check says little (values ~ 0)

    def to_dict(self) -> dict:
        return asdict(self)

    def add(self, where: list, rec: dict, failure: str) -> None:
        """Record ``rec`` in ``where`` (``members`` or ``fused``), and ``failure`` when it is not ok."""
        where.append(rec)
        if not rec["ok"]:
            self.failures.append(failure)

    @property
    def worst_rel_l2(self) -> float:
        vals = [o["rel_l2"] for o in self.members + self.fused if "rel_l2" in o and np.isfinite(o["rel_l2"])]
        return max(vals, default=0.0)


def member_feed(m: Member, feed: dict) -> dict:
    """The feed of the merged model as member ``m`` names its inputs."""
    return {local: feed[shared] for local, shared in m.input_rename.items()}


def run_members(members: list[Member], dataset, *, provider: str = "cpu", limit: int | None = LIMIT) -> list[list[np.ndarray]]:
    """Each member's selected outputs (as given, own session) over ``dataset``."""
    per = [[] for _ in members]
    # one member's session at a time: N large members never sit in memory together
    for j, m in enumerate(members):
        s = create_session(m.original, provider)
        for feed in dataset.batches(None, limit):
            try:
                per[j].append(s.run(m.outputs, member_feed(m, feed)))
            except Exception as exc:
                from ..errors import ModelError

                raise ModelError(f"onnxruntime failed to run the member: {' '.join(str(exc).split())[:300]}", m.where) from exc
        del s
    return [concat_outputs(p) for p in per]


def ambiguous_samples(member_arrays: list[np.ndarray], votes: np.ndarray | None = None, weights=None) -> np.ndarray:
    """Samples where float noise could flip a member's argmax or the vote (see module doc)."""
    amb = np.zeros(member_arrays[0].shape[:-1], dtype=bool)
    for x in member_arrays:
        x = np.asarray(x, dtype=np.float64)
        if x.shape[-1] < 2:
            continue
        top2 = np.sort(x, axis=-1)[..., -2:]
        amb |= (top2[..., 1] - top2[..., 0]) <= TIE_REL * np.maximum(1.0, np.abs(top2[..., 1]))
    if votes is not None and weights is not None and not all(float(w).is_integer() for w in weights):
        v = np.sort(np.asarray(votes, dtype=np.float64), axis=-1)[..., -2:]
        amb |= (v[..., 1] - v[..., 0]) <= VOTE_REL * float(np.sum(weights))
    return amb


def parity_ok(o, limit: float = EXACT_REL_L2) -> bool:
    return not o.note.startswith("shape") and is_exact(o.rel_l2, o.max_abs, limit=limit) and o.note != "NaN/Inf pattern differs"


def _limit(arrays) -> float:
    """The relative-L2 limit of a fused output computed from ``arrays`` (see module doc)."""
    return FP16_REL_L2 if any(np.asarray(a).dtype == np.float16 for a in arrays) else EXACT_REL_L2


def parity_record(o, limit: float = EXACT_REL_L2, **extra) -> dict:
    d = {"name": o.name, "max_abs": o.max_abs, "mean_abs": o.mean_abs, "rel_l2": o.rel_l2, "ok": parity_ok(o, limit)}
    if limit != EXACT_REL_L2:
        d["limit_rel_l2"] = limit
    if o.note:
        d["note"] = o.note
    d.update(extra)
    return d


def check_parity(
    merged: onnx.ModelProto,
    members: list[Member],
    fusion: Fusion,
    member_values: list[list[str]],
    probe_types: dict[str, onnx.ValueInfoProto],
    fused_outputs: list[list[str]],
    dataset,
    *,
    provider: str = "cpu",
    limit: int | None = LIMIT,
    separate: list[list[np.ndarray]] | None = None,
) -> tuple[ParityReport, dict]:
    """Compare ``merged`` with the members run separately; returns (report, outputs).

    ``member_values[j][p]``: the merged-graph name of member ``j``'s output at position ``p``;
    ``fused_outputs[p]``: the fused output names of position ``p``.  ``outputs`` holds the
    arrays for accuracy figures: ``{"members": separate, "fused": {name: array}}``.
    """
    got = _run_probe(merged, member_values, probe_types, dataset, provider, limit)
    if separate is None:
        separate = run_members(members, dataset, provider=provider, limit=limit)
    samples = int(next(iter(got.values())).shape[0]) if got and next(iter(got.values())).ndim else 1
    rep = ParityReport(True, samples, dataset.source)

    for j, m in enumerate(members):
        comp = compare_outputs(m.outputs, separate[j], [got[n] for n in member_values[j]])
        for o, ref in zip(comp.outputs, separate[j], strict=True):
            if says_little(ref) and o.name not in rep.weak:
                rep.weak.append(o.name)
            why = f"member {m.label} output '{o.name}' differs inside the merged model: relative L2 {o.rel_l2:.3g}, max abs {o.max_abs:.3g}"
            rep.add(rep.members, parity_record(o, member=m.label), why)
    fused_arrays = {}
    for p, outs in enumerate(fused_outputs):
        arrays = [separate[j][p] for j in range(len(members))]
        ref = reference(fusion, arrays)
        if fusion.kind != "vote":
            for o in compare_outputs(outs, ref, [got[n] for n in outs]).outputs:
                why = f"output '{o.name}' differs from the numpy {fusion.kind}: relative L2 {o.rel_l2:.3g}, max abs {o.max_abs:.3g}"
                rep.add(rep.fused, parity_record(o, _limit(arrays)), why)
        elif not _check_vote(rep, arrays, ref, outs, got, fusion):
            continue
        fused_arrays.update((n, got[n]) for n in outs)
    rep.ok = not rep.failures
    return rep, {"members": separate, "fused": fused_arrays}


def _run_probe(merged, member_values, probe_types, dataset, provider: str, limit) -> dict[str, np.ndarray]:
    """A copy of ``merged`` that also exposes every member's values, run once over ``dataset``."""
    probe = copy.deepcopy(merged)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        probe_types[n]
        for n in dict.fromkeys(n for names in member_values for n in names)
        if n not in have
    )
    names = [o.name for o in probe.graph.output]
    sess = create_session(probe, provider, error=VerificationError)
    batches = []
    for feed in dataset.batches(None, limit):
        try:
            batches.append(sess.run(names, feed))
        except Exception as exc:
            raise VerificationError(f"onnxruntime failed to run the merged model: {' '.join(str(exc).split())[:300]}") from exc
    return dict(zip(names, concat_outputs(batches), strict=True))  # the session goes: large models are not held twice


def says_little(ref) -> bool:
    """A float output whose every value is within 1e-6 of 0: it passes any parity check on
    the absolute floor, whatever the model computes (module docstring)."""
    a = np.asarray(ref)
    return a.dtype.kind == "f" and a.size > 0 and float(np.nanmax(np.abs(a))) <= 1e-6


def weak_note(names, ds, what: str = "output(s)") -> str:
    """The note for outputs ``says_little`` flags on ``ds``."""
    return (
        f"the parity check says little about {what} {', '.join(names)}: "
        f"every value is within 1e-6 of 0 on {Path(ds.source).name} (give --data with real inputs)"
    )


def _check_vote(rep: ParityReport, arrays, ref, outs, got, fusion: Fusion) -> bool:
    """Vote labels equal except on ambiguous samples, vote totals exact on the others;
    False when the label shapes differ (nothing more to compare)."""
    amb = ambiguous_samples(arrays, ref[1], fusion.weights)
    keep = ~amb
    label_name, votes_name = outs
    lab_ref, lab_got = ref[0], got[label_name]
    if lab_ref.shape != lab_got.shape:
        rep.failures.append(f"output '{label_name}' has shape {list(lab_got.shape)}, expected {list(lab_ref.shape)}")
        rep.fused.append({"name": label_name, "ok": False, "note": "shape"})
        return False
    mism = int(np.sum((lab_ref != lab_got) & keep))
    agree = float(100.0 * np.mean(lab_ref == lab_got)) if lab_ref.size else 100.0
    rep.fused.append({"name": label_name, "mismatches": mism, "agreement": agree, "ambiguous_skipped": int(amb.sum()), "ok": mism == 0})
    if mism:
        rep.failures.append(f"output '{label_name}': {mism} labels differ from the numpy vote on unambiguous samples")
    o = compare_outputs([votes_name], [ref[1][keep]], [got[votes_name][keep]]).outputs[0]
    rec = parity_record(o, _limit(arrays), ambiguous_skipped=int(amb.sum()))
    rep.add(
        rep.fused,
        rec,
        f"output '{votes_name}' differs from the numpy vote: max abs {o.max_abs:.3g}",
    )
    return True


def accuracy(scores_or_labels: np.ndarray, labels: np.ndarray) -> float | None:
    """Top-1 accuracy in percent for ``[N, C]`` scores or ``[N]`` (or ``[N, 1]``) integer labels."""
    pred = predictions(scores_or_labels)
    return None if pred is None or len(pred) != len(labels) else float(100.0 * np.mean(pred == labels))
