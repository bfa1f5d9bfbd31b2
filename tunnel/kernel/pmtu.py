"""The path MTU towards a peer, as the kernel knows it: a cached PMTU exception, else the route's
MTU metric, else the outgoing interface's MTU (what `ip route get PEER` shows)."""

from __future__ import annotations

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

log = structlog.get_logger("tunnel")

FALLBACK_MTU = 1500


def path_mtu(peer: str, *, fallback: int = FALLBACK_MTU) -> int:
    """The largest outer packet the kernel will send to ``peer`` unfragmented; ``fallback`` if unknown."""
    try:
        with IPRoute() as ipr:
            routes = ipr.route("get", dst=peer)
            if not routes:
                return fallback
            route = routes[0]
            metrics = route.get_attr("RTA_METRICS")
            mtu = metrics.get_attr("RTAX_MTU") if metrics is not None else None
            if mtu:
                return int(mtu)
            oif = route.get_attr("RTA_OIF")
            links = ipr.get_links(oif) if oif else []
            link_mtu = links[0].get_attr("IFLA_MTU") if links else None
            return int(link_mtu) if link_mtu else fallback
    except (NetlinkError, OSError, ValueError) as exc:
        log.warning("pmtu.unknown", peer=peer, error=str(exc), fallback=fallback)
        return fallback
