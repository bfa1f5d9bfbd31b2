"""Virtual IP pools: ranges as swanctl writes them, leases by identity as strongSwan keeps them."""

from __future__ import annotations

import ipaddress

import pytest

from ike.pools import AddressPool, PoolError, parse_pool_range

ip = ipaddress.ip_address


@pytest.mark.parametrize("text, first, size", [
    ("10.3.0.0/28", "10.3.0.1", 14),  # network and broadcast skipped
    ("10.3.0.0/30", "10.3.0.1", 2),
    ("10.3.0.7/32", "10.3.0.7", 1),
    ("10.3.0.0/31", "10.3.0.0", 2),
    ("10.3.0.10-10.3.0.20", "10.3.0.10", 11),  # a range is inclusive
    ("10.3.0.10 - 10.3.0.10", "10.3.0.10", 1),
    ("fd00:3::/120", "fd00:3::1", 254),
    ("fd00:3::10-fd00:3::1f", "fd00:3::10", 16),
    ("10.0.0.0/1", "0.0.0.1", 2**31 - 2),
    ("fd00::/64", "fd00::1", 2**31),  # cut to 2^31, as strongSwan
])
def test_ranges(text, first, size):
    assert parse_pool_range(text) == (ip(first), size)


@pytest.mark.parametrize("text, error", [
    ("10.3.0.256/28", "10.3.0.256"),
    ("10.3.0.20-10.3.0.10", "ends before it starts"),
    ("10.3.0.1-fd00::1", "mixes IPv4 and IPv6"),
    ("pool", "pool"),
])
def test_bad_ranges_name_the_problem(text, error):
    with pytest.raises(PoolError, match=error):
        parse_pool_range(text)


def test_addresses_in_order_then_exhausted():
    pool = AddressPool("rw", "10.3.0.0/30")
    assert pool.acquire("alice", None, 0) == ip("10.3.0.1")
    assert pool.acquire("bob", None, 0) == ip("10.3.0.2")
    assert pool.acquire("carol", None, 0) is None  # INTERNAL_ADDRESS_FAILURE
    assert pool.status() == {"name": "rw", "base": "10.3.0.1", "size": 2, "online": 2, "offline": 0}


def test_reconnect_gets_the_same_address_back():
    pool = AddressPool("rw", "10.3.0.0/24", grace=60)
    first = pool.acquire("alice", ip("0.0.0.0"), 0, peer=("198.51.100.7", 4500))
    pool.acquire("bob", None, 0)
    assert pool.release("alice", first, 10)
    assert pool.leases()[0] == {"address": "10.3.0.1", "identity": "alice", "status": "offline"}
    # later, from another NAT port: the offline lease comes back to its identity
    assert pool.acquire("alice", ip("0.0.0.0"), 500, peer=("198.51.100.7", 61000)) == first


def test_reauthentication_shares_the_lease_of_the_same_host():
    pool = AddressPool("rw", "10.3.0.0/24")
    peer = ("198.51.100.7", 4500)
    first = pool.acquire("alice", None, 0, peer=peer)
    # make-before-break reauthentication: the new IKE SA asks for the address it has
    assert pool.acquire("alice", first, 5, peer=peer) == first
    assert pool.release("alice", first, 6)  # the old SA goes
    assert pool.status()["online"] == 1
    assert pool.release("alice", first, 7)
    assert pool.status()["offline"] == 1
    assert not pool.release("alice", first, 8)  # nothing held any more


def test_two_clients_with_one_identity_get_two_addresses():
    pool = AddressPool("rw", "10.3.0.0/24")
    a = pool.acquire("shared", None, 0, peer=("198.51.100.7", 4500))
    b = pool.acquire("shared", None, 0, peer=("198.51.100.7", 4501))  # same NAT, another port
    c = pool.acquire("shared", a, 0, peer=("198.51.100.9", 4500))  # asks for a's address: not its own
    assert len({a, b, c}) == 3


def test_offline_lease_is_reserved_during_grace_then_reused_when_full():
    pool = AddressPool("rw", "10.3.0.0/30", grace=60)
    a = pool.acquire("alice", None, 0)
    pool.acquire("bob", None, 0)
    pool.release("alice", a, 100)
    assert pool.acquire("carol", None, 130) is None  # alice's lease is still hers
    assert pool.acquire("carol", None, 160) == a  # grace over and the pool is full
    assert pool.acquire("alice", None, 170) is None
    assert {row["identity"] for row in pool.leases()} == {"bob", "carol"}


def test_offline_leases_are_reused_oldest_first_and_only_when_full():
    pool = AddressPool("rw", "10.3.0.0/29", grace=0)  # 6 addresses
    got = [pool.acquire(name, None, 0) for name in "abc"]
    pool.release("b", got[1], 10)
    pool.release("a", got[0], 20)
    assert pool.acquire("d", None, 30) == ip("10.3.0.4")  # never-used addresses first
    pool.acquire("e", None, 30)
    pool.acquire("f", None, 30)
    assert pool.acquire("g", None, 40) == got[1]  # then b's lease: offline longest
    assert pool.acquire("h", None, 40) == got[0]


def test_a_requested_address_is_honoured_when_free():
    pool = AddressPool("rw", "10.3.0.0/24")
    assert pool.acquire("alice", ip("10.3.0.42"), 0) == ip("10.3.0.42")
    assert pool.acquire("bob", ip("10.3.0.42"), 0) == ip("10.3.0.1")  # taken: any other
    assert pool.acquire("carol", ip("192.0.2.9"), 0) == ip("10.3.0.2")  # outside: any
    # the unused mark steps over the requested one
    got = {pool.acquire(f"u{i}", None, 0) for i in range(60)}
    assert ip("10.3.0.42") not in got and len(got) == 60


def test_an_ipv6_64_is_cut_to_two_to_the_31():
    pool = AddressPool("v6", "fd00::/64")
    assert pool.limited and not AddressPool("v4", "10.0.0.0/8").limited
    assert pool.acquire("alice", None, 0) == ip("fd00::1")


def test_large_pools_cost_nothing_until_used():
    pool = AddressPool("big", "10.0.0.0/8")
    assert pool.size == 2**24 - 2
    assert pool.acquire("alice", None, 0) == ip("10.0.0.1")
    assert len(pool.leases()) == 1


def test_contains_and_overlap():
    a, b = AddressPool("a", "10.3.0.0/24"), AddressPool("b", "10.3.0.200-10.3.1.5")
    assert a.overlaps(b) and b.overlaps(a)
    assert not a.overlaps(AddressPool("c", "10.3.1.0/24"))
    assert not a.overlaps(AddressPool("v6", "fd00::/120"))
    assert a.contains(ip("10.3.0.1")) and not a.contains(ip("10.3.0.0")) and not a.contains(ip("fd00::1"))
