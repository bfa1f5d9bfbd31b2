"""The cafe in the namespace lab: a laptop that is its own tunnel endpoint, behind a real NAT.

``CafeLab`` is a ``tunnel.lab.netns.Lab`` whose roles are read as the issue tells the story:

    laptop (hostA) -- cafe router (gwA, nftables masquerade) -- public link -- office gateway (gwB) -- dashboard (hostB)
      192.168.1.7        192.168.1.1 | 192.0.2.1                               192.0.2.2 | 10.0.5.1    10.0.5.9

The laptop's own address inside the tunnel, 10.0.0.7/32, sits on its loopback (the cafe LAN
address is only the outer one), so the tunnel's inner address stays when the laptop moves.
``add_hotel()`` builds a second network with its own NAT (namespace ``PREFIX-hotel``): laptop
eth1 172.16.7.7 -- hotel router 172.16.7.1 | 198.51.100.1 -- office gateway wan1 198.51.100.2,
and ``move_to_hotel()`` takes the laptop there (the cafe link goes down, the default route
changes). ``restart_nat()`` changes the masquerade port range and flushes the router's
connection tracking: the laptop's public port changes, as when a cafe router restarts.

nftables rules live only in the routers' namespaces; every namespace is removed with the lab.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys

from pyroute2 import NetNS, netns

from ike.config import AuthConfig, ChildConfig, ConnectionConfig, TrafficSelector
from tunnel.lab.configs import LAB_PSK
from tunnel.lab.netns import Lab, LabError

CAFE_LAN = "192.168.1.0/24"
LAPTOP_CAFE_IP, CAFE_ROUTER_LAN = "192.168.1.7", "192.168.1.1"
LAPTOP_INNER = "10.0.0.7"  # the laptop's address in the tunnel
HOTEL_LAN_PREFIX, LAPTOP_HOTEL_IP, HOTEL_ROUTER_LAN = 24, "172.16.7.7", "172.16.7.1"
HOTEL_PUBLIC_PREFIX, HOTEL_PUBLIC, OFFICE_WAN1 = 24, "198.51.100.1", "198.51.100.2"
NAT_TABLE = "espgw_nat"
FIRST_PORTS = (20000, 20999)  # the cafe router's masquerade ports before a restart


class CafeLab(Lab):
    """The lab with gwA as the cafe's NAT router and hostA as the laptop (see the module doc)."""

    def __init__(self, prefix: str | None = None, *, ipv6: bool = False) -> None:
        # with ipv6 the LANs' IPv6 is routed, not translated: only for tunnelled IPv6 (inner addresses)
        super().__init__(prefix, ipv6=ipv6, lan_a4=CAFE_LAN, host_a4=LAPTOP_CAFE_IP, gw_a_lan4=CAFE_ROUTER_LAN)
        self.hotel_ns: str | None = None
        try:
            with NetNS(self.hostA.ns) as ipr:
                ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address=LAPTOP_INNER, prefixlen=32)
            self.masquerade(self.gwA.ns, self.gwA.wan_iface, FIRST_PORTS)
        except BaseException:
            self.close()
            raise

    @property
    def laptop(self):
        return self.hostA

    @property
    def cafe(self):
        return self.gwA

    @property
    def office(self):
        return self.gwB

    # -- NAT ---------------------------------------------------------------------------------

    def masquerade(self, ns: str, wan: str, ports: tuple[int, int] | None = None) -> None:
        """Source NAT of everything leaving ``wan`` in namespace ``ns`` (its table replaced)."""
        to = f" to :{ports[0]}-{ports[1]}" if ports else ""
        script = [f"table ip {NAT_TABLE} {{}}", f"delete table ip {NAT_TABLE}",
                  f"add table ip {NAT_TABLE}",
                  f"add chain ip {NAT_TABLE} post {{ type nat hook postrouting priority srcnat; }}",
                  f'add rule ip {NAT_TABLE} post oifname "{wan}" meta l4proto {{ tcp, udp }} counter masquerade{to}',
                  f'add rule ip {NAT_TABLE} post oifname "{wan}" counter masquerade']
        self.run(ns, "nft", "-f", "-", input="\n".join(script) + "\n")

    def flush_conntrack(self, ns: str) -> None:
        """Forget every NAT mapping of the router in ``ns`` (pyroute2's conntrack, inside it)."""
        code = "from pyroute2 import Conntrack\nwith Conntrack() as ct:\n    ct.flush()\n"
        self.run(ns, sys.executable, "-c", code)

    def restart_nat(self, ports: tuple[int, int]) -> None:
        """The cafe router restarts: other public ports, and no memory of the old mappings."""
        self.masquerade(self.gwA.ns, self.gwA.wan_iface, ports)
        self.flush_conntrack(self.gwA.ns)

    def nat_mappings(self, ns: str | None = None) -> str:
        """The router's conntrack table as text (for failure messages)."""
        code = ("from pyroute2 import Conntrack\nwith Conntrack() as ct:\n"
                "    for e in ct.dump_entries():\n        print(e)\n")
        return self.run(ns or self.gwA.ns, sys.executable, "-c", code, check=False).stdout

    # -- the second network ------------------------------------------------------------------

    def add_hotel(self) -> None:
        """A second network behind its own NAT, wired to the laptop (eth1, down) and the office."""
        if self.hotel_ns is not None:
            return
        name = f"{self.prefix}-hotel"
        if name in netns.listnetns():
            raise LabError(f"namespace {name} already exists")
        netns.create(name)
        self.hotel_ns = name
        self._created.append(name)  # removed with the lab's own namespaces
        self.run(name, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self._veth(self.hostA.ns, "eth1", name, "lan0")
        self._veth(name, "wan0", self.gwB.ns, "wan1")
        self._configure(name, "lan0", [ipaddress.ip_interface(f"{HOTEL_ROUTER_LAN}/{HOTEL_LAN_PREFIX}")])
        self._configure(name, "wan0", [ipaddress.ip_interface(f"{HOTEL_PUBLIC}/{HOTEL_PUBLIC_PREFIX}")])
        self._configure(self.gwB.ns, "wan1", [ipaddress.ip_interface(f"{OFFICE_WAN1}/{HOTEL_PUBLIC_PREFIX}")])
        with NetNS(name) as ipr:  # the office's public address is reached through its second link
            ipr.route("add", dst=str(self.gwB.wan4.network), gateway=OFFICE_WAN1)
        self.masquerade(name, "wan0")

    def move_to_hotel(self) -> None:
        """The laptop leaves the cafe: its cafe link goes down, the hotel's becomes its way out."""
        self.add_hotel()
        with NetNS(self.hostA.ns) as ipr:
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            eth1 = ipr.link_lookup(ifname="eth1")[0]
            ipr.addr("add", index=eth1, address=LAPTOP_HOTEL_IP, prefixlen=HOTEL_LAN_PREFIX)
            ipr.link("set", index=eth1, state="up")
            ipr.flush_addr(index=eth0)  # the cafe's DHCP lease is gone with its Wi-Fi
            ipr.link("set", index=eth0, state="down")
            ipr.route("replace", dst="default", gateway=HOTEL_ROUTER_LAN)

    def move_to_cafe(self) -> None:
        """Back to the cafe (undoes ``move_to_hotel``)."""
        with NetNS(self.hostA.ns) as ipr:
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.link("set", index=eth0, state="up")
            if not ipr.get_addr(index=eth0, family=2):
                ipr.addr("add", index=eth0, address=LAPTOP_CAFE_IP, prefixlen=self.hostA.ip4.network.prefixlen)
            ipr.route("replace", dst="default", gateway=CAFE_ROUTER_LAN)
            for eth1 in ipr.link_lookup(ifname="eth1"):
                ipr.flush_addr(index=eth1)
                ipr.link("set", index=eth1, state="down")

    def laptop_source_towards(self, dst: str) -> str:
        """The source address the laptop's kernel picks for ``dst`` now."""
        out = self.run(self.hostA, "ip", "-o", "route", "get", dst).stdout.split()
        return out[out.index("src") + 1] if "src" in out else ""

    def count_keepalives(self, pcap: str) -> list[float]:
        """Times of the NAT keepalives (UDP 4500, one 0xff byte) in a pcap."""
        out = subprocess.run(["tcpdump", "-nn", "-tt", "-r", pcap, "udp port 4500 and udp[4:2] = 9 and udp[8] = 0xff"],
                             capture_output=True, text=True, check=False).stdout
        return [float(line.split()[0]) for line in out.splitlines() if line.strip()]


def laptop_connection(*, mobike: bool = True, dpd_delay: float = 0.0, name: str = "office") -> ConnectionConfig:
    """The laptop's side: from wherever it is (%any) to the office gateway, 10.0.0.7 <-> 10.0.5.0/24."""
    return ConnectionConfig(
        name=name, local_addrs=["%any"], remote_addrs=["192.0.2.2"],
        local=AuthConfig(auth="psk", id="laptop.lab"), remote=AuthConfig(auth="psk", id="gwb.lab"), psk=LAB_PSK,
        children=[ChildConfig(name="dashboard", local_ts=[TrafficSelector.from_cidr(f"{LAPTOP_INNER}/32")],
                              remote_ts=[TrafficSelector.from_cidr("10.0.5.0/24")])],
        mobike=mobike, dpd_delay=dpd_delay)


def office_connection(*, mobike: bool = True, name: str = "office", encap: bool = False) -> ConnectionConfig:
    """The office gateway's side: any laptop address, the laptop's inner 10.0.0.7."""
    return ConnectionConfig(
        name=name, local_addrs=["192.0.2.2"], remote_addrs=["%any"],
        local=AuthConfig(auth="psk", id="gwb.lab"), remote=AuthConfig(auth="psk", id="laptop.lab"), psk=LAB_PSK,
        children=[ChildConfig(name="dashboard", local_ts=[TrafficSelector.from_cidr("10.0.5.0/24")],
                              remote_ts=[TrafficSelector.from_cidr(f"{LAPTOP_INNER}/32")])],
        mobike=mobike, encap=encap)


# -- remote access through the cafe NAT: the laptop asks the office for a virtual IP -----------

def psk_auth(local_id: str, remote_id: str) -> tuple[AuthConfig, AuthConfig]:
    return AuthConfig(auth="psk", id=local_id), AuthConfig(auth="psk", id=remote_id)


def rw_laptop(*, name: str = "rw", vips: tuple[str, ...] = ("0.0.0.0",), remote_ts: tuple[str, ...] = ("10.0.5.0/24",),
              auth: tuple[AuthConfig, AuthConfig] | None = None) -> ConnectionConfig:
    """The laptop's remote-access side: from wherever it is to the office, a virtual IP from it
    (``vips``), its own selector ``dynamic`` (narrowed to that address). ``auth``: (local, remote),
    PSK laptop.lab / gwb.lab unless given."""
    local, remote = auth or psk_auth("laptop.lab", "gwb.lab")
    child = ChildConfig(name=name, local_ts=[], remote_ts=[TrafficSelector.from_cidr(n) for n in remote_ts],
                        local_dynamic=True)
    return ConnectionConfig(name=name, local_addrs=["%any"], remote_addrs=["192.0.2.2"], local=local, remote=remote,
                            psk=LAB_PSK, vips=list(vips), children=[child])


def rw_office(*, name: str = "rw", pools: tuple[str, ...] = ("rw",), local_ts: tuple[str, ...] = ("10.0.5.0/24",),
              auth: tuple[AuthConfig, AuthConfig] | None = None) -> ConnectionConfig:
    """The office lending addresses from ``pools`` to laptops anywhere: the remote selector is
    ``dynamic`` (the lent address). ``auth``: (local, remote), PSK gwb.lab / laptop.lab unless given."""
    local, remote = auth or psk_auth("gwb.lab", "laptop.lab")
    child = ChildConfig(name=name, local_ts=[TrafficSelector.from_cidr(n) for n in local_ts], remote_ts=[],
                        remote_dynamic=True)
    return ConnectionConfig(name=name, local_addrs=["192.0.2.2"], remote_addrs=["%any"], local=local, remote=remote,
                            psk=LAB_PSK, pools=list(pools), children=[child])
