"""The laptop behind a real cafe NAT (``tunnel.lab.nat``): espgw on the laptop and the office gateway
espgw, strongSwan 5.9.8 or 6.0, and a strongSwan 5.9.8 or 6.0 laptop against an espgw office. NAT detection
moves IKE and ESP to UDP 4500, keepalives hold the mapping at the configured interval, a restarted
NAT (new public port) is survived, and MOBIKE moves the SAs when the laptop changes networks (same
SPIs, no new handshake, ping back within 2 s).

One lab for the module; per pair of peers one set-up (``office`` fixture), its tests in order. PSK
only: certificates and virtual IPs through this NAT are test_remote_access_lab.py's.
"""

from __future__ import annotations

import time

import pytest

from tunnel.lab.espgw import EspgwGateway, GatewaySettings, tcp_transfer, wait_until
from tunnel.lab.interop import wire_summary
from tunnel.lab.nat import (FIRST_PORTS, HOTEL_PUBLIC, LAPTOP_HOTEL_IP, LAPTOP_INNER, CafeLab, laptop_connection,
                            office_connection)
from tunnel.lab.strongswan import StrongSwan

pytestmark = [pytest.mark.lab]

DASHBOARD = "10.0.5.9"
KEEP_ALIVE = 2.0
DPD = 3.0  # the laptop's liveness checks, which also watch its NAT mapping (MOBIKE)
RESTART_PORTS = (30000, 30999)


def _kept(office: Office, before: dict, after: dict) -> None:
    """The IKE SA survived (no new handshake); so did the CHILD SA where both ends can move it.
    strongSwan's kernel-libipsec (5.9.8 and 6.0, on either end) cannot change an installed SA's
    addresses: charon rekeys the CHILD SA instead (ike_mobike.c: update NOT_SUPPORTED), under the
    same IKE SA."""
    assert after["spi_i"] == before["spi_i"], "a new IKE handshake"
    if office.swan is None and office.swan_laptop is None:
        assert (after["child_in"], after["child_out"]) == (before["child_in"], before["child_out"])


@pytest.fixture(scope="module")
def lab():
    with CafeLab() as lab:
        lab.add_hotel()
        yield lab


class SwanLaptop(StrongSwan):
    """charon on the laptop, with NAT keepalives every KEEP_ALIVE."""

    def strongswan_conf(self) -> str:
        return super().strongswan_conf().replace("\ncharon {\n", f"\ncharon {{\n    keep_alive = {KEEP_ALIVE:g}s\n", 1)


