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
from ..core.public import check_options
from ..core.result import Result
from ..data import DEFAULT_BATCH, Dataset, input_specs, load_data, synthesize
from ..errors import DataError, ModelError, OnnxoptError, UsageError, first_failure
from ..graph import iter_graphs
from ..io import load_model
from ..runtime import create_session, ort_message, resolve_provider, run_dataset
from ..stats import model_stats
from ..verify import blaming_members
from . import accuracy as acc
from .environment import busy_warning, capture, load_average, oversubscription_warning
from .feeds import SkipConfig, feed_batch, make_feed
from .memory import MemoryProbe, peak_rss_bytes
from .runner import Invoker, measure_throughput, open_session, prime_runtime, time_once, warm
from .timing import MIN_PAIRED_BLOCKS, latency_summary, measure_interleaved, speedup

__all__ = ["bench", "BenchConfig", "compare_latency", "BenchResult", "SCHEMA_VERSION", "DEFAULT_RUNS", "DEFAULT_DURATION"]

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
    return (proto.graph.name or f"model{i}") if isinstance(src, onnx.ModelProto) else Path(src).stem


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
        entries.append(_Entry(names[i] if names else _name_of(src, proto, i), proto if path is None else str(path), proto, path))
    _dedupe(entries)
    if baseline is None:
        return entries, 0
    if isinstance(baseline, bool):
        raise UsageError(f"baseline must be a model, a path, a name or an index, not {baseline!r}")
    if isinstance(baseline, int):
        if not 0 <= baseline < len(entries):
            raise UsageError(f"baseline index {baseline} is out of range (0..{len(entries) - 1})")
        return entries, baseline
    if isinstance(baseline, onnx.ModelProto):
        hit = [i for i, e in enumerate(entries) if e.proto is baseline]
    else:
        bpath = Path(baseline)
        hit = [i for i, e in enumerate(entries) if e.path is not None and bpath.exists() and e.path.exists() and os.path.samefile(e.path, bpath)]
        if not hit and not bpath.exists():
            hit = [i for i, e in enumerate(entries) if e.name == str(baseline)]
    if hit:
        return entries, hit[0]
    if isinstance(baseline, onnx.ModelProto):  # not among the models: added first
        entries.insert(0, _Entry(_name_of(baseline, baseline, 0), baseline, baseline, None))
    else:
        entries.insert(0, _Entry(bpath.stem, str(bpath), load_model(bpath, load_external=False), bpath))
    _dedupe(entries)
    return entries, 0


def _dedupe(entries: list[_Entry]) -> None:
    """Repeated labels get ``#2``, ``#3``, ... in order (A-vs-A runs of one file)."""
    seen: dict[str, int] = {}
    for e in entries:
        e.label = e.label or e.name
        k = seen.get(e.label, 0) + 1
        seen[e.label] = k
        e.name = e.label if k == 1 else f"{e.label}#{k}"


def _check_args(runs, duration, warmup, concurrency, threads, batches, block) -> None:
    problem = first_failure(
        (runs is not None and (not isinstance(runs, int) or runs < 1), f"runs must be a positive integer, got {runs!r}"),
        (duration is not None and not duration > 0, f"duration must be > 0 seconds, got {duration!r}"),
        (warmup is None or warmup < 0, f"warmup must be >= 0, got {warmup!r}"),
        (not isinstance(concurrency, int) or concurrency < 1, f"concurrency must be a positive integer, got {concurrency!r}"),
        (threads is not None and (not isinstance(threads, int) or threads < 1), f"threads must be a positive integer, got {threads!r}"),
        (block < 1, f"block must be >= 1, got {block!r}"),
        (batches is not None and (not list(batches) or any(not isinstance(b, (int, np.integer)) or b < 1 for b in batches)),
         f"batch sizes must be positive integers, got {list(batches or [])!r}"),
    )
    if problem:
        raise UsageError(problem)


