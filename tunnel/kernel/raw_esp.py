"""ESP over raw IP protocol 50 sockets.

IPv4 uses IP_HDRINCL so the outer header is ours (``send_esp`` builds it from a per-socket
template; the kernel fills length, checksum and ID), unless ``kernel_header=True``: then the
kernel builds it (about 1 us less per packet) and TOS and DF come from socket options, set only
when they change. IPv6 always lets the kernel build the header. Reads come in batches (up to
``max_packets``, a lone packet without a failing read: ``tunnel.kernel.drain``); send failures
that only mean "not now" are counted drops, never exceptions.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import NamedTuple

from tunnel.kernel.drain import pending_probe
from tunnel.kernel.socket_options import (ANC_SPACE, DEFAULT_BUFFER, IPV6_MTU, IPV6_RECVTCLASS, IPV6_TCLASS, IP_MTU,
                                           IP_MTU_DISCOVER, IP_PKTINFO, IP_PMTUDISC_DO, IP_PMTUDISC_DONT,
                                           MAX_DATAGRAM, TRANSIENT_SEND, address_family, big_buffers)

__all__ = ["RawEspSocket", "EspDatagram", "parse_ipv4_esp", "IPPROTO_ESP"]

IPPROTO_ESP = 50


class EspDatagram(NamedTuple):
    """A received ESP packet: ``esp`` starts at the SPI; ``src`` is the outer source; ``ecn`` its 2 ECN bits."""

    esp: bytes
    src: str
    ecn: int


def parse_ipv4_esp(datagram: bytes) -> EspDatagram | None:
    """Split what an IPv4 raw socket returns into the ESP part, outer source and ECN (None if malformed)."""
    if len(datagram) < 20:
        return None
    ihl = (datagram[0] & 0x0F) * 4
    if ihl < 20 or len(datagram) < ihl + 8:  # an ESP header alone is 8 bytes
        return None
    return EspDatagram(datagram[ihl:], socket.inet_ntoa(datagram[12:16]), datagram[1] & 3)


class RawEspSocket:
    """ESP over a raw IP socket, bound to ``local_addr`` and optionally connected to one peer.

    Connecting (one socket per peer) lets the kernel filter by source and lets ``send_esp`` go
    without a destination; ``path_mtu()`` then reports the kernel's path MTU to the peer.
    ``read_batch`` returns what the kernel gives (IPv4: with the IP header), ``recv_batch`` the
    parsed ``EspDatagram`` tuples.
    """

    def __init__(self, family: int, local_addr: str, peer_addr: str | None = None, *,
                 buffer_size: int = DEFAULT_BUFFER, ttl: int = 64, kernel_header: bool = False) -> None:
        if family not in (socket.AF_INET, socket.AF_INET6) or address_family(local_addr) != family:
            raise ValueError(f"local address {local_addr} does not match the address family")
        self.family = family
        self.local_addr = local_addr
        self.peer_addr = peer_addr
        self.counters = {"received": 0, "recv_malformed": 0, "recv_errors": 0, "sent": 0, "send_dropped": 0}
        self._sock = socket.socket(family, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, IPPROTO_ESP)
        try:
            big_buffers(self._sock, buffer_size)
            if family == socket.AF_INET:
                if kernel_header:
                    self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
                    self._sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
                else:
                    self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
                self._sock.bind((local_addr, 0))
            else:
                self._sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVTCLASS, 1)
                self._sock.bind((local_addr, 0, 0, 0))
            if peer_addr is not None:
                self._sock.connect((peer_addr, 0))
        except OSError:
            self._sock.close()
            raise
        self.fd = self._sock.fileno()
        self._more = pending_probe(self.fd)
        self.kernel_header = kernel_header and family == socket.AF_INET
        self._tos, self._df = 0, False  # what the socket options say now (kernel_header)
        # Outer IPv4 header template: version/IHL, TOS, [len, ID: kernel], flags, TTL, proto, [csum], addrs.
        self._v4_tail = (bytes((ttl, IPPROTO_ESP, 0, 0)) + socket.inet_aton(local_addr)
                         if family == socket.AF_INET else b"")
        self._v4_peer = socket.inet_aton(peer_addr) if family == socket.AF_INET and peer_addr else None

    def fileno(self) -> int:
        return self.fd

    def read_batch(self, max_packets: int = 64) -> list[bytes]:
        """Raw datagrams as received (IPv4: outer header included; IPv6: ESP only), up to EAGAIN."""
        packets = []
        recv, more = self._sock.recv, self._more
        try:
            for i in range(max_packets):
                if i == 1 and not more(0):  # a lone packet: no failing read (tunnel.kernel.drain)
                    break
                packets.append(recv(MAX_DATAGRAM))
        except BlockingIOError:
            pass
        except OSError:  # e.g. an ICMP error queued on a connected socket; the next read goes on
            self.counters["recv_errors"] += 1
        self.counters["received"] += len(packets)
        return packets

    def recv_batch(self, max_packets: int = 64) -> list[EspDatagram]:
        """ESP packets with outer source and ECN bits, up to EAGAIN; malformed ones are counted drops."""
        if self.family == socket.AF_INET:
            parsed = [parse_ipv4_esp(d) for d in self.read_batch(max_packets)]
            good = [p for p in parsed if p is not None]
            self.counters["recv_malformed"] += len(parsed) - len(good)
            return good
        result = []
        recvmsg, more = self._sock.recvmsg, self._more
        try:
            for i in range(max_packets):
                if i == 1 and not more(0):  # a lone packet: no failing read (tunnel.kernel.drain)
                    break
                data, ancdata, _flags, addr = recvmsg(MAX_DATAGRAM, ANC_SPACE)
                if len(data) < 8:
                    self.counters["recv_malformed"] += 1
                    continue
                ecn = 0
                for level, kind, value in ancdata:
                    if level == socket.IPPROTO_IPV6 and kind == IPV6_TCLASS and len(value) >= 4:
                        ecn = int.from_bytes(value[:4], "little") & 3
                result.append(EspDatagram(data, addr[0], ecn))
        except BlockingIOError:
            pass
        except OSError:
            self.counters["recv_errors"] += 1
        self.counters["received"] += len(result)
        return result

    def send_esp(self, esp: bytes, dst: str | None = None, *, tos: int = 0, df: bool = False) -> bool:
        """Send an ESP packet (from the SPI on) to ``dst`` or the connected peer; False on a counted drop.

        ``tos`` is the outer TOS/traffic class byte (ECN bits included, RFC 6040); ``df`` sets the
        outer IPv4 DF bit.
        """
        if self.kernel_header:
            raise ValueError("a kernel_header socket sends tunnel-mode ESP through tunnel_sender()")
        if self.family == socket.AF_INET:
            peer = self._v4_peer if dst is None else socket.inet_aton(dst)
            if peer is None:
                raise ValueError("no destination: pass dst or connect the socket to a peer")
            header = bytes((0x45, tos, 0, 0, 0, 0, 0x40 if df else 0, 0)) + self._v4_tail + peer
            return self.send(header + esp, dst)
        try:
            if tos:
                cmsg = [(socket.IPPROTO_IPV6, IPV6_TCLASS, tos.to_bytes(4, "little"))]
                self._sock.sendmsg([esp], cmsg, 0, *(() if dst is None else ((dst, 0, 0, 0),)))
            elif dst is None:
                self._sock.send(esp)
            else:
                self._sock.sendto(esp, (dst, 0, 0, 0))
        except OSError as exc:
            return self._send_failed(exc)
        self.counters["sent"] += 1
        return True

    def send(self, packet: bytes, dst: str | None = None) -> bool:
        """Send bytes as they are (IPv4: a whole packet with our outer header)."""
        try:
            if dst is None:
                self._sock.send(packet)
            else:
                self._sock.sendto(packet, (dst, 0))
        except OSError as exc:
            return self._send_failed(exc)
        self.counters["sent"] += 1
        return True

    def sender(self, dst: str | None = None) -> Callable[[bytes], bool]:
        """``send`` bound to one destination as a closure: the per-packet path skips two calls
        and the address checks. IPv4: whole packets with our outer header; IPv6: ESP only."""
        sock_send, counters, failed = self._sock.send, self.counters, self._send_failed
        if dst is None:
            def send_connected(packet: bytes) -> bool:
                try:
                    sock_send(packet)
                except OSError as exc:
                    return failed(exc)
                counters["sent"] += 1
                return True
            return send_connected
        address = (dst, 0) if self.family == socket.AF_INET else (dst, 0, 0, 0)
        sendto = self._sock.sendto

        def send_to(packet: bytes) -> bool:
            try:
                sendto(packet, address)
            except OSError as exc:
                return failed(exc)
            counters["sent"] += 1
            return True
        return send_to

    def tunnel_sender(self, dst: str, source: str | None = None) -> Callable[[bytes, bytes], bool]:
        """With ``kernel_header``: a closure ``send(esp, inner)`` to ``dst``, one Python call per packet.

        ``source`` other than the bound address (e.g. a wildcard socket) goes into an IP_PKTINFO
        control message with every packet, so the outer source is the SA's own address. The
        outer TOS byte and DF bit are socket options, set only when a packet needs other values
        than the last one, so a steady flow costs one ``sendto`` per packet. They come from the
        inner packet: RFC 6040 normal mode copies DSCP and
        ECN; DF is copied from an inner IPv4 header and always set for inner IPv6 (it is never
        fragmented en route).
        """
        if not self.kernel_header:
            raise ValueError("tunnel_sender needs an IPv4 socket made with kernel_header=True")
        sock = self._sock
        setsockopt, counters, failed = sock.setsockopt, self.counters, self._send_failed
        sendto, sendmsg = sock.sendto, sock.sendmsg
        address = (dst, 0)
        pktinfo = None
        if source is not None and source != self.local_addr:
            pktinfo = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", 0, socket.inet_aton(source), bytes(4)))]
        ip_level, ip_tos, mtu_discover = socket.IPPROTO_IP, socket.IP_TOS, IP_MTU_DISCOVER

        def send(esp: bytes, inner: bytes) -> bool:
            if inner[0] >> 4 == 4:
                tos, df = inner[1], inner[6] & 0x40 != 0
            else:
                tos, df = (inner[0] & 0x0F) << 4 | inner[1] >> 4, True
            try:
                if tos != self._tos or df != self._df:
                    if tos != self._tos:
                        setsockopt(ip_level, ip_tos, tos)
                        self._tos = tos
                    if df != self._df:
                        setsockopt(ip_level, mtu_discover, IP_PMTUDISC_DO if df else IP_PMTUDISC_DONT)
                        self._df = df
                if pktinfo is None:
                    sendto(esp, address)
                else:
                    sendmsg([esp], pktinfo, 0, address)
            except OSError as exc:
                return failed(exc)
            counters["sent"] += 1
            return True
        return send

    def _send_failed(self, exc: OSError) -> bool:
        if exc.errno not in TRANSIENT_SEND:
            raise exc
        self.counters["send_dropped"] += 1
        return False

    def path_mtu(self) -> int | None:
        """The kernel's path MTU to the connected peer (IP_MTU / IPV6_MTU), or None if not connected."""
        if self.peer_addr is None:
            return None
        level, option = ((socket.IPPROTO_IP, IP_MTU) if self.family == socket.AF_INET
                         else (socket.IPPROTO_IPV6, IPV6_MTU))
        try:
            return self._sock.getsockopt(level, option)
        except OSError:
            return None

    def close(self) -> None:
        self._sock.close()

    def __repr__(self) -> str:
        return f"RawEspSocket(local={self.local_addr!r}, peer={self.peer_addr!r})"
