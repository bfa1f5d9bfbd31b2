"""Outer headers, ESP-in-UDP and ECN, checked with dpkt as an independent parser."""

from __future__ import annotations

import socket
import struct

import dpkt
import pytest

from esp.errors import Drop, DropReason
from esp.outer import OuterIPv4, OuterIPv6, ecn_decapsulate, ipv4_checksum, parse_outer
from esp.sa import InboundSA, OutboundSA

from tests.esp.helpers import ipv4_packet, ipv6_packet

A4, B4 = socket.inet_aton("198.51.100.1"), socket.inet_aton("203.0.113.9")
NAT_KEEPALIVE = b"\xff"  # RFC 3948 s2.3


def udp_encapsulate(payload: bytes, sport: int, dport: int) -> bytes:
    """RFC 3948 s2.1 framing, as the kernel's UDP socket puts it on the wire (checksum 0 here)."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


A6, B6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1"), socket.inet_pton(socket.AF_INET6, "2001:db8::2")


def sa_pair():
    km = bytes(range(36))
    return OutboundSA(0xABCD, "aes256gcm16", km), InboundSA(0xABCD, "aes256gcm16", km)


@pytest.mark.parametrize("df,inner_df,expect_df", [
    ("copy", True, 1), ("copy", False, 0), ("set", False, 1), ("clear", True, 0)])
def test_outer_ipv4_header(df, inner_df, expect_df):
    out, inb = sa_pair()
    inner = ipv4_packet(b"u" * 33, tos=0xB8 | 0x02, df=inner_df)   # DSCP EF, ECT(0)
    esp = out.encapsulate(inner)
    o = OuterIPv4(A4, B4, ttl=33, df=df)
    pkt = o.build(len(esp), inner) + esp
    ip = dpkt.ip.IP(pkt)
    assert (ip.v, ip.hl, ip.len, ip.p, ip.ttl) == (4, 5, len(pkt), 50, 33)
    assert ip.tos == 0xBA                      # DSCP copied, ECN copied (RFC 6040 normal mode)
    assert ip.df == expect_df and ip.mf == 0 and ip.offset == 0
    assert (ip.src, ip.dst) == (A4, B4)
    assert ipv4_checksum(pkt[:20]) == 0
    sum_before = ip.sum
    ip.sum = 0
    assert dpkt.ip.IP(bytes(ip)).sum == sum_before       # dpkt recomputes the same checksum
    info = parse_outer(pkt)
    assert (info.version, info.src, info.dst, info.ecn, info.udp_encap) == (4, A4, B4, 2, False)
    assert inb.decapsulate(info.esp) == (4, inner)


def test_outer_ipv4_ident_changes_and_v6_inner():
    o = OuterIPv4(A4, B4)
    inner6 = ipv6_packet(tc=0x28 << 2 | 1)
    h1, h2 = o.build(100, inner6), o.build(100, inner6)
    assert dpkt.ip.IP(h1 + bytes(100)).id != dpkt.ip.IP(h2 + bytes(100)).id
    ip = dpkt.ip.IP(h1 + bytes(100))
    assert ip.tos == (0x28 << 2 | 1) and ip.df == 1    # IPv6 inner: DF under "copy"


@pytest.mark.parametrize("flow", ["zero", "copy"])
def test_outer_ipv6_header(flow):
    out, inb = sa_pair()
    inner = ipv6_packet(b"w" * 21, tc=0x2E << 2 | 1, flow=0xABCDE)
    esp = out.encapsulate(inner, 41)
    pkt = OuterIPv6(A6, B6, hop_limit=17, flow_label=flow).build(len(esp), inner) + esp
    ip6 = dpkt.ip6.IP6(pkt)
    assert (ip6.v, ip6.plen, ip6.nxt, ip6.hlim) == (6, len(esp), 50, 17)
    assert ip6.fc == (0x2E << 2 | 1)
    assert (ip6.flow) == (0xABCDE if flow == "copy" else 0)
    assert (ip6.src, ip6.dst) == (A6, B6)
    info = parse_outer(pkt)
    assert info.version == 6 and info.ecn == 1
    assert inb.decapsulate(info.esp) == (41, inner)


def test_udp_encapsulation_rfc3948():
    out, inb = sa_pair()
    inner = ipv4_packet()
    esp = out.encapsulate(inner)
    udp = udp_encapsulate(esp, 4500, 4500)
    u = dpkt.udp.UDP(udp)
    assert (u.sport, u.dport, u.ulen, u.sum) == (4500, 4500, len(udp), 0)
    pkt = OuterIPv4(A4, B4, protocol=17).build(len(udp), inner) + udp
    ip = dpkt.ip.IP(pkt)
    assert ip.p == 17 and ip.len == len(pkt)
    info = parse_outer(pkt)
    assert info.udp_encap and (info.sport, info.dport) == (4500, 4500)
    assert inb.decapsulate(info.esp) == (4, inner)
    for payload in (NAT_KEEPALIVE, b"\x00" * 4 + b"IKE"):
        with pytest.raises(Drop) as e:
            parse_outer(OuterIPv4(A4, B4, protocol=17).build(8 + len(payload), inner)
                        + udp_encapsulate(payload, 4500, 4500))
        assert e.value.reason is DropReason.NOT_ESP


def test_parse_outer_rejects_bad_headers():
    good = OuterIPv4(A4, B4).build(40, b"") + bytes(40)
    cases = {
        b"": DropReason.BAD_OUTER_HEADER,
        good[:19]: DropReason.BAD_OUTER_HEADER,
        good[:30]: DropReason.BAD_OUTER_HEADER,                   # total length > data
        bytes([0x55]) + good[1:]: DropReason.BAD_OUTER_HEADER,    # version 5
        good[:6] + b"\x20\x00" + good[8:]: DropReason.BAD_OUTER_HEADER,   # MF fragment
        good[:9] + b"\x06" + good[10:]: DropReason.NOT_ESP,       # TCP
        OuterIPv6(A6, B6).build(40, b"")[:30]: DropReason.BAD_OUTER_HEADER,
    }
    for pkt, reason in cases.items():
        with pytest.raises(Drop) as e:
            parse_outer(pkt)
        assert e.value.reason is reason, pkt[:10]


def test_ecn_egress_rfc6040():
    ect0 = ipv4_packet(tos=0x02)
    ce = ecn_decapsulate(ect0, 3)
    ip = dpkt.ip.IP(ce)
    assert ip.tos & 3 == 3 and ipv4_checksum(ce[:20]) == 0
    assert ecn_decapsulate(ect0, 1)[1] & 3 == 1             # ECT(1) outer over ECT(0)
    assert ecn_decapsulate(ect0, 0) == ect0
    assert ecn_decapsulate(ect0, 2) == ect0
    with pytest.raises(Drop) as e:
        ecn_decapsulate(ipv4_packet(tos=0), 3)
    assert e.value.reason is DropReason.ECN_DROP
    v6 = ipv6_packet(tc=0x01)
    assert dpkt.ip6.IP6(ecn_decapsulate(v6, 3)).fc & 3 == 3
