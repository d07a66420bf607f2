"""``onnxopt.bench``: N models side by side on ONNX Runtime (CPU or CUDA), honestly measured.

Order of work (each phase per model, models interleaved wherever timing is involved):

1. load every model (stats, file size) and DATA, validated against each model; build the
   feed of every (batch, model) configuration (a fixed batch that forbids a batch size
   skips that configuration with a note);
2. per model: create the session (timed), run once at every input shape (first-run
   latency per shape), inside a memory probe (RSS / peak RSS growth, GPU memory on CUDA);
3. per batch size: warm up every model at that shape, then interleaved steady-state
   latency (shuffled round-robin blocks, GC off), then measured throughput with
   ``concurrency`` threads sharing each session;
4. accuracy: top-1 against ``labels`` in DATA, agreement and relative L2 against the
   baseline on the same inputs.

Ratios: ``median(baseline) / median(model)`` (> 1: faster than the baseline) with a paired
block bootstrap 95% CI (``timing.speedup``; with fewer than ``MIN_PAIRED_BLOCKS`` rounds,
its union with the independent bootstrap interval, and a note).  A Ctrl-C during phases
2-4 ends the run; what was measured is returned with ``report["interrupted"] = True``
(``ok`` is False).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..core.progress import progress
from ..core.result import Result
from ..data import DEFAULT_BATCH, Dataset, input_specs, load_data, synthesize
from ..errors import DataError, ModelError, OnnxoptError, UsageError
from ..graph import iter_graphs
from ..io import load_model
from ..runtime import create_session, ort_message, resolve_provider, run_dataset
from ..stats import model_stats
from ..verify import blaming_members
from . import accuracy as acc
from .environment import busy_warning, capture, load_average, oversubscription_warning
from .feeds import SkipConfig, dataset_view, feed_batch, make_feed
from .memory import MemoryProbe, peak_rss_bytes
from .runner import (
    Invoker,
    measure_throughput,
    open_session,
    prime_runtime,
    time_once,
    warm,
)
from .timing import MIN_PAIRED_BLOCKS, latency_summary, measure_interleaved, speedup

__all__ = [
    "bench",
    "compare_latency",
    "BenchResult",
    "SCHEMA_VERSION",
    "DEFAULT_RUNS",
    "DEFAULT_DURATION",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_RUNS = 200  # per model and batch, when neither runs nor duration is given ...
DEFAULT_DURATION = 10.0  # ... capped at this many seconds per batch size
THROUGHPUT_ROUNDS = 3
CUDNN_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


@dataclass
class BenchResult(Result):
    """``report``: the JSON-able report (schema in docs/readme/bench.md); ``samples``: the
    timed latencies in ms per ``(model name, batch)``, for plots; ``ok`` is False when
    the run was interrupted."""

    samples: dict = field(default_factory=dict)

    def render(self, fmt: str = "table") -> str:
        from .report import render

        return render(self.report, fmt)

    def plot(self, path) -> Path:
        from .plot import plot_report

        return plot_report(self.report, self.samples, path)

    def plot_bytes(self, fmt: str = "png") -> bytes:
        from .plot import plot_bytes

        return plot_bytes(self.report, self.samples, fmt)


@dataclass
class _Entry:
    name: str
    src: object  # path string or ModelProto, handed to ORT
    proto: onnx.ModelProto
    path: Path | None
    label: str = ""  # the name before de-duplication


def _name_of(src, proto: onnx.ModelProto, i: int) -> str:
    if isinstance(src, onnx.ModelProto):
        return proto.graph.name or f"model{i}"
    return Path(src).stem


def _load_entries(models, names, baseline) -> tuple[list[_Entry], int]:
    if isinstance(models, (str, os.PathLike, onnx.ModelProto)):
        models = [models]
    models = list(models)
    if not models:
        raise UsageError("no models to benchmark")
    if names is not None and len(names) != len(models):
        raise UsageError(f"{len(names)} names for {len(models)} models")
    entries = []
    for i, src in enumerate(models):
        # a path's weights stay on disk (validated, not read): ORT loads the file itself,
        # and bench needs only the graph (inputs, parameter counts from dims)
        proto = load_model(src, load_external=False)
        path = None if isinstance(src, onnx.ModelProto) else Path(src)
        entries.append(
            _Entry(
                names[i] if names else _name_of(src, proto, i),
                proto if path is None else str(path),
                proto,
                path,
            )
        )
    _dedupe(entries)
    n_given = len(entries)
    base = 0
    if baseline is None:
        pass
    elif isinstance(baseline, bool):
        raise UsageError(f"baseline must be a model, a path, a name or an index, not {baseline!r}")
    elif isinstance(baseline, int):
        if not 0 <= baseline < len(entries):
            raise UsageError(f"baseline index {baseline} is out of range (0..{len(entries) - 1})")
        base = baseline
    elif isinstance(baseline, onnx.ModelProto):
        hit = [i for i, e in enumerate(entries) if e.proto is baseline]
        if hit:
            base = hit[0]
        else:
            entries.insert(0, _Entry(_name_of(baseline, baseline, 0), baseline, baseline, None))
    else:
        bpath = Path(baseline)
        hit = [
            i
            for i, e in enumerate(entries)
            if e.path is not None
            and bpath.exists()
            and e.path.exists()
            and os.path.samefile(e.path, bpath)
        ]
        if not hit and not bpath.exists():
            hit = [i for i, e in enumerate(entries) if e.name == str(baseline)]
        if hit:
            base = hit[0]
        else:
            entries.insert(
                0, _Entry(bpath.stem, str(bpath), load_model(bpath, load_external=False), bpath)
            )
    if len(entries) > n_given:
        _dedupe(entries)
    return entries, base


def _dedupe(entries: list[_Entry]) -> None:
    """Repeated labels get ``#2``, ``#3``, ... in order (A-vs-A runs of one file)."""
    seen: dict[str, int] = {}
    for e in entries:
        e.label = e.label or e.name
        k = seen.get(e.label, 0) + 1
        seen[e.label] = k
        e.name = e.label if k == 1 else f"{e.label}#{k}"


