"""Sockets of the data and control plane: raw ESP (IP protocol 50) and UDP 500/4500.

All sockets are non-blocking with large buffers; reads come in batches (read until EAGAIN, up
to ``max_packets``) so the daemon polls once per burst, not once per packet. Send failures that
only mean "the queue is full" or "the peer is gone for now" (EAGAIN, ENOBUFS, ENOPROTOOPT from an
overflowing raw socket, ECONNREFUSED, EHOSTUNREACH, ...) are counted drops, never exceptions.

``RawEspSocket``: IPv4 uses IP_HDRINCL so the outer header is ours (``send_esp`` builds it from a
per-socket template; the kernel fills length, checksum and ID), unless ``kernel_header=True``: then
the kernel builds it (about 1 us less per packet) and TOS and DF come from socket options, set only
when they change. IPv6 always lets the kernel build the header.
``UdpIkeSockets``: IKE on 500 and 4500, ESP-in-UDP and NAT keepalives on 4500 (RFC 3948), with
the local address each datagram arrived at (IP_PKTINFO / IPV6_RECVPKTINFO).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from typing import Callable, Iterable, NamedTuple

import structlog

from tunnel.kernel.drain import pending_probe

__all__ = ["RawEspSocket", "UdpIkeSockets", "UdpEndpoint", "EspDatagram", "UdpDatagram", "NON_ESP_MARKER",
           "parse_ipv4_esp"]

log = structlog.get_logger(__name__)

IPPROTO_ESP = 50
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 s2.2: precedes IKE messages on port 4500
NAT_KEEPALIVE = b"\xff"  # RFC 3948 s2.3
DEFAULT_BUFFER = 8 * 1024 * 1024
_MAX_DATAGRAM = 65535

# Linux values the socket module may not export.
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IP_RECVTOS = getattr(socket, "IP_RECVTOS", 13)
_IP_MTU = getattr(socket, "IP_MTU", 14)
_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IP_PMTUDISC_DONT = getattr(socket, "IP_PMTUDISC_DONT", 0)  # DF clear; the kernel fragments if needed
_IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)  # DF set; too big is EMSGSIZE (a counted drop)
_IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_IPV6_MTU = getattr(socket, "IPV6_MTU", 24)
_IPV6_RECVTCLASS = getattr(socket, "IPV6_RECVTCLASS", 66)
_IPV6_TCLASS = getattr(socket, "IPV6_TCLASS", 67)
_SOL_UDP = 17
_UDP_SEGMENT = 103
_UDP_GRO = 104
_MAX_GSO_SEGMENTS = 64  # UDP_MAX_SEGMENTS in the kernel

# Errors that mean "this packet did not go out now", not "the socket is broken".
_TRANSIENT_SEND = frozenset((errno.EAGAIN, errno.ENOBUFS, errno.ENOPROTOOPT, errno.ECONNREFUSED,
                             errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EMSGSIZE, errno.EPERM,
                             errno.EADDRNOTAVAIL, errno.EINVAL))
_ANC_SPACE = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(4) + socket.CMSG_SPACE(4)


def _big_buffers(sock: socket.socket, size: int) -> None:
    """Use SO_*BUFFORCE (root, beyond net.core.*mem_max) and fall back to the capped options."""
    for force, plain in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF), (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


def _family(addr: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET


class EspDatagram(NamedTuple):
    """A received ESP packet: ``esp`` starts at the SPI; ``src`` is the outer source; ``ecn`` its 2 ECN bits."""

    esp: bytes
    src: str
    ecn: int


class UdpDatagram(NamedTuple):
    """A received UDP datagram: ``kind`` is "ike" (marker stripped) or "esp" (starts at the SPI)."""

    kind: str
    data: bytes
    remote: tuple[str, int]
    local: tuple[str, int]
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
        if family not in (socket.AF_INET, socket.AF_INET6) or _family(local_addr) != family:
            raise ValueError(f"local address {local_addr} does not match the address family")
        self.family = family
        self.local_addr = local_addr
        self.peer_addr = peer_addr
        self.counters = {"received": 0, "recv_malformed": 0, "recv_errors": 0, "sent": 0, "send_dropped": 0}
        self._sock = socket.socket(family, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, IPPROTO_ESP)
        try:
            _big_buffers(self._sock, buffer_size)
            if family == socket.AF_INET:
                if kernel_header:
                    self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
                    self._sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DONT)
                else:
                    self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
                self._sock.bind((local_addr, 0))
            else:
                self._sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVTCLASS, 1)
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
                packets.append(recv(_MAX_DATAGRAM))
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
                data, ancdata, _flags, addr = recvmsg(_MAX_DATAGRAM, _ANC_SPACE)
                if len(data) < 8:
                    self.counters["recv_malformed"] += 1
                    continue
                ecn = 0
                for level, kind, value in ancdata:
                    if level == socket.IPPROTO_IPV6 and kind == _IPV6_TCLASS and len(value) >= 4:
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
            return self.esp_sender(dst)(esp, tos, df)
        if self.family == socket.AF_INET:
            peer = self._v4_peer if dst is None else socket.inet_aton(dst)
            if peer is None:
                raise ValueError("no destination: pass dst or connect the socket to a peer")
            header = bytes((0x45, tos, 0, 0, 0, 0, 0x40 if df else 0, 0)) + self._v4_tail + peer
            return self.send(header + esp, dst)
        try:
            if tos:
                cmsg = [(socket.IPPROTO_IPV6, _IPV6_TCLASS, tos.to_bytes(4, "little"))]
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

    def esp_sender(self, dst: str | None = None, source: str | None = None) -> Callable[[bytes, int, bool], bool]:
        """With ``kernel_header``: a closure ``send(esp, tos, df)`` to ``dst`` (or the connected peer).

        ``source`` other than the bound address (e.g. a wildcard socket) goes into an IP_PKTINFO
        control message with every packet, so the outer source is the SA's own address.
        The outer TOS byte and DF bit are socket options here; they are set only when a packet
        needs other values than the last one, so a steady flow costs one ``sendto`` per packet.
        """
        if not self.kernel_header:
            raise ValueError("esp_sender needs an IPv4 socket made with kernel_header=True")
        sock = self._sock
        setsockopt, counters, failed = sock.setsockopt, self.counters, self._send_failed
        sock_send, sendto, sendmsg = sock.send, sock.sendto, sock.sendmsg
        address = None if dst is None else (dst, 0)
        pktinfo = None
        if source is not None and source != self.local_addr:
            if address is None:
                raise ValueError("a source address needs an explicit destination")
            pktinfo = [(socket.IPPROTO_IP, _IP_PKTINFO, struct.pack("=I4s4s", 0, socket.inet_aton(source), bytes(4)))]

        def send(esp: bytes, tos: int, df: bool) -> bool:
            try:
                if tos != self._tos or df != self._df:
                    if tos != self._tos:
                        setsockopt(socket.IPPROTO_IP, socket.IP_TOS, tos)
                        self._tos = tos
                    if df != self._df:
                        setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO if df else _IP_PMTUDISC_DONT)
                        self._df = df
                if pktinfo is not None:
                    sendmsg([esp], pktinfo, 0, address)
                elif address is None:
                    sock_send(esp)
                else:
                    sendto(esp, address)
            except OSError as exc:
                return failed(exc)
            counters["sent"] += 1
            return True
        return send

    def tunnel_sender(self, dst: str, source: str | None = None) -> Callable[[bytes, bytes], bool]:
        """``esp_sender`` for tunnel mode as one closure ``send(esp, inner)``, one Python call per packet.

        The outer TOS and DF come from the inner packet: RFC 6040 normal mode copies DSCP and
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
            pktinfo = [(socket.IPPROTO_IP, _IP_PKTINFO, struct.pack("=I4s4s", 0, socket.inet_aton(source), bytes(4)))]
        ip_level, ip_tos, mtu_discover = socket.IPPROTO_IP, socket.IP_TOS, _IP_MTU_DISCOVER

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
                        setsockopt(ip_level, mtu_discover, _IP_PMTUDISC_DO if df else _IP_PMTUDISC_DONT)
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
        if exc.errno not in _TRANSIENT_SEND:
            raise exc
        self.counters["send_dropped"] += 1
        return False

    def path_mtu(self) -> int | None:
        """The kernel's path MTU to the connected peer (IP_MTU / IPV6_MTU), or None if not connected."""
        if self.peer_addr is None:
            return None
        level, option = ((socket.IPPROTO_IP, _IP_MTU) if self.family == socket.AF_INET
                         else (socket.IPPROTO_IPV6, _IPV6_MTU))
        try:
            return self._sock.getsockopt(level, option)
        except OSError:
            return None

    def close(self) -> None:
        self._sock.close()

    def __repr__(self) -> str:
        return f"RawEspSocket(local={self.local_addr!r}, peer={self.peer_addr!r})"


