"""The daemon's day-two operations without devices: reload and SIGHUP, control commands and their
log lines, failures with reasons, keyingtries, and host names in remote_addrs resolved off the loop.

A ``Gateway`` with the real IKE endpoint, a recording UDP stand-in and simulated time (an
injectable clock); nothing answers its IKE_SA_INIT, so timeouts are driven by moving the clock.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import structlog

from tunnel.daemon import gateway as daemon
from tunnel.daemon.gateway import RESOLVE_RETRY_DELAY, Gateway
from tunnel.daemon.resolver import Resolver
from tunnel.ops.config import load_config
from tunnel.ops.control import ControlError

PSK = "a shared secret that is long enough"


def connection_toml(name: str, remote: str = "192.0.2.2", *, start: str = "start", lan: int = 5,
                    keyingtries: int = 1) -> str:
    return f"""
[connections.{name}]
local_addrs = "192.0.2.1"
remote_addrs = "{remote}"
keyingtries = {keyingtries}
[connections.{name}.remote]
id = "{remote}"
[connections.{name}.children.{name}-net]
local_ts = "10.0.0.0/24"
remote_ts = "10.0.{lan}.0/24"
start_action = "{start}"
[secrets.ike-{name}]
id = "{remote}"
secret = "{PSK}"
"""


def config_text(*connections: str, tun: str = "espgw0") -> str:
    return f"""
[gateway]
tun_name = "{tun}"
vici_socket = ""
retransmit_timeout = 1.0
retransmit_base = 1.0
retransmit_tries = 1
""" + "".join(connections)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingUdp:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []
        self.unreachable: set[str] = set()

    def send_ike(self, data: bytes, dst, src=None) -> bool:
        if dst[0] in self.unreachable:
            return False  # as UdpIkeSockets for ENETUNREACH and friends
        if dst[0] == "192.0.2.66":
            raise ValueError("no UDP socket to send from")
        self.sent.append(dst)
        return True

    def send_keepalive(self, remote, local=None) -> bool:
        return True

    def close(self) -> None:
        pass


class NoRoutes:
    def __init__(self) -> None:
        self.routes: dict[str, object] = {}
        self.refuse: set[str] = set()

    def add(self, net: str, src=None) -> None:
        if net in self.refuse:  # once
            self.refuse.discard(net)
            raise OSError(17, f"cannot add route {net}: File exists")
        self.routes[net] = src

    def remove(self, net: str) -> None:
        self.routes.pop(net, None)

    def remove_all(self) -> None:
        self.routes.clear()


class Lookups:
    """An injected resolver function: host -> address, or an OSError; counts the calls."""

    def __init__(self, answers: dict[str, list]) -> None:
        self.answers, self.calls = answers, []

    def __call__(self, host: str, family: int) -> str:
        self.calls.append(host)
        answers = self.answers.get(host) or [socket.gaierror(socket.EAI_NONAME, "Name or service not known")]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.fixture
def make_gateway(tmp_path, monkeypatch):
    monkeypatch.setattr(daemon, "_local_addresses", lambda: [])
    made: list[Gateway] = []

    def make(*connections: str, lookups: Lookups | None = None) -> tuple[Gateway, Clock, Path]:
        path = tmp_path / "espgw.toml"
        path.write_text(config_text(*connections))
        config = load_config(path)
        config.gateway.control_socket = config.overrides["control_socket"] = str(tmp_path / "ctl")  # as run --socket
        clock = Clock()
        resolver = Resolver(lookups or Lookups({}), clock=clock)
        gw = Gateway(config, clock=clock, resolver=resolver)
        gw.udp = RecordingUdp()  # type: ignore[assignment]
        gw.routes = NoRoutes()  # type: ignore[assignment]
        gw._install_routes()
        gw._start_connections()
        made.append(gw)
        return gw, clock, path

    yield make
    for gw in made:
        gw.close()


def sa_ids(gw: Gateway) -> dict[str, int]:
    return {sa["name"]: sa["unique_id"] for sa in gw.ike.statuses()}


def run_timers(gw: Gateway, clock: Clock, until: float) -> None:
    """Move simulated time to ``until``, firing IKE's deadlines and housekeeping on the way."""
    while True:
        timer = gw.ike.get_timer()
        step = min(t for t in (timer, gw._next_housekeeping, until) if t is not None)
        clock.now = max(clock.now, step)
        gw.ike.handle_timer(clock.now)
        gw.pump(clock.now)
        if clock.now >= gw._next_housekeeping:
            gw._housekeeping(clock.now)
        gw.resolver.deliver()
        if clock.now >= until:
            return


