"""The security policy database (SPD) of the gateway, RFC 4301 s4.4.1.

``PolicyTable`` maps an inner packet read from the TUN to the CHILD SA whose traffic selectors
cover it (outbound), and checks that a decapsulated packet is one its SA may carry (inbound,
RFC 4301 s5.2 step 4: anything else is dropped).

Every CHILD SA contributes one rule per (local TS, remote TS) pair. Rules are tried most specific
first -- fewest addresses covered, then a set protocol, then fewest ports -- as the kernel orders
XFRM policies by priority. Among equally specific rules the newest wins, so after a rekey the
replacement SA (added before the old one is removed) carries the traffic.

The outbound fast path parses the addresses with slicing only and keeps a cache keyed by the raw
(source, destination) bytes that holds the candidate rules for that address pair; a rule without
protocol or port restriction ends the search right there. The cache is cleared on every change.
"""

from __future__ import annotations

import bisect
import functools
import itertools
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterable

from ike.config import TrafficSelector

__all__ = ["PolicyTable", "PacketFields", "parse_packet"]

_MAX_CACHE_ENTRIES = 65536  # bounds memory when a sender sprays addresses; the cache then restarts
_PORT_PROTOCOLS = frozenset((6, 17, 132, 136))  # TCP, UDP, SCTP, UDP-Lite carry ports first
_ICMP_PROTOCOLS = frozenset((1, 58))  # RFC 7296 s3.13.1: type/code travel in the port fields
_IPV6_EXTENSIONS = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44
_ANY_PORTS = (0, 65535)
_UNBOUND = object()  # no child: child ids may be any value, None included


@dataclass(frozen=True)
class PacketFields:
    """What a selector looks at: version, addresses as ints, protocol and port (None: opaque)."""

    version: int
    src: int
    dst: int
    protocol: int
    src_port: int | None
    dst_port: int | None


def _ports(packet: bytes, offset: int, protocol: int, first_fragment: bool) -> tuple[int | None, int | None]:
    # Non-first fragments carry no ports: RFC 4301 s7 calls them OPAQUE; only "any" ranges match.
    if not first_fragment:
        return None, None
    if protocol in _PORT_PROTOCOLS:
        if len(packet) < offset + 4:
            return None, None
        return int.from_bytes(packet[offset:offset + 2], "big"), int.from_bytes(packet[offset + 2:offset + 4], "big")
    if protocol in _ICMP_PROTOCOLS:
        if len(packet) < offset + 2:
            return None, None
        # RFC 4301 s4.4.1.1: the ICMP type and code are matched as one 16 bit "port", both ends alike.
        value = packet[offset] << 8 | packet[offset + 1]
        return value, value
    return None, None


