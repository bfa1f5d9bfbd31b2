"""The gateway's TOML configuration, shaped like swanctl.conf.

``connections.NAME`` (with ``local``, ``remote`` and ``children.CHILD``) and ``secrets.ike-X`` carry
swanctl's keys and value syntax, so a strongSwan configuration translates line by line; the
``gateway`` table holds espgw's own settings. :func:`load_config` returns a :class:`Config` holding
``ike.config.ConnectionConfig`` objects. Every problem in the file is reported at once in one
:class:`ConfigError` naming the file, the key and what was expected. PSKs never appear in errors.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

from ike.codec.constants import DhId, ProtocolId, TransformType
from ike.codec.ids import ANY_ID
from ike.config import (
    DEFAULT_ESP_PROPOSALS,
    DEFAULT_IKE_PROPOSALS,
    AuthConfig,
    ChildConfig,
    ConnectionConfig,
    TrafficSelector,
    is_any_addr,
)
from ike.crypto.certs import CertError
from ike.crypto.mlkem import ML_KEM_METHODS
from ike.crypto.multi_ke import supported_method
from ike.crypto.proposals import ADDKE_TYPES, Proposal, format_proposal, parse_proposals
from ike.pools import AddressPool, PoolError
from tunnel.ops import credentials
from tunnel.ops.credentials import KeySecret

DEFAULT_CONTROL_SOCKET = "/run/espgw/espgw.sock"
DEFAULT_VICI_SOCKET = "/var/run/charon.vici"  # where swanctl and the vici package look first; "" disables


# Keys swanctl.conf has and espgw parses, but whose effect espgw does not implement: refused by
# name (with why) rather than silently ignored. Values that are refused likewise: see _parse_child.
UNIMPLEMENTED_CONNECTION_KEYS = {
    "dpd_timeout": "IKEv2 declares a peer dead when its retransmissions go unanswered "
                   "([gateway] retransmit_*); strongSwan uses dpd_timeout for IKEv1 only. Remove it",
}
MIN_PSK_BYTES = 16  # shorter PSKs pass with a warning: an offline guess of a short secret is cheap


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` lists each one as ``file: key: message``."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class GatewayConfig:
    """The ``gateway`` table: espgw's own settings, which swanctl.conf has no place for."""

    tun_name: str = "espgw0"
    mtu: int = 1400  # inner MTU of the TUN device: leaves room for the ESP and outer headers
    control_socket: str = DEFAULT_CONTROL_SOCKET
    vici_socket: str = DEFAULT_VICI_SOCKET  # strongSwan's vici protocol (swanctl); "" for none
    log_level: str = "info"
    log_format: str = "auto"  # auto | console | json
    esp_encap: str = "raw"  # raw: IP protocol 50; udp: always ESP in UDP port 4500 (RFC 3948)
    # How raw IPv4 ESP leaves: "ring" batches it through an AF_PACKET TX ring (one syscall per
    # loop turn; skips this host's netfilter output hooks), "socket" sends one packet per syscall
    raw_esp_tx: str = "ring"
    queue_size: int = 64  # packets held per CHILD while an on-demand (trap) negotiation runs
    # IKE retransmissions, as strongswan.conf's charon.retransmit_*: wait timeout * base ** n
    # after the n-th resend, give up (peer dead) after ``tries`` resends, about 165 s by default
    retransmit_timeout: float = 4.0
    retransmit_base: float = 1.8
    retransmit_tries: int = 5
    # RFC 8019: half-open IKE SAs from which on a COOKIE is demanded, per peer address (more are
    # refused) and in all (the oldest goes)
    cookie_threshold: int = 10
    half_open_per_ip: int = 5
    half_open_limit: int = 5000
    # client mode: DNS servers a gateway sends go to a state file ("state") or also resolvconf(8)
    dns: str = "state"
    # NAT keepalives (RFC 3948 s2.3) every keep_alive behind a NAT, strongswan.conf's charon.keep_alive
    keep_alive: float = 20.0
    # "HOST:PORT" of the Prometheus metrics endpoint (tunnel.daemon.metrics); "" for none
    metrics: str = ""
    # IP forwarding for the families the selectors use: None checks and warns at start, True
    # enables it (writes /proc/sys), False skips the check (the gateway protects only itself)
    ip_forward: bool | None = None


