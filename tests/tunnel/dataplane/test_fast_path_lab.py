"""The fast data path between two espgw gateways: GRO towards the TUN, UDP GSO/GRO, data intact.

A TCP transfer with a SHA-256 over every byte runs hostA -> hostB through the tunnel; the
gateways' counters show that the fast mechanisms actually carried it (super-packets into gwB's
TUN, GSO sends on gwA's UDP socket, raw ESP through gwA's TX ring), so a silent fallback to the
slow path fails the test.
"""

from __future__ import annotations

import dataclasses

import pytest

from tunnel.lab.configs import site_to_site
from tunnel.lab.espgw import EspgwGateway, GatewaySettings, tcp_transfer, wait_until
from tunnel.lab.netns import Lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab():
    with Lab() as lab:
        yield lab


@pytest.fixture
def gateways(lab):
    started = []

    def start(encap: str):
        conns = {side: site_to_site(lab, side) for side in "AB"}
        conns["A"].children[0].start_action = "trap"
        settings = GatewaySettings(esp_encap=encap, log_level="warning")
        b = EspgwGateway(lab, lab.gwB, [conns["B"]], dataclasses.replace(settings)).start()
        started.append(b)
        a = EspgwGateway(lab, lab.gwA, [conns["A"]], dataclasses.replace(settings)).start()
        started.append(a)
        lab.ping(lab.hostA, lab.hostB.addr4, count=1, wait=3)  # the trap starts IKE
        wait_until(a.children, 15, "gwA's CHILD SA")
        return a, b

    yield start
    for gw in started:
        print(f"--- {gw.name}\n{gw.log_tail(40)}")
        gw.stop()


@pytest.mark.parametrize("encap,inner", [("raw", 4), ("raw", 6), ("udp", 4)])
def test_tcp_transfer_intact_through_gro_and_gso(lab, gateways, encap, inner):
    a, b = gateways(encap)
    dst = lab.hostB.addr4 if inner == 4 else lab.hostB.addr6
    assert lab.ping(lab.hostA, dst, count=2, interval=0.1, wait=2).ok
    size = 30 * 1024 * 1024
    sent, received = tcp_transfer(lab, lab.hostA, lab.hostB, dst, size, seed=inner)
    assert sent == received and sent.startswith(str(size))
    counters_b, counters_a = b.status()["counters"], a.status()["counters"]
    gro, tun = counters_b["gro"], counters_b["tun"]
    # most data segments reached hostB inside super-packets, each carrying several segments
    assert gro["super_packets"] > 0 and gro["merged"] > 0.5 * size / 1400, gro
    assert tun["gso_segments"] == gro["merged"] and tun["write_dropped"] == 0 and gro["refused"] == 0
    # fewer ACKs come back than data segments went out (the receiver acknowledges super-packets)
    assert counters_a["packets_in"] < counters_a["packets_out"] / 3
    if encap == "raw":  # the data went out through gwA's TX ring, many frames per send()
        ring = counters_a["raw_esp_ring"]
        assert ring["frames"] > 0.5 * size / 1400 and ring["flushes"] < ring["frames"] / 2, ring
        assert ring["ring_full"] == 0 and ring["paths"] == 1
    if encap == "udp":
        assert counters_a["udp"]["gso_sends"] > 0
        assert counters_a["udp"]["gso_sends"] < counters_a["udp"]["sent"] / 2
    assert not b.status()["drops"] and not a.status()["drops"]


_UDP_SINK = """
import socket, sys, hashlib
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind(("0.0.0.0", 5002))
s.settimeout(5)
print("listening", flush=True)
got = []
try:
    while len(got) < int(sys.argv[1]):
        got.append(s.recv(65535))
except socket.timeout:
    pass
print(len(got), sum(len(g) for g in got), hashlib.sha256(b"".join(got)).hexdigest(), flush=True)
"""

_UDP_SOURCE = """
import socket, sys, hashlib
n, dst = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sizes = [1372] * (n - 1) + [300]
data = [bytes([i % 251]) * 4 + i.to_bytes(4, "big") + bytes(range(256)) * 6 for i in range(n)]
data = [d[:size] for d, size in zip(data, sizes)]
for i in range(0, n, 40):  # bursts, so that the receiving gateway sees runs of one flow
    for d in data[i:i + 40]:
        s.sendto(d, (dst, 5002))
print(n, sum(map(len, data)), hashlib.sha256(b"".join(data)).hexdigest(), flush=True)
"""


def test_udp_datagrams_keep_their_boundaries_through_gro(lab, gateways):
    """Inner UDP of one flow leaves gwB's TUN merged (GSO_UDP_L4); hostB still reads each datagram."""
    import subprocess
    import sys

    a, b = gateways("raw")
    assert lab.ping(lab.hostA, lab.hostB.addr4, count=2, interval=0.1, wait=2).ok
    count = 400
    sink = lab.spawn(lab.hostB, sys.executable, "-c", _UDP_SINK, str(count), stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT)
    try:
        assert sink.stdout.readline().strip() == b"listening"
        sent = lab.run(lab.hostA, sys.executable, "-c", _UDP_SOURCE, str(count), lab.hostB.addr4).stdout.strip()
        received = sink.communicate(timeout=30)[0].decode().strip()
    finally:
        lab.stop(sink, timeout=2)
    assert received == sent  # every datagram, in order, with its own length and bytes
    gro = b.status()["counters"]["gro"]
    assert gro["super_packets"] > 0 and gro["merged"] >= count // 4, gro
