"""The fast data path between two espgw gateways: GRO towards the TUN, UDP GSO/GRO, data intact.

A TCP transfer with a SHA-256 over every byte runs hostA -> hostB through the tunnel; the
gateways' counters show that the fast mechanisms actually carried it (super-packets into gwB's
TUN, GSO sends on gwA's UDP socket), so a silent fallback to the slow path fails the test.
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
    assert tun["gso_segments"] == gro["merged"] and tun["write_dropped"] == 0
    # fewer ACKs come back than data segments went out (the receiver acknowledges super-packets)
    assert counters_a["packets_in"] < counters_a["packets_out"] / 3
    if encap == "udp":
        assert counters_a["udp"]["gso_sends"] > 0
        assert counters_a["udp"]["gso_sends"] < counters_a["udp"]["sent"] / 2
    assert not b.status()["drops"] and not a.status()["drops"]
