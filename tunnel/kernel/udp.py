"""UDP 500 and 4500: IKE, ESP-in-UDP and NAT keepalives (RFC 3948).

``UdpIkeSockets`` holds one socket per local address and port and reports the local address each
datagram arrived at (IP_PKTINFO / IPV6_RECVPKTINFO). On 4500 an IKE message follows the non-ESP
marker, a lone 0xff is a keepalive and anything else is ESP; ESP leaves in UDP GSO batches and
arrives in UDP GRO runs. All sockets are non-blocking with large buffers; send failures that only
mean "not now" are counted drops, never exceptions.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Callable, Iterable
from typing import NamedTuple

import structlog

from ike.codec.constants import NON_ESP_MARKER
from tunnel.kernel.drain import pending_probe
from tunnel.kernel.socket_options import (ANC_SPACE, DEFAULT_BUFFER, IPV6_PKTINFO, IPV6_RECVPKTINFO, IPV6_RECVTCLASS,
                                           IPV6_TCLASS, IP_PKTINFO, IP_RECVTOS, MAX_DATAGRAM, MAX_GSO_SEGMENTS,
                                           SOL_UDP, TRANSIENT_SEND, UDP_GRO, UDP_SEGMENT, address_family,
                                           big_buffers)

__all__ = ["UdpIkeSockets", "UdpEndpoint", "UdpDatagram", "NAT_KEEPALIVE"]

log = structlog.get_logger(__name__)

NAT_KEEPALIVE = b"\xff"  # RFC 3948 s2.3


class UdpDatagram(NamedTuple):
    """A received UDP datagram: ``kind`` is "ike" (marker stripped) or "esp" (starts at the SPI)."""

    kind: str
    data: bytes
    remote: tuple[str, int]
    local: tuple[str, int]
    ecn: int


def _ecn_and_segment(ancdata) -> tuple[int, int]:
    """The outer ECN bits (IP_TOS / IPV6_TCLASS) and the UDP GRO segment size (0: one datagram)."""
    ecn = segment = 0
    for level, kind, value in ancdata:
        if level == socket.IPPROTO_IP:
            if kind == socket.IP_TOS and value:
                ecn = value[0] & 3
        elif level == socket.IPPROTO_IPV6:
            if kind == IPV6_TCLASS and len(value) >= 4:
                ecn = int.from_bytes(value[:4], "little") & 3
        elif level == SOL_UDP and kind == UDP_GRO and len(value) >= 2:
            segment = int.from_bytes(value[:2] if len(value) == 2 else value[:4], "little")
    return ecn, segment


class UdpEndpoint:
    """One bound UDP socket. On a NAT-T port (not 500) datagrams carry RFC 3948 framing."""

    def __init__(self, local_addr: str, port: int, *, natt: bool, buffer_size: int = DEFAULT_BUFFER,
                 gro: bool = False) -> None:
        self.family = address_family(local_addr)
        self.local_addr = local_addr
        self.natt = natt
        self.counters = {"ike": 0, "esp": 0, "keepalive": 0, "malformed": 0, "recv_errors": 0, "sent": 0,
                         "send_dropped": 0, "gso_sends": 0}
        self._sock = socket.socket(self.family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            big_buffers(self._sock, buffer_size)
            # the local address of each datagram only where the bind leaves it open
            pktinfo = int(ipaddress.ip_address(local_addr).is_unspecified)
            if self.family == socket.AF_INET6:
                self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                self._sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, pktinfo)
                self._sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVTCLASS, 1)
            else:
                self._sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)
                self._sock.setsockopt(socket.IPPROTO_IP, IP_RECVTOS, 1)
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
                self._sock.setsockopt(SOL_UDP, UDP_GRO, 1)
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
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(value) >= 12:
                return socket.inet_ntoa(value[8:12])  # ipi_addr: the header's destination
            if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(value) >= 16:
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
                data, ancdata, _flags, addr = recvmsg(MAX_DATAGRAM, ANC_SPACE)
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

    def read_esp_batch(self, max_packets: int = 64, sources: list | None = None
                       ) -> tuple[list[tuple[list[bytes], int]], list[UdpDatagram]]:
        """``read_batch`` for the data path: ESP as (packets, ECN bits) per datagram read, the rest apart.

        A UDP GRO datagram becomes its segments in one list without a tuple or a call per
        packet; a read holding anything but ESP (an IKE message, a keepalive, a runt) goes
        through ``_classify`` as in ``read_batch``. Returns (ESP runs, IKE datagrams); with
        ``sources``, the sender's (address, port) of each ESP run is appended to it, in order.
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
                data, ancdata, _flags, addr = recvmsg(MAX_DATAGRAM, ANC_SPACE)
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
                    if sources is not None:
                        sources.append(addr)
                else:
                    classified: list[UdpDatagram] = []
                    remote, local_port = (addr[0], addr[1]), (self._local_address(ancdata), self.port)
                    for part in parts:
                        self._classify(part, remote, local_port, ecn, classified)
                    others += [d for d in classified if d.kind != "esp"]
                    esp_parts = [d.data for d in classified if d.kind == "esp"]  # counted by _classify
                    if esp_parts:
                        runs.append((esp_parts, ecn))
                        if sources is not None:
                            sources.append(addr)
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
            return [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", 0, socket.inet_aton(source), bytes(4)))]
        return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, socket.inet_pton(socket.AF_INET6, source) + bytes(4))]

    def send(self, data: bytes, remote: tuple[str, int], source: str | None = None) -> bool:
        """Send one datagram as is; ``source`` picks the local address when bound to a wildcard."""
        try:
            cmsg = self._source_cmsg(source)
            if cmsg:
                self._sock.sendmsg([data], cmsg, 0, remote)
            else:
                self._sock.sendto(data, remote)
        except OSError as exc:
            if exc.errno not in TRANSIENT_SEND:
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
                cmsg = segment_cmsgs[size] = source_cmsg + [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
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
            if (count <= MAX_GSO_SEGMENTS and count * size <= 65000 and len(packets[-1]) <= size
                    and len(set(map(len, packets[:-1]))) == 1):
                return send_run(packets, size)
            sent = i = 0
            while i < count:
                size = len(packets[i])
                j = i + 1
                while (j < count and j - i < MAX_GSO_SEGMENTS and len(packets[j - 1]) == size
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

    def read_esp_batch(self, fd: int, max_packets: int = 64, sources: list | None = None
                       ) -> tuple[list[tuple[list[bytes], int]], list[UdpDatagram]]:
        return self._by_fd[fd].read_esp_batch(max_packets, sources)

    def endpoint(self, local: tuple[str, int] | None, remote: tuple[str, int], natt: bool) -> UdpEndpoint:
        """The endpoint to send from: bound to ``local`` (address, port), or to its wildcard."""
        family = address_family(remote[0])
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