# --- reload -------------------------------------------------------------------------------------

def test_reload_adds_removes_and_changes_only_what_the_file_changed(make_gateway):
    gw, clock, path = make_gateway(connection_toml("keep"), connection_toml("edit", "192.0.2.3", lan=6),
                                   connection_toml("gone", "192.0.2.4", lan=7))
    before = sa_ids(gw)
    assert set(before) == {"keep", "edit", "gone"}
    path.write_text(config_text(connection_toml("keep"), connection_toml("edit", "192.0.2.5", lan=6),
                                connection_toml("new", "192.0.2.6", lan=8)))
    result = gw.handle_control({"cmd": "reload"})
    assert (result["added"], result["removed"], result["changed"], result["unchanged"]) == (
        ["new"], ["gone"], ["edit"], ["keep"])
    after = sa_ids(gw)
    assert after["keep"] == before["keep"]  # the unchanged connection's SA is the same SA
    assert after["edit"] != before["edit"] and "gone" not in after and "new" in after
    assert [c.name for c in gw.config.connections] == ["keep", "edit", "new"]
    assert set(gw.ike.connections) == {"keep", "edit", "new"}
    assert "10.0.7.0/24" not in gw.routes.routes and "10.0.8.0/24" in gw.routes.routes
    assert ("192.0.2.5", 500) in gw.udp.sent  # the changed connection goes to its new peer
    assert result["warnings"] == []


def test_a_connection_the_kernel_refuses_is_reported_and_the_others_still_apply(make_gateway):
    gw, clock, path = make_gateway(connection_toml("keep"))
    gw.routes.refuse = {"10.0.8.0/24"}
    path.write_text(config_text(connection_toml("keep"), connection_toml("bad", "192.0.2.6", lan=8),
                                connection_toml("good", "192.0.2.7", lan=9)))
    result = gw.handle_control({"cmd": "reload"})
    assert result["added"] == ["bad", "good"]
    assert result["warnings"] == ["connection bad: [Errno 17] cannot add route 10.0.8.0/24: File exists"]
    assert "good" in sa_ids(gw) and "10.0.9.0/24" in gw.routes.routes


def test_a_broken_configuration_is_refused_and_the_running_one_stays(make_gateway):
    gw, clock, path = make_gateway(connection_toml("keep"))
    before = sa_ids(gw)
    path.write_text(config_text(connection_toml("keep")).replace('start_action = "start"', 'start_action = "soon"'))
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(ControlError) as info:
            gw.handle_control({"cmd": "reload"})
    assert str(info.value).startswith("configuration not reloaded (the running one stays):\n")
    assert "start_action" in str(info.value)
    assert sa_ids(gw) == before and [c.name for c in gw.config.connections] == ["keep"]
    refused = [e for e in logs if e["event"] == "reload.refused"]
    assert len(refused) == 1 and refused[0]["problems"]
    assert [e for e in logs if e["event"] == "control.command"][0]["result"] == "error"


def test_gateway_settings_are_kept_and_reported_as_needing_a_restart(make_gateway):
    gw, clock, path = make_gateway(connection_toml("keep"))
    path.write_text(config_text(connection_toml("keep"), tun="espgw9"))
    result = gw.handle_control({"cmd": "reload"})
    assert result["unchanged"] == ["keep"]
    assert result["warnings"] == ["gateway.tun_name changed from 'espgw0' to 'espgw9': takes effect after a "
                                  "restart (still 'espgw0')"]
    assert gw.settings.tun_name == "espgw0"


def test_sighup_reloads_from_the_loop_and_a_bad_file_never_stops_the_daemon(make_gateway):
    gw, clock, path = make_gateway(connection_toml("keep"))
    gw._wakeup_r, gw._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    path.write_text(config_text(connection_toml("keep"), connection_toml("new", "192.0.2.6", lan=8)))
    with structlog.testing.capture_logs() as logs:
        gw._on_signal(signal.SIGHUP, None)  # the handler only asks...
        assert [c.name for c in gw.config.connections] == ["keep"]
        gw._on_wakeup()  # ...the loop reloads
    assert [c.name for c in gw.config.connections] == ["keep", "new"] and not gw._stopping
    assert [e["event"] for e in logs if e["event"].startswith("reload.")] == ["reload.signal", "reload.done"]
    path.write_text("this is not TOML [")
    with structlog.testing.capture_logs() as logs:
        gw._on_signal(signal.SIGHUP, None)
        gw._on_wakeup()
    assert [c.name for c in gw.config.connections] == ["keep", "new"] and not gw._stopping
    assert [e["event"] for e in logs if e["event"].startswith("reload.")] == ["reload.signal", "reload.refused"]
    signal.set_wakeup_fd(-1)


