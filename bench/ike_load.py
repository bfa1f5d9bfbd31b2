"""IKE responder load: a real ``espgw run`` on gwB answers many initiators over real UDP.

The load generator (``python -m bench.ike_load generate ...``, run in gwA's namespace) keeps a
few handshakes in flight, each a fresh sans-I/O ``IkeEndpoint`` with its own identity and its
own /32 traffic selector, so the responder ends up with one IKE SA and one CHILD SA (a pair of
ESP SAs plus a policy) per initiator. Measured on the responder daemon: handshakes per second
(wall clock, and per CPU second of the daemon) and its RSS once COUNT CHILD SAs are installed.
Initiators are forgotten once their CHILD SA is up; the responder has DPD off, so its SAs stay.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
import time
from pathlib import Path

from bench.setups import lab_prefix
from ike.config import AuthConfig, ChildConfig, ConnectionConfig, TrafficSelector
from tunnel.daemon.gateway import TRIM_INTERVAL
from tunnel.lab.espgw import EspgwGateway, GatewaySettings, wait_until
from tunnel.lab.netns import Lab

PSK = b"bench-ike-load-psk-not-a-secret"
IKE = "aes256gcm16-prfsha256-ecp256"
ESP = "aes256gcm16"
INITIATOR_NET = ipaddress.ip_network("10.128.0.0/9")
CONCURRENCY = 8  # below espgw's cookie threshold (10 half-open SAs)


def responder_config(lab: Lab) -> ConnectionConfig:
    child = ChildConfig("net", [TrafficSelector.from_cidr(str(lab.gwB.lan_net4))],
                        [TrafficSelector.from_cidr(str(INITIATOR_NET))], esp_proposals=[ESP])
    return ConnectionConfig("load", [lab.gwB.wan_addr4], ["%any"], AuthConfig(id="gwb.lab"),
                            AuthConfig(id="%any"), psk=PSK, children=[child], proposals=[IKE], dpd_delay=0)


def _initiator_config(index: int, local: str, remote: str, remote_lan: str) -> ConnectionConfig:
    inner = INITIATOR_NET.network_address + index + 1
    child = ChildConfig("net", [TrafficSelector.from_cidr(f"{inner}/32")],
                        [TrafficSelector.from_cidr(remote_lan)], esp_proposals=[ESP])
    return ConnectionConfig("load", [local], [remote], AuthConfig(id=f"ini{index}.lab"),
                            AuthConfig(id="gwb.lab"), psk=PSK, children=[child], proposals=[IKE])


def generate(local: str, remote: str, remote_lan: str, count: int, concurrency: int,
             timeout: float) -> dict:
    """Run `count` handshakes against remote:500, `concurrency` at a time; returns counts and time."""
    from ike.endpoint import IkeEndpoint
    from ike.events import ChildSaUp, IkeSaDown, NegotiationFailed

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((local, 500))
    sock.settimeout(0.05)
    by_spi: dict[bytes, object] = {}  # our IKE SPI (first 8 bytes of every reply) -> endpoint
    started_at = time.monotonic()
    deadline = started_at + timeout
    next_index, done, failed = 0, 0, 0

    def flush(ep) -> None:
        for dg in ep.datagrams_to_send(time.monotonic()):
            sock.sendto(dg.data, dg.dst)

    def start_one() -> None:
        nonlocal next_index
        ep = IkeEndpoint([_initiator_config(next_index, local, remote, remote_lan)], rng=os.urandom)
        ep.initiate("load", None, time.monotonic())
        next_index += 1
        for spi in ep.sas:
            by_spi[spi] = ep
        flush(ep)

    while (done + failed < count) and time.monotonic() < deadline:
        while len(by_spi) < concurrency and next_index < count:
            start_one()
        try:
            data, src = sock.recvfrom(65535)
        except TimeoutError:
            data = None
        now = time.monotonic()
        if data is not None and len(data) >= 28:
            ep = by_spi.get(data[:8])
            if ep is not None:
                ep.receive_datagram(data, src, (local, 500), now)
                flush(ep)
        for spi, ep in list(by_spi.items()):
            timer = ep.get_timer()
            if timer is not None and timer <= now:
                ep.handle_timer(now)
                flush(ep)
            while (event := ep.next_event()) is not None:
                if isinstance(event, ChildSaUp):
                    done += 1
                    by_spi.pop(spi, None)
                elif isinstance(event, (NegotiationFailed, IkeSaDown)):
                    failed += 1
                    by_spi.pop(spi, None)
    return {"completed": done, "failed": failed, "wall_s": round(time.monotonic() - started_at, 2)}


def measure(count: int, prefix: str | None = None, timeout: float = 900) -> dict:
    """Start the responder daemon, drive `count` handshakes at it, read its CPU time and RSS."""
    from bench.system import cpu_seconds, rss_bytes

    with Lab(prefix=prefix or lab_prefix(), ipv6=False) as lab:
        settings = GatewaySettings(log_level="warning")
        gw = EspgwGateway(lab, lab.gwB, [responder_config(lab)], settings, name="bench-ike").start()
        try:
            pid = gw.proc.pid
            time.sleep(0.5)
            rss_idle, cpu_before = rss_bytes(pid), cpu_seconds(pid)
            argv = [sys.executable, "-m", "bench.ike_load", "generate", lab.gwA.wan_addr4,
                    lab.gwB.wan_addr4, str(lab.gwB.lan_net4), count, CONCURRENCY, timeout]
            done = lab.run(lab.gwA, *argv, timeout=timeout + 60, env={**os.environ, "PYTHONPATH": _root()})
            gen = json.loads(done.stdout.strip().splitlines()[-1])
            cpu = cpu_seconds(pid) - cpu_before
            time.sleep(1.0)  # the last IKE_AUTH answers are out before the generator ends
            rss_before_list = rss_bytes(pid)  # list-sas below builds 10,000 dicts: its garbage may stay
            (children,) = wait_until(lambda: _children(gw, gen["completed"]), 30,
                                     "the responder to report its CHILD SAs", interval=0.5)
            rss_after_list = rss_bytes(pid)
            # steady state: what the daemon holds once its housekeeping has handed freed heap
            # back to the kernel (tunnel.daemon.gateway.TRIM_INTERVAL), with all SAs still installed
            time.sleep(TRIM_INTERVAL + 1.5)
            rss = rss_bytes(pid)
            (still,) = wait_until(lambda: _children(gw, gen["completed"]), 30, "the CHILD SAs, still there",
                                  interval=0.5)
        finally:
            gw.stop()
    rate = gen["completed"] / gen["wall_s"] if gen["wall_s"] else 0.0
    return {"initiators": count, "concurrency": CONCURRENCY, "proposal": IKE, "esp": ESP,
            "completed": gen["completed"], "failed": gen["failed"], "wall_s": gen["wall_s"],
            "handshakes_per_s": round(rate, 1),
            "handshakes_per_responder_cpu_s": round(gen["completed"] / cpu, 1) if cpu else None,
            "responder_cpu_s": round(cpu, 2), "child_sas": children,
            "rss_idle_mb": round(rss_idle / 2**20, 1), "rss_mb": round(rss / 2**20, 1),
            "rss_before_list_sas_mb": round(rss_before_list / 2**20, 1),
            "rss_after_list_sas_mb": round(rss_after_list / 2**20, 1), "child_sas_at_rss": still,
            "rss_per_child_kb": round((rss - rss_idle) / max(children, 1) / 1024, 2)}


def _children(gw: EspgwGateway, expected: int) -> list[int] | None:
    count = sum(1 for sa in gw.request("list-sas")["ike_sas"] for c in sa.get("children", [])
                if c.get("state") == "INSTALLED")
    return [count] if count >= expected else None


def _root() -> str:
    return str(Path(__file__).resolve().parents[1])


if __name__ == "__main__":
    if sys.argv[1:2] == ["generate"]:
        import logging

        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
        local, remote, lan, n, conc, limit = sys.argv[2:8]
        print(json.dumps(generate(local, remote, lan, int(n), int(conc), float(limit))))
    else:
        print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 1000), indent=2))
