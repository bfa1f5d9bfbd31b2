"""The espgw command line: parsing, errors and rendering, against a stand-in daemon (a ControlServer
with fixed answers shaped like the daemon's). Whether the CLI and the REAL daemon agree is checked in
tests/tunnel/ops/test_cli_contract_lab.py (two ``espgw run`` daemons in the lab)."""

from __future__ import annotations

import selectors
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

import tunnel.main as espgw_main
from tunnel.ops.cli import main, render_sas
from tunnel.ops.control import ControlError, ControlServer

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

CHILD = {
    "name": "office-lan", "unique_id": 3, "state": "INSTALLED", "mode": "tunnel", "encap": False,
    "proposal": "aes256gcm16-esn", "spi_in": "c1a2b3c4", "spi_out": 0xC5D6E7F8,
    "bytes_in": 8400, "packets_in": 100, "bytes_out": 9000, "packets_out": 101,
    "installed": 120, "rekey_in": 3400, "expires_in": 3840,
    "local_ts": ["10.0.0.0/24"], "remote_ts": ["10.0.5.0/24"], "drops": {"replay": 3, "auth_failed": 0},
}
IKE_SA = {
    "name": "office", "unique_id": 1, "state": "ESTABLISHED", "version": 2, "initiator": True,
    "spi_i": "0123456789abcdef", "spi_r": "fedcba9876543210",
    "local_addr": "192.0.2.1", "local_port": 500, "local_id": "gw-a.example.net",
    "remote_addr": "192.0.2.2", "remote_port": 500, "remote_id": "gw-b.example.net",
    "proposal": "aes256gcm16-prfsha256-ecp256", "established": 125, "rekey_in": 14000,
    "children": [CHILD],
}
STATUS = {
    "version": "0.1.0", "pid": 4242, "uptime": 3725, "tun_name": "espgw0", "mtu": 1400,
    "control_socket": "/run/espgw/site-a.sock",
    "connections": [{"name": "office", "local_addrs": ["192.0.2.1"], "remote_addrs": ["192.0.2.2"],
                     "children": ["office-lan"]}],
    "ike_sas": [IKE_SA], "counters": {"packets_in": 100, "packets_out": 101, "bytes_in": 8400, "bytes_out": 9000},
    "drops": {"replay": 3, "unknown_spi": 1},
}
KEYS = {
    "child_sas": [{"src": "192.0.2.1", "dst": "192.0.2.2", "spi": "c5d6e7f8", "esp_transform": "aes256gcm16",
                   "keymat": "11" * 36}],
    "ike_sas": [{"spi_i": "0123456789abcdef", "spi_r": "fedcba9876543210", "encr_alg": "aes256gcm16",
                 "sk_ei": "22" * 36, "sk_er": "33" * 36, "integ_alg": "none"}],
}


class FakeDaemon:
    def __init__(self, path: str):
        self.requests: list[dict] = []
        self.selector = selectors.DefaultSelector()
        self.server = ControlServer(path, self.handle, self.selector)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def handle(self, request: dict):
        self.requests.append(request)
        cmd = request["cmd"]
        if cmd == "status":
            return STATUS
        if cmd == "list-sas":
            return {"ike_sas": [IKE_SA]}
        if cmd == "keys":
            return KEYS
        if cmd in ("initiate", "terminate"):
            if request.get("child") == "nope":
                raise ControlError("no child named 'nope'")
            return {"message": f"{cmd}d {request.get('child') or request.get('ike')}"}
        raise ControlError("unknown command")

    def loop(self):
        while not self.stop.is_set():
            for key, mask in self.selector.select(0.05):
                key.data(mask)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.server.close()


@pytest.fixture
def daemon(tmp_path):
    fake = FakeDaemon(str(tmp_path / "espgw.sock"))
    yield fake
    fake.close()


def run_cli(capsys, *argv: str, **starters) -> tuple[int, str, str]:
    code = main(list(argv), **starters)
    out, err = capsys.readouterr()
    return code, out, err


def test_list_sas_renders_like_swanctl(daemon, capsys):
    code, out, _ = run_cli(capsys, "list-sas", "--socket", daemon.server.path)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "office: #1, ESTABLISHED, IKEv2, 0123456789abcdef_i* fedcba9876543210_r"
    assert lines[1] == "  local  'gw-a.example.net' @ 192.0.2.1[500]"
    assert "  office-lan: #3, INSTALLED, TUNNEL, ESP:aes256gcm16-esn" in lines
    assert any(line.startswith("    in  c1a2b3c4,") and "8400 bytes" in line and "100 packets" in line
               for line in lines)
    assert any(line.startswith("    out c5d6e7f8,") for line in lines)
    assert "    drops  replay 3" in lines
    assert "rekeying in 3400s" in out and "expires in 3840s" in out
    assert daemon.requests == [{"cmd": "list-sas"}]


def test_list_sas_filters_by_name(daemon, capsys):
    code, out, _ = run_cli(capsys, "list-sas", "--ike", "other", "--socket", daemon.server.path)
    assert code == 0 and out.strip() == "no SAs"


def test_status(daemon, capsys):
    code, out, _ = run_cli(capsys, "status", "--socket", daemon.server.path)
    assert code == 0
    assert out.startswith("espgw 0.1.0, pid 4242, up 1h2m5s")
    assert "  office: 192.0.2.1...192.0.2.2 IKEv2, up; children: office-lan" in out
    assert "security associations: 1 IKE, 1 CHILD" in out and "drops: replay 3, unknown_spi 1" in out


