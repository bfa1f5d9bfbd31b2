"""Roaming: the daemon's side of MOBIKE (RFC 4555) and of NAT mapping changes.

Two jobs, for ``tunnel.daemon.gateway``:

* **Our address changed.** Once a second (``CHECK_INTERVAL``) the daemon asks the kernel which
  source address it would use towards the peer of every IKE SA we initiated with MOBIKE (a route
  look-up, pyroute2's ``route get``). When that is no longer the SA's local address (the laptop
  left the cafe's Wi-Fi, a new default route, a DHCP renewal) IKE is told (``IkeEndpoint.roam``)
  and sends UPDATE_SA_ADDRESSES from the new address. A timer was chosen over netlink address and
  route events: it sees every cause of a new source address (addresses, routes, rules, links)
  the same way, costs one netlink round trip a second only while such SAs exist, and a move is
  noticed within a second, inside the 2 s a ping may take to resume. A full-tunnel client's host
  route to the gateway (``tunnel.daemon.virtual_ip``) is moved to the new next hop first, so
  the look-up answers with the new path and never with the tunnel (a virtual IP as source is
  ignored anyway).
* **ESP from a new address.** ESP-in-UDP that opens on a CHILD SA but came from another address
  or port than the SA's peer (a NAT that gave the peer a new mapping) is offered to IKE
  (``IkeEndpoint.esp_from``), which moves the SA if the peer is behind a NAT (as charon does on
  the kernel's mapping events); the data path learns it from the next authentic packet.
* **The SA moved.** IKE's ``IkeSaMoved`` (after an update, the responder's return routability
  check, or a NAT mapping change) points the CHILD SAs' ESP at the new outer addresses: each
  ``ChildPath`` gets a transmit function for them, and the NAT keepalives follow.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ike.events import Address, IkeSaMoved
from tunnel.dataplane.transmit import transmit_between

log = structlog.get_logger("espgw")

CHECK_INTERVAL = 1.0  # seconds between route look-ups towards MOBIKE peers


class Gateway(Protocol):
    """What roaming uses of ``tunnel.daemon.gateway.Gateway`` (which owns it)."""

    ike: Any
    children: dict[int, Any]
    receiver: Any
    clock: Any
    raw_v4: Any
    raw_v6: Any
    udp: Any
    udp_out: Any
    force_udp: bool
    nat_keepalives: dict[int, tuple[Address, Address]]
    virtual_ips: Any  # tunnel.daemon.virtual_ip.VirtualIpClient

    def pump(self, now: float) -> None: ...


def route_source(peer: str) -> str | None:
    """The source address the kernel picks towards ``peer`` now, or None (no route)."""
    try:
        with IPRoute() as ipr:
            routes = ipr.route("get", dst=peer)
    except (OSError, NetlinkError):  # unreachable: no route at all (the laptop between two networks)
        return None
    for route in routes:
        src = route.get_attr("RTA_PREFSRC")
        if src:
            return str(src)
    return None


class Roaming:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.route_source = route_source  # a test may ask something else than the kernel
        self.next_check = 0.0
        self.moves = 0  # IKE SAs whose CHILD SAs were pointed at new addresses
        self.refused: set[tuple[int, Address]] = set()  # (SPI, source) IKE would not move to

    def receive_runs(self, runs: list[tuple[list[bytes], int]], sources: list, seen: dict) -> None:
        """Decapsulate ESP-in-UDP runs (``UdpIkeSockets.read_esp_batch`` with sources); a run from
        another address than its SA's peer is decapsulated on its own, and if it was authentic
        IKE hears of the new address."""
        gw = self.gateway
        receive, children = gw.receiver.receive, gw.children
        for (packets, ecn), src in zip(runs, sources, strict=True):
            spi = int.from_bytes(packets[0][:4], "big")
            path = children.get(spi)
            if path is None or not path.encap or _same_peer(path.remote, src):
                receive(packets, ecn, seen)
                continue
            own: dict = {}
            receive(packets, ecn, own)
            seen.update(own)
            if spi in own and (spi, src) not in self.refused:
                now = gw.clock()
                if gw.ike.esp_from(spi, (src[0], src[1]), now):
                    gw.pump(now)
                else:
                    if len(self.refused) > 1024:
                        self.refused.clear()
                    self.refused.add((spi, (src[0], src[1])))

    def check(self, now: float) -> None:
        """Housekeeping: start a MOBIKE update for every SA whose local address is stale."""
        if now < self.next_check:
            return
        self.next_check = now + CHECK_INTERVAL
        gw = self.gateway
        gw.virtual_ips.follow_gateway_paths()  # a full tunnel's host route first: it is the path asked about
        roaming = gw.ike.roaming_sas()
        if not roaming:
            return
        own_vips = set(gw.virtual_ips.addresses)  # a source inside our own tunnel is never a new path
        sources: dict[str, str | None] = {}
        for unique_id, local, remote in roaming:
            if remote[0] not in sources:
                sources[remote[0]] = self.route_source(remote[0])
            src = sources[remote[0]]
            if src is None or src == local[0] or src in own_vips or ipaddress.ip_address(src).version != \
                    ipaddress.ip_address(local[0]).version:
                continue
            log.info("roaming.local_address_changed", id=unique_id, old=local[0], new=src, peer=remote[0])
            gw.ike.roam(unique_id, src, now)
        gw.pump(now)

    def on_moved(self, event: IkeSaMoved) -> None:
        """ESP of the SA's CHILD SAs leaves from ``event.local`` to ``event.remote`` from now on."""
        gw = self.gateway
        moved = 0
        for spi in event.child_spis:
            path = gw.children.get(spi)
            if path is None or (path.local, path.remote, path.encap) == (event.local, event.remote, event.encap):
                continue
            transmit = transmit_between(event.local, event.remote, event.encap, raw_v4=gw.raw_v4, raw_v6=gw.raw_v6,
                                        udp=gw.udp, force_udp=gw.force_udp, batcher=gw.udp_out)
            path.move(event.local, event.remote, event.encap, transmit)
            moved += 1
        if event.nat_local:
            gw.nat_keepalives[event.unique_id] = (event.local, event.remote)
        else:
            gw.nat_keepalives.pop(event.unique_id, None)
        self.moves += 1
        log.info("roaming.sa_moved", connection=event.name, id=event.unique_id, local=_text(event.local),
                 remote=_text(event.remote), encap=event.encap, children=moved)


def _same_peer(remote: Address, src: Address) -> bool:
    """Whether ESP from ``src`` comes from the SA's peer (its IKE port 500 means ESP on 4500)."""
    return src[0] == remote[0] and (src[1] == remote[1] or (remote[1] == 500 and src[1] == 4500))


def _text(addr: Address) -> str:
    return f"{addr[0]}[{addr[1]}]"
