"""The lab's wire classifier: what counts as leaked clear traffic on the public link."""

from __future__ import annotations

import dpkt

from tunnel.lab.interop import wire_summary

LINK_LOCAL = bytes.fromhex("fe8000000000000030b523fffeb50b8e")


def _ipv6(next_header: int, dst: bytes, payload: bytes, hop_limit: int = 1) -> bytes:
    return (bytes.fromhex("60000000") + len(payload).to_bytes(2, "big") + bytes([next_header, hop_limit])
            + LINK_LOCAL + dst + payload)


# An MLDv2 report as Linux sends it when an interface joins its groups (as captured in the lab):
# to ff02::16, a hop-by-hop header (Router Alert + PadN), then ICMPv6 type 143 with one record.
HOP_BY_HOP = bytes([58, 0, 5, 2, 0, 0, 1, 0])
MLD_RECORD = bytes([4, 0, 0, 0]) + bytes.fromhex("ff0200000000000000000001ffb50b8e")
MLD_REPORT = _ipv6(0, bytes.fromhex("ff020000000000000000000000000016"),
                   HOP_BY_HOP + bytes([143, 0, 0xFB, 0x61, 0, 0, 0, 1]) + MLD_RECORD)
NEIGHBOUR_SOLICITATION = _ipv6(58, bytes.fromhex("ff0200000000000000000001ff000002"),
                               bytes([135, 0, 0, 0, 0, 0, 0, 0]) + bytes.fromhex("20010db8000000000000000000000002"),
                               hop_limit=255)


def _udp4(dport: int, payload: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=40000, dport=dport, data=payload)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=bytes([192, 0, 2, 1]), dst=bytes([192, 0, 2, 2]), p=17, data=udp)
    ip.len = len(ip)
    return bytes(ip)


def _pcap(tmp_path, packets: list[bytes]):
    path = tmp_path / "wan.pcap"
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f)
        for n, packet in enumerate(packets):
            ethertype = 0x86DD if packet[0] >> 4 == 6 else 0x0800
            writer.writepkt(bytes(6) + bytes(6) + ethertype.to_bytes(2, "big") + packet, ts=n)
    return path


def test_link_control_traffic_is_not_clear_but_other_traffic_is(tmp_path):
    esp_in_udp = _udp4(4500, bytes.fromhex("c0ffee01") + bytes(40))
    leaked = _udp4(5201, b"inner conversation")
    seen = wire_summary(_pcap(tmp_path, [MLD_REPORT, NEIGHBOUR_SOLICITATION, esp_in_udp, leaked]))
    assert seen["clear"] == 1
    assert seen["esp_udp"] == {0xC0FFEE01}


def test_a_hop_by_hop_header_before_anything_but_mld_is_clear(tmp_path):
    udp_behind_options = _ipv6(0, bytes.fromhex("20010db8000000000000000000000002"),
                               bytes([17, 0, 1, 4, 0, 0, 0, 0]) + bytes.fromhex("9c401451000c0000") + b"data")
    assert wire_summary(_pcap(tmp_path, [udp_behind_options]))["clear"] == 1
