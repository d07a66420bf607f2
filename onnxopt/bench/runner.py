"""Running models for measurement: sessions, invokers (plain or I/O binding), first run,
warm-up, interleaved steady state and measured throughput.

- Session creation is timed once per model (``open_session``).
- An ``Invoker`` runs one inference.  Plain: ``session.run(None, feed)`` (host arrays in,
  host arrays out, as applications call it).  I/O binding: inputs are bound once (on CUDA
  copied to the device with ``OrtValue.ortvalue_from_numpy(x, "cuda", id)`` and
  ``synchronize_inputs``), outputs are bound to the same device, and every run is
  ``run_with_iobinding`` followed by ``synchronize_outputs`` so that the timed interval
  covers the device work, not just its launch.
- Throughput is measured, not derived from latency: ``concurrency`` worker threads share
  one session (onnxruntime releases the GIL in ``run``), start together at a barrier and
  each does a fixed number of runs; throughput = samples done / wall time from the barrier
  to the last worker's end.  Models take turns, round by round, like the latency phase.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import ModelError
from ..runtime import create_session

__all__ = [
    "prime_runtime",
    "open_session",
    "Invoker",
    "time_once",
    "warm",
    "measure_throughput",
]

log = logging.getLogger(__name__)


def prime_runtime(
    provider: str, *, threads: int | None = None, cuda_options: dict | None = None
) -> float:
    """Create and run a one-node session so that onnxruntime's one-time process set-up
    (environment, thread pools; the CUDA context on CUDA) is not billed to whichever model
    happens to be created first.  Returns the seconds it took."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "onnxopt_prime", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    t0 = time.perf_counter()
    sess = create_session(model, provider, threads=threads, cuda_options=cuda_options)
    sess.run(None, {"x": np.zeros((1, 4), np.float32)})
    return time.perf_counter() - t0


def open_session(
    model, provider: str, *, threads: int | None = None, cuda_options: dict | None = None, config=None
):
    """``(session, seconds)``: an ORT session for a path or proto (``config``: a
    ``SessionConfig``, else ``threads``), and how long it took (``ProviderError`` when CUDA
    was asked for and the session fell back to the CPU)."""
    t0 = time.perf_counter()
    sess = create_session(model, provider, threads=threads, cuda_options=cuda_options, config=config)
    return sess, time.perf_counter() - t0


class Invoker:
    """One inference of ``session`` on ``feed``: call its ``call`` attribute (a plain
    function, for timing loops).  See the module docstring."""

    def __init__(
        self,
        session,
        feed: dict[str, np.ndarray],
        *,
        io_binding: bool = False,
        device: str = "cpu",
        device_id: int = 0,
    ):
        self.session = session
        self.feed = feed  # keeps bound host buffers alive
        self.io_binding = io_binding
        if not io_binding:
            run = session.run

            def call():
                return run(None, feed)

            self.call = call
            return
        import onnxruntime as ort

        binding = session.io_binding()
        self._values = []  # keeps what is bound alive as long as the binding
        for name, arr in feed.items():
            arr = np.ascontiguousarray(arr)
            if device == "cuda":
                ov = ort.OrtValue.ortvalue_from_numpy(arr, "cuda", device_id)
                self._values.append(ov)
                binding.bind_ortvalue_input(name, ov)
            else:
                self._values.append(arr)
                binding.bind_cpu_input(name, arr)
        for out in session.get_outputs():
            binding.bind_output(out.name, device, device_id)
        binding.synchronize_inputs()
        self.binding = binding
        run_b = session.run_with_iobinding
        sync = binding.synchronize_outputs

        def call_bound():
            run_b(binding)
            sync()

        self.call = call_bound

    def outputs(self) -> list[np.ndarray]:
        """Host copies of the outputs of one run (used by the accuracy check)."""
        if not self.io_binding:
            return self.call()
        self.call()
        return self.binding.copy_outputs_to_cpu()


def time_once(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def warm(fn: Callable[[], object], n: int) -> None:
    for _ in range(max(n, 0)):
        fn()


def _round(
    invokers: Sequence[Callable[[], object]], iters: int, stop: threading.Event
) -> tuple[float, int]:
    """Wall seconds and runs done for ``len(invokers)`` workers doing ``iters`` runs each."""
    if len(invokers) == 1:
        inv = invokers[0]
        t0 = time.perf_counter()
        for _ in range(iters):
            inv()
        return time.perf_counter() - t0, iters
    barrier = threading.Barrier(len(invokers) + 1)
    done = [0] * len(invokers)
    errors: list[BaseException] = []

    def work(k: int, inv) -> None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        try:
            for _ in range(iters):
                if stop.is_set():
                    return
                inv()
                done[k] += 1
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(k, inv), daemon=True, name=f"onnxopt-bench-{k}")
        for k, inv in enumerate(invokers)
    ]
    for t in threads:
        t.start()
    try:
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    except KeyboardInterrupt:
        stop.set()
        barrier.abort()
        for t in threads:
            t.join()
        raise
    if errors:
        raise ModelError(
            f"onnxruntime failed in a concurrent worker: {' '.join(str(errors[0]).split())[:300]}"
        )
    return wall, sum(done)


def measure_throughput(
    workers: Sequence[Sequence[Callable[[], object]]],
    batches: Sequence[int],
    iters: Sequence[int],
    *,
    rounds: int = 3,
    seed: int = 0,
) -> list[dict]:
    """Throughput of each model: ``workers[i]`` are its invokers (one per worker thread, all
    sharing one session), ``batches[i]`` the samples per run, ``iters[i]`` runs per worker
    per round.  Models take turns in every round (seeded shuffle).  Per model:
    ``samples_per_s`` and ``runs_per_s`` (median over rounds), ``rounds_samples_per_s``."""
    rng = np.random.default_rng(seed)
    stop = threading.Event()
    per: list[list[tuple[float, int]]] = [[] for _ in workers]
    for _ in range(rounds):
        order = list(range(len(workers)))
        rng.shuffle(order)
        for i in order:
            per[i].append(_round(workers[i], iters[i], stop))
    out = []
    for i, rs in enumerate(per):
        runs_per_s = [n / w if w > 0 else float("nan") for w, n in rs]
        out.append(
            {
                "concurrency": len(workers[i]),
                "runs_per_s": float(np.median(runs_per_s)),
                "samples_per_s": float(np.median(runs_per_s) * (batches[i] or 1)),
                "rounds_samples_per_s": [float(r * (batches[i] or 1)) for r in runs_per_s],
                "runs": int(sum(n for _, n in rs)),
                "seconds": float(sum(w for w, _ in rs)),
            }
        )
    return out