def test_a_reload_keeps_connections_loaded_over_vici(make_gateway):
    from tunnel.ops.config import parse_config

    gw, clock, path = make_gateway(connection_toml("keep"))
    extra = parse_config(config_text(connection_toml("viciconn", "192.0.2.7", lan=9))).connections[0]
    gw.apply_connection(extra, clock.now)
    assert gw.handle_control({"cmd": "reload"})["removed"] == []
    assert {c.name for c in gw.config.connections} == {"keep", "viciconn"}


# --- failures, keyingtries, initiate's journal ------------------------------------------------

def events(gw: Gateway, since: int = 0) -> list[dict]:
    return gw.handle_control({"cmd": "events", "since": since})["events"]


def test_no_answer_ends_with_a_reason_and_a_final_failed_event(make_gateway):
    gw, clock, path = make_gateway(connection_toml("lost", start="none"))
    answer = gw.handle_control({"cmd": "initiate", "child": "lost-net"})
    assert answer["connection"] == "lost" and answer["since"] == 0
    run_timers(gw, clock, clock.now + 30)
    assert not list(gw.ike.statuses())  # not CONNECTING for good
    (failure,) = daemon.status.failures(gw, clock.now)  # what status and status --json show
    assert (failure["connection"], failure["notify"]) == ("lost", "TIMEOUT") and failure["ago"] >= 0
    outcomes = [(e["event"], e["outcome"]) for e in events(gw)]
    assert outcomes[:2] == [("initiate", None), ("connecting", None)] and outcomes[-1] == ("failed", "failed")
    assert events(gw)[1]["text"] == "initiating IKE SA lost[1] to 192.0.2.2 (attempt 1)"


def test_a_peer_without_a_route_fails_with_that_reason(make_gateway):
    gw, clock, path = make_gateway(connection_toml("noroute", start="none"),
                                   connection_toml("nosocket", "192.0.2.66", start="none", lan=6))
    gw.udp.unreachable.add("192.0.2.2")
    gw.handle_control({"cmd": "initiate", "ike": "noroute"})
    gw.handle_control({"cmd": "initiate", "ike": "nosocket"})  # a send that raises never stops the daemon
    run_timers(gw, clock, clock.now + 30)
    messages = {f["connection"]: f["message"] for f in daemon.status.failures(gw, clock.now)}
    assert messages["noroute"] == ("no answer to IKE_SA_INIT (sending to 192.0.2.2 failed: no route to it, "
                                   "or the kernel refused)")
    assert "sending to 192.0.2.66 failed" in messages["nosocket"]
    assert not list(gw.ike.statuses())


def test_keyingtries_retry_and_only_the_last_failure_is_final(make_gateway):
    gw, clock, path = make_gateway(connection_toml("lost", start="none", keyingtries=2))
    gw.handle_control({"cmd": "initiate", "ike": "lost"})
    run_timers(gw, clock, clock.now + 60)
    kinds = [e["event"] for e in events(gw)]
    assert kinds.count("failure") == 2 and kinds.count("retrying") == 1 and kinds[-1] == "failed"
    assert [e["text"] for e in events(gw) if e["event"] == "connecting"][-1].endswith("(attempt 2)")
    assert len(gw.udp.sent) == 4  # two attempts, each one request and one retransmission


def test_initiate_of_an_established_child_is_already_up_and_unknown_names_are_errors(make_gateway):
    gw, clock, path = make_gateway(connection_toml("c", start="none"))
    for request, message in (({"cmd": "initiate", "child": "nope"}, "no child named 'nope'"),
                             ({"cmd": "initiate", "ike": "nope"}, "no connection named 'nope'"),
                             ({"cmd": "terminate", "ike": "nope"}, "no IKE SA named 'nope' (and no such connection)"),
                             ({"cmd": "terminate", "ike": "c"}, "no IKE SA named 'c'"),
                             ({"cmd": "terminate", "child": "c-net"}, "no CHILD SA named 'c-net' is up"),
                             ({"cmd": "rekey", "child": "c-net"}, "no CHILD SA named 'c-net' is up"),
                             ({"cmd": "rekey", "ike": "c"}, "no established IKE SA named 'c'")):
        with pytest.raises(ControlError) as info:
            gw.handle_control(request)
        assert str(info.value) == message, request


def test_list_conns_describes_the_loaded_connections_without_secrets(make_gateway):
    gw, clock, path = make_gateway(connection_toml("c", start="trap"))
    (conn,) = gw.handle_control({"cmd": "list-conns"})["connections"]
    assert conn["name"] == "c" and conn["remote_addrs"] == ["192.0.2.2"] and conn["local"]["auth"] == "psk"
    assert conn["children"][0]["remote_ts"] == ["10.0.5.0/24"] and conn["children"][0]["start_action"] == "trap"
    assert PSK not in repr(conn)


