"""TcpCoalescer on crafted TCP segments: what merges, what passes, order, and the super-packet's bytes."""

from __future__ import annotations

import socket
import struct

import dpkt
import pytest

from tunnel.dataplane.gro import GSO_TCPV4, GSO_TCPV6, NEEDS_CSUM, TcpCoalescer

A4, B4 = socket.inet_aton("10.0.0.7"), socket.inet_aton("10.0.5.9")
A6, B6 = socket.inet_pton(socket.AF_INET6, "fd00:a::7"), socket.inet_pton(socket.AF_INET6, "fd00:b::9")
TS_OPTS = b"\x01\x01\x08\x0a" + struct.pack("!II", 1000, 2000)  # NOP NOP timestamps


def seg(seq: int, payload: bytes, *, v6: bool = False, flags: int = dpkt.tcp.TH_ACK, sport: int = 40000,
        ack: int = 77, win: int = 502, opts: bytes = TS_OPTS, tos: int = 0, ttl: int = 63, df: bool = True) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=5201, seq=seq, ack=ack, flags=flags, win=win, opts=opts, data=payload)
    tcp.off = (20 + len(opts)) // 4
    if v6:
        ip = dpkt.ip6.IP6(src=A6, dst=B6, nxt=6, hlim=ttl, fc=tos, data=tcp)
        ip.plen = len(tcp)
        ip.extension_hdrs = {}
    else:
        ip = dpkt.ip.IP(src=A4, dst=B4, p=6, ttl=ttl, tos=tos, id=seq & 0xFFFF, data=tcp)
        ip.df = int(df)
    return bytes(ip)


class Sink:
    """Records what the coalescer writes: ("plain", packet) or ("gso", vnet header, packet)."""

    def __init__(self, accept_gso: bool = True):
        self.out: list[tuple] = []
        self.accept_gso = accept_gso

    def write(self, packet: bytes) -> bool:
        self.out.append(("plain", bytes(packet)))
        return True

    def write_gso(self, parts: list, segments: int) -> bool:
        data = b"".join(bytes(p) for p in parts)
        self.out.append(("gso", data[:10], data[10:], segments))
        return self.accept_gso


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def resegment(vnet: bytes, packet: bytes) -> list[bytes]:
    """What the kernel makes of a super-packet: checksum completed (NEEDS_CSUM), cut at gso_size."""
    flags, gso_type, hdr_len, mss, csum_start, csum_offset = struct.unpack("=BBHHHH", vnet)
    assert flags == NEEDS_CSUM and csum_offset == 16
    v6 = gso_type == GSO_TCPV6
    ip_len = 40 if v6 else 20
    assert csum_start == ip_len and hdr_len == ip_len + (packet[ip_len + 12] >> 4) * 4
    # the field holds the pseudo-header sum: folding in header and payload completes the checksum
    tcp_part = packet[ip_len:]
    check = ~checksum(tcp_part) & 0xFFFF
    whole = bytearray(packet)
    whole[ip_len + 16:ip_len + 18] = struct.pack("!H", check)
    parsed = dpkt.ip6.IP6(bytes(whole)) if v6 else dpkt.ip.IP(bytes(whole))
    tcp = parsed.data
    # verify as a receiver would: checksum over pseudo-header + segment is 0xffff
    src, dst = (parsed.src, parsed.dst)
    lengths = struct.pack("!IxxxB", len(tcp_part), 6) if v6 else struct.pack("!HH", 6, len(tcp_part))
    pseudo = src + dst + lengths
    assert checksum(pseudo + bytes(whole[ip_len:])) == 0xFFFF
    if not v6:
        assert checksum(bytes(whole[:20])) == 0xFFFF and parsed.len == len(packet)
    else:
        assert parsed.plen == len(packet) - 40
    payload = bytes(tcp.data)
    return [payload[i:i + mss] for i in range(0, len(payload), mss)], tcp


