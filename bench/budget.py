"""Where each gateway's CPU goes per packet under the saturating flood: the per-core target's budget.

250,000 packets/s on one core leaves 4 us per packet for everything a gateway's process is
charged with. ``sudo .venv/bin/python -m bench.budget`` runs ``bench.flood``'s saturating flood
(1400 bytes, aes256gcm16) through espgw <-> espgw, records every CPU with ``perf record -a -g``
for ``--window`` seconds meanwhile, and splits each gateway's samples by where they landed:

- user space: the interpreter (python3.11, its extension modules), crypto (cryptography's Rust
  bindings and OpenSSL), libc (memcpy, malloc);
- the kernel, by the system call on the stack: TUN read, TUN write (which also forwards the
  packet on and delivers it to hostB, all in the writer's context), AF_PACKET ring send and UDP
  send (which also run the next hop's receive path: a veth hands the packet to the peer
  namespace's stack in the sender's softirq), raw and UDP receive, poll; "other" is the rest.

Packets per gateway come from its status counters around the perf window (gwA: packets
encrypted, gwB: decrypted), so ``us_per_packet`` is CPU time per packet that gateway handled.
Needs ``perf`` (Debian: linux-perf) and root; namespaces only, like every benchmark. Writes
bench/results/budget.json (``--out``).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.flood import saturating_flood
from bench.setups import BY_NAME, lab_prefix, tunnel_up
from bench.system import environment, netns_inode, wait_until_quiet
from bench.throughput import SATURATING_PPS
from tunnel.lab.espgw import control_request
from tunnel.lab.netns import Lab

RESULTS = Path(__file__).resolve().parent / "results" / "budget.json"
SETUPS = ("espgw-raw", "espgw-udp")
SIZE = 1400
TARGET_PPS = 250_000
SAMPLE_HZ = 999
_KERNEL_BY_SYSCALL = (  # first match wins: the function that marks the system call's path
    ("tun_chr_read_iter", "kernel: TUN read"),
    ("tun_chr_write_iter", "kernel: TUN write, forwarding on"),
    ("packet_sendmsg", "kernel: ring send, next hop's receive"),
    ("udp_sendmsg", "kernel: UDP send, next hop's receive"),
    ("raw_recvmsg", "kernel: raw receive"),
    ("udp_recvmsg", "kernel: UDP receive"),
    ("do_sys_poll", "kernel: poll"),
)


def classify(stack: list[tuple[str, str]]) -> str:
    """The category of one sample; ``stack`` is (symbol, dso) pairs, the sampled function first."""
    dso = stack[0][1]
    if "kernel.kallsyms" in dso:
        for marker, category in _KERNEL_BY_SYSCALL:
            if any(marker in symbol for symbol, _ in stack):
                return category
        return "kernel: other"
    if "_rust" in dso or "libcrypto" in dso or "libssl" in dso:
        return "user: crypto"
    if "python3" in dso:  # the interpreter, and extension modules under site-packages/python3.x
        return "user: interpreter"
    if "libc.so" in dso:
        return "user: libc"
    return "user: other"


def parse_samples(script: str, pids: dict[int, str]) -> dict[str, collections.Counter]:
    """``perf script -F pid,ip,sym,dso`` output -> {role: Counter(category -> samples)}."""
    counts = {role: collections.Counter() for role in pids.values()}
    pid, stack = None, []

    def done() -> None:
        if pid in pids and stack:
            counts[pids[pid]][classify(stack)] += 1

    for line in script.splitlines():
        if not line.strip():
            continue
        if line[0] != "\t":  # a sample's first line: the pid (right-aligned); its frames are tab-indented
            done()
            stack = []
            head = line.split()
            pid = int(head[0]) if head and head[0].isdigit() else None
        else:  # "ip symbol (dso)"
            _ip, _, rest = line.strip().partition(" ")
            symbol, _, dso = rest.rpartition(" (")
            stack.append((symbol, dso))
    done()
    return counts


def _handled(lab: Lab) -> dict[str, int]:
    """Packets each gateway has handled so far: gwA encrypts, gwB decrypts."""
    out = {}
    for role, key in (("gwA", "packets_out"), ("gwB", "packets_in")):
        status = control_request(str(lab.workdir / f"bench-{role}.sock"), {"cmd": "status"}, timeout=2)
        out[role] = int(status["counters"].get(key, 0))
    return out


def measure(lab: Lab, setup: str, window: float, perf_data: Path) -> dict:
    with tunnel_up(lab, BY_NAME[setup], "aes256gcm16") as pids:
        quiet = wait_until_quiet({netns_inode(n) for n in lab.namespaces}, 0.10, 10.0)
        flood: dict = {}
        pps = SATURATING_PPS[SIZE]
        sender = threading.Thread(target=lambda: flood.update(saturating_flood(lab, pids, SIZE, window + 3.0, pps)))
        sender.start()
        time.sleep(1.5)  # past the start: queues full, the gateways behind
        before, t0 = _handled(lab), time.monotonic()
        subprocess.run(["perf", "record", "-a", "-g", "-F", str(SAMPLE_HZ), "-o", str(perf_data), "--",
                        "sleep", str(window)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        after, elapsed = _handled(lab), time.monotonic() - t0
        sender.join()
        script = subprocess.run(["perf", "script", "-i", str(perf_data), "-F", "pid,ip,sym,dso"],
                                capture_output=True, text=True, check=True).stdout
    counts = parse_samples(script, {pid: role for role, pid in pids.items()})
    gateways = {}
    for role, samples in counts.items():
        # perf's window is part of the counters' (which also span perf's start and stop): scale
        packets = (after[role] - before[role]) * window / elapsed
        total = sum(samples.values())
        per_packet = 1e6 / SAMPLE_HZ / packets if packets else 0.0
        gateways[role] = {
            "packets_in_window": round(packets), "cpu_s": round(total / SAMPLE_HZ, 2),
            "us_per_packet": round(total * per_packet, 2),
            "packets_per_cpu_s": round(packets / (total / SAMPLE_HZ)) if total else 0,
            "us_per_packet_by": {c: round(n * per_packet, 2) for c, n in samples.most_common()},
        }
    return {"setup": setup, "size": SIZE, "esp": "aes256gcm16", "window_s": window,
            "foreign_cpu_before": round(quiet, 3), "flood_per_core_pps": flood.get("per_core_pps"),
            "gateways": gateways}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.budget", description=__doc__.splitlines()[0])
    p.add_argument("--setup", action="append", choices=SETUPS, help="default: both")
    p.add_argument("--window", type=float, default=3.0, help="seconds perf records (default 3)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if shutil.which("perf") is None:
        print("bench.budget: needs perf (apt-get install linux-perf)", file=sys.stderr)
        return 2
    if not 1.0 <= args.window <= 30.0:
        print("bench.budget: --window must be 1..30 seconds", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Lab(prefix=lab_prefix(), ipv6=False) as lab:
        for setup in args.setup or SETUPS:
            row = measure(lab, setup, args.window, Path(tmp) / "perf.data")
            rows.append(row)
            for role, g in sorted(row["gateways"].items()):
                top = ", ".join(f"{c} {us}" for c, us in list(g["us_per_packet_by"].items())[:4])
                print(f"{setup:10} {role}: {g['us_per_packet']} us/packet ({g['packets_per_cpu_s']:,} per CPU s; "
                      f"target {1e6 / TARGET_PPS:.1f} us): {top}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment(), "target_pps": TARGET_PPS, "results": rows},
                                   indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
