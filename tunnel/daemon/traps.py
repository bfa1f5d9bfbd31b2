"""On-demand negotiation (``start_action = trap``): the first packet for a trapped child starts it.

A trap is a policy whose "SA" is the trap itself: the TUN packet no CHILD SA covers is looked up
here, queued (bounded; the oldest makes room) and answered with a request to negotiate, at most
once every ``ACQUIRE_RETRY`` seconds. When the child comes up, ``release`` hands the queue back.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from typing import NamedTuple

from ike.config import ChildConfig, ConnectionConfig, TrafficSelector
from tunnel.dataplane.policy import PolicyTable, parse_packet

ACQUIRE_RETRY = 30.0  # seconds before a still-pending trap asks IKE again


class Trap:
    """A ``start_action = trap`` child and the packets waiting for it."""

    def __init__(self, conn: ConnectionConfig, child: ChildConfig, queue_size: int) -> None:
        self.conn, self.child = conn, child
        self.queue: deque[bytes] = deque(maxlen=queue_size)
        self.pending_since: float | None = None


class Acquire(NamedTuple):
    """Negotiate ``child`` of ``connection``, narrowed to the packet's addresses if it parsed."""

    connection: str
    child: str
    packet_ts: tuple[TrafficSelector, TrafficSelector] | None


class Traps:
    """The trapped children of every connection, each with its queue."""

    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self.table = PolicyTable()
        self.queue_full = 0  # packets pushed out of a full queue by newer ones

    def add(self, conn: ConnectionConfig, child: ChildConfig) -> None:
        self.table.add(_key(conn.name, child.name), child.local_ts, child.remote_ts,
                       Trap(conn, child, self.queue_size))

    def remove(self, conn: ConnectionConfig) -> None:
        for child in conn.children:
            self.table.remove(_key(conn.name, child.name))

    def catch(self, packet: bytes) -> Trap | None:
        """Queue ``packet`` on the trap that covers it; None if no trap does."""
        trap = self.table.lookup_outbound(packet)
        if trap is not None:
            if len(trap.queue) == trap.queue.maxlen:
                self.queue_full += 1
            trap.queue.append(packet)
        return trap

    @staticmethod
    def acquire(trap: Trap, packet: bytes, now: float) -> Acquire | None:
        """What to negotiate for a trap that just caught ``packet``; None if it already asked."""
        if trap.pending_since is not None and now - trap.pending_since <= ACQUIRE_RETRY:
            return None
        trap.pending_since = now
        return Acquire(trap.conn.name, trap.child.name, _packet_selectors(packet))

    def release(self, connection: str, child: str) -> list[bytes]:
        """The packets queued for a child that just came up (in arrival order)."""
        trap = self.table.sa_of(_key(connection, child))
        if trap is None:
            return []
        trap.pending_since = None
        packets = list(trap.queue)
        trap.queue.clear()
        return packets


def _key(connection: str, child: str) -> tuple[str, str, str]:
    return ("trap", connection, child)


def _packet_selectors(packet: bytes) -> tuple[TrafficSelector, TrafficSelector] | None:
    """Single-address selectors for the packet's source and destination (RFC 7296 s2.9's first pair)."""
    fields = parse_packet(packet)
    if fields is None:
        return None
    make = ipaddress.IPv4Address if fields.version == 4 else ipaddress.IPv6Address
    src, dst = make(fields.src), make(fields.dst)
    return TrafficSelector(src, src), TrafficSelector(dst, dst)
