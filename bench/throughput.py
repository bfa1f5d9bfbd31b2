"""Every setup x ESP suite in one lab: ping RTT, TCP goodput (+ CPU s/GB), UDP packet floods
(iperf3's, and ``bench.flood``'s that the gateways rather than the sender limit).

A setup that fails to come up is recorded with its error and the run goes on, so one broken
combination never hides the others' numbers.
"""

from __future__ import annotations

import subprocess
import time
import traceback
from pathlib import Path
from dataclasses import dataclass

import structlog

from bench.flood import saturating_flood
from bench.setups import ESP_SUITES, SETUPS, Setup, lab_prefix, tunnel_up
from bench.traffic import Guard, ping_rtt, tcp_goodput, udp_flood
from tunnel.lab.netns import Lab

log = structlog.get_logger("bench")
FLOOD_SIZES = (1400, 64)
# the saturating flood's offered rate: above what one gateway carries, so it runs with full
# batches, but not so far above that the packets its TUN drops eat the CPU it needs
SATURATING_PPS = {1400: 150_000, 64: 200_000}


@dataclass
class Plan:
    seconds: float = 10.0  # per iperf3 TCP run
    runs: int = 3
    flood_seconds: float = 5.0
    pings: int = 40
    setups: tuple[str, ...] = tuple(s.name for s in SETUPS)
    suites: tuple[str, ...] = ESP_SUITES
    floods: bool = True
    # load control (see traffic.Guard): repeats of a disturbed run, and the seconds the whole
    # suite may spend waiting for a quiet machine and repeating
    retries: int = 2
    max_wait: float = 10.0
    patience: float = 600.0


def measure_one(guard: Guard, setup: Setup, esp: str, plan: Plan) -> dict:
    started = time.monotonic()
    with tunnel_up(guard.lab, setup, esp) as pids:
        out = {"setup": setup.name, "label": setup.label, "esp": esp if setup.encap != "none" else None,
               "gateways": {"gwA": setup.gw_a, "gwB": setup.gw_b}, "encap": setup.encap,
               "ping": ping_rtt(guard, plan.pings),
               "tcp": tcp_goodput(guard, pids, plan.seconds, plan.runs)}
        if plan.floods:
            out["flood"] = {str(size): udp_flood(guard, pids, size, plan.flood_seconds)
                            for size in FLOOD_SIZES}
            out["saturating_flood"] = {
                str(size): guard.run(lambda size=size: saturating_flood(guard.lab, pids, size, plan.flood_seconds,
                                                                      SATURATING_PPS[size]))
                for size in FLOOD_SIZES}
    out["elapsed_s"] = round(time.monotonic() - started, 1)
    out["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out["code"] = code_revision()
    return out


def code_revision() -> dict:
    """The commit the gateways ran, and which data-path files differed from it (others edit the
    work tree while a run is going; each espgw start loads the files as they are then)."""
    repo = Path(__file__).resolve().parents[1]

    def git(*argv) -> str:
        try:
            return subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True,
                                  timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "esp", "ike", "tunnel").splitlines()]
    return {"git": git("rev-parse", "--short", "HEAD").strip(), "modified": dirty}


def run_all(plan: Plan, prefix: str | None = None, progress=print) -> list[dict]:
    results = []
    with Lab(prefix=prefix or lab_prefix(), ipv6=False) as lab:
        guard = Guard(lab, retries=plan.retries, max_wait=plan.max_wait, budget=plan.patience)
        for setup in (s for s in SETUPS if s.name in plan.setups):
            suites = plan.suites if setup.encap != "none" else plan.suites[:1]
            for esp in suites:
                try:
                    row = measure_one(guard, setup, esp, plan)
                except Exception as exc:  # record and carry on with the next combination
                    log.error("bench.setup_failed", setup=setup.name, esp=esp, error=str(exc))
                    row = {"setup": setup.name, "label": setup.label, "esp": esp, "encap": setup.encap,
                           "gateways": {"gwA": setup.gw_a, "gwB": setup.gw_b},
                           "error": f"{type(exc).__name__}: {exc}"[:2000],
                           "traceback": traceback.format_exc(limit=5)[-2000:]}
                results.append(row)
                progress(summary_line(row))
    return results


def summary_line(row: dict) -> str:
    name = f"{row['setup']:<18} {row.get('esp') or '-':<17}"
    if "error" in row:
        return f"{name} FAILED: {row['error'][:150]}"
    flood = row.get("flood", {})
    pps = " ".join(f"{size}B:{f.get('delivered_pps', 0):>7}pps" for size, f in flood.items())
    saturating = row.get("saturating_flood", {}).get("1400", {}).get("per_core_pps")
    per_core = f"  1400B per core {'/'.join(str(saturating.get(r, '-')) for r in ('gwA', 'gwB'))}" if saturating else ""
    return (f"{name} tcp {row['tcp']['median_mbit_s']:>7.1f} Mbit/s  ping {row['ping']['median_ms']} ms  "
            f"{pps}  cpu/GB {row['tcp']['cpu_s_per_gb']}{per_core}")
