"""tunnel.daemon.virtual_ip without a kernel: what the client adds and removes, by IKE event."""

from __future__ import annotations

import json

from ike.config import TrafficSelector
from ike.events import ChildSaDown, ChildSaUp, IkeSaDown, IkeSaUp, VirtualIpsAssigned
from ike.pools import AddressPool
from tunnel.daemon import virtual_ip
from tunnel.daemon.virtual_ip import VirtualIpClient, pool_networks, route_networks
from tunnel.ops.cli import render_status
from tests.ike.harness import connection


class FakeKernel:
    def __init__(self, client: VirtualIpClient):
        self.addresses: list[str] = []
        self.routes: dict[str, str | None] = {}
        self.host_routes: list[str] = []
        client._address = self.address  # type: ignore[method-assign]
        client.routes.add = lambda net, src=None: self.routes.__setitem__(net, src)  # type: ignore[method-assign]
        client.routes.remove = lambda net: self.routes.pop(net, None) is not None  # type: ignore[method-assign]
        client._keep_gateway_outside = self.keep  # type: ignore[method-assign]

    def address(self, command: str, vip: str) -> None:
        (self.addresses.append if command == "add" else self.addresses.remove)(vip)

    def keep(self, gateway: str) -> None:
        if gateway not in self.host_routes:  # as the real one: one host route per gateway
            self.host_routes.append(gateway)


def _up(uid=1, remote=("192.0.2.2", 4500), rekeyed_from=None):
    return IkeSaUp("rw", uid, ("192.0.2.1", 4500), remote, b"i" * 8, b"r" * 8, True, "p", "laptop", "gw",
                   False, False, rekeyed_from)


def _child(ike_id, spi, remote="10.0.5.0/24", rekeyed_from=None):
    return ChildSaUp("rw", ike_id, "rw", spi, spi, spi + 1, "aes256gcm16", False, "tunnel",
                     (TrafficSelector.from_cidr("10.3.0.1/32"),), (TrafficSelector.from_cidr(remote),),
                     ("192.0.2.1", 4500), ("192.0.2.2", 4500), True, 0.0, 0.0, 64, 0, "aes256gcm16",
                     b"", b"", rekeyed_from)


def test_address_routes_and_state_follow_the_ike_sa(tmp_path):
    client = VirtualIpClient("espgw0", tmp_path / "espgw0-vip.json")
    kernel = FakeKernel(client)
    client.on_event(_up())
    client.on_event(VirtualIpsAssigned("rw", 1, ("10.3.0.1",), ("10.0.5.53",), ("10.0.5.0/24",)))
    client.on_event(_child(1, 1000))
    assert kernel.addresses == ["10.3.0.1"] and kernel.routes == {"10.0.5.0/24": "10.3.0.1"}
    state = json.loads((tmp_path / "espgw0-vip.json").read_text())
    assert state["virtual_ips"][0]["dns"] == ["10.0.5.53"]
    # an IKE rekey and a CHILD rekey change nothing the host sees
    client.on_event(_up(2, rekeyed_from=1))
    client.on_event(IkeSaDown("rw", 1, "rekeyed"))
    client.on_event(_child(2, 2000, rekeyed_from=1000))
    client.on_event(ChildSaDown("rw", "rw", 1000, 1000, 1001, "rekeyed"))
    assert kernel.addresses == ["10.3.0.1"] and kernel.routes == {"10.0.5.0/24": "10.3.0.1"}
    client.on_event(IkeSaDown("rw", 2, "deleted"))
    assert kernel.addresses == [] and kernel.routes == {}
    assert not (tmp_path / "espgw0-vip.json").exists()


def test_a_whole_family_is_routed_as_two_halves_with_the_gateway_kept_outside(tmp_path):
    client = VirtualIpClient("espgw0", tmp_path / "state.json")
    kernel = FakeKernel(client)
    client.on_event(_up())
    client.on_event(VirtualIpsAssigned("rw", 1, ("10.3.0.1",)))
    client.on_event(_child(1, 1000, remote="0.0.0.0/0"))
    assert set(kernel.routes) == {"0.0.0.0/1", "128.0.0.0/1"} and kernel.host_routes == ["192.0.2.2"]
    client.close()
    assert kernel.routes == {} and kernel.addresses == []


def test_kernel_errors_are_logged_not_raised(tmp_path, monkeypatch):
    client = VirtualIpClient("espgw0", tmp_path / "state.json")

    def fail(command, vip):
        raise OSError(1, "Operation not permitted")
    monkeypatch.setattr(client, "_address", fail)
    client.on_event(_up())
    client.on_event(VirtualIpsAssigned("rw", 1, ("10.3.0.1",)))  # no exception


def test_route_networks_and_pool_networks():
    everything = TrafficSelector.from_cidr("::/0")
    assert [str(n) for n in route_networks(everything.start_addr, everything.end_addr)] == ["::/1", "8000::/1"]
    gw = connection("rw", "192.0.2.2", "%any")
    gw.pools = ["rw"]
    pools = [AddressPool("rw", "10.3.0.0/28"), AddressPool("unused", "10.4.0.0/24")]
    assert [str(n) for n in pool_networks([gw], pools)] == [
        "10.3.0.1/32", "10.3.0.2/31", "10.3.0.4/30", "10.3.0.8/30", "10.3.0.12/31", "10.3.0.14/32"]
    assert virtual_ip.log is not None


