"""Remote access in the namespace lab: a laptop (gwA's namespace, 192.0.2.1) gets a virtual IP
from a gateway (gwB, 192.0.2.2) with a pool and reaches the dashboard 10.0.5.9 behind it.

espgw client to espgw gateway (LAN B routed, then everything routed), strongSwan 5.9.8 client to
espgw gateway, espgw client to strongSwan 5.9.8 gateway. One lab serves the module; the espgw
gateway is shared by the tests that need it (the strongSwan gateway test runs before it exists,
both want gwB's UDP 500).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

import pytest

from ike.pools import AddressPool
from tunnel.lab.configs import road_warrior, road_warrior_gateway
from tunnel.lab.espgw import EspgwGateway, GatewaySettings, wait_until
from tunnel.lab.netns import Lab
from tunnel.lab.strongswan import StrongSwan

pytestmark = [pytest.mark.lab]

DASHBOARD = "10.0.5.9"
POOL = "10.3.0.0/28"
DNS = "10.0.5.53"


def pool() -> AddressPool:
    return AddressPool("rw", POOL, dns=(ipaddress.ip_address(DNS),),
                       subnets=(ipaddress.ip_network("10.0.5.0/24"),))


@pytest.fixture(scope="module")
def lab():
    with Lab() as lab:
        yield lab


def _vips(gw: EspgwGateway) -> list[dict]:
    return gw.status().get("virtual_ips", [])


def _addresses(lab: Lab, node, ifname: str) -> list[str]:
    done = lab.run(node, "ip", "-j", "addr", "show", "dev", ifname, check=False)
    if done.returncode != 0:
        return []
    return [a["local"] for link in json.loads(done.stdout) for a in link.get("addr_info", [])]


def _routes(lab: Lab, node) -> list[dict]:
    return json.loads(lab.run(node, "ip", "-j", "route", "show").stdout)


def _client(lab: Lab, name: str, **conn_kw) -> EspgwGateway:
    return EspgwGateway(lab, lab.gwA, [road_warrior(lab, **conn_kw)], GatewaySettings(log_level="debug"),
                        name=name).start()


def _connect(client: EspgwGateway) -> dict:
    client.request("initiate", child="rw")
    (vip,) = wait_until(lambda: _vips(client), 15, "a virtual IP on the client", interval=0.1,
                        on_timeout=client.log_tail)
    wait_until(lambda: client.children(), 10, "the client's CHILD SA", on_timeout=client.log_tail)
    return vip


# --- strongSwan gateway (first: the espgw gateway below takes gwB's ports from then on) ----------

def test_espgw_client_to_strongswan_gateway_with_a_pool(lab):
    swan = StrongSwan(lab, lab.gwB, "5.9", [road_warrior_gateway(lab)])
    swan.pools = [pool()]
    with swan:
        client = _client(lab, "laptop-swan")
        try:
            vip = _connect(client)
            assert vip["vips"] == ["10.3.0.1"] and vip["dns"] == [DNS]
            assert "10.3.0.1" in _addresses(lab, lab.gwA, "espgw0")
            (child,) = client.children()
            assert child["local_ts"] == ["10.3.0.1/32"] and child["remote_ts"] == ["10.0.5.0/24"]
            assert lab.ping(lab.gwA, DASHBOARD).ok, client.log_tail()
            leases = swan.swanctl("list-pools", "--leases").stdout
            assert "10.3.0.1" in leases and "online" in leases and "laptop.lab" in leases
        finally:
            client.stop()
        wait_until(lambda: "offline" in swan.swanctl("list-pools", "--leases").stdout, 10,
                   "strongSwan's lease to go offline after the client's delete")


# --- espgw gateway ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gateway(lab):
    conn = road_warrior_gateway(lab, pools=("rw", "rw6"), local_ts=("10.0.5.0/24", "0.0.0.0/0", "fd00:b::/64"))
    gw = EspgwGateway(lab, lab.gwB, [conn], GatewaySettings(log_level="debug"), name="office",
                      pools=[pool(), AddressPool("rw6", "fd00:3::/120")])
    gw.start()
    yield gw
    print(gw.log_tail(80))  # shown when a test failed
    gw.stop()


def _swanctl(gw: EspgwGateway, *args: str) -> subprocess.CompletedProcess:
    """swanctl against the espgw gateway's vici socket."""
    return subprocess.run(["swanctl", *args, "--uri", f"unix://{gw.socket}.vici"], capture_output=True, text=True,
                          timeout=20)