@pytest.mark.parametrize("v6", [False, True])
def test_in_order_segments_become_one_super_packet(v6):
    sink = Sink()
    gro = TcpCoalescer(sink.write, sink.write_gso)
    payloads = [bytes([i]) * 1348 for i in range(5)] + [b"tail" * 10]
    seq = 4_294_960_000  # wraps around 2**32 inside the run
    for p in payloads:
        gro.add(seg(seq, p, v6=v6, flags=dpkt.tcp.TH_ACK | (dpkt.tcp.TH_PUSH if p.startswith(b"tail") else 0)))
        seq = (seq + len(p)) & 0xFFFFFFFF
    assert sink.out == []  # nothing written before the batch ends
    gro.flush()
    (kind, vnet, packet, segments), = sink.out
    assert kind == "gso" and segments == 6
    assert vnet[1] == (GSO_TCPV6 if v6 else GSO_TCPV4) and struct.unpack("=H", vnet[4:6])[0] == 1348
    pieces, tcp = resegment(vnet, packet)
    assert pieces == payloads
    assert tcp.seq == 4_294_960_000 and tcp.flags == dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH and tcp.opts == TS_OPTS
    assert gro.counters == {"merged": 6, "super_packets": 1, "refused": 0}
    gro.flush()
    assert len(sink.out) == 1


def test_single_segment_and_non_tcp_pass_unchanged():
    sink = Sink()
    gro = TcpCoalescer(sink.write, sink.write_gso)
    one = seg(1, b"x" * 100)
    udp = bytes(dpkt.ip.IP(src=A4, dst=B4, p=17, data=dpkt.udp.UDP(sport=1, dport=2, data=b"u")))
    gro.add(one)
    gro.add(udp)  # an unknown flow: everything queued goes first, then this packet
    gro.flush()
    assert sink.out == [("plain", one), ("plain", udp)]


@pytest.mark.parametrize("breaker", ["gap", "ack", "window", "options", "tos", "ttl", "longer", "syn", "fin",
                                     "no_payload", "ip_options"])
def test_segments_that_must_not_merge(breaker):
    sink = Sink()
    gro = TcpCoalescer(sink.write, sink.write_gso)
    first = seg(1000, b"a" * 500)
    second = {
        "gap": seg(1501, b"b" * 500), "ack": seg(1500, b"b" * 500, ack=78), "window": seg(1500, b"b" * 500, win=9),
        "options": seg(1500, b"b" * 500, opts=TS_OPTS[:-1] + b"\x01"), "tos": seg(1500, b"b" * 500, tos=3),
        "ttl": seg(1500, b"b" * 500, ttl=9), "longer": seg(1500, b"b" * 501),
        "syn": seg(1500, b"b" * 500, flags=dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK),
        "fin": seg(1500, b"b" * 500, flags=dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK),
        "no_payload": seg(1500, b""),
    }.get(breaker)
    if breaker == "ip_options":
        ip = dpkt.ip.IP(seg(1500, b"b" * 500))
        ip.opts = b"\x01\x01\x01\x00"
        ip.hl = 6
        ip.len = 0
        ip.sum = 0
        second = bytes(ip)
    gro.add(first)
    gro.add(second)
    gro.flush()
    assert [o[0] for o in sink.out] == ["plain", "plain"]
    assert [o[1] for o in sink.out] == [first, second]  # in order
    assert gro.counters["merged"] == 0


def test_a_pushed_or_short_segment_ends_the_run():
    sink = Sink()
    gro = TcpCoalescer(sink.write, sink.write_gso)
    gro.add(seg(0, b"a" * 100))
    gro.add(seg(100, b"b" * 50))  # short: closes the run
    gro.add(seg(150, b"c" * 100))  # in order, but starts a new run
    gro.add(seg(250, b"d" * 100, flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH))  # pushed: ends it
    gro.add(seg(350, b"e" * 100))
    gro.flush()
    kinds = [(o[0], o[3] if o[0] == "gso" else 1) for o in sink.out]
    assert kinds == [("gso", 2), ("gso", 2), ("plain", 1)]
    assert resegment(sink.out[0][1], sink.out[0][2])[0] == [b"a" * 100, b"b" * 50]
    assert resegment(sink.out[1][1], sink.out[1][2])[0] == [b"c" * 100, b"d" * 100]


