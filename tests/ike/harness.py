"""In-memory test harness: two IkeEndpoints, a fake clock, a seeded rng and a lossy wire."""

from __future__ import annotations

import random

import structlog
from dataclasses import dataclass, field

from ike.config import AuthConfig, ChildConfig, ConnectionConfig, TrafficSelector
from ike.endpoint import Datagram, IkeEndpoint
from ike.events import ChildSaDown, ChildSaUp, IkeSaDown, IkeSaUp, NegotiationFailed

A_IP, B_IP = "192.0.2.1", "198.51.100.2"
PSK = b"correct horse battery staple"


def seeded_rng(seed: int):
    r = random.Random(seed)
    return r.randbytes


def connection(name: str, local: str, remote: str, *, ike: str = "aes256gcm16-prfsha256-ecp256",
               esp: str = "aes256gcm16", psk: bytes = PSK, local_ts: str = "10.1.0.0/16",
               remote_ts: str = "10.2.0.0/16", child: str = "net", remote_addrs: list[str] | None = None,
               local_id: str | None = None, remote_id: str | None = None, **kw) -> ConnectionConfig:
    child_kw = {k[6:]: kw.pop(k) for k in list(kw) if k.startswith("child_")}
    children = [ChildConfig(child, [TrafficSelector.from_cidr(t) for t in local_ts.split(",")],
                            [TrafficSelector.from_cidr(t) for t in remote_ts.split(",")],
                            esp_proposals=[esp], **child_kw)]
    return ConnectionConfig(name, [local], remote_addrs or [remote], AuthConfig(id=local_id),
                            AuthConfig(id=remote_id), psk=psk, children=children, proposals=[ike], **kw)


def mirrored(ike="aes256gcm16-prfsha256-ecp256", esp="aes256gcm16", **kw):
    """A pair of matching configs for A (10.1/16) and B (10.2/16). Plain keywords apply to both,
    ``a_``/``b_`` prefixed ones to one side only."""
    common = {k: v for k, v in kw.items() if not k.startswith(("a_", "b_"))}
    a_kw = dict(common, **{k[2:]: v for k, v in kw.items() if k.startswith("a_")})
    b_kw = dict(common, **{k[2:]: v for k, v in kw.items() if k.startswith("b_")})
    b_kw.setdefault("ike", ike)
    b_kw.setdefault("esp", esp)
    b_kw.setdefault("local_ts", "10.2.0.0/16")
    b_kw.setdefault("remote_ts", "10.1.0.0/16")
    a = connection("site", A_IP, B_IP, ike=a_kw.pop("ike", ike), esp=a_kw.pop("esp", esp), **a_kw)
    b = connection("site", B_IP, A_IP, **b_kw)
    return a, b


@dataclass
class Wire:
    """Delivers datagrams with optional loss, duplication and reordering (seeded)."""

    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    seed: int = 1
    held: list[Datagram] = field(default_factory=list)
    tamper: object = None  # callable(Datagram) -> Datagram | None

    def __post_init__(self):
        self.r = random.Random(self.seed)

    def shape(self, datagrams: list[Datagram]) -> list[Datagram]:
        out = []
        for d in datagrams:
            if self.tamper is not None:
                d = self.tamper(d)
                if d is None:
                    continue
            x = self.r.random()
            if x < self.loss:
                continue
            if x < self.loss + self.reorder:
                self.held.append(d)
                continue
            out.append(d)
            if self.r.random() < self.dup:
                out.append(d)
        if self.held and self.r.random() < 0.5:
            out.append(self.held.pop(0))
        return out


class Pair:
    def __init__(self, a_conns, b_conns, *, seed: int = 7, wire: Wire | None = None, cookie_threshold: int = 10,
                 **endpoint_kw):
        """``endpoint_kw`` go to both IkeEndpoints (e.g. retransmit_timeout)."""
        self.now = 0.0
        self.a = IkeEndpoint(list(a_conns), rng=seeded_rng(seed), cookie_threshold=cookie_threshold, **endpoint_kw)
        self.b = IkeEndpoint(list(b_conns), rng=seeded_rng(seed + 1000), cookie_threshold=cookie_threshold,
                             **endpoint_kw)
        self.ips = {A_IP: self.a, B_IP: self.b}
        self.wire = wire or Wire()
        self.events = {"a": [], "b": []}
        self.sent = 0

    def side(self, ep):
        return "a" if ep is self.a else "b"

    def _collect(self):
        for name, ep in (("a", self.a), ("b", self.b)):
            while (ev := ep.next_event()) is not None:
                self.events[name].append(ev)

    def step(self) -> bool:
        """Deliver what is pending; False when nothing moved."""
        moved = False
        for ep in (self.a, self.b):
            out = self.wire.shape(ep.datagrams_to_send(self.now))
            for d in out:
                self.sent += 1
                target = self.ips.get(d.dst[0])
                if target is not None:
                    structlog.contextvars.bind_contextvars(side=self.side(target), t=round(self.now, 3))
                    target.receive_datagram(d.data, d.src, d.dst, self.now)
                    moved = True
        self._collect()
        return moved

    def run(self, until: float | None = None, max_steps: int = 10000, idle_stop: bool = True):
        """Exchange datagrams, advancing the clock to timers when idle, up to time ``until``."""
        for _ in range(max_steps):
            if self.step():
                continue
            if self.wire.held:
                continue
            timers = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
            nxt = min(timers) if timers else None
            if nxt is None or (until is not None and nxt > until):
                if until is not None:
                    self.now = max(self.now, until)
                return
            if until is None and idle_stop:
                return
            self.now = max(self.now, nxt)
            structlog.contextvars.bind_contextvars(side="a", t=round(self.now, 3))
            self.a.handle_timer(self.now)
            structlog.contextvars.bind_contextvars(side="b")
            self.b.handle_timer(self.now)
            self._collect()

    def advance(self, seconds: float):
        self.run(until=self.now + seconds, idle_stop=False)

    def of(self, side: str, kind):
        return [e for e in self.events[side] if isinstance(e, kind)]


__all__ = ["Pair", "Wire", "mirrored", "connection", "A_IP", "B_IP", "PSK", "ChildSaUp", "ChildSaDown",
           "IkeSaUp", "IkeSaDown", "NegotiationFailed"]