class Office:
    """The office gateway and the laptop, as one set-up. ``kind``: "espgw" (both espgw), "5.9" or
    "6.0" (a strongSwan office, an espgw laptop), "swan5.9-laptop" or "swan6.0-laptop" (an espgw
    office, a strongSwan laptop)."""

    def __init__(self, lab: CafeLab, kind: str):
        self.lab, self.kind = lab, kind
        self.espgw: EspgwGateway | None = None
        self.swan: StrongSwan | None = None
        self.laptop: EspgwGateway | None = None
        self.swan_laptop: StrongSwan | None = None
        if kind in ("5.9", "6.0"):
            self.swan = StrongSwan(lab, lab.gwB, kind, [office_connection()]).start()
        else:
            self.espgw = EspgwGateway(lab, lab.gwB, [office_connection()], GatewaySettings(log_level="debug"),
                                      name="office").start()
        if kind.startswith("swan"):
            version = kind.removeprefix("swan").removesuffix("-laptop")
            self.swan_laptop = SwanLaptop(lab, lab.hostA, version, [laptop_connection(dpd_delay=DPD)]).start()
        else:
            settings = GatewaySettings(log_level="debug", keep_alive=KEEP_ALIVE, tun_name="espgw1")
            self.laptop = EspgwGateway(lab, lab.hostA, [laptop_connection(dpd_delay=DPD)], settings,
                                       name=f"laptop-{kind}").start()

    def initiate(self) -> None:
        if self.laptop is not None:
            self.laptop.request("initiate", child="dashboard")
            wait_until(lambda: self.laptop.children(), 15, "the laptop's CHILD SA", on_timeout=self.logs)
        else:
            assert self.swan_laptop is not None
            self.swan_laptop.initiate(child="dashboard", timeout=15)

    def mine(self) -> dict:
        """The laptop's view: its address and ports, NAT, the CHILD SA."""
        if self.laptop is not None:
            (sa,) = self.laptop.ike_sas()
            (child,) = self.laptop.children()
            return {"addr": sa["local_addr"], "port": sa["local_port"], "remote_port": sa["remote_port"],
                    "nat": sa["nat_local"], "mobike": sa["mobike"], "spi_i": sa["spi_i"], "child_in": child["spi_in"],
                    "encap": child["encap"]}
        assert self.swan_laptop is not None
        (sa,) = self.swan_laptop.list_sas()
        child = [c for c in sa["child-sas"].values() if c.get("state") == "INSTALLED"][-1]
        return {"addr": sa["local-host"], "port": int(sa["local-port"]), "remote_port": int(sa["remote-port"]),
                "nat": sa.get("nat-local") == "yes", "mobike": "peer supports MOBIKE" in self.swan_laptop.log_text(),
                "spi_i": sa["initiator-spi"], "child_in": child["spi-in"], "encap": child.get("encap") == "yes"}

    def peer(self) -> dict:
        """The office's view of the laptop: address, port, SPIs of IKE SA and CHILD SA."""
        if self.espgw is not None:
            (sa,) = self.espgw.ike_sas()
            (child,) = sa["children"]
            return {"addr": sa["remote_addr"], "port": int(sa["remote_port"]), "nat": sa["nat_remote"],
                    "spi_i": sa["spi_i"], "child_in": child["spi_in"], "child_out": child["spi_out"],
                    "esp_remote": tuple(child["remote"])}
        assert self.swan is not None
        (sa,) = self.swan.list_sas()
        child = [c for c in sa["child-sas"].values() if c.get("state") == "INSTALLED"][-1]  # the newest
        return {"addr": sa["remote-host"], "port": int(sa["remote-port"]), "nat": sa.get("nat-remote") == "yes",
                "spi_i": sa["initiator-spi"], "child_in": child["spi-in"], "child_out": child["spi-out"],
                "esp_remote": (sa["remote-host"], int(sa["remote-port"]))}

    def logs(self) -> str:
        office = self.espgw.log_tail(80) if self.espgw else (self.swan.log_tail(80) if self.swan else "")
        laptop = self.laptop.log_tail(80) if self.laptop else (self.swan_laptop.log_tail(80) if self.swan_laptop
                                                               else "")
        return f"--- laptop\n{laptop}\n--- office ({self.kind})\n{office}"

    def close(self) -> None:
        for gw in (self.laptop, self.espgw):
            if gw is not None:
                gw.stop()
        for charon in (self.swan_laptop, self.swan):
            if charon is not None:
                charon.stop()


@pytest.fixture(scope="module", params=["espgw", "5.9", "6.0", "swan5.9-laptop", "swan6.0-laptop"])
def office(request, lab):
    lab.move_to_cafe()
    lab.restart_nat(FIRST_PORTS)
    office = Office(lab, request.param)
    try:
        office.initiate()
        yield office
    finally:
        print(office.logs())  # shown for a failed test
        office.close()


def _ping(lab: CafeLab, count: int = 3):
    return lab.ping(lab.laptop, DASHBOARD, count=count, interval=0.2, source=LAPTOP_INNER)