def test_flows_interleave_but_each_stays_in_order():
    sink = Sink()
    gro = TcpCoalescer(sink.write, sink.write_gso)
    for i in range(4):
        gro.add(seg(i * 100, b"a" * 100, sport=1))
        gro.add(seg(i * 100, b"b" * 100, sport=2))
    fin = seg(400, b"", sport=1, flags=dpkt.tcp.TH_FIN | dpkt.tcp.TH_ACK)
    gro.add(fin)  # flow 1's queued data goes before its FIN; flow 2 stays queued
    assert [o[0] for o in sink.out] == ["gso", "plain"] and sink.out[1][1] == fin
    gro.flush()
    assert [o[0] for o in sink.out] == ["gso", "plain", "gso"]
    assert resegment(sink.out[2][1], sink.out[2][2])[0] == [b"b" * 100] * 4


def test_super_packet_never_exceeds_64k():
    sink = Sink()
    gro = TcpCoalescer(sink.write, sink.write_gso)
    for i in range(60):
        gro.add(seg(i * 1400, bytes(1400), opts=b""))
    gro.flush()
    sizes = [len(o[2]) for o in sink.out]
    assert all(s <= 65535 for s in sizes) and sum(o[3] if o[0] == "gso" else 1 for o in sink.out) == 60
    assert len(sink.out) == 2


@pytest.mark.parametrize("junk", [b"", b"\x45", b"\x45" + bytes(30), b"\x60" + bytes(50), b"\x00" * 60,
                                  bytes(seg(1, b"abc"))[:45]])
def test_junk_passes_through_without_raising(junk):
    sink = Sink()
    gro = TcpCoalescer(sink.write, sink.write_gso)
    gro.add(seg(1, b"z" * 10))
    gro.add(junk)
    gro.flush()
    assert sink.out[-1] == ("plain", junk) and sink.out[0][1] == seg(1, b"z" * 10)


def test_a_refused_super_packet_goes_out_as_the_packets_it_merged():
    sink = Sink(accept_gso=False)
    gro = TcpCoalescer(sink.write, sink.write_gso)
    packets = [seg(0, b"a" * 10), seg(10, b"b" * 10), udp_datagram(b"c" * 30), udp_datagram(b"d" * 30)]
    for p in packets:
        gro.add(p)
    gro.flush()
    assert [o for o in sink.out if o[0] == "plain"] == [("plain", p) for p in packets]
    assert gro.counters == {"merged": 0, "super_packets": 0, "refused": 2}


def udp_datagram(payload: bytes, *, v6: bool = False, sport: int = 7000, tos: int = 0) -> bytes:
    udp = dpkt.udp.UDP(sport=sport, dport=5201, data=payload)
    udp.ulen = len(udp)
    if v6:
        ip = dpkt.ip6.IP6(src=A6, dst=B6, nxt=17, hlim=63, fc=tos, data=udp)
        ip.plen = len(udp)
        ip.extension_hdrs = {}
    else:
        ip = dpkt.ip.IP(src=A4, dst=B4, p=17, ttl=63, tos=tos, data=udp)
    return bytes(ip)


