"""IKE benchmark: full IKE_SA_INIT + IKE_AUTH handshakes (with the first CHILD SA) per second
between two in-memory endpoints, the same against a responder already holding 100 / 1,000 /
5,000 SAs (scaling), memory per established IKE SA with one CHILD SA, and how many IKE_SA_INIT
requests per second a responder under cookie load answers with a COOKIE.

Run as ``python -m bench.ike_handshakes`` or ``python bench/ike_handshakes.py``; writes
bench/results/ike.json. Single-threaded, both ends in one process (so one handshake costs both
sides' work); log output is filtered to errors so the console does not dominate.
``--rss N`` instead builds N established pairs (responder side kept) plus one ESP InboundSA and
OutboundSA per CHILD SA, as the daemon would, and prints the process RSS growth per SA.
``--pq`` measures the hybrid post-quantum handshakes (RFC 9370 additional key exchanges with
ML-KEM in IKE_INTERMEDIATE) against the classic one: the responder's own CPU time per handshake
and the bytes and datagrams on the wire, with the default 1280-byte fragment size; writes
bench/results/ike_pq.json.
"""

from __future__ import annotations

import argparse
import gc
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
PQ_RESULT = Path(__file__).resolve().parent / "results" / "ike_pq.json"
PQ_PROPOSALS = {"ecp256": ("aes256gcm16-prfsha256-ecp256", "aes256gcm16"),
                "ecp384+mlkem768": ("aes256gcm16-prfsha384-ecp384-ke1_mlkem768", "aes256gcm16"),
                "x25519+mlkem768+mlkem1024": ("aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke2_mlkem1024",
                                              "aes256gcm16")}
IP_UDP_HEADERS = 28  # IPv4 + UDP, what each datagram adds on the wire


def _config(local: str, remote: str, ike: str, esp: str, remote_any: bool = False) -> ConnectionConfig:
    child = ChildConfig("net", [TrafficSelector.from_cidr("10.1.0.0/16")], [TrafficSelector.from_cidr("10.2.0.0/16")],
                        esp_proposals=[esp])
    if local == RESPONDER:
        child = ChildConfig("net", [TrafficSelector.from_cidr("10.2.0.0/16")],
                            [TrafficSelector.from_cidr("10.1.0.0/16")], esp_proposals=[esp])
    return ConnectionConfig("site", [local], ["%any"] if remote_any else [remote], AuthConfig(), AuthConfig(),
                            psk=b"benchmark pre-shared key", children=[child], proposals=[ike])


def _pump(eps: dict[str, IkeEndpoint], poll_timer: bool = False) -> None:
    moving = True
    while moving:
        moving = False
        for ep in list(eps.values()):
            for d in ep.datagrams_to_send(0.0):
                target = eps[d.dst[0]]
                target.receive_datagram(d.data, d.src, d.dst, 0.0)
                if poll_timer:  # the daemon asks for the next deadline on every loop iteration
                    target.get_timer()
                moving = True


def handshake(initiator_ip: str, responder: IkeEndpoint, ike: str, esp: str,
              poll_timer: bool = False) -> IkeEndpoint:
    ini = IkeEndpoint([_config(initiator_ip, RESPONDER, ike, esp)], rng=os.urandom)
    ini.initiate("site", None, 0.0)
    _pump({initiator_ip: ini, RESPONDER: responder}, poll_timer)
    return ini


def _initiator_ip(i: int) -> str:
    return f"10.{100 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}"


def _responder(ike: str, esp: str) -> IkeEndpoint:
    return IkeEndpoint([_config(RESPONDER, "", ike, esp, remote_any=True)], rng=os.urandom,
                       cookie_threshold=1 << 30)


def scaling(ike: str, esp: str, held: tuple[int, ...], count: int) -> dict:
    """Handshakes per second against a responder that already holds ``n`` IKE SAs (each with one
    CHILD SA, each initiator its own identity), polling ``get_timer`` after every datagram as the
    daemon's loop does. The initiators are dropped once their SA is up (only the responder grows)."""
    responder, made, out = _responder(ike, esp), 0, {}
    for n in sorted(held):
        while made < n:
            handshake(_initiator_ip(made), responder, ike, esp)
            made += 1
        start = time.perf_counter()
        for _ in range(count):
            handshake(_initiator_ip(made), responder, ike, esp, poll_timer=True)
            made += 1
        out[str(n)] = round(count / (time.perf_counter() - start), 1)
    assert len(responder.child_index) == made
    return out


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


