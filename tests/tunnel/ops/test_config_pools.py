"""Virtual IP keys of the configuration: ``vips``, ``pools``, ``[pools.NAME]``, dynamic selectors."""

from __future__ import annotations

import pytest

from tunnel.ops.config import ConfigError, parse_config

GATEWAY = """
[pools.rw]
addrs = "10.3.0.0/28"
dns = ["10.2.0.53", "fd00::53"]
subnet = "10.2.0.0/16"

[pools.rw6]
addrs = "fd00:3::1-fd00:3::ff"

[connections.rw]
remote_addrs = "%any"
pools = ["rw", "rw6"]
local.id = "gw.example.org"
[connections.rw.children.net]
local_ts = "10.2.0.0/16"

[secrets.ike-rw]
secret = "correct horse battery staple"
"""

CLIENT = """
[connections.office]
remote_addrs = "192.0.2.2"
vips = ["0.0.0.0", "%any6"]
local.id = "alice@example.org"
[connections.office.children.net]
remote_ts = "0.0.0.0/0"

[secrets.ike-office]
secret = "correct horse battery staple"
"""


def errors(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "espgw.toml")
    return "\n".join(info.value.problems)


def test_gateway_pools_and_dynamic_remote_selector():
    config = parse_config(GATEWAY)
    rw, rw6 = config.pools
    assert (rw.name, str(rw.first), rw.size) == ("rw", "10.3.0.1", 14)
    assert [str(d) for d in rw.dns] == ["10.2.0.53", "fd00::53"] and [str(n) for n in rw.subnets] == ["10.2.0.0/16"]
    assert (str(rw6.first), rw6.size) == ("fd00:3::1", 255)
    conn = config.connection("rw")
    assert conn.pools == ["rw", "rw6"]
    child = conn.children[0]
    assert (child.local_dynamic, [str(t) for t in child.local_ts]) == (False, ["10.2.0.0/16"])
    assert (child.remote_dynamic, child.remote_ts) == (True, [])


def test_client_vips_and_dynamic_local_selector():
    conn = parse_config(CLIENT).connection("office")
    assert conn.vips == ["0.0.0.0", "::"]
    child = conn.children[0]
    assert child.local_dynamic and child.local_ts == [] and not child.remote_dynamic


def test_dynamic_next_to_subnets():
    text = CLIENT.replace('remote_ts = "0.0.0.0/0"', 'remote_ts = "0.0.0.0/0"\nlocal_ts = "dynamic, 10.9.0.0/24"')
    child = parse_config(text).connection("office").children[0]
    assert child.local_dynamic and [str(t) for t in child.local_ts] == ["10.9.0.0/24"]


def test_overlapping_pools_are_refused():
    text = GATEWAY.replace('addrs = "fd00:3::1-fd00:3::ff"', 'addrs = "10.3.0.10-10.3.0.20"')
    assert "pools.rw6.addrs: 10.3.0.10-10.3.0.20 overlaps pool 'rw' (10.3.0.0/28)" in errors(text)


@pytest.mark.parametrize("change, fragment", [
    (('pools = ["rw", "rw6"]', 'pools = ["rw", "nope"]'), "connections.rw.pools: no pool 'nope'"),
    (('addrs = "10.3.0.0/28"', 'addrs = "10.3.0.0/33"'), "pools.rw.addrs: expected a subnet"),
    (('addrs = "10.3.0.0/28"', 'addrs = "10.3.0.20-10.3.0.1"'), "ends before it starts"),
    (('dns = ["10.2.0.53", "fd00::53"]', 'dns = ["dns.example"]'), "pools.rw.dns: expected IP addresses"),
    (('subnet = "10.2.0.0/16"', 'subnet = "10.2.0.0/40"'), "pools.rw.subnet: expected subnets"),
    (('subnet = "10.2.0.0/16"', 'dhcp = "10.2.0.1"'), "pools.rw.dhcp: unknown key"),
    (('subnet = "10.2.0.0/16"', 'nbns = ["10.2.0.5", "fd00::5"]'),
     "pools.rw.nbns: expected IPv4 addresses (fd00::5 is IPv6: IKEv2 has no IPv6 NetBIOS name server attribute)"),
    (('subnet = "10.2.0.0/16"', 'netmask = "255.0.255.0"'),
     'pools.rw.netmask: expected an IPv4 netmask like "255.255.255.0"'),
    (('subnet = "10.2.0.0/16"', 'netmask = 24'), "pools.rw.netmask: expected an IPv4 netmask"),
    (('addrs = "fd00:3::1-fd00:3::ff"', 'addrs = "fd00:3::1-fd00:3::ff"\nnetmask = "255.255.255.0"'),
     "pools.rw6.netmask: INTERNAL_IP4_NETMASK goes with IPv4 addresses"),
    (('[pools.rw6]\naddrs = "fd00:3::1-fd00:3::ff"', '[pools.rw6]\ndns = "10.0.0.1"'), "pools.rw6.addrs: missing"),
])
def test_bad_pools_name_the_key(change, fragment):
    assert fragment in errors(GATEWAY.replace(*change))


@pytest.mark.parametrize("vips, fragment", [
    ('"10.3.0.300"', "vips: expected addresses"),
    ('["0.0.0.0", "10.3.0.1"]', "at most one address per IP version"),
])
def test_bad_vips(vips, fragment):
    assert fragment in errors(CLIENT.replace('["0.0.0.0", "%any6"]', vips))


def test_nbns_and_netmask_as_swanctl():
    text = GATEWAY.replace('subnet = "10.2.0.0/16"', 'subnet = "10.2.0.0/16"\nnbns = ["10.2.0.5", "10.2.0.6"]\n'
                           'netmask = "255.255.255.240"')
    rw = parse_config(text).pools[0]
    assert [str(n) for n in rw.nbns] == ["10.2.0.5", "10.2.0.6"] and str(rw.netmask) == "255.255.255.240"
    assert parse_config(GATEWAY).pools[0].nbns == () and parse_config(GATEWAY).pools[0].netmask is None
