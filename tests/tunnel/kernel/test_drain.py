"""Drain loops end a lone packet's batch with a zero-timeout poll instead of a failing read."""

from __future__ import annotations

import os
import socket
import time

import pytest

from tunnel.kernel.udp import UdpEndpoint
from tunnel.kernel.tun import VNET_HDR_LEN, TunDevice


@pytest.fixture
def fake_tun():
    """A TunDevice around one end of a datagram socketpair: the other end plays the kernel."""
    kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    tun = TunDevice(ours.detach(), "fake0", 1, 1400, vnet_hdr=True)
    yield tun, kernel
    tun.close()
    kernel.close()


def _counting_reads(monkeypatch):
    calls = {"read": 0, "eagain": 0}
    real = os.read

    def read(fd, n):
        calls["read"] += 1
        try:
            return real(fd, n)
        except BlockingIOError:
            calls["eagain"] += 1
            raise

    monkeypatch.setattr(os, "read", read)
    return calls


def test_a_lone_packet_is_read_without_a_failing_read(fake_tun, monkeypatch):
    tun, kernel = fake_tun
    calls = _counting_reads(monkeypatch)
    kernel.send(bytes(VNET_HDR_LEN) + b"\x45" + bytes(27))
    assert tun.read_batch(64) == [b"\x45" + bytes(27)]
    assert calls == {"read": 1, "eagain": 0}
    kernel.send(bytes(VNET_HDR_LEN) + b"\x45" + bytes(19))  # what comes later is read next time
    assert tun.read_batch(64) == [b"\x45" + bytes(19)]
    assert tun.counters["read"] == 2 and tun.counters["read_batches"] == 2


def test_a_burst_is_drained_in_one_batch(fake_tun, monkeypatch):
    tun, kernel = fake_tun
    calls = _counting_reads(monkeypatch)
    for n in range(5):
        kernel.send(bytes(VNET_HDR_LEN) + b"\x45" + bytes([n]) * 27)
    assert [p[1] for p in tun.read_batch(64)] == [0, 1, 2, 3, 4]
    assert calls == {"read": 6, "eagain": 1}  # as before: the burst ends with the read that finds none
    for n in range(3):
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