def _gateway_leases(gw: EspgwGateway) -> str:
    done = _swanctl(gw, "--list-pools", "--leases")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_swanctl_loads_and_unloads_pools_on_the_espgw_gateway(lab, gateway, tmp_path):
    conf = tmp_path / "swanctl.conf"
    conf.write_text("pools {\n  extra {\n    addrs = 10.4.0.0/28\n    dns = 10.0.5.53\n  }\n}\n")
    done = _swanctl(gateway, "--load-pools", "--file", str(conf))
    assert "loaded pool 'extra'" in done.stdout, done.stdout + done.stderr
    # the file's pool is not swanctl's to unload: said so, the load still succeeds
    assert "unloading pool 'rw' failed: unload-pool: pool 'rw' is defined in espgw's configuration file" \
        in done.stderr and done.returncode == 0
    listed = _swanctl(gateway, "--list-pools").stdout
    assert "extra" in listed and "10.4.0.1" in listed and "rw" in listed
    conf.write_text("pools {\n  bad {\n    addrs = 10.3.0.8/29\n  }\n}\n")
    done = _swanctl(gateway, "--load-pools", "--file", str(conf))
    assert done.returncode != 0 and "overlaps pool 'rw'" in done.stderr, done.stdout + done.stderr
    conf.write_text("")
    done = _swanctl(gateway, "--load-pools", "--file", str(conf))
    assert "extra" not in _swanctl(gateway, "--list-pools").stdout, done.stdout + done.stderr


def test_espgw_client_to_espgw_gateway_pings_with_its_virtual_ip(lab, gateway):
    client = _client(lab, "laptop")
    try:
        vip = _connect(client)
        assert vip["vips"] == ["10.3.0.1"] and vip["dns"] == [DNS]
        assert "10.3.0.1" in _addresses(lab, lab.gwA, "espgw0")
        assert lab.ping(lab.gwA, DASHBOARD).ok, client.log_tail()
        (gw_child,) = [c for sa in gateway.ike_sas() for c in sa["children"]]
        assert gw_child["remote_ts"] == ["10.3.0.1/32"]
        # the DNS servers are in the state file and the status, the host's resolv.conf untouched
        state = json.loads((Path(client.socket).parent / "espgw0-vip.json").read_text())
        assert state["virtual_ips"][0]["dns"] == [DNS]
        assert f"virtual IP 10.3.0.1 from rw, DNS {DNS}" in client.cli("status").stdout
        leases = _gateway_leases(gateway)
        assert "rw" in leases and "10.3.0.1" in leases and "online" in leases and "laptop.lab" in leases
    finally:
        client.stop()
    wait_until(lambda: "offline" in _gateway_leases(gateway), 10, "the lease to go offline after the delete")
    assert not (Path(client.socket).parent / "espgw0-vip.json").exists()


def test_everything_through_the_tunnel_keeps_the_gateway_outside(lab, gateway):
    client = _client(lab, "laptop-all", remote_ts=("0.0.0.0/0",))
    try:
        vip = _connect(client)
        assert vip["vips"] == ["10.3.0.1"]  # the same address again on reconnect
        routes = {r["dst"]: r for r in _routes(lab, lab.gwA)}
        assert routes["0.0.0.0/1"]["dev"] == "espgw0" and routes["128.0.0.0/1"]["dev"] == "espgw0"
        assert routes["0.0.0.0/1"].get("prefsrc") == "10.3.0.1"
        assert routes["192.0.2.2"]["dev"] == "wan0"  # IKE and ESP stay outside the tunnel
        assert lab.ping(lab.gwA, DASHBOARD).ok, client.log_tail()
        client.request("terminate", ike="rw")
        wait_until(lambda: not _vips(client), 10, "the virtual IP to go with the IKE SA", on_timeout=client.log_tail)
        routes = {r["dst"] for r in _routes(lab, lab.gwA)}
        assert not routes & {"0.0.0.0/1", "128.0.0.0/1", "192.0.2.2"}
        assert "10.3.0.1" not in _addresses(lab, lab.gwA, "espgw0")
    finally:
        client.stop()


def test_ipv4_and_ipv6_virtual_ips(lab, gateway):
    client = _client(lab, "laptop-v6", vips=("0.0.0.0", "::"), remote_ts=("10.0.5.0/24", "fd00:b::/64"))
    try:
        vip = _connect(client)
        assert vip["vips"] == ["10.3.0.1", "fd00:3::1"]
        assert {"10.3.0.1", "fd00:3::1"} <= set(_addresses(lab, lab.gwA, "espgw0"))
        assert lab.ping(lab.gwA, "fd00:b::9").ok, client.log_tail()
        assert lab.ping(lab.gwA, DASHBOARD).ok, client.log_tail()
    finally:
        client.stop()


def test_strongswan_client_to_espgw_gateway(lab, gateway):
    with StrongSwan(lab, lab.gwA, "5.9", [road_warrior(lab)]) as swan:
        swan.initiate(child="rw")
        (sa,) = swan.list_sas()
        assert sa.get("local-vips") == ["10.3.0.1"], swan.log_tail()
        assert lab.ping(lab.gwA, DASHBOARD).ok, swan.log_tail() + gateway.log_tail()
        (gw_child,) = [c for s in gateway.ike_sas() for c in s["children"]]
        assert gw_child["remote_ts"] == ["10.3.0.1/32"]
        swan.terminate(ike="rw")
    wait_until(lambda: not gateway.ike_sas(), 10, "the gateway's SA to go")
