"""Run every atheris harness in tests/fuzz/ for N executions and record the figures.

    .venv/bin/python -m bench.reliability_fuzz [--runs 1000000] [--targets esp ike_codec ...]

Each harness runs as its own subprocess (one at a time, under ``nice``), starting from its seed
corpus (tests/fuzz/corpus/<target>/, read-only) plus the crash regressions; libFuzzer's new
inputs go to a scratch directory that is thrown away. A crash stops that harness's run and its
input is saved to tests/fuzz/crashes/<target>/ (make it a regression: fix the bug, keep the file).
A run stopped early with SIGINT (kill -INT on the harness process) records what it reached,
marked ``interrupted``.
Results: executions, edge coverage (``cov``), features (``ft``), corpus size, time and crashes
per target, in bench/results/fuzz.json. Slow units (an input over libFuzzer's wall-clock limit,
which a paused or starved process also produces) are listed apart, as ``slow_units``; re-run
each one alone to see whether it is really slow. ``--reparse`` re-reads the kept logs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ_DIR = ROOT / "tests" / "fuzz"
RESULTS = ROOT / "bench" / "results" / "fuzz.json"
sys.path.insert(0, str(FUZZ_DIR))
from fuzzlib import TARGETS  # noqa: E402 - the harness list lives beside the harnesses
MAX_LEN = 4096

# "#1000000 DONE   cov: 812 ft: 3021 corp: 310/52Kb lim: 4096 exec/s: 1234 rss: 80Mb"
_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)")
_DONE = re.compile(r"^Done (\d+) (?:runs )?in (\d+) second")
_PROGRESS = re.compile(r"^#\d+\s+(NEW|REDUCE)\s")  # per-discovery lines: not worth keeping
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


def parse_libfuzzer(output: str) -> dict:
    """Executions, coverage and artifacts from libFuzzer's stderr."""
    result = {"executions": 0, "cov": 0, "ft": 0, "corpus_units": 0, "artifacts": [], "slow_units": [],
              "interrupted": "run interrupted" in output}
    for line in output.splitlines():
        m = _STATUS.match(line)
        if m:
            result.update(executions=int(m.group(1)), cov=int(m.group(3)), ft=int(m.group(4)),
                          corpus_units=int(m.group(5)))
            continue
        m = _DONE.match(line)
        if m:
            result["executions"] = int(m.group(1))
            result["reported_seconds"] = int(m.group(2))
            continue
        m = _ARTIFACT.search(line)
        if m:  # a slow unit is wall-clock time over libFuzzer's limit (a paused process too), not a crash
            result["slow_units" if "/slow-unit-" in m.group(1) else "artifacts"].append(m.group(1))
        m = re.match(r"^stat::number_of_executed_units: (\d+)", line)
        if m:
            result["executions"] = int(m.group(1))
    return result


def run_target(target: str, runs: int, python: str, log_dir: Path) -> dict:
    crashes = FUZZ_DIR / "crashes" / target
    crashes.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as scratch:
        cmd = ["nice", "-n", "10", python, str(FUZZ_DIR / f"fuzz_{target}.py"),
               f"-atheris_runs={runs}", f"-max_len={MAX_LEN}", "-print_final_stats=1",
               f"-artifact_prefix={crashes}/", scratch, str(FUZZ_DIR / "corpus" / target), str(crashes)]
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        elapsed = time.monotonic() - started
    kept = [line for line in proc.stderr.splitlines() if not _PROGRESS.match(line)]
    if proc.stdout.strip():  # atheris prints an uncaught exception's traceback on stdout
        kept += ["--- stdout ---"] + proc.stdout.splitlines()[-200:]
    (log_dir / f"fuzz-{target}.log").write_text("\n".join(kept[-2000:]) + "\n")
    result = parse_libfuzzer(proc.stderr)
    result.update(target=target, requested_runs=runs, seconds=round(elapsed, 1),
                  exit_code=proc.returncode, crashes=len(result["artifacts"]))
    if proc.returncode != 0 and not result["artifacts"] and not result["interrupted"]:
        result["error"] = proc.stderr[-2000:]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--reparse", action="store_true",
                        help="re-read the targets' kept logs (bench/results/fuzz-TARGET.log) instead of fuzzing")
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.output.read_text()) if args.output.exists() else {}
    results = previous.get("targets", {})
    for target in args.targets if args.reparse else ():
        kept = (args.output.parent / f"fuzz-{target}.log").read_text()
        parsed = parse_libfuzzer(kept)
        results[target] = {**results.get(target, {}), **parsed, "crashes": len(parsed["artifacts"])}
        args.output.write_text(json.dumps(_report(results), indent=1) + "\n")
    for target in args.targets if not args.reparse else ():
        print(f"fuzzing {target} for {args.runs} executions...", flush=True)
        r = run_target(target, args.runs, sys.executable, args.output.parent)
        results[target] = r
        print(f"  {r['executions']} executions, cov {r['cov']}, ft {r['ft']}, "
              f"{r['crashes']} crashes, {r['seconds']} s", flush=True)
        args.output.write_text(json.dumps(_report(results), indent=1) + "\n")
    report = _report(results)
    return 1 if report["total_crashes"] or any("error" in r for r in results.values()) else 0


def _report(results: dict) -> dict:
    import atheris  # noqa: F401  (recorded version only)
    from importlib.metadata import version

    return {"tool": f"atheris {version('atheris')} (libFuzzer)", "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "total_crashes": sum(r["crashes"] for r in results.values()), "targets": results}


if __name__ == "__main__":
    sys.exit(main())
