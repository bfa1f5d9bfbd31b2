"""Remote access through the cafe NAT (``tunnel.lab.nat.CafeLab``): the laptop (hostA, 192.168.1.7
behind the cafe router's masquerade) gets a virtual IP from the office gateway (gwB, 192.0.2.2)
with a pool and reaches the dashboard 10.0.5.9 behind it.

The interop matrix, connect + virtual IP + ping + narrowed selectors only: strongSwan 5.9.8 and
6.0, PSK and certificates (the laptop's own certificate, the office's identity gwb.lab from its
certificate's subjectAltName), both directions (an espgw laptop with ``vips`` against a
strongSwan office with ``pools``, a strongSwan laptop with ``vips = 0.0.0.0`` against an espgw
office with ``pools``). Then espgw to espgw: LAN B routed, everything routed, IPv4 and IPv6
virtual IPs, swanctl's pool commands on the espgw office.

One lab for the module. gwB serves one office at a time (``Offices``), which restarts it only
when the tests ask for another one; NAT keepalives and MOBIKE are test_nat_lab.py's.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

import pytest

from ike.config import AuthConfig
from ike.pools import AddressPool
from tunnel.lab.espgw import EspgwGateway, GatewaySettings, wait_until
from tunnel.lab.lab_pki import LabPki, pubkey_auth
from tunnel.lab.nat import CafeLab, rw_laptop, rw_office
from tunnel.lab.strongswan import StrongSwan

pytestmark = [pytest.mark.lab]

DASHBOARD = "10.0.5.9"
POOL = "10.3.0.0/28"
FIRST_VIP = "10.3.0.1"
DNS = "10.0.5.53"
VERSIONS = ("5.9", "6.0")
AUTHS = ("psk", "cert")


def pool() -> AddressPool:
    return AddressPool("rw", POOL, dns=(ipaddress.ip_address(DNS),),
                       subnets=(ipaddress.ip_network("10.0.5.0/24"),))


@pytest.fixture(scope="module")
def lab():
    with CafeLab(ipv6=True) as lab:
        yield lab


class Certificates:
    """One CA, the laptop's and the office's certificates (ids laptop.lab, gwb.lab)."""

    def __init__(self) -> None:
        self.pki = LabPki.make()
        self.laptop = self.pki.gateway("laptop.lab", "ecdsa256")
        self.office = self.pki.gateway("gwb.lab", "ecdsa256")

    def laptop_auth(self, kind: str) -> tuple[AuthConfig, AuthConfig] | None:
        return pubkey_auth(self.laptop, self.pki.trust(), "laptop.lab", "gwb.lab") if kind == "cert" else None

    def office_auth(self, kind: str) -> tuple[AuthConfig, AuthConfig] | None:
        return pubkey_auth(self.office, self.pki.trust(), "gwb.lab", "laptop.lab") if kind == "cert" else None


class Offices:
    """What serves gwB: one espgw office (per auth kind) or one strongSwan office (per version and
    auth kind) at a time; asking for another stops the current one (both want UDP 500/4500)."""

    def __init__(self, lab: CafeLab, certs: Certificates):
        self.lab, self.certs = lab, certs
        self.key: tuple | None = None
        self.current: EspgwGateway | StrongSwan | None = None

    def _switch(self, key: tuple) -> bool:
        if key == self.key:
            return False
        self.close()
        self.key = key
        return True

    def espgw(self, auth: str = "psk") -> EspgwGateway:
        if self._switch(("espgw", auth)):
            conn = rw_office(pools=("rw", "rw6"), local_ts=("10.0.5.0/24", "0.0.0.0/0", "fd00:b::/64"),
                             auth=self.certs.office_auth(auth))
            self.current = EspgwGateway(self.lab, self.lab.gwB, [conn], GatewaySettings(log_level="debug"),
                                        name=f"office-{auth}", pools=[pool(), AddressPool("rw6", "fd00:3::/120")])
            self.current.start()
        assert isinstance(self.current, EspgwGateway)
        return self.current

    def swan(self, version: str, auth: str) -> StrongSwan:
        if self._switch((version, auth)):
            self.current = StrongSwan(self.lab, self.lab.gwB, version, [rw_office(auth=self.certs.office_auth(auth))])
            self.current.pools = [pool()]
            self.current.start()
        assert isinstance(self.current, StrongSwan)
        return self.current

    def logs(self) -> str:
        return self.current.log_tail(80) if self.current is not None else ""

    def close(self) -> None:
        if isinstance(self.current, EspgwGateway):
            self.current.stop()
        elif isinstance(self.current, StrongSwan):
            self.current.stop()
        self.current, self.key = None, None


@pytest.fixture(scope="module")
def offices(lab):
    offices = Offices(lab, Certificates())
    yield offices
    offices.close()


def _vips(gw: EspgwGateway) -> list[dict]:
    return gw.status().get("virtual_ips", [])


def _addresses(lab: CafeLab, node, ifname: str) -> list[str]:
    done = lab.run(node, "ip", "-j", "addr", "show", "dev", ifname, check=False)
    if done.returncode != 0:
        return []
    return [a["local"] for link in json.loads(done.stdout) for a in link.get("addr_info", [])]


def _routes(lab: CafeLab, node) -> list[dict]:
    return json.loads(lab.run(node, "ip", "-j", "route", "show").stdout)


def _client(lab: CafeLab, name: str, **conn_kw) -> EspgwGateway:
    return EspgwGateway(lab, lab.laptop, [rw_laptop(**conn_kw)], GatewaySettings(log_level="debug"),
                        name=name).start()


def _connect(client: EspgwGateway) -> dict:
    client.request("initiate", child="rw")
    (vip,) = wait_until(lambda: _vips(client), 15, "a virtual IP on the client", interval=0.1,
                        on_timeout=client.log_tail)
    wait_until(lambda: client.children(), 10, "the client's CHILD SA", on_timeout=client.log_tail)
    return vip


def _through_the_nat(sa_remote_addr: str, lab: CafeLab) -> None:
    assert sa_remote_addr == lab.cafe.wan_addr4, "the office should see the cafe router's address"


# --- the interop matrix: strongSwan office, espgw laptop ---------------------------------------

@pytest.mark.parametrize("auth", AUTHS)
@pytest.mark.parametrize("version", VERSIONS)
def test_espgw_client_to_strongswan_gateway_with_a_pool(lab, offices, version, auth):
    swan = offices.swan(version, auth)
    client = _client(lab, f"laptop-swan{version.replace('.', '')}-{auth}", auth=offices.certs.laptop_auth(auth))
    try:
        vip = _connect(client)
        assert vip["vips"] == [FIRST_VIP] and vip["dns"] == [DNS]
        assert FIRST_VIP in _addresses(lab, lab.laptop, "espgw0")
        (sa,) = client.ike_sas()
        assert sa["nat_local"] and sa["local_port"] == 4500
        (child,) = client.children()
        assert child["local_ts"] == [f"{FIRST_VIP}/32"] and child["remote_ts"] == ["10.0.5.0/24"]
        assert child["encap"]
        assert lab.ping(lab.laptop, DASHBOARD, source=FIRST_VIP).ok, client.log_tail() + offices.logs()
        (theirs,) = swan.list_sas()
        _through_the_nat(theirs["remote-host"], lab)
        assert theirs.get("remote-vips") == [FIRST_VIP] and theirs.get("nat-remote") == "yes"
        (swan_child,) = swan.child_sas("rw")
        assert swan_child["remote-ts"] == [f"{FIRST_VIP}/32"] and swan_child["local-ts"] == ["10.0.5.0/24"]
        if auth == "cert":
            assert "authentication of 'laptop.lab' with ECDSA" in swan.log_text(), swan.log_tail()
        leases = swan.swanctl("list-pools", "--leases").stdout
        assert FIRST_VIP in leases and "online" in leases and "laptop.lab" in leases
    finally:
        client.stop()
    wait_until(lambda: "offline" in swan.swanctl("list-pools", "--leases").stdout, 10,
               "strongSwan's lease to go offline after the client's delete")


# --- the interop matrix: espgw office, strongSwan laptop ---------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("auth", AUTHS)
def test_strongswan_client_to_espgw_gateway(lab, offices, auth, version):
    gateway = offices.espgw(auth)
    with StrongSwan(lab, lab.laptop, version, [rw_laptop(auth=offices.certs.laptop_auth(auth))]) as swan:
        swan.initiate(child="rw")
        (sa,) = swan.list_sas()
        assert sa.get("local-vips") == [FIRST_VIP], swan.log_tail()
        assert sa.get("nat-local") == "yes" and sa.get("local-port") == "4500"
        (child,) = swan.child_sas("rw")
        assert child["local-ts"] == [f"{FIRST_VIP}/32"] and child.get("encap") == "yes"
        if auth == "cert":
            assert "authentication of 'gwb.lab' with ECDSA" in swan.log_text(), swan.log_tail()
        assert lab.ping(lab.laptop, DASHBOARD, source=FIRST_VIP).ok, swan.log_tail() + gateway.log_tail()
        (gw_sa,) = gateway.ike_sas()
        _through_the_nat(gw_sa["remote_addr"], lab)
        (gw_child,) = gw_sa["children"]
        assert gw_child["remote_ts"] == [f"{FIRST_VIP}/32"] and gw_child["encap"]
        swan.terminate(ike="rw")
    wait_until(lambda: not gateway.ike_sas(), 10, "the gateway's SA to go")


# --- espgw to espgw ----------------------------------------------------------------------------

@pytest.fixture
def gateway(offices):
    gw = offices.espgw("psk")
    yield gw
    print(gw.log_tail(80))  # shown when a test failed


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


@pytest.mark.parametrize("auth", AUTHS)
def test_espgw_client_to_espgw_gateway_pings_with_its_virtual_ip(lab, offices, auth):
    gateway = offices.espgw(auth)
    client = _client(lab, f"laptop-{auth}", auth=offices.certs.laptop_auth(auth))
    try:
        vip = _connect(client)
        assert vip["vips"] == [FIRST_VIP] and vip["dns"] == [DNS]
        assert FIRST_VIP in _addresses(lab, lab.laptop, "espgw0")
        assert lab.ping(lab.laptop, DASHBOARD, source=FIRST_VIP).ok, client.log_tail()
        (child,) = client.children()
        assert child["local_ts"] == [f"{FIRST_VIP}/32"] and child["encap"]
        (gw_sa,) = gateway.ike_sas()
        _through_the_nat(gw_sa["remote_addr"], lab)
        (gw_child,) = gw_sa["children"]
        assert gw_child["remote_ts"] == [f"{FIRST_VIP}/32"]
        # the DNS servers are in the state file and the status, the host's resolv.conf untouched
        state = json.loads((Path(client.socket).parent / "espgw0-vip.json").read_text())
        assert state["virtual_ips"][0]["dns"] == [DNS]
        assert f"virtual IP {FIRST_VIP} from rw, DNS {DNS}" in client.cli("status").stdout
        leases = _gateway_leases(gateway)
        assert "rw" in leases and FIRST_VIP in leases and "online" in leases and "laptop.lab" in leases
    finally:
        client.stop()
    wait_until(lambda: "offline" in _gateway_leases(gateway), 10, "the lease to go offline after the delete")
    assert not (Path(client.socket).parent / "espgw0-vip.json").exists()


def test_everything_through_the_tunnel_keeps_the_gateway_outside(lab, gateway):
    client = _client(lab, "laptop-all", remote_ts=("0.0.0.0/0",))
    try:
        vip = _connect(client)
        assert vip["vips"] == [FIRST_VIP]  # the same address again on reconnect
        routes = {r["dst"]: r for r in _routes(lab, lab.laptop)}
        assert routes["0.0.0.0/1"]["dev"] == "espgw0" and routes["128.0.0.0/1"]["dev"] == "espgw0"
        assert routes["0.0.0.0/1"].get("prefsrc") == FIRST_VIP
        assert routes["192.0.2.2"]["dev"] == "eth0"  # IKE and ESP stay outside the tunnel
        assert lab.ping(lab.laptop, DASHBOARD, source=FIRST_VIP).ok, client.log_tail()
        client.request("terminate", ike="rw")
        wait_until(lambda: not _vips(client), 10, "the virtual IP to go with the IKE SA", on_timeout=client.log_tail)
        routes = {r["dst"] for r in _routes(lab, lab.laptop)}
        assert not routes & {"0.0.0.0/1", "128.0.0.0/1", "192.0.2.2"}
        assert FIRST_VIP not in _addresses(lab, lab.laptop, "espgw0")
    finally:
        client.stop()


def test_ipv4_and_ipv6_virtual_ips(lab, gateway):
    client = _client(lab, "laptop-v6", vips=("0.0.0.0", "::"), remote_ts=("10.0.5.0/24", "fd00:b::/64"))
    try:
        vip = _connect(client)
        assert vip["vips"] == [FIRST_VIP, "fd00:3::1"]
        assert {FIRST_VIP, "fd00:3::1"} <= set(_addresses(lab, lab.laptop, "espgw0"))
        assert lab.ping(lab.laptop, "fd00:b::9").ok, client.log_tail()
        assert lab.ping(lab.laptop, DASHBOARD, source=FIRST_VIP).ok, client.log_tail()
    finally:
        client.stop()
