"""swanctl drives a running espgw over vici: espgw on gwA starts with no connection, swanctl
(Debian's 5.9.8, and 6.0 from the trixie root) loads a swanctl.conf into it, brings the tunnel up
against strongSwan 5.9 on gwB, lists, rekeys, reloads and terminates. One lab, one charon and one
espgw serve the whole module; the tests run in order and build on each other's state."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
import vici

from tunnel.lab.configs import site_to_site
from tunnel.lab.espgw import EspgwGateway, wait_until
from tunnel.lab.netns import Lab
from tunnel.lab.rootfs import ensure_trixie_rootfs
from tunnel.lab.strongswan import _CHROOT_SH, StrongSwan
from tunnel.lab.swanctl_conf import render_swanctl_conf

pytestmark = [pytest.mark.lab, pytest.mark.strongswan,
              pytest.mark.skipif(shutil.which("swanctl") is None, reason="needs strongSwan's swanctl")]

TRIXIE = Path("/var/cache/espgw/trixie-root")


@pytest.fixture(scope="module")
def lab():
    with Lab() as lab:
        yield lab


@pytest.fixture(scope="module")
def charon(lab):
    with StrongSwan(lab, lab.gwB, "5.9", [site_to_site(lab, "B")]) as charon:
        yield charon


@pytest.fixture(scope="module")
def espgw(lab, charon):
    gw = EspgwGateway(lab, lab.gwA, []).start()
    yield gw
    print(gw.log_tail(80))
    gw.stop()


@pytest.fixture(scope="module")
def conf(lab) -> Path:
    return lab.workdir / "espgw-swanctl.conf"


def swanctl(gw: EspgwGateway, command: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["swanctl", f"--{command}", "--uri", f"unix://{gw.socket}.vici", *args],
                          capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise AssertionError(f"swanctl --{command} failed ({done.returncode}): {done.stdout}{done.stderr}\n"
                             f"{gw.log_tail()}")
    return done


def write_conf(path: Path, conns, extra: str = "") -> None:
    text = render_swanctl_conf(conns)
    if extra:
        text = text.replace("connections {", "connections {\n" + extra, 1)
    path.write_text(text)


def test_version_and_stats(espgw):
    assert "espgw" in swanctl(espgw, "version", "--daemon").stdout
    assert "uptime" in swanctl(espgw, "stats").stdout


def test_load_all_initiate_list(lab, espgw, charon, conf):
    write_conf(conf, [site_to_site(lab, "A")])
    out = swanctl(espgw, "load-all", "--file", str(conf)).stdout
    assert "loaded connection 'lab'" in out, out
    assert "lab:" in swanctl(espgw, "list-conns").stdout
    swanctl(espgw, "initiate", "--child", "net", "--timeout", "20")
    children = espgw.children()
    assert len(children) == 1
    listed = swanctl(espgw, "list-sas").stdout
    assert children[0]["spi_in"] in listed and children[0]["spi_out"] in listed, listed
    assert "ESTABLISHED" in listed and "INSTALLED" in listed
    assert {c["spi-out"] for c in charon.child_sas("net")} == {children[0]["spi_in"]}


def test_rekey_child(espgw):
    before = espgw.children()[0]["spi_in"]
    swanctl(espgw, "rekey", "--child", "net")
    wait_until(lambda: {c["spi_in"] for c in espgw.children()} - {before}, 15, "a rekeyed CHILD SA")


def test_load_again_keeps_unchanged_and_unloads_removed(lab, espgw, conf):
    spis = {c["spi_in"] for c in espgw.children()}
    extra = site_to_site(lab, "A", name="extra", child="extranet")
    write_conf(conf, [site_to_site(lab, "A"), extra])
    swanctl(espgw, "load-all", "--file", str(conf))
    assert "extra:" in swanctl(espgw, "list-conns").stdout
    write_conf(conf, [site_to_site(lab, "A")])
    out = swanctl(espgw, "load-all", "--file", str(conf)).stdout
    assert "1 unloaded" in out, out  # swanctl reports what it unloaded
    assert "extra:" not in swanctl(espgw, "list-conns").stdout
    assert {c["spi_in"] for c in espgw.children()} == spis  # the unchanged connection kept its SA


def test_unsupported_key_is_named(lab, espgw, conf, tmp_path):
    bad = tmp_path / "bad.conf"
    write_conf(bad, [site_to_site(lab, "A")])
    bad.write_text(bad.read_text().replace("start_action", "updown = /bin/true\n            start_action", 1))
    done = swanctl(espgw, "load-all", "--file", str(bad), check=False)
    assert done.returncode != 0
    assert "updown" in done.stdout + done.stderr


def test_certificate_without_data_is_refused_clearly(espgw):
    sock = _connect(espgw)
    sock.sendall(_packet(0, "load-cert", b"\x03\x04type\x00\x04X509"))
    answer = _read_packet(sock)
    assert b"load-cert: missing data" in answer
    sock.close()


def test_malformed_client_is_dropped_alone(espgw):
    sock = _connect(espgw)
    sock.sendall(struct.pack("!I", 100 * 1024 * 1024))
    sock.settimeout(5)
    assert sock.recv(100) == b""  # closed by the daemon
    sock.close()
    stuck = _connect(espgw)  # never reads: must not block anyone
    for _ in range(50):
        stuck.sendall(_packet(0, "list-sas", b""))
    assert "uptime" in swanctl(espgw, "stats").stdout
    stuck.close()


def swanctl60(lab: Lab, gw: EspgwGateway, command: str, *args: str) -> str:
    """6.0's swanctl, chrooted as the lab runs charon 6.0 (the lab's work directory bound inside)."""
    done = lab.run(lab.gwA, "sh", "-c", _CHROOT_SH, "sh", str(ensure_trixie_rootfs()), str(lab.workdir),
                   "swanctl", f"--{command}", "--uri", f"unix://{gw.socket}.vici", *args, check=False,
                   timeout=60)
    assert done.returncode == 0, f"swanctl 6.0 --{command}: {done.stdout}{done.stderr}"
    return done.stdout


needs_trixie = pytest.mark.skipif(not (TRIXIE / "usr/sbin/swanctl").exists(), reason="needs the lab's trixie root")


@needs_trixie
def test_swanctl_60(lab, espgw, conf):
    assert "espgw" in swanctl60(lab, espgw, "version", "--daemon")
    assert "uptime" in swanctl60(lab, espgw, "stats")
    swanctl60(lab, espgw, "load-all", "--file", str(conf))  # unchanged: nothing happens to the SA
    assert "lab:" in swanctl60(lab, espgw, "list-conns")
    assert espgw.children()[0]["spi_in"] in swanctl60(lab, espgw, "list-sas")


def test_initiate_an_established_child_succeeds(espgw):
    spis = {c["spi_in"] for c in espgw.children()}
    assert "already established" in swanctl(espgw, "initiate", "--child", "net").stdout
    assert {c["spi_in"] for c in espgw.children()} == spis


def test_events_reach_the_vici_package(espgw):
    """The ``vici`` package (an independent client) sees child-rekey and child-updown."""
    sock = _connect(espgw)
    session = vici.Session(sock)
    assert session.version()["daemon"] == b"espgw"
    (listed,) = session.list_sas()
    assert listed["lab"]["state"] == b"ESTABLISHED"
    events = session.listen(["child-rekey", "child-updown"], timeout=0.2)
    assert next(events) == (None, None)  # registered, nothing happened yet
    swanctl(espgw, "rekey", "--child", "net")
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + 15
    while "child-rekey" not in seen and time.monotonic() < deadline:
        kind, message = next(events)
        if kind is not None:
            seen[kind.decode()] = message
    events.close()
    sock.close()
    assert "child-rekey" in seen and "child-updown" in seen, seen
    (ike,) = seen["child-rekey"].values()
    assert any(spi in {c["spi_in"] for c in espgw.children()}
               for spi in (c["spi-in"].decode() for c in ike["child-sas"].values()))


def test_changed_connection_is_reestablished(lab, espgw, charon, conf):
    before = {c["spi_in"] for c in espgw.children()}
    changed = site_to_site(lab, "A")
    changed.children[0].rekey_time = 1800.0
    write_conf(conf, [changed])
    swanctl(espgw, "load-all", "--file", str(conf))
    wait_until(lambda: len(espgw.children()) == 1 and not {c["spi_in"] for c in espgw.children()} & before, 20,
               "the changed connection's CHILD SA set up again")
    assert "rekeying every 1800s" in swanctl(espgw, "list-conns").stdout
    charon.wait_for(lambda sas: len(sas) == 1, 15, "charon to hold only the new IKE SA")


def test_terminate(espgw, charon):
    swanctl(espgw, "terminate", "--ike", "lab", "--timeout", "10")
    assert espgw.ike_sas() == []
    charon.wait_for(lambda sas: not sas, 10, "charon to drop the IKE SA")


# --- raw vici packets ---------------------------------------------------------------------------
def _connect(gw: EspgwGateway) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(f"{gw.socket}.vici")
    return sock


def _packet(kind: int, name: str, message: bytes) -> bytes:
    body = bytes([kind, len(name)]) + name.encode() + message
    return struct.pack("!I", len(body)) + body


def _read_packet(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data



def test_trap_loaded_over_vici_negotiates_on_traffic(lab, espgw, charon, conf):
    """start_action = trap from swanctl.conf: the first packet for the peer's LAN brings the SA up."""
    trapped = site_to_site(lab, "A")
    trapped.children[0].start_action = "trap"
    write_conf(conf, [trapped])
    swanctl(espgw, "load-all", "--file", str(conf))
    assert espgw.ike_sas() == []
    lab.ping(lab.hostA, lab.hostB.addr4, count=1, wait=2)  # caught by the trap, queued, negotiated
    assert lab.ping(lab.hostA, lab.hostB.addr4, count=3, interval=0.1).ok
    assert len(espgw.children()) == 1
    swanctl(espgw, "terminate", "--ike", "lab", "--timeout", "10")


def test_initiate_against_espgw(lab, espgw, charon, conf):
    """The same swanctl.conf brings the tunnel up against espgw on gwB (charon is stopped)."""
    charon.stop()
    peer = EspgwGateway(lab, lab.gwB, [site_to_site(lab, "B")]).start()
    try:
        swanctl(espgw, "initiate", "--child", "net", "--timeout", "20")
        (mine,), (theirs,) = espgw.children(), peer.children()
        assert (mine["spi_in"], mine["spi_out"]) == (theirs["spi_out"], theirs["spi_in"])
        assert mine["spi_in"] in swanctl(espgw, "list-sas").stdout
        swanctl(espgw, "terminate", "--ike", "lab", "--timeout", "10")
        wait_until(lambda: not peer.ike_sas(), 10, "espgw on gwB to drop the IKE SA")
    finally:
        print(peer.log_tail(40))
        peer.stop()
