"""Tunnel-mode outer IPv4/IPv6 headers for a raw protocol-50 socket, the
parser for received packets, and RFC 6040 ECN handling (normal mode)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import Drop, DropReason

PROTO_ESP, PROTO_UDP = 50, 17
ECN_NOT_ECT, ECN_ECT1, ECN_ECT0, ECN_CE = 0, 1, 2, 3

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HEAD = struct.Struct("!IHBB")
_U16 = struct.Struct("!H")
_UDP_PORTS = struct.Struct("!HH")
_DF = 0x4000


def inner_tos(inner: bytes) -> tuple[int, bool]:
    """(traffic class byte, DF) of an inner IPv4/IPv6 packet, for the outer header (RFC 6040
    normal mode copies DSCP and ECN; DF is copied from IPv4 and set for IPv6, which never
    fragments en route). One definition for every sender: the packet-built outer headers here
    and the kernel-built ones of tunnel.kernel.raw_esp."""
    if not inner:
        return 0, False
    v = inner[0] >> 4
    if v == 4 and len(inner) >= 20:
        return inner[1], bool(inner[6] & 0x40)
    if v == 6 and len(inner) >= 2:
        return ((inner[0] & 0x0F) << 4) | (inner[1] >> 4), True
    return 0, False


def _fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return s


def ipv4_checksum(header: bytes) -> int:
    s = sum(struct.unpack(f"!{len(header) // 2}H", header))
    return ~_fold(s) & 0xFFFF


class OuterIPv4:
    def __init__(self, src: bytes, dst: bytes, *, ttl: int = 64, df: str = "copy",
                 protocol: int = PROTO_ESP) -> None:
        if len(src) != 4 or len(dst) != 4:
            raise ValueError("OuterIPv4 needs 4-byte packed addresses")
        if df not in ("copy", "set", "clear"):
            raise ValueError(f"df must be copy, set or clear, not {df!r}")
        self.src, self.dst, self.ttl, self.df, self.protocol = src, dst, ttl, df, protocol
        self._ident = 0
        # checksum part that never changes: version/IHL, TTL/protocol, addresses
        self._base_sum = (0x4500 + ((ttl << 8) | protocol)
                          + sum(struct.unpack("!4H", src + dst)))

    def build(self, esp_len: int, inner: bytes) -> bytes:
        """The 20-byte header for an ESP (or UDP-encapsulated ESP) payload of esp_len bytes."""
        tos, inner_df = inner_tos(inner)
        tos &= 0xFF      # DSCP copied; ECN copied too (RFC 6040 s4.1 normal mode)
        df = self.df
        frag = _DF if (df == "set" or (df == "copy" and inner_df)) else 0
        self._ident = ident = (self._ident + 1) & 0xFFFF
        total = 20 + esp_len
        csum = ~_fold(self._base_sum + tos + total + ident + frag) & 0xFFFF
        return _IPV4.pack(0x45, tos, total, ident, frag, self.ttl, self.protocol, csum,
                          self.src, self.dst)


class OuterIPv6:
    def __init__(self, src: bytes, dst: bytes, *, hop_limit: int = 64, flow_label: str = "zero",
                 next_header: int = PROTO_ESP) -> None:
        if len(src) != 16 or len(dst) != 16:
            raise ValueError("OuterIPv6 needs 16-byte packed addresses")
        if flow_label not in ("zero", "copy"):
            raise ValueError(f"flow_label must be zero or copy, not {flow_label!r}")
        self.src, self.dst, self.hop_limit = src, dst, hop_limit
        self.flow_label, self.next_header = flow_label, next_header

    def build(self, esp_len: int, inner: bytes) -> bytes:
        tc, _ = inner_tos(inner)
        flow = 0
        if self.flow_label == "copy" and len(inner) >= 4 and inner[0] >> 4 == 6:
            flow = int.from_bytes(inner[1:4], "big") & 0xFFFFF
        first = (6 << 28) | (tc << 20) | flow
        return _IPV6_HEAD.pack(first, esp_len, self.next_header, self.hop_limit) + self.src + self.dst


@dataclass(frozen=True)
class OuterInfo:
    version: int
    src: bytes
    dst: bytes
    ecn: int
    esp: memoryview
    udp_encap: bool
    sport: int = 0
    dport: int = 0


def _bad(detail: str) -> Drop:
    return Drop(DropReason.BAD_OUTER_HEADER, detail)


def parse_outer(packet: bytes | memoryview) -> OuterInfo:
    """Find the ESP part of a received IPv4/IPv6 packet (protocol 50 or UDP-encapsulated)."""
    mv = memoryview(packet)
    if len(mv) < 1:
        raise _bad("empty packet")
    version = mv[0] >> 4
    if version == 4:
        if len(mv) < 20:
            raise _bad("short IPv4 header")
        ihl = (mv[0] & 0x0F) * 4
        total = _U16.unpack_from(mv, 2)[0]
        if ihl < 20 or total < ihl or total > len(mv):
            raise _bad("IPv4 lengths inconsistent")
        if _U16.unpack_from(mv, 6)[0] & 0x3FFF:
            raise _bad("IPv4 fragment (reassembly is the kernel's job)")
        proto, ecn = mv[9], mv[1] & 3
        src, dst = bytes(mv[12:16]), bytes(mv[16:20])
        payload = mv[ihl:total]
    elif version == 6:
        if len(mv) < 40:
            raise _bad("short IPv6 header")
        plen = _U16.unpack_from(mv, 4)[0]
        if 40 + plen > len(mv):
            raise _bad("IPv6 payload length exceeds packet")
        proto, ecn = mv[6], (mv[1] >> 4) & 3
        src, dst = bytes(mv[8:24]), bytes(mv[24:40])
        payload = mv[40:40 + plen]
    else:
        raise _bad(f"IP version {version}")
    if proto == PROTO_ESP:
        return OuterInfo(version, src, dst, ecn, payload, False)
    if proto == PROTO_UDP:
        if len(payload) < 8:
            raise _bad("short UDP header")
        sport, dport = _UDP_PORTS.unpack_from(payload)
        esp = payload[8:]
        if bytes(esp) == b"\xff" or bytes(esp[:4]) == b"\x00\x00\x00\x00":
            raise Drop(DropReason.NOT_ESP, "NAT keepalive or IKE on the ESP-in-UDP port")
        return OuterInfo(version, src, dst, ecn, esp, True, sport, dport)
    raise Drop(DropReason.NOT_ESP, f"IP protocol {proto}")


def ecn_decapsulate(inner: bytes, outer_ecn: int) -> bytes:
    """RFC 6040 s4.2 egress: combine the outer ECN into the inner header."""
    if not inner:
        return inner
    v = inner[0] >> 4
    if v == 4 and len(inner) >= 20:
        inner_ecn = inner[1] & 3
    elif v == 6 and len(inner) >= 2:
        inner_ecn = (inner[1] >> 4) & 3
    else:
        return inner
    if outer_ecn == ECN_CE:
        if inner_ecn == ECN_NOT_ECT:
            raise Drop(DropReason.ECN_DROP, "CE on the outer header of a Not-ECT packet")
        new = ECN_CE
    elif outer_ecn == ECN_ECT1 and inner_ecn == ECN_ECT0:
        new = ECN_ECT1
    else:
        return inner
    if new == inner_ecn:
        return inner
    buf = bytearray(inner)
    if v == 4:
        buf[1] = (buf[1] & 0xFC) | new
        ihl = (buf[0] & 0x0F) * 4
        buf[10:12] = b"\x00\x00"
        buf[10:12] = _U16.pack(ipv4_checksum(bytes(buf[:ihl])))
    else:
        buf[1] = (buf[1] & 0xCF) | (new << 4)
    return bytes(buf)
