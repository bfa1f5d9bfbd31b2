"""The real ``espgw`` CLI against two real ``espgw run`` daemons: what the CLI prints is what the
daemons did.

One lab and one tunnel (gwA traps, gwB responds) are shared by the module; every check runs the
CLI as a user does (a subprocess, ``--json`` and the human output) and compares it with the other
gateway's view and with traffic the test itself sent: the SPIs pair up across the two ends, the
counters rise by a ping's packets, and a forged ESP packet shows up as a drop by reason.
"""

from __future__ import annotations

import json
import struct

import pytest

from tunnel.lab.configs import site_to_site
from tunnel.lab.espgw import EspgwGateway, wait_until
from tunnel.lab.netns import Lab

pytestmark = pytest.mark.lab

PINGS = 5


class Tunnel:
    def __init__(self, lab: Lab, a: EspgwGateway, b: EspgwGateway) -> None:
        self.lab, self.a, self.b = lab, a, b

    @staticmethod
    def cli_json(gw: EspgwGateway, *argv: str) -> dict:
        done = gw.cli(*argv, "--json")
        assert done.stderr == "" and "Traceback" not in done.stdout
        return json.loads(done.stdout)

    def child(self, gw: EspgwGateway) -> dict:
        (sa,) = self.cli_json(gw, "list-sas")["ike_sas"]
        (child,) = sa["children"]
        return child


@pytest.fixture(scope="module")
def tunnel():
    with Lab(ipv6=False) as lab:
        a = EspgwGateway(lab, lab.gwA, [site_to_site(lab, "A")])
        b = EspgwGateway(lab, lab.gwB, [site_to_site(lab, "B")])
        for child in a.conns[0].children:
            child.start_action = "trap"
        try:
            b.start()
            a.start()
            lab.ping(lab.hostA, lab.hostB.addr4, count=1, wait=2)  # the trap brings the tunnel up
            wait_until(lambda: a.children() and b.children(), 15, "the CHILD SA on both gateways",
                       on_timeout=lambda: a.log_tail() + "\n" + b.log_tail())
            yield Tunnel(lab, a, b)
        finally:
            a.stop()
            b.stop()


def test_list_sas_json_pairs_the_spis_of_both_ends(tunnel):
    sa_a = tunnel.cli_json(tunnel.a, "list-sas")["ike_sas"]
    sa_b = tunnel.cli_json(tunnel.b, "list-sas")["ike_sas"]
    assert [sa["state"] for sa in sa_a + sa_b] == ["ESTABLISHED", "ESTABLISHED"]
    assert sa_a[0]["initiator"] is True and sa_b[0]["initiator"] is False
    assert (sa_a[0]["spi_i"], sa_a[0]["spi_r"]) == (sa_b[0]["spi_i"], sa_b[0]["spi_r"])
    assert sa_a[0]["local_addr"] == sa_b[0]["remote_addr"] == tunnel.lab.gwA.wan_addr4
    child_a, child_b = sa_a[0]["children"][0], sa_b[0]["children"][0]
    assert child_a["state"] == child_b["state"] == "INSTALLED"
    assert child_a["spi_in"] == child_b["spi_out"] and child_a["spi_out"] == child_b["spi_in"]
    assert child_a["proposal"] == child_b["proposal"]
    assert child_a["local_ts"] == child_b["remote_ts"] and child_a["remote_ts"] == child_b["local_ts"]


def test_counters_rise_by_the_pings_on_both_ends_and_in_status(tunnel):
    before_a, before_b = tunnel.child(tunnel.a), tunnel.child(tunnel.b)
    status_before = tunnel.cli_json(tunnel.a, "status")["counters"]
    assert tunnel.lab.ping(tunnel.lab.hostA, tunnel.lab.hostB.addr4, count=PINGS, interval=0.05).ok
    after_a, after_b = tunnel.child(tunnel.a), tunnel.child(tunnel.b)
    assert after_a["packets_out"] - before_a["packets_out"] >= PINGS
    assert after_a["packets_in"] - before_a["packets_in"] >= PINGS
    # what A sent, B received (nothing else crosses this tunnel while the test runs)
    assert after_b["packets_in"] - before_b["packets_in"] == after_a["packets_out"] - before_a["packets_out"]
    assert after_b["bytes_in"] - before_b["bytes_in"] == after_a["bytes_out"] - before_a["bytes_out"]
    status_after = tunnel.cli_json(tunnel.a, "status")["counters"]
    assert status_after["packets_out"] - status_before["packets_out"] >= PINGS
    assert status_after["packets_in"] - status_before["packets_in"] >= PINGS


def test_human_outputs_show_what_the_json_says(tunnel):
    child = tunnel.child(tunnel.a)
    sas = tunnel.a.cli("list-sas").stdout
    assert f"  {child['name']}: #{child['unique_id']}, INSTALLED, TUNNEL, ESP:{child['proposal']}" in sas
    assert f"    in  {child['spi_in']}," in sas and f"    out {child['spi_out']}," in sas
    status = tunnel.a.cli("status").stdout
    assert "  lab: " in status and "IKEv2, up; children: net" in status
    assert "security associations: 1 IKE, 1 CHILD" in status


def test_a_forged_esp_packet_shows_as_a_drop(tunnel):
    """ESP on the live SPI with a wrong ICV: gwB counts it on the CHILD SA and in its status."""
    spi = int(tunnel.child(tunnel.b)["spi_in"], 16)
    before = tunnel.cli_json(tunnel.b, "status")["drops"].get("auth_failed", 0)
    forged = (struct.pack("!II", spi, 1 << 30) + bytes(64)).hex()  # far ahead of the replay window
    send = ("import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_RAW,50); "
            "s.sendto(bytes.fromhex(sys.argv[1]),(sys.argv[2],0))")
    tunnel.lab.run(tunnel.lab.gwA, "python3", "-c", send, forged, tunnel.lab.gwB.wan_addr4)
    wait_until(lambda: tunnel.cli_json(tunnel.b, "status")["drops"].get("auth_failed", 0) > before, 5,
               "gwB to count the forged packet")
    assert tunnel.child(tunnel.b)["drops"].get("auth_failed", 0) >= 1
    assert "auth_failed" in tunnel.b.cli("status").stdout.split("drops: ", 1)[1]
