"""The per-packet path: an installed CHILD SA pair and the ESP in/out loops around it.

Everything here runs once per packet, so it avoids per-packet allocation beyond the packet
itself: bound methods are cached on the objects, the kernel builds outer IPv4 headers (or
``esp.outer`` templates do, on an IP_HDRINCL socket), and counters are plain integer attributes.
Per wake-up rather than per packet: ESP-in-UDP goes out in GSO batches and raw IPv4 ESP through
AF_PACKET TX rings (``TxBatcher``, ``tunnel.kernel.tx_ring``), and
decrypted packets go to the TUN through ``tunnel.dataplane.gro`` (the daemon wires both).
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Callable

import structlog

from esp.errors import Drop, DropReason, SAExpired
from esp.outer import OuterIPv4, OuterIPv6, ecn_decapsulate
from esp.sa import InboundSA, Lifetime, OutboundSA
from esp.transforms import transform_by_name
from ike.events import ChildSaUp
from tunnel.dataplane.fragment import fit_to_mtu
from tunnel.dataplane.icmp import tunnel_mtu
from tunnel.kernel.tx_ring import RingSet

log = structlog.get_logger("tunnel")

NH_IPV4, NH_IPV6 = 4, 41
NAT_T_PORT = 4500


def _lifetime(up: ChildSaUp, packets: int, octets: int) -> Lifetime | None:
    """Soft limits at the configured rekey volume, hard ones 10% later (strongSwan's life = 1.1 x rekey)."""
    if not packets and not octets:
        return None
    return Lifetime(soft_packets=packets or None, hard_packets=int(packets * 1.1) or None,
                    soft_bytes=octets or None, hard_bytes=int(octets * 1.1) or None)


class ChildPath:
    """One CHILD SA pair as installed in the data plane.

    It copies the few fields of its ``ChildSaUp`` it needs instead of keeping the event (about
    200 B per SA, and a gateway holds thousands); the keys are the same bytes objects.
    """

    __slots__ = ("key", "lineage", "generation", "inbound", "outbound", "mtu", "installed_at", "last_out",
                 "rekey_requested", "_encapsulate", "_transmit", "local", "remote", "local_ts", "remote_ts",
                 "mode", "encap", "proposal", "inbound_keymat", "outbound_keymat")

    def __init__(self, up: ChildSaUp, *, transmit: Callable[[bytes, bytes], bool], mtu: int,
                 rekey_packets: int = 0, rekey_bytes: int = 0, now: float = 0.0) -> None:
        self.key = (up.ike_name, up.child_name, up.unique_id)
        self.lineage = self.key  # the policy key it shares with the SAs it was rekeyed from
        self.generation = 0  # install order: the newest SA of a lineage wins
        lifetime = _lifetime(up, rekey_packets, rekey_bytes)
        self.inbound = InboundSA(up.inbound_spi, up.esp_transform, up.inbound_keymat, esn=up.esn,
                                 replay_window=up.replay_window, lifetime=lifetime)
        self.outbound = OutboundSA(up.outbound_spi, up.esp_transform, up.outbound_keymat, esn=up.esn,
                                   tfc_pad_to=up.tfc_padding, lifetime=lifetime)
        self.local, self.remote = up.local, up.remote
        self.local_ts, self.remote_ts = up.local_ts, up.remote_ts
        self.mode, self.encap, self.proposal = up.mode, up.encap, up.proposal
        self.inbound_keymat, self.outbound_keymat = up.inbound_keymat, up.outbound_keymat  # for key export
        self.mtu = mtu
        self.installed_at = now
        self.last_out: float | None = None
        self.rekey_requested = False
        self._encapsulate = self.outbound.encapsulate
        self._transmit = transmit

    def __repr__(self) -> str:
        return f"ChildPath(child={self.child_name!r}, spi_in=0x{self.inbound_spi:08x}, spi_out=0x{self.outbound_spi:08x})"

    @property
    def child_name(self) -> str:
        return self.key[1]

    @property
    def unique_id(self) -> int:
        return self.key[2]

    @property
    def inbound_spi(self) -> int:
        return self.inbound.spi

    @property
    def outbound_spi(self) -> int:
        return self.outbound.spi

    def send(self, inner: bytes) -> bool:
        """Encrypt and transmit one inner packet that already fits ``self.mtu``."""
        try:
            esp = self._encapsulate(inner, NH_IPV6 if inner[0] >> 4 == 6 else NH_IPV4)
        except SAExpired:
            self.outbound.counters.drop(DropReason.SA_EXPIRED)
            return False
        return self._transmit(esp, inner)

    def describe(self, now: float) -> dict:
        """The CHILD SA for ``espgw list-sas`` (no keys)."""
        inb, out = self.inbound.counters, self.outbound.counters
        drops = {r.name.lower(): n for r, n in {**inb.drops, **out.drops}.items() if n}
        return {
            "name": self.child_name, "unique_id": self.unique_id, "state": "INSTALLED", "mode": self.mode,
            "encap": self.encap, "proposal": self.proposal, "spi_in": f"{self.inbound_spi:08x}",
            "spi_out": f"{self.outbound_spi:08x}", "bytes_in": inb.bytes, "bytes_out": out.bytes,
            "packets_in": inb.packets, "packets_out": out.packets,
            "installed": round(now - self.installed_at, 1),
            "local_ts": [str(ts) for ts in self.local_ts], "remote_ts": [str(ts) for ts in self.remote_ts],
            "drops": drops, "mtu": self.mtu,
        }

    def key_rows(self) -> list[dict]:
        """Both directions for Wireshark's esp_sa table (the keys leave only through ``espgw keys``)."""
        transform = self.outbound.transform.name
        return [
            {"src": self.remote[0], "dst": self.local[0], "spi": self.inbound_spi, "esp_transform": transform,
             "keymat": self.inbound_keymat.hex()},
            {"src": self.local[0], "dst": self.remote[0], "spi": self.outbound_spi, "esp_transform": transform,
             "keymat": self.outbound_keymat.hex()},
        ]


class TxBatcher:
    """What one loop turn sends, sent together: ESP-in-UDP per SA with UDP GSO, raw ESP via TX rings.

    One ``sendmsg`` with UDP_SEGMENT carries a run of equal-sized datagrams, and one ``send`` on
    an AF_PACKET TX ring (``tunnel.kernel.tx_ring``) carries every frame written into it, so the
    kernel's send path runs once per batch instead of once per packet. The daemon calls
    ``flush()`` when it has handled what its sockets and TUN had to offer, before it waits again.
    ``rings`` (a ``RingSet``, or None for raw sockets only) is kept up to date from ``flush``.
    """

    def __init__(self, rings: RingSet | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._dirty: list[Callable[[], None]] = []
        self.rings = rings
        self._clock = clock
        self.shared: dict[tuple, Callable[[bytes, bytes], bool]] = {}  # transmitters by address pair

    def transmitter(self, udp, remote: tuple[str, int], local: tuple[str, int]) -> Callable[[bytes, bytes], bool]:
        queue: list[bytes] = []
        dirty = self._dirty
        try:  # the socket and its control messages are chosen once per SA
            send_batch = udp.endpoint(local, remote, True).esp_batch_sender(remote, local[0])
        except ValueError:  # no UDP socket of the peer's address family: nothing can go out
            log.warning("esp.no_udp_socket", remote=remote[0])
            send_batch = len

        def flush() -> None:
            packets = queue[:]
            queue.clear()
            send_batch(packets)

        def transmit_batched(esp: bytes, inner: bytes) -> bool:
            if not queue:
                dirty.append(flush)
            queue.append(esp)
            return True

        return transmit_batched

    def ring_transmitter(self, remote_ip: str, local_ip: str,
                         fallback: Callable[[bytes, bytes], bool]) -> Callable[[bytes, bytes], bool]:
        """Raw IPv4 ESP through the TX ring towards ``remote_ip``; ``fallback`` (the raw socket)
        takes what the ring cannot (see ``RingPath.send``)."""
        rings = self.rings
        ring_send = rings.path_to(remote_ip, self._clock()).send
        build = OuterIPv4(socket.inet_aton(local_ip), socket.inet_aton(remote_ip), df="copy").build
        dirty, flush = self._dirty, rings.flush

        def transmit_ring(esp: bytes, inner: bytes) -> bool:
            sent = ring_send(build(len(esp), inner), esp)
            if sent is None:
                return fallback(esp, inner)
            if not dirty:
                dirty.append(flush)
            return sent

        return transmit_ring

    def flush(self) -> None:
        dirty = self._dirty
        while dirty:
            dirty.pop()()
        if self.rings is not None:
            self.rings.maintain(self._clock())


UdpBatcher = TxBatcher  # the daemon's name for it until it passes the rings


def make_transmit(up: ChildSaUp, *, raw_v4, raw_v6, udp, force_udp: bool,
                  batcher: TxBatcher | None = None) -> Callable[[bytes, bytes], bool]:
    """The function that puts one ESP packet on the wire for this SA: raw protocol 50 or UDP 4500.

    With a ``batcher``, ESP-in-UDP packets wait for its ``flush()`` (GSO), and so does raw IPv4
    ESP when the batcher has TX rings; otherwise raw ESP goes at once, one syscall per packet.
    """
    local_ip, remote_ip = up.local[0], up.remote[0]
    if batcher is None:
        return _new_transmit(up, raw_v4=raw_v4, raw_v6=raw_v6, udp=udp, force_udp=force_udp, batcher=None)
    # Every SA between the same two addresses shares one transmitter (one closure, one UDP queue,
    # one outer-header ID sequence): it depends on nothing else, and 10,000 SAs then cost no more.
    key = (up.encap or force_udp, local_ip, remote_ip, up.remote[1])
    transmit = batcher.shared.get(key)
    if transmit is None:
        transmit = batcher.shared[key] = _new_transmit(up, raw_v4=raw_v4, raw_v6=raw_v6, udp=udp,
                                                       force_udp=force_udp, batcher=batcher)
    return transmit


def _new_transmit(up: ChildSaUp, *, raw_v4, raw_v6, udp, force_udp: bool,
                  batcher: TxBatcher | None) -> Callable[[bytes, bytes], bool]:
    local_ip, remote_ip = up.local[0], up.remote[0]
    if up.encap or force_udp:
        remote = (remote_ip, up.remote[1] if up.remote[1] != 500 else NAT_T_PORT)
        local = (local_ip, NAT_T_PORT)
        if batcher is not None:
            return batcher.transmitter(udp, remote, local)
        send_esp = udp.send_esp

        def transmit_udp(esp: bytes, inner: bytes) -> bool:
            return send_esp(esp, remote, local)

        return transmit_udp
    if ipaddress.ip_address(remote_ip).version == 4:
        if getattr(raw_v4, "kernel_header", False):
            transmit = raw_v4.tunnel_sender(remote_ip, local_ip)  # TOS and DF copied from the inner packet
        else:
            outer = OuterIPv4(socket.inet_aton(local_ip), socket.inet_aton(remote_ip), df="copy")
            build, send = outer.build, raw_v4.sender(remote_ip)

            def transmit(esp: bytes, inner: bytes) -> bool:
                return send(build(len(esp), inner) + esp)

        if batcher is not None and batcher.rings is not None:
            return batcher.ring_transmitter(remote_ip, local_ip, transmit)
        return transmit
    send_v6 = raw_v6.sender(remote_ip)  # the kernel builds the outer IPv6 header

    def transmit_v6(esp: bytes, inner: bytes) -> bool:
        return send_v6(esp)

    return transmit_v6


def inner_mtu(tun_mtu: int, path_mtu: int, up: ChildSaUp, force_udp: bool) -> int:
    """The largest inner packet this SA carries unfragmented over a path of ``path_mtu``."""
    t = transform_by_name(up.esp_transform)
    ipv6_outer = ipaddress.ip_address(up.remote[0]).version == 6
    try:
        fit = tunnel_mtu(path_mtu, iv_len=t.iv_len, icv_len=t.icv_len, align=t.align, ipv6_outer=ipv6_outer,
                         udp_encap=up.encap or force_udp)
    except ValueError:
        fit = 576
    return min(tun_mtu, fit)


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


def receive_esp(sadb, inbound_ok, tun_write, esp: bytes, ecn: int, drop_log: DropLog, seen: dict) -> None:
    """Decapsulate one ESP packet, check it against its SA's selectors, hand it to the TUN.

    ``inbound_ok(sa, inner)`` is the selector check (``InboundFilter`` or ``policy.check_inbound``).
    The daemon uses ``EspReceiver``, which does the same for a whole batch.
    """
    try:
        sa, next_header, inner = sadb.decapsulate(esp)
    except Drop as drop:
        if drop.reason is not DropReason.DUMMY:
            drop_log(drop.reason.name.lower(), spi=esp[:4].hex() if len(esp) >= 4 else None)
        return
    if not inner or (next_header == NH_IPV4) != (inner[0] >> 4 == 4) or not inbound_ok(sa, inner):
        sa.counters.drop(DropReason.INNER_MISMATCH)
        drop_log("inner_mismatch", spi=f"{sa.spi:08x}")
        return
    if ecn & 1:
        try:
            inner = ecn_decapsulate(inner, ecn)
        except Drop as drop:
            sa.counters.drop(drop.reason)
            drop_log(drop.reason.name.lower(), spi=f"{sa.spi:08x}")
            return
    seen[sa.spi] = sa
    tun_write(inner)


class EspReceiver:
    """``receive_esp`` for a batch of packets, with the per-packet work cut to the minimum.

    Within one batch the SA is looked up again only when the SPI bytes change, and it goes into
    ``seen`` (for ``Gateway._note_alive``) once per run of packets on it. Drops are handled
    exactly as ``receive_esp`` does. The caller flushes the GRO after the batch.
    """

    def __init__(self, sadb, inbound_ok, tun_write, drop_log: DropLog) -> None:
        self._sadb = sadb
        self._inbound_ok = inbound_ok
        self._tun_write = tun_write
        self._drop_log = drop_log

    def receive(self, packets: list, ecn: int, seen: dict, start: int = 0) -> None:
        """ESP packets (from the SPI on, or from ``start`` on) that share the outer ECN bits ``ecn``."""
        lookup = self._sadb.lookup
        inbound_ok, tun_write = self._inbound_ok, self._tun_write
        last_head = sa = noted = None
        for esp in packets:
            if start:
                esp = esp[start:]
            head = esp[:4]
            if head != last_head:
                sa = lookup(int.from_bytes(head, "big")) if len(esp) >= 8 else None
                if sa is None:  # unknown or truncated: the database counts it
                    last_head = None
                    self._slow(esp, ecn, seen)
                    continue
                last_head = head
            try:
                next_header, inner = sa.decapsulate(esp)
            except Drop as drop:
                if drop.reason is not DropReason.DUMMY:
                    self._drop_log(drop.reason.name.lower(), spi=head.hex())
                continue
            if not inner or (next_header == 4) != (inner[0] >> 4 == 4) or not inbound_ok(sa, inner):
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

    def _slow(self, esp: bytes, ecn: int, seen: dict) -> None:
        receive_esp(self._sadb, self._inbound_ok, self._tun_write, esp, ecn, self._drop_log, seen)


def send_with_mtu(path: ChildPath, packet: bytes, tun_write, icmp_v4: str | None, icmp_v6: str | None) -> None:
    """An inner packet larger than the SA's MTU: fragment it (no DF) or answer ICMP too big."""
    verdict = fit_to_mtu(packet, path.mtu, icmp_source_v4=icmp_v4, icmp_source_v6=icmp_v6)
    for fragment in verdict.packets:
        path.send(fragment)
    if verdict.icmp_reply is not None:
        tun_write(verdict.icmp_reply)


__all__ = ["ChildPath", "TxBatcher", "UdpBatcher", "make_transmit", "inner_mtu", "receive_esp", "EspReceiver", "InboundFilter", "send_with_mtu", "DropLog", "OuterIPv6"]
