"""What the machine is doing: CPU time and memory of a process, and how busy everyone else is.

The benchmark shares a 2-core machine with whatever else runs, so a run is only worth keeping if
other processes left the CPUs alone. The 1-minute load average also counts our own gateways and
iperf3, so instead "foreign CPU" is measured directly: CPU time used during the run by processes
outside the lab's namespaces (kernel threads and this orchestrating process excluded).
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
_PF_KTHREAD = 0x00200000


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads) so far; 0.0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS) of a process, 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def netns_inode(name: str) -> str:
    """The identity of a named network namespace, comparable with /proc/PID/ns/net links."""
    st = os.stat(f"/run/netns/{name}")
    return f"net:[{st.st_ino}]"


def _foreign_ticks(exclude_netns: set[str]) -> dict[int, float]:
    """CPU ticks so far of every user process not in the excluded namespaces, weighted by the
    scheduler's share for its nice value (CFS: about 1.25x less per step), since a niced
    background job (a fuzzer at nice 19) yields to the benchmark's nice-0 processes."""
    me = os.getpid()
    ticks = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[6]) & _PF_KTHREAD:
                continue
            if exclude_netns and os.readlink(Path(entry.path, "ns/net")) in exclude_netns:
                continue
            ticks[int(entry.name)] = (int(fields[11]) + int(fields[12])) * 1.25 ** -int(fields[16])
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile, or not ours to read
    return ticks


@dataclass
class LoadProbe:
    """Foreign CPU use between start() and stop(), as a fraction of all CPUs."""

    exclude_netns: set[str]
    _before: dict[int, float] | None = None
    _t0: float = 0.0

    def start(self) -> None:
        self._before, self._t0 = _foreign_ticks(self.exclude_netns), time.monotonic()

    def stop(self) -> float:
        after, wall = _foreign_ticks(self.exclude_netns), time.monotonic() - self._t0
        used = sum(t - self._before.get(pid, 0) for pid, t in after.items())
        return used / TICKS / max(wall, 1e-3) / NCPU


def wait_until_quiet(exclude_netns: set[str], threshold: float, max_wait: float,
                     sample: float = 1.0) -> float:
    """Sample foreign CPU use until it is below threshold or max_wait passes; return the last sample."""
    deadline = time.monotonic() + max_wait
    while True:
        probe = LoadProbe(exclude_netns)
        probe.start()
        time.sleep(sample)
        busy = probe.stop()
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def load_record() -> dict:
    one, five, fifteen = os.getloadavg()
    return {"loadavg": [round(one, 2), round(five, 2), round(fifteen, 2)], "ncpu": NCPU}


def environment() -> dict:
    """The machine, tools and commit a result was measured with, and the load when it began."""
    def version(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return None
    return {"python": platform.python_version(), "kernel": platform.release(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "iperf3": version(["iperf3", "--version"]),
            "git": version(["git", "-C", str(Path(__file__).resolve().parent.parent), "rev-parse", "--short", "HEAD"]),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_at_start": load_record()}
