"""A CHILD SA as its IKE SA holds it, and traffic selector narrowing (RFC 7296 s2.9)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ike.config import ChildConfig, TrafficSelector
from ike.tasks.states import CHILD_TRANSITIONS, ChildState, advance


def intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    if a.version != b.version:
        return None
    # one IP version (checked above), so the addresses compare
    start, end = max(a.start_addr, b.start_addr), min(a.end_addr, b.end_addr)
    if start > end:  # type: ignore[operator]
        return None
    if a.protocol and b.protocol and a.protocol != b.protocol:
        return None
    sport, eport = max(a.start_port, b.start_port), min(a.end_port, b.end_port)
    if sport > eport:
        return None
    ts = TrafficSelector(start, end, a.protocol or b.protocol, sport, eport)
    # an existing equal object instead of a new one: the responder's own (configured) selectors
    # are what most CHILD SAs end up with, and thousands of copies would cost memory
    return b if ts == b else a if ts == a else ts


def narrow(offered: list[TrafficSelector], configured: list[TrafficSelector]) -> list[TrafficSelector]:
    """The responder's answer: every non-empty intersection of the offer with its own selectors,
    in the offer's order (so an initiator's packet selector, sent first, is honoured), without
    the ones another answered selector contains."""
    out: list[TrafficSelector] = []
    for theirs in offered:
        for mine in configured:
            ts = intersect(theirs, mine)
            if ts is not None:
                out.append(ts)
    return without_redundant(out)


def is_subset(ts: TrafficSelector, of: list[TrafficSelector]) -> bool:
    return any(intersect(ts, o) == ts for o in of)


def without_redundant(selectors: list[TrafficSelector]) -> list[TrafficSelector]:
    """Drop repeats and every selector another one of the list contains, keeping the order: an
    on-demand packet's /32 sent before the subnet holding it would else stay next to it as a
    second policy (strongSwan's remove_duplicate_ts does the same when selecting)."""
    out: list[TrafficSelector] = []
    for i, ts in enumerate(selectors):
        if ts in out:
            continue
        if any(o != ts and intersect(ts, o) == ts for j, o in enumerate(selectors) if j != i):
            continue
        out.append(ts)
    return out


def host_selector(addr: str, protocol: int = 0, port: int | None = None) -> TrafficSelector:
    ip = ipaddress.ip_address(addr)
    if port is None:
        return TrafficSelector(ip, ip, protocol)
    return TrafficSelector(ip, ip, protocol, port, port)


@dataclass(slots=True)  # slots: a gateway holds thousands
class ChildSa:
    """One negotiated CHILD SA pair, as held by its IKE SA."""

    config: ChildConfig
    unique_id: int
    inbound_spi: int
    outbound_spi: int
    proposal: str
    esp_transform: str
    esn: bool
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    established: float
    rekey_at: float | None  # absolute time this side starts a rekey (None = never)
    expire_at: float  # absolute hard lifetime
    inbound_keymat: bytes = field(repr=False, default=b"")
    outbound_keymat: bytes = field(repr=False, default=b"")
    state: ChildState = ChildState.INSTALLED
    rekeyed_from: int | None = None
    nonces: tuple[bytes, bytes] = field(repr=False, default=(b"", b""))  # of the creating exchange

    @property
    def name(self) -> str:
        return self.config.name

    def move_to(self, new: ChildState) -> None:
        self.state = advance(self.state, new, CHILD_TRANSITIONS, f"CHILD SA {self.name}")

    def forget_keys(self) -> None:
        """The SA is gone: drop its KEYMAT and nonces (bytes cannot be wiped, only released)."""
        self.inbound_keymat = self.outbound_keymat = b""
        self.nonces = (b"", b"")

    def status(self) -> dict:
        return {"name": self.name, "unique_id": self.unique_id, "state": self.state,
                "inbound_spi": f"{self.inbound_spi:08x}", "outbound_spi": f"{self.outbound_spi:08x}",
                "proposal": self.proposal, "local_ts": [str(t) for t in self.local_ts],
                "remote_ts": [str(t) for t in self.remote_ts], "established": self.established,
                "rekey_at": self.rekey_at, "expire_at": None if self.expire_at == float("inf") else self.expire_at}
