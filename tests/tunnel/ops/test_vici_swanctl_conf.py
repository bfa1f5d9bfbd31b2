"""tunnel.ops.vici.swanctl_conf: load-conn / load-shared / load-pool through espgw's config loader."""

from __future__ import annotations

import copy

import pytest

from ike.pools import AddressPool
from tunnel.ops.vici.swanctl_conf import ViciConfig, ViciConfigError, supported_keys

SECRET = b"fake-test-secret"
SHARED = {"id": b"ike-office", "type": b"ike", "data": SECRET, "owners": [b"gw-a.example.net", b"gw-b.example.net"]}
CONN = {"office": {
    "version": b"2", "local_addrs": [b"192.0.2.1"], "remote_addrs": [b"192.0.2.2"],
    "proposals": [b"aes256gcm16-prfsha256-ecp256"], "dpd_delay": b"30s", "encap": b"yes", "local_port": b"4500",
    "local": {"auth": b"psk", "id": b"gw-a.example.net"}, "remote": {"auth": b"psk", "id": b"gw-b.example.net"},
    "children": {"lan": {"local_ts": [b"10.0.0.0/24"], "remote_ts": [b"10.0.5.0/24"],
                         "esp_proposals": [b"aes128gcm16"], "start_action": b"trap", "rekey_time": b"1h",
                         "rekey_bytes": b"500M"}},
}}


def loaded() -> ViciConfig:
    config = ViciConfig()
    config.load_shared(SHARED)
    return config


def conn_with(change) -> dict:
    message = copy.deepcopy(CONN)
    change(message["office"])
    return message


def test_a_connection_maps_to_connection_config():
    config = loaded()
    conn = config.load_conn(CONN)
    assert conn.name == "office" and conn.psk == SECRET
    assert conn.encap is True and conn.local_port == 4500 and conn.dpd_delay == 30.0
    assert conn.local.id == "gw-a.example.net"
    [child] = conn.children
    assert child.start_action == "trap" and child.rekey_time == 3600.0 and child.rekey_bytes == 500 << 20
    assert str(child.remote_ts[0]) == "10.0.5.0/24"
    assert config.get_conns() == {"conns": ["office"]}
    assert config.connections() == [conn]


def test_binary_psk_survives():
    config = ViciConfig()
    config.load_shared({**SHARED, "data": bytes(range(256))})
    assert config.load_conn(CONN).psk == bytes(range(256))


@pytest.mark.parametrize("change, fragment", [
    (lambda c: c.update(if_id_in=b"1"), "connections.office.if_id_in: unknown key"),
    (lambda c: c["children"]["lan"].update(updown=b"/bin/true"), "children.lan.updown: unknown key"),
    (lambda c: c["remote"].update(auth=b"pubkey", cacerts=[b"-----BEGIN CERTIFICATE-----"]),
     "remote.cacerts: entry 1: not a PEM certificate bundle"),
    (lambda c: c["local"].update(auth=b"pubkey", certs=[bytes(range(256))]),
     "local.certs: entry 1: not an X.509 certificate"),
    (lambda c: c["local"].update(auth=b"pubkey"), "local.certs: missing; auth = pubkey needs our certificate"),
    (lambda c: c["local"].update(auth=b"eap-mschapv2"), "local.auth: expected"),
    (lambda c: c["children"]["lan"].update(mode=b"transport"), "mode: expected tunnel"),
    (lambda c: c.update(version=b"1"), "IKEv2 only"),
    (lambda c: c.update(proposals=[b"nonsense-cipher"]), "proposals"),
    (lambda c: c["children"]["lan"].update(local_ts=[b"dynamic[tcp]"]), "dynamic"),
    (lambda c: c.update(pools=[b"roadwarriors"]), "pools: no pool 'roadwarriors'"),
    (lambda c: c.update(local_addrs=b"\xff"), "not UTF-8"),
    (lambda c: c.pop("children"), "at least one child"),
])
def test_unsupported_or_invalid_keys_are_errors_naming_them(change, fragment):
    with pytest.raises(ViciConfigError) as info:
        loaded().load_conn(conn_with(change))
    assert fragment in info.value.errmsg
    assert SECRET.decode() not in info.value.errmsg


def test_every_problem_is_reported_at_once():
    def two(c):
        c.update(if_id_in=b"1")
        c["children"]["lan"].update(updown=b"x")
    with pytest.raises(ViciConfigError) as info:
        loaded().load_conn(conn_with(two))
    assert len(info.value.problems) == 2


def test_a_connection_without_a_matching_secret_is_refused():
    with pytest.raises(ViciConfigError, match="no PSK"):
        ViciConfig().load_conn(CONN)


def test_one_connection_per_message_and_unique_child_names():
    config = loaded()
    with pytest.raises(ViciConfigError, match="exactly one"):
        config.load_conn({**CONN, "other": CONN["office"]})
    config.load_conn(CONN)
    config.load_conn(CONN)  # loading again replaces
    with pytest.raises(ViciConfigError, match="child name already used"):
        config.load_conn({"other": CONN["office"]})