def _ping_back_within(lab: CafeLab, seconds: float) -> float:
    """Ping until a reply comes; how long it took (raises after ``seconds`` + 10)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds + 10:
        if lab.ping(lab.laptop, DASHBOARD, count=1, wait=0.25, source=LAPTOP_INNER).received:
            return time.monotonic() - start
    raise AssertionError("no ping reply after the change")


def test_nat_detected_and_ike_and_esp_on_udp_4500(lab, office):
    mine = office.mine()
    assert mine["nat"] and mine["port"] == 4500 and mine["remote_port"] == 4500
    assert mine["addr"] == "192.168.1.7" and mine["mobike"]
    peer = office.peer()
    assert peer["addr"] == lab.cafe.wan_addr4 and peer["nat"]
    assert FIRST_PORTS[0] <= peer["port"] <= FIRST_PORTS[1]  # the cafe router's public port
    assert mine["encap"] and mine["child_in"] == peer["child_out"]
    pcap = lab.workdir / f"nat-t-{office.kind}.pcap"
    with lab.capture(lab.cafe, lab.cafe.wan_iface, pcap, bpf="not arp"):
        assert _ping(lab).ok
        sent, received = tcp_transfer(lab, lab.laptop, lab.hostB, DASHBOARD, 200_000)
    assert sent == received
    # on the public side only ESP-in-UDP, also from strongSwan 6.0 with raw_esp = yes
    wire = wire_summary(pcap)
    assert int(peer["child_in"], 16) in wire["esp_udp"] and int(peer["child_out"], 16) in wire["esp_udp"], wire
    assert not wire["esp_raw"] and not wire["clear"], wire


def test_keepalives_are_sent_at_the_configured_interval(lab, office):
    pcap = lab.workdir / f"keepalive-{office.kind}.pcap"
    with lab.capture(lab.cafe, lab.cafe.wan_iface, pcap, bpf="udp port 4500"):
        time.sleep(3 * KEEP_ALIVE + 0.5)
    times = lab.count_keepalives(str(pcap))
    # charon sends one only when it sent nothing else for keep_alive: its liveness checks (DPD)
    # stretch the gaps; espgw sends them on the interval
    longest = KEEP_ALIVE + 1.2 if office.laptop is not None else DPD + 1.2
    assert len(times) >= (3 if office.laptop is not None else 2), times
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(KEEP_ALIVE - 0.3 <= g <= longest for g in gaps), gaps


def test_a_restarted_nat_with_new_ports_is_survived(lab, office):
    before = office.peer()
    lab.restart_nat(RESTART_PORTS)
    took = _ping_back_within(lab, 2 * DPD + 4)
    after = wait_until(lambda: (p := office.peer())["port"] >= RESTART_PORTS[0] and p, 10,
                       "the office to learn the new port", on_timeout=office.logs)
    assert after["addr"] == lab.cafe.wan_addr4 and after["port"] <= RESTART_PORTS[1]
    _kept(office, before, after)
    assert _ping(lab).ok, took
    if office.espgw is not None:  # espgw follows the first authentic ESP-in-UDP from the new port
        assert took < 2.0, f"the ping came back after {took:.1f} s"


def test_mobike_moves_the_sas_to_the_hotel_network(lab, office):
    assert _ping(lab).ok
    before = office.peer()
    lab.move_to_hotel()
    assert lab.laptop_source_towards(lab.office.wan_addr4) == LAPTOP_HOTEL_IP
    took = _ping_back_within(lab, 2.0)
    after = office.peer()
    assert after["addr"] == HOTEL_PUBLIC, after
    _kept(office, before, after)
    assert office.mine()["addr"] == LAPTOP_HOTEL_IP
    if office.espgw is not None:  # the office checked the new path (COOKIE2) before moving ESP there
        text = office.espgw.log_path.read_text(errors="replace")
        check = text.rfind('"kind": "routability", "local": ["192.0.2.2", 4500], "remote": ["198.51.100.1"')
        assert 0 <= check < text.rfind('"remote": "198.51.100.1['), "no return routability check"
    assert took <= 2.0, f"the ping came back after {took:.1f} s"
    sent, received = tcp_transfer(lab, lab.laptop, lab.hostB, DASHBOARD, 100_000)
    assert sent == received