def _check_args(runs, duration, warmup, concurrency, threads, batches, block) -> None:
    if runs is not None and (not isinstance(runs, int) or runs < 1):
        raise UsageError(f"runs must be a positive integer, got {runs!r}")
    if duration is not None and not duration > 0:
        raise UsageError(f"duration must be > 0 seconds, got {duration!r}")
    if warmup is None or warmup < 0:
        raise UsageError(f"warmup must be >= 0, got {warmup!r}")
    if not isinstance(concurrency, int) or concurrency < 1:
        raise UsageError(f"concurrency must be a positive integer, got {concurrency!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise UsageError(f"threads must be a positive integer, got {threads!r}")
    if block < 1:
        raise UsageError(f"block must be >= 1, got {block!r}")
    if batches is not None:
        bad = [b for b in batches if not isinstance(b, (int, np.integer)) or b < 1]
        if bad or not list(batches):
            raise UsageError(f"batch sizes must be positive integers, got {list(batches)!r}")


def _disk_bytes(path: Path, proto: onnx.ModelProto) -> int:
    """The .onnx file plus every external-data file it references (each counted once)."""
    total = path.stat().st_size
    seen: set[Path] = set()
    for g in iter_graphs(proto.graph):
        for t in g.initializer:
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            loc = next((x.value for x in t.external_data if x.key == "location"), None)
            f = (path.parent / loc).resolve() if loc else None
            if f is not None and f not in seen and f.is_file():
                seen.add(f)
                total += f.stat().st_size
    return total


def _model_info(e: _Entry) -> dict:
    st = model_stats(e.proto)
    size = _disk_bytes(e.path, e.proto) if e.path is not None else e.proto.ByteSize()
    return {
        "name": e.name,
        "path": str(e.path) if e.path is not None else None,
        "file_bytes": int(size),
        "params": int(st["params"]),
        "nodes": int(st["nodes"]),
        "inputs": {s.name: s.describe() for s in input_specs(e.proto)},
        "session_create_ms": None,
        "memory": None,
        "accuracy": None,
    }


@blaming_members("models")
def bench(
    models,
    *,
    provider: str = "cpu",
    data=None,
    shapes: dict | None = None,
    batches: list[int] | None = None,
    threads: int | None = None,
    runs: int | None = None,
    duration: float | None = None,
    warmup: int = 10,
    concurrency: int = 1,
    io_binding: bool | None = None,
    baseline=None,
    cudnn_conv_algo_search: str | None = None,
    seed: int = 0,
    names: list[str] | None = None,
    block: int = 5,
    throughput: bool = True,
    accuracy: bool = True,
    model_options: bool = True,
    cold_start: int = 0,
) -> BenchResult:
    """Benchmark ``models`` (paths or protos) side by side; see the module docstring.

    ``runs`` timed runs per model and batch, or for ``duration`` seconds per batch size
    (both: whichever comes first; neither: 200 runs capped at 10 s).  ``batches`` sweeps
    batch sizes (None: each model's own batch, 1 when symbolic).  ``io_binding`` defaults
    to True on CUDA.  ``baseline``: index, path, name or proto (not among ``models``: it is
    added first); default the first model.  ``model_options``: each session is built with the
    options its model carries (``onnxopt tune``; ``threads`` still overrides intra-op
    threads), False: ORT's defaults for all.  ``cold_start``: repeats of the cold-start
    measurement per model in fresh subprocesses (0: none).  Raises ``ModelError`` / ``DataError`` /
    ``ProviderError`` / ``UsageError`` for bad input before anything is measured.
    """
    t_start = time.perf_counter()
    _check_args(runs, duration, warmup, concurrency, threads, batches, block)
    if not isinstance(cold_start, int) or cold_start < 0:
        raise UsageError(f"cold_start must be a number of repeats >= 0, got {cold_start!r}")
    if runs is None and duration is None:
        runs_eff, duration_eff = DEFAULT_RUNS, DEFAULT_DURATION
    else:
        runs_eff, duration_eff = runs, duration
    prov = resolve_provider(provider)
    notes: list[str] = []
    warnings: list[str] = []
    if cudnn_conv_algo_search is not None:
        cudnn_conv_algo_search = str(cudnn_conv_algo_search).upper()
        if cudnn_conv_algo_search not in CUDNN_SEARCH:
            raise UsageError(
                f"cudnn_conv_algo_search must be one of {', '.join(CUDNN_SEARCH)}, got {cudnn_conv_algo_search!r}"
            )
        if prov != "cuda":
            if (provider or "cpu").lower() == "cpu":
                raise UsageError("cudnn_conv_algo_search applies to --provider cuda only")
            notes.append("cudnn_conv_algo_search ignored: 'auto' resolved to the CPU provider")
    cuda_options: dict = {}
    if prov == "cuda":
        cuda_options["device_id"] = 0
        if cudnn_conv_algo_search is not None and prov == "cuda":
            cuda_options["cudnn_conv_algo_search"] = cudnn_conv_algo_search
    if io_binding is None:
        io_binding = prov == "cuda"
    device = "cuda" if prov == "cuda" else "cpu"
    if prov == "cuda" and not io_binding:
        notes.append(
            "CUDA without I/O binding: every run copies inputs to the device and outputs back (included in the latency)"
        )

    entries, base = _load_entries(models, names, baseline)
    n = len(entries)
    ds = None
    views: list = [None] * n
    if data is not None:
        ds = data if isinstance(data, Dataset) else load_data(data)
        for i, e in enumerate(entries):
            try:
                views[i] = dataset_view(ds).validate(e.proto)
            except DataError as exc:
                raise DataError(
                    f"does not fit model '{e.name}': {exc.message}", exc.path or data
                ) from exc
    cfgs = list(dict.fromkeys(int(b) for b in batches)) if batches else [None]
    shapes = {k: tuple(v) for k, v in shapes.items()} if shapes else None

    # feeds of every configuration, before anything is timed (bad input fails here)
    plan: list[list] = []
    for b in cfgs:
        row = []
        for i, e in enumerate(entries):
            try:
                feed, fnotes = make_feed(e.proto, views[i], shapes, b, seed=seed)
                row.append((feed, fnotes))
            except SkipConfig as skip:
                row.append(str(skip))
            except DataError as exc:
                raise DataError(f"model '{e.name}': {exc.message}", exc.path) from exc
        plan.append(row)
    if not any(isinstance(x, tuple) for row in plan for x in row):
        reasons = sorted({x for row in plan for x in row if isinstance(x, str)})
        raise UsageError("every configuration was skipped: " + "; ".join(reasons))

    load_before = load_average()
    peaks = [peak_rss_bytes()]  # the probes reset the kernel's counter: keep the maximum
    w = oversubscription_warning(threads, concurrency, prov)
    if w:
        warnings.append(w)
    w = busy_warning()
    if w:
        warnings.append(w)
    for msg in warnings:
        log.info("%s", msg)

    infos = [_model_info(e) for e in entries]
    configs = [_session_config(e, model_options, threads) for e in entries]
    for i, cfg in enumerate(configs):
        infos[i]["session_options"] = cfg.to_dict() if cfg is not None else None
        infos[i]["session_options_source"] = "model" if cfg is not None else "default"
    sessions: list = [None] * n
    invokers: dict[tuple[int, int], Invoker] = {}
    first: dict[tuple[int, int], float] = {}
    measured: dict[int, tuple[list[int], object]] = {}
    thr: dict[tuple[int, int], dict] = {}
    acc_blocks: list[dict] | None = None
    interrupted = False
    prime_s = None
    phase = "sessions"
    try:
        # phase 2: sessions, first run at every shape, memory growth
        prime_s = prime_runtime(prov, threads=threads, cuda_options=cuda_options or None)
        for i, e in progress(list(enumerate(entries)), desc="bench sessions", unit="model"):
            with MemoryProbe(
                gpu=prov == "cuda", device_id=cuda_options.get("device_id", 0)
            ) as probe:
                sessions[i], secs = open_session(
                    e.src, prov, threads=threads, cuda_options=cuda_options or None, config=configs[i]
                )
                infos[i]["session_create_ms"] = secs * 1e3
                for c in range(len(cfgs)):
                    if not isinstance(plan[c][i], tuple):
                        continue
                    feed = plan[c][i][0]
                    try:
                        inv = Invoker(
                            sessions[i],
                            feed,
                            io_binding=io_binding,
                            device=device,
                            device_id=cuda_options.get("device_id", 0),
                        )
                        first[(i, c)] = time_once(inv.call)
                    except KeyboardInterrupt:
                        raise
                    except Exception as exc:
                        shp = {k: list(v.shape) for k, v in feed.items()}
                        hint = ""
                        if any("for a realistic size" in x for x in plan[c][i][1]):
                            hint = "; symbolic dims were discovered by probing the first model: give --shape NAME:D1,D2,... or --data"
                        raise ModelError(
                            f"onnxruntime failed to run the model on inputs {shp}: {ort_message(exc, 300)}{hint}",
                            e.path,
                        ) from exc
                    invokers[(i, c)] = inv
            infos[i]["memory"] = probe.to_dict()
            peaks.append(infos[i]["memory"]["peak_rss_bytes"])
        # phase 3: per batch size, warm-up then interleaved latency, then throughput
        phase = "latency"
        for c, b in enumerate(cfgs):
            active = [i for i in range(n) if (i, c) in invokers]
            if not active:
                continue
            for i in active:
                warm(invokers[(i, c)].call, warmup)
            calls = [invokers[(i, c)].call for i in active]
            m = measure_interleaved(
                lambda k, calls=calls: calls[k](),
                len(active),
                runs=runs_eff,
                duration=duration_eff,
                block=block,
                shuffle_seed=seed + c,
                catch_interrupt=True,
                progress_desc=f"bench batch {b if b is not None else 'default'}",
            )
            measured[c] = (active, m)
            if len(active) > 1 and m.rounds < MIN_PAIRED_BLOCKS:
                notes.append(
                    f"batch {b if b is not None else 'default'}: {m.rounds} complete round(s) of {block} runs "
                    f"(< {MIN_PAIRED_BLOCKS}): each CI is the union of the paired-block and the "
                    "independent bootstrap intervals (wider, still approximate); more --runs or "
                    "--duration give tighter ones"
                )
            if m.interrupted:
                interrupted = True
                notes.append(
                    f"interrupted by Ctrl-C while timing batch {b if b is not None else 'default'}: "
                    f"{min(len(x) for x in m.latencies)} to {max(len(x) for x in m.latencies)} runs per model measured"
                )
                break
            if throughput:
                phase = "throughput"
                workers = []
                for i in active:
                    feed = plan[c][i][0]
                    extra = [
                        Invoker(
                            sessions[i],
                            feed,
                            io_binding=io_binding,
                            device=device,
                            device_id=cuda_options.get("device_id", 0),
                        ).call
                        for _ in range(concurrency - 1)
                    ]
                    workers.append([invokers[(i, c)].call, *extra])
                bsz = [feed_batch(entries[i].proto, plan[c][i][0]) or 1 for i in active]
                iters = [
                    max(2, math.ceil(len(m.latencies[k]) / (THROUGHPUT_ROUNDS * concurrency)))
                    for k in range(len(active))
                ]
                for k, t in enumerate(
                    measure_throughput(workers, bsz, iters, rounds=THROUGHPUT_ROUNDS, seed=seed + c)
                ):
                    thr[(active[k], c)] = t
                phase = "latency"
        # cold start in fresh subprocesses, after the timed phases (it would disturb them)
        if cold_start and not interrupted:
            phase = "cold start"
            _cold_start(entries, plan, configs, infos, prov, threads, cold_start)
        # phase 4: accuracy
        if accuracy and not interrupted:
            phase = "accuracy"
            acc_blocks = _accuracy(entries, sessions, views, ds, shapes, base, seed)
    except KeyboardInterrupt:
        interrupted = True
        notes.append(
            f"interrupted by Ctrl-C during the {phase} phase: figures below are what was measured until then"
        )
    env = capture(
        prov,
        session=next((s for s in sessions if s is not None), None),
        threads=threads,
        concurrency=concurrency,
        io_binding=io_binding,
        cuda_options=cuda_options,
    )
    env["load_average_before"] = load_before
    env["runtime_setup_ms"] = prime_s * 1e3 if prime_s is not None else None
    if acc_blocks is not None:
        for i, a in enumerate(acc_blocks):
            infos[i]["accuracy"] = a

    results, samples = _results(entries, cfgs, plan, first, measured, thr, base, block, seed)
    report = {
        "command": "bench",
        "schema_version": SCHEMA_VERSION,
        "interrupted": interrupted,
        "provider": prov,
        "baseline": entries[base].name,
        "settings": {
            "provider_requested": provider,
            "provider": prov,
            "data": ds.source if ds is not None else None,
            "shapes": {k: list(v) for k, v in shapes.items()} if shapes else None,
            "batches": cfgs,
            "threads": threads,
            "concurrency": concurrency,
            "io_binding": bool(io_binding),
            "runs": runs_eff,
            "duration_s": duration_eff,
            "warmup": warmup,
            "block": block,
            "throughput_rounds": THROUGHPUT_ROUNDS if throughput else 0,
            "model_options": bool(model_options),
            "cold_start_repeats": int(cold_start),
            "cuda_options": cuda_options or None,
            "seed": seed,
        },
        "environment": env,
        "models": infos,
        "results": results,
        "peak_rss_bytes": max(
            (p for p in [*peaks, peak_rss_bytes()] if p is not None), default=None
        ),
        "seconds": time.perf_counter() - t_start,
        "notes": notes,
        "warnings": warnings,
    }
    return BenchResult(None, report, ok=not interrupted, samples=samples)


def _session_config(e: _Entry, model_options: bool, threads: int | None):
    """The options ``e`` carries (``threads`` overriding its intra-op threads), or None."""
    from ..serving.carry import carried_options

    if not model_options:
        return None
    try:
        cfg = carried_options(e.proto)
    except ModelError as exc:
        raise ModelError(exc.message, e.path) from None
    return cfg.with_threads(threads) if cfg is not None else None


def _cold_start(entries, plan, configs, infos, prov, threads, repeats) -> None:
    """Per model, ``serving.coldstart`` on its first configuration's feed."""
    from ..serving.coldstart import measure_cold_start
    from ..session_options import SessionConfig

    for i, e in progress(list(enumerate(entries)), desc="bench cold start", unit="model"):
        item = next((row[i] for row in plan if isinstance(row[i], tuple)), None)
        if item is None:
            continue
        cfg = configs[i] or (SessionConfig(intra_op_threads=threads) if threads else None)
        infos[i]["cold_start"] = measure_cold_start(e.src, item[0], config=cfg, provider=prov, repeats=repeats)


def _accuracy(entries, sessions, views, ds, shapes, base, seed) -> list[dict]:
    n = len(entries)
    outs: list = [None] * n
    failed: dict[int, str] = {}
    if ds is not None:
        for i in progress(range(n), desc="bench accuracy", total=n, unit="model"):
            try:
                outs[i] = run_dataset(sessions[i], views[i], batch_size=DEFAULT_BATCH)
            except OnnxoptError as exc:
                failed[i] = f"not evaluated: {exc.message}"
        blocks = acc.evaluate(outs, base, ds.labels, f"{ds.source} ({len(ds)} samples)")
        for i, why in failed.items():
            blocks[i]["note"] = why
        return blocks
    feeds = []
    for i, e in enumerate(entries):
        synth = synthesize(e.proto, shapes, samples=8, seed=seed)
        feeds.append(next(synth.batches(max(len(synth), 1))))
        try:
            outs[i] = run_dataset(sessions[i], synth, batch_size=max(len(synth), 1))
        except OnnxoptError as exc:
            failed[i] = f"not evaluated: {exc.message}"
    blocks = acc.evaluate(outs, base, None, "synthesized inputs (seeded)")
    for i, why in failed.items():
        blocks[i]["note"] = why
    for i in range(n):
        same = feeds[i].keys() == feeds[base].keys() and all(
            np.array_equal(feeds[i][k], feeds[base][k]) for k in feeds[i]
        )
        if not same:
            blocks[i].update(
                agreement=None, rel_l2=None, note="inputs differ from the baseline's: no comparison"
            )
    return blocks


def _results(entries, cfgs, plan, first, measured, thr, base, block, seed):
    rows, samples = [], {}
    for c, b in enumerate(cfgs):
        active, m = measured.get(c, ([], None))
        lat = {i: m.latencies[k] for k, i in enumerate(active)} if m is not None else {}
        base_lat = lat.get(base)
        for i, e in enumerate(entries):
            item = plan[c][i]
            row = {
                "model": e.name,
                "batch_requested": b,
                "batch": None,
                "status": None,
                "notes": [],
                "input_shapes": None,
                "first_run_ms": None,
                "latency_ms": None,
                "speedup": None,
                "throughput": None,
            }
            if isinstance(item, str):
                row.update(status="skipped", notes=[item])
                rows.append(row)
                continue
            feed, fnotes = item
            row["batch"] = feed_batch(e.proto, feed)
            row["input_shapes"] = {k: list(v.shape) for k, v in feed.items()}
            row["notes"] = list(fnotes)
            if (i, c) in first:
                row["first_run_ms"] = first[(i, c)] * 1e3
            x = lat.get(i)
            if x is None or x.size == 0:
                row["status"] = "not measured"
                rows.append(row)
                continue
            row["status"] = "interrupted" if m.interrupted else "ok"
            row["latency_ms"] = latency_summary(x)
            samples[(e.name, b)] = x * 1e3
            if base_lat is None or base_lat.size == 0:
                row["notes"].append("no ratio: the baseline was not measured in this configuration")
            elif i == base:
                row["speedup"] = {
                    "ratio": 1.0,
                    "ci95": [1.0, 1.0],
                    "verdict": "baseline",
                    "ci_method": None,
                }
            else:
                s = speedup(base_lat, x, block=block, seed=seed)
                row["speedup"] = {**s.to_dict(), "verdict": s.verdict, "ci_method": s.method}
            row["throughput"] = thr.get((i, c))
            rows.append(row)
    return rows, samples


def compare_latency(
    models_or_sessions,
    feeds,
    *,
    provider: str = "cpu",
    runs: int = 50,
    warmup: int = 5,
    block: int = 5,
    duration: float | None = None,
    threads: int | None = None,
    io_binding: bool = False,
    seed: int = 0,
    names: list[str] | None = None,
) -> list[dict]:
    """Interleaved latency of N models (paths, protos or ORT sessions) on ``feeds`` (one
    feed dict for all, or one per model).  Per model: ``name``, ``median_ms``, ``p90_ms``,
    ``p99_ms``, ``mean_ms``, ``min_ms``, ``n``, and ``speedup`` = median(first) /
    median(this) with its paired-block bootstrap ``ci95`` and ``verdict``
    (faster / slower / same / baseline) and ``ci_method`` (``timing.speedup``)."""
    items = list(models_or_sessions)
    if not items:
        raise UsageError("no models to compare")
    if isinstance(feeds, dict):
        feeds = [feeds] * len(items)
    feeds = list(feeds)
    if len(feeds) != len(items):
        raise UsageError(f"{len(feeds)} feeds for {len(items)} models")
    prov = resolve_provider(provider)
    device = "cuda" if prov == "cuda" else "cpu"
    sessions, labels = [], []
    for k, it in enumerate(items):
        if hasattr(it, "run") and hasattr(it, "get_inputs"):
            sessions.append(it)
            labels.append(f"model{k}")
        else:
            proto = load_model(it, load_external=False)
            sess = create_session(
                it if not isinstance(it, onnx.ModelProto) else proto, prov, threads=threads
            )
            sessions.append(sess)
            labels.append(_name_of(it, proto, k))
    if names is not None:
        labels = list(names)
    calls = [
        Invoker(s, f, io_binding=io_binding or prov == "cuda", device=device).call
        for s, f in zip(sessions, feeds, strict=True)
    ]
    m = measure_interleaved(
        lambda k: calls[k](),
        len(calls),
        runs=runs,
        warmup=warmup,
        block=block,
        duration=duration,
        shuffle_seed=seed,
    )
    out = []
    for k, x in enumerate(m.latencies):
        ms = x * 1e3
        row = {
            "name": labels[k],
            "median_ms": float(np.median(ms)),
            "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()),
            "min_ms": float(ms.min()),
            "n": int(ms.size),
        }
        if k == 0:
            row.update(speedup=1.0, ci95=[1.0, 1.0], verdict="baseline", ci_method=None)
        else:
            s = speedup(m.latencies[0], x, block=block, seed=seed)
            row.update(speedup=s.ratio, ci95=[s.low, s.high], verdict=s.verdict, ci_method=s.method)
        out.append(row)
    return out
