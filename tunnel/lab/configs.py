"""Site-to-site connection configs for the lab topology, for either gateway (espgw or strongSwan)."""

from __future__ import annotations

from typing import Any

from ike.config import AuthConfig, ChildConfig, ConnectionConfig, TrafficSelector
from tunnel.lab.netns import Gateway, Lab, LabError

LAB_PSK = b"espgw-lab-psk-not-a-secret-0123456789"  # lab only; real deployments use their own


def site_to_site(lab: Lab, side: str, *, name: str = "lab", child: str = "net",
                 psk: bytes = LAB_PSK, ipv6_ts: bool | None = None, ipv6_outer: bool = False,
                 proposals: list[str] | None = None, esp_proposals: list[str] | None = None,
                 **conn_overrides) -> ConnectionConfig:
    """The connection gwA ("A") or gwB ("B") needs: LAN A <-> LAN B, ids gwa.lab / gwb.lab.

    ipv6_ts adds the IPv6 LANs to the traffic selectors (default: when the lab has IPv6);
    ipv6_outer runs IKE/ESP over the public link's IPv6 addresses instead of IPv4.
    """
    if side not in ("A", "B"):
        raise ValueError(f"side must be 'A' or 'B', not {side!r}")
    me, peer = (lab.gwA, lab.gwB) if side == "A" else (lab.gwB, lab.gwA)
    with_v6 = lab.ipv6 if ipv6_ts is None else ipv6_ts
    if ipv6_outer and not lab.ipv6:
        raise ValueError("ipv6_outer needs a lab with IPv6")

    def selectors(gw):
        nets = [str(gw.lan_net4)] + ([str(gw.lan_net6)] if with_v6 else [])
        return [TrafficSelector.from_cidr(n) for n in nets]

    child_kw: dict[str, Any] = {"esp_proposals": esp_proposals} if esp_proposals else {}
    conn_kw: dict[str, Any] = {"proposals": proposals} if proposals else {}
    conn_kw.update(conn_overrides)
    return ConnectionConfig(
        name=name,
        local_addrs=[_wan(me, ipv6_outer)],
        remote_addrs=[_wan(peer, ipv6_outer)],
        local=AuthConfig(auth="psk", id=f"{me.role.lower()}.lab"),
        remote=AuthConfig(auth="psk", id=f"{peer.role.lower()}.lab"),
        psk=psk,
        children=[ChildConfig(name=child, local_ts=selectors(me), remote_ts=selectors(peer), **child_kw)],
        **conn_kw,
    )


def _wan(gw: Gateway, ipv6: bool) -> str:
    addr = gw.wan_addr6 if ipv6 else gw.wan_addr4
    if addr is None:
        raise LabError(f"{gw.role} has no IPv6 address on the public link")
    return addr
