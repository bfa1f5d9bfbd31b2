"""The guest's agent: runs the jobs the host drops into the io folder, one at a time.

Started by the guest's init (``python -m tunnel.lab.vm.agent IO``). It imports the scenarios and
the lab helpers once (a Python import costs seconds under emulation), then forks a child per
scenario job, so each scenario starts from the same clean state without paying for the imports
again. ``{"argv": [...]}`` jobs run a program. Each job writes ``jobs/ID.log`` and, when done,
``jobs/ID.rc``; a job that outlives its timeout is stopped (SIGTERM, so the lab tears itself
down, then SIGKILL) and reports 124. ``jobs/shutdown`` ends the agent, and with it the guest.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

POLL = 0.1


def main(io: Path) -> int:
    from tunnel.lab.vm import scenarios  # the expensive imports, once

    # the daemon's modules too: each espgw is a new process, but it then reads them from the
    # guest's page cache instead of over 9p (once measured: the first espgw started in 21 s, not 34 s)
    # (a process of its own: the lab drives the daemon as a program, it does not import it)
    subprocess.run([sys.executable, "-c", "import tunnel.daemon.gateway"], check=False)

    jobs = io / "jobs"
    (io / "agent.ready").write_text(f"{os.getpid()}\n")
    done: set[str] = set()
    while True:
        if (jobs / "shutdown").exists():
            return 0
        pending = sorted(p for p in jobs.glob("*.json") if p.stem not in done)
        if not pending:
            time.sleep(POLL)
            continue
        path = pending[0]
        done.add(path.stem)
        try:
            job = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            _finish(jobs, path.stem, 125, f"bad job file: {exc}\n")
            continue
        code = _run_job(io, path.stem, job, scenarios)
        (jobs / f".{path.stem}.rc").write_text(f"{code}\n")
        (jobs / f".{path.stem}.rc").rename(jobs / f"{path.stem}.rc")


def _finish(jobs: Path, job_id: str, code: int, text: str) -> None:
    with open(jobs / f"{job_id}.log", "a") as out:
        out.write(text)
    (jobs / f"{job_id}.rc").write_text(f"{code}\n")


def _run_job(io: Path, job_id: str, job: dict, scenarios) -> int:
    log_path = io / "jobs" / f"{job_id}.log"
    timeout = float(job.get("timeout", 300))
    if "argv" in job:
        with open(log_path, "wb") as out:
            try:
                proc = subprocess.Popen(job["argv"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            except OSError as exc:
                out.write(f"cannot run {job['argv']!r}: {exc}\n".encode())
                return 127
            return _wait(proc.pid, timeout, out)
    name = job.get("scenario", "")
    if name not in scenarios.SCENARIOS:
        with open(log_path, "w") as out:
            out.write(f"no scenario {name!r}; known: {', '.join(scenarios.SCENARIOS)}\n")
        return 2
    results = io / "results" / name
    results.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        pid = os.fork()
        if pid == 0:  # the scenario: its own process group, output into the job's log
            os.setpgid(0, 0)
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            _plain_logs()
            code = 1
            try:
                scenarios.run(name, results, job.get("params") or {})
                code = 0
            except SystemExit as exc:  # a scenario's own status (3: skipped)
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        return _wait(pid, timeout, out)


def _plain_logs() -> None:
    """The job log is a file: structlog's console output without colour codes."""
    import structlog

    structlog.configure(processors=[structlog.processors.add_log_level,
                                    structlog.processors.TimeStamper(fmt="%H:%M:%S"),
                                    structlog.dev.ConsoleRenderer(colors=False)])


def _wait(pid: int, timeout: float, out) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            break
        time.sleep(POLL)
    out.write(f"\n[agent] job timed out after {timeout:.0f}s; stopping it\n".encode())
    out.flush()
    for sig, grace in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        end = time.monotonic() + grace
        while time.monotonic() < end:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return 124
            time.sleep(POLL)
    return 124


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
