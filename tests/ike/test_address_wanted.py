"""A peer named by a host name: the sans-I/O core asks for its address (AddressWanted) instead of
doing DNS, and goes on when told (initiate_to); retries ask again."""

from __future__ import annotations

from ike.events import AddressWanted, ChildSaUp
from tests.ike.harness import B_IP, Pair, mirrored


def named_pair(**kw) -> Pair:
    a, b = mirrored(a_remote_addrs=["gw-b.example"], a_remote_id=B_IP, **kw)
    return Pair([a], [b], retransmit_timeout=1.0, retransmit_base=1.0, retransmit_tries=1)


def test_initiating_asks_for_the_address_then_connects_to_it():
    pair = named_pair()
    pair.a.initiate("site", None, pair.now)
    pair.a.initiate("site", "net", pair.now)  # a second initiation meanwhile joins the first
    pair._collect()
    (want,) = pair.of("a", AddressWanted)
    assert (want.name, want.host, want.attempt) == ("site", "gw-b.example", 1)
    assert pair.a.datagrams_to_send(pair.now) == [] and pair.a.resolving("site")
    pair.a.initiate_to(want.request, B_IP, pair.now)
    assert not pair.a.resolving("site")
    pair.run()
    assert len(pair.of("a", ChildSaUp)) == 1 and len(pair.of("b", ChildSaUp)) == 1


def test_each_keyingtries_retry_asks_again_and_abandon_forgets():
    pair = named_pair(a_keyingtries=2)
    pair.a.initiate("site", None, pair.now)
    pair._collect()
    (first,) = pair.of("a", AddressWanted)
    pair.a.initiate_to(first.request, "192.0.2.200", pair.now)  # nobody there
    pair.advance(10)
    wants = pair.of("a", AddressWanted)
    assert [w.attempt for w in wants] == [1, 2]
    pair.a.abandon(wants[1].request)
    assert not pair.a.resolving("site")
    pair.a.initiate_to(wants[1].request, B_IP, pair.now)  # too late: abandoned
    assert pair.a.datagrams_to_send(pair.now) == []


def test_terminate_and_remove_end_a_lookup():
    pair = named_pair()
    pair.a.initiate("site", None, pair.now)
    assert pair.a.resolving("site")
    pair.a.terminate_ike("site", pair.now)
    assert not pair.a.resolving("site")
