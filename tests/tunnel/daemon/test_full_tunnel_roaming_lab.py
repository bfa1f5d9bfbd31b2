"""A full-tunnel laptop roams with MOBIKE (#15): espgw on the laptop asks the office for a virtual
IP and routes everything through the tunnel (remote_ts 0.0.0.0/0: 0.0.0.0/1 + 128.0.0.0/1 into the
TUN, a host route to the gateway outside it). It moves from the cafe network to the hotel network
(``tunnel.lab.nat.CafeLab``): the host route follows the new path (the hotel router as next hop),
the SAs move without a new handshake, the dashboard answers again within 2 s, and on exit every
route and address the laptop's espgw added is gone.

One lab (its own CafeLab) for the module, the tests in order: connect, roam, exit.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import subprocess
import time
from pathlib import Path

import pytest

from ike.config import ConnectionConfig
from ike.pools import AddressPool
from tunnel.lab.espgw import EspgwGateway, GatewaySettings, wait_until
from tunnel.lab.nat import (CAFE_ROUTER_LAN, HOTEL_PUBLIC, HOTEL_ROUTER_LAN, LAPTOP_HOTEL_IP, CafeLab, rw_laptop,
                            rw_office)

pytestmark = [pytest.mark.lab]

DASHBOARD = "10.0.5.9"
OFFICE = "192.0.2.2"
POOL = "10.3.0.0/28"
VIP = "10.3.0.1"
TUN = "espgw1"
DNS, NBNS = "10.0.5.53", "10.0.5.54"
DPD = 3.0


def laptop_connection() -> ConnectionConfig:
    """Everything through the office: a virtual IP from it, remote selector 0.0.0.0/0."""
    return dataclasses.replace(rw_laptop(name="all", remote_ts=("0.0.0.0/0",)), dpd_delay=DPD)


def office_connection() -> ConnectionConfig:
    return rw_office(name="all", local_ts=("0.0.0.0/0",))


class Setup:
    """The lab, the office gateway (gwB) with a pool, the laptop (hostA) in full-tunnel mode."""

    def __init__(self, lab: CafeLab):
        self.lab = lab
        pool = AddressPool("rw", POOL, dns=(ipaddress.ip_address(DNS),), nbns=(ipaddress.IPv4Address(NBNS),),
                           netmask=ipaddress.IPv4Address("255.255.255.240"))
        self.office = EspgwGateway(lab, lab.gwB, [office_connection()], GatewaySettings(log_level="debug"),
                                   name="ft-office", pools=[pool]).start()
        settings = GatewaySettings(log_level="debug", tun_name=TUN, keep_alive=2.0)
        self.laptop = EspgwGateway(lab, lab.hostA, [laptop_connection()], settings, name="ft-laptop").start()

    def logs(self) -> str:
        return f"--- laptop\n{self.laptop.log_tail(80)}\n--- office\n{self.office.log_tail(60)}"

    def routes(self) -> dict[str, dict]:
        return {r["dst"]: r for r in json.loads(self.lab.run(self.lab.laptop, "ip", "-j", "route", "show").stdout)}

    def tun_addresses(self) -> list[str]:
        done = self.lab.run(self.lab.laptop, "ip", "-j", "addr", "show", "dev", TUN, check=False)
        if done.returncode != 0:
            return []
        return [a["local"] for link in json.loads(done.stdout) for a in link.get("addr_info", [])]

    def ping(self, count: int = 3, wait: float = 2):
        return self.lab.ping(self.lab.laptop, DASHBOARD, count=count, interval=0.2, wait=wait)


@pytest.fixture(scope="module")
def setup():
    with CafeLab() as lab:
        lab.add_hotel()
        s = Setup(lab)
        try:
            yield s
        finally:
            print(s.logs())  # shown for a failed test
            s.laptop.stop()
            s.office.stop()


def test_full_tunnel_routes_and_the_gateway_outside(setup):
    setup.laptop.request("initiate", child="all")
    wait_until(lambda: setup.laptop.children() and setup.laptop.status().get("virtual_ips"), 15,
               "the laptop's virtual IP and CHILD SA", on_timeout=setup.logs)
    (vip,) = setup.laptop.status()["virtual_ips"]
    assert (vip["vips"], vip["dns"], vip["nbns"]) == ([VIP], [DNS], [NBNS])
    assert f"DNS {DNS}, NBNS {NBNS}," in setup.laptop.cli("status").stdout
    state = json.loads((Path(setup.laptop.socket).parent / f"{TUN}-vip.json").read_text())
    assert state["virtual_ips"][0]["nbns"] == [NBNS]
    assert VIP in setup.tun_addresses()
    routes = setup.routes()
    for half in ("0.0.0.0/1", "128.0.0.0/1"):
        assert routes[half]["dev"] == TUN and routes[half].get("prefsrc") == VIP, routes
    host = routes[OFFICE]
    assert (host["dev"], host.get("gateway")) == ("eth0", CAFE_ROUTER_LAN), host  # outside the tunnel
    assert setup.ping().ok, setup.logs()
    (sa,) = setup.office.ike_sas()
    assert sa["remote_addr"] == setup.lab.cafe.wan_addr4 and sa["nat_remote"]


def test_roaming_to_the_hotel_moves_the_host_route_and_traffic_resumes(setup):
    lab = setup.lab
    (before,) = setup.office.ike_sas()
    lab.move_to_hotel()
    start = time.monotonic()
    took = None
    while time.monotonic() - start < 12:
        if lab.ping(lab.laptop, DASHBOARD, count=1, wait=0.25).received:
            took = time.monotonic() - start
            break
    assert took is not None, "no ping reply after the move\n" + setup.logs()
    host = wait_until(lambda: (r := setup.routes().get(OFFICE)) and r.get("gateway") == HOTEL_ROUTER_LAN and r, 5,
                      "the host route to the office through the hotel router", on_timeout=setup.logs)
    assert host["dev"] == "eth1" and host.get("type", "unicast") == "unicast", host
    assert lab.laptop_source_towards(OFFICE) == LAPTOP_HOTEL_IP
    routes = setup.routes()
    assert routes["0.0.0.0/1"]["dev"] == TUN and routes["128.0.0.0/1"]["dev"] == TUN
    (after,) = setup.office.ike_sas()
    assert after["remote_addr"] == HOTEL_PUBLIC and after["spi_i"] == before["spi_i"], after  # no new handshake
    (mine,) = setup.laptop.ike_sas()
    assert mine["local_addr"] == LAPTOP_HOTEL_IP
    assert took <= 2.0, f"the ping came back after {took:.1f} s"
    assert setup.ping().ok, setup.logs()
    text = setup.laptop.log_path.read_text(errors="replace")
    assert "virtual_ip.gateway_route_moved" in text


def test_on_exit_every_route_and_address_is_removed(setup):
    state = Path(setup.laptop.socket).parent / f"{TUN}-vip.json"
    assert state.exists()
    setup.laptop.stop()
    routes = setup.routes()
    added = {"0.0.0.0/1", "128.0.0.0/1", OFFICE}
    assert not added & set(routes), routes
    assert not [r for r in routes.values() if r.get("dev") == TUN]
    assert VIP not in setup.tun_addresses()
    addresses = json.loads(setup.lab.run(setup.lab.laptop, "ip", "-j", "addr", "show").stdout)
    assert not [a for link in addresses for a in link.get("addr_info", [])
                if ipaddress.ip_address(a["local"]) in ipaddress.ip_network(POOL)]
    assert not state.exists()
    # the office keeps the lease for the laptop (offline) and its pool route
    wait_until(lambda: not setup.office.ike_sas(), 10, "the office's SA to go", on_timeout=setup.logs)
    office_routes = json.loads(setup.lab.run(setup.lab.office, "ip", "-j", "route", "show").stdout)
    assert any(r["dst"] == VIP and r.get("dev") == "espgw0" for r in office_routes), office_routes


SWANCTL_EXTRA = """
connections {
  extra {
    remote_addrs = %any
    pools = extra
    local { auth = psk
            id = gwb.lab }
    remote { auth = psk
             id = other.lab }
    children { net { local_ts = 10.0.5.0/24 } }
  }
}
pools {
  extra { addrs = 10.4.0.0/30 }
}
secrets {
  ike-extra { id = other.lab
              secret = 0x00112233445566778899aabbccddeeff }
}
"""


def test_vici_pool_routes_go_with_the_pool(setup, tmp_path):
    """swanctl --load-all on the office: the loaded pool's range is routed into the TUN once a
    loaded connection lends from it, and the route goes when a later --load-all drops both."""
    conf = tmp_path / "swanctl.conf"

    def load_all(text: str) -> subprocess.CompletedProcess:
        conf.write_text(text)
        return subprocess.run(["swanctl", "--load-all", "--file", str(conf), "--uri",
                               f"unix://{setup.office.socket}.vici"], capture_output=True, text=True, timeout=20)

    def office_routes() -> set[str]:
        return {r["dst"] for r in json.loads(setup.lab.run(setup.lab.office, "ip", "-j", "route", "show").stdout)
                if r.get("dev") == "espgw0"}
    done = load_all(SWANCTL_EXTRA)
    assert "loaded pool 'extra'" in done.stdout and "loaded connection 'extra'" in done.stdout, \
        done.stdout + done.stderr
    assert {"10.4.0.1", "10.4.0.2"} <= office_routes()
    done = load_all("")
    assert "extra" not in subprocess.run(["swanctl", "--list-pools", "--uri", f"unix://{setup.office.socket}.vici"],
                                         capture_output=True, text=True, timeout=20).stdout, done.stdout + done.stderr
    routes = office_routes()
    assert not {"10.4.0.1", "10.4.0.2"} & routes and VIP in routes, routes  # the file's pool keeps its own
