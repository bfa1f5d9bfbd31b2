"""``espgw reload`` / SIGHUP: which connections a new configuration adds, removes or changes.

The gateway applies the answer (``Gateway.reload``): removed connections are deleted at the peer,
changed ones are set up again, added ones start as their start actions say, and unchanged ones
keep their SAs and traffic untouched. This module only compares; it does no I/O.

Two loads of the same file never give equal dataclasses when certificates are involved (the key
objects compare by identity, and ``AuthConfig.clock_offset`` is taken at load time), so a
connection is compared by a *fingerprint*: certificates, CRLs and keys by their DER bytes, the
clock offset left out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization

from ike.config import ConnectionConfig

# Fields derived at load time, not configured: a difference is no change.
_DERIVED = frozenset({"clock_offset"})

# [gateway] settings a running daemon cannot take over: sockets, the TUN device and what the IKE
# endpoint was built with. A reload applies the connections and reports each of these as
# needing a restart (strongSwan's reload likewise leaves charon's own settings alone).
# Logging is the exception: a reload applies log_level and log_format (the --log-* flags still win).
RESTART_SETTINGS = ("tun_name", "mtu", "control_socket", "vici_socket", "esp_encap", "raw_esp_tx",
                    "queue_size", "retransmit_timeout", "retransmit_base", "retransmit_tries",
                    "cookie_threshold", "half_open_per_ip", "half_open_limit", "dns", "keep_alive",
                    "metrics", "ip_forward")


@dataclass
class ConfigDiff:
    """Connection names by what a reload does to them, each list in configuration order."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed,
                "unchanged": self.unchanged}


def fingerprint(value: Any) -> Any:
    """A comparable, hashable-free canonical form of a configuration value (never logged: it
    holds the PSK)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__,) + tuple(
            (f.name, fingerprint(getattr(value, f.name))) for f in dataclasses.fields(value)
            if f.name not in _DERIVED)
    if isinstance(value, (list, tuple)):
        return tuple(fingerprint(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), fingerprint(v)) for k, v in value.items()))
    if hasattr(value, "private_bytes") and hasattr(value, "public_key"):  # a private key: its public half
        return value.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    if hasattr(value, "public_bytes") and hasattr(value, "signature"):  # certificates, CRLs
        return value.public_bytes(serialization.Encoding.DER)
    return value


def same_connection(old: ConnectionConfig, new: ConnectionConfig) -> bool:
    """Whether ``new`` configures exactly what ``old`` does (its SAs can stay)."""
    return fingerprint(old) == fingerprint(new)


def diff_connections(old: list[ConnectionConfig], new: list[ConnectionConfig],
                     managed: set[str] | None = None) -> ConfigDiff:
    """What turns ``old`` into ``new``. Only the ``managed`` names of ``old`` (those the file
    configured, not vici's load-conn) can be removed; ``None`` means all of them."""
    before = {c.name: c for c in old}
    after = {c.name for c in new}
    diff = ConfigDiff()
    for conn in new:
        previous = before.get(conn.name)
        if previous is None:
            diff.added.append(conn.name)
        elif same_connection(previous, conn):
            diff.unchanged.append(conn.name)
        else:
            diff.changed.append(conn.name)
    for conn in old:
        if conn.name not in after and (managed is None or conn.name in managed):
            diff.removed.append(conn.name)
    return diff


def settings_needing_restart(running: Any, new: Any, overridden: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """One message per ``[gateway]`` setting the new file changes that takes a restart; keys the
    command line set (``espgw run --socket``) are the command line's, whatever the file says."""
    messages = []
    for key in RESTART_SETTINGS:
        if key in overridden:
            continue
        was, now = getattr(running, key, None), getattr(new, key, None)
        if was != now:
            messages.append(f"gateway.{key} changed from {was!r} to {now!r}: takes effect after a restart "
                            f"(still {was!r})")
    return messages


def pools_needing_restart(running: list, new: list) -> list[str]:
    """The running pools hold the leases, so a reload does not replace them: a pool the file
    adds, removes or changes is reported as taking effect after a restart."""
    def settings(pools: list) -> dict[str, tuple]:
        return {p.name: (p.addrs, p.grace, *p.attributes()) for p in pools}
    old, fresh = settings(running), settings(new)
    return [f"pools.{name}: changed in the file: takes effect after a restart (the running pool and its "
            "leases stay)" for name in sorted(old.keys() | fresh.keys()) if old.get(name) != fresh.get(name)]
