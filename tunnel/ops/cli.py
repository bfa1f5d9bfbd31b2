"""``espgw``'s command line: parse, query and steer the daemon over its control socket, export keys.

The commands that start something (``run``: the daemon, ``demo``: the lab) are handed in by the
entry point, ``tunnel.main``, so this module stays below the daemon it talks to.

Client commands (``status``, ``list-sas``, ``list-conns``, ``initiate``, ``terminate``, ``rekey``,
``reload``, ``keys``) talk to a running
``espgw run`` through ``tunnel.ops.control``; the socket path is ``--socket``, else the
``gateway.control_socket`` of ``-c FILE``, else /run/espgw/espgw.sock. Every failure ends in one
``espgw: ...`` line on stderr and exit status 1 (2 for bad usage, from argparse), never a traceback.

The daemon's replies are rendered by :func:`render_sas` and :func:`render_status`; the fields they
read are documented there (all optional, so a daemon can grow into them).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Any
from collections.abc import Callable, Sequence

from tunnel.ops import pki, service
from tunnel.ops.config import DEFAULT_CONTROL_SOCKET, Config, ConfigError, load_config
from tunnel.ops.control import ControlError, DaemonUnreachable, control_request

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


DaemonStarter = Callable[[Config], "int | None"]
DemoStarter = Callable[[list[str]], "int | None"]


class CliError(Exception):
    """A failure to report as ``espgw: message``."""


def main(argv: Sequence[str] | None = None, *, start_daemon: DaemonStarter | None = None,
         start_demo: DemoStarter | None = None) -> int:
    parser = build_parser(start_daemon, start_demo)
    args, extra = parser.parse_known_args(argv)
    if args.command == "demo":
        args.demo_args = extra  # passed through to the demo untouched
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args) or EXIT_OK
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"espgw: {problem}", file=sys.stderr)
        return EXIT_FAILURE
    except DaemonUnreachable as exc:
        print(f"espgw: cannot reach the daemon at {exc.path}: is `espgw run` running?", file=sys.stderr)
        if "permission" in exc.reason:
            print(f"espgw: ({exc.reason})", file=sys.stderr)
        return EXIT_FAILURE
    except (CliError, ControlError) as exc:
        print(f"espgw: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `espgw list-sas | head`
        _silence_stdout()
        return EXIT_OK
    except Exception as exc:
        if os.environ.get("ESPGW_DEBUG"):
            raise
        print(f"espgw: internal error: {type(exc).__name__}: {exc} (set ESPGW_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return EXIT_FAILURE


def build_parser(start_daemon: DaemonStarter | None = None,
                 start_demo: DemoStarter | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="espgw", description="A site-to-site IPsec gateway (ESP + IKEv2).")
    parser.add_argument("--version", action="version", version=f"espgw {package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run the gateway in the foreground")
    run.add_argument("-c", "--config", required=True, metavar="FILE", help="configuration file (TOML)")
    run.add_argument("--socket", metavar="PATH", help="control socket path (overrides the config)")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="overrides gateway.log_level")
    run.add_argument("--log-format", choices=("auto", "console", "json"), help="overrides gateway.log_format")
    run.set_defaults(func=functools.partial(cmd_run, start=start_daemon))

    check = commands.add_parser("check", help="validate a configuration and show how it is understood")
    check.add_argument("-c", "--config", required=True, metavar="FILE", help="configuration file (TOML)")
    check.set_defaults(func=cmd_check)

    def client(name: str, help_text: str, timeout: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--socket", metavar="PATH",
                         help=f"control socket (default: from -c, else {DEFAULT_CONTROL_SOCKET})")
        sub.add_argument("-c", "--config", metavar="FILE", help="take the control socket path from this config")
        if timeout:
            sub.add_argument("--timeout", type=_positive_float, default=10.0, metavar="SECONDS",
                             help="how long to wait for the daemon")
        return sub

    status = client("status", "show the daemon's state and drop counters")
    status.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    status.set_defaults(func=cmd_status)

    list_sas = client("list-sas", "list IKE and CHILD SAs, like swanctl --list-sas")
    list_sas.add_argument("--ike", metavar="NAME", help="only this connection")
    list_sas.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    list_sas.set_defaults(func=cmd_list_sas)

    list_conns = client("list-conns", "list the loaded connections, like swanctl --list-conns")
    list_conns.add_argument("--ike", metavar="NAME", help="only this connection")
    list_conns.add_argument("--json", action="store_true", help="print the daemon's JSON answer")
    list_conns.set_defaults(func=cmd_list_conns)

    for name, verb, func in (("initiate", "start", cmd_initiate), ("terminate", "close", cmd_terminate),
                             ("rekey", "rekey", cmd_rekey)):
        sub = client(name, f"{verb} a CHILD SA (and its IKE SA if needed) or an IKE SA", timeout=name != "initiate")
        which = sub.add_mutually_exclusive_group(required=True)
        which.add_argument("--child", metavar="NAME", help=f"{verb} this child")
        which.add_argument("--ike", metavar="NAME", help=f"{verb} this connection's IKE SA")
        if name == "initiate":
            sub.add_argument("--timeout", type=_seconds_or_zero, default=0.0, metavar="SECONDS",
                             help="give up waiting after this long (default 0: until the SA is up or has "
                                  "failed, as swanctl --initiate); the daemon goes on trying")
        sub.set_defaults(func=func)

    reload = client("reload", "read the configuration file again: add, remove and change connections; "
                              "unchanged ones keep their SAs (as SIGHUP)")
    reload.set_defaults(func=cmd_reload)

    keys = client("keys", "export SA keys for Wireshark")
    keys.add_argument("--wireshark", required=True, metavar="DIR", help="write esp_sa and ikev2_decryption_table here")
    keys.add_argument("--no-merge", action="store_true", help="replace the files instead of adding to them")
    keys.set_defaults(func=cmd_keys)

    pki.add_arguments(commands).set_defaults(func=pki.main)
    service.add_arguments(commands).set_defaults(func=service.main)  # espgw install-service

    demo = commands.add_parser("demo", help="namespace lab: a laptop behind a cafe NAT opens the office dashboard "
                                            "through espgw; what an eavesdropper sees (--site-to-site: two gateways)",
                                 add_help=False)  # `espgw demo --help` reaches the demo's own options
    demo.set_defaults(func=functools.partial(cmd_demo, start=start_demo))
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("expected a positive number of seconds")
    return value


def _seconds_or_zero(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("expected seconds, 0 or more")
    return value


def package_version() -> str:
    """The installed espgw's version (package metadata), "unknown" outside an installation."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("espgw")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# ----------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace, start: DaemonStarter | None = None) -> int:
    if start is None:
        raise CliError("this entry point cannot start the daemon; run `espgw run` (tunnel.main)")
    config = load_config(args.config)
    if args.socket:
        config.gateway.control_socket = args.socket
        config.overrides["control_socket"] = args.socket  # a reload keeps it
    from tunnel.ops.log import configure_from_config, set_command_line

    set_command_line(args.log_level, args.log_format)  # the flags win over the file, also on reload
    configure_from_config(config.gateway.log_level, config.gateway.log_format)
    _log_config_warnings(config)
    return start(config) or EXIT_OK


