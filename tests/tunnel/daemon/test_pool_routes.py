"""The gateway's pool routes follow the pools in use: a reload that drops a pool's connection,
vici's unload-conn, unload-pool and a load-pool with another range remove the routes no pool or
connection needs any more (#15). Devices are stand-ins (``test_operations``'s fixture)."""

from __future__ import annotations

import ipaddress
import selectors

import pytest

from ike.config import TrafficSelector
from ike.pools import AddressPool
from tests.tunnel.daemon import test_operations
from tests.tunnel.daemon.test_operations import PSK, config_text, connection_toml
from tunnel.daemon.vici import ViciDaemon
from tunnel.ops.config import parse_config


def pool_toml(name: str = "rw", addrs: str = "10.3.0.0/28", conn: str = "rw") -> str:
    return f"""
[pools.{name}]
addrs = "{addrs}"
[connections.{conn}]
local_addrs = "192.0.2.1"
remote_addrs = "%any"
pools = ["{name}"]
[connections.{conn}.remote]
id = "laptop.lab"
[connections.{conn}.children.{conn}-net]
local_ts = "10.0.5.0/24"
[secrets.ike-{conn}]
id = "laptop.lab"
secret = "{PSK}"
"""


make_gateway = test_operations.make_gateway  # the fixture: a Gateway with stand-in devices


def nets(addrs: str) -> set[str]:
    pool = AddressPool("x", addrs)
    return {str(n) for n in ipaddress.summarize_address_range(pool.first, pool.last)}


def routed(gw) -> set[str]:
    return set(gw.routes.routes)


def test_a_reload_that_drops_the_pools_connection_removes_its_routes(make_gateway):
    gw, clock, path = make_gateway(pool_toml(), connection_toml("site"))
    assert nets("10.3.0.0/28") | {"10.0.5.0/24"} == routed(gw)
    path.write_text(config_text(connection_toml("site")))  # the pool and its connection are gone
    answer = gw.handle_control({"cmd": "reload"})
    assert answer["removed"] == ["rw"]
    assert routed(gw) == {"10.0.5.0/24"} and not gw.pool_routes


def test_a_route_a_remote_selector_still_needs_stays(make_gateway):
    # a site whose remote selector is the pool's first address: dropping the pool keeps that route
    gw, clock, path = make_gateway(pool_toml(), connection_toml("site"))
    gw.remove_connection("site", clock.now)
    assert routed(gw) == nets("10.3.0.0/28")
    site = parse_config(config_text(connection_toml("site"))).connections[0]
    site.children[0].remote_ts = [TrafficSelector.from_cidr("10.3.0.1/32")]
    gw.apply_connection(site, clock.now)
    gw.remove_connection("rw", clock.now)
    assert routed(gw) == {"10.3.0.1/32"}


@pytest.fixture
def vici(make_gateway, tmp_path):
    gw, clock, path = make_gateway(connection_toml("site"))
    daemon = ViciDaemon(gw, str(tmp_path / "charon.vici"), selectors.DefaultSelector())
    yield gw, clock, daemon
    daemon.close()


def test_vici_pool_and_connection_routes_come_and_go(vici):
    gw, clock, daemon = vici
    assert daemon.handlers["load-pool"]({"extra": {"addrs": b"10.4.0.0/28"}}) == {"success": True}
    assert routed(gw) == {"10.0.5.0/24"}  # no connection lends from it yet
    conn = parse_config(pool_toml("extra", "10.4.0.0/28")).connection("rw")
    gw.apply_connection(conn, clock.now)  # what vici's load-conn does
    assert routed(gw) == {"10.0.5.0/24"} | nets("10.4.0.0/28")
    # another range (no online leases): the old range's routes go, the new one's come
    assert daemon.handlers["load-pool"]({"extra": {"addrs": b"10.4.1.0/29"}}) == {"success": True}
    assert routed(gw) == {"10.0.5.0/24"} | nets("10.4.1.0/29")
    # unload-conn: no connection lends from the pool any more
    gw.remove_connection("rw", clock.now)
    assert routed(gw) == {"10.0.5.0/24"}
    gw.apply_connection(conn, clock.now)
    assert routed(gw) == {"10.0.5.0/24"} | nets("10.4.1.0/29")
    # unload-pool: the connection still names it, but there is nothing to lend
    assert daemon.handlers["unload-pool"]({"name": b"extra"}) == {"success": True}
    assert routed(gw) == {"10.0.5.0/24"} and not gw.pool_routes


def test_a_route_the_kernel_refuses_is_a_vici_error_not_a_traceback(vici):
    gw, clock, daemon = vici
    daemon.handlers["load-pool"]({"extra": {"addrs": b"10.4.0.0/30"}})
    gw.routes.refuse = {"10.4.0.1/32"}
    conn = parse_config(pool_toml("extra", "10.4.0.0/30")).connection("rw")
    gw.config.connections.append(conn)  # as apply_connection, without its own route step
    answer = daemon.handlers["load-pool"]({"extra": {"addrs": b"10.4.0.0/30"}})
    assert answer["success"] is False and "pool routes" in str(answer["errmsg"])