def test_each_control_command_is_logged_once_with_its_result(make_gateway):
    gw, clock, path = make_gateway(connection_toml("c", start="none"))
    with structlog.testing.capture_logs() as logs:
        gw.handle_control({"cmd": "initiate", "ike": "c", "psk": "never logged"})
        with pytest.raises(ControlError):
            gw.handle_control({"cmd": "rekey", "ike": "c"})
        gw.handle_control({"cmd": "events", "since": 0})
    commands = [e for e in logs if e["event"] == "control.command"]
    assert [(e["command"], e["result"], e["log_level"]) for e in commands] == [
        ("initiate", "ok", "info"), ("rekey", "error", "info"), ("events", "ok", "debug")]
    assert commands[0]["args"] == {"ike": "c"} and commands[0]["message"] == "initiating IKE SA c"
    assert commands[1]["error"] == "no established IKE SA named 'c'"


# --- host names in remote_addrs -----------------------------------------------------------------

def test_a_host_name_is_resolved_off_the_loop_when_initiating(make_gateway):
    lookups = Lookups({"gw-b.lab": ["192.0.2.22"]})
    gw, clock, path = make_gateway(connection_toml("named", "gw-b.lab", start="none"), lookups=lookups)
    gw.handle_control({"cmd": "initiate", "ike": "named"})
    assert gw.udp.sent == [] and gw.ike.resolving("named")  # nothing waits in the loop
    gw.resolver.wait_idle()
    assert gw.udp.sent == [("192.0.2.22", 500)] and lookups.calls == ["gw-b.lab"]
    assert [e["event"] for e in events(gw)][:4] == ["initiate", "resolving", "resolved", "connecting"]


def test_the_name_is_resolved_again_on_each_retry(make_gateway):
    lookups = Lookups({"gw-b.lab": ["192.0.2.22", "192.0.2.23"]})
    gw, clock, path = make_gateway(connection_toml("named", "gw-b.lab", start="none", keyingtries=2),
                                   lookups=lookups)
    gw.handle_control({"cmd": "initiate", "ike": "named"})
    gw.resolver.wait_idle()
    deadline = time.monotonic() + 5
    while len(gw.udp.sent) < 4 and time.monotonic() < deadline:
        run_timers(gw, clock, clock.now + 1)
        gw.resolver.wait_idle()
    assert lookups.calls == ["gw-b.lab", "gw-b.lab"]
    assert gw.udp.sent == [("192.0.2.22", 500)] * 2 + [("192.0.2.23", 500)] * 2


def test_an_unresolvable_name_fails_cleanly_and_is_retried_by_keyingtries(make_gateway):
    lookups = Lookups({})
    gw, clock, path = make_gateway(connection_toml("named", "nowhere.invalid", start="none", keyingtries=2),
                                   lookups=lookups)
    gw.handle_control({"cmd": "initiate", "ike": "named"})
    gw.resolver.wait_idle()
    failures = daemon.status.failures(gw, clock.now)
    assert [(f["stage"], f["notify"]) for f in failures] == [("RESOLVE", "UNRESOLVABLE")]
    assert "cannot resolve nowhere.invalid: Name or service not known" in failures[0]["message"]
    assert [e["event"] for e in events(gw)][-1] == "retrying"
    run_timers(gw, clock, clock.now + RESOLVE_RETRY_DELAY + 1.5)
    gw.resolver.wait_idle()
    assert lookups.calls == ["nowhere.invalid"] * 2 and gw.udp.sent == []
    assert [e["event"] for e in events(gw)][-1] == "failed" and not gw.ike.resolving("named")


def test_a_lookup_that_hangs_times_out_without_blocking(make_gateway):
    release = threading.Event()

    def hanging(host: str, family: int) -> str:
        release.wait(5)
        return "192.0.2.99"

    gw, clock, path = make_gateway(connection_toml("named", "slow.lab", start="none"))
    gw.resolver.lookup = hanging
    started = time.monotonic()
    gw.handle_control({"cmd": "initiate", "ike": "named"})
    assert time.monotonic() - started < 1.0
    run_timers(gw, clock, clock.now + 6)
    release.set()
    gw.resolver.wait_idle()
    assert [f["message"] for f in daemon.status.failures(gw, clock.now)] == [
        "cannot resolve slow.lab: no answer within 5s"]
    assert gw.udp.sent == []  # the late answer is dropped