def _log_config_warnings(config: Config) -> None:
    import structlog

    for warning in config.warnings:
        structlog.get_logger("espgw").warning("config.warning", problem=warning)


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(describe_config(config))
    for warning in config.warnings:
        print(f"espgw: warning: {warning}", file=sys.stderr)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    result = _request(args, {"cmd": "status"})
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else render_status(_as_dict(result)))
    return EXIT_OK


def cmd_list_sas(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {"cmd": "list-sas"}
    if args.ike:
        request["ike"] = args.ike
    result = _as_dict(_request(args, request))
    sas = [sa for sa in _as_list(result.get("ike_sas")) if not args.ike or sa.get("name") == args.ike]
    if args.json:
        print(json.dumps({"ike_sas": sas}, indent=2, sort_keys=True))
    else:
        print(render_sas(sas) if sas else "no SAs")
    return EXIT_OK


POLL_INTERVAL = 0.1  # seconds between `events` requests while initiate waits
REQUEST_TIMEOUT = 10.0  # how long one request may wait for the daemon


def cmd_initiate(args: argparse.Namespace) -> int:
    """Start the SA and follow the daemon's events for it until it is up (0) or has failed (1),
    printing them as swanctl --initiate prints charon's log; ``--timeout`` ends the wait (1)."""
    target = {"child": args.child} if args.child else {"ike": args.ike}
    deadline = time.monotonic() + args.timeout if args.timeout else None
    path = _socket_path(args)
    result = control_request(path, {"cmd": "initiate", **target}, timeout=REQUEST_TIMEOUT)
    result = result if isinstance(result, dict) else {}
    if result.get("already") or not isinstance(result.get("since"), int):  # (a daemon that does not wait)
        print(result.get("message") or f"initiate {target}: requested")
        return EXIT_OK
    since, connection = result["since"], result.get("connection")
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        wait = REQUEST_TIMEOUT if remaining is None else max(0.5, min(REQUEST_TIMEOUT, remaining))
        answer = control_request(path, {"cmd": "events", "since": since, "connection": connection}, timeout=wait)
        answer = _as_dict(answer)
        for event in _as_list(answer.get("events")):
            since = max(since, event.get("seq", since))
            print(f"[{'CHD' if event.get('child') else 'IKE'}] {event.get('text', '')}", flush=True)
            outcome = _initiate_outcome(event, args.child)
            if outcome == "up":
                print("initiate completed successfully")
                return EXIT_OK
            if outcome == "failed":
                raise CliError(f"initiate failed: {event.get('text', 'establishing the SA failed')}")
        if deadline is not None and time.monotonic() >= deadline:
            raise CliError(f"initiate timed out after {args.timeout:g}s; the daemon goes on as the "
                           f"connection's keyingtries say (espgw terminate --ike {connection} stops it)")
        time.sleep(POLL_INTERVAL if deadline is None else max(0.0, min(POLL_INTERVAL, deadline - time.monotonic())))


def _initiate_outcome(event: dict, child: str | None) -> str | None:
    """Whether a journal event ends ``initiate``: "up", "failed" or None (go on waiting)."""
    outcome = event.get("outcome")
    if outcome == "up":
        wanted = "child_sa.up" if child else "ike_sa.up"
        if event.get("event") == wanted and (not child or event.get("child") == child):
            return "up"
    elif outcome == "failed" and (not child or event.get("child") in (None, child)):
        return "failed"
    return None


def cmd_terminate(args: argparse.Namespace) -> int:
    return _steer(args, "terminate")


def cmd_rekey(args: argparse.Namespace) -> int:
    return _steer(args, "rekey")


def cmd_reload(args: argparse.Namespace) -> int:
    """``espgw reload``: the errors of a refused configuration, one per line, and exit 1."""
    try:
        result = _as_dict(_request(args, {"cmd": "reload"}))
    except DaemonUnreachable:
        raise
    except ControlError as exc:
        for line in str(exc).splitlines():
            print(f"espgw: {line}", file=sys.stderr)
        return EXIT_FAILURE
    parts = [f"{what} {', '.join(map(str, result[what]))}" for what in ("added", "removed", "changed")
             if result.get(what)]
    unchanged = len(result.get("unchanged") or [])
    print(f"reloaded {result.get('source', 'the configuration')}: " + "; ".join(parts + [f"{unchanged} unchanged"]))
    for warning in result.get("warnings") or []:
        print(f"espgw: warning: {warning}", file=sys.stderr)
    return EXIT_OK


def cmd_list_conns(args: argparse.Namespace) -> int:
    result = _as_dict(_request(args, {"cmd": "list-conns"}))
    conns = [c for c in _as_list(result.get("connections")) if not args.ike or c.get("name") == args.ike]
    if args.json:
        print(json.dumps({"connections": conns}, indent=2, sort_keys=True))
    else:
        print(render_conns(conns) if conns else "no connections")
    return EXIT_OK


def _steer(args: argparse.Namespace, verb: str) -> int:
    target = {"child": args.child} if args.child else {"ike": args.ike}
    result = _request(args, {"cmd": verb, **target})
    message = result.get("message") if isinstance(result, dict) else None
    kind, name = next(iter(target.items()))
    print(message or f"{verb} {'CHILD' if kind == 'child' else 'IKE'} SA {name!r}: requested")
    return EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    from tunnel.ops.keyexport import KeyExportError, write_wireshark_keys

    snapshot = _request(args, {"cmd": "keys"})
    try:
        result = write_wireshark_keys(snapshot, args.wireshark, merge=not args.no_merge)
    except KeyExportError as exc:
        raise CliError(str(exc)) from None
    print(f"wrote {result.esp_rows} ESP SA(s) to {result.esp_sa_path}")
    print(f"wrote {result.ike_rows} IKE SA(s) to {result.ikev2_path}")
    for reason in result.skipped:
        print(f"espgw: skipped {reason}", file=sys.stderr)
    print("copy both files into your Wireshark profile directory (e.g. ~/.config/wireshark/) "
          "and enable ESP decryption (esp.enable_encryption_decode)")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, start: DemoStarter | None = None) -> int:
    if start is None:
        raise CliError("this entry point cannot start the demo; run `espgw demo` (tunnel.main)")
    return start([arg for arg in args.demo_args if arg != "--"]) or EXIT_OK


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return args.socket
    if args.config:
        return load_config(args.config).gateway.control_socket
    return DEFAULT_CONTROL_SOCKET


