"""Virtual IPs in the daemon: the client's address, routes and DNS servers; the gateway's pool routes.

Client (a connection with ``vips``): when the gateway's CFG_REPLY arrives (``VirtualIpsAssigned``)
the addresses go on the TUN; each CHILD SA of that IKE SA routes its remote selectors into the
TUN with the virtual IP as source. A remote selector of 0.0.0.0/0 (or ::/0) is routed as its two
halves, which win over the default route without replacing it, and the gateway itself keeps a
host route through the next hop it had before, so IKE and ESP never enter their own tunnel.
Everything added is removed when the IKE SA goes (an IKE rekey hands it to the new SA) and on exit.

DNS servers received are logged and written to a state file (``<tun>-vip.json`` next to the
control socket; ``espgw status`` shows it): never into /etc/resolv.conf. With the gateway setting
``dns = "resolvconf"`` they are also handed to ``resolvconf -a <tun>.espgw`` (and taken back with
``resolvconf -d``), which keeps the host's own resolver configuration intact. NetBIOS name
servers (INTERNAL_IP4_NBNS) are logged and written to the state file alike, and nothing more.

Gateway (a connection with ``pools``): the pools' ranges are routed into the TUN, so the LAN's
answers to a virtual IP reach the CHILD SA whose remote selector is that address.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ike.config import ConnectionConfig
from ike.events import ChildSaDown, ChildSaUp, IkeSaDown, IkeSaUp, VirtualIpsAssigned
from tunnel.kernel.routes import RouteError, RouteTable

log = structlog.get_logger("espgw")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_HALVES = {4: ("0.0.0.0/1", "128.0.0.0/1"), 6: ("::/1", "8000::/1")}
_IFA_F_NODAD = 0x02
_RTNH_F_DEAD_OR_LINKDOWN = 0x01 | 0x10


def _hop(route: Any) -> dict:
    """The next hop of a route read from the kernel: oif, gateway (the first of a multipath
    route), and its type for comparing with what we want."""
    hop = {"oif": route.get_attr("RTA_OIF"), "gateway": route.get_attr("RTA_GATEWAY"), "type": route["type"]}
    multipath = route.get_attr("RTA_MULTIPATH")
    if hop["oif"] is None and multipath:
        first = multipath[0]
        hop["oif"], hop["gateway"] = first["oif"], first.get_attr("RTA_GATEWAY")
    return hop


def _host_route(gateway: str) -> dict[str, Any]:
    """The destination part of a host route to ``gateway`` (a /32 or /128)."""
    address = ipaddress.ip_address(gateway)
    return {"dst": gateway, "dst_len": address.max_prefixlen, "family": 10 if address.version == 6 else 2}


def _unreachable(gateway: str) -> dict:
    return {**_host_route(gateway), "type": "unreachable"}


def _same_path(present: dict, want: dict) -> bool:
    if want.get("type") == "unreachable":
        return present.get("type") == 7  # RTN_UNREACHABLE
    return present.get("type") == 1 and present.get("oif") == want["oif"] and \
        (present.get("gateway") or None) == (want.get("gateway") or None)


def pool_networks(connections: list[ConnectionConfig], pools: list[Any]) -> list[IPNetwork]:
    """Gateway: the networks covering the pools the connections lend from (routed into the TUN)."""
    used = {name for conn in connections for name in conn.pools}
    out: list[IPNetwork] = []
    for pool in pools:
        if pool.name in used:
            out += ipaddress.summarize_address_range(pool.first, pool.last)
    return out


def route_networks(selector_start: Any, selector_end: Any) -> list[IPNetwork]:
    """The networks to route for a remote selector; a whole family becomes its two halves."""
    nets = list(ipaddress.summarize_address_range(selector_start, selector_end))
    if len(nets) == 1 and nets[0].prefixlen == 0:
        return [ipaddress.ip_network(half) for half in _HALVES[nets[0].version]]
    return nets


@dataclass
class _Client:
    """One IKE SA's virtual IPs and DNS servers, and the routes its CHILD SAs asked for."""

    name: str
    gateway: str  # the peer's outer address
    vips: tuple[str, ...]
    dns: tuple[str, ...]
    nbns: tuple[str, ...] = ()  # NetBIOS name servers: recorded like DNS, never applied to the host
    children: dict[int, list[str]] = field(default_factory=dict)  # inbound SPI -> routed networks


