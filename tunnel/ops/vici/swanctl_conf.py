"""From swanctl's ``load-conn``, ``load-shared`` and ``load-pool`` messages to espgw's configuration.

swanctl sends swanctl.conf almost verbatim: ``load-conn`` carries one ``connections.NAME`` section
(comma lists already split into vici lists), ``load-shared`` one ``secrets.ike-X`` section as
``{id, type, data, owners}``. espgw's TOML configuration has the same tables and keys, so the
messages are rebuilt into the tables that loader reads and validated by it
(``tunnel.ops.config.parse_config_data``): one set of rules and error messages for both ways in, and any key
the loader does not know is an error naming it, never dropped.

A connection's PSK is chosen when it is loaded, from the secrets loaded before it (swanctl
``--load-all`` loads secrets first); later secret changes reach a connection when it is loaded
again, which ``--load-all`` does. Pools are refused: espgw assigns no virtual IPs.

:class:`ViciConfig` holds what vici clients loaded; it is sans-I/O and keeps no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ike.config import ConnectionConfig
from tunnel.ops.config import CHILD_KEYS, CONNECTION_KEYS, Config, ConfigError, parse_config_data

from .codec import Message, Value

SOURCE = "vici"
SHARED_KEYS = ("id", "type", "data", "owners")
AUTH_KEYS = ("auth", "id")


class ViciConfigError(Exception):
    """A load-* message espgw cannot apply; ``errmsg`` is what goes back in the response."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))

    @property
    def errmsg(self) -> str:
        return str(self)


@dataclass
class _Shared:
    name: str  # its secrets.* table name for the loader: the vici id, "ike-" prefixed if need be
    section: dict[str, object] = field(repr=False)  # holds the PSK


class ViciConfig:
    """Connections and IKE secrets loaded over vici, validated by espgw's configuration loader."""

    def __init__(self) -> None:
        self._conns: dict[str, ConnectionConfig] = {}
        self._unnamed = 0  # counts secrets loaded without an id, to name them
        self._secrets: dict[str, _Shared] = {}  # vici id -> its TOML-shaped secrets table

    # ------------------------------------------------------------------ connections

    def load_conn(self, message: Message) -> ConnectionConfig:
        """Validate a load-conn message against the secrets loaded so far and keep it."""
        if len(message) != 1:
            raise ViciConfigError([f"load-conn: expected exactly one connection section, got {len(message)}"])
        ((name, section),) = message.items()
        if not isinstance(section, dict):
            raise ViciConfigError([f"load-conn: {name}: expected a section"])
        _refuse_certificates(name, section)
        table = _text_tree(section, f"connections.{name}")
        config = _validate({"connections": {name: table},
                            "secrets": {shared.name: shared.section for shared in self._secrets.values()}})
        conn = config.connection(name)
        self._check_child_names(conn)
        self._conns[name] = conn
        return conn

    def _check_child_names(self, conn: ConnectionConfig) -> None:
        # `--initiate --child NAME` must find one child, as in the TOML loader
        for other in self._conns.values():
            if other.name == conn.name:
                continue
            clash = {child.name for child in other.children} & {child.name for child in conn.children}
            if clash:
                raise ViciConfigError([f"connections.{conn.name}.children.{sorted(clash)[0]}: child name already "
                                       f"used in connection {other.name!r}; child names must be unique"])

    def unload_conn(self, message: Message) -> ConnectionConfig:
        name = _text_key(message, "name", "unload-conn")
        if name not in self._conns:
            raise ViciConfigError([f"unload-conn: no connection {name!r} loaded over vici"])
        return self._conns.pop(name)

    def connections(self) -> list[ConnectionConfig]:
        return list(self._conns.values())

    def get_conns(self) -> dict[str, list[str]]:
        """The get-conns response."""
        return {"conns": list(self._conns)}

    # ------------------------------------------------------------------ secrets

    def load_shared(self, message: Message) -> str:
        """Validate and keep a load-shared message's IKE PSK; returns its name (the ``id``)."""
        unknown = [key for key in message if key not in SHARED_KEYS]
        if unknown:
            raise ViciConfigError([f"load-shared: {key}: unknown key (espgw understands: {', '.join(SHARED_KEYS)})"
                                   for key in unknown])
        kind = _text_key(message, "type", "load-shared")
        if kind.lower() != "ike":
            raise ViciConfigError([f'load-shared: type: expected ike (espgw uses IKE PSKs only), got "{kind}"'])
        data = message.get("data")
        if not isinstance(data, bytes):
            raise ViciConfigError(["load-shared: data: missing; this key is required"])
        owners = message.get("owners", [])
        if not isinstance(owners, list):
            raise ViciConfigError(["load-shared: owners: expected a list of identities"])
        if "id" in message:
            ident = _text_key(message, "id", "load-shared")
        else:
            ident = f"vici-{self._unnamed}"
            self._unnamed += 1
        section_name = ident if ident.startswith("ike") else f"ike-{ident}"
        # 0x hex keeps any bytes intact through the loader's swanctl secret syntax
        section: dict[str, object] = {"secret": "0x" + data.hex()}
        if owners:
            section["id"] = [_text(item, f"secrets.{section_name}.id") for item in owners]
        _validate({"secrets": {section_name: section}}, allow_no_connection=True)
        self._secrets[ident] = _Shared(section_name, section)
        return ident

    def unload_shared(self, message: Message) -> None:
        ident = _text_key(message, "id", "unload-shared")
        if self._secrets.pop(ident, None) is None:
            raise ViciConfigError([f"unload-shared: no secret {ident!r} loaded over vici"])

    def clear_shared(self) -> None:
        """clear-creds: forget every secret (loaded connections keep the PSK they took)."""
        self._secrets.clear()

    def get_shared(self) -> dict[str, list[str]]:
        """The get-shared response: the ids of the loaded secrets (never their values), which swanctl
        compares with its ``secrets`` section names to unload the ones gone from the file."""
        return {"keys": list(self._secrets)}

    # ------------------------------------------------------------------ pools

    def load_pool(self, message: Message) -> None:
        names = ", ".join(message) or "(none)"
        raise ViciConfigError([f"load-pool: pools {names}: not supported (espgw assigns no virtual IPs; "
                               "remove the pools section)"])