def _request(args: argparse.Namespace, request: dict) -> Any:
    return control_request(_socket_path(args), request, timeout=args.timeout)


def _as_dict(value: Any) -> dict:
    if not isinstance(value, dict):
        raise CliError("the daemon's answer is not an object")
    return value


def _as_list(value: Any) -> list[dict]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


# ----------------------------------------------------------------------------- rendering


def _ago(seconds: Any) -> str:
    return f"{int(seconds)}s ago" if isinstance(seconds, (int, float)) else "-"


def _spi_text(value: Any, width: int = 8) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:0{width}x}"
    return str(value) if value not in (None, "") else "-" * width


def _endpoint(sa: dict, side: str) -> str:
    ident = sa.get(f"{side}_id")
    addr = f"{sa.get(f'{side}_addr', '?')}[{sa.get(f'{side}_port', 500)}]"
    return f"'{ident}' @ {addr}" if ident else addr


def render_sas(ike_sas: list[dict]) -> str:
    """Render like ``swanctl --list-sas``. Fields of an IKE SA: name, unique_id, state, version,
    spi_i, spi_r (hex), initiator, local_addr/_port/_id, remote_addr/_port/_id, nat_local,
    nat_remote, proposal, established (s ago), rekey_in (s), children. Fields of a child: name,
    unique_id, state, mode, encap, proposal, spi_in, spi_out, bytes_in/out, packets_in/out,
    installed (s ago), rekey_in, expires_in, local_ts, remote_ts, drops."""
    lines: list[str] = []
    for sa in ike_sas:
        mark_i, mark_r = ("*", "") if sa.get("initiator") else ("", "*")
        lines.append(f"{sa.get('name', '?')}: #{sa.get('unique_id', '?')}, {sa.get('state', '?')}, "
                     f"IKEv{sa.get('version', 2)}, {_spi_text(sa.get('spi_i'), 16)}_i{mark_i} "
                     f"{_spi_text(sa.get('spi_r'), 16)}_r{mark_r}")
        lines.append(f"  local  {_endpoint(sa, 'local')}" + (f" authenticated by {sa['local_auth']}"
                                                              if sa.get("local_auth") else ""))
        lines.append(f"  remote {_endpoint(sa, 'remote')}" + (f" authenticated by {sa['remote_auth']}"
                                                              if sa.get("remote_auth") else ""))
        nat = [label for key, label in (("nat_local", "local behind NAT"), ("nat_remote", "remote behind NAT"))
               if sa.get(key)]
        if sa.get("proposal"):
            lines.append(f"  {sa['proposal']}")
        timing = [f"established {_ago(sa.get('established'))}"]
        if isinstance(sa.get("rekey_in"), (int, float)):
            timing.append(f"rekeying in {int(sa['rekey_in'])}s")
        lines.append("  " + ", ".join(timing + nat))
        for key, label in (("local_vips", "our virtual IP"), ("remote_vips", "virtual IP lent")):
            if sa.get(key):  # as swanctl: "local/remote virtual IP"
                lines.append(f"  {label} {', '.join(map(str, _as_list(sa[key])))}")
        for child in _as_list(sa.get("children")):
            lines.extend(_render_child(child))
    return "\n".join(lines)