def _disk_bytes(path: Path, proto: onnx.ModelProto) -> int:
    """The .onnx file plus every external-data file it references (each counted once)."""
    tensors = [t for g in iter_graphs(proto.graph) for t in g.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    locs = [next((x.value for x in t.external_data if x.key == "location"), None) for t in tensors]
    files = {(path.parent / loc).resolve() for loc in locs if loc}
    return path.stat().st_size + sum(f.stat().st_size for f in files if f.is_file())


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


@dataclass
class BenchConfig:
    """The options of ``bench`` (see its docstring); ``validate`` checks them (exit 2).

    ``runs`` timed runs per model and batch, or for ``duration`` seconds per batch size
    (both: whichever comes first; neither: 200 runs capped at 10 s).  ``batches`` sweeps
    batch sizes (None: each model's own batch, 1 when symbolic).  ``io_binding`` defaults
    to True on CUDA.  ``baseline``: index, path, name or proto (not among ``models``: it is
    added first); default the first model.  ``model_options``: each session is built with the
    options its model carries (``onnxopt tune``; ``threads`` still overrides intra-op
    threads), False: ORT's defaults for all.  ``cold_start``: repeats of the cold-start
    measurement per model in fresh subprocesses (0: none).
    """

    provider: str = "cpu"
    data: object = None
    shapes: dict | None = None
    batches: list[int] | None = None
    threads: int | None = None
    runs: int | None = None
    duration: float | None = None
    warmup: int = 10
    concurrency: int = 1
    io_binding: bool | None = None
    baseline: object = None
    cudnn_conv_algo_search: str | None = None
    seed: int = 0
    names: list[str] | None = None
    block: int = 5
    throughput: bool = True
    accuracy: bool = True
    model_options: bool = True
    cold_start: int = 0

    def validate(self) -> BenchConfig:
        _check_args(self.runs, self.duration, self.warmup, self.concurrency, self.threads, self.batches, self.block)
        if not isinstance(self.cold_start, int) or self.cold_start < 0:
            raise UsageError(f"cold_start must be a number of repeats >= 0, got {self.cold_start!r}")
        return self


@dataclass
class _Device:
    """The provider resolved, and what follows from it (CUDA options, I/O binding)."""

    provider: str
    io_binding: bool
    cuda_options: dict
    notes: list[str]

    @property
    def name(self) -> str:
        return "cuda" if self.provider == "cuda" else "cpu"

    def invoker(self, session, feed) -> Invoker:
        return Invoker(session, feed, io_binding=self.io_binding, device=self.name, device_id=self.cuda_options.get("device_id", 0))


def _device(cfg: BenchConfig) -> _Device:
    prov = resolve_provider(cfg.provider)
    notes: list[str] = []
    search = cfg.cudnn_conv_algo_search
    if search is not None:
        search = str(search).upper()
        if search not in CUDNN_SEARCH:
            raise UsageError(f"cudnn_conv_algo_search must be one of {', '.join(CUDNN_SEARCH)}, got {search!r}")
        if prov != "cuda":
            if (cfg.provider or "cpu").lower() == "cpu":
                raise UsageError("cudnn_conv_algo_search applies to --provider cuda only")
            notes.append("cudnn_conv_algo_search ignored: 'auto' resolved to the CPU provider")
    cuda_options = {"device_id": 0} if prov == "cuda" else {}
    if cuda_options and search is not None:
        cuda_options["cudnn_conv_algo_search"] = search
    io_binding = prov == "cuda" if cfg.io_binding is None else cfg.io_binding
    if prov == "cuda" and not io_binding:
        notes.append("CUDA without I/O binding: every run copies inputs to the device and outputs back (included in the latency)")
    return _Device(prov, io_binding, cuda_options, notes)


@dataclass
class _Plan:
    """What will be measured: the models, DATA and its view per model, the batch
    configurations, and per (configuration, model) a ``(feed, notes)`` or the reason it is
    skipped."""

    entries: list[_Entry]
    base: int
    ds: Dataset | None
    views: list
    cfgs: list
    shapes: dict | None
    feeds: list[list]


def _plan(models, cfg: BenchConfig) -> _Plan:
    """Load the models and DATA and build every feed, before anything is timed (bad input
    fails here)."""
    entries, base = _load_entries(models, cfg.names, cfg.baseline)
    ds = None
    views: list = [None] * len(entries)
    if cfg.data is not None:
        ds = cfg.data if isinstance(cfg.data, Dataset) else load_data(cfg.data)
        for i, e in enumerate(entries):
            try:
                views[i] = ds.view().validate(e.proto)
            except DataError as exc:
                raise DataError(f"does not fit model '{e.name}': {exc.message}", exc.path or cfg.data) from exc
    cfgs = list(dict.fromkeys(int(b) for b in cfg.batches)) if cfg.batches else [None]
    shapes = {k: tuple(v) for k, v in cfg.shapes.items()} if cfg.shapes else None
    feeds: list[list] = []
    for b in cfgs:
        row = []
        for i, e in enumerate(entries):
            try:
                row.append(make_feed(e.proto, views[i], shapes, b, seed=cfg.seed))
            except SkipConfig as skip:
                row.append(str(skip))
            except DataError as exc:
                raise DataError(f"model '{e.name}': {exc.message}", exc.path) from exc
        feeds.append(row)
    if not any(isinstance(x, tuple) for row in feeds for x in row):
        reasons = sorted({x for row in feeds for x in row if isinstance(x, str)})
        raise UsageError("every configuration was skipped: " + "; ".join(reasons))
    return _Plan(entries, base, ds, views, cfgs, shapes, feeds)


@blaming_members("models")
def bench(models, **options) -> BenchResult:
    """Benchmark ``models`` (paths or protos) side by side; see the module docstring.

    Options (``BenchConfig``): ``provider``, ``data``, ``shapes``, ``batches``, ``threads``,
    ``runs``, ``duration``, ``warmup``, ``concurrency``, ``io_binding``, ``baseline``,
    ``cudnn_conv_algo_search``, ``seed``, ``names``, ``block``, ``throughput``,
    ``accuracy``, ``model_options``, ``cold_start``.

    Stages: check the options and resolve the provider, plan (models, DATA, every feed),
    measure (sessions and first runs, interleaved latency and throughput per batch size, cold
    start, accuracy; a Ctrl-C ends it with what was measured), report.  Raises
    ``ModelError`` / ``DataError`` / ``ProviderError`` / ``UsageError`` for bad input before
    anything is measured.
    """
    t_start = time.perf_counter()
    cfg = BenchConfig(**check_options(BenchConfig, "bench", options)).validate()
    dev = _device(cfg)
    plan = _plan(models, cfg)
    run = _Run(cfg, dev, plan)
    run.measure()
    results, samples = _results(plan.entries, plan.cfgs, plan.feeds, run.first, run.measured, run.thr, plan.base, cfg.block, cfg.seed)
    report = run.report(results, time.perf_counter() - t_start)
    return BenchResult(None, report, ok=not run.interrupted, samples=samples)


class _Run:
    """The measuring phases of one ``bench`` call and what they measured."""

    def __init__(self, cfg: BenchConfig, dev: _Device, plan: _Plan):
        self.cfg, self.dev, self.plan = cfg, dev, plan
        defaults = cfg.runs is None and cfg.duration is None
        self.runs, self.duration = (DEFAULT_RUNS, DEFAULT_DURATION) if defaults else (cfg.runs, cfg.duration)
        self.notes: list[str] = list(dev.notes)
        self.load_before = load_average()
        self.peaks = [peak_rss_bytes()]  # the probes reset the kernel's counter: keep the maximum
        self.warnings = [w for w in (oversubscription_warning(cfg.threads, cfg.concurrency, dev.provider), busy_warning()) if w]
        for msg in self.warnings:
            log.info("%s", msg)
        self.infos = [_model_info(e) for e in plan.entries]
        self.configs = [_session_config(e, cfg.model_options, cfg.threads) for e in plan.entries]
        for info, sc in zip(self.infos, self.configs, strict=True):
            info.update(session_options=sc.to_dict() if sc is not None else None, session_options_source="model" if sc is not None else "default")
        self.sessions: list = [None] * len(plan.entries)
        self.invokers: dict[tuple[int, int], Invoker] = {}
        self.first: dict[tuple[int, int], float] = {}
        self.measured: dict[int, tuple[list[int], object]] = {}
        self.thr: dict[tuple[int, int], dict] = {}
        self.acc_blocks: list[dict] | None = None
        self.interrupted = False
        self.prime_s = None
        self.phase = "sessions"

    def measure(self) -> None:
        """Phases 2-4 (module docstring); a Ctrl-C ends them, keeping what was measured."""
        cfg, plan = self.cfg, self.plan
        try:
            self.prime_s = prime_runtime(self.dev.provider, threads=cfg.threads, cuda_options=self.dev.cuda_options or None)
            for i, e in progress(list(enumerate(plan.entries)), desc="bench sessions", unit="model"):
                self.open(i, e)
            self.phase = "latency"
            for c, b in enumerate(plan.cfgs):
                if not self.time_batch(c, b):
                    break
            # cold start in fresh subprocesses, after the timed phases (it would disturb them)
            if cfg.cold_start and not self.interrupted:
                self.phase = "cold start"
                _cold_start(plan.entries, plan.feeds, self.configs, self.infos, self.dev.provider, cfg.threads, cfg.cold_start)
            if cfg.accuracy and not self.interrupted:
                self.phase = "accuracy"
                self.acc_blocks = _accuracy(plan.entries, self.sessions, plan.views, plan.ds, plan.shapes, plan.base, cfg.seed)
        except KeyboardInterrupt:
            self.interrupted = True
            self.notes.append(f"interrupted by Ctrl-C during the {self.phase} phase: figures below are what was measured until then")

    def open(self, i: int, e: _Entry) -> None:
        """Model ``i``'s session (timed) and its first run at every shape, inside a memory probe."""
        dev, plan = self.dev, self.plan
        with MemoryProbe(gpu=dev.provider == "cuda", device_id=dev.cuda_options.get("device_id", 0)) as probe:
            self.sessions[i], secs = open_session(e.src, dev.provider, threads=self.cfg.threads, cuda_options=dev.cuda_options or None, config=self.configs[i])
            self.infos[i]["session_create_ms"] = secs * 1e3
            for c in range(len(plan.cfgs)):
                item = plan.feeds[c][i]
                if not isinstance(item, tuple):
                    continue
                try:
                    inv = dev.invoker(self.sessions[i], item[0])
                    self.first[(i, c)] = time_once(inv.call)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    raise _run_failed(exc, item, e) from exc
                self.invokers[(i, c)] = inv
        self.infos[i]["memory"] = probe.to_dict()
        self.peaks.append(self.infos[i]["memory"]["peak_rss_bytes"])

    def time_batch(self, c: int, b) -> bool:
        """Warm-up, interleaved latency, then throughput at configuration ``c``; False when
        interrupted."""
        cfg = self.cfg
        active = [i for i in range(len(self.plan.entries)) if (i, c) in self.invokers]
        if not active:
            return True
        for i in active:
            warm(self.invokers[(i, c)].call, cfg.warmup)
        calls = [self.invokers[(i, c)].call for i in active]
        label = b if b is not None else "default"
        m = measure_interleaved(
            lambda k, calls=calls: calls[k](),
            len(active),
            runs=self.runs,
            duration=self.duration,
            block=cfg.block,
            shuffle_seed=cfg.seed + c,
            catch_interrupt=True,
            progress_desc=f"bench batch {label}",
        )
        self.measured[c] = (active, m)
        if len(active) > 1 and m.rounds < MIN_PAIRED_BLOCKS:
            self.notes.append(
                f"batch {label}: {m.rounds} complete round(s) of {cfg.block} runs "
                f"(< {MIN_PAIRED_BLOCKS}): each CI is the union of the paired-block and the "
                "independent bootstrap intervals (wider, still approximate); more --runs or "
                "--duration give tighter ones"
            )
        if m.interrupted:
            self.interrupted = True
            self.notes.append(
                f"interrupted by Ctrl-C while timing batch {label}: "
                f"{min(len(x) for x in m.latencies)} to {max(len(x) for x in m.latencies)} runs per model measured"
            )
            return False
        if cfg.throughput:
            self.phase = "throughput"
            self.time_throughput(c, active, m)
            self.phase = "latency"
        return True

    def time_throughput(self, c: int, active: list[int], m) -> None:
        """``concurrency`` threads sharing each session, as many calls as the latency phase made."""
        cfg, plan = self.cfg, self.plan
        workers = []
        for i in active:
            extra = [self.dev.invoker(self.sessions[i], plan.feeds[c][i][0]).call for _ in range(cfg.concurrency - 1)]
            workers.append([self.invokers[(i, c)].call, *extra])
        bsz = [feed_batch(plan.entries[i].proto, plan.feeds[c][i][0]) or 1 for i in active]
        iters = [max(2, math.ceil(len(m.latencies[k]) / (THROUGHPUT_ROUNDS * cfg.concurrency))) for k in range(len(active))]
        measured = measure_throughput(workers, bsz, iters, rounds=THROUGHPUT_ROUNDS, seed=cfg.seed + c)
        self.thr.update(((active[k], c), t) for k, t in enumerate(measured))

    def report(self, results: list[dict], seconds: float) -> dict:
        cfg, dev, plan = self.cfg, self.dev, self.plan
        env = capture(
            dev.provider,
            session=next((s for s in self.sessions if s is not None), None),
            threads=cfg.threads,
            concurrency=cfg.concurrency,
            io_binding=dev.io_binding,
            cuda_options=dev.cuda_options,
        )
        env.update(load_average_before=self.load_before, runtime_setup_ms=self.prime_s * 1e3 if self.prime_s is not None else None)
        for i, a in enumerate(self.acc_blocks or []):
            self.infos[i]["accuracy"] = a
        settings = {
            "provider_requested": cfg.provider,
            "provider": dev.provider,
            "data": plan.ds.source if plan.ds is not None else None,
            "shapes": {k: list(v) for k, v in plan.shapes.items()} if plan.shapes else None,
            "batches": plan.cfgs,
            "threads": cfg.threads,
            "concurrency": cfg.concurrency,
            "io_binding": bool(dev.io_binding),
            "runs": self.runs,
            "duration_s": self.duration,
            "warmup": cfg.warmup,
            "block": cfg.block,
            "throughput_rounds": THROUGHPUT_ROUNDS if cfg.throughput else 0,
            "model_options": bool(cfg.model_options),
            "cold_start_repeats": int(cfg.cold_start),
            "cuda_options": dev.cuda_options or None,
            "seed": cfg.seed,
        }
        peak = max((p for p in [*self.peaks, peak_rss_bytes()] if p is not None), default=None)
        return {
            "command": "bench",
            "schema_version": SCHEMA_VERSION,
            "interrupted": self.interrupted,
            "provider": dev.provider,
            "baseline": plan.entries[plan.base].name,
            "settings": settings,
            "environment": env,
            "models": self.infos,
            "results": results,
            "peak_rss_bytes": peak,
            "seconds": seconds,
            "notes": self.notes,
            "warnings": self.warnings,
        }


def _run_failed(exc: Exception, item: tuple, e: _Entry) -> ModelError:
    """The error for a model ORT cannot run on its feed (with a hint when the shapes were probed)."""
    shp = {k: list(v.shape) for k, v in item[0].items()}
    hint = ""
    if any("for a realistic size" in x for x in item[1]):
        hint = "; symbolic dims were discovered by probing the first model: give --shape NAME:D1,D2,... or --data"
    return ModelError(f"onnxruntime failed to run the model on inputs {shp}: {ort_message(exc, 300)}{hint}", e.path)


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
    synth = None if ds is not None else [synthesize(e.proto, shapes, samples=8, seed=seed) for e in entries]
    for i in progress(range(n), desc="bench accuracy", total=n, unit="model") if synth is None else range(n):
        try:
            inputs, batch = (views[i], DEFAULT_BATCH) if synth is None else (synth[i], max(len(synth[i]), 1))
            outs[i] = run_dataset(sessions[i], inputs, batch_size=batch)
        except OnnxoptError as exc:
            failed[i] = f"not evaluated: {exc.message}"
    source = f"{ds.source} ({len(ds)} samples)" if synth is None else "synthesized inputs (seeded)"
    blocks = acc.evaluate(outs, base, ds.labels if synth is None else None, source)
    for i, why in failed.items():
        blocks[i]["note"] = why
    if synth is None:
        return blocks
    feeds = [next(s.batches(max(len(s), 1))) for s in synth]
    for i in range(n):
        same = feeds[i].keys() == feeds[base].keys() and all(np.array_equal(feeds[i][k], feeds[base][k]) for k in feeds[i])
        if not same:
            blocks[i].update(agreement=None, rel_l2=None, note="inputs differ from the baseline's: no comparison")
    return blocks


def _results(entries, cfgs, plan, first, measured, thr, base, block, seed):
    rows, samples = [], {}
    for c, b in enumerate(cfgs):
        active, m = measured.get(c, ([], None))
        lat = {i: m.latencies[k] for k, i in enumerate(active)} if m is not None else {}
        base_lat = lat.get(base)
        for i, e in enumerate(entries):
            item = plan[c][i]
            row = {"model": e.name, "batch_requested": b, "batch": None, "status": None, "notes": []}
            row.update(dict.fromkeys(("input_shapes", "first_run_ms", "latency_ms", "speedup", "throughput")))
            if isinstance(item, str):
                row.update(status="skipped", notes=[item])
                rows.append(row)
                continue
            feed, fnotes = item
            row.update(batch=feed_batch(e.proto, feed), input_shapes={k: list(v.shape) for k, v in feed.items()}, notes=list(fnotes))
            row["first_run_ms"] = first[(i, c)] * 1e3 if (i, c) in first else None
            x = lat.get(i)
            if x is None or x.size == 0:
                row["status"] = "not measured"
                rows.append(row)
                continue
            row.update(status="interrupted" if m.interrupted else "ok", latency_ms=latency_summary(x))
            samples[(e.name, b)] = x * 1e3
            if base_lat is None or base_lat.size == 0:
                row["notes"].append("no ratio: the baseline was not measured in this configuration")
            elif i == base:
                row["speedup"] = {"ratio": 1.0, "ci95": [1.0, 1.0], "verdict": "baseline", "ci_method": None}
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
            sess = create_session(it if not isinstance(it, onnx.ModelProto) else proto, prov, threads=threads)
            sessions.append(sess)
            labels.append(_name_of(it, proto, k))
    if names is not None:
        labels = list(names)
    calls = [Invoker(s, f, io_binding=io_binding or prov == "cuda", device=device).call for s, f in zip(sessions, feeds, strict=True)]
    m = measure_interleaved(lambda k: calls[k](), len(calls), runs=runs, warmup=warmup, block=block, duration=duration, shuffle_seed=seed)
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
