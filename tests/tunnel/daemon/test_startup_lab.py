"""Start-up diagnosis in the namespace lab: a second daemon on a taken IKE port names the address,
the port and the first daemon's pid; a gateway whose namespace does not forward IPv4 says so; run
as an unprivileged user, the daemon names the capabilities it lacks, and with the systemd unit's
three ambient capabilities it runs a tunnel without root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunnel.lab.configs import site_to_site
from tunnel.lab.espgw import EspgwGateway, GatewaySettings, config_toml, wait_until
from tunnel.lab.netns import Lab, LabError
from tunnel.ops.control import ControlError, control_request

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[3]
NOBODY = 65534


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


# ----------------------------------------------------------------------------- not root: what the systemd unit does

CAPS = "+net_admin,+net_raw,+net_bind_service"  # the unit's AmbientCapabilities


def start_as_nobody(lab: Lab, ambient: bool) -> tuple[subprocess.Popen, Path, str]:
    """``espgw run`` on gwA as user nobody, with the unit's capabilities (ambient) or none."""
    workdir = lab.workdir / ("nobody-caps" if ambient else "nobody")
    workdir.mkdir(mode=0o755, exist_ok=True)
    os.chmod(lab.workdir, 0o755)
    os.chown(workdir, NOBODY, NOBODY)  # its control and vici sockets go here
    config = workdir / "espgw.toml"
    socket_path = str(workdir / "espgw.sock")
    config.write_text(config_toml([site_to_site(lab, "A")], GatewaySettings(tun_name="espgwu0"), socket_path))
    os.chown(config, NOBODY, NOBODY)
    os.chmod(config, 0o600)
    caps = [f"--inh-caps={CAPS}", f"--ambient-caps={CAPS}"] if ambient else []
    log_path = workdir / "espgw.log"
    with open(log_path, "ab") as log:
        proc = lab.spawn(lab.gwA, "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *caps,
                         "--", sys.executable, "-m", "tunnel.main", "run", "-c", config,
                         stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
    return proc, log_path, socket_path


def test_without_capabilities_the_error_names_them(lab):
    proc, log_path, _ = start_as_nobody(lab, ambient=False)
    assert proc.wait(timeout=30) == 1
    (failed,) = [json.loads(line) for line in log_path.read_text().splitlines() if '"startup_failed"' in line]
    for cap in ("CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"):
        assert cap in failed["error"], failed
    assert "AmbientCapabilities" in failed["fix"] and "Traceback" not in log_path.read_text()


def test_the_units_capabilities_are_enough_to_run_a_tunnel(lab):
    """No root: as the systemd unit runs it (user nobody, three ambient capabilities)."""
    proc, log_path, socket_path = start_as_nobody(lab, ambient=True)
    peer = EspgwGateway(lab, lab.gwB, [site_to_site(lab, "B")]).start()
    try:
        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"espgw as nobody exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                control_request(socket_path, {"cmd": "status"}, timeout=1.0)
                return True
            except ControlError:
                return False

        wait_until(answers, 15, "espgw as nobody to answer", on_timeout=log_path.read_text)
        control_request(socket_path, {"cmd": "initiate", "ike": "lab"}, timeout=5.0)
        wait_until(lambda: lab.ping(lab.hostA, lab.hostB.addr4, count=1, wait=1).ok, 20,
                   "a ping through the tunnel of the unprivileged gateway", on_timeout=log_path.read_text)
        uid = int(Path(f"/proc/{proc.pid}/status").read_text().split("Uid:")[1].split()[1])
        assert uid == NOBODY
    finally:
        peer.stop()
        lab.stop(proc)
    assert "Traceback" not in log_path.read_text()