def _render_child(child: dict) -> list[str]:
    mode = str(child.get("mode", "tunnel")).upper() + ("-in-UDP" if child.get("encap") else "")
    lines = [f"  {child.get('name', '?')}: #{child.get('unique_id', '?')}, {child.get('state', '?')}, "
             f"{mode}, ESP:{child.get('proposal', '?')}"]
    timing = [f"installed {_ago(child.get('installed'))}"]
    for key, label in (("rekey_in", "rekeying in"), ("expires_in", "expires in")):
        if isinstance(child.get(key), (int, float)):
            timing.append(f"{label} {int(child[key])}s")
    lines.append("    " + ", ".join(timing))
    for direction in ("in", "out"):
        lines.append(f"    {direction:<3} {_spi_text(child.get(f'spi_{direction}'))}, "
                     f"{child.get(f'bytes_{direction}', 0):>10} bytes, "
                     f"{child.get(f'packets_{direction}', 0):>8} packets")
    lines.append(f"    local  {' '.join(map(str, child.get('local_ts', [])))}")
    lines.append(f"    remote {' '.join(map(str, child.get('remote_ts', [])))}")
    drops = _drops_text(child.get("drops"))
    if drops:
        lines.append(f"    drops  {drops}")
    return lines


def _drops_text(drops: Any) -> str:
    if not isinstance(drops, dict):
        return ""
    return ", ".join(f"{reason} {count}" for reason, count in sorted(drops.items()) if count)


