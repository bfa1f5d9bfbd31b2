"""tunnel.daemon.startup: start-up failures name the resource and the fix; forwarding is checked.

The kernel's errors are real where an unprivileged test can cause them (a taken UDP port, an
address not on this host); the others are raised by stand-ins named like the kernel wrappers,
since :func:`diagnose` recognises the step by the frame that raised.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from tests.tunnel.ops.helpers import MINIMAL
from tunnel.daemon import startup
from tunnel.kernel.udp import UdpEndpoint as RealUdpEndpoint
from tunnel.ops.config import parse_config
from tunnel.ops.control import ControlError

CONFIG = parse_config(MINIMAL)
ALL_CAPS = "000001ffffffffff"


class UdpEndpoint:  # stands in for tunnel.kernel.udp.UdpEndpoint: diagnose() reads its locals
    def __init__(self, local_addr: str, port: int, code: int):
        raise OSError(code, "stand-in")


class RawEspSocket:
    def __init__(self, local_addr: str, code: int):
        raise OSError(code, "stand-in")


class TunDevice:
    @classmethod
    def create(cls, name: str, code: int, text: str = "stand-in"):
        raise OSError(code, text)


def raised(call, *args, **kwargs) -> BaseException:
    with pytest.raises((OSError, ValueError)) as info:
        call(*args, **kwargs)
    return info.value


def fake_proc(tmp_path: Path, cap_eff: str = ALL_CAPS) -> Path:
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "status").write_text(f"Name:\tespgw\nCapEff:\t{cap_eff}\n")
    return tmp_path


def test_taken_port_names_address_port_and_process():
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        exc = raised(RealUdpEndpoint, "127.0.0.1", port, **{"natt": False})
        problem = startup.diagnose(exc, CONFIG)
    finally:
        holder.close()
    me = Path("/proc/self/comm").read_text().strip()
    assert problem.resource == f"UDP 127.0.0.1:{port}"
    assert problem.message.startswith(f"UDP 127.0.0.1:{port} is already in use by {me} (pid ")
    assert "local_port" in problem.fix


def test_port_owners_see_wildcards_and_ipv6():
    holders = []
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::1")):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((addr, 0))
        holders.append(sock)
    try:
        v4_port, v6_port = (s.getsockname()[1] for s in holders)
        assert startup.port_owners("udp", "192.0.2.1", v4_port)  # a wildcard bind holds every address
        assert startup.port_owners("udp", "::1", v6_port) and startup.port_owners("udp", "::", v6_port)
        assert startup.port_owners("udp", "::1", v4_port) == []  # other family
    finally:
        for sock in holders:
            sock.close()


def test_address_not_on_this_host_names_it_and_the_connection():
    config = parse_config(MINIMAL.replace('local_addrs = "192.0.2.1"', 'local_addrs = "203.0.113.77"'))
    problem = startup.diagnose(raised(RealUdpEndpoint, "203.0.113.77", 0, **{"natt": False}), config)
    assert problem.message == ("address 203.0.113.77 (connections.office.local_addrs) is not assigned to any "
                               "interface in this network namespace")
    assert "ip address add 203.0.113.77" in problem.fix


def test_missing_capabilities_are_named(tmp_path):
    proc = fake_proc(tmp_path, cap_eff=f"{1 << startup.CAP_NET_ADMIN:016x}")  # only CAP_NET_ADMIN
    problem = startup.diagnose(raised(UdpEndpoint, "0.0.0.0", 500, errno.EACCES), CONFIG, proc)
    assert problem.message.startswith("cannot bind UDP 0.0.0.0:500: missing capability: CAP_NET_RAW ")
    assert "CAP_NET_BIND_SERVICE to bind UDP ports below 1024" in problem.message
    assert "CAP_NET_ADMIN" not in problem.message and "AmbientCapabilities" in problem.fix
    problem = startup.diagnose(raised(RawEspSocket, "0.0.0.0", errno.EPERM), CONFIG, proc)
    assert problem.resource == "raw ESP socket on 0.0.0.0" and "CAP_NET_RAW to open raw ESP sockets" in problem.message
    (tmp_path / "none").mkdir()
    none = fake_proc(tmp_path / "none", cap_eff="0" * 16)
    problem = startup.diagnose(raised(TunDevice.create, "espgw0", errno.EPERM), CONFIG, none)
    assert problem.resource == "TUN interface 'espgw0'"
    for name in ("CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"):
        assert name in problem.message


def test_capabilities_all_there_blames_a_security_module(tmp_path):
    problem = startup.diagnose(raised(TunDevice.create, "espgw0", errno.EPERM), CONFIG, fake_proc(tmp_path))
    assert "CAP_NET_ADMIN" in problem.message  # the step's own capability, although /proc shows it


def test_tun_name_taken_by_another_kind_of_interface():
    problem = startup.diagnose(raised(TunDevice.create, "lo", errno.EINVAL), CONFIG)
    assert problem.message.startswith("an interface named 'lo' exists and is not a TUN device")
    assert "tun_name" in problem.fix
    problem = startup.diagnose(raised(TunDevice.create, "espgw-nosuch", errno.EBUSY), CONFIG)
    assert "another process holds it" in problem.message
    problem = startup.diagnose(raised(TunDevice.create, "espgw-nosuch", errno.ENOENT,
                                      "cannot open /dev/net/tun: No such file"), CONFIG)
    assert problem.resource == "/dev/net/tun" and "modprobe tun" in problem.fix


def test_interface_kind(tmp_path):
    (tmp_path / "espgw0").mkdir()
    (tmp_path / "espgw0" / "tun_flags").write_text("0x1001\n")
    (tmp_path / "br0").mkdir()
    (tmp_path / "br0" / "uevent").write_text("DEVTYPE=bridge\nINTERFACE=br0\n")
    assert startup.interface_kind("espgw0", tmp_path) == "tun"
    assert startup.interface_kind("br0", tmp_path) == "bridge"
    assert startup.interface_kind("nope", tmp_path) is None


def test_control_socket_and_anything_else():
    problem = startup.diagnose(ControlError("another daemon is already listening at /run/espgw/espgw.sock"), CONFIG)
    assert problem.resource == "control socket /run/espgw/espgw.sock" and "stop the other daemon" in problem.fix
    problem = startup.diagnose(OSError(errno.EIO, "Input/output error"), CONFIG)
    assert str(problem) == "cannot start: Input/output error"
    problem = startup.diagnose(ValueError("'gw-a.lab' does not appear to be an IPv4 or IPv6 address"), CONFIG)
    assert problem.resource == "local_addrs" and "not host names or ranges" in problem.fix


# ----------------------------------------------------------------------------- forwarding


def forwarding_proc(tmp_path: Path, v4: str = "0", v6: str | None = "0") -> Path:
    ipv4 = tmp_path / "sys" / "net" / "ipv4"
    ipv4.mkdir(parents=True)
    (ipv4 / "ip_forward").write_text(v4 + "\n")
    if v6 is not None:
        ipv6 = tmp_path / "sys" / "net" / "ipv6" / "conf" / "all"
        ipv6.mkdir(parents=True)
        (ipv6 / "forwarding").write_text(v6 + "\n")
    return tmp_path


def test_forwarding_off_is_a_warning_naming_the_sysctl(tmp_path):
    proc = forwarding_proc(tmp_path)
    with capture_logs() as logs:
        assert startup.check_forwarding(CONFIG, proc=proc) == ["net.ipv4.ip_forward"]  # only IPv4 selectors
    (entry,) = logs
    assert entry["event"] == "forwarding.off" and entry["log_level"] == "warning"
    assert entry["sysctl"] == "net.ipv4.ip_forward" and "ip_forward = true" in entry["fix"]


def test_forwarding_ipv6_and_already_on(tmp_path):
    config = parse_config(MINIMAL.replace('local_ts = "10.0.0.0/24"', 'local_ts = "10.0.0.0/24, 2001:db8:a::/64"')
                          .replace('remote_ts = "10.0.5.0/24"', 'remote_ts = "10.0.5.0/24, 2001:db8:b::/64"'))
    with capture_logs() as logs:
        assert startup.check_forwarding(config, proc=forwarding_proc(tmp_path, v4="1")) == \
            ["net.ipv6.conf.all.forwarding"]
    assert [entry["sysctl"] for entry in logs] == ["net.ipv6.conf.all.forwarding"]


def test_forwarding_enabled_when_asked_and_skipped_when_declined(tmp_path):
    proc = forwarding_proc(tmp_path, v6=None)
    enable = parse_config("[gateway]\nip_forward = true\n" + MINIMAL)
    with capture_logs() as logs:
        startup.check_forwarding(enable, proc=proc)
    assert (proc / "sys/net/ipv4/ip_forward").read_text() == "1\n"
    assert [entry["event"] for entry in logs] == ["forwarding.enabled"]
    (proc / "sys/net/ipv4/ip_forward").write_text("0\n")
    with capture_logs() as logs:
        assert startup.check_forwarding(parse_config("[gateway]\nip_forward = false\n" + MINIMAL), proc=proc) == []
    assert logs == []


def test_a_gateway_protecting_only_itself_needs_no_forwarding(tmp_path):
    config = parse_config(MINIMAL.replace('local_ts = "10.0.0.0/24"', 'local_ts = "192.0.2.1/32"'))
    with capture_logs() as logs:
        assert startup.check_forwarding(config, ["192.0.2.1"], proc=forwarding_proc(tmp_path)) == []
    assert logs == []


# ----------------------------------------------------------------------------- end to end, without root


class FailingGateway:
    """Stands in for the daemon: its open() finds UDP port 500 taken."""

    def __init__(self, config):
        self.config = config

    def open(self):
        UdpEndpoint("0.0.0.0", 500, errno.EADDRINUSE)

    def close(self):
        structlog.get_logger("espgw").info("stopped")


def test_run_reports_a_startup_error_without_traceback_and_the_flags_win(tmp_path, monkeypatch, capsys):
    from tunnel import main
    from tunnel.daemon import gateway
    from tunnel.ops import log

    monkeypatch.setattr(gateway, "Gateway", FailingGateway)
    monkeypatch.setattr(log, "_command_line", {"level": None, "format": None})
    path = tmp_path / "espgw.toml"
    path.write_text('[gateway]\nlog_level = "debug"\nlog_format = "json"\n' + MINIMAL.replace(
        'secret = "correct horse battery staple"', 'secret = "short"'))
    try:
        status = main.main(["run", "-c", str(path), "--log-level", "error", "--log-format", "console"])
    finally:
        structlog.reset_defaults()
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert "startup_failed" in err and "UDP 0.0.0.0:500 is already in use" in err
    assert not err.lstrip().startswith("{")  # console, not the file's JSON
    assert "stopped" not in err and "config.warning" not in err  # info and warning: below --log-level error


def test_vici_socket_failures_name_the_vici_socket():
    problem = startup.diagnose(ControlError("cannot listen at /var/run/charon.vici: Permission denied"), CONFIG)
    assert problem.resource == "vici socket /var/run/charon.vici"
    assert "vici_socket" in problem.fix and "/run/espgw/" in problem.fix


def test_the_frames_diagnose_looks_for_exist():
    """diagnose() recognises a step by the qualified name of the function that raised: a rename
    of these would quietly turn named errors back into bare errnos."""
    from tunnel.daemon.metrics import MetricsServer
    from tunnel.kernel import raw_esp, routes, tun, udp
    assert udp.UdpEndpoint.__init__.__qualname__ == "UdpEndpoint.__init__"
    assert "local_addr" in udp.UdpEndpoint.__init__.__code__.co_varnames
    assert raw_esp.RawEspSocket.__init__.__qualname__ == "RawEspSocket.__init__"
    assert tun.TunDevice.create.__qualname__ == "TunDevice.create"
    assert "name" in tun.TunDevice.create.__code__.co_varnames
    assert routes.RouteTable.add.__qualname__.startswith("RouteTable.")
    assert MetricsServer.__init__.__qualname__ == "MetricsServer.__init__"
