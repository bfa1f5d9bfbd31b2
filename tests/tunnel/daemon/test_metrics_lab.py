"""The metrics endpoint in the namespace lab: scraped over HTTP inside each gateway's namespace
after pings through the tunnel, its values parsed with prometheus_client's text parser agree with
``espgw status --json``."""

from __future__ import annotations

import json
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tunnel.lab.configs import site_to_site
from tunnel.lab.espgw import EspgwGateway, GatewaySettings
from tunnel.lab.netns import Lab

pytestmark = pytest.mark.lab

METRICS = "127.0.0.1:9469"  # each namespace has its own loopback: both gateways use it
SCRAPE = ("import sys, urllib.request; "
          f"sys.stdout.write(urllib.request.urlopen('http://{METRICS}/metrics', timeout=5).read().decode())")


@pytest.fixture(scope="module")
def tunnel():
    """Two gateways with the endpoint on, pinged through (gwA starts the SA on demand)."""
    with Lab() as lab:
        conn_a, conn_b = site_to_site(lab, "A"), site_to_site(lab, "B")
        for child in conn_a.children:
            child.start_action = "trap"
        a = EspgwGateway(lab, lab.gwA, [conn_a], GatewaySettings(metrics=METRICS)).start()
        b = EspgwGateway(lab, lab.gwB, [conn_b], GatewaySettings(metrics=METRICS)).start()
        try:
            lab.ping(lab.hostA, lab.hostB.addr4, count=1, wait=2)  # the first packet starts the negotiation
            assert lab.ping(lab.hostA, lab.hostB.addr4, count=5, interval=0.1).ok
            yield lab, a, b
        finally:
            print(f"--- gwA\n{a.log_tail()}\n--- gwB\n{b.log_tail()}")
            a.stop()
            b.stop()


def scrape(lab: Lab, gateway: EspgwGateway) -> dict[tuple[str, tuple], float]:
    text = lab.run(gateway.node, sys.executable, "-c", SCRAPE).stdout
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_packet_counters_match_status(tunnel):
    lab, a, b = tunnel
    for gateway in (a, b):
        got = scrape(lab, gateway)
        status = json.loads(gateway.cli("status", "--json").stdout)
        totals = status["counters"]
        for unit in ("packets", "bytes"):
            for direction in ("in", "out"):
                value = got[(f"espgw_{unit}_total", (("direction", direction),))]
                assert value == totals[f"{unit}_{direction}"] > 0, (gateway.name, unit, direction)
        (child,) = [c for sa in status["ike_sas"] for c in sa["children"]]
        labels = (("child", child["name"]), ("connection", "lab"), ("spi_in", child["spi_in"]))
        for direction in ("in", "out"):
            key = tuple(sorted(labels + (("direction", direction),)))
            assert got[("espgw_child_sa_packets_total", key)] == child[f"packets_{direction}"] >= 5
            assert got[("espgw_child_sa_bytes_total", key)] == child[f"bytes_{direction}"] > 0


def test_sa_states_and_handshakes(tunnel):
    lab, a, b = tunnel
    got_a, got_b = scrape(lab, a), scrape(lab, b)
    for got in (got_a, got_b):
        assert got[("espgw_ike_sas", (("state", "established"),))] == 1
        assert got[("espgw_child_sas", (("state", "installed"),))] == 1
        assert not any(name == "espgw_negotiation_failures_total" for name, _ in got)
        assert got[("espgw_rekeys_total", (("kind", "child"),))] == 0
        assert ("espgw_dpd_total", (("result", "alive"),)) in got
        assert ("espgw_ike_retransmits_total", ()) in got
    assert got_a[("espgw_ike_handshakes_total", (("role", "initiator"),))] == 1
    assert got_b[("espgw_ike_handshakes_total", (("role", "responder"),))] == 1
    assert got_a[("espgw_ike_handshakes_total", (("role", "responder"),))] == 0
