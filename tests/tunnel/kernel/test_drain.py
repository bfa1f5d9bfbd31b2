"""Drain loops: a lone packet is a batch of one, a burst one batch, a probe says when to stop."""

from __future__ import annotations

import socket
import time

import pytest

from tunnel.kernel.drain import pending_probe
from tunnel.kernel.tun import VNET_HDR_LEN, TunDevice
from tunnel.kernel.udp import UdpEndpoint


@pytest.fixture
def fake_tun():
    """A TunDevice around one end of a datagram socketpair: the other end plays the kernel."""
    kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    tun = TunDevice(ours.detach(), "fake0", 1, 1400, vnet_hdr=True)
    yield tun, kernel
    tun.close()
    kernel.close()


def test_pending_probe_says_whether_anything_is_queued():
    """What ends a lone packet's batch without a failing read: a poll of the fd alone."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe = pending_probe(b.fileno())
        assert not probe(0)
        a.send(b"one")
        assert probe(0)
        b.recv(10)
        assert not probe(0)
    finally:
        a.close()
        b.close()


def test_a_lone_packet_is_one_batch_and_the_next_comes_next_time(fake_tun):
    tun, kernel = fake_tun
    kernel.send(bytes(VNET_HDR_LEN) + b"\x45" + bytes(27))
    assert tun.read_batch(64) == [b"\x45" + bytes(27)]
    assert tun.read_batch(64) == []  # nothing queued: an empty batch, no exception
    kernel.send(bytes(VNET_HDR_LEN) + b"\x45" + bytes(19))
    assert tun.read_batch(64) == [b"\x45" + bytes(19)]
    assert tun.counters["read"] == 2


def test_a_burst_is_drained_in_one_batch(fake_tun):
    tun, kernel = fake_tun
    for n in range(5):
        kernel.send(bytes(VNET_HDR_LEN) + b"\x45" + bytes([n]) * 27)
    assert [p[1] for p in tun.read_batch(64)] == [0, 1, 2, 3, 4]
    for _ in range(3):
        kernel.send(bytes(VNET_HDR_LEN) + b"\x45" + bytes(27))
    assert len(tun.read_batch(2)) == 2 and len(tun.read_batch(2)) == 1  # max_packets still bounds it


def test_udp_esp_reads_stop_after_a_lone_datagram_and_drain_a_burst():
    endpoint = UdpEndpoint("127.0.0.1", 0, natt=True)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        esp = bytes.fromhex("c0ffee01") + bytes(60)
        sender.sendto(esp, ("127.0.0.1", endpoint.port))
        time.sleep(0.05)
        runs, others = endpoint.read_esp_batch(64)
        assert runs == [([esp], 0)] and others == []
        for _ in range(4):
            sender.sendto(esp, ("127.0.0.1", endpoint.port))
        sender.sendto(b"\0\0\0\0" + b"an IKE message", ("127.0.0.1", endpoint.port))
        time.sleep(0.05)
        runs, others = endpoint.read_esp_batch(64)
        assert [len(packets) for packets, _ecn in runs] == [1, 1, 1, 1]
        assert [d.data for d in others] == [b"an IKE message"]
        assert others[0].local == ("127.0.0.1", endpoint.port)  # IKE still learns the local address
        assert endpoint.read_esp_batch(64) == ([], [])
    finally:
        sender.close()
        endpoint.close()