@dataclass
class Config:
    source: str  # file name, for messages
    gateway: GatewayConfig
    connections: list[ConnectionConfig]
    # connection name -> the secrets section its PSK came from, e.g. "secrets.ike-office"
    psk_sources: dict[str, str] = field(default_factory=dict)
    pools: list[AddressPool] = field(default_factory=list)  # virtual IP pools (``[pools.NAME]``)
    # [gateway] keys the command line set (espgw run --socket): a reload keeps them
    overrides: dict[str, Any] = field(default_factory=dict)
    # "file: key: message" for what works but is unwise (a short PSK); never the secret itself
    warnings: list[str] = field(default_factory=list)

    def connection(self, name: str) -> ConnectionConfig:
        for conn in self.connections:
            if conn.name == name:
                return conn
        raise KeyError(f"no connection named {name!r}")

    def find_child(self, child_name: str) -> tuple[ConnectionConfig, ChildConfig]:
        for conn in self.connections:
            for child in conn.children:
                if child.name == child_name:
                    return conn, child
        raise KeyError(f"no child named {child_name!r}")


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    return parse_config(text, source=str(path))


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: invalid TOML: {exc}"]) from None
    return parse_config_data(data, source)


def parse_config_data(data: dict[str, Any], source: str, require_connections: bool = True,
                      credential_source: credentials.CredentialSource | None = None,
                      text_values: bool = False) -> Config:
    """Validate the tables of a config (as ``tomllib`` reads them; vici's load-conn builds the
    same shape). A file without connections is refused unless its ``[gateway]`` enables the vici
    socket, through which they arrive later; ``require_connections=False`` never asks for one.
    Certificates and keys come from ``credential_source`` (vici: what its clients loaded), by
    default from the files next to ``source``.

    Types are strict: a TOML file writes a number as a number (``mtu = "1400"`` is an error).
    vici carries every value as text, so ``text_values=True`` reads decimal strings as numbers."""
    problems: list[str] = []
    warnings: list[str] = []
    root = _Table(data, "", source, problems, warnings, text_values)
    root.allow({"gateway", "connections", "secrets", "pools"})
    gateway = _parse_gateway(root.table("gateway"))
    secrets = _parse_secrets(root.table("secrets"))
    key_secrets = _parse_key_secrets(root.table("secrets"))
    creds = credential_source or credentials.FileCredentials(_config_folder(source), key_secrets)
    connections: list[ConnectionConfig] = []
    psk_sources: dict[str, str] = {}
    conns = root.table("connections")
    for name in conns.keys():
        conn_table = conns.table(name)
        conn = _parse_connection(conn_table, name)
        if conn is None:
            continue
        _attach_credentials(conn, conn_table, creds)
        source_key = _assign_psk(conn, secrets, conn_table) if "psk" in (conn.local.auth, conn.remote.auth) else None
        if source_key:
            psk_sources[name] = source_key
        connections.append(conn)
    vici_only = bool(gateway.vici_socket) and "vici_socket" in root.table("gateway").keys()
    if require_connections and not vici_only and not conns.keys() and not problems:
        problems.append(f"{source}: connections: expected at least one connection table")
    _check_unique_children(conns, connections)
    pools = parse_pools(root.table("pools"))
    _check_pool_references(conns, connections, pools)
    if problems:
        raise ConfigError(problems)
    return Config(source, gateway, connections, psk_sources, pools, warnings=warnings)


# ----------------------------------------------------------------------------- value parsers
# Each raises _Bad(expected) and the table reader turns that into one located message.


class _Bad(Exception):
    def __init__(self, expected: str, show_value: bool = True):
        self.expected = expected
        self.show_value = show_value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> float:
    """swanctl time values: ``"1h"``, ``"30m"``, ``"10s"``, ``"2d"`` or plain seconds."""
    if isinstance(value, bool):
        raise _Bad('a duration like "1h" or seconds')
    if isinstance(value, (int, float)) and value >= 0:
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise _Bad('a duration like "1h" or seconds')


_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)\s*$")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(value: Any) -> int:
    """swanctl byte and packet counts: plain numbers or with a k/M/G suffix (powers of 1024)."""
    if isinstance(value, bool):
        raise _Bad('a count like 1000 or "500M"')
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    raise _Bad('a count like 1000 or "500M"')


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("yes", "true", "no", "false"):
        return value.lower() in ("yes", "true")
    raise _Bad('yes or no')


def parse_list(value: Any) -> list[str]:
    """A swanctl comma list (``"a, b"``) or a TOML array of strings."""
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = [item.strip() for item in value]
    else:
        raise _Bad("a comma-separated string or an array of strings")
    if not items or any(not item for item in items):
        raise _Bad("a non-empty list without empty entries")
    return items


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$)({_LABEL})(\.{_LABEL})*\.?$")
_ADDRS_EXPECTED = "IP addresses, subnets, ranges (first-last), host names or %any"


def is_host_name(text: str) -> bool:
    """A syntactically valid DNS name (RFC 1123). The last label must not be all digits
    (RFC 3696 s2), so "192.0.2.256" is a bad address, not a name to look up."""
    if not _HOSTNAME.match(text):
        return False
    return not text.rstrip(".").rsplit(".", 1)[-1].isdigit()


def _is_address_range(text: str) -> bool:
    first, sep, last = text.partition("-")
    if not sep:
        return False
    try:
        low, high = ipaddress.ip_address(first.strip()), ipaddress.ip_address(last.strip())
    except ValueError:
        return False
    return low.version == high.version and int(low) <= int(high)