def render_status(status: dict) -> str:
    """Render ``status``: version, pid, uptime (s), tun_name, mtu, control_socket, connections
    (name, local_addrs, remote_addrs, children), ike_sas (as for :func:`render_sas`),
    counters (packets_in/out, bytes_in/out) and drops (reason -> count)."""
    lines = [f"espgw {status.get('version', '')}".rstrip() + f", pid {status.get('pid', '?')}, "
             f"up {_duration_text(status.get('uptime'))}"]
    if status.get("tun_name"):
        lines.append(f"  tun {status['tun_name']}, mtu {status.get('mtu', '?')}, "
                     f"control {status.get('control_socket', '?')}")
    sas = _as_list(status.get("ike_sas"))
    up = {sa.get("name") for sa in sas if sa.get("state") == "ESTABLISHED"}
    lines.append("connections:")
    for conn in _as_list(status.get("connections")):
        name = conn.get("name", "?")
        state = "up" if name in up else "down"
        lines.append(f"  {name}: {','.join(conn.get('local_addrs', []))}...{','.join(conn.get('remote_addrs', []))}"
                     f" IKEv2, {state}; children: {', '.join(conn.get('children', [])) or '-'}")
    children = sum(len(_as_list(sa.get("children"))) for sa in sas)
    lines.append(f"security associations: {len(sas)} IKE, {children} CHILD")
    counters = status.get("counters") if isinstance(status.get("counters"), dict) else {}
    if counters:
        lines.append(f"traffic: in {counters.get('packets_in', 0)} packets / {counters.get('bytes_in', 0)} bytes, "
                     f"out {counters.get('packets_out', 0)} packets / {counters.get('bytes_out', 0)} bytes")
    lines.append(f"drops: {_drops_text(status.get('drops')) or 'none'}")
    for vip in _as_list(status.get("virtual_ips")):
        lines.append(f"virtual IP {', '.join(vip.get('vips', []))} from {vip.get('connection', '?')}, "
                     f"DNS {', '.join(vip.get('dns', [])) or '-'}, "
                     + (f"NBNS {', '.join(vip['nbns'])}, " if vip.get("nbns") else "") +
                     f"routes {', '.join(vip.get('routes', [])) or '-'}")
    failures = _as_list(status.get("failures"))
    if failures:
        lines.append("recent failures:")
        for failure in failures[-10:]:
            child = f" child {failure['child']}" if failure.get("child") else ""
            lines.append(f"  {failure.get('connection') or '(no connection matched)'}{child}: "
                         f"{failure.get('stage', '?')} {failure.get('notify', '?')}: {failure.get('message', '')}"
                         + (f" ({_ago(failure['ago'])})" if isinstance(failure.get("ago"), (int, float)) else ""))
    if sas:
        lines.append("")
        lines.append(render_sas(sas))
    return "\n".join(lines)


_AUTH_TEXT = {"psk": "pre-shared key", "pubkey": "public key", "rsa/pss": "public key (RSASSA-PSS)"}


def render_conns(conns: list[dict]) -> str:
    """Render like ``swanctl --list-conns``; the fields are those of ``status.list_conns``."""
    lines: list[str] = []
    for conn in conns:
        reauth = conn.get("reauth_time")
        head = [f"IKEv{conn.get('version', 2)}",
                f"reauthentication every {_duration_text(reauth)}" if reauth else "no reauthentication"]
        if conn.get("rekey_time"):
            head.append(f"rekeying every {_duration_text(conn['rekey_time'])}")
        if conn.get("dpd_delay"):
            head.append(f"dpd delay {_duration_text(conn['dpd_delay'])}")
        lines.append(f"{conn.get('name', '?')}: {', '.join(head)}")
        lines.append(f"  local:  {' '.join(map(str, conn.get('local_addrs') or ['%any']))}")
        lines.append(f"  remote: {' '.join(map(str, conn.get('remote_addrs') or ['%any']))}")
        for side in ("local", "remote"):
            auth: dict = conn[side] if isinstance(conn.get(side), dict) else {}
            lines.append(f"  {side} {_AUTH_TEXT.get(str(auth.get('auth')), auth.get('auth', '?'))} authentication:")
            lines.append(f"    id: {auth.get('id') or '%any'}")
            if auth.get("certificate"):
                lines.append(f"    certs: {auth['certificate']}")
        for child in _as_list(conn.get("children")):
            timing = f", rekeying every {_duration_text(child['rekey_time'])}" if child.get("rekey_time") else ""
            lines.append(f"  {child.get('name', '?')}: {str(child.get('mode', 'tunnel')).upper()}{timing}, "
                         f"start_action {child.get('start_action', 'none')}")
            lines.append(f"    local:  {' '.join(map(str, child.get('local_ts', [])))}")
            lines.append(f"    remote: {' '.join(map(str, child.get('remote_ts', [])))}")
    return "\n".join(lines)