def split_udp(vnet: bytes, packet: bytes) -> list[bytes]:
    """What the kernel makes of a GSO_UDP_L4 super-packet: checksum completed, cut at gso_size."""
    flags, gso_type, hdr_len, size, csum_start, csum_offset = struct.unpack("=BBHHHH", vnet)
    v6 = packet[0] >> 4 == 6
    ip_len = 40 if v6 else 20
    assert (flags, gso_type, hdr_len, csum_start, csum_offset) == (NEEDS_CSUM, 5, ip_len + 8, ip_len, 6)
    udp_part = bytearray(packet[ip_len:])
    assert struct.unpack("!H", udp_part[4:6])[0] == len(udp_part)
    udp_part[6:8] = struct.pack("!H", ~checksum(bytes(udp_part)) & 0xFFFF)
    src, dst = (packet[8:24], packet[24:40]) if v6 else (packet[12:16], packet[16:20])
    pseudo = src + dst + (struct.pack("!IxxxB", len(udp_part), 17) if v6 else struct.pack("!HH", 17, len(udp_part)))
    assert checksum(pseudo + bytes(udp_part)) == 0xFFFF
    if not v6:
        assert checksum(packet[:20]) == 0xFFFF and struct.unpack("!H", packet[2:4])[0] == len(packet)
    payload = bytes(udp_part[8:])
    return [payload[i:i + size] for i in range(0, len(payload), size)]


@pytest.mark.parametrize("v6", [False, True])
def test_udp_datagrams_of_one_flow_merge_at_their_boundaries(v6):
    sink = Sink()
    gro = TcpCoalescer(sink.write, sink.write_gso)
    payloads = [bytes([i]) * 1372 for i in range(4)] + [b"last" * 10]
    for p in payloads:
        gro.add(udp_datagram(p, v6=v6))
    gro.add(udp_datagram(b"after the short one" * 3, v6=v6))  # the short datagram closed the run
    gro.flush()
    assert [o[0] for o in sink.out] == ["gso", "plain"]
    assert split_udp(sink.out[0][1], sink.out[0][2]) == payloads and sink.out[0][3] == 5


def test_udp_and_tcp_with_the_same_ports_stay_apart():
    sink = Sink()
    gro = TcpCoalescer(sink.write, sink.write_gso)
    tcp = [seg(i * 100, b"t" * 100, sport=7000) for i in range(3)]
    udp = [udp_datagram(b"u" * 100, sport=7000) for _ in range(3)]
    for t, u in zip(tcp, udp, strict=True):
        gro.add(t)
        gro.add(u)
    gro.flush()
    kinds = sorted((o[2][9], o[3]) for o in sink.out)
    assert kinds == [(6, 3), (17, 3)]
    udp_out = next(o for o in sink.out if o[2][9] == 17)
    assert split_udp(udp_out[1], udp_out[2]) == [b"u" * 100] * 3


def test_udp_with_a_wrong_length_or_other_tos_is_not_merged():
    sink = Sink()
    gro = TcpCoalescer(sink.write, sink.write_gso)
    good = udp_datagram(b"a" * 100)
    bad = bytearray(udp_datagram(b"b" * 100))
    bad[24:26] = struct.pack("!H", 50)  # UDP length disagrees with the IP length
    other_tos = udp_datagram(b"c" * 100, tos=4)
    for p in (good, bytes(bad), other_tos):
        gro.add(p)
    gro.flush()
    assert sink.out == [("plain", good), ("plain", bytes(bad)), ("plain", other_tos)]


@pytest.mark.parametrize("change", ["fragment", "ttl", "udp_length"])
def test_a_full_size_udp_datagram_that_differs_in_its_header_ends_the_run(change):
    """add()'s fast path takes only what the slow path would merge: same length is not enough."""
    sink = Sink()
    gro = TcpCoalescer(sink.write, sink.write_gso)
    run = [udp_datagram(bytes([i]) * 200) for i in range(3)]
    odd = bytearray(udp_datagram(b"x" * 200))
    if change == "fragment":
        odd[6] |= 0x20  # MF: the first fragment of a larger datagram
    elif change == "ttl":
        odd[8] = 5
    else:
        odd[24:26] = struct.pack("!H", 100)
    for p in run:
        gro.add(p)
    gro.add(bytes(odd))
    gro.flush()
    assert [o[0] for o in sink.out] == ["gso", "plain"]
    assert split_udp(sink.out[0][1], sink.out[0][2]) == [bytes([i]) * 200 for i in range(3)]
    assert sink.out[1][1] == bytes(odd)
