"""Remote access at scale: 100 road warriors behind two cafe NATs connect to a real ``espgw run``.

``python -m bench.ra_swarm [CLIENTS]`` (root; namespaces only) builds ``tunnel.lab.swarm.SwarmLab``,
starts the office gateway with a /24 pool and lets a ``tunnel.lab.swarm.Swarm`` (real IKE
initiators in this process, half of them behind each cafe's NAT, 4 handshakes in flight per NAT)
connect, each leasing a virtual IP, then ping the dashboard once from every virtual IP through
its own SA. Measured: the wall time until all clients are up, per-client handshake times, the
ping round, and the gateway daemon's CPU time and RSS (idle, and with every client connected).
Writes bench/results/ra_swarm.json.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from pathlib import Path

import structlog

from bench.setups import lab_prefix
from bench.system import cpu_seconds, environment, rss_bytes
from tunnel.lab.espgw import EspgwGateway, GatewaySettings
from tunnel.lab.swarm import (CAFE1_CLIENTS, CAFE2_CLIENTS, DASHBOARD, OFFICE_LAN, WINDOW_PER_NAT, Swarm, SwarmLab,
                              office_connection, office_pool)

RESULT = Path(__file__).resolve().parent / "results" / "ra_swarm.json"


def measure(clients: int = 100) -> dict:
    with SwarmLab(prefix=lab_prefix()) as lab:
        gw = EspgwGateway(lab, lab.gwB, [office_connection(lab.office)], GatewaySettings(log_level="warning"),
                          name="bench-office", pools=[office_pool()]).start()
        try:
            assert gw.proc is not None  # started
            pid = gw.proc.pid
            time.sleep(0.5)
            rss_idle, cpu_before = rss_bytes(pid), cpu_seconds(pid)
            first = clients // 2
            groups = [(lab.hostA.ns, CAFE1_CLIENTS, first), (lab.lan2_ns, CAFE2_CLIENTS, clients - first)]
            with Swarm(groups, lab.office, DASHBOARD, OFFICE_LAN) as swarm:
                connect_s = swarm.connect(timeout=120)
                cpu_connect = cpu_seconds(pid) - cpu_before
                ping_s = swarm.ping(timeout=30)
                rss = rss_bytes(pid)
                sas = len(gw.ike_sas())
                handshakes = sorted(c.connect_seconds for c in swarm.clients if c.connect_seconds is not None)
        finally:
            gw.stop()
    return {"clients": clients, "nats": 2, "in_flight_per_nat": WINDOW_PER_NAT, "ike_sas_at_gateway": sas,
            "connect_all_s": round(connect_s, 3), "clients_per_s": round(clients / connect_s, 1),
            "handshake_median_ms": round(statistics.median(handshakes) * 1000, 1),
            "handshake_max_ms": round(handshakes[-1] * 1000, 1),
            "gateway_cpu_connect_s": round(cpu_connect, 2), "ping_all_s": round(ping_s, 3),
            "gateway_rss_idle_mb": round(rss_idle / 2**20, 1), "gateway_rss_mb": round(rss / 2**20, 1)}


def main(argv: list[str]) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    clients = int(argv[0]) if argv else 100
    result = {"environment": environment(), "result": measure(clients)}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["result"], indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