class VirtualIpClient:
    """The client side, driven by the IKE events the gateway daemon already handles."""

    def __init__(self, tun_name: str, state_file: Path, dns_mode: str = "state") -> None:
        self.tun_name = tun_name
        self.state_file = state_file
        self.dns_mode = dns_mode
        self.routes = RouteTable(tun_name)
        self.clients: dict[int, _Client] = {}  # by IKE SA unique id
        self.remotes: dict[int, tuple[str, int]] = {}  # IKE SA unique id -> peer (address, port)
        self.addresses: dict[str, int] = {}  # address on the TUN -> IKE SAs using it
        self.route_users: dict[str, int] = {}  # routed network -> CHILD SAs using it
        self.host_routes: dict[str, dict] = {}  # gateway address -> the route spec we added

    # --- events ----------------------------------------------------------------------------
    def on_event(self, event: object) -> None:
        try:
            self._on_event(event)
        except (OSError, NetlinkError, RouteError) as exc:  # a failed route must not stop the daemon
            log.error("virtual_ip.failed", ike_event=type(event).__name__, error=str(exc))

    def _on_event(self, event: object) -> None:
        if isinstance(event, IkeSaUp):
            self.remotes[event.unique_id] = event.remote
            old = event.rekeyed_from
            if old is not None and old in self.clients:  # an IKE rekey: the new SA holds it all
                self.clients[event.unique_id] = self.clients.pop(old)
                self.remotes.pop(old, None)
        elif isinstance(event, VirtualIpsAssigned):
            self._assigned(event)
        elif isinstance(event, ChildSaUp) and event.ike_unique_id in self.clients:
            self._child_up(self.clients[event.ike_unique_id], event)
        elif isinstance(event, ChildSaDown):
            for client in self.clients.values():
                if event.inbound_spi in client.children:
                    self._unroute(client.children.pop(event.inbound_spi))
        elif isinstance(event, IkeSaDown):
            self.remotes.pop(event.unique_id, None)
            gone = self.clients.pop(event.unique_id, None)
            if gone is not None:
                self._release(gone)

    def _assigned(self, event: VirtualIpsAssigned) -> None:
        remote = self.remotes.get(event.ike_unique_id, ("", 0))
        client = _Client(event.ike_name, remote[0], event.vips, event.dns, event.nbns)
        old = self.clients.pop(event.ike_unique_id, None)
        if old is not None:
            self._release(old)
        self.clients[event.ike_unique_id] = client
        for vip in client.vips:
            if self.addresses.get(vip, 0) == 0:
                self._address("add", vip)
            self.addresses[vip] = self.addresses.get(vip, 0) + 1
        log.info("virtual_ip.assigned", connection=event.ike_name, vips=list(event.vips), dns=list(event.dns),
                 subnets=list(event.subnets), nbns=list(event.nbns), dns_mode=self.dns_mode)
        self._write_state()
        if self.dns_mode == "resolvconf" and client.dns:
            self._resolvconf(client.dns)

    def _child_up(self, client: _Client, up: ChildSaUp) -> None:
        networks = []
        for ts in up.remote_ts:
            src = next((v for v in client.vips if ipaddress.ip_address(v).version == ts.version), None)
            for net in route_networks(ts.start_addr, ts.end_addr):
                key = str(net)
                if self.route_users.get(key, 0) == 0:
                    if net.prefixlen <= 1 and client.gateway:
                        self._keep_gateway_outside(client.gateway)
                    self.routes.add(key, src=src)
                self.route_users[key] = self.route_users.get(key, 0) + 1
                networks.append(key)
        client.children[up.inbound_spi] = networks

    def _unroute(self, networks: list[str]) -> None:
        for key in networks:
            left = self.route_users.get(key, 0) - 1
            if left > 0:
                self.route_users[key] = left
                continue
            self.route_users.pop(key, None)
            self.routes.remove(key)
        if not any(ipaddress.ip_network(k).prefixlen <= 1 for k in self.route_users):
            self._drop_host_routes()

    def _release(self, client: _Client) -> None:
        for networks in client.children.values():
            self._unroute(networks)
        client.children.clear()
        for vip in client.vips:
            left = self.addresses.get(vip, 0) - 1
            if left > 0:
                self.addresses[vip] = left
                continue
            self.addresses.pop(vip, None)
            self._address("del", vip)
        log.info("virtual_ip.released", connection=client.name, vips=list(client.vips))
        self._write_state()
        if self.dns_mode == "resolvconf" and client.dns and not any(c.dns for c in self.clients.values()):
            self._resolvconf(())

    def close(self) -> None:
        """On exit: every address, route, host route and DNS entry this module added."""
        for uid in list(self.clients):
            try:
                self._release(self.clients.pop(uid))
            except (OSError, NetlinkError, RouteError) as exc:
                log.error("virtual_ip.cleanup_failed", error=str(exc))
        self._drop_host_routes()
        try:
            self.state_file.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("virtual_ip.state_file_not_removed", path=str(self.state_file), error=str(exc))

    # --- status ---------------------------------------------------------------------------------
    def status(self) -> list[dict]:
        return [{"connection": c.name, "ike_id": uid, "vips": list(c.vips), "dns": list(c.dns), "nbns": list(c.nbns),
                 "routes": sorted({n for nets in c.children.values() for n in nets})}
                for uid, c in self.clients.items()]

    def _write_state(self) -> None:
        """The DNS servers and addresses for people and scripts (``dns = "state"``, the default)."""
        if not self.clients:
            try:
                self.state_file.unlink()
            except FileNotFoundError:
                pass
            return
        tmp = self.state_file.with_suffix(".tmp")
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"tun": self.tun_name, "virtual_ips": self.status()}, indent=1) + "\n")
            os.replace(tmp, self.state_file)
        except OSError as exc:
            log.warning("virtual_ip.state_file_not_written", path=str(self.state_file), error=str(exc))

    # --- the kernel -----------------------------------------------------------------------------
    def _address(self, command: str, vip: str) -> None:
        address = ipaddress.ip_address(vip)
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=self.tun_name)
            if not found:
                return
            # no duplicate address detection: the address is ours (lent by the gateway) and usable at once
            extra = {"flags": _IFA_F_NODAD} if address.version == 6 and command == "add" else {}
            try:
                ipr.addr(command, index=found[0], address=vip, prefixlen=address.max_prefixlen, **extra)
            except NetlinkError as exc:
                if command == "del" or exc.code != 17:  # EEXIST: already there (a restart)
                    raise
        log.info("virtual_ip.address_" + ("added" if command == "add" else "removed"), address=vip,
                 ifname=self.tun_name)

    def _keep_gateway_outside(self, gateway: str) -> None:
        """Before routing a whole family into the TUN: the gateway stays reachable through the
        next hop it has now (the host route added here is removed with the last such route)."""
        if gateway in self.host_routes:
            return
        with IPRoute() as ipr:
            path, present = self._outside_path(ipr, gateway)
            if path is None:
                raise RouteError(113, f"no route to the gateway {gateway}")
            if present is not None:  # the host has such a route already: leave it alone
                return
            try:
                ipr.route("add", **path)
            except NetlinkError as exc:
                if exc.code != 17:  # EEXIST: as above
                    raise
                return
        self.host_routes[gateway] = path
        log.info("virtual_ip.gateway_route_added", gateway=gateway, via=path.get("gateway") or "direct")

    def follow_gateway_paths(self) -> None:
        """Housekeeping (each second, before roaming looks for a new source address): the host
        route to each gateway follows the path the host has now outside the tunnel. When the
        laptop changes networks its old next hop goes (the kernel drops routes through a link
        that went down) and the gateway would be routed into its own tunnel: the route is set
        through the new next hop, or, while there is none, to ``unreachable`` so that IKE and ESP
        fail at once instead of looping through the TUN."""
        if not self.host_routes:
            return
        try:
            with IPRoute() as ipr:
                for gateway in list(self.host_routes):
                    self._follow(ipr, gateway)
        except (OSError, NetlinkError, RouteError) as exc:
            log.error("virtual_ip.gateway_route_failed", error=str(exc))

    def _follow(self, ipr: Any, gateway: str) -> None:
        path, present = self._outside_path(ipr, gateway, ours=True)
        want = path if path is not None else _unreachable(gateway)
        if present is not None and _same_path(present, want):
            return
        ipr.route("replace", **want)
        self.host_routes[gateway] = want
        log.info("virtual_ip.gateway_route_moved", gateway=gateway,
                 via=want.get("gateway") or ("unreachable" if path is None else "direct"), oif=want.get("oif"))

    def _outside_path(self, ipr: Any, gateway: str, ours: bool = False) -> tuple[dict | None, dict | None]:
        """(the route spec to ``gateway`` outside the TUN, the /32 or /128 route to it there is
        now): a longest-prefix match over the main table, leaving out routes into our TUN and
        (``ours``) the host route we added, which may be stale."""
        spec: dict[str, Any] = _host_route(gateway)
        address, family = ipaddress.ip_address(gateway), spec["family"]
        tun = set(ipr.link_lookup(ifname=self.tun_name))
        best: tuple[tuple[int, int], dict] | None = None
        present = None
        for route in ipr.get_routes(family=family, table=254):
            dst_len = route["dst_len"]
            dst = route.get_attr("RTA_DST") or ("::" if family == 10 else "0.0.0.0")
            if address not in ipaddress.ip_network(f"{dst}/{dst_len}", strict=False):
                continue
            hop = _hop(route)
            if dst_len == address.max_prefixlen:
                present = hop
                if ours:
                    continue
            if route["type"] != 1 or hop.get("oif") in tun or hop.get("oif") is None:  # 1: RTN_UNICAST
                continue
            if route["flags"] & _RTNH_F_DEAD_OR_LINKDOWN:
                continue
            key = (dst_len, -(route.get_attr("RTA_PRIORITY") or 0))
            if best is None or key > best[0]:
                best = (key, hop)
        if best is None:
            return None, present
        spec["oif"] = best[1]["oif"]
        if best[1].get("gateway"):
            spec["gateway"] = best[1]["gateway"]
        return spec, present

    def _drop_host_routes(self) -> None:
        for gateway, spec in list(self.host_routes.items()):
            try:
                with IPRoute() as ipr:
                    ipr.route("del", **spec)
            except NetlinkError as exc:
                if exc.code not in (3, 2, 19):  # gone already
                    log.warning("virtual_ip.gateway_route_not_removed", gateway=gateway, error=str(exc))
            del self.host_routes[gateway]
            log.info("virtual_ip.gateway_route_removed", gateway=gateway)

    def _resolvconf(self, servers: tuple[str, ...] | tuple[()]) -> None:
        """Hand the servers to resolvconf(8) under our interface's name, or take them back."""
        tool = shutil.which("resolvconf")
        if tool is None:
            log.error("virtual_ip.no_resolvconf", hint='dns = "resolvconf" needs resolvconf(8) installed')
            return
        entry = f"{self.tun_name}.espgw"
        args, text = ([tool, "-a", entry], "".join(f"nameserver {s}\n" for s in servers)) if servers \
            else ([tool, "-d", entry, "-f"], "")
        try:
            subprocess.run(args, input=text, text=True, check=True, timeout=10, capture_output=True)
        except (OSError, subprocess.SubprocessError) as exc:
            log.error("virtual_ip.resolvconf_failed", error=str(exc)[:300])