def test_initiate_and_terminate(daemon, capsys):
    path = daemon.server.path
    assert run_cli(capsys, "initiate", "--child", "office-lan", "--socket", path)[1].strip() == "initiated office-lan"
    assert run_cli(capsys, "terminate", "--ike", "office", "--socket", path)[1].strip() == "terminated office"
    code, _, err = run_cli(capsys, "initiate", "--child", "nope", "--socket", daemon.server.path)
    assert code == 1 and err.strip() == "espgw: no child named 'nope'"
    assert daemon.requests[:2] == [{"cmd": "initiate", "child": "office-lan"}, {"cmd": "terminate", "ike": "office"}]


def test_keys_writes_wireshark_tables(daemon, capsys, tmp_path):
    code, out, _ = run_cli(capsys, "keys", "--wireshark", str(tmp_path / "ws"), "--socket", daemon.server.path)
    assert code == 0 and "wrote 1 ESP SA(s)" in out and "wrote 1 IKE SA(s)" in out
    esp_sa = (tmp_path / "ws" / "esp_sa").read_text()
    assert '"0xc5d6e7f8","AES-GCM with 16 octet ICV [RFC4106]","0x' + "11" * 36 + '"' in esp_sa
    assert (tmp_path / "ws" / "ikev2_decryption_table").read_text().count("\n") == 2


def test_socket_path_from_config(daemon, capsys, tmp_path):
    config = (EXAMPLES / "site-a.toml").read_text().replace("/run/espgw/site-a.sock", daemon.server.path)
    (tmp_path / "a.toml").write_text(config)
    code, out, _ = run_cli(capsys, "status", "-c", str(tmp_path / "a.toml"))
    assert code == 0 and "pid 4242" in out


def test_unreachable_daemon_message(capsys, tmp_path):
    path = str(tmp_path / "absent.sock")
    code, out, err = run_cli(capsys, "list-sas", "--socket", path)
    assert code == 1 and out == ""
    assert err == f"espgw: cannot reach the daemon at {path}: is `espgw run` running?\n"


def test_bad_usage_exits_2(capsys):
    for argv in ([], ["bogus"], ["initiate"], ["initiate", "--child", "a", "--ike", "b"], ["keys"], ["run"],
                 ["status", "--timeout", "-1"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2, argv
    assert "usage: espgw" in capsys.readouterr().err


def test_check_prints_connections_without_secrets(capsys):
    code, out, _ = run_cli(capsys, "check", "-c", str(EXAMPLES / "site-a.toml"))
    assert code == 0
    assert "office-lan: 10.0.0.0/24 === 10.0.5.0/24, tunnel, start_action trap" in out
    assert "secret from secrets.ike-office (32 bytes)" in out
    assert "8f3ac1d4" not in out


def test_check_reports_config_errors(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text((EXAMPLES / "site-a.toml").read_text().replace('rekey_time = "1h"', 'rekey_time = "soon"'))
    code, out, err = run_cli(capsys, "check", "-c", str(bad))
    assert code == 1 and out == ""
    assert err == (f"espgw: {bad}: connections.office.children.office-lan.rekey_time: "
                   'expected a duration like "1h" or seconds, got "soon"\n')


def test_run_hands_config_to_daemon(capsys, tmp_path):
    seen = {}
    code, _, _ = run_cli(capsys, "run", "-c", str(EXAMPLES / "site-b.toml"), "--socket", str(tmp_path / "s.sock"),
                         "--log-format", "json", start_daemon=lambda config: seen.setdefault("config", config) and 0)
    assert code == 0
    assert seen["config"].connections[0].name == "laptop-site"
    assert seen["config"].gateway.control_socket == str(tmp_path / "s.sock")



def test_demo_without_the_lab_says_it_needs_a_checkout(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tunnel.lab.demo", None)  # as in an installed wheel: no tunnel.lab
    code, out = espgw_main.main(["demo"]), capsys.readouterr()
    assert code == 1 and out.err == f"espgw: {espgw_main.DEMO_NEEDS_CHECKOUT}\n" and "Traceback" not in out.err


def test_cli_without_starters_refuses_run_and_demo(capsys):
    code, _, err = run_cli(capsys, "run", "-c", str(EXAMPLES / "site-b.toml"))
    assert code == 1 and "cannot start the daemon" in err
    code, _, err = run_cli(capsys, "demo")
    assert code == 1 and "cannot start the demo" in err


def test_demo_dispatch(monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("tunnel.lab.demo")
    fake.main = lambda argv=None: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "tunnel.lab.demo", fake)
    assert espgw_main.main(["demo"]) == 0 and espgw_main.main(["demo", "--keep"]) == 0
    assert calls == [[], ["--keep"]]


def test_render_tolerates_sparse_daemon_answers():
    text = render_sas([{"name": "x", "children": [{"name": "c"}, "junk"]}, ])
    assert text.startswith("x: #?, ?, IKEv2") and "  c: #?, ?, TUNNEL, ESP:?" in text


def test_console_script_never_shows_a_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-m", "tunnel.main", "status", "--socket", str(tmp_path / "x.sock")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "cannot reach the daemon" in run.stderr
