"""Receive offload towards the TUN: in-order TCP segments of one flow leave as one super-packet.

Each packet written to the TUN is one trip through the kernel's forwarding path and the
receiver's TCP stack, and each earns an ACK that comes back through the tunnel. Linux's own GRO
merges such segments on a NIC; a TUN without a virtio-net header cannot. ``TcpCoalescer`` does
it for one receive batch: decrypted packets go in with ``add``, ``flush`` at the end of the batch
writes every flow's merged segments as one packet with a virtio-net header asking for TCP
segmentation offload (GSO_TCPV4/6, MSS = the first segment's payload) and checksum offload
(NEEDS_CSUM). The kernel forwards the super-packet as is to a GSO-capable device, or splits it
again with correct checksums where it must.

The merge rules are those of the kernel's tcp_gro_receive, so the receiver sees what a NIC with
GRO would give it: same addresses, ports, TOS/traffic class, TTL/hop limit, DF, ACK number,
window and TCP options (timestamps included), sequence numbers back to back, flags ACK (PSH
allowed and ending the run), every segment but the last of the same size, no IP options, IPv6
extension headers or fragments. UDP datagrams of one flow merge the same way into one
GSO_UDP_L4 packet (equal sizes but the last, same IP header fields): the kernel splits them again
at the original boundaries, in C, where a socket without UDP_GRO needs them. Anything else passes
through unchanged, after the queued packets of its own flow, so no flow is reordered. The segments'
own checksums are not verified (that costs more than the merge saves); the ESP ICV already vouches
for every byte since the peer.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["TcpCoalescer", "vnet_header", "GSO_TCPV4", "GSO_TCPV6", "GSO_UDP_L4", "NEEDS_CSUM"]

NEEDS_CSUM = 1  # VIRTIO_NET_HDR_F_NEEDS_CSUM
GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4 = 1, 4, 5  # VIRTIO_NET_HDR_GSO_*
MAX_IP_PACKET = 65535
_TCP_ACK, _TCP_PSH = 0x10, 0x08
_ACK_PSH = 0x18
_VNET = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset (host order)
_IPV4_WORDS = struct.Struct("!10H")
_H = struct.Struct("!H")
_TCP, _UDP = 6, 17


class _Layout(NamedTuple):
    """Where an IP version keeps what the fast path reads, as offsets into the packet."""

    min_len: int  # shortest packet the fast path looks at
    ip_len: int  # the fixed IP header (no options, no extension headers)
    flow_key: slice  # source and destination address and ports
    next_header: int  # protocol / next header
    tcp_min: int  # shortest packet with a whole TCP header
    fixed_a: slice  # IP header bytes every segment of a run shares: IPv4 version..total length,
    fixed_b: slice  # and flags/fragment, TTL, protocol; IPv6 version..hop limit (fixed_b empty)
    udp_length: slice  # the UDP length field
    seq: slice  # the TCP sequence number
    ack_to_window: slice  # TCP ACK number, data offset, flags, window


_IPV4 = _Layout(40, 20, slice(12, 24), 9, 40, slice(0, 4), slice(6, 10), slice(24, 26), slice(24, 28), slice(28, 36))
_IPV6 = _Layout(48, 40, slice(8, 44), 6, 60, slice(0, 8), slice(0, 0), slice(44, 46), slice(44, 48), slice(48, 56))
# by the first byte: 0x45 is IPv4 without options, 0x60-0x6f IPv6 (version and traffic class bits)
_LAYOUTS: tuple[_Layout | None, ...] = tuple(
    _IPV4 if first == 0x45 else _IPV6 if first >> 4 == 6 else None for first in range(256))


def vnet_header(gso_type: int, header_len: int, mss: int, ip_header_len: int) -> bytes:
    """The virtio-net header of a super-packet: segment at ``mss``, fill in the TCP/UDP checksum."""
    return _VNET.pack(NEEDS_CSUM, gso_type, header_len, mss, ip_header_len, 6 if gso_type == GSO_UDP_L4 else 16)


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


class _Run:
    """Segments of one flow waiting to be merged: the first packet, then the packets that follow.

    ``ip_a``, ``ip_b``, ``tcp_a``, ``tcp_b`` are the first packet's header slices a follower of
    the same size must match byte for byte (everything but IPv4 ID and checksum, sequence
    number and TCP checksum), so the common case costs a few slice compares.
    """

    __slots__ = ("key", "first", "length", "ip_len", "hlen", "packets", "next_seq", "mss", "size", "open", "psh",
                 "ip_a", "ip_b", "tcp_a", "tcp_b", "tail")

    def __init__(self, key: bytes, first: bytes, ip_len: int, hlen: int, seq: int, payload: int, psh: bool) -> None:
        self.key = key
        self.first = first
        self.length = len(first)
        self.ip_len = ip_len
        self.hlen = hlen
        self.packets: list = []
        self.next_seq = (seq + payload) & 0xFFFFFFFF
        self.mss = payload
        self.size = hlen + payload
        self.open = not psh
        self.psh = psh
        if ip_len == 20:  # version..total length; flags/fragment, TTL, protocol
            self.ip_a, self.ip_b = first[0:4], first[6:10]
        else:  # version, traffic class, flow label, payload length, next header, hop limit
            self.ip_a, self.ip_b = first[0:8], b""
        self.tcp_a = first[ip_len + 8:ip_len + 16]  # ACK number, data offset, flags, window
        self.tail = slice(ip_len + 18, hlen)  # urgent pointer, options
        self.tcp_b = first[self.tail]


class TcpCoalescer:
    """Merges in-order TCP segments (and equal-sized UDP datagrams) per flow within one batch;
    ``flush()`` writes them out.

    ``write(packet)`` writes one unchanged packet, ``write_gso(parts, segments)`` one
    super-packet given as buffers (virtio-net header, IP+TCP header, payloads).
    ``counters``: ``merged`` (segments that went out inside a super-packet), ``super_packets`` and
    ``refused`` (super-packets ``write_gso`` did not take; their packets went out one by one).
    """

    def __init__(self, write: Callable[[bytes], bool], write_gso: Callable[[list, int], bool]) -> None:
        self._write = write
        self._write_gso = write_gso
        self._runs: dict[bytes, _Run] = {}
        self.counters = {"merged": 0, "super_packets": 0, "refused": 0}

    def add(self, packet: bytes) -> None:
        """Queue a decrypted inner packet, or write it now if it cannot be merged."""
        # Fast path: a full-size segment that continues its flow's open run. One path for both IP
        # versions: the layout says where each compared field sits (a slice in a local costs no
        # more than a literal one; the layout look-up and unpacking ~0.05 us per packet).
        if len(packet) >= 40:
            layout = _LAYOUTS[packet[0]]
            if layout is None:
                return self._pass(packet, None)
            min_len, ip_len, flow_key, next_header, tcp_min, fixed_a, fixed_b, udp_length, seq, ack_to_window = layout
            if len(packet) >= min_len:
                key = packet[flow_key]
                if packet[next_header] == 17:  # UDP (a literal: no global look-up per packet)
                    run = self._runs.get(b"U" + key)
                    if (run is not None and run.open and len(packet) == run.length and packet[fixed_a] == run.ip_a
                            and packet[fixed_b] == run.ip_b and packet[udp_length] == run.tcp_a
                            and run.size + run.mss <= MAX_IP_PACKET):
                        run.packets.append(packet)
                        run.size += run.mss
                        return None
                    return self._add_slow(packet, key, None, ip_len)
                if len(packet) < tcp_min:
                    return self._pass(packet, None)
                run = self._runs.get(key)
                if (run is not None and run.open and len(packet) == run.length and packet[fixed_a] == run.ip_a
                        and packet[fixed_b] == run.ip_b and packet[ack_to_window] == run.tcp_a
                        and packet[run.tail] == run.tcp_b
                        and int.from_bytes(packet[seq], "big") == run.next_seq
                        and run.size + run.mss <= MAX_IP_PACKET):
                    run.packets.append(packet)
                    run.next_seq = (run.next_seq + run.mss) & 0xFFFFFFFF
                    run.size += run.mss
                    return None
                return self._add_slow(packet, key, run, ip_len)
        return self._pass(packet, None)

    def _add_slow(self, packet: bytes, key: bytes, run: _Run | None, ip_len: int) -> None:
        """A segment that starts a run, ends one (short or pushed), or cannot be merged at all."""
        if ip_len == 20:
            # no IP options, not a fragment (MF clear, offset 0), length as received
            if packet[6] & 0x3F or packet[7] or _H.unpack_from(packet, 2)[0] != len(packet):
                return self._pass(packet, None)  # the ports are not where the key has them
            protocol = packet[9]
        elif _H.unpack_from(packet, 4)[0] != len(packet) - 40:
            return self._pass(packet, None)
        else:
            protocol = packet[6]  # TCP or UDP only right after the fixed header
        if protocol != _TCP:
            if protocol == _UDP:
                return self._add_udp(packet, b"U" + key, ip_len)
            return self._pass(packet, None)
        flags = packet[ip_len + 13]
        hlen = ip_len + (packet[ip_len + 12] >> 4) * 4
        payload = len(packet) - hlen
        if (flags != _TCP_ACK and flags != _ACK_PSH) or payload <= 0 or hlen < ip_len + 20:
            return self._pass(packet, key)
        seq = int.from_bytes(packet[ip_len + 4:ip_len + 8], "big")
        if run is not None:
            if (run.open and seq == run.next_seq and payload <= run.mss and run.hlen == hlen
                    and run.size + payload <= MAX_IP_PACKET
                    and self._same_headers(packet, run.first, ip_len, hlen)):
                run.packets.append(packet)
                run.next_seq = (seq + payload) & 0xFFFFFFFF
                run.size += payload
                if payload < run.mss or flags == _ACK_PSH:
                    run.open = False  # a short or pushed segment ends the run, as in Linux
                    run.psh = flags == _ACK_PSH
                return None
            self._emit(run)
        self._runs[key] = _Run(key, packet, ip_len, hlen, seq, payload, flags == _ACK_PSH)
        return None

    def _add_udp(self, packet: bytes, key: bytes, ip_len: int) -> None:
        """UDP datagrams of one flow, equal-sized but the last, leave as one GSO_UDP_L4 packet."""
        payload = len(packet) - ip_len - 8
        if payload <= 0 or _H.unpack_from(packet, ip_len + 4)[0] != payload + 8:
            return self._pass(packet, key)
        run = self._runs.get(key)
        if run is not None:
            head = run.first
            if (run.open and payload <= run.mss and run.size + payload <= MAX_IP_PACKET
                    and (packet[1] == head[1] and packet[6:10] == head[6:10] if ip_len == 20
                         else packet[0:4] == head[0:4] and packet[7] == head[7])):
                run.packets.append(packet)
                run.size += payload
                if payload < run.mss:
                    run.open = False  # only the last datagram may be shorter
                return None
            self._emit(run)
        run = self._runs[key] = _Run(key, packet, ip_len, ip_len + 8, 0, payload, False)
        run.tcp_a = packet[ip_len + 4:ip_len + 6]  # the UDP length, for add()'s fast path
        return None

    @staticmethod
    def _same_headers(packet: bytes, head: bytes, ip_len: int, hlen: int) -> bool:
        """Every header field equal but lengths, IPv4 ID and checksum, sequence number, PSH, TCP checksum."""
        if ip_len == 20:
            if packet[1] != head[1] or packet[6:10] != head[6:10]:  # TOS; DF, TTL, protocol
                return False
        elif packet[0:4] != head[0:4] or packet[7] != head[7]:  # traffic class, flow label; hop limit
            return False
        t = ip_len
        return (packet[t + 8:t + 13] == head[t + 8:t + 13]  # ACK number, data offset
                and packet[t + 14:t + 16] == head[t + 14:t + 16]  # window
                and packet[t + 18:hlen] == head[t + 18:hlen])  # urgent pointer, options

    def _pass(self, packet: bytes, key: bytes | None) -> None:
        """Write an unmergeable packet after what is queued of its flow (all flows if unknown)."""
        if key is None:
            if self._runs:
                self.flush()
        else:
            run = self._runs.get(key)
            if run is not None:
                self._emit(run)
        self._write(packet)

    def flush(self) -> None:
        """Write every queued flow; call at the end of each receive batch."""
        runs = self._runs
        if runs:
            for run in list(runs.values()):
                self._emit(run)

    def _emit(self, run: _Run) -> None:
        head = run.first
        ip_len, hlen = run.ip_len, run.hlen
        del self._runs[run.key]
        if not run.packets:
            self._write(head)
            return
        segments = len(run.packets) + 1
        total = run.size
        l4_len = total - ip_len
        header = bytearray(head[:hlen])
        udp = hlen == ip_len + 8  # a TCP header is at least 20 bytes
        if run.psh:
            header[ip_len + 13] = _ACK_PSH
        if ip_len == 20:
            header[2:4] = _H.pack(total)
            header[10:12] = b"\0\0"
            header[10:12] = _H.pack(~_fold(sum(_IPV4_WORDS.unpack_from(header))) & 0xFFFF)
            pseudo = sum(struct.unpack_from("!4H", header, 12)) + l4_len
        else:
            header[4:6] = _H.pack(l4_len)
            pseudo = sum(struct.unpack_from("!16H", header, 8)) + l4_len
        # NEEDS_CSUM: the checksum field holds the pseudo-header sum, the kernel adds the rest
        if udp:
            header[ip_len + 4:ip_len + 6] = _H.pack(l4_len)
            header[ip_len + 6:ip_len + 8] = _H.pack(_fold(pseudo + 17))
            gso_type = GSO_UDP_L4
        else:
            header[ip_len + 16:ip_len + 18] = _H.pack(_fold(pseudo + 6))
            gso_type = GSO_TCPV4 if ip_len == 20 else GSO_TCPV6
        parts = [vnet_header(gso_type, hlen, run.mss, ip_len), header, memoryview(head)[hlen:]]
        parts += [memoryview(p)[hlen:] for p in run.packets]
        if self._write_gso(parts, segments):
            self.counters["merged"] += segments
            self.counters["super_packets"] += 1
        else:  # refused (a kernel without this GSO type, a full queue): the packets as they came
            self.counters["refused"] += 1
            write = self._write
            write(head)
            for packet in run.packets:
                write(packet)