def responder_memory_per_sa(ike: str, esp: str, n: int) -> dict:
    """Python heap (tracemalloc) the responder keeps per established IKE SA + CHILD SA."""
    responder = _responder(ike, esp)
    handshake("192.0.2.200", responder, ike, esp)  # warm caches and lazy imports
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    for i in range(n):
        handshake(_initiator_ip(i), responder, ike, esp)
    gc.collect()
    snap = tracemalloc.take_snapshot()
    tracemalloc.stop()
    stats = snap.compare_to(base, "filename")
    total = sum(s.size_diff for s in stats)
    top = {Path(s.traceback[0].filename).name: round(s.size_diff / n) for s in stats[:6] if s.size_diff > 0}
    assert len(responder.child_index) == n + 1
    return {"sas": n, "bytes_per_sa_responder": round(total / n), "by_file": top}


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def rss_per_sa(n: int, ike: str, esp: str) -> dict:
    """RSS growth of a process holding ``n`` responder IKE SAs and their ESP SA pairs (what the
    daemon keeps; OpenSSL's cipher contexts are invisible to tracemalloc)."""
    from esp.sa import InboundSA, OutboundSA
    from ike.events import ChildSaUp

    responder = _responder(ike, esp)
    handshake("192.0.2.200", responder, ike, esp)
    while responder.next_event() is not None:
        pass
    gc.collect()
    before, esp_sas = _rss_kb(), []
    for i in range(n):
        handshake(_initiator_ip(i), responder, ike, esp)
        while (event := responder.next_event()) is not None:
            if isinstance(event, ChildSaUp):
                esp_sas.append((InboundSA(event.inbound_spi, event.esp_transform, event.inbound_keymat,
                                          esn=event.esn, replay_window=event.replay_window),
                                OutboundSA(event.outbound_spi, event.esp_transform, event.outbound_keymat,
                                           esn=event.esn)))
    gc.collect()
    grown = _rss_kb() - before
    assert len(esp_sas) == n and len(responder.child_index) == n + 1
    return {"sas": n, "rss_before_mb": round(before / 1024, 1), "rss_after_mb": round(_rss_kb() / 1024, 1),
            "rss_bytes_per_sa": round(grown * 1024 / n)}


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


def pq_handshake_costs(ike: str, esp: str, seconds: float) -> dict:
    """Fresh handshakes (with the first CHILD SA) for ``seconds``: the responder's CPU time per
    handshake (only its receive_datagram calls are timed), both ends' rate, and what one
    handshake puts on the wire in each direction."""
    responder_time = total_time = 0.0
    count, wire = 0, {"to_responder": [0, 0], "to_initiator": [0, 0]}
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        responder = _responder(ike, esp)
        ini = IkeEndpoint([_config("192.0.2.1", RESPONDER, ike, esp)], rng=os.urandom)
        ini.initiate("site", None, 0.0)
        eps = {"192.0.2.1": ini, RESPONDER: responder}
        moving = True
        while moving:
            moving = False
            for ep in (ini, responder):
                for d in ep.datagrams_to_send(0.0):
                    to_responder = d.dst[0] == RESPONDER
                    tally = wire["to_responder" if to_responder else "to_initiator"]
                    tally[0] += 1
                    tally[1] += len(d.data) + IP_UDP_HEADERS
                    if to_responder:
                        r0 = time.perf_counter()
                        responder.receive_datagram(d.data, d.src, d.dst, 0.0)
                        responder_time += time.perf_counter() - r0
                    else:
                        eps[d.dst[0]].receive_datagram(d.data, d.src, d.dst, 0.0)
                    moving = True
        assert len(ini.child_index) == 1 and len(responder.child_index) == 1
        total_time += time.perf_counter() - t0
        count += 1
    return {"responder_handshakes_per_s": round(count / responder_time, 1),
            "responder_ms_per_handshake": round(1000 * responder_time / count, 3),
            "both_ends_handshakes_per_s": round(count / total_time, 1),
            "datagrams_to_responder": wire["to_responder"][0] // count,
            "bytes_to_responder": wire["to_responder"][1] // count,
            "datagrams_to_initiator": wire["to_initiator"][0] // count,
            "bytes_to_initiator": wire["to_initiator"][1] // count,
            "handshakes": count}


