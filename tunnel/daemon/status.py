"""What the control socket reports: ``status``, ``list-sas`` and the key snapshot.

The fields are the ones ``tunnel.ops.cli`` renders (``render_status``, ``render_sas``); times are
relative to now (seconds ago, seconds until), counters include the CHILD SAs already gone.
"""

from __future__ import annotations

import json
import os
from collections import deque
from typing import Any, Protocol

from esp.sadb import SADatabase
from ike.endpoint import IkeEndpoint
from tunnel.daemon.traps import Traps
from tunnel.dataplane.child import ChildPath
from tunnel.dataplane.transmit import TxBatcher
from tunnel.dataplane.gro import TcpCoalescer
from tunnel.dataplane.policy import PolicyTable
from tunnel.kernel.tun import TunDevice
from tunnel.kernel.raw_esp import RawEspSocket
from tunnel.kernel.udp import UdpIkeSockets
from tunnel.ops.config import Config, GatewayConfig
from tunnel.ops.control import EncodedJson


class Gateway(Protocol):
    """What the reports read of a running gateway (``tunnel.daemon.gateway.Gateway``)."""

    config: Config
    settings: GatewayConfig
    started: float
    ike: IkeEndpoint
    sadb: SADatabase
    policy: PolicyTable
    traps: Traps
    children: dict[int, ChildPath]
    totals: Totals
    drops: dict[str, int]
    failures: deque[dict]
    tun: TunDevice
    gro: TcpCoalescer
    raw_v4: RawEspSocket
    raw_v6: RawEspSocket | None
    udp: UdpIkeSockets
    udp_out: TxBatcher


def list_sas(gw: Gateway, now: float) -> list[dict]:
    """IKE SAs with their CHILD SAs in the fields ``espgw list-sas`` renders (times relative to now)."""
    return [describe_ike(gw, sa, now) for sa in gw.ike.status()]


def list_sas_json(gw: Gateway, now: float, name: str | None = None) -> EncodedJson:
    """``{"ike_sas": list_sas()}`` (only connection ``name``'s if given), encoded SA by SA so
    each SA's dicts are freed before the next is described."""
    parts = (json.dumps(describe_ike(gw, sa, now), separators=(",", ":")).encode()
             for sa in gw.ike.statuses() if not name or sa.get("name") == name)
    return EncodedJson(b'{"ike_sas":[' + b",".join(parts) + b"]}")


def describe_ike(gw: Gateway, sa: dict, now: float) -> dict:
    local, remote = sa.get("local") or ("?", 0), sa.get("remote") or ("?", 0)
    children: list[dict] = []
    out: dict[str, Any] = {
        "name": sa.get("name"), "unique_id": sa.get("unique_id"), "state": str(sa.get("state", "?")).upper(),
        "version": 2, "spi_i": sa.get("spi_i"), "spi_r": sa.get("spi_r"), "initiator": sa.get("initiator"),
        "local_addr": local[0], "local_port": local[1], "local_id": sa.get("local_id"),
        "remote_addr": remote[0], "remote_port": remote[1], "remote_id": sa.get("remote_id"),
        "local_auth": sa.get("local_auth"), "remote_auth": sa.get("remote_auth"),
        "nat_local": sa.get("nat_local"), "nat_remote": sa.get("nat_remote"), "proposal": sa.get("proposal"),
        "mobike": sa.get("mobike"), "peer_addresses": sa.get("peer_addresses", []),
        "established": _ago(sa.get("established"), now), "rekey_in": _until(sa.get("rekey_at"), now),
        "local_vips": sa.get("local_vips", []), "remote_vips": sa.get("remote_vips", []),
        "children": children,
    }
    for child in sa.get("children", []):
        spi_in = child.get("inbound_spi")
        path = gw.children.get(int(spi_in, 16)) if isinstance(spi_in, str) else None
        entry = {
            "name": child.get("name"), "unique_id": child.get("unique_id"),
            "state": str(child.get("state", "?")).upper(), "mode": "tunnel", "proposal": child.get("proposal"),
            "spi_in": spi_in, "spi_out": child.get("outbound_spi"), "local_ts": child.get("local_ts", []),
            "remote_ts": child.get("remote_ts", []), "installed": _ago(child.get("established"), now),
            "rekey_in": _until(child.get("rekey_at"), now), "expires_in": _until(child.get("expire_at"), now),
        }
        if path is not None:
            entry.update(path.describe(now))
            entry["state"] = str(child.get("state", "installed")).upper()
        children.append(entry)
    return out


