"""How the road-warrior demo reads a capture (no lab): each flow named (IKE exchange, ESP-in-UDP
SPI, NAT keepalive), and the summary says UDP 500 then UDP 4500, or names what else was seen."""

from __future__ import annotations

import socket
import struct

import dpkt

from tunnel.lab.demo_roadwarrior import _flow_lines, _summary, read_capture

LAPTOP, OFFICE = "192.0.2.1", "192.0.2.2"


def _frame(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    udp.ulen = 8 + len(payload)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=17, data=udp)
    ip.len = 20 + udp.ulen
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=ip))


def _ike(exchange: int) -> bytes:
    return struct.pack("!8s8sBBBBII", b"\x11" * 8, bytes(8), 33, 0x20, exchange, 0x08, 0, 28)


def _write(path, frames) -> None:
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f)
        for n, frame in enumerate(frames):
            writer.writepkt(frame, ts=n)


def test_the_handshake_on_500_then_everything_on_4500(tmp_path):
    pcap = tmp_path / "internet.pcap"
    _write(pcap, [_frame(LAPTOP, 20001, OFFICE, 500, _ike(34)), _frame(OFFICE, 500, LAPTOP, 20001, _ike(34)),
                  _frame(LAPTOP, 20002, OFFICE, 4500, bytes(4) + _ike(35)),
                  _frame(LAPTOP, 20002, OFFICE, 4500, struct.pack("!II", 0xC0FFEE01, 1) + bytes(40)),
                  _frame(LAPTOP, 20002, OFFICE, 4500, struct.pack("!II", 0xC0FFEE01, 2) + bytes(40)),
                  _frame(LAPTOP, 20002, OFFICE, 4500, b"\xff")])
    flows, other, data = read_capture(pcap)
    assert [(f.what, n) for f, n, _ in flows] == [("IKE_SA_INIT", 1), ("IKE_SA_INIT", 1), ("IKE_AUTH", 1),
                                                  ("ESP-in-UDP SPI c0ffee01", 2), ("NAT keepalive", 1)]
    assert other == 0 and len(data) > 0
    lines = "\n".join(_flow_lines(flows, other))
    assert "192.0.2.1:20001    -> 192.0.2.2:500      IKE_SA_INIT (cleartext key exchange)" in lines
    assert "IKE_AUTH (encrypted)" in lines
    summary = _summary(flows, other, LAPTOP, OFFICE)
    assert summary.startswith(f"  only {LAPTOP} <-> {OFFICE}: the 2 IKE_SA_INIT packets on UDP 500")
    assert summary.endswith("then 4 packets on UDP 4500 (IKE and ESP-in-UDP, encrypted)")


def test_anything_else_is_named(tmp_path):
    pcap = tmp_path / "cafe.pcap"
    _write(pcap, [_frame(LAPTOP, 20002, OFFICE, 4500, struct.pack("!II", 1, 1) + bytes(40)),
                  _frame(LAPTOP, 5353, "192.0.2.9", 53, b"dns?"), b"\x04" * 6 + b"\x02" * 6 + b"\x86\xdd" + bytes(40)])
    flows, other, _ = read_capture(pcap)
    assert other == 1
    assert "  192.0.2.1:5353     -> 192.0.2.9:53       UDP" in "\n".join(_flow_lines(flows, other))
    summary = _summary(flows, other, LAPTOP, OFFICE)
    assert summary == "  ALSO SEEN: 2 packet(s) outside the tunnel's flows (listed above)"
