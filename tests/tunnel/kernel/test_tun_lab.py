"""TUN device, routes, ICMP too-big and pre-fragmentation against a real Linux stack (in a netns)."""

from __future__ import annotations

import ipaddress
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dpkt
import pytest

from tests.tunnel.kernel.helpers import namespaces
from tunnel.dataplane.fragment import fit_to_mtu, fragment_ipv4
from tunnel.kernel.routes import RouteTable
from tunnel.kernel.tun import TunDevice, TunError

pytestmark = pytest.mark.lab

TUN_ADDRS = ["10.99.0.1/24", "fd99::1/64"]


def wait_for(tun: TunDevice, predicate, timeout: float = 3.0) -> bytes:
    """Read from the TUN until a packet satisfies ``predicate`` (skipping e.g. IPv6 router solicitations)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([tun.fd], [], [], max(0.0, deadline - time.monotonic()))
        for packet in tun.read_batch():
            if predicate(packet):
                return packet
    raise AssertionError("expected packet never came out of the TUN")


def udp4(src: str, dst: str, sport: int, dport: int, payload: bytes, df: bool = True) -> bytes:
    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=ipaddress.ip_address(src).packed, dst=ipaddress.ip_address(dst).packed, p=17, ttl=64,
                    id=0x4242, data=udp)
    ip.df = int(df)
    return bytes(ip)  # dpkt computes the UDP checksum from the pseudo-header of the IP packet


@pytest.fixture
def netns():
    with namespaces("t") as (ns,):
        with ns.entered():
            yield ns


@pytest.fixture
def tun(netns):
    device = TunDevice.create(f"{netns.name}tun"[:15], 1400, addresses=TUN_ADDRS)
    try:
        yield device
    finally:
        device.close()


def test_create_configures_the_link(netns, tun):
    link = json.loads(netns.ip("-j", "-d", "link", "show", tun.name))[0]
    assert link["mtu"] == 1400 and link["txqlen"] == 4096 and "UP" in link["flags"]
    assert link["linkinfo"]["info_data"]["type"] == "tun" and link["linkinfo"]["info_data"]["pi"] is False
    addrs = {a["local"] for a in json.loads(netns.ip("-j", "addr", "show", tun.name))[0]["addr_info"]}
    assert {"10.99.0.1", "fd99::1"} <= addrs
    tun.set_mtu(1300)
    assert json.loads(netns.ip("-j", "link", "show", tun.name))[0]["mtu"] == 1300
    tun.close()
    tun.close()
    assert netns.ip("link", "show", tun.name, check=False) == ""


def test_bad_name_and_duplicate(netns, tun):
    with pytest.raises(TunError):
        TunDevice.create("x" * 16, 1400)
    with pytest.raises(TunError):
        TunDevice.create("lo", 1400)  # exists and is no TUN


def test_packets_both_ways_through_the_stack(netns, tun):
    assert tun.read_batch() == [] or True  # never blocks, even when empty
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("10.99.0.1", 9999))
    sock.settimeout(3)
    # TUN -> stack: a UDP datagram from a "remote" host arrives at a local socket.
    assert tun.write(udp4("10.99.0.2", "10.99.0.1", 5555, 9999, b"hello from the tunnel"))
    data, peer = sock.recvfrom(100)
    assert data == b"hello from the tunnel" and peer == ("10.99.0.2", 5555)
    # stack -> TUN: the reply leaves through the TUN, where we read it whole.
    sock.sendto(b"reply", peer)
    packet = wait_for(tun, lambda p: p[0] >> 4 == 4 and p[9] == 17)
    ip = dpkt.ip.IP(packet)
    assert ip.src == socket.inet_aton("10.99.0.1") and ip.data.dport == 5555 and ip.data.data == b"reply"
    sock.close()
    assert not tun.write(b"\x00garbage")  # counted, not raised
    assert tun.counters["write_dropped"] == 1


def test_read_batch_drains_many(netns, tun):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(100):
        sock.sendto(b"%d" % i, ("10.99.0.7", 7))
    sock.close()
    first = tun.read_batch(64)
    rest = tun.read_batch(64)
    udp = [p for p in first + rest if p[0] >> 4 == 4]
    assert len(first) == 64 and len(udp) == 100


def test_routes_added_and_removed(netns, tun):
    routes = RouteTable(tun.name)
    routes.add("10.200.0.0/16")
    routes.add("fd42::/48")
    routes.add("10.200.0.0/16")  # already ours: no error
    routes.add("10.202.0.0/16", src="10.99.0.1")
    assert "10.202.0.0/16 proto static scope link src 10.99.0.1" in netns.ip("route", "show", "dev", tun.name)
    assert "10.200.0.0/16" in netns.ip("route", "show", "dev", tun.name)
    assert "fd42::/48" in netns.ip("-6", "route", "show", "dev", tun.name)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.sendto(b"v6", ("fd42::9", 9))
    packet = wait_for(tun, lambda p: p[0] >> 4 == 6 and p[6] == 17)
    assert packet[24:40] == ipaddress.ip_address("fd42::9").packed
    sock.close()
    routes.remove_all()
    routes.remove_all()
    assert "10.200.0.0" not in netns.ip("route", "show") and "10.202.0.0" not in netns.ip("route", "show")
    assert "fd42::" not in netns.ip("-6", "route", "show")
    assert not routes.remove("10.1.0.0/16")


CHILD = textwrap.dedent("""
    import sys, time
    from tunnel.kernel.routes import CleanupOnSignal, RouteTable
    routes = RouteTable(sys.argv[1])
    routes.add("10.201.0.0/16")
    routes.add("fd43::/48")
    with CleanupOnSignal(routes.remove_all):
        print("ready", flush=True)
        time.sleep(30)