def _duration_text(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    seconds = int(seconds)
    parts = [(seconds // 86400, "d"), (seconds // 3600 % 24, "h"), (seconds // 60 % 60, "m"), (seconds % 60, "s")]
    text = "".join(f"{value}{unit}" for value, unit in parts if value)
    return text or "0s"


def _default_id(auth, side: str) -> str:
    if side == "local" and auth.credential is not None:
        return f"{auth.credential.identity} (the certificate's subject)"
    return f"(the {side} address)" if auth.auth == "psk" or side == "local" else "(any the certificate holds)"


def describe_config(config: Config) -> str:
    """``espgw check``: the configuration as espgw understood it (never the PSKs themselves)."""
    gw = config.gateway
    lines = [f"{config.source}: OK",
             f"gateway: tun {gw.tun_name}, mtu {gw.mtu}, esp {gw.esp_encap}, queue {gw.queue_size}, "
             f"control {gw.control_socket}, vici {gw.vici_socket or 'off'}, log {gw.log_level}/{gw.log_format}"]
    for pool in config.pools:
        lines.append(f"pool {pool.name}: {pool.addrs} ({pool.size} addresses), dns "
                     f"{', '.join(map(str, pool.dns)) or '-'}, subnet {', '.join(map(str, pool.subnets)) or '-'}")
    for conn in config.connections:
        lines.append(f"{conn.name}: {','.join(conn.local_addrs)}[{conn.local_port}] ... "
                     f"{','.join(conn.remote_addrs)}[{conn.remote_port}], IKEv2")
        lines.append(f"  local  {conn.local.auth} id {conn.local.id or _default_id(conn.local, 'local')}"
                     + (f", certificate {conn.local.credential!r}" if conn.local.credential else ""))
        remote = f"  remote {conn.remote.auth} id {conn.remote.id or _default_id(conn.remote, 'remote')}"
        if conn.remote.trust is not None:
            remote += f", {len(conn.remote.trust.cas)} trusted CA(s), {len(conn.remote.trust.crls)} CRL(s)"
        if "psk" in (conn.local.auth, conn.remote.auth):
            remote += f", secret from {config.psk_sources.get(conn.name, '?')} ({len(conn.psk)} bytes)"
        lines.append(remote)
        lines.append(f"  proposals {', '.join(conn.proposals)}")
        if conn.vips or conn.pools:
            lines.append(f"  vips {', '.join(conn.vips) or '-'}, pools {', '.join(conn.pools) or '-'}")
        dpd = _duration_text(conn.dpd_delay) if conn.dpd_delay else "off"
        lines.append(f"  rekey_time {_duration_text(conn.rekey_time)}, dpd_delay {dpd}, "
                     f"encap {'yes' if conn.encap else 'no'}")
        for child in conn.children:
            lines.append(f"  {child.name}: {_selectors_text(child.local_ts, child.local_dynamic)} === "
                         f"{_selectors_text(child.remote_ts, child.remote_dynamic)}, "
                         f"{child.mode}, start_action {child.start_action}")
            lines.append(f"    esp_proposals {', '.join(child.esp_proposals)}")
            lines.append(f"    rekey_time {_duration_text(child.rekey_time)}, "
                         f"life_time {_duration_text(child.effective_life_time)}, "
                         f"replay_window {child.replay_window}")
    return "\n".join(lines)


def _selectors_text(selectors: list, dynamic: bool) -> str:
    return " ".join((["dynamic"] if dynamic else []) + [str(ts) for ts in selectors])


if __name__ == "__main__":
    sys.exit(main())
