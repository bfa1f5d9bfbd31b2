"""The per-packet path: an installed CHILD SA pair and the ESP in/out loops around it.

Everything here runs once per packet, so it avoids per-packet allocation beyond the packet
itself: bound methods are cached on the objects, outer headers come from ``esp.outer`` templates,
and counters are plain integer attributes.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Callable

import structlog

from esp.errors import Drop, DropReason, SAExpired
from esp.outer import OuterIPv4, OuterIPv6, ecn_decapsulate
from esp.sa import InboundSA, Lifetime, OutboundSA
from esp.transforms import transform_by_name
from ike.events import ChildSaUp
from tunnel.fragment import fit_to_mtu
from tunnel.icmp import tunnel_mtu

log = structlog.get_logger("tunnel")

NH_IPV4, NH_IPV6 = 4, 41
NAT_T_PORT = 4500


def _lifetime(up: ChildSaUp, packets: int, octets: int) -> Lifetime | None:
    """Soft limits at the configured rekey volume, hard ones 10% later (strongSwan's life = 1.1 x rekey)."""
    if not packets and not octets:
        return None
    return Lifetime(soft_packets=packets or None, hard_packets=int(packets * 1.1) or None,
                    soft_bytes=octets or None, hard_bytes=int(octets * 1.1) or None)


class ChildPath:
    """One CHILD SA pair as installed in the data plane."""

    def __init__(self, up: ChildSaUp, *, transmit: Callable[[bytes, bytes], bool], mtu: int,
                 rekey_packets: int = 0, rekey_bytes: int = 0, now: float = 0.0) -> None:
        self.up = up
        self.key = (up.ike_name, up.child_name, up.unique_id)
        self.lineage = self.key  # the policy key it shares with the SAs it was rekeyed from
        self.generation = 0  # install order: the newest SA of a lineage wins
        lifetime = _lifetime(up, rekey_packets, rekey_bytes)
        self.inbound = InboundSA(up.inbound_spi, up.esp_transform, up.inbound_keymat, esn=up.esn,
                                 replay_window=up.replay_window, lifetime=lifetime)
        self.outbound = OutboundSA(up.outbound_spi, up.esp_transform, up.outbound_keymat, esn=up.esn,
                                   tfc_pad_to=up.tfc_padding, lifetime=lifetime)
        self.transform = transform_by_name(up.esp_transform)
        self.mtu = mtu
        self.installed_at = now
        self.last_out: float | None = None
        self.rekey_requested = False
        self._encapsulate = self.outbound.encapsulate
        self._transmit = transmit

    def send(self, inner: bytes) -> bool:
        """Encrypt and transmit one inner packet that already fits ``self.mtu``."""
        try:
            esp = self._encapsulate(inner, NH_IPV6 if inner[0] >> 4 == 6 else NH_IPV4)
        except SAExpired:
            self.outbound.counters.drop(DropReason.SA_EXPIRED)
            return False
        return self._transmit(esp, inner)

    def describe(self, now: float) -> dict:
        """The CHILD SA for ``espgw list-sas`` (no keys)."""
        up, inb, out = self.up, self.inbound.counters, self.outbound.counters
        drops = {r.name.lower(): n for r, n in {**inb.drops, **out.drops}.items() if n}
        return {
            "name": up.child_name, "unique_id": up.unique_id, "state": "INSTALLED", "mode": up.mode,
            "encap": up.encap, "proposal": up.proposal, "spi_in": f"{up.inbound_spi:08x}",
            "spi_out": f"{up.outbound_spi:08x}", "bytes_in": inb.bytes, "bytes_out": out.bytes,
            "packets_in": inb.packets, "packets_out": out.packets,
            "installed": round(now - self.installed_at, 1),
            "local_ts": [str(ts) for ts in up.local_ts], "remote_ts": [str(ts) for ts in up.remote_ts],
            "drops": drops, "mtu": self.mtu,
        }

    def key_rows(self) -> list[dict]:
        """Both directions for Wireshark's esp_sa table (the keys leave only through ``espgw keys``)."""
        up = self.up
        return [
            {"src": up.remote[0], "dst": up.local[0], "spi": up.inbound_spi, "esp_transform": up.esp_transform,
             "keymat": up.inbound_keymat.hex()},
            {"src": up.local[0], "dst": up.remote[0], "spi": up.outbound_spi, "esp_transform": up.esp_transform,
             "keymat": up.outbound_keymat.hex()},
        ]


def make_transmit(up: ChildSaUp, *, raw_v4, raw_v6, udp, force_udp: bool) -> Callable[[bytes, bytes], bool]:
    """The function that puts one ESP packet on the wire for this SA: raw protocol 50 or UDP 4500."""
    local_ip, remote_ip = up.local[0], up.remote[0]
    if up.encap or force_udp:
        remote = (remote_ip, up.remote[1] if up.remote[1] != 500 else NAT_T_PORT)
        local = (local_ip, NAT_T_PORT)
        send_esp = udp.send_esp

        def transmit_udp(esp: bytes, inner: bytes) -> bool:
            return send_esp(esp, remote, local)

        return transmit_udp
    if ipaddress.ip_address(remote_ip).version == 4:
        outer = OuterIPv4(socket.inet_aton(local_ip), socket.inet_aton(remote_ip), df="copy")
        build, send = outer.build, raw_v4.send

        def transmit_v4(esp: bytes, inner: bytes) -> bool:
            return send(build(len(esp), inner) + esp, remote_ip)

        return transmit_v4
    send_v6 = raw_v6.send_esp

    def transmit_v6(esp: bytes, inner: bytes) -> bool:
        return send_v6(esp, remote_ip)

    return transmit_v6


def inner_mtu(tun_mtu: int, path_mtu: int, up: ChildSaUp, force_udp: bool) -> int:
    """The largest inner packet this SA carries unfragmented over a path of ``path_mtu``."""
    t = transform_by_name(up.esp_transform)
    ipv6_outer = ipaddress.ip_address(up.remote[0]).version == 6
    try:
        fit = tunnel_mtu(path_mtu, iv_len=t.iv_len, icv_len=t.icv_len, align=t.align, ipv6_outer=ipv6_outer,
                         udp_encap=up.encap or force_udp)
    except ValueError:
        fit = 576
    return min(tun_mtu, fit)


class DropLog:
    """Counted drops get a log line, at most one per reason per second, with the count since."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def __call__(self, reason: str, **fields) -> None:
        now = self._clock()
        self._since[reason] = self._since.get(reason, 0) + 1
        if now - self._last.get(reason, -10.0) >= 1.0:
            log.warning("esp.drop", reason=reason, count=self._since.pop(reason), **fields)
            self._last[reason] = now


def receive_esp(sadb, policy, tun_write, esp: bytes, ecn: int, drop_log: DropLog, seen: dict) -> None:
    """Decapsulate one ESP packet, check it against its SA's selectors, hand it to the TUN."""
    try:
        sa, next_header, inner = sadb.decapsulate(esp)
    except Drop as drop:
        if drop.reason is not DropReason.DUMMY:
            drop_log(drop.reason.name.lower(), spi=esp[:4].hex() if len(esp) >= 4 else None)
        return
    if not inner or (next_header == NH_IPV4) != (inner[0] >> 4 == 4) or not policy.check_inbound(sa, inner):
        sa.counters.drop(DropReason.INNER_MISMATCH)
        drop_log("inner_mismatch", spi=f"{sa.spi:08x}")
        return
    if ecn == 3:
        inner = ecn_decapsulate(inner, ecn)
    seen[sa.spi] = sa
    tun_write(inner)


def send_with_mtu(path: ChildPath, packet: bytes, tun_write, icmp_v4: str | None, icmp_v6: str | None) -> None:
    """An inner packet larger than the SA's MTU: fragment it (no DF) or answer ICMP too big."""
    verdict = fit_to_mtu(packet, path.mtu, icmp_source_v4=icmp_v4, icmp_source_v6=icmp_v6)
    for fragment in verdict.packets:
        path.send(fragment)
    if verdict.icmp_reply is not None:
        tun_write(verdict.icmp_reply)


__all__ = ["ChildPath", "make_transmit", "inner_mtu", "receive_esp", "send_with_mtu", "DropLog", "OuterIPv6"]
