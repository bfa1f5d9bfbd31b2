"""The systemd unit and `espgw install-service`: capabilities instead of root, restart on failure,
reload by SIGHUP; checked with systemd-analyze where it is installed."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tunnel.ops import cli, service

ROOT = Path(__file__).resolve().parents[3]


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections -> key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_the_unit_runs_with_capabilities_not_root():
    unit = service.render_unit("/usr/bin/espgw", "/etc/espgw/espgw.toml", "espgw")
    assert "@" not in unit.replace("$MAINPID", "")  # every placeholder filled
    settings = unit_settings(unit)["Service"]
    assert settings["ExecStart"] == ["/usr/bin/espgw run -c /etc/espgw/espgw.toml"]
    assert settings["ExecStartPre"] == ["/usr/bin/espgw check -c /etc/espgw/espgw.toml"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["User"] == ["espgw"]
    caps = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"}
    assert set(settings["AmbientCapabilities"][0].split()) == caps
    assert set(settings["CapabilityBoundingSet"][0].split()) == caps
    assert settings["RuntimeDirectory"] == ["espgw"]  # the default control socket's directory
    assert "AF_PACKET" in settings["RestrictAddressFamilies"][0]  # the raw ESP TX ring
    assert unit_settings(unit)["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_unit_is_package_data():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "systemd/espgw.service" in data["tunnel.ops"]
    assert (ROOT / "tunnel" / "ops" / "systemd" / "espgw.service").read_text() == service.unit_template()


def test_install_service_writes_the_unit_and_warns_about_sockets(tmp_path, capsys):
    config = tmp_path / "espgw.toml"
    config.write_text((ROOT / "examples" / "site-a.toml").read_text())
    assert cli.main(["install-service", "--unit-dir", str(tmp_path / "units"), "-c", str(config),
                     "--user", "vpn"]) == 0
    out, err = capsys.readouterr()
    unit = (tmp_path / "units" / "espgw.service").read_text()
    assert f"run -c {config}" in unit and "User=vpn" in unit
    assert "systemctl daemon-reload && systemctl enable --now espgw.service" in out
    assert 'vici_socket = "/var/run/charon.vici" is outside /run/espgw' in err


def test_install_service_print(capsys):
    assert cli.main(["install-service", "--print"]) == 0
    assert "AmbientCapabilities=" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path):
    config = tmp_path / "espgw.toml"
    config.write_text((ROOT / "examples" / "site-a.toml").read_text())
    unit = tmp_path / "espgw.service"
    unit.write_text(service.render_unit(service.espgw_command(), str(config), "espgw"))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if "espgw.service" in line]
    assert done.returncode == 0 and problems == [], done.stdout + done.stderr
