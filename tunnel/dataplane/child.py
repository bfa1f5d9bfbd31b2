"""An installed CHILD SA pair in the data plane, and its inner MTU.

``ChildPath.send`` is the per-packet outbound step (encrypt, then the SA's transmit function from
``tunnel.dataplane.transmit``); packets larger than the SA's MTU go through ``send_with_mtu``
(pre-fragmentation, or ICMP too big). Counters are plain integer attributes of the ESP SAs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from esp.errors import DropReason, SAExpired
from esp.sa import InboundSA, Lifetime, OutboundSA
from esp.transforms import transform_by_name
from ike.events import ChildSaUp
from tunnel.dataplane.fragment import fit_to_mtu
from tunnel.dataplane.icmp import tunnel_mtu

NH_IPV4, NH_IPV6 = 4, 41  # ESP next header of an inner IPv4 / IPv6 packet (tunnel mode)


def _lifetime(up: ChildSaUp, packets: int, octets: int) -> Lifetime | None:
    """Soft limits at the configured rekey volume, hard ones 10% later (strongSwan's life = 1.1 x rekey)."""
    if not packets and not octets:
        return None
    return Lifetime(soft_packets=packets or None, hard_packets=int(packets * 1.1) or None,
                    soft_bytes=octets or None, hard_bytes=int(octets * 1.1) or None)


class ChildPath:
    """One CHILD SA pair as installed in the data plane.

    It copies the few fields of its ``ChildSaUp`` it needs instead of keeping the event (about
    200 B per SA, and a gateway holds thousands); the keys are the same bytes objects.
    """

    __slots__ = ("key", "lineage", "generation", "inbound", "outbound", "mtu", "installed_at",
                 "rekey_requested", "_encapsulate", "_transmit", "local", "remote", "local_ts", "remote_ts",
                 "mode", "encap", "proposal", "inbound_keymat", "outbound_keymat")

    def __init__(self, up: ChildSaUp, *, transmit: Callable[[bytes, bytes], bool], mtu: int,
                 rekey_packets: int = 0, rekey_bytes: int = 0, now: float = 0.0) -> None:
        self.key = (up.ike_name, up.child_name, up.unique_id)
        self.lineage = self.key  # the policy key it shares with the SAs it was rekeyed from
        self.generation = 0  # install order: the newest SA of a lineage wins
        lifetime = _lifetime(up, rekey_packets, rekey_bytes)
        self.inbound = InboundSA(up.inbound_spi, up.esp_transform, up.inbound_keymat, esn=up.esn,
                                 replay_window=up.replay_window, lifetime=lifetime)
        self.outbound = OutboundSA(up.outbound_spi, up.esp_transform, up.outbound_keymat, esn=up.esn,
                                   tfc_pad_to=up.tfc_padding, lifetime=lifetime)
        self.local, self.remote = up.local, up.remote
        self.local_ts, self.remote_ts = up.local_ts, up.remote_ts
        self.mode, self.encap, self.proposal = up.mode, up.encap, up.proposal
        self.inbound_keymat, self.outbound_keymat = up.inbound_keymat, up.outbound_keymat  # for key export
        self.mtu = mtu
        self.installed_at = now
        self.rekey_requested = False
        self._encapsulate = self.outbound.encapsulate
        self._transmit = transmit

    def __repr__(self) -> str:
        return (f"ChildPath(child={self.child_name!r}, spi_in=0x{self.inbound_spi:08x}, "
                f"spi_out=0x{self.outbound_spi:08x})")

    @property
    def child_name(self) -> str:
        return self.key[1]

    @property
    def unique_id(self) -> int:
        return self.key[2]

    @property
    def inbound_spi(self) -> int:
        return self.inbound.spi

    @property
    def outbound_spi(self) -> int:
        return self.outbound.spi

    def send(self, inner: bytes) -> bool:
        """Encrypt and transmit one inner packet that already fits ``self.mtu``."""
        try:
            esp = self._encapsulate(inner, NH_IPV6 if inner[0] >> 4 == 6 else NH_IPV4)
        except SAExpired:
            self.outbound.counters.drop(DropReason.SA_EXPIRED)
            return False
        return self._transmit(esp, inner)

    def move(self, local: tuple[str, int], remote: tuple[str, int], encap: bool,
             transmit: Callable[[bytes, bytes], bool]) -> None:
        """New outer addresses (MOBIKE, a new NAT mapping): the same SAs, another way out."""
        self.local, self.remote, self.encap = local, remote, encap
        self._transmit = transmit

    def describe(self, now: float) -> dict:
        """The CHILD SA for ``espgw list-sas`` (no keys)."""
        inb, out = self.inbound.counters, self.outbound.counters
        drops = {r.name.lower(): n for r, n in {**inb.drops, **out.drops}.items() if n}
        return {
            "name": self.child_name, "unique_id": self.unique_id, "state": "INSTALLED", "mode": self.mode,
            "encap": self.encap, "local": list(self.local), "remote": list(self.remote), "proposal": self.proposal,
            "spi_in": f"{self.inbound_spi:08x}",
            "spi_out": f"{self.outbound_spi:08x}", "bytes_in": inb.bytes, "bytes_out": out.bytes,
            "packets_in": inb.packets, "packets_out": out.packets,
            "installed": round(now - self.installed_at, 1),
            "local_ts": [str(ts) for ts in self.local_ts], "remote_ts": [str(ts) for ts in self.remote_ts],
            "drops": drops, "mtu": self.mtu,
        }

    def key_rows(self) -> list[dict]:
        """Both directions for Wireshark's esp_sa table (the keys leave only through ``espgw keys``)."""
        transform = self.outbound.transform.name
        return [
            {"src": self.remote[0], "dst": self.local[0], "spi": self.inbound_spi, "esp_transform": transform,
             "keymat": self.inbound_keymat.hex()},
            {"src": self.local[0], "dst": self.remote[0], "spi": self.outbound_spi, "esp_transform": transform,
             "keymat": self.outbound_keymat.hex()},
        ]


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


def send_with_mtu(path: ChildPath, packet: bytes, tun_write, icmp_v4: str | None, icmp_v6: str | None) -> None:
    """An inner packet larger than the SA's MTU: fragment it (no DF) or answer ICMP too big."""
    verdict = fit_to_mtu(packet, path.mtu, icmp_source_v4=icmp_v4, icmp_source_v6=icmp_v6)
    for fragment in verdict.packets:
        path.send(fragment)
    if verdict.icmp_reply is not None:
        tun_write(verdict.icmp_reply)