def _ecn_and_segment(ancdata) -> tuple[int, int]:
    """The outer ECN bits (IP_TOS / IPV6_TCLASS) and the UDP GRO segment size (0: one datagram)."""
    ecn = segment = 0
    for level, kind, value in ancdata:
        if level == socket.IPPROTO_IP:
            if kind == socket.IP_TOS and value:
                ecn = value[0] & 3
        elif level == socket.IPPROTO_IPV6:
            if kind == _IPV6_TCLASS and len(value) >= 4:
                ecn = int.from_bytes(value[:4], "little") & 3
        elif level == _SOL_UDP and kind == _UDP_GRO and len(value) >= 2:
            segment = int.from_bytes(value[:2] if len(value) == 2 else value[:4], "little")
    return ecn, segment


class UdpEndpoint:
    """One bound UDP socket. On a NAT-T port (not 500) datagrams carry RFC 3948 framing."""

    def __init__(self, local_addr: str, port: int, *, natt: bool, buffer_size: int = DEFAULT_BUFFER,
                 gro: bool = False) -> None:
        self.family = _family(local_addr)
        self.local_addr = local_addr
        self.natt = natt
        self.counters = {"ike": 0, "esp": 0, "keepalive": 0, "malformed": 0, "recv_errors": 0, "sent": 0,
                         "send_dropped": 0, "gso_sends": 0}
        self._sock = socket.socket(self.family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            _big_buffers(self._sock, buffer_size)
            # the local address of each datagram only where the bind leaves it open
            pktinfo = int(ipaddress.ip_address(local_addr).is_unspecified)
            if self.family == socket.AF_INET6:
                self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                self._sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, pktinfo)
                self._sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVTCLASS, 1)
            else:
                self._sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, pktinfo)
                self._sock.setsockopt(socket.IPPROTO_IP, _IP_RECVTOS, 1)
            self._sock.bind((local_addr, port))
        except OSError:
            self._sock.close()
            raise
        self.port = self._sock.getsockname()[1]  # port 0 asks the kernel for one (tests)
        self.fd = self._sock.fileno()
        self._more = pending_probe(self.fd)
        self.wildcard = ipaddress.ip_address(local_addr).is_unspecified
        self.gro = False
        if gro and natt:
            try:
                self._sock.setsockopt(_SOL_UDP, _UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass

    def fileno(self) -> int:
        return self.fd

    def _parse_ancillary(self, ancdata) -> tuple[str, int, int]:
        """(local address the datagram was sent to, outer ECN bits, GRO segment size or 0)."""
        ecn, segment = _ecn_and_segment(ancdata)
        return self._local_address(ancdata), ecn, segment

    def _local_address(self, ancdata) -> str:
        for level, kind, value in ancdata:
            if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(value) >= 12:
                return socket.inet_ntoa(value[8:12])  # ipi_addr: the header's destination
            if level == socket.IPPROTO_IPV6 and kind == _IPV6_PKTINFO and len(value) >= 16:
                return socket.inet_ntop(socket.AF_INET6, value[:16])
        return self.local_addr

    def _classify(self, data: bytes, remote, local, ecn: int, out: list) -> None:
        if not self.natt:
            if data:
                self.counters["ike"] += 1
                out.append(UdpDatagram("ike", data, remote, local, ecn))
            else:
                self.counters["malformed"] += 1
        elif data[:4] == NON_ESP_MARKER:
            if len(data) > 4:
                self.counters["ike"] += 1
                out.append(UdpDatagram("ike", data[4:], remote, local, ecn))
            else:
                self.counters["malformed"] += 1
        elif data == NAT_KEEPALIVE:
            self.counters["keepalive"] += 1
        elif len(data) >= 8:
            self.counters["esp"] += 1
            out.append(UdpDatagram("esp", data, remote, local, ecn))
        else:
            self.counters["malformed"] += 1

    def read_batch(self, max_packets: int = 64) -> list[UdpDatagram]:
        """Received IKE and ESP datagrams up to EAGAIN; keepalives and junk are counted and dropped."""
        out: list[UdpDatagram] = []
        recvmsg, more = self._sock.recvmsg, self._more
        port = self.port
        try:
            for i in range(max_packets):
                if i == 1 and not more(0):  # a lone packet: no failing read (tunnel.kernel.drain)
                    break
                data, ancdata, _flags, addr = recvmsg(_MAX_DATAGRAM, _ANC_SPACE)
                local, ecn, segment = self._parse_ancillary(ancdata)
                remote = (addr[0], addr[1])
                if segment and len(data) > segment:  # GRO coalesced several datagrams of one flow
                    for start in range(0, len(data), segment):
                        self._classify(data[start:start + segment], remote, (local, port), ecn, out)
                else:
                    self._classify(data, remote, (local, port), ecn, out)
        except BlockingIOError:
            pass
        except OSError:  # ICMP port unreachable etc. reported on the socket; the next read goes on
            self.counters["recv_errors"] += 1
        return out

    def read_esp_batch(self, max_packets: int = 64) -> tuple[list[tuple[list[bytes], int]], list[UdpDatagram]]:
        """``read_batch`` for the data path: ESP as (packets, ECN bits) per datagram read, the rest apart.

        A UDP GRO datagram becomes its segments in one list without a tuple or a call per
        packet; a read holding anything but ESP (an IKE message, a keepalive, a runt) goes
        through ``_classify`` as in ``read_batch``. Returns (ESP runs, IKE datagrams).
        """
        runs: list[tuple[list[bytes], int]] = []
        others: list[UdpDatagram] = []
        recvmsg, more = self._sock.recvmsg, self._more
        counters = self.counters
        natt = self.natt
        esp = 0
        try:
            for i in range(max_packets):
                if i == 1 and not more(0):  # a lone packet: no failing read (tunnel.kernel.drain)
                    break
                data, ancdata, _flags, addr = recvmsg(_MAX_DATAGRAM, _ANC_SPACE)
                ecn, segment = _ecn_and_segment(ancdata)  # the local address only if IKE needs it
                if segment and len(data) > segment:  # GRO coalesced several datagrams of one flow
                    parts = [data[start:start + segment] for start in range(0, len(data), segment)]
                    is_esp = natt and all(len(p) >= 8 and p[:4] != NON_ESP_MARKER for p in parts)
                else:
                    parts = [data]
                    is_esp = natt and len(data) >= 8 and data[:4] != NON_ESP_MARKER
                # ESP: at least an SPI and a sequence number, and no non-ESP marker (SPI 0)
                if is_esp:
                    runs.append((parts, ecn))
                    esp += len(parts)
                else:
                    classified: list[UdpDatagram] = []
                    remote, local_port = (addr[0], addr[1]), (self._local_address(ancdata), self.port)
                    for part in parts:
                        self._classify(part, remote, local_port, ecn, classified)
                    others += [d for d in classified if d.kind != "esp"]
                    esp_parts = [d.data for d in classified if d.kind == "esp"]  # counted by _classify
                    if esp_parts:
                        runs.append((esp_parts, ecn))
        except BlockingIOError:
            pass
        except OSError:  # ICMP port unreachable etc. reported on the socket; the next read goes on
            counters["recv_errors"] += 1
        counters["esp"] += esp
        return runs, others

    def _source_cmsg(self, source: str | None) -> list:
        if source is None or not self.wildcard:
            return []
        if self.family == socket.AF_INET:
            # in_pktinfo: ifindex 0, ipi_spec_dst = the source address we want
            return [(socket.IPPROTO_IP, _IP_PKTINFO, struct.pack("=I4s4s", 0, socket.inet_aton(source), bytes(4)))]
        return [(socket.IPPROTO_IPV6, _IPV6_PKTINFO, socket.inet_pton(socket.AF_INET6, source) + bytes(4))]

    def send(self, data: bytes, remote: tuple[str, int], source: str | None = None) -> bool:
        """Send one datagram as is; ``source`` picks the local address when bound to a wildcard."""
        try:
            cmsg = self._source_cmsg(source)
            if cmsg:
                self._sock.sendmsg([data], cmsg, 0, remote)
            else:
                self._sock.sendto(data, remote)
        except OSError as exc:
            if exc.errno not in _TRANSIENT_SEND:
                raise
            self.counters["send_dropped"] += 1
            return False
        self.counters["sent"] += 1
        return True

    def send_ike(self, message: bytes, remote: tuple[str, int], source: str | None = None) -> bool:
        return self.send(NON_ESP_MARKER + message if self.natt else message, remote, source)

    def send_esp_batch(self, packets: list[bytes], remote: tuple[str, int], source: str | None = None) -> int:
        """Send ESP-in-UDP datagrams, runs of equal size in one UDP_SEGMENT (GSO) call; returns how many went."""
        return self.esp_batch_sender(remote, source)(packets)

    def esp_batch_sender(self, remote: tuple[str, int], source: str | None = None) -> Callable[[list[bytes]], int]:
        """``send_esp_batch`` bound to one peer as a closure, control messages built once.

        The common batch (equal sizes but a shorter last one, at most 64 and 64 KB) is checked
        in C (``set(map(len, ...))``) and goes out in one ``sendmsg``; others are split into runs.
        """
        sock, counters, send_one = self._sock, self.counters, self.send
        source_cmsg = self._source_cmsg(source)
        segment_cmsgs: dict[int, list] = {}

        def send_run(run: list[bytes], size: int) -> int:
            cmsg = segment_cmsgs.get(size)
            if cmsg is None:
                if len(segment_cmsgs) > 64:
                    segment_cmsgs.clear()
                cmsg = segment_cmsgs[size] = source_cmsg + [(_SOL_UDP, _UDP_SEGMENT, struct.pack("=H", size))]
            try:  # the packets as the iovec: the kernel gathers them, no 64 KB join here
                sock.sendmsg(run, cmsg, 0, remote)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.ENOBUFS):
                    counters["send_dropped"] += len(run)
                    return 0
                # GSO refused (no support, or a route that cannot segment): one by one
                return sum(send_one(p, remote, source) for p in run)
            counters["sent"] += len(run)
            counters["gso_sends"] += 1
            return len(run)

        def send_batch(packets: list[bytes]) -> int:
            count = len(packets)
            if count == 1:
                return send_one(packets[0], remote, source)
            size = len(packets[0])
            # GSO: every segment but the last has the same size; the last may be shorter.
            if (count <= _MAX_GSO_SEGMENTS and count * size <= 65000 and len(packets[-1]) <= size
                    and len(set(map(len, packets[:-1]))) == 1):
                return send_run(packets, size)
            sent = i = 0
            while i < count:
                size = len(packets[i])
                j = i + 1
                while (j < count and j - i < _MAX_GSO_SEGMENTS and len(packets[j - 1]) == size
                       and len(packets[j]) <= size and (j - i + 1) * size <= 65000):
                    j += 1
                sent += send_run(packets[i:j], size) if j - i > 1 else send_one(packets[i], remote, source)
                i = j
            return sent

        return send_batch

    def close(self) -> None:
        self._sock.close()

    def __repr__(self) -> str:
        return f"UdpEndpoint({self.local_addr!r}, {self.port}, natt={self.natt})"


