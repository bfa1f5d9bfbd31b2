"""espgw <-> espgw in the namespace lab: traffic, MTU, policy checks, restarts, rekeys, encapsulation.

One lab (IPv4 + IPv6 everywhere) is shared by the module; each test starts its own pair of
gateways (``pair`` fixture) and stops them afterwards, so tests do not leak SAs into each other.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from ike.config import ChildConfig, TrafficSelector
from tunnel.lab.configs import site_to_site
from tunnel.lab.espgw import EspgwGateway, GatewaySettings, tcp_transfer, wait_until
from tunnel.lab.netns import Lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab():
    with Lab() as lab:
        yield lab


class Pair:
    """gwA initiates on demand (trap), gwB only responds, like the demo."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.a: EspgwGateway | None = None
        self.b: EspgwGateway | None = None

    def start(self, *, settings: GatewaySettings | None = None, trap: bool = True, **site_kw) -> "Pair":
        conn_a, conn_b = site_to_site(self.lab, "A", **site_kw), site_to_site(self.lab, "B", **site_kw)
        for child in conn_a.children:
            child.start_action = "trap" if trap else "none"
        settings = settings or GatewaySettings()
        self.a = EspgwGateway(self.lab, self.lab.gwA, [conn_a], dataclasses.replace(settings)).start()
        self.b = EspgwGateway(self.lab, self.lab.gwB, [conn_b], dataclasses.replace(settings)).start()
        return self

    def stop(self) -> None:
        for gw in (self.a, self.b):
            if gw is not None:
                gw.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {gw.name} log\n{gw.log_tail(60)}" for gw in (self.a, self.b) if gw)


@pytest.fixture
def pair(lab):
    p = Pair(lab)
    yield p
    print(p.logs())  # pytest shows captured output only for a failed test
    p.stop()


def _ping_ok(lab, src, dst, **kw) -> bool:
    """On-demand: the first packets trigger the negotiation, so allow one warm-up round."""
    lab.ping(src, dst, count=1, wait=2)
    return lab.ping(src, dst, count=3, interval=0.1, **kw).ok


def test_ping_ipv4_and_ipv6_inner_over_ipv4_outer(lab, pair):
    assert not lab.untunnelled_reachable()  # only the tunnel joins the LANs
    pair.start()
    assert _ping_ok(lab, lab.hostA, lab.hostB.addr4)
    assert _ping_ok(lab, lab.hostA, lab.hostB.addr6)
    assert lab.ping(lab.hostB, lab.hostA.addr4, count=3, interval=0.1).ok
    assert lab.ping(lab.hostB, lab.hostA.addr6, count=3, interval=0.1).ok
    (child_a,) = pair.a.children()
    (child_b,) = pair.b.children()
    assert child_a["spi_out"] == child_b["spi_in"] and child_a["spi_in"] == child_b["spi_out"]
    assert child_a["packets_out"] >= 8 and child_b["packets_in"] == child_a["packets_out"]


@pytest.mark.parametrize("inner", [4, 6])
def test_tcp_50mb_with_checksum(lab, pair, inner):
    pair.start()
    dst = lab.hostB.addr4 if inner == 4 else lab.hostB.addr6
    assert _ping_ok(lab, lab.hostA, dst)
    sent, received = tcp_transfer(lab, lab.hostA, lab.hostB, dst, 50 * 1024 * 1024, seed=inner)
    assert sent == received and sent.startswith(str(50 * 1024 * 1024))