def test_unload_conn():
    config = loaded()
    config.load_conn(CONN)
    assert config.unload_conn({"name": b"office"}).name == "office"
    assert config.get_conns() == {"conns": []}
    with pytest.raises(ViciConfigError, match="no connection"):
        config.unload_conn({"name": b"office"})


@pytest.mark.parametrize("message, fragment", [
    ({**SHARED, "type": b"eap"}, "expected ike"),
    ({**SHARED, "data": b""}, "non-empty"),
    ({k: v for k, v in SHARED.items() if k != "data"}, "data: missing"),
    ({**SHARED, "extra": b"1"}, "extra: unknown key"),
    ({**SHARED, "owners": b"gw"}, "owners"),
])
def test_bad_shared_secrets(message, fragment):
    with pytest.raises(ViciConfigError) as info:
        ViciConfig().load_shared(message)
    assert fragment in info.value.errmsg
    assert SECRET.decode() not in info.value.errmsg


def test_shared_secret_names_and_unload():
    config = ViciConfig()
    assert config.load_shared({**SHARED, "id": b"office"}) == "office"
    assert config.load_shared({"type": b"IKE", "data": b"k"}) == "vici-0"  # no id: one is made up, no owners
    assert config.get_shared() == {"keys": ["office", "vici-0"]}
    config.unload_shared({"id": b"office"})
    with pytest.raises(ViciConfigError):
        config.unload_shared({"id": b"office"})
    assert config.get_shared() == {"keys": ["vici-0"]}
    assert SECRET.decode() not in repr(config.__dict__)


def test_pools_load_replace_unload_and_serve_connections():
    config = loaded()
    (pool,) = config.load_pool({"rw": {"addrs": b"10.3.0.0/28", "dns": [b"10.0.0.53"]}})
    assert (pool.name, pool.size, [str(d) for d in pool.dns]) == ("rw", 14, ["10.0.0.53"])
    conn = config.load_conn(conn_with(lambda c: c.update(pools=[b"rw"])))
    assert conn.pools == ["rw"] and conn.children[0].remote_dynamic is False
    (pool,) = config.load_pool({"rw": {"addrs": b"10.3.0.0/27"}})  # replaced
    assert pool.size == 30 and config.pool_names() == ["rw"]
    assert config.unload_pool({"name": b"rw"}) == "rw"
    with pytest.raises(ViciConfigError, match="no pool 'rw'"):
        config.unload_pool({"name": b"rw"})


@pytest.mark.parametrize("message, fragment", [
    ({"rw": {"addrs": b"10.3.0.0/33"}}, "pools.rw.addrs: expected a subnet"),
    ({"rw": {"addrs": b"10.3.0.0/28", "dhcp": [b"10.0.0.1"]}}, "pools.rw.dhcp: unknown key"),
    ({"rw": {"addrs": b"10.3.0.0/28", "nbns": [b"fd00::1"]}}, "pools.rw.nbns: expected IPv4 addresses"),
    ({"rw": {"dns": [b"10.0.0.1"]}}, "pools.rw.addrs: missing"),
    ({"rw": b"10.3.0.0/28"}, "expected a section"),
    ({}, "at least one pool"),
])
def test_bad_pools_are_refused_by_key(message, fragment):
    with pytest.raises(ViciConfigError) as info:
        ViciConfig().load_pool(message)
    assert fragment in info.value.errmsg


def test_a_pool_overlapping_one_of_the_configuration_file_is_refused():
    config = ViciConfig()
    with pytest.raises(ViciConfigError, match="overlaps pool 'file' .* of the configuration file"):
        config.load_pool({"b": {"addrs": b"10.3.0.8-10.3.0.40"}}, [AddressPool("file", "10.3.0.0/28")])
    assert config.pool_names() == []


def test_a_pool_overlapping_a_loaded_one_is_refused():
    config = ViciConfig()
    config.load_pool({"a": {"addrs": b"10.3.0.0/28"}})
    with pytest.raises(ViciConfigError, match="overlaps pool 'a'"):
        config.load_pool({"b": {"addrs": b"10.3.0.8-10.3.0.40"}})
    assert config.pool_names() == ["a"]


def test_supported_keys_table():
    table = supported_keys()
    assert "start_action" in table["connections.<conn>.children.<child>"]
    assert "local_addrs" in table["connections.<conn>"]


def test_load_pool_with_nbns_and_netmask():
    (pool,) = ViciConfig().load_pool({"rw": {"addrs": b"10.3.0.0/28", "nbns": [b"10.0.0.5"],
                                             "netmask": b"255.255.255.0"}})
    assert [str(n) for n in pool.nbns] == ["10.0.0.5"] and str(pool.netmask) == "255.255.255.0"
