"""``onnxopt bench`` through click: formats, files, errors -> exit codes, Ctrl-C -> 130."""

from __future__ import annotations

import csv
import io
import json

import pytest

from onnxopt.bench import api as bench_api
from onnxopt.runtime import cuda_available
from tests.bench.bench_toys import mlp

FAST = ["--runs", "5", "--warmup", "1", "--threads", "1"]


@pytest.fixture
def pair(models_dir):
    return [models_dir / "digits_mlp.onnx", models_dir / "digits_cnn.onnx"]


def test_help(invoke):
    res = invoke("bench", "--help")
    assert res.exit_code == 0
    for opt in (
        "--provider",
        "--batch",
        "--concurrency",
        "--io-binding",
        "--baseline",
        "--format",
        "--plot",
        "--duration",
        "--cudnn-conv-algo-search",
    ):
        assert opt in res.output


def test_table_on_the_terminal(invoke, pair, models_dir):
    res = invoke("bench", *pair, "--data", models_dir / "digits_test.npz", *FAST)
    assert res.exit_code == 0, res.output
    assert (
        "vs digits_mlp [95% CI]" in res.output
        and "1.00x (baseline)" in res.output
        and "top1 %" in res.output
    )


@pytest.mark.parametrize("fmt", ["json", "csv", "markdown"])
def test_formats_written_with_o_and_plot(invoke, pair, tmp_path, fmt):
    out, png = tmp_path / f"r.{fmt}", tmp_path / "r.png"
    res = invoke("bench", *pair, "--batch", "1,2", "--format", fmt, "-o", out, "--plot", png, *FAST)
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.output and "samples/s" in res.output  # the table is still printed
    text = out.read_text()
    if fmt == "json":
        assert len(json.loads(text)["results"]) == 4
    elif fmt == "csv":
        assert len(list(csv.DictReader(io.StringIO(text)))) == 4
    else:
        assert text.count("| digits_cnn |") == 3
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*.tmp"))


def test_json_to_stdout(invoke, pair):
    res = invoke("bench", *pair, "--format", "json", "--no-throughput", *FAST)
    assert res.exit_code == 0
    rep = json.loads(res.stdout)
    assert rep["baseline"] == "digits_mlp" and rep["results"][1]["throughput"] is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch", "0"], "positive"),
        (["--runs", "0"], "--runs"),
        (["--plot", "x.txt"], "must end in"),
        (["--cudnn-conv-algo-search", "HEURISTIC"], "cuda only"),
    ],
)
def test_usage_errors_exit_2_without_files(invoke, pair, tmp_path, args, message):
    out = tmp_path / "r.json"
    res = invoke("bench", *pair, "-o", out, *FAST, *args)
    assert res.exit_code == 2 and message in res.output
    assert not out.exists()