def test_nbns_servers_are_recorded_like_dns_and_never_applied(tmp_path, monkeypatch):
    client = VirtualIpClient("espgw0", tmp_path / "espgw0-vip.json", dns_mode="resolvconf")
    FakeKernel(client)
    handed: list[tuple] = []
    monkeypatch.setattr(client, "_resolvconf", handed.append)
    client.on_event(_up())
    client.on_event(VirtualIpsAssigned("rw", 1, ("10.3.0.1",), ("10.0.5.53",), (), ("10.0.5.5",)))
    (status,) = client.status()
    assert status["nbns"] == ["10.0.5.5"] and status["dns"] == ["10.0.5.53"]
    state = json.loads((tmp_path / "espgw0-vip.json").read_text())
    assert state["virtual_ips"][0]["nbns"] == ["10.0.5.5"]
    assert handed == [("10.0.5.53",)]  # resolvconf hears of the DNS servers only
    text = render_status({"virtual_ips": client.status()})
    assert "DNS 10.0.5.53, NBNS 10.0.5.5, routes -" in text


class _Route(dict):
    """A route as pyroute2 reads it: header fields by key, attributes by get_attr."""

    def __init__(self, dst, dst_len, oif=None, gateway=None, rtype=1, flags=0, priority=None):
        super().__init__(dst_len=dst_len, type=rtype, flags=flags)
        self.attrs = {"RTA_DST": dst, "RTA_OIF": oif, "RTA_GATEWAY": gateway, "RTA_PRIORITY": priority}

    def get_attr(self, name):
        return self.attrs.get(name)


class FakeNetlink:
    """The laptop's main table: links by index (3 = our TUN), routes, and what we asked of it."""

    TUN, CAFE, HOTEL = 3, 2, 4

    def __init__(self):
        self.table: list[_Route] = []
        self.calls: list[tuple[str, dict]] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def link_lookup(self, ifname):
        return [self.TUN] if ifname == "espgw0" else []

    def get_routes(self, family, table):
        return list(self.table)

    def route(self, command, **spec):
        self.calls.append((command, spec))
        self.table = [r for r in self.table if not (r["dst_len"] == 32 and r.get_attr("RTA_DST") == spec["dst"])]
        if command in ("add", "replace"):
            rtype = 7 if spec.get("type") == "unreachable" else 1
            self.table.append(_Route(spec["dst"], 32, spec.get("oif"), spec.get("gateway"), rtype))


def test_the_gateway_host_route_follows_the_path_outside_the_tunnel(tmp_path, monkeypatch):
    kernel = FakeNetlink()
    monkeypatch.setattr(virtual_ip, "IPRoute", lambda: kernel)
    cafe_default = _Route(None, 0, FakeNetlink.CAFE, "192.168.1.1")
    halves = [_Route("0.0.0.0", 1, FakeNetlink.TUN), _Route("128.0.0.0", 1, FakeNetlink.TUN)]
    kernel.table = [cafe_default]
    client = VirtualIpClient("espgw0", tmp_path / "state.json")
    client._keep_gateway_outside("192.0.2.2")
    assert kernel.calls == [("add", {"dst": "192.0.2.2", "dst_len": 32, "family": 2, "oif": 2,
                                     "gateway": "192.168.1.1"})]
    kernel.table += halves
    client.follow_gateway_paths()
    assert len(kernel.calls) == 1  # the path is the same: nothing to do
    # the cafe link goes down: the kernel drops the default and our host route; the halves stay
    kernel.table = list(halves)
    client.follow_gateway_paths()
    assert kernel.calls[-1] == ("replace", {"dst": "192.0.2.2", "dst_len": 32, "family": 2, "type": "unreachable"})
    client.follow_gateway_paths()
    assert len(kernel.calls) == 2  # unreachable it stays until there is a way out
    kernel.table.append(_Route(None, 0, FakeNetlink.HOTEL, "172.16.7.1"))
    client.follow_gateway_paths()
    assert kernel.calls[-1] == ("replace", {"dst": "192.0.2.2", "dst_len": 32, "family": 2, "oif": 4,
                                            "gateway": "172.16.7.1"})
    # a new default route on the same link (another next hop) is followed too, lower metrics win
    kernel.table += [_Route(None, 0, FakeNetlink.HOTEL, "172.16.7.254", priority=5),
                     _Route(None, 0, FakeNetlink.HOTEL, "172.16.7.99", priority=50)]
    kernel.table = [r for r in kernel.table if r.get_attr("RTA_GATEWAY") != "172.16.7.1" or r["dst_len"] == 32]
    client.follow_gateway_paths()
    assert kernel.calls[-1][1]["gateway"] == "172.16.7.254"
    client.close()
    assert kernel.calls[-1][0] == "del" and not [r for r in kernel.table if r["dst_len"] == 32]


def test_a_host_route_the_host_has_already_is_left_alone(tmp_path, monkeypatch):
    kernel = FakeNetlink()
    monkeypatch.setattr(virtual_ip, "IPRoute", lambda: kernel)
    kernel.table = [_Route(None, 0, FakeNetlink.CAFE, "192.168.1.1"),
                    _Route("192.0.2.2", 32, FakeNetlink.CAFE, "192.168.1.9")]
    client = VirtualIpClient("espgw0", tmp_path / "state.json")
    client._keep_gateway_outside("192.0.2.2")
    client.follow_gateway_paths()
    client.close()
    assert kernel.calls == [] and not client.host_routes
