"""From swanctl's ``load-conn``, ``load-shared`` and ``load-pool`` messages to espgw's configuration.

swanctl sends swanctl.conf almost verbatim: ``load-conn`` carries one ``connections.NAME`` section
(comma lists already split into vici lists), ``load-shared`` one ``secrets.ike-X`` section as
``{id, type, data, owners}``. espgw's TOML configuration has the same tables and keys, so the
messages are rebuilt into the tables that loader reads and validated by it
(``tunnel.ops.config.parse_config_data``): one set of rules and error messages for both ways in, and any key
the loader does not know is an error naming it, never dropped.

A connection's PSK is chosen when it is loaded, from the secrets loaded before it (swanctl
``--load-all`` loads secrets first); later secret changes reach a connection when it is loaded
again, which ``--load-all`` does. ``load-pool`` carries ``pools.NAME`` sections (``addrs``, ``dns``,
``subnet``), validated by the same loader, overlaps with the other loaded pools included; a
connection's ``pools`` must name loaded ones (swanctl loads pools before connections).

Certificates work the same way: swanctl sends the contents of the files ``certs`` and ``cacerts``
name, and they become swanctl.conf's inline form (``0s`` + base64) for the loader, which takes the
key and CAs from the credential source it is given (the daemon's ``ViciCredentials``: what
load-key, load-cert and load-authority brought, which ``--load-all`` sends before connections).

:class:`ViciConfig` holds what vici clients loaded; it is sans-I/O and keeps no clock.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from ike.config import ConnectionConfig
from ike.pools import AddressPool
from tunnel.ops.config import CHILD_KEYS, CONNECTION_KEYS, POOL_KEYS, Config, ConfigError, parse_config_data
from tunnel.ops.credentials import CredentialSource, StoredCredentials

from .codec import Message, Value

SOURCE = "vici"
SHARED_KEYS = ("id", "type", "data", "owners")
AUTH_KEYS = ("auth (psk, pubkey, rsa, rsa/pss, ecdsa, ed25519)", "id", "certs (local)", "cacerts (remote)")
CERTIFICATE_KEYS = ("certs", "cacerts")  # swanctl sends the files' contents as a list of blobs


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

    def __init__(self, credentials: CredentialSource | None = None) -> None:
        # where pubkey connections find keys and CAs; by default none are known
        self._credentials = credentials if credentials is not None else StoredCredentials()
        self._conns: dict[str, ConnectionConfig] = {}
        self._unnamed = 0  # counts secrets loaded without an id, to name them
        self._secrets: dict[str, _Shared] = {}  # vici id -> its TOML-shaped secrets table
        self._pools: dict[str, dict[str, object]] = {}  # name -> its TOML-shaped pools table

    # ------------------------------------------------------------------ connections

    def load_conn(self, message: Message) -> ConnectionConfig:
        """Validate a load-conn message against the secrets loaded so far and keep it."""
        if len(message) != 1:
            raise ViciConfigError([f"load-conn: expected exactly one connection section, got {len(message)}"])
        ((name, section),) = message.items()
        if not isinstance(section, dict):
            raise ViciConfigError([f"load-conn: {name}: expected a section"])
        table = _text_tree(_inline_certificates(name, section), f"connections.{name}")
        config = _validate({"connections": {name: table}, "pools": dict(self._pools),
                            "secrets": {shared.name: shared.section for shared in self._secrets.values()}},
                           credentials=self._credentials)
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

    def load_pool(self, message: Message, others: list[AddressPool] | tuple[()] = ()) -> list[AddressPool]:
        """Validate and keep the pools of a load-pool message (with those loaded before, which it
        may replace, and ``others``: the configuration file's, which they must not overlap);
        returns the new pools."""
        if not message:
            raise ViciConfigError(["load-pool: expected at least one pool section"])
        sections: dict[str, object] = {}
        for name, section in message.items():
            if not isinstance(section, dict):
                raise ViciConfigError([f"load-pool: {name}: expected a section"])
            sections[name] = _text_tree(section, f"pools.{name}")
        config = _validate({"pools": {**self._pools, **sections}}, allow_no_connection=True)
        new = [pool for pool in config.pools if pool.name in sections]
        clashes = [f"pools.{pool.name}.addrs: {pool.addrs} overlaps pool {other.name!r} ({other.addrs}) of the "
                   "configuration file; pools must not share addresses"
                   for pool in new for other in others if pool.overlaps(other)]
        if clashes:
            raise ViciConfigError(clashes)
        self._pools.update(sections)  # type: ignore[arg-type]  # _text_tree made tables
        return new

    def unload_pool(self, message: Message) -> str:
        name = _text_key(message, "name", "unload-pool")
        if self._pools.pop(name, None) is None:
            raise ViciConfigError([f"unload-pool: no pool {name!r} loaded over vici"])
        return name

    def pool_names(self) -> list[str]:
        return list(self._pools)


def _inline_certificates(name: str, section: Message) -> Message:
    """The section with each side's ``certs`` / ``cacerts`` blobs in swanctl.conf's inline form
    (``0s`` + base64), which the loader reads like file names; ``pubkeys`` is refused by name."""
    problems, out = [], dict(section)
    for side, value in section.items():
        if not isinstance(value, dict) or not side.startswith(("local", "remote")):
            continue
        if "pubkeys" in value:
            problems.append(f"connections.{name}.{side}.pubkeys: raw public keys are not supported "
                            "(authenticate with a certificate: certs and cacerts)")
        converted = {key: item for key, item in value.items() if key != "pubkeys"}
        for key in CERTIFICATE_KEYS:
            blobs = value.get(key)
            if blobs is None:
                continue
            blobs = [blobs] if isinstance(blobs, bytes) else blobs
            if not isinstance(blobs, list) or not blobs:
                problems.append(f"connections.{name}.{side}.{key}: expected a list of certificates")
                continue
            converted[key] = [b"0s" + base64.b64encode(blob) for blob in blobs]
        out[side] = converted
    if problems:
        raise ViciConfigError(problems)
    return out


def _validate(data: dict[str, object], allow_no_connection: bool = False,
              credentials: CredentialSource | None = None) -> Config:
    """The configuration loader's verdict on ``data``; never files: credentials come from ``credentials``."""
    try:
        return parse_config_data(data, SOURCE, require_connections=not allow_no_connection,
                                 credential_source=credentials or StoredCredentials(),
                                 text_values=True)
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
        "pools.<name> (load-pool)": sorted(POOL_KEYS),
    }