def test_bad_model_and_bad_data_exit_2_naming_the_file(invoke, pair, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    out = tmp_path / "r.json"
    res = invoke("bench", pair[0], bad, "-o", out, *FAST)
    assert (
        res.exit_code == 2
        and "bad.onnx" in res.stderr
        and len(res.stderr.strip().splitlines()) == 1
    )
    assert not out.exists()
    res = invoke("bench", *pair, "--data", tmp_path / "missing.npz", "-o", out, *FAST)
    assert res.exit_code == 2 and "missing.npz" in res.stderr and not out.exists()


def test_refuses_to_overwrite_an_input(invoke, pair):
    res = invoke("bench", *pair, "-o", pair[1], *FAST)
    assert res.exit_code == 2 and "overwrite the input" in res.output


@pytest.mark.skipif(cuda_available(), reason="CUDA is available here")
def test_provider_cuda_without_cuda_exits_2(invoke, pair, tmp_path):
    out = tmp_path / "r.csv"
    res = invoke("bench", *pair, "--provider", "cuda", "-o", out, *FAST)
    assert (
        res.exit_code == 2
        and "CUDAExecutionProvider is not available" in res.stderr
        and not out.exists()
    )
    res = invoke("bench", *pair, "--provider", "auto", *FAST)
    assert res.exit_code == 0 and "CPUExecutionProvider" in res.output


def test_fixed_batch_skip_is_noted(invoke, tmp_path, models_dir):
    from tests.bench.bench_toys import fixed_batch_mlp

    fixed, sym = tmp_path / "fixed.onnx", tmp_path / "sym.onnx"
    fixed.write_bytes(fixed_batch_mlp(1).SerializeToString())
    sym.write_bytes(mlp().SerializeToString())
    res = invoke("bench", sym, fixed, "--batch", "1,4", *FAST)
    assert (
        res.exit_code == 0
        and "skipped" in res.output
        and "fixed batch dimension of 1" in res.output
    )
    res = invoke("bench", fixed, "--batch", "4", *FAST)
    assert res.exit_code == 2 and "every configuration was skipped" in res.stderr


def test_ctrl_c_prints_partial_results_and_exits_130(invoke, pair, tmp_path, monkeypatch):
    real = bench_api.measure_interleaved

    def interrupted(run_one, n, **kw):
        calls = {"k": 0}

        def run(i):
            calls["k"] += 1
            if calls["k"] > 10:
                raise KeyboardInterrupt
            return run_one(i)

        return real(run, n, **kw)

    monkeypatch.setattr(bench_api, "measure_interleaved", interrupted)
    out = tmp_path / "r.json"
    res = invoke("bench", *pair, "--runs", "100", "-o", out, "--format", "json")
    assert res.exit_code == 130
    assert (
        "INTERRUPTED" in res.stdout
        and "digits_cnn" in res.stdout
        and "no files written" in res.stderr
    )
    assert not out.exists()


# --- audit additions -----------------------------------------------------------------

# Runs ``onnxopt ARGS`` in a child process that says "TIMING" on stderr once the phase
# named by argv[1] is under way (the latency loop, or the throughput workers, whose work
# is made endless), so that the test can send a real SIGINT at the right moment.
_DRIVER = r"""
import sys
from onnxopt.bench import api

phase = sys.argv.pop(1)

def announce(fn):
    said = []
    def wrapped(*a):
        if not said:
            said.append(1)
            print("TIMING", file=sys.stderr, flush=True)
        return fn(*a)
    return wrapped

if phase == "latency":
    real = api.measure_interleaved
    api.measure_interleaved = lambda run_one, n, **kw: real(announce(run_one), n, **kw)
else:
    real_t = api.measure_throughput
    def endless(workers, batches, iters, **kw):
        workers = [[announce(w) for w in ws] for ws in workers]
        return real_t(workers, batches, [10**9] * len(iters), **kw)
    api.measure_throughput = endless

from onnxopt.cli.main import main
sys.argv[0] = "onnxopt"
main()
"""


def _interrupt(args, phase, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, phase, "bench", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    import queue
    import threading

    lines: queue.Queue = queue.Queue()
    seen: list[str] = []

    def pump():  # stderr read in a thread: a child that stalls cannot hang the suite
        for ln in proc.stderr:
            lines.put(ln)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        while True:
            line = lines.get(timeout=120)
            if line is None or "TIMING" in line:
                break
            seen.append(line)
        assert line is not None, "the child never reached the timing phase"
        proc.send_signal(signal.SIGINT)
        chunks: list[str] = []
        collect = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)
        collect.start()
        proc.wait(timeout=60)
        collect.join(timeout=60)
        reader.join(timeout=60)
        out = "".join(chunks)
    finally:
        if proc.poll() is None:
            proc.kill()
    rest = []
    while not lines.empty():
        ln = lines.get()
        if ln is not None:
            rest.append(ln)
    return proc.returncode, out, "".join(seen + [line or ""] + rest)


@pytest.mark.parametrize("phase", ["latency", "throughput"])
def test_real_sigint_prints_partial_results(tmp_path, pair, phase):
    out_file = tmp_path / "r.json"
    args = [*pair, "--runs", "1000000000", "--warmup", "1", "--threads", "1"]
    if phase == "latency":
        rc, out, err = _interrupt([*args, "-o", out_file, "--format", "json"], phase, tmp_path)
        assert rc == 130 and "INTERRUPTED: partial results (Ctrl-C)" in out
        assert "during the" not in out and "while timing batch default" in out
        assert "digits_cnn" in out and "no files written" in err and "Traceback" not in err
        assert not out_file.exists() and not list(tmp_path.glob(".*.tmp"))
    else:
        args[args.index("--runs") + 1] = "20"
        rc, out, err = _interrupt(
            [*args, "--concurrency", "2", "--format", "json"], phase, tmp_path
        )
        assert rc == 130 and "Traceback" not in err, err
        rep = json.loads(out)  # stdout keeps the format asked for
        assert rep["interrupted"] is True
        assert any("during the throughput phase" in n for n in rep["notes"])
        # latency of the batch was measured before the workers started
        assert [r["latency_ms"]["n"] for r in rep["results"]] == [20, 20]


def test_warnings_go_to_stderr_when_stdout_is_json(invoke, pair, monkeypatch):
    from onnxopt.bench import api

    monkeypatch.setattr(api, "busy_warning", lambda: "machine busy before the run: test")
    res = invoke("bench", *pair, "--format", "json", "--no-throughput", *FAST)
    assert res.exit_code == 0 and "warning: machine busy before the run: test" in res.stderr
    assert json.loads(res.stdout)["warnings"] == ["machine busy before the run: test"]


def test_a_model_that_runs_on_no_discovered_input_says_why(invoke, tmp_path):
    import onnx

    from tests.discover_models import runs_on_nothing

    m = runs_on_nothing()
    path = tmp_path / "conv.onnx"
    onnx.save(m, str(path))
    out = tmp_path / "r.json"
    res = invoke("bench", path, "-o", out, *FAST)
    assert res.exit_code == 2 and "conv" in res.stderr and "give --shape" in res.stderr
    assert "runs on none of the probed inputs" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()
    res = invoke("bench", path, "--shape", "x:3,2000", "--no-accuracy", *FAST)
    assert res.exit_code == 0, res.output
