"""ICMP "fragmentation needed" / ICMPv6 "packet too big" replies and the tunnel MTU helper."""

from __future__ import annotations

import ipaddress

import dpkt
import pytest

from tunnel.dataplane.icmp import frag_needed_v4, packet_too_big_v6, too_big_reply, tunnel_mtu


def ip4(size: int, src="10.1.0.5", dst="10.2.0.9", p=17, payload_first=b"") -> bytes:
    body = payload_first + bytes(size - 20 - len(payload_first))
    ip = dpkt.ip.IP(src=ipaddress.ip_address(src).packed, dst=ipaddress.ip_address(dst).packed, p=p, data=body)
    ip.df = 1
    return bytes(ip)


def ip6(size: int, src="fd01::5", dst="fd02::9", nxt=17, payload_first=b"") -> bytes:
    body = payload_first + bytes(size - 40 - len(payload_first))
    ip = dpkt.ip6.IP6(src=ipaddress.ip_address(src).packed, dst=ipaddress.ip_address(dst).packed, nxt=nxt, hlim=64,
                      plen=len(body), data=body)
    return bytes(ip)


def test_tunnel_mtu_aes_gcm_and_cbc():
    # AES-GCM: IV 8, ICV 16, align 4. 1500 - 20 - 8 - 8 - 16 = 1448 -> 1448 - 2 = 1446.
    assert tunnel_mtu(1500, iv_len=8, icv_len=16, align=4) == 1446
    # AES-CBC + HMAC-SHA256-128: IV 16, ICV 16, block 16: room 1440 -> 1440 - 2 = 1438.
    assert tunnel_mtu(1500, iv_len=16, icv_len=16, align=16) == 1438
    assert tunnel_mtu(1500, iv_len=8, icv_len=16, udp_encap=True) == 1438
    assert tunnel_mtu(1500, iv_len=8, icv_len=16, ipv6_outer=True) == 1426
    with pytest.raises(ValueError):
        tunnel_mtu(60, iv_len=16, icv_len=16)


@pytest.mark.parametrize("path_mtu", range(576, 1520, 29))
@pytest.mark.parametrize("iv,icv,align", [(8, 16, 4), (16, 12, 16), (0, 16, 4)])
def test_tunnel_mtu_is_tight(path_mtu, iv, icv, align):
    mtu = tunnel_mtu(path_mtu, iv_len=iv, icv_len=icv, align=align)

    def outer(inner):  # RFC 4303 s2.4: pad inner + 2 to the alignment
        return 20 + 8 + iv + -(-(inner + 2) // align) * align + icv

    assert outer(mtu) <= path_mtu < outer(mtu + 1) + align  # fits; a bigger one would not gain much
    assert outer(mtu + align) > path_mtu


def test_frag_needed_v4_fields_and_checksums():
    original = ip4(1500)
    reply = frag_needed_v4(original, 1400, "10.1.0.1")
    ip = dpkt.ip.IP(reply)
    assert ip.src == ipaddress.ip_address("10.1.0.1").packed and ip.dst == original[12:16]
    assert ip.p == 1 and len(reply) <= 576
    assert ip.data.type == 3 and ip.data.code == 4 and ip.data.data.mtu == 1400
    quoted = ip.data.data.data
    assert bytes(quoted)[:28] == original[:28] and len(bytes(quoted)) == 576 - 28
    # The Internet checksum over a correct header/message is zero.
    assert dpkt.in_cksum(reply[:20]) == 0
    assert dpkt.in_cksum(reply[20:]) == 0


def test_packet_too_big_v6_fields_and_checksum():
    original = ip6(1500)
    reply = packet_too_big_v6(original, 1380, "fd01::1")
    assert len(reply) == 1280
    ip = dpkt.ip6.IP6(reply)
    assert ip.dst == original[8:24] and ip.nxt == 58
    assert ip.data.type == 2 and ip.data.code == 0 and ip.data.data.mtu == 1380
    pseudo = ip.src + ip.dst + len(reply[40:]).to_bytes(4, "big") + b"\x00\x00\x00\x3a"
    assert dpkt.in_cksum(pseudo + reply[40:]) == 0
    assert reply[48:] == original[:1232]


def test_no_error_about_errors_or_bad_sources():
    icmp_error = ip4(1500, p=1, payload_first=b"\x03\x04")
    assert frag_needed_v4(icmp_error, 1400, "10.1.0.1") is None
    assert frag_needed_v4(ip4(1500, p=1, payload_first=b"\x08\x00"), 1400, "10.1.0.1") is not None
    assert frag_needed_v4(ip4(1500, src="224.0.0.5"), 1400, "10.1.0.1") is None
    assert frag_needed_v4(ip4(1500, src="0.0.0.0"), 1400, "10.1.0.1") is None
    assert packet_too_big_v6(ip6(1500, nxt=58, payload_first=b"\x01\x00"), 1400, "fd01::1") is None
    assert packet_too_big_v6(ip6(1500, nxt=58, payload_first=b"\x80\x00"), 1400, "fd01::1") is not None
    assert packet_too_big_v6(ip6(1500, src="::"), 1400, "fd01::1") is None


@pytest.mark.parametrize("junk", [b"", b"\x45", b"\x45" + bytes(10), b"\x60" + bytes(20), b"\x41" + bytes(30),
                                  b"\xff" * 100])
def test_junk_gives_no_reply(junk):
    assert too_big_reply(junk, 1400, "10.1.0.1", "fd01::1") is None


def test_dispatch_by_version():
    assert too_big_reply(ip4(1500), 1400, "10.1.0.1", None)[9] == 1
    assert too_big_reply(ip6(1500), 1400, None, "fd01::1")[6] == 58
    assert too_big_reply(ip6(1500), 1400, "10.1.0.1", None) is None