def _is_address_or_subnet(text: str) -> bool:
    try:
        if "/" in text:
            ipaddress.ip_network(text, strict=False)
        else:
            ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_addrs(value: Any) -> list[str]:
    """``local_addrs``/``remote_addrs``: IPs, subnets, ranges, host names or ``%any``. Host names
    are looked up when a connection is initiated, so here only their syntax is checked."""
    addrs = parse_list(value)
    for addr in addrs:
        if is_any_addr(addr) or _is_address_or_subnet(addr) or _is_address_range(addr) or is_host_name(addr):
            continue
        raise _Bad(f"{_ADDRS_EXPECTED}; {addr!r} is none of these", show_value=False)
    return addrs


_PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132, "gre": 47}
_TS = re.compile(r"^(?P<addr>[^\[\]]+)(\[(?P<proto>[^/\]]*)(/(?P<port>[^\]]*))?\])?$")


def parse_traffic_selectors(value: Any) -> list[TrafficSelector]:
    """swanctl traffic selectors: ``10.0.0.0/24``, ``10.0.0.1-10.0.0.9``, ``0.0.0.0/0[tcp/443]``."""
    expected = 'subnets like "10.0.0.0/24", optionally with [proto/port]'
    selectors = []
    for item in parse_list(value):
        match = _TS.match(item)
        if not match:
            raise _Bad(expected)
        addr = match.group("addr").strip()
        try:
            if "-" in addr:
                first, last = (ipaddress.ip_address(part.strip()) for part in addr.split("-", 1))
                if first.version != last.version or int(first) > int(last):
                    raise ValueError
            else:
                net = ipaddress.ip_network(addr, strict=False)
                first, last = net.network_address, net.broadcast_address
        except ValueError:
            if addr.startswith("dynamic"):
                raise _Bad(expected + ' ("dynamic" takes no [proto/port] in espgw)') from None
            raise _Bad(expected) from None
        protocol, start_port, end_port = _parse_ts_protocol_port(match.group("proto"), match.group("port"), expected)
        selectors.append(TrafficSelector(first, last, protocol, start_port, end_port))
    return selectors


def parse_child_selectors(value: Any) -> tuple[list[TrafficSelector], bool]:
    """A child's ``local_ts``/``remote_ts``: subnets and swanctl's ``dynamic`` (this side's virtual
    IP, or its outer address), which is the default; (subnets, whether dynamic is among them)."""
    items = parse_list(value)
    subnets = [item for item in items if item != "dynamic"]
    return (parse_traffic_selectors(subnets) if subnets else []), len(subnets) < len(items)


def _parse_ts_protocol_port(proto: str | None, port: str | None, expected: str) -> tuple[int, int, int]:
    protocol = 0
    if proto not in (None, "", "%any", "any"):
        if proto.isdigit() and int(proto) <= 255:
            protocol = int(proto)
        elif proto.lower() in _PROTOCOLS:
            protocol = _PROTOCOLS[proto.lower()]
        else:
            raise _Bad(expected)
    start_port, end_port = 0, 65535
    if port not in (None, "", "%any", "any"):
        low, _, high = port.partition("-")
        high = high or low
        if not (low.isdigit() and high.isdigit() and int(low) <= int(high) <= 65535):
            raise _Bad(expected)
        start_port, end_port = int(low), int(high)
    return protocol, start_port, end_port


def parse_psk(value: Any) -> bytes:
    """swanctl secrets: ``0x`` hex, ``0s`` base64, otherwise the string's UTF-8 bytes."""
    if not isinstance(value, str) or not value:
        raise _Bad("a non-empty string (plain, 0x hex or 0s base64)", show_value=False)
    if value.startswith("0x"):
        try:
            secret = bytes.fromhex(value[2:])
        except ValueError:
            raise _Bad("hex digits after 0x", show_value=False) from None
    elif value.startswith("0s"):
        try:
            secret = base64.b64decode(value[2:], validate=True)
        except (binascii.Error, ValueError):
            raise _Bad("base64 after 0s", show_value=False) from None
    else:
        secret = value.encode("utf-8")
    if not secret:
        raise _Bad("a non-empty secret", show_value=False)
    return secret


