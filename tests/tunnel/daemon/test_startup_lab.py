"""Start-up diagnosis in the namespace lab: a second daemon on a taken IKE port names the address,
the port and the first daemon's pid; a gateway whose namespace does not forward IPv4 says so."""

from __future__ import annotations

import json

import pytest

from tunnel.lab.configs import site_to_site
from tunnel.lab.espgw import EspgwGateway, GatewaySettings
from tunnel.lab.netns import Lab, LabError

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab():
    with Lab() as lab:
        yield lab


def log_events(gateway: EspgwGateway) -> list[dict]:
    events = []
    for line in gateway.log_path.read_text(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def test_taken_ike_port_names_the_holder(lab):
    first = EspgwGateway(lab, lab.gwA, [site_to_site(lab, "A")]).start()
    second = EspgwGateway(lab, lab.gwA, [site_to_site(lab, "A")], GatewaySettings(tun_name="espgw1"), name="gwA2")
    try:
        with pytest.raises(LabError, match="exited with 1"):
            second.start()
        (failed,) = [e for e in log_events(second) if e.get("event") == "startup_failed"]
        assert failed["resource"] == "UDP 192.0.2.1:500"
        assert failed["error"].startswith("UDP 192.0.2.1:500 is already in use by ")
        assert f"(pid {first.proc.pid})" in failed["error"]
        assert "Traceback" not in second.log_path.read_text()
    finally:
        second.stop()
        first.stop()


def test_forwarding_off_in_the_gateways_namespace_is_a_warning(lab):
    lab.run(lab.gwB, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    gateway = EspgwGateway(lab, lab.gwB, [site_to_site(lab, "B")]).start()
    try:
        warnings = [e for e in log_events(gateway) if e.get("event") == "forwarding.off"]
        assert [w["sysctl"] for w in warnings] == ["net.ipv4.ip_forward"]  # IPv6 forwarding is on here
        assert warnings[0]["level"] == "warning"
    finally:
        gateway.stop()
        lab.run(lab.gwB, "sysctl", "-qw", "net.ipv4.ip_forward=1")
