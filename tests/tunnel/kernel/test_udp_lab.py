"""UDP 500/4500 between two namespaces joined by a veth pair: RFC 3948 framing, IP_PKTINFO, GSO/GRO."""

from __future__ import annotations

import socket
import time

import pytest

from ike.codec.constants import NON_ESP_MARKER
from tests.tunnel.kernel.helpers import A4, A6, B4, B6, esp, gather
from tunnel.kernel.udp import NAT_KEEPALIVE, UdpIkeSockets

pytestmark = pytest.mark.lab


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
    """The data path's UDP both ways: a burst leaves in GSO sends and arrives in GRO runs that
    read_esp_batch splits into the original datagrams, in order; IKE, keepalives and junk on the
    same port are set apart (IKE) or counted (keepalive)."""
    a, b = pair
    with a.entered():
        sender = UdpIkeSockets([A4], ports=(500, 4500))
    with b.entered():
        receiver = UdpIkeSockets([B4], ports=(500, 4500), gro=True)
    try:
        packets = [esp(0xAB, i + 1, 200) for i in range(30)] + [esp(0xAB, 31, 120)] + [esp(0xAB, 32, 300)]
        assert sender.send_esp_batch(packets, (B4, 4500), (A4, 4500)) == len(packets)
        assert sender.counters["gso_sends"] == 1  # 200 x 30 + 120 as one GSO send; the 300 byte one alone
        endpoint = sender.endpoint((A4, 4500), (B4, 4500), natt=True)
        endpoint.send(NON_ESP_MARKER + b"IKE", (B4, 4500))
        endpoint.send(NAT_KEEPALIVE, (B4, 4500))
        last = esp(0xAB, 33, 64)
        endpoint.send(last, (B4, 4500))
        fd = next(ep.fd for ep in receiver.endpoints if ep.natt)
        runs, others = [], []
        deadline = time.monotonic() + 3
        while sum(len(p) for p, _ in runs) < len(packets) + 1 and time.monotonic() < deadline:
            got_runs, got_others = receiver.read_esp_batch(fd)
            runs += got_runs
            others += got_others
            time.sleep(0.01)
        others += receiver.read_esp_batch(fd)[1]
        assert [p for run, _ in runs for p in run] == packets + [last]
        assert len(runs) < 10 and all(ecn == 0 for _, ecn in runs)  # GRO merged the burst
        assert [(d.kind, d.data, d.local, d.remote) for d in others] == [("ike", b"IKE", (B4, 4500), (A4, 4500))]
        counters = receiver.counters
        assert counters["esp"] == len(packets) + 1 and counters["keepalive"] == 1 and counters["ike"] == 1
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