def parse_packet(packet: bytes) -> PacketFields | None:
    """Selector fields of an IPv4/IPv6 packet, or None if it is too short or not IP."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or len(packet) < ihl:
            return None
        protocol = packet[9]
        first = (int.from_bytes(packet[6:8], "big") & 0x1FFF) == 0
        sport, dport = _ports(packet, ihl, protocol, first)
        return PacketFields(4, int.from_bytes(packet[12:16], "big"), int.from_bytes(packet[16:20], "big"),
                            protocol, sport, dport)
    if version == 6:
        if len(packet) < 40:
            return None
        protocol = packet[6]
        offset = 40
        first = True
        # Walk the extension headers that may precede the upper layer (RFC 8200 s4.1).
        for _ in range(8):
            if protocol in _IPV6_EXTENSIONS:
                if len(packet) < offset + 2:
                    return None
                protocol, offset = packet[offset], offset + (packet[offset + 1] + 1) * 8
            elif protocol == _IPV6_FRAGMENT:
                if len(packet) < offset + 8:
                    return None
                first = (int.from_bytes(packet[offset + 2:offset + 4], "big") >> 3) == 0
                protocol, offset = packet[offset], offset + 8
            else:
                break
        sport, dport = _ports(packet, offset, protocol, first)
        return PacketFields(6, int.from_bytes(packet[8:24], "big"), int.from_bytes(packet[24:40], "big"),
                            protocol, sport, dport)
    return None


@dataclass(frozen=True, slots=True)
class _Range:
    """A selector flattened to ints for quick comparison."""

    version: int
    start: int
    end: int
    protocol: int
    start_port: int
    end_port: int

    @classmethod
    @functools.lru_cache(maxsize=256)  # immutable: equal selectors (the local subnet) share one
    def of(cls, ts: TrafficSelector) -> _Range:
        if ts.start_addr.version != ts.end_addr.version or int(ts.start_addr) > int(ts.end_addr):
            raise ValueError(f"traffic selector {ts} has an invalid address range")
        if not (0 <= ts.start_port <= ts.end_port <= 65535) or not (0 <= ts.protocol <= 255):
            raise ValueError(f"traffic selector {ts} has an invalid protocol or port range")
        return cls(ts.version, int(ts.start_addr), int(ts.end_addr), ts.protocol, ts.start_port, ts.end_port)

    @property
    def address_only(self) -> bool:
        return self.protocol == 0 and (self.start_port, self.end_port) == _ANY_PORTS

    def has_addr(self, value: int) -> bool:
        return self.start <= value <= self.end

    def has_port(self, port: int | None) -> bool:
        if (self.start_port, self.end_port) == _ANY_PORTS:
            return True
        return port is not None and self.start_port <= port <= self.end_port


@dataclass(slots=True)  # slots: one rule per CHILD SA, and a gateway holds thousands
class _Rule:
    child_id: Any
    local: _Range
    remote: _Range
    sa: Any
    seq: int
    address_only: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.local.version != self.remote.version:
            raise ValueError("local and remote traffic selectors must be of one IP version")
        if (self.local.protocol and self.remote.protocol and self.local.protocol != self.remote.protocol):
            raise ValueError("local and remote traffic selectors name different protocols")
        self.address_only = self.local.address_only and self.remote.address_only

    @property
    def rank(self) -> tuple:
        """Sort key, most specific first (computed when needed: only adding and removing sort)."""
        addresses = (self.local.end - self.local.start + 1) * (self.remote.end - self.remote.start + 1)
        ports = ((self.local.end_port - self.local.start_port + 1)
                 * (self.remote.end_port - self.remote.start_port + 1))
        any_protocol = not (self.local.protocol or self.remote.protocol)
        return (addresses, any_protocol, ports, -self.seq)

    def matches_upper(self, fields: PacketFields, local_port: int | None, remote_port: int | None) -> bool:
        protocol = self.local.protocol or self.remote.protocol
        if protocol and protocol != fields.protocol:
            return False
        return self.local.has_port(local_port) and self.remote.has_port(remote_port)


def _rank(rule: _Rule) -> tuple:
    return rule.rank


class PolicyTable:
    """The SPD: outbound selection and inbound checks by CHILD SA traffic selectors.

    ``add(child_id, local_ts, remote_ts, sa)`` installs the selectors of one CHILD SA; ``sa`` is
    whatever object the caller wants back from ``lookup_outbound`` (typically the outbound ESP SA).
    ``check_inbound(sa, packet)`` takes that same object, or any object registered for the child
    with ``bind_inbound`` (the inbound SA of the pair). These objects are dict keys: SA objects
    are hashed by identity.
    """

    def __init__(self) -> None:
        self._rules: list[_Rule] = []
        self._by_child: dict[Any, tuple[_Rule, ...]] = {}
        # sa object -> child_id; keyed by the object itself (an id() key and a tuple holding the
        # object alive cost ~90 B more per binding, two bindings per CHILD SA)
        self._inbound: dict[Any, Any] = {}
        self._inbound_of: dict[Any, tuple[Any, ...]] = {}  # child_id -> its objects in _inbound
        self._cache: dict[bytes, tuple[_Rule, ...]] = {}
        self._seq = itertools.count()
        self.counters = {"malformed": 0, "no_policy": 0, "inbound_mismatch": 0}

    def __len__(self) -> int:
        return len(self._by_child)

    def add(self, child_id: Any, local_ts: Iterable[TrafficSelector], remote_ts: Iterable[TrafficSelector],
            sa_object: Any) -> None:
        """Install (or replace) the policy of ``child_id``; pairs of different IP versions are skipped."""
        locals_ = [_Range.of(ts) for ts in local_ts]
        remotes = [_Range.of(ts) for ts in remote_ts]
        rules = tuple(_Rule(child_id, local, remote, sa_object, next(self._seq))
                      for local, remote in itertools.product(locals_, remotes)
                      # a 0.0.0.0/0 with ::/0 list crosses versions; those pairs can never match
                      if local.version == remote.version)
        if not rules:
            raise ValueError(f"child {child_id!r}: no local/remote selector pair of one IP version")
        self.remove(child_id)
        self._by_child[child_id] = rules
        self._bind(child_id, sa_object)
        for rule in rules:  # kept sorted by rank: O(log n) search, no re-sort of every rule
            bisect.insort(self._rules, rule, key=_rank)
        self._cache.clear()

    def sa_of(self, child_id: Any) -> Any | None:
        """The SA object ``child_id``'s policy sends through, or None if it has no policy."""
        rules = self._by_child.get(child_id)
        return rules[0].sa if rules else None

    def bind_inbound(self, child_id: Any, sa_object: Any) -> None:
        """Let ``check_inbound`` accept ``sa_object`` (e.g. the inbound SA) for ``child_id``'s selectors."""
        if child_id not in self._by_child:
            raise KeyError(f"no policy for child {child_id!r}")
        self._bind(child_id, sa_object)

    def _bind(self, child_id: Any, sa_object: Any) -> None:
        previous = self._inbound.get(sa_object, _UNBOUND)
        if previous == child_id:
            return
        if previous is not _UNBOUND:  # re-bound to another child
            self._inbound_of[previous] = tuple(o for o in self._inbound_of[previous] if o != sa_object)
        # tuples: smaller than lists, rarely changed
        self._inbound_of[child_id] = self._inbound_of.get(child_id, ()) + (sa_object,)
        self._inbound[sa_object] = child_id

    def remove(self, child_id: Any) -> bool:
        """Remove the policy of ``child_id``; returns False if there was none."""
        rules = self._by_child.pop(child_id, None)
        if rules is None:
            return False
        for sa_object in self._inbound_of.pop(child_id, ()):
            del self._inbound[sa_object]
        for rule in rules:
            i = bisect.bisect_left(self._rules, rule.rank, key=_rank)
            assert self._rules[i] is rule  # ranks are unique (they end in the rule's sequence number)
            del self._rules[i]
        self._cache.clear()  # keyed by packet addresses: any of them may have chosen these rules
        return True

    def _candidates(self, key: bytes, version: int, src: int, dst: int) -> tuple[_Rule, ...]:
        found = []
        for rule in self._rules:
            if rule.local.version == version and rule.local.has_addr(src) and rule.remote.has_addr(dst):
                found.append(rule)
                if rule.address_only:
                    break  # nothing after it can be chosen
        if len(self._cache) >= _MAX_CACHE_ENTRIES:
            self._cache.clear()
        result = self._cache[key] = tuple(found)
        return result

    def lookup_outbound(self, packet: bytes) -> Any | None:
        """The SA object for an inner packet read from the TUN, or None (no policy or not IP)."""
        if not packet:
            self.counters["malformed"] += 1
            return None
        version = packet[0] >> 4
        if version == 4 and len(packet) >= 20:
            key = packet[12:20]
        elif version == 6 and len(packet) >= 40:
            key = packet[8:40]
        else:
            self.counters["malformed"] += 1
            return None
        candidates = self._cache.get(key)
        if candidates is None:
            half = len(key) // 2
            candidates = self._candidates(key, version, int.from_bytes(key[:half], "big"),
                                          int.from_bytes(key[half:], "big"))
        if candidates and candidates[0].address_only:
            return candidates[0].sa
        if candidates:
            fields = parse_packet(packet)
            if fields is None:
                self.counters["malformed"] += 1
                return None
            for rule in candidates:
                if rule.matches_upper(fields, fields.src_port, fields.dst_port):
                    return rule.sa
        self.counters["no_policy"] += 1
        return None

    def check_inbound(self, sa_object: Any, packet: bytes) -> bool:
        """True if a decapsulated packet lies within the selectors of the SA it arrived on."""
        child_id = self._inbound.get(sa_object, _UNBOUND)
        fields = parse_packet(packet) if child_id is not _UNBOUND else None
        if fields is not None:
            for rule in self._by_child[child_id]:
                # Inbound the packet's source is the remote side and its destination the local side.
                if (rule.local.version == fields.version and rule.remote.has_addr(fields.src)
                        and rule.local.has_addr(fields.dst)
                        and rule.matches_upper(fields, fields.dst_port, fields.src_port)):
                    return True
        self.counters["inbound_mismatch"] += 1
        return False
