"""Inbound ESP: a receive batch decapsulated, checked against its SA's selectors (RFC 4301 s5.2)
and handed to the TUN (through ``tunnel.dataplane.gro``) in order.

This runs once per packet: the SA is looked up once per run of packets on it, the selector
verdict is cached per flow (``InboundFilter``), and a drop costs a counter and, at most once a
second per reason, a log line (``DropLog``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import structlog

from esp.errors import Drop, DropReason
from esp.outer import ecn_decapsulate
from esp.sa import InboundSA

log = structlog.get_logger("tunnel")


class DropLog:
    """Counted drops get a log line, at most one per reason per second, with the count since."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def __call__(self, reason: str, **fields) -> None:
        now = self._clock()
        self._since[reason] = self._since.get(reason, 0) + 1
        if now - self._last.get(reason, -10.0) >= 1.0:
            log.warning("esp.drop", reason=reason, count=self._since.pop(reason), **fields)
            self._last[reason] = now


_PORT_PROTOCOLS = frozenset((6, 17, 132, 136))  # TCP, UDP, SCTP, UDP-Lite: ports right after the IP header
_ICMP_PROTOCOLS = frozenset((1, 58))  # type and code stand in for the ports (RFC 4301 s4.4.1.1)


class InboundFilter:
    """``policy.check_inbound`` with its verdicts cached per (SA, protocol, addresses, ports).

    The verdict depends only on the SA's selectors and those header bytes, so a flow costs one
    full check. Packets whose port bytes are not where the key takes them (IPv4 options or
    non-first fragments, IPv6 extension headers) always get the full check. ``clear()`` must
    follow every change to the policy; the cache also restarts when it reaches ``max_entries``.
    """

    def __init__(self, policy, max_entries: int = 65536) -> None:
        self._check = policy.check_inbound
        self._cache: dict[tuple, bool] = {}
        self._max = max_entries

    def clear(self) -> None:
        self._cache.clear()

    def __call__(self, sa, packet: bytes) -> bool:
        first = packet[0]
        if first == 0x45 and not (packet[6] & 0x1F or packet[7]):
            proto = packet[9]
            end = 24 if proto in _PORT_PROTOCOLS else 22 if proto == 1 else 20
            key = (sa, proto, packet[12:end])
        elif first >> 4 == 6 and len(packet) >= 40:
            proto = packet[6]
            if proto in _PORT_PROTOCOLS:
                key = (sa, proto, packet[8:44])
            elif proto == 58:
                key = (sa, proto, packet[8:42])
            else:
                return self._check(sa, packet)
        else:
            return self._check(sa, packet)
        cache = self._cache
        verdict = cache.get(key)
        if verdict is None:
            verdict = self._check(sa, packet)
            if len(cache) >= self._max:
                cache.clear()
            cache[key] = verdict
        return verdict


class EspReceiver:
    """Decapsulate a batch of ESP packets, check each against its SA's selectors, hand it to the TUN.

    Within one batch the SA is looked up again only when the SPI bytes change, and it goes into
    ``seen`` (the SAs that received, for dead-peer detection and rekeying) once per run of
    packets on it. ``inbound_ok(sa, inner)`` is the selector check (``InboundFilter`` or
    ``policy.check_inbound``). Every failure is a counted drop with a (rate-limited) log line.
    The caller flushes the GRO after the batch.
    """

    def __init__(self, sadb, inbound_ok, tun_write, drop_log: DropLog) -> None:
        self._sadb = sadb
        self._inbound_ok = inbound_ok
        self._tun_write = tun_write
        self._drop_log = drop_log

    def receive(self, packets: Sequence[bytes], ecn: int, seen: dict, start: int = 0) -> None:
        """ESP packets (from the SPI on, or from ``start`` on) that share the outer ECN bits ``ecn``."""
        lookup = self._sadb.lookup
        inbound_ok, tun_write = self._inbound_ok, self._tun_write
        last_head: bytes | None = None
        sa: InboundSA  # set whenever last_head is: the SA of the run of packets under way
        noted: InboundSA | None = None
        for esp in packets:
            if start:
                esp = esp[start:]
            head = esp[:4]
            if head != last_head:
                found = lookup(int.from_bytes(head, "big")) if len(esp) >= 8 else None
                if found is None:
                    last_head = None
                    self._no_sa(esp)
                    continue
                sa, last_head = found, head
            try:
                next_header, inner = sa.decapsulate(esp)
            except Drop as drop:
                if drop.reason is not DropReason.DUMMY:
                    self._drop_log(drop.reason.name.lower(), spi=head.hex())
                continue
            if not inner or (next_header == 4) != (inner[0] >> 4 == 4) or not inbound_ok(sa, inner):  # 4: NH_IPV4
                sa.counters.drop(DropReason.INNER_MISMATCH)
                self._drop_log("inner_mismatch", spi=head.hex())
                continue
            if ecn & 1:  # CE, or ECT(1) that may replace an inner ECT(0) (RFC 6040 s4.2)
                try:
                    inner = ecn_decapsulate(inner, ecn)
                except Drop as drop:
                    sa.counters.drop(drop.reason)
                    self._drop_log(drop.reason.name.lower(), spi=head.hex())
                    continue
            if sa is not noted:
                seen[sa.spi] = noted = sa
            tun_write(inner)

    def receive_ipv4(self, datagrams: list, seen: dict) -> int:
        """What an IPv4 raw ESP socket returns (outer header first); returns how many were malformed.

        Packets are grouped by outer header length and ECN bits, which are the same for a
        whole steady flow, so this is one ``receive`` call per such run.
        """
        malformed = 0
        run: list = []
        run_ihl = run_ecn = -1
        for datagram in datagrams:
            ihl = (datagram[0] & 0x0F) << 2
            if ihl < 20 or len(datagram) < ihl + 8:
                malformed += 1
                continue
            ecn = datagram[1] & 3
            if ihl != run_ihl or ecn != run_ecn:
                if run:
                    self.receive(run, run_ecn, seen, run_ihl)
                run = []
                run_ihl, run_ecn = ihl, ecn
            run.append(datagram)
        if run:
            self.receive(run, run_ecn, seen, run_ihl)
        return malformed

    def _no_sa(self, esp: bytes) -> None:
        """Unknown SPI or shorter than an ESP header: the SA database counts the drop."""
        try:
            self._sadb.decapsulate(esp)
        except Drop as drop:
            self._drop_log(drop.reason.name.lower(), spi=esp[:4].hex() if len(esp) >= 4 else None)


__all__ = ["DropLog", "EspReceiver", "InboundFilter"]