""")


@pytest.mark.parametrize("signum,exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, -signal.SIGINT)])
def test_routes_removed_after_signal(netns, signum, exit_code):
    # A veth link outlives the child, so only the cleanup handler can take the routes away.
    netns.ip("link", "add", "eodummy", "type", "veth", "peer", "name", "eodummy1")
    netns.ip("link", "set", "eodummy1", "up")
    netns.ip("link", "set", "eodummy", "up")
    child = netns.popen(sys.executable, "-c", CHILD, "eodummy", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True, cwd=str(Path(__file__).resolve().parents[3]))
    try:
        lines = iter(child.stdout.readline, "")  # structlog's default output shares stdout
        assert any(line.strip() == "ready" for line in lines), child.stderr.read()
        assert "10.201.0.0/16" in netns.ip("route", "show", "dev", "eodummy")
        child.send_signal(signum)
        assert child.wait(timeout=10) == exit_code
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert "10.201.0.0" not in netns.ip("route", "show")
    assert "fd43::" not in netns.ip("-6", "route", "show")


def forward_one_too_big(tun: TunDevice, version: int, tunnel_mtu: int) -> None:
    """Play a gateway: answer the oversize packet from the TUN with ICMP from our own address (accept_local)."""
    packet = wait_for(tun, lambda p: p[0] >> 4 == version and len(p) > tunnel_mtu, timeout=5)
    verdict = fit_to_mtu(packet, tunnel_mtu, icmp_source_v4="10.99.0.1", icmp_source_v6="fd99::1")
    assert verdict.packets == [] and verdict.icmp_reply is not None
    assert tun.write(verdict.icmp_reply)


@pytest.mark.parametrize("version,target,mtu", [(4, "10.200.0.1", 1000), (6, "fd42::1", 1300)])
def test_df_ping_gets_too_big_from_the_stack(netns, tun, version, target, mtu):
    routes = RouteTable(tun.name)
    routes.add("10.200.0.0/16")
    routes.add("fd42::/48")
    ping = netns.popen("ping", f"-{version}", "-M", "do", "-s", "1300", "-c", "2", "-i", "0.3", "-W", "1", target,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        forward_one_too_big(tun, version, mtu)
        output = ping.communicate(timeout=10)[0]
        # The kernel took our message: it caches the announced MTU for the destination.
        route = netns.ip(f"-{version}", "route", "get", target)
        assert f"mtu {mtu}" in route, (route, output)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait()
        routes.remove_all()
    if version == 4:
        assert "Frag needed" in output or "message too long" in output, output


def test_fragments_are_reassembled_by_the_stack(netns, tun):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("10.99.0.1", 9998))
    sock.settimeout(3)
    payload = os.urandom(4000)
    packet = udp4("10.99.0.2", "10.99.0.1", 5556, 9998, payload, df=False)
    verdict = fit_to_mtu(packet, 1000)
    assert len(verdict.packets) == 5 and verdict.icmp_reply is None
    for fragment in reversed(verdict.packets):  # out of order on purpose
        assert tun.write(fragment)
    assert sock.recv(5000) == payload
    for fragment in fragment_ipv4(udp4("10.99.0.2", "10.99.0.1", 5556, 9998, payload[:1500], df=False), 576):
        tun.write(fragment)
    assert sock.recv(5000) == payload[:1500]
    sock.close()
