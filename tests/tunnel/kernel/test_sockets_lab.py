"""Raw ESP and UDP 500/4500 sockets between two namespaces joined by a veth pair."""

from __future__ import annotations

import select
import socket

import pytest

from tests.tunnel.kernel.helpers import A4, A6, B4, B6, esp, gather
from tunnel.kernel.udp import NON_ESP_MARKER, RawEspSocket, UdpIkeSockets, parse_ipv4_esp

pytestmark = pytest.mark.lab

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
        packets = [esp(0x1000 + i, i + 1, 40 + i) for i in range(20)]
        for i, packet in enumerate(packets):
            assert sender.send_esp(packet, tos=0x02 if i % 2 else 0x01)  # ECT(0) / ECT(1)
        got = gather(receiver.recv_batch, 20)
        assert [d.esp for d in got] == packets
        assert {d.src for d in got} == {local}
        assert [d.ecn for d in got] == [2 if i % 2 else 1 for i in range(20)]
        # The other way, unconnected, with DF on the IPv4 outer header.
        reply = esp(0x2000, 1)
        assert receiver.send_esp(reply, local, df=True)
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
        sender.send_esp(esp(1, 1))
        assert len(gather(anyone.recv_batch, 1)) == 1
        assert only_from_c.recv_batch() == []
    finally:
        for s in (only_from_c, anyone, sender):
            s.close()


def test_raw_short_packets_are_counted():
    assert parse_ipv4_esp(b"\x45" + bytes(10)) is None
    assert parse_ipv4_esp(b"\x45" + bytes(19) + b"\x00" * 4) is None  # under 8 bytes of ESP
    assert parse_ipv4_esp(b"\x41" + bytes(40)) is None


def udp_peer(ns, family: int, addr: str) -> socket.socket:
    with ns.entered():
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((addr, 0))
    sock.settimeout(3)
    return sock


@pytest.mark.parametrize("family,wildcard,local,peer", [(socket.AF_INET, "0.0.0.0", B4, A4),
                                                        (socket.AF_INET6, "::", B6, A6)])
def test_udp_marker_keepalive_and_pktinfo(pair, family, wildcard, local, peer):
    a, b = pair
    with b.entered():
        gateway = UdpIkeSockets([wildcard])
    remote = udp_peer(a, family, peer)
    try:
        natt_fd = next(ep.fd for ep in gateway.endpoints if ep.natt)
        ike_fd = next(ep.fd for ep in gateway.endpoints if not ep.natt)
        packet = esp(0xC0FFEE, 7)
        remote.sendto(NON_ESP_MARKER + b"IKE-on-4500", (local, 4500))
        remote.sendto(packet, (local, 4500))
        remote.sendto(b"\xff", (local, 4500))  # keepalive
        remote.sendto(b"\x00\x00", (local, 4500))  # junk
        remote.sendto(NON_ESP_MARKER, (local, 4500))  # a marker and nothing else
        remote.sendto(b"IKE-on-500", (local, 500))
        got = gather(lambda: gateway.read_batch(natt_fd), 2)
        got += gather(lambda: gateway.read_batch(ike_fd), 1)
        remote_addr = remote.getsockname()[:2]
        assert [(d.kind, d.data) for d in got] == [("ike", b"IKE-on-4500"), ("esp", packet), ("ike", b"IKE-on-500")]
        assert {d.local for d in got} == {(local, 4500), (local, 500)}  # IP_PKTINFO despite the wildcard
        assert {d.remote for d in got} == {remote_addr}
        counters = gateway.counters
        assert counters["keepalive"] == 1 and counters["malformed"] == 2
        assert counters["ike"] == 2 and counters["esp"] == 1

        assert gateway.send_ike(b"reply-4500", remote_addr, (local, 4500))
        assert remote.recvfrom(100) == (NON_ESP_MARKER + b"reply-4500", (local, 4500) + (() if family == socket.AF_INET
                                                                                         else (0, 0)))
        assert gateway.send_ike(b"reply-500", remote_addr, (local, 500))
        assert remote.recv(100) == b"reply-500"
        assert gateway.send_esp(packet, remote_addr, (local, 4500))
        assert remote.recv(100) == packet
        assert gateway.send_keepalive(remote_addr, (local, 4500))
        assert remote.recv(100) == b"\xff"
    finally:
        gateway.close()
        remote.close()


def test_esp_in_udp_gso_send_and_gro_receive(pair):
    a, b = pair
    with a.entered():
        sender = UdpIkeSockets([A4], ports=(500, 4500))
    with b.entered():
        receiver = UdpIkeSockets([B4], ports=(500, 4500), gro=True)
    try:
        packets = [esp(0xAB, i + 1, 200) for i in range(30)] + [esp(0xAB, 31, 120)] + [esp(0xAB, 32, 300)]
        endpoint = sender.endpoint((A4, 4500), (B4, 4500), natt=True)
        singles = []
        plain_send = endpoint.send
        endpoint.send = lambda *args: singles.append(args) or plain_send(*args)
        assert sender.send_esp_batch(packets, (B4, 4500), (A4, 4500)) == len(packets)
        assert len(singles) == 1  # 200 x 30 + 120 went as one GSO send; the 300 byte one alone
        fd = next(ep.fd for ep in receiver.endpoints if ep.natt)
        select.select([fd], [], [], 3)
        got = gather(lambda: receiver.read_batch(fd), len(packets))
        assert [(d.kind, d.data) for d in got] == [("esp", p) for p in packets]
        assert {d.remote for d in got} == {(A4, 4500)}
    finally:
        sender.close()
        receiver.close()


def test_no_socket_for_a_family(pair):
    a, _ = pair
    with a.entered():
        gateway = UdpIkeSockets([A4])
    try:
        with pytest.raises(ValueError):
            gateway.send_ike(b"x", (B6, 500))
    finally:
        gateway.close()