def _one_of(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise _Bad(" | ".join(choices))
    return parse


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        if isinstance(value, str) and value.strip().isdigit():
            raise _Bad(f"an integer from {low} to {high}, written as a number without quotes")
        raise _Bad(f"an integer from {low} to {high}")
    parse.numeric = True  # type: ignore[attr-defined]  # vici's text values are read as numbers
    return parse


def _string_or_empty(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Bad("a string")


def _string(value: Any) -> str:
    if isinstance(value, str) and value:
        return value
    raise _Bad("a non-empty string")


def _proposals(kind: str) -> Callable[[Any], list[str]]:
    defaults = DEFAULT_IKE_PROPOSALS if kind == "IKE" else DEFAULT_ESP_PROPOSALS

    def parse(value: Any) -> list[str]:
        proposals: list[str] = []
        for item in parse_list(value):
            if item == "default":  # swanctl's keyword for the built-in list
                proposals.extend(defaults)
            else:
                proposals.append(item.lower())
        for proposal in proposals:
            _validate_proposal(proposal, kind)
        return proposals
    return parse


def _validate_proposal(proposal: str, kind: str) -> None:
    try:
        parsed = parse_proposals(proposal, getattr(ProtocolId, kind))
    except Exception as exc:  # its error type is the IKE core's; the message is what matters here
        raise _Bad(f"valid {kind} proposals ({exc})") from None
    problem = _post_quantum_problem(parsed, kind)
    if problem is not None:
        raise _Bad(f"{kind} proposals that espgw can negotiate ({problem})")


def _post_quantum_problem(parsed: list, kind: str) -> str | None:
    """What espgw cannot negotiate of ML-KEM and additional key exchanges (RFC 9370), or None.

    IKE SAs take ke1_..ke7_ (IKE_INTERMEDIATE), CHILD SAs too (IKE_FOLLOWUP_KE, with PFS); ML-KEM
    as the primary key exchange (IKE_SA_INIT's, or CREATE_CHILD_SA's KE payload) and ML-KEM-512
    (cryptography has none) are refused here rather than failing at the peer."""
    for p in parsed:
        for t in p.transforms:
            if t.type not in ADDKE_TYPES and not (t.type == TransformType.DH and t.id in ML_KEM_METHODS):
                continue
            name = format_proposal(Proposal(p.protocol, [t]))
            if t.id == DhId.ML_KEM_512:
                return f"{name}: ML-KEM-512 is not available (the cryptography library has no ML-KEM-512)"
            if t.type == TransformType.DH:
                example = ("aes256gcm16-prfsha384-ecp384-ke1_mlkem768" if kind == "IKE"
                           else "aes256gcm16-ecp384-ke1_mlkem768")
                return f"{name}: ML-KEM only as an additional key exchange, e.g. {example}"
            if t.id and not supported_method(t.id):
                return f"{name}: key exchange method not supported"
    return None


# ----------------------------------------------------------------------------- table reader


_MISSING = object()


class _Table:
    """One TOML table with its dotted path; records problems instead of raising."""

    def __init__(self, data: Any, path: str, source: str, problems: list[str], warnings: list[str] | None = None,
                 text_values: bool = False):
        self.data = data if isinstance(data, dict) else {}
        self.path = path
        self.source = source
        self.problems = problems
        self.warnings = warnings if warnings is not None else []
        self.text_values = text_values  # vici: every value arrives as text
        if not isinstance(data, dict):
            self.problem("", "expected a table")

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path and key else (self.path or key)

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.source}: {self.key_path(key)}: {message}")

    def warning(self, key: str, message: str) -> None:
        self.warnings.append(f"{self.source}: {self.key_path(key)}: {message}")

    def keys(self) -> list[str]:
        return list(self.data)

    def allow(self, known: set[str], prefixes: tuple[str, ...] = (),
              unimplemented: dict[str, str] | None = None) -> None:
        for key in self.data:
            if unimplemented and key in unimplemented:
                self.problem(key, f"not implemented by espgw: {unimplemented[key]}")
            elif key not in known and not key.startswith(prefixes):
                self.problem(key, f"unknown key (espgw understands: {', '.join(sorted(known))})")

    def table(self, key: str) -> _Table:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            self.problem(key, "expected a table")
            value = {}
        return _Table(value, self.key_path(key), self.source, self.problems, self.warnings, self.text_values)

    def get(self, key: str, parse: Callable[[Any], Any], default: Any = _MISSING) -> Any:
        if key not in self.data:
            if default is _MISSING:
                self.problem(key, "missing; this key is required")
                return None
            return default
        value = self.data[key]
        if self.text_values and getattr(parse, "numeric", False) and isinstance(value, str) and value.isdigit():
            value = int(value)
        try:
            return parse(value)
        except _Bad as bad:
            got = f", got {_show(value)}" if bad.show_value else ""
            self.problem(key, f"expected {bad.expected}{got}")
            return default if default is not _MISSING else None


def _show(value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"  # as written in TOML
    else:
        text = f'"{value}"' if isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- sections


def _parse_gateway(table: _Table) -> GatewayConfig:
    defaults = GatewayConfig()
    table.allow({"tun_name", "mtu", "control_socket", "vici_socket", "log_level", "log_format", "esp_encap",
                 "raw_esp_tx", "queue_size", "retransmit_timeout", "retransmit_base", "retransmit_tries",
                 "cookie_threshold", "half_open_per_ip", "half_open_limit", "dns", "keep_alive",
                 "metrics", "ip_forward"})
    return GatewayConfig(
        tun_name=table.get("tun_name", _tun_name, defaults.tun_name),
        mtu=table.get("mtu", _int_range(576, 65535), defaults.mtu),
        control_socket=table.get("control_socket", _string, defaults.control_socket),
        vici_socket=table.get("vici_socket", _string_or_empty, defaults.vici_socket),
        log_level=table.get("log_level", _one_of("debug", "info", "warning", "error"), defaults.log_level),
        log_format=table.get("log_format", _one_of("auto", "console", "json"), defaults.log_format),
        esp_encap=table.get("esp_encap", _one_of("raw", "udp"), defaults.esp_encap),
        raw_esp_tx=table.get("raw_esp_tx", _one_of("ring", "socket"), defaults.raw_esp_tx),
        queue_size=table.get("queue_size", _int_range(0, 65536), defaults.queue_size),
        retransmit_timeout=table.get("retransmit_timeout", _positive_duration, defaults.retransmit_timeout),
        retransmit_base=table.get("retransmit_base", _number_at_least(1.0), defaults.retransmit_base),
        retransmit_tries=table.get("retransmit_tries", _int_range(0, 100), defaults.retransmit_tries),
        cookie_threshold=table.get("cookie_threshold", _int_range(0, 1_000_000), defaults.cookie_threshold),
        half_open_per_ip=table.get("half_open_per_ip", _int_range(1, 1_000_000), defaults.half_open_per_ip),
        half_open_limit=table.get("half_open_limit", _int_range(1, 1_000_000), defaults.half_open_limit),
        dns=table.get("dns", _one_of("state", "resolvconf"), defaults.dns),
        keep_alive=table.get("keep_alive", _positive_duration, defaults.keep_alive),
        metrics=table.get("metrics", _listen_address, defaults.metrics),
        ip_forward=table.get("ip_forward", parse_bool, defaults.ip_forward),
    )


def split_host_port(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9469"`` or ``"[::1]:9469"`` into an IP address and a port (0: any free one,
    for tests); ValueError if not."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(text)  # an IPv6 address needs its brackets: "[::1]:9469"
    return str(ipaddress.ip_address(host)), int(port)


def _listen_address(value: Any) -> str:
    if value == "":
        return ""  # off
    if isinstance(value, str):
        try:
            if split_host_port(value)[1] > 0:
                return value
        except ValueError:
            pass
    raise _Bad('an address and port like "127.0.0.1:9469" or "[::1]:9469" (or "" for none)')


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds > 0:
        return seconds
    raise _Bad('a duration above 0 like "4s" or seconds')


def _number_at_least(low: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value < float("inf"):
            return float(value)
        raise _Bad(f"a number of at least {low:g}")
    return parse


def _tun_name(value: Any) -> str:
    # Linux interface names: at most 15 bytes, no slash or whitespace
    if isinstance(value, str) and 0 < len(value) <= 15 and re.match(r"^[A-Za-z0-9_.-]+$", value):
        return value
    raise _Bad("an interface name of 1-15 letters, digits, '_', '.' or '-'")


CONNECTION_KEYS = {
    "local_addrs", "remote_addrs", "local_port", "remote_port", "proposals", "version", "encap",
    "dpd_delay", "rekey_time", "over_time", "reauth_time", "fragmentation",
    "keyingtries", "mobike", "unique", "local", "remote", "children", "vips", "pools",
}


def _parse_connection(table: _Table, name: str) -> ConnectionConfig | None:
    table.allow(CONNECTION_KEYS, prefixes=("local-", "remote-"), unimplemented=UNIMPLEMENTED_CONNECTION_KEYS)
    start = len(table.problems)
    defaults = ConnectionConfig(name, [], [], AuthConfig(), AuthConfig())
    version = table.get("version", _int_range(0, 2), 2)
    if version == 1:
        table.problem("version", "espgw implements IKEv2 only; expected 2 (or 0 for any)")
    conn = ConnectionConfig(
        name=name,
        local_addrs=table.get("local_addrs", parse_addrs, ["%any"]),
        remote_addrs=table.get("remote_addrs", parse_addrs, ["%any"]),
        local=_parse_auth(table, "local"),
        remote=_parse_auth(table, "remote"),
        proposals=table.get("proposals", _proposals("IKE"), list(DEFAULT_IKE_PROPOSALS)),
        version=2,
        local_port=table.get("local_port", _int_range(1, 65535), defaults.local_port),
        remote_port=table.get("remote_port", _int_range(1, 65535), defaults.remote_port),
        encap=table.get("encap", parse_bool, defaults.encap),
        dpd_delay=table.get("dpd_delay", parse_duration, defaults.dpd_delay),
        rekey_time=table.get("rekey_time", parse_duration, defaults.rekey_time),
        over_time=table.get("over_time", parse_duration, defaults.over_time),
        reauth_time=table.get("reauth_time", parse_duration, defaults.reauth_time),
        fragmentation=table.get("fragmentation", _one_of("yes", "accept", "force", "no"), defaults.fragmentation),
        keyingtries=table.get("keyingtries", _int_range(0, 1000), defaults.keyingtries),
        mobike=table.get("mobike", parse_bool, defaults.mobike),
        unique=table.get("unique", _one_of("no", "never", "keep", "replace"), defaults.unique),
        vips=table.get("vips", _vips, []),
        pools=table.get("pools", parse_list, []),
    )
    children = table.table("children")
    for child_name in children.keys():
        child = _parse_child(children.table(child_name), child_name)
        if child is not None:
            conn.children.append(child)
    if not children.keys():
        table.problem("children", "expected at least one child table (the subnets to tunnel)")
    return conn if len(table.problems) == start else None


def _parse_auth(conn: _Table, side: str) -> AuthConfig:
    # swanctl allows several rounds as local-1, local-2...; espgw does one PSK round
    names = [key for key in conn.keys() if key == side or key.startswith(side + "-")]
    if len(names) > 1:
        conn.problem(names[1], f"only one {side} authentication round is supported")
    table = conn.table(names[0] if names else side)
    table.allow({"auth", "id", "certs"} if side == "local" else {"auth", "id", "cacerts"})
    auth = table.get("auth", _one_of(*_AUTH_METHODS), "psk")
    return AuthConfig(auth="psk" if auth == "psk" else "pubkey", id=table.get("id", _string, None),
                      rsa_pss=auth == "rsa/pss")


# swanctl's names for signature authentication (the key decides the algorithm)
_AUTH_METHODS = ("psk", "pubkey", "rsa", "rsa/pss", "ecdsa", "ed25519")


def _config_folder(source: str) -> Path:
    return Path(source).parent if source not in ("<config>", "") else Path.cwd()


def _attach_credentials(conn: ConnectionConfig, table: _Table, creds: credentials.CredentialSource) -> None:
    """Load the certificate, key and CAs of a pubkey connection."""
    sides = {"local": conn.local, "remote": conn.remote}
    for side, auth in sides.items():
        if auth.auth != "pubkey":
            continue
        section = table.table(side)
        names = section.get("certs" if side == "local" else "cacerts", parse_list, [])
        try:
            if side == "local":
                if not names:
                    section.problem("certs", "missing; auth = pubkey needs our certificate")
                    continue
                auth.credential = creds.local_credential(names)
            else:
                auth.trust = creds.trust_store(names)
                auth.clock_offset = credentials.wall_clock_offset()
        except CertError as exc:
            section.problem("certs" if side == "local" else "cacerts", str(exc))


CHILD_KEYS = {
    "local_ts", "remote_ts", "esp_proposals", "mode", "start_action", "dpd_action", "close_action",
    "rekey_time", "life_time", "rand_time", "rekey_packets", "rekey_bytes", "replay_window",
    "tfc_padding",
}


def _parse_child(table: _Table, name: str) -> ChildConfig | None:
    table.allow(CHILD_KEYS)
    start = len(table.problems)
    defaults = ChildConfig(name, [], [])
    mode = table.get("mode", _one_of("tunnel", "transport", "pass", "drop"), "tunnel")
    if mode != "tunnel":
        table.problem("mode", f'expected tunnel (the only mode espgw implements), got "{mode}"')
    child = ChildConfig(
        name=name,
        local_ts=[], remote_ts=[],  # below: with swanctl's "dynamic", the default
        esp_proposals=table.get("esp_proposals", _proposals("ESP"), list(DEFAULT_ESP_PROPOSALS)),
        mode="tunnel",
        start_action=table.get("start_action", _one_of("none", "trap", "start"), defaults.start_action),
        dpd_action=table.get("dpd_action", _one_of("clear", "trap", "restart"), defaults.dpd_action),
        close_action=table.get("close_action", _one_of("none", "trap", "start"), defaults.close_action),
        rekey_time=table.get("rekey_time", parse_duration, defaults.rekey_time),
        life_time=table.get("life_time", parse_duration, defaults.life_time),
        rand_time=table.get("rand_time", parse_duration, defaults.rand_time),
        rekey_packets=table.get("rekey_packets", parse_size, defaults.rekey_packets),
        rekey_bytes=table.get("rekey_bytes", parse_size, defaults.rekey_bytes),
        replay_window=table.get("replay_window", _int_range(0, 1 << 20), defaults.replay_window),
        tfc_padding=table.get("tfc_padding", _tfc_padding, defaults.tfc_padding),
    )
    child.local_ts, child.local_dynamic = table.get("local_ts", parse_child_selectors, ([], True)) or ([], True)
    child.remote_ts, child.remote_dynamic = table.get("remote_ts", parse_child_selectors, ([], True)) or ([], True)
    if len(table.problems) > start:
        return None
    if child.life_time is not None and child.rekey_time and child.life_time <= child.rekey_time:
        table.problem("life_time", "expected more than rekey_time, so the SA is rekeyed before it expires")
        return None
    # espgw installs a child's trap when it starts and keeps it; it cannot trap a child later
    for key, other in (("dpd_action", "clear or restart"), ("close_action", "none or start")):
        if getattr(child, key) == "trap" and child.start_action != "trap":
            table.problem(key, f'not implemented by espgw: "trap" works only with start_action = "trap" '
                               f"(traps are installed at start); expected {other}")
            return None
    return child


# ----------------------------------------------------------------------------- virtual IPs

POOL_KEYS = {"addrs", "dns", "subnet", "nbns", "netmask"}


def _vips(value: Any) -> list[str]:
    """``vips``: addresses to request, ``0.0.0.0`` / ``::`` for any (swanctl's %any4/%any6 too)."""
    out = []
    for item in parse_list(value):
        item = {"%any": "0.0.0.0", "%any4": "0.0.0.0", "%any6": "::"}.get(item, item)
        try:
            out.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise _Bad('addresses like "0.0.0.0" (any IPv4), "::" (any IPv6) or one to ask for again') from None
    if len({ipaddress.ip_address(v).version for v in out}) < len(out):
        raise _Bad("at most one address per IP version")
    return out


def _addresses(value: Any) -> tuple[Any, ...]:
    try:
        return tuple(ipaddress.ip_address(item) for item in parse_list(value))
    except ValueError:
        raise _Bad('IP addresses like "10.3.0.53"') from None


def _subnets(value: Any) -> tuple[Any, ...]:
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in parse_list(value))
    except ValueError:
        raise _Bad('subnets like "10.2.0.0/16"') from None


def _nbns(value: Any) -> tuple[ipaddress.IPv4Address, ...]:
    """NetBIOS name servers: IPv4 only, RFC 7296 has no INTERNAL_IP6_NBNS (strongSwan's 11 is
    the one RFC 4306 had)."""
    out = []
    for address in _addresses(value):
        if not isinstance(address, ipaddress.IPv4Address):
            raise _Bad(f"IPv4 addresses ({address} is IPv6: IKEv2 has no IPv6 NetBIOS name server attribute)")
        out.append(address)
    return tuple(out)


def _netmask(value: Any) -> ipaddress.IPv4Address:
    """INTERNAL_IP4_NETMASK: a dotted IPv4 netmask (``255.255.255.0``), sent with an IPv4 address."""
    try:
        mask = ipaddress.IPv4Address(value if isinstance(value, str) else "")
        ipaddress.IPv4Network(f"0.0.0.0/{mask}")
    except ValueError:
        raise _Bad('an IPv4 netmask like "255.255.255.0"') from None
    return mask


def _pool_range(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad('a subnet like "10.3.0.0/28" or a range like "10.3.0.1-10.3.0.20"')
    try:
        AddressPool("check", value)
    except PoolError as exc:
        raise _Bad(f'a subnet like "10.3.0.0/28" or a range like "10.3.0.1-10.3.0.20" ({exc})') from None
    return value


def parse_pools(table: _Table) -> list[AddressPool]:
    """``[pools.NAME]`` as swanctl.conf's pools: ``addrs``, ``dns``, ``subnet``, ``nbns``,
    ``netmask``; overlapping pools are refused (one address would be lent twice)."""
    pools = []
    for name in table.keys():
        section = table.table(name)
        section.allow(POOL_KEYS)
        start = len(table.problems)
        addrs = section.get("addrs", _pool_range)
        dns = section.get("dns", _addresses, ())
        subnets = section.get("subnet", _subnets, ())
        nbns = section.get("nbns", _nbns, ())
        netmask = section.get("netmask", _netmask, None)
        if netmask is not None and addrs is not None and ":" in addrs:
            section.problem("netmask", "INTERNAL_IP4_NETMASK goes with IPv4 addresses, this pool lends IPv6 ones")
        if len(table.problems) == start:
            pools.append(AddressPool(name, addrs, dns=dns, subnets=subnets, nbns=nbns, netmask=netmask))
    for i, pool in enumerate(pools):
        for other in pools[:i]:
            if pool.overlaps(other):
                table.problem(f"{pool.name}.addrs", f"{pool.addrs} overlaps pool {other.name!r} ({other.addrs}); "
                              "pools must not share addresses")
    return pools


def _check_pool_references(conns: _Table, connections: list[ConnectionConfig], pools: list[AddressPool]) -> None:
    known = {pool.name for pool in pools}
    for conn in connections:
        for name in conn.pools:
            if name not in known:
                conns.table(conn.name).problem("pools", f"no pool {name!r} (define it as [pools.{name}])")


def _tfc_padding(value: Any) -> int:
    if value == "mtu":
        return 1500  # pad to the full packet size, as swanctl's "mtu"
    return _int_range(0, 65535)(value)


_tfc_padding.numeric = True  # type: ignore[attr-defined]


def _check_unique_children(conns: _Table, connections: list[ConnectionConfig]) -> None:
    # `espgw initiate --child NAME` must name exactly one child
    seen: dict[str, str] = {}
    for conn in connections:
        for child in conn.children:
            if child.name in seen:
                conns.problem(f"{conn.name}.children.{child.name}",
                              f"child name already used in connection {seen[child.name]!r}; child names must be unique")
            seen[child.name] = conn.name


# ----------------------------------------------------------------------------- secrets


@dataclass
class _Secret:
    section: str
    ids: list[str]
    psk: bytes = field(repr=False)


def _parse_secrets(table: _Table) -> list[_Secret]:
    secrets = []
    for name in table.keys():
        if name.startswith(tuple(f"{kind}-" for kind in credentials.KEY_SECTIONS)):
            continue  # private keys: _parse_key_secrets
        if not name.startswith("ike"):
            table.problem(name, "unknown secret type (espgw understands ike-NAME sections holding PSKs "
                                "and private-NAME key files)")
            continue
        section = table.table(name)
        section.allow({"secret", "id"}, prefixes=("id-",))
        ids: list[str] = []
        for key in section.keys():
            if key == "id" or key.startswith("id-"):
                ids.extend(section.get(key, parse_list, []))
        psk = section.get("secret", parse_psk)
        if psk is not None:
            if len(psk) < MIN_PSK_BYTES:  # its length only: the secret itself is never shown
                section.warning("secret", f"the PSK is {len(psk)} bytes; use at least {MIN_PSK_BYTES} random bytes "
                                          '(e.g. `openssl rand -base64 32`, written as secret = "0s<its output>")')
            secrets.append(_Secret(section.path, ids, psk))
    return secrets


def _parse_key_secrets(table: _Table) -> list[KeySecret]:
    """``secrets.private-NAME`` (and ``rsa-``, ``ecdsa-``, ``pkcs8-``): a key ``file`` and its
    passphrase ``secret``."""
    keys = []
    for name in table.keys():
        if not name.startswith(tuple(f"{kind}-" for kind in credentials.KEY_SECTIONS)):
            continue
        section = table.table(name)
        section.allow({"file", "secret"})
        file = section.get("file", _string)
        passphrase = section.get("secret", parse_psk, None)
        if file is not None:
            keys.append(KeySecret(section.path, file, passphrase))
    return keys


# strongSwan's identification match levels: a perfect match outweighs any number of wildcards
_MATCH_PERFECT, _MATCH_WILDCARD, _MATCH_ANY, _MATCH_NONE = 20, 10, 1, 0


def _id_match(pattern: str, identity: str | None) -> int:
    """How well one of a secret's ids matches an identity (None: not known from the config)."""
    if pattern == ANY_ID:
        return _MATCH_ANY
    if identity is None:
        return _MATCH_NONE
    if pattern.lower() == identity.lower():
        return _MATCH_PERFECT
    if "*" in pattern and fnmatch.fnmatchcase(identity.lower(), pattern.lower()):
        return _MATCH_WILDCARD
    return _MATCH_NONE


def _owner_match(secret: _Secret, identity: str | None) -> int:
    if not secret.ids:
        return _MATCH_ANY  # a secret without ids is shared with anyone, as in strongSwan
    return max(_id_match(pattern, identity) for pattern in secret.ids)


def _default_id(explicit: str | None, addrs: list[str]) -> str | None:
    """Without an explicit id strongSwan uses the IKE address, known here only if it is one IP."""
    if explicit:
        return explicit
    if len(addrs) == 1:
        try:
            return str(ipaddress.ip_address(addrs[0]))
        except ValueError:
            return None
    return None


def _assign_psk(conn: ConnectionConfig, secrets: list[_Secret], table: _Table) -> str | None:
    """Pick the PSK whose ids best match the connection's two identities (strongSwan's rule:
    a secret applies if it names either side; the best combined match wins, first on a tie)."""
    local_id = _default_id(conn.local.id, conn.local_addrs)
    remote_id = _default_id(conn.remote.id, conn.remote_addrs)
    best, best_score = None, 0
    for secret in secrets:
        mine, theirs = _owner_match(secret, local_id), _owner_match(secret, remote_id)
        if secret.ids and not (mine or theirs):
            continue
        if mine + theirs > best_score:
            best, best_score = secret, mine + theirs
    if best is None:
        table.problem("", (
            f"no PSK in secrets matches this connection (local id {local_id or 'unknown'}, remote id "
            f"{remote_id or 'unknown'}); add a secrets.ike-NAME table with id = \"{remote_id or 'PEER-ID'}\" "
            "and secret = \"...\""))
        return None
    conn.psk = best.psk
    return best.section