class UdpIkeSockets:
    """UDP sockets for IKE and ESP-in-UDP on every local address × port.

    ``ports[0]`` is the IKE port (500, plain IKE), the others are NAT-T ports (4500) with the
    RFC 3948 framing. ``read_batch(fd)`` reads the endpoint owning ``fd`` (from a selector);
    the send methods pick the endpoint by local address and port.
    """

    def __init__(self, local_addrs: Iterable[str], ports: tuple[int, ...] = (500, 4500), *,
                 buffer_size: int = DEFAULT_BUFFER, gro: bool = False) -> None:
        self.ports = tuple(ports)
        self.endpoints: list[UdpEndpoint] = []
        try:
            for addr in local_addrs:
                for index, port in enumerate(self.ports):
                    self.endpoints.append(UdpEndpoint(addr, port, natt=index > 0, buffer_size=buffer_size, gro=gro))
        except OSError:
            self.close()
            raise
        self._by_fd = {ep.fd: ep for ep in self.endpoints}

    @property
    def nat_port(self) -> int:
        """The bound NAT-T port (4500, or what the kernel chose for a port 0 in tests)."""
        return next(ep.port for ep in self.endpoints if ep.natt)

    @property
    def ike_port(self) -> int:
        return next(ep.port for ep in self.endpoints if not ep.natt)

    def fds(self) -> list[int]:
        return list(self._by_fd)

    def read_batch(self, fd: int, max_packets: int = 64) -> list[UdpDatagram]:
        return self._by_fd[fd].read_batch(max_packets)

    def read_esp_batch(self, fd: int, max_packets: int = 64) -> tuple[list[tuple[list[bytes], int]], list[UdpDatagram]]:
        return self._by_fd[fd].read_esp_batch(max_packets)

    def endpoint(self, local: tuple[str, int] | None, remote: tuple[str, int], natt: bool) -> UdpEndpoint:
        """The endpoint to send from: bound to ``local`` (address, port), or to its wildcard."""
        family = _family(remote[0])
        candidates = [ep for ep in self.endpoints if ep.family == family and ep.natt == natt]
        if local is not None:
            candidates = [ep for ep in candidates if ep.port == local[1]] or candidates
            exact = [ep for ep in candidates if ep.local_addr == local[0]]
            candidates = exact or [ep for ep in candidates if ep.wildcard]
        if not candidates:
            raise ValueError(f"no UDP socket to send from {local} to {remote}")
        return candidates[0]

    def send_ike(self, message: bytes, remote: tuple[str, int], local: tuple[str, int] | None = None) -> bool:
        """Send an IKE message; on a NAT-T port (chosen by ``local``'s port) it gets the non-ESP marker."""
        natt = local is not None and local[1] != self.ike_port
        return self.endpoint(local, remote, natt).send_ike(message, remote, local[0] if local else None)

    def send_esp(self, esp: bytes, remote: tuple[str, int], local: tuple[str, int] | None = None) -> bool:
        """Send one ESP-in-UDP packet (from the SPI on) from the NAT-T port."""
        return self.endpoint(local, remote, True).send(esp, remote, local[0] if local else None)

    def send_esp_batch(self, packets: list[bytes], remote: tuple[str, int],
                       local: tuple[str, int] | None = None) -> int:
        return self.endpoint(local, remote, True).send_esp_batch(packets, remote, local[0] if local else None)

    def send_keepalive(self, remote: tuple[str, int], local: tuple[str, int] | None = None) -> bool:
        """A NAT keepalive (RFC 3948 s2.3, one 0xFF byte) from the NAT-T port."""
        return self.endpoint(local, remote, True).send(NAT_KEEPALIVE, remote, local[0] if local else None)

    @property
    def counters(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for ep in self.endpoints:
            for key, value in ep.counters.items():
                total[key] = total.get(key, 0) + value
        return total

    def close(self) -> None:
        for ep in self.endpoints:
            ep.close()
