"""``espgw install-service``: the systemd unit shipped in the package, filled in and installed.

The unit (``tunnel/ops/systemd/espgw.service``) runs ``espgw run`` as an unprivileged user with
``AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE`` instead of root,
``Restart=on-failure``, and ``systemctl reload`` sending SIGHUP. This command writes it with the
paths of this installation and says what is left to do (the user, ``systemctl enable --now``); it
starts nothing itself, so it is safe to run on a machine that is being prepared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from importlib import resources
from pathlib import Path

from tunnel.ops.config import DEFAULT_CONTROL_SOCKET, ConfigError, load_config

UNIT_NAME = "espgw.service"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
DEFAULT_CONFIG = "/etc/espgw/espgw.toml"
DEFAULT_USER = "espgw"
RUNTIME_DIR = "/run/espgw"  # the unit's RuntimeDirectory: the only place under /run it may write


def unit_template() -> str:
    return resources.files("tunnel.ops").joinpath("systemd", UNIT_NAME).read_text(encoding="utf-8")


def render_unit(espgw: str, config: str, user: str) -> str:
    return unit_template().replace("@ESPGW@", espgw).replace("@CONFIG@", config).replace("@USER@", user)


def espgw_command() -> str:
    """The absolute path of this installation's ``espgw`` (systemd wants absolute paths)."""
    found = shutil.which("espgw")
    if found:
        return os.path.abspath(found)
    beside = Path(sys.executable).with_name("espgw")  # a virtualenv not on PATH
    if beside.exists():
        return str(beside)
    return f"{sys.executable} -m tunnel.main"


def add_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    sub = subparsers.add_parser("install-service", help="install the systemd unit (runs espgw with capabilities, "
                                                        "not as root)")
    sub.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE",
                     help=f"the configuration the service runs (default {DEFAULT_CONFIG})")
    sub.add_argument("--user", default=DEFAULT_USER, help=f"the user it runs as (default {DEFAULT_USER})")
    sub.add_argument("--unit-dir", default=DEFAULT_UNIT_DIR, metavar="DIR",
                     help=f"where the unit goes (default {DEFAULT_UNIT_DIR})")
    sub.add_argument("--print", action="store_true", dest="print_only", help="print the unit instead of writing it")
    return sub


def main(args: argparse.Namespace) -> int:
    unit = render_unit(espgw_command(), os.path.abspath(args.config), args.user)
    if args.print_only:
        print(unit, end="")
        return 0
    path = Path(args.unit_dir) / UNIT_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(unit, encoding="utf-8")
    except OSError as exc:
        print(f"espgw: cannot write {path}: {exc.strerror} (run as root, or --print it)", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    for warning in config_warnings(args.config):
        print(f"espgw: warning: {warning}", file=sys.stderr)
    print("next:")
    print(f"  useradd --system --no-create-home --shell /usr/sbin/nologin {args.user}   # if it does not exist")
    print(f"  chgrp {args.user} {os.path.abspath(args.config)} && chmod 640 {os.path.abspath(args.config)}")
    print(f"  systemctl daemon-reload && systemctl enable --now {UNIT_NAME}")
    return 0


def config_warnings(config_path: str) -> list[str]:
    """What in the configuration will not work under the unit (sockets outside /run/espgw)."""
    try:
        gateway = load_config(config_path).gateway
    except ConfigError as exc:
        return [f"{config_path} does not pass `espgw check` yet ({len(exc.problems)} problem(s)); "
                "the service will not start until it does"]
    suggestions = {
        "control_socket": f'"{DEFAULT_CONTROL_SOCKET}"',
        "vici_socket": f'"{RUNTIME_DIR}/charon.vici" (swanctl --uri unix://{RUNTIME_DIR}/charon.vici) or ""',
    }
    problems = []
    for key, path in (("control_socket", gateway.control_socket), ("vici_socket", gateway.vici_socket)):
        if path and not path.startswith(RUNTIME_DIR + "/"):
            problems.append(f'[gateway] {key} = "{path}" is outside {RUNTIME_DIR}, the only run-time directory '
                            f"the unprivileged service may write; set {key} = {suggestions[key]}")
    return problems