def pq_main(seconds: float, out: Path) -> dict:
    results: dict = {"python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
                     "load_average_before": [round(x, 2) for x in os.getloadavg()],
                     "note": ("IKE_SA_INIT + IKE_INTERMEDIATE (one per additional key exchange) + IKE_AUTH with "
                              "the first CHILD SA, PSK; bytes include 28 bytes of IPv4/UDP headers per datagram; "
                              "fragment size 1280"),
                     "proposals": {}}
    for name, (ike, esp) in PQ_PROPOSALS.items():
        results["proposals"][name] = {"ike": ike, **pq_handshake_costs(ike, esp, seconds)}
        print(name, results["proposals"][name])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("wrote", out)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rss", type=int, metavar="N", help="only the RSS of N responder SAs + ESP SAs")
    parser.add_argument("--proposal", choices=sorted(PROPOSALS), default="x25519",
                        help="IKE/ESP proposals for --rss (the daemon benchmark uses ecp256)")
    parser.add_argument("--scale", default="100,1000,5000", help="SAs held before timing (comma list)")
    parser.add_argument("--scale-count", type=int, default=200, help="handshakes timed at each size")
    parser.add_argument("--rss-sas", type=int, default=10000, help="the RSS part of a full run (0: skip)")
    parser.add_argument("--pq", action="store_true", help=f"only the post-quantum comparison ({PQ_RESULT.name})")
    parser.add_argument("--before", help="JSON of an earlier run to embed as 'before'")
    parser.add_argument("--out", help=f"where to write (default {RESULT})")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    if args.rss:
        print(json.dumps(rss_per_sa(args.rss, *PROPOSALS[args.proposal])))
        return
    if args.pq:
        pq_main(float(os.environ.get("BENCH_SECONDS", "3")), Path(args.out) if args.out else PQ_RESULT)
        return
    held = tuple(int(x) for x in args.scale.split(",") if x)
    seconds = float(os.environ.get("BENCH_SECONDS", "3"))
    results = {"python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
               "load_average_before": [round(x, 2) for x in os.getloadavg()],
               "note": "both ends in one process: a handshake is the work of initiator and responder together",
               "handshakes_per_second": {}, "memory": {}, "cookie_replies_per_s": {},
               "handshakes_per_second_with_sas_held": {}, "responder_memory": {}}
    for name, (ike, esp) in PROPOSALS.items():
        results["handshakes_per_second"][name] = round(handshakes_per_second(ike, esp, seconds), 1)
        results["memory"][name] = memory_per_sa(ike, esp, 200)
        results["cookie_replies_per_s"][name] = round(cookie_replies_per_second(ike, esp, seconds))
        results["responder_memory"][name] = responder_memory_per_sa(ike, esp, 1000)
        print(name, results["handshakes_per_second"][name], "handshakes/s", results["memory"][name],
              results["cookie_replies_per_s"][name], "cookie replies/s", results["responder_memory"][name])
    ike, esp = PROPOSALS["x25519"]
    results["handshakes_per_second_with_sas_held"]["x25519"] = scaling(ike, esp, held, args.scale_count)
    print("with SAs held", results["handshakes_per_second_with_sas_held"])
    if args.rss_sas:
        results["rss"] = rss_per_sa(args.rss_sas, ike, esp)
        print("rss", results["rss"])
    if args.before:  # an earlier run of this script (e.g. on the old code) kept for comparison
        results["before"] = json.loads(Path(args.before).read_text())
    out = Path(args.out) if args.out else RESULT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