def status(gw: Gateway, now: float) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("espgw")
    except PackageNotFoundError:
        ver = "dev"
    totals = Totals()
    totals.merge(gw.totals)
    for path in gw.children.values():
        totals.add(path)
    drops = dict(totals.drops)
    for esp_reason, count in gw.sadb.counters.drops.items():  # unknown SPI, malformed ESP...
        _count(drops, esp_reason.name.lower(), count)
    for reason, count in gw.drops.items():
        _count(drops, reason, count)
    _count(drops, "trap_queue_full", gw.traps.queue_full)  # the oldest queued packet made room
    _count(drops, "malformed_inner", gw.policy.counters["malformed"])
    # shorter than an ESP header, or runts on UDP 4500: no SA to charge, the sockets count them
    for raw in filter(None, (gw.raw_v4, gw.raw_v6)):
        _count(drops, "truncated", raw.counters["recv_malformed"])
    _count(drops, "udp_malformed", gw.udp.counters["malformed"])
    rings = gw.udp_out.rings.counters() if gw.udp_out.rings is not None else None
    if rings:
        _count(drops, "tx_ring_full", rings["ring_full"])
    for name, count in gw.ike.drops.items():
        _count(drops, f"ike_{name}", count)
    udp = gw.udp.counters
    return {
        "version": ver, "pid": os.getpid(), "uptime": round(now - gw.started, 1),
        "tun_name": gw.tun.name, "mtu": gw.tun.mtu, "control_socket": gw.settings.control_socket,
        "esp_encap": gw.settings.esp_encap,
        "connections": [{"name": c.name, "local_addrs": c.local_addrs, "remote_addrs": c.remote_addrs,
                         "children": [ch.name for ch in c.children]} for c in gw.config.connections],
        "ike_sas": list_sas(gw, now),
        "counters": {
            "packets_in": totals.packets_in, "packets_out": totals.packets_out,
            "bytes_in": totals.bytes_in, "bytes_out": totals.bytes_out,
            "tun": dict(gw.tun.counters), "gro": dict(gw.gro.counters), "udp": udp,
            "raw_esp": dict(gw.raw_v4.counters), "raw_esp_ring": rings,
            "raw_esp6": dict(gw.raw_v6.counters) if gw.raw_v6 is not None else None,
        },
        "drops": drops,
        "failures": failures(gw, now),
        # client mode: virtual IPs, DNS servers and routes received (tunnel.daemon.virtual_ip)
        "virtual_ips": gw.virtual_ips.status() if hasattr(gw, "virtual_ips") else [],
    }


def key_snapshot(gw: Gateway) -> dict:
    rows = [row for path in gw.children.values() for row in path.key_rows()]
    ike_keys = getattr(gw.ike, "key_snapshot", None)
    return {"child_sas": rows, "ike_sas": ike_keys() if ike_keys else []}


class Totals:
    """Traffic and drop counters summed over CHILD SAs, also those already gone."""

    def __init__(self) -> None:
        self.packets_in = self.packets_out = self.bytes_in = self.bytes_out = 0
        self.drops: dict[str, int] = {}

    def add(self, path: ChildPath) -> None:
        inb, out = path.inbound.counters, path.outbound.counters
        self.packets_in += inb.packets
        self.packets_out += out.packets
        self.bytes_in += inb.bytes
        self.bytes_out += out.bytes
        for counters in (inb, out):
            for reason, count in counters.drops.items():
                _count(self.drops, reason.name.lower(), count)

    def merge(self, other: Totals) -> None:
        self.packets_in += other.packets_in
        self.packets_out += other.packets_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        for reason, count in other.drops.items():
            _count(self.drops, reason, count)


def _count(drops: dict[str, int], reason: str, count: int) -> None:
    if count:
        drops[reason] = drops.get(reason, 0) + count


def _ago(when: float | None, now: float) -> float | None:
    return round(now - when, 1) if isinstance(when, (int, float)) else None


def _until(when: float | None, now: float) -> float | None:
    return round(when - now, 1) if isinstance(when, (int, float)) else None


class Journal:
    """Recent happenings an operator follows, numbered: ``espgw initiate`` polls the ``events``
    command with the number it last saw and prints what came since, as ``swanctl --initiate``
    prints charon's log. ``outcome`` is "up" or "failed" where an initiation ends."""

    def __init__(self, maxlen: int = 512) -> None:
        self.entries: deque[dict] = deque(maxlen=maxlen)
        self.seq = 0

    def add(self, now: float, event: str, connection: str, text: str, *, child: str | None = None,
            outcome: str | None = None) -> None:
        self.seq += 1
        self.entries.append({"seq": self.seq, "at": now, "event": event, "connection": connection,
                             "child": child, "text": text, "outcome": outcome})

    def since(self, seq: int, connection: str | None = None, now: float | None = None) -> list[dict]:
        out = []
        for entry in self.entries:
            if entry["seq"] > seq and (connection is None or entry["connection"] == connection):
                item = dict(entry)
                item["ago"] = _ago(item.pop("at"), now) if now is not None else None
                out.append(item)
        return out


def failures(gw: Gateway, now: float) -> list[dict]:
    """Recent failures, oldest first, each with how long ago it was (``ago``, seconds)."""
    out = []
    for failure in gw.failures:
        item = dict(failure)
        item["ago"] = _ago(item.pop("at", None), now)
        out.append(item)
    return out


def list_conns(config: Config) -> list[dict]:
    """The loaded connections in the fields ``espgw list-conns`` renders (no secrets)."""
    def auth(side: Any) -> dict:
        return {"auth": side.auth + ("/pss" if side.rsa_pss else ""), "id": side.id,
                "certificate": repr(side.credential) if side.credential is not None else None,
                "cacerts": len(side.trust.cas) if side.trust is not None else None}

    return [{
        "name": c.name, "version": c.version, "local_addrs": c.local_addrs, "remote_addrs": c.remote_addrs,
        "local_port": c.local_port, "remote_port": c.remote_port, "proposals": c.proposals,
        "rekey_time": c.rekey_time, "reauth_time": c.reauth_time, "dpd_delay": c.dpd_delay,
        "keyingtries": c.keyingtries, "encap": c.encap, "unique": c.unique,
        "local": auth(c.local), "remote": auth(c.remote),
        "children": [{"name": ch.name, "mode": ch.mode, "local_ts": [str(t) for t in ch.local_ts],
                      "remote_ts": [str(t) for t in ch.remote_ts], "esp_proposals": ch.esp_proposals,
                      "start_action": ch.start_action, "dpd_action": ch.dpd_action,
                      "close_action": ch.close_action, "rekey_time": ch.rekey_time,
                      "life_time": ch.effective_life_time}
                     for ch in c.children],
    } for c in config.connections]
