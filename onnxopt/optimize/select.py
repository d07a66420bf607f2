"""Choosing among candidates: verify, score, time interleaved against the input, decide.

Rules (each row of the decision table records which one applied):

1. **Verified**: ``onnx.checker`` + an ONNX Runtime session on the target provider + same
   output shapes as the input model.  FP16 without CUDA: checker + the ONNX reference
   evaluator on a few samples instead of ORT (ORT's CPU provider where the reference
   evaluator cannot run the model, e.g. fused ``com.microsoft`` ops), and the row is "not
   timed".
2. **Within budget**: ``reference_score - score <= max_drop`` with the ``quantize`` metrics
   (``onnxopt.metrics``), scored against the *input* model on the evaluation data (else
   calibration data, else synthesized inputs).
3. **Timed**: the input model and every verified candidate run in interleaved blocks on the
   target provider with the same feed (``onnxopt.bench.timing``); ``ratio =
   median(input) / median(candidate)`` with a bootstrap 95% CI.
4. **Eligible** = verified, within budget, timed, ``ratio >= min_ratio`` (0.97).
5. **Choice**: a lossy candidate (INT8, pruned, FP16) must be faster than the best lossless
   one (the simplified FP32 model) by ``min_gain`` (5%): a tie within noise does not
   justify losing accuracy.  Among those, the highest ratio wins; else the FP32 model.
6. **Confirmation**: the chosen model is timed once more against the input, interleaved (a
   run below 1.0x is repeated once and both runs' samples pooled, so one burst of machine
   noise cannot decide); if the ratio is below ``min_ratio`` -- for a lossy candidate, below
   its required margin over the lossless one -- it is rejected and the next one is tried.  If
   even the simplified FP32 model fails, the input is written unchanged.

Fast models get more runs: each timing round lasts about a second at least (capped by
``time_budget``), because a ratio from 200 runs of 20 us is a coin toss on a busy machine.

So the written model is never slower than the input (by the confirmation run) and never
outside the budget.  The *choice* depends on timing and may differ between runs when two
candidates are close; the bytes written for a given choice are deterministic.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..errors import OnnxoptError, VerificationError
from ..io import stored_nbytes
from ..metrics import score as metric_score
from .candidates import BuildEnv, Candidate

__all__ = ["Row", "verify_candidate", "time_candidates", "decide", "explain_rejections", "render_decision_table"]

log = logging.getLogger(__name__)


@dataclass
class Row:
    """One line of the decision table."""

    name: str
    kind: str
    lossless: bool
    source: str = ""
    params: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    status: str = "rejected"  # chosen | eligible | rejected | refused | not timed
    reason: str = ""
    verified: bool = False
    verification: str = ""  # "onnxruntime/cpu", "reference evaluator (8 samples)"
    score: float | None = None
    drop: float | None = None
    within_budget: bool | None = None
    timed: bool = False
    ratio: float | None = None
    ci95: list | None = None
    latency_ms: float | None = None
    confirm_ratio: float | None = None
    cold_start_ms: float | None = None  # session creation + first run, fresh processes (median)
    same_as_input: bool = False
    size_bytes: int | None = None
    build_seconds: float = 0.0
    explain: str = ""  # the ``onnxopt diagnose`` command that explains a rejection

    def to_dict(self) -> dict:
        return asdict(self)


def _check_shapes(name: str, ref, new) -> None:
    """``VerificationError`` when an output's shape differs from the input model's (``ValueError``
    when the output count does)."""
    for r, c in zip(ref, new, strict=True):
        if np.shape(r) != np.shape(c):
            raise VerificationError(f"{name}: output shape {list(np.shape(c))} != {list(np.shape(r))}")


def _reference_check(cand: Candidate, env: BuildEnv, samples: int) -> tuple[float, str]:
    """FP16 on a machine without CUDA: checker + ONNX reference evaluator on a few samples."""
    from onnx.reference import ReferenceEvaluator

    from ..runtime import create_session

    try:
        onnx.checker.check_model(cand.model, full_check=True)
    except Exception as exc:
        raise VerificationError(f"{cand.name}: onnx.checker rejects the model: {' '.join(str(exc).split())[:300]}") from exc
    feed = next(env.evaluator.dataset.batches(samples, samples))
    n = len(next(iter(feed.values())))
    ref = create_session(env.reference, "cpu", error=VerificationError).run(None, feed)
    how = f"reference evaluator ({n} samples)"
    try:
        new = ReferenceEvaluator(cand.model).run(None, feed)
    except Exception as exc:
        # ops it lacks (com.microsoft fused ops) or mishandles: ONNX Runtime's CPU provider
        # instead, which runs FP16 nodes without a CPU kernel upcast to FP32 (so its
        # figures are only close to the GPU's); the row says which check was made
        why = " ".join(str(exc).split())[:160]
        log.info("%s: reference evaluator failed (%s); checking on onnxruntime/cpu", cand.name, why)
        try:
            new = create_session(cand.model, "cpu", error=VerificationError).run(None, feed)
        except Exception as exc2:
            raise VerificationError(
                f"{cand.name}: neither the reference evaluator ({why}) nor onnxruntime/cpu ({' '.join(str(exc2).split())[:160]}) can run the model"
            ) from exc2
        how = f"onnxruntime/cpu ({n} samples; the reference evaluator cannot run it: {why})"
    _check_shapes(cand.name, ref, new)
    labels = env.evaluator.labels[:n] if env.evaluator.labels is not None else None
    metric = env.evaluator.metric
    return metric_score(metric, ref, ref, labels) - metric_score(metric, ref, new, labels), how


def _proto(model) -> onnx.ModelProto:
    """``model``, read from its file when it is a path."""
    from ..io import load_model

    return model if isinstance(model, onnx.ModelProto) else load_model(model)


def verify_candidate(cand: Candidate, env: BuildEnv, *, fp16_samples: int = 8) -> Row:
    """Verify and score one candidate (no timing)."""
    from ..verify import check_model

    row = Row(cand.name, cand.kind, cand.lossless, cand.source, dict(cand.params), list(cand.notes), build_seconds=cand.build_seconds)
    if cand.refused or cand.model is None:
        row.reason = cand.refused or "not built"
        row.status = "rejected" if row.reason.startswith("over budget") else "refused"
        return row
    row.size_bytes = stored_nbytes(cand.model)
    ev = env.evaluator
    try:
        if not cand.timeable and cand.kind == "fp16":
            row.drop, row.verification = _reference_check(cand, env, fp16_samples)
            row.score = ev.reference_score - row.drop
        else:
            # carried options too; the session the check loaded scores the candidate (a second
            # one cost another serialization and load of the model, beside the first's pages)
            rec = check_model(cand.model, provider=env.provider, label=cand.name, keep_session=True)
            outputs = ev.outputs(rec.session)
            del rec
            _check_shapes(cand.name, ev.ref_outputs, outputs)
            row.score = ev.score_outputs(outputs)
            row.drop = ev.reference_score - row.score
            row.verification = f"onnxruntime/{env.provider}"
    except (OnnxoptError, ValueError) as exc:  # ValueError: zip(strict=True), the output count changed
        row.reason = f"failed verification: {exc}"
        return row
    row.verified = True
    # compared here, while the proto is in memory (optimize keeps candidates on disk after this)
    if cand.lossless and cand.timeable and env.reference is not None:
        if env.reference_key is None:  # the input's graph, read (from its file while candidates are built) once per run
            env.reference_key = graph_key(_proto(env.reference))
        row.same_as_input = graph_key(cand.model) == env.reference_key
    row.within_budget = row.drop <= env.budget.max_drop + 1e-9
    if not row.within_budget:
        row.reason = f"over budget: {ev.metric} drop {row.drop:.2f} > {env.budget.max_drop:g} points"
    if not cand.timeable:
        row.status = "not timed"
        row.reason = row.reason or "verified but not timed (FP16 is timed on CUDA only)"
    return row


# how ``onnxopt diagnose`` rebuilds a candidate that is not on disk from the input model:
# kind -> (recipe or pass key run with --recipe, or None; one-model flag, or None)
_EXPLAIN = {
    "int8-dynamic": ("cpu-int8", None),
    "int8-static": ("cpu-int8-static", None),
    "fp16": (None, "--fp16"),
    "ort-offline": (None, "--ort-optimizers"),
}


def explain_rejections(rows: list[Row], model, data, recipe=None) -> None:
    """End the reason of each row over the accuracy budget or failing verification with the
    ``onnxopt diagnose`` command that explains it (``diagnose.hints.diagnose_hint``): the
    rejected model is not on disk, so the command rebuilds it from the input ``model`` (a
    path; nothing when it is only in memory) with the recipe, pass or flag of its kind,
    on ``data`` (a path or a Dataset read from one).  ``recipe``: the ``core.recipe.Recipe``
    a ``recipe:`` candidate comes from.  Kinds with no such rebuild (int4) get none."""
    from ..core.recipe import bundled_recipes
    from ..diagnose.hints import diagnose_hint

    for r in rows:
        if not r.reason.startswith(("over budget", "failed verification")):
            continue
        rec, flag = _EXPLAIN.get(r.kind, (None, None))
        if r.kind == "prune":
            rec = f"prune-{r.params.get('method', 'magnitude')}"
        elif r.kind == "recipe" and recipe is not None:
            stem = Path(recipe.path).stem
            rec = stem if bundled_recipes().get(stem) == Path(recipe.path) else recipe.path
        if rec is None and flag is None:
            continue
        hint = diagnose_hint(model, recipe=rec, data=data, flag=flag)
        if hint:
            r.explain = hint.removeprefix("; explain: ")
            r.reason += hint


class Timer:
    """The input's session and the candidates on the target provider, one shared feed.

    ``add`` only registers a model (a proto, or a path with the options it carries); its
    session lives only while ``measure`` times it, so timing one candidate at a time holds
    two sessions however many candidates a run has."""

    BLOCK = 5  # runs per session per interleaved round

    def __init__(self, input_model: onnx.ModelProto, feed: dict, provider: str, *, threads: int = 0, runs: int = 200, duration: float = 8.0,
                 min_seconds: float = 1.0, input_config=None):
        self.provider, self.threads, self.feed, self.runs, self.duration = provider, threads, feed, runs, duration
        self.min_seconds = min(min_seconds, duration)
        self.models: dict[str, tuple] = {}
        self.base = self._create(input_model, input_config)  # a path: with the options it carries (``input_config``)
        self.base_latency_ms: float | None = None

    def _create(self, model, config=None):
        from ..runtime import create_session
        from ..serving.carry import carried_options

        if isinstance(model, onnx.ModelProto):
            config = carried_options(model)  # a candidate carrying options is timed with them
        config = config.with_threads(self.threads) if config is not None else None
        return create_session(model, self.provider, threads=self.threads or None, config=config, error=VerificationError)

    def add(self, name: str, model, config=None) -> None:
        """Register ``model`` (a proto, or a spilled file's path with its carried ``config``)."""
        self.models[name] = (model, config)

    def _runs_for(self, n_sessions: int, min_seconds: float | None = None) -> int:
        """At least ``runs`` per session, more for fast models: about ``min_seconds`` in all,
        so that a burst of machine noise cannot decide a ratio (capped by ``duration``)."""
        t0 = time.perf_counter()
        for _ in range(5):
            self.base.run(None, self.feed)
        per_run = max((time.perf_counter() - t0) / 5, 1e-6)
        want = int((min_seconds or self.min_seconds) / (per_run * n_sessions))
        return int(min(max(self.runs, want), 20000))

    def measure(self, names: list[str], *, duration: float | None = None, min_seconds: float | None = None) -> dict[str, tuple]:
        """name -> (Speedup vs input, candidate latencies, input latencies); one interleaved run."""
        from ..bench.timing import speedup, time_interleaved

        sess = [self.base] + [self._create(*self.models[n]) for n in names]
        runs = self._runs_for(len(sess), min_seconds)
        lat = time_interleaved(sess, [self.feed] * len(sess), runs=runs, duration=duration or self.duration, block=self.BLOCK)
        if self.base_latency_ms is None:
            self.base_latency_ms = float(np.median(lat[0]) * 1e3)
        # paired block bootstrap over the interleaved rounds: the CI reflects the machine's
        # drift during the run, which an independent resampling of thousands of runs hides
        return {n: (speedup(lat[0], lat[i + 1], block=self.BLOCK), lat[i + 1], lat[0]) for i, n in enumerate(names)}

    def confirm(self, name: str, floor: float = 1.0) -> float:
        """Ratio of ``name`` vs the input in a fresh interleaved run; a run below ``floor``
        (what the caller would reject) is repeated once and the two runs' samples pooled (one
        noisy burst must not decide); a run at or above it decides alone."""
        from ..bench.timing import speedup

        sp, lat, base = self.measure([name])[name]
        if sp.ratio >= floor:
            return sp.ratio
        _, lat2, base2 = self.measure([name])[name]
        return speedup(np.concatenate([base, base2]), np.concatenate([lat, lat2])).ratio


def graph_key(m: onnx.ModelProto) -> tuple:
    """What makes ``m`` the model ONNX Runtime runs (metadata aside): its opsets and a digest
    of its graph; two models with equal keys are the same model to ONNX Runtime."""
    import hashlib

    opsets = tuple((o.domain, o.version) for o in m.opset_import)
    return opsets, hashlib.sha256(m.graph.SerializeToString(deterministic=True)).hexdigest()


def time_candidates(rows: list[Row], cands: dict[str, Candidate], timer: Timer) -> None:
    """Time every verified, timeable candidate against the input, one at a time (each in its
    own interleaved run with the input, sharing the timer's duration as one run of all would),
    so that two sessions are alive at once however many candidates there are.

    A lossless candidate whose graph is the input's (``Row.same_as_input``, found by
    ``verify_candidate``: preprocessing changed nothing) is not timed: its ratio is 1 by
    construction, and timing it would only measure noise."""
    names = []
    for r in rows:
        c = cands[r.name]
        if not (r.verified and c.timeable):
            continue
        if r.same_as_input:
            r.timed, r.ratio, r.ci95 = True, 1.0, [1.0, 1.0]
            r.notes.append("same graph as the input: ratio 1 by construction (not timed)")
            continue
        names.append(r.name)
        timer.add(r.name, c.runnable(), c.carried())
    res = {} if names else timer.measure([])
    part = 2 / (len(names) + 1)  # each pair gets its sessions' part of one run of all
    for n in names:
        res.update(timer.measure([n], duration=timer.duration * part, min_seconds=timer.min_seconds * part))
    for r in rows:
        if r.same_as_input:
            r.latency_ms = timer.base_latency_ms
        if r.name in res:
            sp, lat, _ = res[r.name]
            r.timed, r.ratio, r.ci95, r.latency_ms = True, sp.ratio, [sp.low, sp.high], float(np.median(lat) * 1e3)


def merit(r: Row, objective: str = "latency") -> float | None:
    """What the choice maximizes: the latency ratio vs the input, or the inverse of the
    cold start (ms) or of the size (bytes); None when the row lacks that figure."""
    if objective == "cold-start":
        return 1.0 / r.cold_start_ms if r.cold_start_ms else None
    if objective == "size":
        return 1.0 / r.size_bytes if r.size_bytes else None
    return r.ratio


def eligible_rows(rows: list[Row], min_ratio: float = 0.97) -> list[Row]:
    """Verified, within budget, timed and not slower than ``min_ratio`` vs the input."""
    ok = [r for r in rows if r.verified and r.within_budget and r.timed and r.ratio is not None]
    for r in ok:
        if r.ratio < min_ratio:
            r.reason = f"slower than the input: {r.ratio:.3f}x < {min_ratio:g}"
    return [r for r in ok if r.ratio >= min_ratio]


def decide(rows: list[Row], timer: Timer | None, *, min_ratio: float = 0.97, min_gain: float = 0.05, objective: str = "latency") -> Row | None:
    """Mark the chosen row (see the module docstring); None = write the input unchanged.
    ``objective``: ``latency`` | ``cold-start`` | ``size`` (``merit``); with the latter two a
    lossy candidate must beat the best lossless one by ``min_gain`` on that figure, and
    every choice is still confirmed at ``min_ratio`` or better against the input."""
    eligible = [r for r in eligible_rows(rows, min_ratio) if merit(r, objective) is not None]
    what = {"latency": "faster", "cold-start": "quicker to start", "size": "smaller"}[objective]
    lossless = sorted((r for r in eligible if r.lossless), key=lambda r: -merit(r, objective))
    base_merit = merit(lossless[0], objective) if lossless else (1.0 if objective == "latency" else 0.0)
    need = base_merit * (1 + min_gain)
    lossy = []
    for r in sorted((r for r in eligible if not r.lossless), key=lambda r: -merit(r, objective)):
        if merit(r, objective) >= need:
            lossy.append(r)
        else:
            cost = "binding to this machine" if r.kind == "ort-offline" else "accuracy loss"
            r.reason = f"not {min_gain:.0%} {what} than the lossless model: {cost} not justified"
    chosen = None
    for r in lossy + lossless:
        if r.same_as_input:
            r.confirm_ratio = 1.0
        elif timer is not None:
            # a lossy winner must also keep its latency margin over the lossless model when re-timed
            floor = min_ratio if (r.lossless or objective != "latency") else max(min_ratio, need)
            r.confirm_ratio = timer.confirm(r.name, floor)
            if r.confirm_ratio < floor:
                r.reason = f"confirmation run: {r.confirm_ratio:.2f}x < {floor:.2f}"
                continue
        chosen = r
        break
    for r in rows:
        if r is chosen:
            r.status = "chosen"
            if r.lossless:
                failed = [x.name for x in rows if not x.lossless and x.reason.startswith("confirmation")]
                r.reason = (
                    f"lossy candidates failed confirmation ({', '.join(failed)}); simplified FP32 written"
                    if failed
                    else "nothing beat the input by the required margin; simplified FP32 written"
                )
            else:
                best = "fastest" if objective == "latency" else f"best {objective}"
                extra = f", cold start {r.cold_start_ms:.1f} ms" if objective == "cold-start" else ""
                confirmed = f", confirmed {r.confirm_ratio:.2f}x" if r.confirm_ratio else ""
                r.reason = f"{best} within budget ({r.ratio:.2f}x{confirmed}{extra})"
        elif r.status not in ("refused", "not timed"):
            if r in eligible and not r.reason:
                r.status = "eligible"
                r.reason = f"eligible but {chosen.name} is {what}" if chosen else "eligible"
            elif r in eligible:
                r.status = "eligible" if not r.reason.startswith("confirmation") else "rejected"
            else:
                r.status = "rejected"
                r.reason = r.reason or "not eligible"
    return chosen


def _fmt_ratio(row: dict) -> str:
    if row.get("ratio") is None:
        return "-"
    lo, hi = row.get("ci95") or (None, None)
    ci = f" [{lo:.2f},{hi:.2f}]" if lo is not None else ""
    return f"{row['ratio']:.2f}x{ci}"


def _num(row: dict, key: str, fmt: str) -> str:
    return "-" if row.get(key) is None else format(row[key], fmt)


def _session_rows(outcome: dict | None, cold: bool) -> list[list]:
    """The session-option search (``serving.tune``) as decision-table rows."""
    dashes = ["-"] * (3 if cold else 2)
    return [["options: " + r["describe"], r["status"], _fmt_ratio(r), _num(r, "latency_ms", ".3f"), *dashes, r.get("reason", "")]
            for r in (outcome or {}).get("rows", [])]


def render_decision_table(report: dict) -> str:
    """The decision table of an ``optimize`` report as aligned text (for the CLI and demo)."""
    from ..render import human_bytes, table

    d = report.get("decision", report)
    rows = d.get("rows", [])
    cold = any(r.get("cold_start_ms") is not None for r in rows)
    cold_head = ["cold start ms"] if cold else []
    headers = ["candidate", "status", "speed vs input [95% CI]", "latency ms", *cold_head, f"{d.get('metric', 'metric')} (drop)", "size", "reason"]
    body = []
    for r in rows:
        acc = "-" if r.get("score") is None else f"{r['score']:.2f} ({0.0 - r['drop'] + 0.0:+.2f})"
        cs = [_num(r, "cold_start_ms", ".1f")] if cold else []
        size = human_bytes(r["size_bytes"]) if r.get("size_bytes") else "-"
        body.append([r["name"], r["status"], _fmt_ratio(r), _num(r, "latency_ms", ".3f"), *cs, acc, size, r.get("reason", "")])
    body += _session_rows(d.get("session_options"), cold)
    head = (
        f"target {d.get('target')} (provider {d.get('provider')}), batch {d.get('batch')}, metric {d.get('metric')} "
        f"on {d.get('data')}{f' ({n} samples)' if (n := d.get('samples')) else ''}: input "
        f"{d.get('reference_score', 0):.2f}, budget {d.get('max_accuracy_drop'):g} points; "
        f"input latency {d.get('input_latency_ms') or 0:.3f} ms"
    )
    if cold and d.get("input_cold_start_ms") is not None:
        head += f"; input cold start {d['input_cold_start_ms']:.1f} ms"
    if d.get("objective", "latency") != "latency":
        head += f"; objective {d['objective']}"
    lines = [head, table(headers, body)]
    so = d.get("session_options")
    if so:
        lines.append(f"session options carried: {so['chosen_describe']} (rows 'options: ...' are rated against the chosen model with its starting options)")
    lines.append(d.get("summary", ""))
    return "\n".join(x for x in lines if x)
