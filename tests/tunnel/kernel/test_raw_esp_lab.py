"""Raw ESP (IP protocol 50) between two namespaces joined by a veth pair: both families, source
filtering, and the kernel-built outer header (TOS/traffic class with ECN, and DF, from the inner
packet; the SA's source on a wildcard IPv4 socket)."""

from __future__ import annotations

import socket

import pytest

from tests.tunnel.kernel.helpers import A4, A6, B4, B6, esp, gather
from tunnel.kernel.raw_esp import RawEspSocket, parse_ipv4_esp

pytestmark = pytest.mark.lab


def inner_v4(tos: int, df: bool) -> bytes:
    """The first bytes of an inner IPv4 packet: all tunnel_sender reads of it."""
    return bytes((0x45, tos, 0, 20, 0, 0, 0x40 if df else 0, 0)) + bytes(12)


def inner_v6(tclass: int) -> bytes:
    return bytes((0x60 | tclass >> 4, (tclass & 0x0F) << 4)) + bytes(38)


@pytest.mark.parametrize("family,local,peer", [(socket.AF_INET, A4, B4), (socket.AF_INET6, A6, B6)])
def test_raw_esp_both_ways(pair, family, local, peer):
    a, b = pair
    with a.entered():
        sender = RawEspSocket(family, local, peer)
    with b.entered():
        receiver = RawEspSocket(family, peer)
    try:
        assert sender.path_mtu() == 1500
        assert receiver.path_mtu() is None
        send = sender.tunnel_sender(peer)
        packets = [esp(0x1000 + i, i + 1, 40 + i) for i in range(20)]
        for i, packet in enumerate(packets):
            ecn = 0x02 if i % 2 else 0x01  # ECT(0) / ECT(1), copied from the inner packet
            assert send(packet, inner_v4(ecn, False) if family == socket.AF_INET else inner_v6(ecn))
        got = gather(receiver.recv_batch, 20)
        assert [d.esp for d in got] == packets
        assert {d.src for d in got} == {local}
        assert [d.ecn for d in got] == [2 if i % 2 else 1 for i in range(20)]
        # The other way, from an unconnected socket, with DF from the inner packet.
        reply = esp(0x2000, 1)
        assert receiver.tunnel_sender(local)(reply, inner_v4(0, True))
        raw = gather(sender.read_batch, 1)
        if family == socket.AF_INET:
            assert raw[0][6] & 0x40 and parse_ipv4_esp(raw[0]).esp == reply
            assert raw[0][9] == 50 and raw[0][12:16] == socket.inet_aton(peer)
        else:
            assert raw == [reply]
        assert sender.read_batch() == [] and receiver.recv_batch() == []  # drained: no blocking
    finally:
        sender.close()
        receiver.close()


def test_connected_raw_socket_filters_other_sources(pair):
    a, b = pair
    with b.entered():
        only_from_c = RawEspSocket(socket.AF_INET, B4, "192.0.2.3")
        anyone = RawEspSocket(socket.AF_INET, B4)
    with a.entered():
        sender = RawEspSocket(socket.AF_INET, A4, B4)
    try:
        assert sender.tunnel_sender(B4)(esp(1, 1), inner_v4(0, False))
        assert len(gather(anyone.recv_batch, 1)) == 1
        assert only_from_c.recv_batch() == []
    finally:
        for s in (only_from_c, anyone, sender):
            s.close()


def test_raw_short_packets_are_counted():
    assert parse_ipv4_esp(b"\x45" + bytes(10)) is None
    assert parse_ipv4_esp(b"\x45" + bytes(19) + b"\x00" * 4) is None  # under 8 bytes of ESP
    assert parse_ipv4_esp(b"\x41" + bytes(40)) is None


def test_tunnel_sender_sets_tos_and_df_per_packet_and_fragments_only_without_df(pair):
    a, b = pair
    with a.entered():
        sender = RawEspSocket(socket.AF_INET, A4)
    with b.entered():
        receiver = RawEspSocket(socket.AF_INET, B4)
    try:
        send = sender.tunnel_sender(B4)
        plan = [(0x00, False), (0x00, False), (0xB8 | 2, True), (0x01, True), (0x01, False), (0x00, False)]
        packets = [esp(0x3000 + i, i + 1, 100 + i) for i in range(len(plan))]
        for packet, (tos, df) in zip(packets, plan, strict=True):
            assert send(packet, inner_v4(tos, df))
        got = gather(receiver.read_batch, len(plan))
        assert [parse_ipv4_esp(d).esp for d in got] == packets
        assert [(d[1], bool(d[6] & 0x40)) for d in got] == plan
        assert all(d[9] == 50 and d[12:16] == socket.inet_aton(A4) and d[8] == 64 for d in got)
        # DF clear and too big for the link: the kernel fragments the outer packet
        assert send(esp(0x3200, 1, 3000), inner_v4(0, False))
        fragments = gather(receiver.read_batch, 1)  # reassembled before a raw socket sees it
        assert len(fragments) == 1 and len(parse_ipv4_esp(fragments[0]).esp) == 3000
        # DF set and too big: a counted drop, not an exception
        assert not send(esp(0x3201, 1, 3000), inner_v4(0, True))
        assert sender.counters["send_dropped"] == 1
    finally:
        sender.close()
        receiver.close()


def test_tunnel_sender_copies_tos_and_df_from_the_inner_packet(pair):
    a, b = pair
    with a.entered():
        sender = RawEspSocket(socket.AF_INET, "0.0.0.0")
    with b.entered():
        receiver = RawEspSocket(socket.AF_INET, B4)
    try:
        send = sender.tunnel_sender(B4, A4)
        plan = [(inner_v4(0, False), 0, False), (inner_v4(0xB8 | 1, True), 0xB9, True), (inner_v6(0x2A), 0x2A, True),
                (inner_v4(3, False), 3, False)]
        packets = [esp(0x5000 + i, i + 1, 80) for i in range(len(plan))]
        for packet, (inner, _, _) in zip(packets, plan, strict=True):
            assert send(packet, inner)
        got = gather(receiver.read_batch, len(plan))
        assert [parse_ipv4_esp(d).esp for d in got] == packets
        assert [(d[1], bool(d[6] & 0x40)) for d in got] == [(tos, df) for _, tos, df in plan]
        assert all(d[12:16] == socket.inet_aton(A4) for d in got)  # the SA's source on a wildcard socket
    finally:
        sender.close()
        receiver.close()
