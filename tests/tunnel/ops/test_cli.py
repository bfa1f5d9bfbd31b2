"""The espgw command line: parsing, errors and rendering, against a stand-in daemon (a ControlServer
with fixed answers shaped like the daemon's). Whether the CLI and the REAL daemon agree is checked in
tests/tunnel/ops/test_cli_contract_lab.py (two ``espgw run`` daemons in the lab)."""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import threading
import time
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


CONN = {"name": "office", "version": 2, "local_addrs": ["192.0.2.1"], "remote_addrs": ["gw-b.example.net"],
        "rekey_time": 14400, "reauth_time": 0, "dpd_delay": 30, "keyingtries": 1,
        "local": {"auth": "psk", "id": "gw-a.example.net"}, "remote": {"auth": "pubkey", "id": None},
        "children": [{"name": "office-lan", "mode": "tunnel", "local_ts": ["10.0.0.0/24"],
                      "remote_ts": ["10.0.5.0/24"], "rekey_time": 3600, "start_action": "trap"}]}


class FakeDaemon:
    def __init__(self, path: str):
        self.requests: list[dict] = []
        self.selector = selectors.DefaultSelector()
        self.server = ControlServer(path, self.handle, self.selector)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    journal: list[dict] | None = None  # set: initiate answers like a daemon that can be followed
    refuse_reload = False

    def handle(self, request: dict):
        self.requests.append(request)
        cmd = request["cmd"]
        if cmd == "initiate" and self.journal is not None:
            return {"message": "initiating", "connection": "office", "since": 0}
        if cmd == "events":
            assert self.journal is not None
            events = [e for e in self.journal if e["seq"] > request["since"]][:1]  # one per poll
            return {"events": events, "next": events[-1]["seq"] if events else request["since"]}
        if cmd == "reload":
            if self.refuse_reload:
                raise ControlError("configuration not reloaded (the running one stays):\n"
                                   "a.toml: connections.x.mtu: expected an integer\na.toml: connections.y: bad")
            return {"source": "a.toml", "added": ["new"], "removed": ["old"], "changed": [], "unchanged": ["office"],
                    "warnings": ["gateway.tun_name changed from 'a' to 'b': takes effect after a restart (still 'a')"]}
        if cmd == "list-conns":
            return {"connections": [CONN]}
        if cmd == "rekey":
            if request.get("ike") == "nosuch":
                raise ControlError("no established IKE SA named 'nosuch'")
            return {"message": f"rekeying IKE SA {request.get('ike')}"}
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


def _journal(*entries: tuple[str, str | None, str | None, str]) -> list[dict]:
    return [{"seq": i, "event": event, "child": child, "outcome": outcome, "text": text, "connection": "office"}
            for i, (event, child, outcome, text) in enumerate(entries, 1)]


def test_initiate_waits_for_the_child_and_prints_the_events(daemon, capsys):
    daemon.journal = _journal(("initiate", "office-lan", None, "initiating CHILD SA office-lan of office"),
                              ("ike_sa.up", None, "up", "IKE SA office[1] established"),
                              ("child_sa.up", "office-lan", "up", "CHILD SA office-lan{1} established"))
    code, out, err = run_cli(capsys, "initiate", "--child", "office-lan", "--socket", daemon.server.path)
    assert code == 0, err
    assert out.splitlines() == ["[CHD] initiating CHILD SA office-lan of office", "[IKE] IKE SA office[1] established",
                                "[CHD] CHILD SA office-lan{1} established", "initiate completed successfully"]


def test_initiate_fails_on_a_final_failure(daemon, capsys):
    daemon.journal = _journal(("failure", None, None, "IKE_SA_INIT failed: TIMEOUT: no answer to IKE_SA_INIT"),
                              ("failed", None, "failed", "establishing office failed"))
    code, out, err = run_cli(capsys, "initiate", "--ike", "office", "--socket", daemon.server.path)
    assert code == 1 and "[IKE] IKE_SA_INIT failed: TIMEOUT" in out
    assert err == "espgw: initiate failed: establishing office failed\n"


