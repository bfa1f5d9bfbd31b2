"""The hostile-traffic builders of tunnel.lab.attack: real IPv4/IPv6 packets, checked with dpkt."""

from __future__ import annotations

import struct

import dpkt
import pytest

from tunnel.lab import attack

A4, B4 = "192.0.2.1", "192.0.2.2"
A6, B6 = "2001:db8::1", "2001:db8::2"


def test_an_ipv6_packet_that_fits_is_one_plain_packet():
    (packet,) = attack.ipv6_packets(A6, B6, attack.IPPROTO_ESP, b"\1\2\3\4" * 100)
    ip6 = dpkt.ip6.IP6(packet)
    assert (ip6.v, ip6.nxt, ip6.plen, ip6.hlim) == (6, attack.IPPROTO_ESP, 400, 64)
    assert packet[40:] == b"\1\2\3\4" * 100 and len(packet) == 440


def test_a_large_ipv6_payload_goes_behind_fragment_headers_that_reassemble():
    payload = bytes(range(256)) * 235  # 60,160 bytes
    fragments = attack.ipv6_packets(A6, B6, attack.IPPROTO_ESP, payload, ident=4242)
    assert all(len(f) <= attack.LINK_MTU for f in fragments)
    pieces = []
    for index, fragment in enumerate(fragments):
        assert fragment[0] >> 4 == 6 and fragment[6] == attack.IPPROTO_FRAGMENT
        assert struct.unpack("!H", fragment[4:6])[0] == len(fragment) - 40
        nxt, _res, offset_flags, ident = struct.unpack("!BBHI", fragment[40:48])
        assert (nxt, ident) == (attack.IPPROTO_ESP, 4242)
        assert offset_flags & 1 == (index < len(fragments) - 1)  # M set on all but the last
        pieces.append(((offset_flags >> 3) * 8, fragment[48:]))
        if index < len(fragments) - 1:
            assert len(fragment[48:]) % 8 == 0
    assert b"".join(p for _, p in sorted(pieces)) == payload
    assert [o for o, _ in pieces] == sorted(o for o, _ in pieces)


@pytest.mark.parametrize("src,dst", [(A4, B4), (A6, B6)])
def test_udp_datagrams_carry_a_valid_checksum_in_either_family(src, dst):
    datagram = attack.udp_datagram(src, dst, 40500, 4500, b"\0\0\0\0junk")
    (packet,) = attack.ip_packets(src, dst, attack.IPPROTO_UDP, datagram)
    parse = dpkt.ip6.IP6 if ":" in dst else dpkt.ip.IP
    ip = parse(packet)
    assert (ip.data.sport, ip.data.dport, ip.data.data) == (40500, 4500, b"\0\0\0\0junk")
    sent = ip.data.sum
    ip.data.sum = 0  # dpkt fills in zeroed checksums (IPv4: the header's too) when it serialises
    if parse is dpkt.ip.IP:
        ip.sum = 0
    assert parse(bytes(ip)).data.sum == sent != 0


def test_esp_from_pcap_finds_ipv4_and_ipv6_esp_of_the_given_direction(tmp_path):
    esp4, esp6 = b"\0\0\1\0\0\0\0\1" + b"x" * 40, b"\0\0\2\0\0\0\0\2" + b"y" * 40

    def frame(packet: bytes, ethertype: bytes) -> bytes:
        return b"\2" * 6 + b"\4" * 6 + ethertype + packet + b"\0" * 4  # a trailer past the IP length

    path = tmp_path / "c.pcap"
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f)
        w.writepkt(frame(attack.ip_packets(A4, B4, attack.IPPROTO_ESP, esp4)[0], b"\x08\x00"), 1.0)
        w.writepkt(frame(attack.ip_packets(B4, A4, attack.IPPROTO_ESP, esp4)[0], b"\x08\x00"), 1.0)
        w.writepkt(frame(attack.ip_packets(A6, B6, attack.IPPROTO_ESP, esp6)[0], b"\x86\xdd"), 2.0)
        w.writepkt(frame(attack.ip_packets(B6, A6, attack.IPPROTO_ESP, esp6)[0], b"\x86\xdd"), 2.0)
        w.writepkt(frame(attack.ip_packets(A6, B6, attack.IPPROTO_UDP, b"\0" * 12)[0], b"\x86\xdd"), 3.0)
    assert attack.esp_from_pcap(path, A4, B4) == [esp4]
    assert attack.esp_from_pcap(path, A6, B6) == [esp6]
    assert attack.esp_from_pcap(path, "2001:db8:0:0::1", "2001:db8::0:2") == [esp6]  # any spelling


def test_the_sender_refuses_addresses_outside_the_lab():
    with pytest.raises(SystemExit):
        attack._lab_only("2606:4700::1111")
    with pytest.raises(SystemExit):
        attack._lab_only("8.8.8.8")
    attack._lab_only(B6)
    attack._lab_only("fd00:b::9")
