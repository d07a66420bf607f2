"""The whole malformed-input corpus through every command as real subprocesses.

Counts, per command, the invocations and everything the contract forbids: tracebacks,
stderr that is not exactly one ``error:`` line, exit codes other than expected, files left
behind (output, temporary, or in the working directory), modified inputs, an unpickled
payload.  ``test_corpus.py`` runs the same cases in-process (fast); this is the real-stderr
version of all of them (ONNX Runtime's C++ logging and Python warnings only show here).

    python -m tests.reliability.sweep [--workers 2] [--commands simplify,verify]

Exit status 0 when nothing forbidden happened.  ``test_sweep_subprocess`` (``slow``) runs it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .corpus import PICKLE_MARKER, build_corpus
from .harness import (
    SPECS,
    assert_clean_failure,
    assert_valid_model,
    command_problem,
    run_subprocess,
    snapshot,
)


def _judge(outcome, case, command, out: Path, cwd: Path) -> list[str]:
    problems = []
    if outcome.traceback:
        problems.append("traceback")
    if snapshot(cwd):
        problems.append("files in the working directory")
    expect = case.expected_for(command)
    if expect is not None or outcome.exit_code != 0:
        codes = (expect,) if expect is not None else (2, 3)
        try:
            assert_clean_failure(
                outcome, codes, names=case.path.name if expect is not None else None
            )
        except AssertionError as exc:
            first = str(exc).splitlines()[0]
            problems.append(first)
        if snapshot(out):
            problems.append("partial output")
    else:
        written = SPECS[command].writes
        if written and written.endswith(".onnx"):
            try:
                assert_valid_model(out / written)
            except Exception as exc:
                problems.append(f"invalid output: {exc}")
    return problems


def sweep(commands=None, workers: int = 2, log=print) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="onnxopt-sweep-"))
    try:
        corpus = build_corpus(tmp / "corpus")
        baseline = snapshot(corpus.root)
        jobs = []
        skipped = {}
        for cmd, spec in SPECS.items():
            if commands and cmd not in commands:
                continue
            problem = command_problem(cmd)
            if problem:
                skipped[cmd] = problem
                continue
            for case in corpus.cases:
                builder = getattr(spec, case.kind)
                if builder is None:
                    continue
                for v in range(len(builder(corpus, case.path, Path("/x")))):
                    jobs.append((cmd, case, v))

        def one(job):
            cmd, case, v = job
            work = tmp / "runs" / f"{cmd}-{case.kind}-{case.name}-{v}"
            out, cwd = work / "out", work / "cwd"
            out.mkdir(parents=True)
            cwd.mkdir()
            argv = getattr(SPECS[cmd], case.kind)(corpus, case.path, out)[v]
            outcome = run_subprocess(argv, cwd=cwd, timeout=600)
            problems = _judge(outcome, case, cmd, out, cwd)
            shutil.rmtree(work, ignore_errors=True)
            return cmd, case, outcome.exit_code, problems

        results = defaultdict(lambda: {"runs": 0, "exits": Counter(), "problems": []})
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, (cmd, case, code, problems) in enumerate(pool.map(one, jobs), 1):
                r = results[cmd]
                r["runs"] += 1
                r["exits"][code] += 1
                r["problems"] += [f"{case}: {p}" for p in problems]
                if i % 50 == 0:
                    log(f"... {i}/{len(jobs)}")
        modified = sorted(
            k
            for k in set(baseline) | set(snapshot(corpus.root))
            if baseline.get(k) != snapshot(corpus.root).get(k)
        )
        unpickled = (corpus.root / PICKLE_MARKER).exists()
        return {
            "results": dict(results),
            "skipped": skipped,
            "modified": modified,
            "unpickled": unpickled,
            "cases": len(corpus.cases),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def render(report: dict) -> str:
    lines = [
        f"{'command':10s} {'runs':>5s} {'exit 0':>6s} {'exit 2':>6s} {'exit 3':>6s} {'other':>5s} {'problems':>8s}"
    ]
    total = bad = 0
    for cmd, r in report["results"].items():
        other = sum(n for c, n in r["exits"].items() if c not in (0, 2, 3))
        lines.append(
            f"{cmd:10s} {r['runs']:5d} {r['exits'][0]:6d} {r['exits'][2]:6d} {r['exits'][3]:6d} {other:5d} {len(r['problems']):8d}"
        )
        total += r["runs"]
        bad += len(r["problems"])
    lines.append(
        f"{report['cases']} corpus cases; {total} subprocess invocations; {bad} problems; modified inputs: "
        f"{len(report['modified'])}; pickle payload executed: {report['unpickled']}"
    )
    for cmd, why in report["skipped"].items():
        lines.append(f"skipped {cmd}: {why}")
    for cmd, r in report["results"].items():
        for p in r["problems"][:20]:
            lines.append(f"  {cmd}: {p}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--commands", default=None, help="comma-separated subset")
    args = ap.parse_args(argv)
    report = sweep(
        args.commands.split(",") if args.commands else None,
        args.workers,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    print(render(report))
    ok = (
        not any(r["problems"] for r in report["results"].values())
        and not report["modified"]
        and not report["unpickled"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
