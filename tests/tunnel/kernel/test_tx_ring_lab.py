"""Raw ESP through an AF_PACKET TX ring (tunnel.kernel.tx_ring), between two namespaces on a veth pair.

Frames must arrive byte for byte, many per send(); a ring the kernel does not drain is a
counted drop, never a hang; whatever the ring cannot carry (next hop not resolved yet, too
big, a neighbour probe due, no Ethernet route) is handed back to the caller's raw socket.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

from esp.outer import OuterIPv4
from tests.tunnel.kernel.helpers import namespaces, veth
from tunnel.kernel.tx_ring import PacketTxRing, RingSet

pytestmark = pytest.mark.lab

A_IP, B_IP = "198.51.100.1", "198.51.100.2"


def _pair():
    return namespaces("a", "b")


def _link(a, b):
    return veth(a, b, [f"{A_IP}/24"], [f"{B_IP}/24"])


def _mac(ns, dev: str) -> str:
    return ns.ip("-o", "link", "show", dev).split("link/ether ")[1].split()[0]


def _drain(sock, expect: int, timeout: float = 3.0) -> list[bytes]:
    got, deadline = [], time.monotonic() + timeout
    while len(got) < expect and time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096))
        except BlockingIOError:
            time.sleep(0.01)
    return got


def test_frames_arrive_intact_many_per_send():
    with _pair() as (a, b):
        dev_a, dev_b = _link(a, b)
        a.ip("neigh", "replace", B_IP, "lladdr", _mac(b, dev_b), "dev", dev_a, "nud", "permanent")
        with b.entered():
            rx = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_NONBLOCK, 50)
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        with a.entered():
            rings = RingSet(frames=64)
            path = rings.path_to(B_IP, now=0.0)
            outer = OuterIPv4(socket.inet_aton(A_IP), socket.inet_aton(B_IP))
            inner = bytes([0x45, 0, 0, 20, 0, 0, 0x40, 0]) + bytes(12)
            payloads = [os.urandom(16) + i.to_bytes(4, "big") + os.urandom(i * 7 % 1300) for i in range(300)]
            for p in payloads:  # more than the ring holds: put() flushes when it comes round
                assert path.send(outer.build(len(p), inner), p) is True
            rings.flush()
            counters = rings.counters()
            rings.close()
        got = _drain(rx, len(payloads))
        rx.close()
        assert [g[20:] for g in got] == payloads  # in order, byte for byte, after the outer header
        assert all(g[9] == 50 and g[12:16] == socket.inet_aton(A_IP) and g[6] & 0x40 for g in got)
        assert counters["frames"] == 300 and counters["flushes"] < 30 and counters["ring_full"] == 0
        assert counters["paths"] == 1


def test_a_ring_the_kernel_cannot_drain_is_a_counted_drop():
    with _pair() as (a, b):
        dev_a, _ = _link(a, b)
        with a.entered():
            ring = PacketTxRing(dev_a, frames=16)
        a.ip("link", "set", dev_a, "down")  # send() fails: the slots stay queued
        link, net = bytes(14), bytes(20)
        results = [ring.put(link, net, b"x" * 100) for _ in range(20)]
        ring.flush()
        counters = dict(ring.counters)
        ring.close()
        assert results.count(True) == 16 and results.count(False) == 4
        assert counters["ring_full"] == 4 and counters["send_errors"] >= 1
        assert ring.put(link, net, b"x" * 4000) is False and ring.counters["too_big"] == 1


def test_what_the_ring_cannot_carry_goes_back_to_the_socket():
    with _pair() as (a, b):
        dev_a, dev_b = _link(a, b)
        with a.entered():
            rings = RingSet(frames=16, retry=0.5)
            path = rings.path_to(B_IP, now=0.0)  # no neighbour entry yet
            assert path.send(bytes(20), b"e" * 100) is None
            a.ip("neigh", "replace", B_IP, "lladdr", _mac(b, dev_b), "dev", dev_a, "nud", "stale")
            rings.maintain(0.2)  # before the retry interval: nothing changes
            assert path.send(bytes(20), b"e" * 100) is None
            rings.maintain(1.0)  # resolved, but STALE: one packet through the kernel first
            assert path.send(bytes(20), b"e" * 100) is None
            assert path.send(bytes(20), b"e" * 100) is True
            assert path.send(bytes(20), b"e" * 1481) is None  # 20 + 1481 > the 1500-byte MTU
            a.ip("neigh", "replace", B_IP, "lladdr", _mac(b, dev_b), "dev", dev_a, "nud", "permanent")
            rings.maintain(7.0)
            assert path.send(bytes(20), b"e" * 100) is True
            rings.flush()
            rings.maintain(13.0)  # used since the last check: re-resolved, still on the ring
            assert path.send(bytes(20), b"e" * 100) is True
            rings.maintain(19.0)  # used again; then a pause
            rings.maintain(25.0)  # unused since 19: no netlink now, but the next packet probes
            assert path.send(bytes(20), b"e" * 100) is None
            assert path.send(bytes(20), b"e" * 100) is True
            rings.flush()
            assert rings.counters()["paths"] == 1
            rings.close()


def test_no_ring_without_an_ethernet_route():
    with _pair() as (a, b):
        _link(a, b)
        a.ip("tuntap", "add", "dev", "tunx", "mode", "tun")
        a.ip("link", "set", "tunx", "up")
        a.ip("addr", "add", "203.0.113.1/24", "dev", "tunx")
        with a.entered():
            rings = RingSet()
            assert rings.path_to("203.0.113.9", now=0.0).send(bytes(20), b"x") is None  # via a TUN
            assert rings.path_to("192.0.2.99", now=0.0).send(bytes(20), b"x") is None  # no route at all
            assert rings.counters()["paths"] == 0
            rings.close()


def test_a_ring_whose_interface_is_replaced_is_rebuilt():
    with _pair() as (a, b):
        dev_a, dev_b = _link(a, b)
        a.ip("neigh", "replace", B_IP, "lladdr", _mac(b, dev_b), "dev", dev_a, "nud", "permanent")
        with a.entered():
            rings = RingSet(frames=16)
            path = rings.path_to(B_IP, now=0.0)
            assert path.send(bytes(20), b"e" * 100) is True
            rings.flush()
        a.ip("link", "del", dev_a)  # the veth goes; a new one with the same name and address comes
        dev_a, dev_b = _link(a, b)
        a.ip("neigh", "replace", B_IP, "lladdr", _mac(b, dev_b), "dev", dev_a, "nud", "permanent")
        with b.entered():
            rx = socket.socket(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_NONBLOCK, 50)
        with a.entered():
            path.send(bytes(20), b"e" * 100)
            rings.flush()  # ENXIO on the old ring: counted, the ring marked dead
            rings.maintain(6.0)  # the refresh builds a new ring on the new interface
            outer = OuterIPv4(socket.inet_aton(A_IP), socket.inet_aton(B_IP))
            assert path.send(outer.build(100, bytes(20)), b"f" * 100) is True
            rings.flush()
            rings.close()
        got = _drain(rx, 1)
        rx.close()
        assert got and got[-1][20:] == b"f" * 100
