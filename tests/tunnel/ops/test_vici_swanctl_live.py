"""The real swanctl against a ViciSession and ViciConfig behind a unix socket in this process: the
sans-I/O pieces, wired the way the daemon will wire them, satisfy swanctl (streamed list-sa
events are printed, load-all's loads succeed, a refused pool's errmsg reaches the user)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tunnel.lab.lab_pki import LabPki, write_swanctl_files
from tunnel.lab.strongswan import _SWANCTL_SUBDIRS
from tunnel.ops.vici.credstore import ViciCredentials
from tunnel.ops.vici.record import SWANCTL_CONF
from tunnel.ops.vici.session import CommandRequest, SessionClosed, ViciSession
from tunnel.ops.vici.swanctl_conf import ViciConfig, ViciConfigError

pytestmark = pytest.mark.skipif(shutil.which("swanctl") is None, reason="needs strongSwan's swanctl")

LIST_SA = {"office": {
    "uniqueid": "1", "version": "2", "state": "ESTABLISHED", "local-host": "192.0.2.1", "local-port": "500",
    "local-id": "gw-a.example.net", "remote-host": "192.0.2.2", "remote-port": "500", "remote-id": "gw-b.example.net",
    "initiator": "yes", "initiator-spi": "1122334455667788", "responder-spi": "99aabbccddeeff00",
    "encr-alg": "AES_GCM_16", "encr-keysize": "256", "prf-alg": "PRF_HMAC_SHA2_256", "dh-group": "ECP_256",
    "established": "10", "rekey-time": "3000",
    "child-sas": {"office-lan-1": {
        "name": "office-lan", "uniqueid": "1", "reqid": "1", "state": "INSTALLED", "mode": "TUNNEL",
        "protocol": "ESP", "spi-in": "c0ffee01", "spi-out": "c0ffee02", "encr-alg": "AES_GCM_16",
        "encr-keysize": "256", "bytes-in": "1000", "packets-in": "10", "bytes-out": "2000", "packets-out": "20",
        "rekey-time": "3000", "life-time": "3300", "install-time": "10",
        "local-ts": ["10.0.0.0/24"], "remote-ts": ["10.0.5.0/24"]}},
}}


class Server:
    """One client at a time, the way the daemon's loop will serve each vici connection."""

    def __init__(self, path: Path):
        self.creds = ViciCredentials()
        self.config = ViciConfig(self.creds)
        self.commands: list[str] = []
        self.messages: list[tuple[str, dict]] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.listener.settimeout(20)
        self.thread = threading.Thread(target=self.serve_one, daemon=True)
        self.thread.start()

    def serve_one(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(20)
        session = ViciSession({"list-sa", "list-conn", "control-log"})
        with conn:
            while data := conn.recv(4096):
                session.receive_data(data)
                while (event := session.next_event()) is not None:
                    if isinstance(event, SessionClosed):
                        return
                    if isinstance(event, CommandRequest):
                        self.commands.append(event.command)
                        self.messages.append((event.command, event.message))
                        session.respond(self.answer(session, event))
                conn.sendall(session.pending_output())
                session.output_sent(len(session.pending_output()))

    def answer(self, session: ViciSession, request: CommandRequest) -> dict:
        try:
            if request.command == "version":
                return {"daemon": "espgw", "version": "0.1.0", "sysname": "Linux", "release": "test",
                        "machine": "x86_64"}
            if request.command == "list-sas":
                session.emit_event("list-sa", LIST_SA)
                return {}
            if request.command == "initiate":
                session.emit_event("control-log", {"group": "IKE", "level": "1", "ikesa-name": "office",
                                                   "ikesa-uniqueid": "1", "msg": "initiating IKE_SA office[1]"})
                return {"success": "yes"}
            if request.command == "load-shared":
                self.config.load_shared(request.message)
            elif request.command == "load-conn":
                self.config.load_conn(request.message)
            elif request.command == "load-pool":
                self.config.load_pool(request.message)
            elif request.command == "load-cert":
                self.creds.load_cert(request.message)
            elif request.command == "load-key":
                return {"success": "yes", "id": self.creds.load_key(request.message)}
            elif request.command == "get-keys":
                return {"keys": list(self.creds.keys)}
            elif request.command == "get-conns":
                return self.config.get_conns()
            elif request.command == "get-shared":
                return self.config.get_shared()
            elif request.command.startswith("get-"):
                return {}
            return {"success": "yes"}
        except ViciConfigError as exc:
            return {"success": "no", "errmsg": exc.errmsg}


def swanctl(tmp_path: Path, *args: str) -> tuple[Server, subprocess.CompletedProcess]:
    sock = tmp_path / "vici.sock"
    server = Server(sock)
    proc = subprocess.run(["swanctl", *args, "--uri", f"unix://{sock}"], capture_output=True, text=True, timeout=30)
    server.thread.join(20)
    server.listener.close()
    return server, proc


def test_version(tmp_path):
    _, proc = swanctl(tmp_path, "--version", "--daemon")
    assert proc.returncode == 0
    assert "0.1.0 espgw (Linux, test, x86_64)" in proc.stdout  # swanctl prefixes "strongSwan" itself


def test_list_sas_prints_the_streamed_sa(tmp_path):
    server, proc = swanctl(tmp_path, "--list-sas")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert server.commands == ["list-sas"]
    assert "office: #1, ESTABLISHED, IKEv2, 1122334455667788_i* 99aabbccddeeff00_r" in proc.stdout
    assert "office-lan: #1, reqid 1, INSTALLED, TUNNEL, ESP:AES_GCM_16-256" in proc.stdout
    assert "in  c0ffee01,   1000 bytes,    10 packets" in proc.stdout
    assert "remote 10.0.5.0/24" in proc.stdout


def test_initiate_prints_the_streamed_log(tmp_path):
    server, proc = swanctl(tmp_path, "--initiate", "--child", "office-lan")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[IKE] initiating IKE_SA office[1]" in proc.stdout
    assert "initiate completed successfully" in proc.stdout


def test_load_all_loads_through_espgw_config(tmp_path):
    conf = tmp_path / "swanctl.conf"
    conf.write_text(SWANCTL_CONF.split("pools {")[0])  # the pool is refused, see below
    server, proc = swanctl(tmp_path, "--load-all", "--file", str(conf))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "loaded connection 'office'" in proc.stdout
    assert [conn.name for conn in server.config.connections()] == ["office"]
    assert server.config.connections()[0].psk == b"fake-fixture-secret-not-used-anywhere"


def test_load_all_loads_pools_then_connections(tmp_path):
    conf = tmp_path / "swanctl.conf"
    conf.write_text(SWANCTL_CONF)
    server, proc = swanctl(tmp_path, "--load-all", "--file", str(conf))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "loaded pool 'roadwarriors'" in proc.stdout
    assert server.config.pool_names() == ["roadwarriors"]


def test_a_refused_pool_reaches_the_user(tmp_path):
    conf = tmp_path / "swanctl.conf"
    conf.write_text(SWANCTL_CONF.replace("10.3.0.0/28", "10.3.0.0/33"))
    server, proc = swanctl(tmp_path, "--load-all", "--file", str(conf))
    assert proc.returncode != 0
    assert "loading pool 'roadwarriors' failed: vici: pools.roadwarriors.addrs: expected a subnet" in proc.stderr
    assert server.commands[-1] == "load-pool"  # swanctl stops there: connections are not loaded


def test_a_refused_key_reaches_the_user(tmp_path):
    conf = tmp_path / "swanctl.conf"
    conf.write_text(SWANCTL_CONF.split("pools {")[0].replace("start_action = trap", "start_action = trap\n updown = x"))
    server, proc = swanctl(tmp_path, "--load-all", "--file", str(conf))
    assert proc.returncode != 0
    assert "loading connection 'office' failed: vici: connections.office.children.office-lan.updown: unknown key" \
        in proc.stderr
    assert server.config.connections() == []


CERT_CONF = """connections {
    office {
        local_addrs = 192.0.2.1
        remote_addrs = 192.0.2.2
        local {
            auth = pubkey
            certs = office.pem
        }
        remote {
            auth = pubkey
            id = gwb.lab
            cacerts = office-ca0.pem
        }
        children {
            office-lan {
                local_ts = 10.0.0.0/24
                remote_ts = 10.0.5.0/24
            }
        }
    }
}
"""


def test_load_all_with_certificates(tmp_path):
    """swanctl 5.9.8 sends x509/ and x509ca/ with load-cert (flag NONE / CA), private/ with
    load-key (parsed, as DER of its type), and the connection's certs/cacerts as the files'
    contents in load-conn; espgw pairs them up."""
    pki = LabPki.make(ca_kind="ecdsa256")
    mine = pki.gateway("gwa.lab", "ecdsa256")
    for sub in _SWANCTL_SUBDIRS:
        (tmp_path / sub).mkdir(exist_ok=True)
    write_swanctl_files(tmp_path, "office", mine, pki.trust())
    conf = tmp_path / "swanctl.conf"
    conf.write_text(CERT_CONF)
    server, proc = swanctl(tmp_path, "--load-all", "--file", str(conf))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "loaded connection 'office'" in proc.stdout
    sent = {command: message for command, message in server.messages}
    assert sent["load-key"]["type"] == b"ECDSA"  # swanctl parses the key and sends it as DER, typed
    assert not sent["load-key"]["data"].startswith(b"-----")
    flags = [m.get("flag") for c, m in server.messages if c == "load-cert"]
    assert sorted(flags) == [b"CA", b"NONE"]
    local = sent["load-conn"]["office"]["local"]
    assert local["certs"] == [mine.certificate.public_bytes(serialization.Encoding.PEM)]  # the file, verbatim
    [conn] = server.config.connections()
    assert conn.local.credential.certificate == mine.certificate
    assert conn.remote.trust.cas == [pki.ca]


def test_a_certificate_without_its_key_is_refused_by_name(tmp_path):
    pki = LabPki.make(ca_kind="ecdsa256")
    for sub in _SWANCTL_SUBDIRS:
        (tmp_path / sub).mkdir(exist_ok=True)
    write_swanctl_files(tmp_path, "office", pki.gateway("gwa.lab", "ecdsa256"), pki.trust())
    (tmp_path / "private" / "office.pem").unlink()
    conf = tmp_path / "swanctl.conf"
    conf.write_text(CERT_CONF)
    server, proc = swanctl(tmp_path, "--load-all", "--file", str(conf))
    assert proc.returncode != 0
    assert "loading connection 'office' failed: vici: connections.office.local.certs: no private key loaded " \
           'for the certificate "C=CH, O=espgw lab, CN=gwa.lab"' in proc.stderr
    assert server.config.connections() == []


def test_the_vici_python_package_as_a_client(tmp_path):
    # strongSwan's own Python client (PyPI "vici", not an espgw dependency): it unregisters after
    # a streamed command, which swanctl never does (it closes the connection)
    vici = pytest.importorskip("vici", reason="the vici package is not installed")
    sock_path = tmp_path / "vici.sock"
    server = Server(sock_path)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(sock_path))
    session = vici.Session(client)
    assert session.version()["daemon"] == b"espgw"
    [sa] = list(session.list_sas())
    assert sa["office"]["child-sas"]["office-lan-1"]["spi-in"] == b"c0ffee01"
    session.load_shared({"id": "ike-x", "type": "IKE", "data": "fake-secret", "owners": ["a.example"]})
    with pytest.raises(vici.exception.CommandException, match="pools.p.addrs: expected a subnet"):
        session.load_pool({"p": {"addrs": "10.3.0.0/33"}})
    client.close()
    server.thread.join(20)
    server.listener.close()
    assert server.commands == ["version", "list-sas", "load-shared", "load-pool"]