CERTIFICATE_KEYS = ("certs", "cacerts", "pubkeys")


def _refuse_certificates(name: str, section: Message) -> None:
    """swanctl sends certificate files' contents in load-conn and keys with load-key, which espgw
    does not take over vici yet: say so by key instead of reading the contents as file names."""
    problems = []
    for side, value in section.items():
        if not isinstance(value, dict) or not side.startswith(("local", "remote")):
            continue
        problems += [f"connections.{name}.{side}.{key}: certificates over vici are not supported yet "
                     "(configure this connection in the espgw configuration file)"
                     for key in CERTIFICATE_KEYS if key in value]
        auth = value.get("auth")
        if isinstance(auth, bytes) and auth not in (b"psk",):
            problems.append(f"connections.{name}.{side}.auth: only psk over vici (certificate authentication "
                            "is configured in the espgw configuration file)")
    if problems:
        raise ViciConfigError(problems)


def _validate(data: dict[str, object], allow_no_connection: bool = False) -> Config:
    """The configuration loader's verdict on ``data``."""
    try:
        return parse_config_data(data, SOURCE, require_connections=not allow_no_connection, text_values=True)
    except ConfigError as exc:
        raise ViciConfigError(exc.problems) from None


# ----------------------------------------------------------------------------- message -> text


def _text(value: bytes, where: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ViciConfigError([f"{where}: not UTF-8 text"]) from None


def _text_key(message: Message, key: str, command: str) -> str:
    value = message.get(key)
    if not isinstance(value, bytes):
        raise ViciConfigError([f"{command}: {key}: missing or not a value"])
    return _text(value, f"{command}: {key}")


def _text_tree(section: Message, path: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in section.items():
        out[key] = _text_value(value, f"{path}.{key}")
    return out


def _text_value(value: Value, path: str) -> object:
    if isinstance(value, dict):
        return _text_tree(value, path)
    if isinstance(value, list):
        return [_text(item, path) for item in value]
    return _text(value, path)


# ----------------------------------------------------------------------------- the supported keys


def supported_keys() -> dict[str, list[str]]:
    """swanctl.conf keys espgw accepts over vici, by section (the README's table)."""
    return {
        "connections.<conn>": sorted(CONNECTION_KEYS - {"local", "remote", "children"}),
        "connections.<conn>.local / remote": list(AUTH_KEYS),
        "connections.<conn>.children.<child>": sorted(CHILD_KEYS),
        "secrets.ike-<name> (load-shared)": ["id", "secret", "id-<suffix> (sent as owners)"],
    }