def test_initiate_gives_up_after_its_timeout(daemon, capsys):
    daemon.journal = _journal(("retrying", None, None, "connection office: trying again"))
    started = time.monotonic()
    code, out, err = run_cli(capsys, "initiate", "--ike", "office", "--timeout", "0.5", "--socket", daemon.server.path)
    assert code == 1 and 0.4 < time.monotonic() - started < 3
    assert err.startswith("espgw: initiate timed out after 0.5s")


def test_terminate_and_rekey_of_unknown_names_exit_1(daemon, capsys):
    code, out, err = run_cli(capsys, "rekey", "--ike", "nosuch", "--socket", daemon.server.path)
    assert code == 1 and err == "espgw: no established IKE SA named 'nosuch'\n"
    code, out, _ = run_cli(capsys, "rekey", "--ike", "office", "--socket", daemon.server.path)
    assert code == 0 and out.strip() == "rekeying IKE SA office"


def test_reload_prints_what_changed_and_the_warnings(daemon, capsys):
    code, out, err = run_cli(capsys, "reload", "--socket", daemon.server.path)
    assert code == 0
    assert out.strip() == "reloaded a.toml: added new; removed old; 1 unchanged"
    assert err.startswith("espgw: warning: gateway.tun_name changed")


def test_a_refused_reload_prints_each_error_and_exits_1(daemon, capsys):
    daemon.refuse_reload = True
    code, out, err = run_cli(capsys, "reload", "--socket", daemon.server.path)
    assert code == 1 and out == ""
    assert err.splitlines() == ["espgw: configuration not reloaded (the running one stays):",
                                "espgw: a.toml: connections.x.mtu: expected an integer",
                                "espgw: a.toml: connections.y: bad"]


def test_list_conns_renders_like_swanctl(daemon, capsys):
    code, out, _ = run_cli(capsys, "list-conns", "--socket", daemon.server.path)
    assert code == 0
    assert out.splitlines() == [
        "office: IKEv2, no reauthentication, rekeying every 4h, dpd delay 30s",
        "  local:  192.0.2.1", "  remote: gw-b.example.net",
        "  local pre-shared key authentication:", "    id: gw-a.example.net",
        "  remote public key authentication:", "    id: %any",
        "  office-lan: TUNNEL, rekeying every 1h, start_action trap",
        "    local:  10.0.0.0/24", "    remote: 10.0.5.0/24"]
    code, out, _ = run_cli(capsys, "list-conns", "--json", "--socket", daemon.server.path)
    assert json.loads(out) == {"connections": [CONN]}
    assert run_cli(capsys, "list-conns", "--ike", "other", "--socket", daemon.server.path)[1].strip() == \
        "no connections"


def test_status_shows_recent_failures(daemon, capsys, monkeypatch):
    monkeypatch.setitem(STATUS, "failures", [{"connection": "office", "stage": "RESOLVE", "notify": "UNRESOLVABLE",
                                              "message": "cannot resolve gw-b.lab: Name or service not known",
                                              "child": None, "ago": 12.5}])
    code, out, _ = run_cli(capsys, "status", "--socket", daemon.server.path)
    assert code == 0
    assert ("recent failures:\n  office: RESOLVE UNRESOLVABLE: cannot resolve gw-b.lab: Name or service not known "
            "(12s ago)") in out


def test_version_comes_from_the_package_metadata(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"espgw {version('espgw')}"


def test_initiate_of_an_sa_that_is_up_returns_at_once(daemon, capsys, monkeypatch):
    daemon.journal = []
    monkeypatch.setattr(daemon, "handle", lambda request: {"message": "CHILD SA office-lan of office is already up",
                                                           "already": True, "connection": "office", "since": 3})
    daemon.server.handler = daemon.handle
    code, out, _ = run_cli(capsys, "initiate", "--child", "office-lan", "--socket", daemon.server.path)
    assert code == 0 and out.strip() == "CHILD SA office-lan of office is already up"
    with pytest.raises(SystemExit) as info:
        main(["initiate", "--ike", "office", "--timeout", "-1"])
    assert info.value.code == 2
