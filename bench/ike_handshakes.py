"""IKE benchmark: full IKE_SA_INIT + IKE_AUTH handshakes (with the first CHILD SA) per second
between two in-memory endpoints, memory per established IKE SA with one CHILD SA, and how many
IKE_SA_INIT requests per second a responder under cookie load answers with a COOKIE.

Run as ``python -m bench.ike_handshakes`` or ``python bench/ike_handshakes.py``; writes
bench/results/ike.json. Single-threaded, both ends in one process (so one handshake costs both
sides' work); log output is filtered to errors so the console does not dominate.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog  # noqa: E402

from ike.config import AuthConfig, ChildConfig, ConnectionConfig, TrafficSelector  # noqa: E402
from ike.endpoint import IkeEndpoint  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "ike.json"
PROPOSALS = {"ecp256": ("aes256gcm16-prfsha256-ecp256", "aes256gcm16"),
             "x25519": ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305")}
RESPONDER = "198.51.100.2"


def _config(local: str, remote: str, ike: str, esp: str, remote_any: bool = False) -> ConnectionConfig:
    child = ChildConfig("net", [TrafficSelector.from_cidr("10.1.0.0/16")], [TrafficSelector.from_cidr("10.2.0.0/16")],
                        esp_proposals=[esp])
    if local == RESPONDER:
        child = ChildConfig("net", [TrafficSelector.from_cidr("10.2.0.0/16")],
                            [TrafficSelector.from_cidr("10.1.0.0/16")], esp_proposals=[esp])
    return ConnectionConfig("site", [local], ["%any"] if remote_any else [remote], AuthConfig(), AuthConfig(),
                            psk=b"benchmark pre-shared key", children=[child], proposals=[ike])


def _pump(eps: dict[str, IkeEndpoint]) -> None:
    moving = True
    while moving:
        moving = False
        for ep in list(eps.values()):
            for d in ep.datagrams_to_send(0.0):
                eps[d.dst[0]].receive_datagram(d.data, d.src, d.dst, 0.0)
                moving = True


def handshake(initiator_ip: str, responder: IkeEndpoint, ike: str, esp: str) -> IkeEndpoint:
    ini = IkeEndpoint([_config(initiator_ip, RESPONDER, ike, esp)], rng=os.urandom)
    ini.initiate("site", None, 0.0)
    _pump({initiator_ip: ini, RESPONDER: responder})
    return ini


def handshakes_per_second(ike: str, esp: str, seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        responder = IkeEndpoint([_config(RESPONDER, "", ike, esp, remote_any=True)], rng=os.urandom,
                                cookie_threshold=1 << 30)
        ini = handshake("192.0.2.1", responder, ike, esp)
        assert len(ini.child_index) == 1 and len(responder.child_index) == 1
        count += 1
    return count / (time.perf_counter() - start)


def memory_per_sa(ike: str, esp: str, n: int) -> dict:
    responder = IkeEndpoint([_config(RESPONDER, "", ike, esp, remote_any=True)], rng=os.urandom,
                            cookie_threshold=1 << 30)
    initiators = []
    handshake("192.0.2.200", responder, ike, esp)  # warm caches and lazy imports
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    for i in range(n):
        initiators.append(handshake(f"10.99.{i // 250}.{i % 250 + 1}", responder, ike, esp))
    snap = tracemalloc.take_snapshot()
    tracemalloc.stop()
    total = sum(s.size_diff for s in snap.compare_to(base, "filename"))
    assert len(responder.child_index) == n + 1
    return {"sas": n, "bytes_per_sa_both_ends": round(total / n), "bytes_per_sa_one_end": round(total / n / 2)}


def _spoofed_init(ike: str, esp: str) -> bytes:
    """A real initiator's first IKE_SA_INIT request (SA, KE, Ni, NAT-D and other notifies)."""
    ini = IkeEndpoint([_config("192.0.2.1", RESPONDER, ike, esp)], rng=os.urandom)
    ini.initiate("site", None, 0.0)
    (first,) = ini.datagrams_to_send(0.0)
    return first.data


def cookie_replies_per_second(ike: str, esp: str, seconds: float) -> float:
    """A responder over its half-open threshold answering a flood of IKE_SA_INIT requests without
    a cookie (RFC 7296 s2.6): each must cost as little as possible and leave no state. Per
    CPU-second of this thread."""
    responder = IkeEndpoint([_config(RESPONDER, "", ike, esp, remote_any=True)], rng=os.urandom,
                            cookie_threshold=0)
    request, dst = _spoofed_init(ike, esp), (RESPONDER, 500)
    sources = [(f"203.0.113.{i % 250 + 1}", 500 + i) for i in range(1000)]
    count, start = 0, time.thread_time()  # CPU time: a loaded machine would else dominate
    while time.thread_time() - start < seconds:
        for src in sources:
            responder.receive_datagram(request, src, dst, 0.0)
            responder.datagrams_to_send(0.0)
        count += len(sources)
    elapsed = time.thread_time() - start
    assert not responder.sas and responder.drops.get("cookie required") == count
    return count / elapsed


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    seconds = float(os.environ.get("BENCH_SECONDS", "3"))
    results = {"python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
               "load_average_before": [round(x, 2) for x in os.getloadavg()],
               "note": "both ends in one process: a handshake is the work of initiator and responder together",
               "handshakes_per_second": {}, "memory": {}, "cookie_replies_per_s": {}}
    for name, (ike, esp) in PROPOSALS.items():
        results["handshakes_per_second"][name] = round(handshakes_per_second(ike, esp, seconds), 1)
        results["memory"][name] = memory_per_sa(ike, esp, 200)
        results["cookie_replies_per_s"][name] = round(cookie_replies_per_second(ike, esp, seconds))
        print(name, results["handshakes_per_second"][name], "handshakes/s", results["memory"][name],
              results["cookie_replies_per_s"][name], "cookie replies/s")
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(results, indent=2) + "\n")
    print("wrote", RESULT)


if __name__ == "__main__":
    main()
