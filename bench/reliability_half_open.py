"""Half-open IKE SAs under a cookie-answering flood, in memory (issue #19, RFC 8019).

The IKE core is sans-I/O, so this drives one responder ``IkeEndpoint`` with a simulated clock:

- ``flood``: COUNT spoofed initiators, each from its own address with its own SPIi and Ni, send
  an IKE_SA_INIT, answer the COOKIE and send it again with the cookie (so each one is worth a
  half-open SA), spread evenly over SECONDS; every REPLAY_EVERY-th one also replays its cookied
  request from other source ports and with a Vendor ID added. Half-way through, a real peer
  (its own IkeEndpoint, 20 ms one-way delay) connects: it gets a cookie too, and must be up
  within 2 s of simulated time. Half-open SAs expire after 30 s (the SA's own timer). Recorded:
  the half-open peak, RSS growth (this process's VmRSS; its peak over the run), CPU per
  datagram, drops by reason and the real peer's time to connect.
- ``worst_case``: the CPU one unauthenticated datagram can cost the responder, per kind of
  datagram (the biggest IKE_SA_INIT allowed, the most proposals and transforms, an invalid KE,
  a 64 kB request, 8,000 empty proposals, a request without a cookie under load), each measured
  over many fresh copies; median and max in microseconds.

    .venv/bin/python -m bench.reliability_half_open [--count 200000] [--seconds 60]

writes its figures into bench/results/reliability.json under ``half_open`` (the lab scenarios
of bench/reliability.py keep theirs); tests/bench/test_half_open.py runs a scaled-down version.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import random
import struct
import sys
import time
from pathlib import Path

import structlog

from ike.codec import message as codec
from ike.codec.constants import NotifyType
from ike.codec.payloads import KePayload, NoncePayload, NotifyPayload, Proposal, SaPayload, Transform, VendorIdPayload
from ike.codec.constants import ProtocolId, TransformType
from ike.config import AuthConfig, ChildConfig, ConnectionConfig, TrafficSelector
from ike.endpoint import IkeEndpoint
from ike.events import IkeSaUp

RESULTS = Path(__file__).resolve().parent / "results" / "reliability.json"
GATEWAY = ("198.51.100.2", 500)
PEER = ("192.0.2.1", 500)
PSK = b"half-open benchmark psk"
ONE_WAY = 0.020  # the real peer's one-way delay
REPLAY_EVERY = 100
REPLAY_PORTS = 5


def _conn(local: str, remote: list[str], lts: str, rts: str) -> ConnectionConfig:
    child = ChildConfig("net", [TrafficSelector.from_cidr(lts)], [TrafficSelector.from_cidr(rts)],
                        esp_proposals=["aes256gcm16"])
    return ConnectionConfig("site", [local], remote, AuthConfig(id=None), AuthConfig(id=None), psk=PSK,
                            children=[child], proposals=["aes256gcm16-prfsha256-ecp256"])


def responder(rng: random.Random, **limits) -> IkeEndpoint:
    return IkeEndpoint([_conn(GATEWAY[0], ["%any"], "10.2.0.0/16", "10.1.0.0/16")], rng=rng.randbytes, **limits)


def initiator(rng: random.Random) -> IkeEndpoint:
    return IkeEndpoint([_conn(PEER[0], [GATEWAY[0]], "10.1.0.0/16", "10.2.0.0/16")], rng=rng.randbytes)


def template() -> codec.Message:
    """A real first IKE_SA_INIT request (the flood varies its SPIi and nonce)."""
    ep = initiator(random.Random(1))
    ep.initiate("site", None, 0.0)
    return codec.decode(ep.datagrams_to_send(0.0)[0].data)


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _address(i: int) -> str:
    return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("100.64.0.0")) + i))  # RFC 6598 space


def _quiet() -> None:
    import logging
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
                        cache_logger_on_first_use=False)


def flood(count: int = 200_000, seconds: float = 60.0, *, seed: int = 7, **limits) -> dict:
    _quiet()
    rng = random.Random(seed)
    gw = responder(random.Random(seed + 1), **limits)
    base = template()
    peer = initiator(random.Random(seed + 2))
    in_flight: list[tuple[float, bytes, tuple, tuple]] = []  # (deliver at, data, src, dst) for the real peer
    peer_started = peer_up = None
    gc.collect()
    rss_before = rss_peak = rss_kb()
    cpu_started, wall_started = time.process_time(), time.monotonic()
    datagrams = peak = 0
    next_timer = 0.0

    def to_gateway(data: bytes, src: tuple, now: float) -> list:
        nonlocal datagrams
        datagrams += 1
        gw.receive_datagram(data, src, GATEWAY, now)
        out = gw.datagrams_to_send(now)
        for d in out:
            if d.dst == PEER:
                in_flight.append((now + ONE_WAY, d.data, d.src, d.dst))
        return out

    for i in range(count):
        now = i * seconds / count
        if now >= next_timer:  # the daemon's loop looks at the timers about every 100 ms
            gw.handle_timer(now)
            next_timer = now + 0.1
        if peer_started is None and i >= count // 2:
            peer_started = now
            peer.initiate("site", None, now)
            in_flight += [(now + ONE_WAY, d.data, d.src, d.dst) for d in peer.datagrams_to_send(now)]
        for item in [f for f in in_flight if f[0] <= now]:
            in_flight.remove(item)
            at, data, src, dst = item
            if dst == GATEWAY:
                to_gateway(data, src, now)
            else:
                peer.receive_datagram(data, src, dst, now)
                in_flight += [(now + ONE_WAY, d.data, d.src, d.dst) for d in peer.datagrams_to_send(now)]
                while (ev := peer.next_event()) is not None:
                    if isinstance(ev, IkeSaUp) and peer_up is None:
                        peer_up = now
        src = (_address(i), 500)
        base.spi_i = rng.randbytes(8)
        nonce = NoncePayload(rng.randbytes(32))
        payloads = [nonce if isinstance(p, NoncePayload) else p for p in base.payloads]
        base.payloads = payloads
        first = codec.encode(base)
        replies = to_gateway(first, src, now)
        cookie = next((codec.decode(r.data).notifies().get(NotifyType.COOKIE) for r in replies), None)
        if cookie is not None:
            base.payloads = [NotifyPayload(NotifyType.COOKIE, cookie.data)] + payloads
            cookied = codec.encode(base)
            to_gateway(cookied, src, now)
            if i % REPLAY_EVERY == 0:  # the same cookie from other ports, and with other payloads
                for port in range(1, REPLAY_PORTS + 1):
                    to_gateway(cookied, (src[0], 500 + port), now)
                base.payloads.append(VendorIdPayload(b"replayed"))
                to_gateway(codec.encode(base), src, now)
            base.payloads = payloads
        peak = max(peak, gw.half_open_count())
        if i % 5000 == 0:
            rss_peak = max(rss_peak, rss_kb())
    cpu = time.process_time() - cpu_started
    rss_peak = max(rss_peak, rss_kb())
    return {
        "initiators": count, "seconds_simulated": seconds, "datagrams": datagrams,
        "half_open_limit": gw.half_open_limit, "half_open_per_ip": gw.half_open_per_ip,
        "cookie_threshold": gw.cookie_threshold, "half_open_peak": peak, "half_open_at_end": gw.half_open_count(),
        "rss_growth_mb": round((rss_peak - rss_before) / 1024, 1),
        "cpu_seconds": round(cpu, 1), "cpu_us_per_datagram": round(cpu / datagrams * 1e6, 1),
        "wall_seconds": round(time.monotonic() - wall_started, 1),
        "real_peer_connect_seconds": None if peer_up is None else round(peer_up - peer_started, 3),
        "drops": dict(sorted(gw.drops.items())),
    }


def _timed(gw: IkeEndpoint, make, runs: int, at: float) -> dict:
    times = []
    for n in range(runs):
        data, src = make(n)
        started = time.perf_counter()
        gw.receive_datagram(data, src, GATEWAY, at)
        gw.datagrams_to_send(at)
        times.append(time.perf_counter() - started)
    times.sort()
    return {"bytes": len(make(0)[0]), "median_us": round(times[len(times) // 2] * 1e6, 1),
            "max_us": round(times[-1] * 1e6, 1)}


def worst_case(runs: int = 300) -> dict:
    """CPU per unauthenticated datagram, by kind (each copy from a new address and SPIi)."""
    _quiet()
    rng = random.Random(3)
    base = template()

    def request(extra=(), ke=None, sa=None, size_to=None):
        def make(n: int):
            msg = codec.Message(rng.randbytes(8), bytes(8), base.exchange, 0, True, False, [])
            payloads = [p for p in base.payloads]
            if sa is not None:
                payloads = [sa if isinstance(p, SaPayload) else p for p in payloads]
            if ke is not None:
                payloads = [ke if isinstance(p, KePayload) else p for p in payloads]
            msg.payloads = payloads + list(extra)
            data = codec.encode(msg)
            if size_to is not None:
                msg.payloads.append(VendorIdPayload(bytes(size_to - len(data) - 4)))
                data = codec.encode(msg)
            return data, (_address(n + 1000 * len(extra) + (size_to or 0)), 500)
        return make

    def proposals(count: int, transforms: int) -> SaPayload:
        per = transforms // count
        props = [Proposal(ProtocolId.IKE, [Transform(TransformType.ENCR, 20, 256)] * (per - 1)
                          + [Transform(TransformType.DH, 19)], number=i + 1) for i in range(count)]
        return SaPayload(props)

    def raw_sa(count: int) -> codec.Message:  # 8,000 empty proposals as the SA payload's bytes
        return b"".join(struct.pack("!BBHBBBB", 0 if i == count - 1 else 2, 0, 8, (i + 1) % 256, 1, 0, 0)
                        for i in range(count))

    def flood_of_proposals(n: int):
        msg = codec.Message(rng.randbytes(8), bytes(8), base.exchange, 0, True, False, [])
        from ike.codec.payloads import UnknownPayload
        msg.payloads = [UnknownPayload(33, raw_sa(8000)) if isinstance(p, SaPayload) else p for p in base.payloads]
        return codec.encode(msg), (_address(n), 500)

    fresh = lambda **kw: responder(random.Random(5), cookie_threshold=10**9, half_open_per_ip=10**6, **kw)  # noqa: E731
    out = {
        "ike_sa_init_accepted": _timed(fresh(), request(), runs, 0.0),
        "biggest_allowed_ike_sa_init": _timed(fresh(), request(size_to=codec.MAX_INIT_MESSAGE), runs, 0.0),
        "most_proposals_and_transforms": _timed(fresh(), request(sa=proposals(32, 128)), runs, 0.0),
        "invalid_ke": _timed(fresh(), request(ke=KePayload(19, bytes(64))), runs, 0.0),
        "oversized_64kB": _timed(fresh(), request(size_to=65_000), runs, 0.0),
        "8000_empty_proposals": _timed(fresh(), flood_of_proposals, runs, 0.0),
        "128_notifies": _timed(fresh(), request(extra=[NotifyPayload(40000 + i, b"") for i in range(120)]), runs, 0.0),
    }
    loaded = responder(random.Random(5), cookie_threshold=0)
    out["cookie_demanded_under_load"] = _timed(loaded, request(), runs, 0.0)
    out["cookie_demanded_biggest_allowed"] = _timed(loaded, request(size_to=codec.MAX_INIT_MESSAGE), runs, 0.0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reliability_half_open", description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=200_000)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    result = {"worst_case_per_datagram": worst_case(), "flood": flood(args.count, args.seconds),
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "where": "in memory (sans-I/O responder, "
              "simulated clock), one process; CPU is this process's"}
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["half_open"] = result
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
