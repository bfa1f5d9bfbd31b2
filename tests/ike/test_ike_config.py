"""Virtual IPs in IKE_AUTH (ike.tasks.ike_config) between two in-memory endpoints."""

from __future__ import annotations

import ipaddress

import pytest

from ike.codec.constants import CfgAttr, CfgType, NotifyType
from ike.codec.payloads import CpPayload
from ike.config import ChildConfig, TrafficSelector
from ike.endpoint import IkeEndpoint
from ike.events import LeaseAssigned, LeaseReleased, VirtualIpsAssigned
from ike.pools import AddressPool
from ike.tasks import ike_auth
from tests.ike.harness import (A_IP, B_IP, ChildSaUp, IkeSaDown, IkeSaUp, NegotiationFailed, Pair, connection,
                               seeded_rng)

ip = ipaddress.ip_address


# --- client and gateway -------------------------------------------------------------------------

def client(vips=("0.0.0.0",), name="rw", local_id="alice@example.org", remote_ts="10.2.0.0/16", **kw):
    conn = connection(name, A_IP, B_IP, local_id=local_id, remote_ts=remote_ts, **kw)
    conn.vips = list(vips)
    conn.children[0].local_ts, conn.children[0].local_dynamic = [], True
    return conn


def gateway(pools=("rw",), name="rw", local_ts="10.2.0.0/16", **kw):
    conn = connection(name, B_IP, A_IP, local_ts=local_ts, remote_addrs=["%any"], **kw)
    conn.pools = list(pools)
    conn.children[0].remote_ts, conn.children[0].remote_dynamic = [], True
    return conn


def remote_access(a=None, b=None, pools=None, **pair_kw):
    pair = Pair([a or client()], [b or gateway()], **pair_kw)
    for pool in pools if pools is not None else [AddressPool("rw", "10.3.0.0/28", dns=(ip("10.2.0.53"),),
                                                             subnets=(ipaddress.ip_network("10.2.0.0/16"),))]:
        pair.b.set_pool(pool)
    return pair


def connect(pair, name="rw"):
    pair.a.initiate(name, None, pair.now)
    pair.run()


def test_client_gets_a_virtual_ip_dns_and_narrowed_selectors():
    pair = remote_access()
    connect(pair)
    (assigned,) = pair.of("a", VirtualIpsAssigned)
    assert assigned.vips == ("10.3.0.1",) and assigned.dns == ("10.2.0.53",) and assigned.subnets == ("10.2.0.0/16",)
    (lease,) = pair.of("b", LeaseAssigned)
    assert (lease.pool, lease.address, lease.identity) == ("rw", "10.3.0.1", "alice@example.org")
    (ca,), (cb,) = pair.of("a", ChildSaUp), pair.of("b", ChildSaUp)
    assert [str(t) for t in ca.local_ts] == ["10.3.0.1/32"] and [str(t) for t in ca.remote_ts] == ["10.2.0.0/16"]
    assert [str(t) for t in cb.remote_ts] == ["10.3.0.1/32"] and [str(t) for t in cb.local_ts] == ["10.2.0.0/16"]
    assert pair.a.status()[0]["local_vips"] == ["10.3.0.1"] and pair.b.status()[0]["remote_vips"] == ["10.3.0.1"]


def test_reconnect_gets_the_same_address_and_delete_releases_it():
    pool = AddressPool("rw", "10.3.0.0/28", grace=60)
    pair = remote_access(pools=[pool])
    connect(pair)
    pair.a.terminate_ike("rw", pair.now)
    pair.run()
    (released,) = pair.of("b", LeaseReleased)
    assert released.address == "10.3.0.1"
    assert pool.status()["offline"] == 1 and pool.status()["online"] == 0
    pool.acquire("bob", None, pair.now)  # someone else takes the next address meanwhile
    connect(pair)
    assert pair.of("a", VirtualIpsAssigned)[-1].vips == ("10.3.0.1",)
    assert pool.status()["online"] == 2


def test_a_requested_address_outside_the_pool_gets_another():
    pair = remote_access(a=client(vips=("192.168.99.9",)))
    connect(pair)
    assert pair.of("a", VirtualIpsAssigned)[0].vips == ("10.3.0.1",)
    (ca,) = pair.of("a", ChildSaUp)
    assert [str(t) for t in ca.local_ts] == ["10.3.0.1/32"]


def test_a_requested_address_inside_the_pool_is_honoured():
    pair = remote_access(a=client(vips=("10.3.0.9",)))
    connect(pair)
    assert pair.of("a", VirtualIpsAssigned)[0].vips == ("10.3.0.9",)


def test_exhausted_pool_is_internal_address_failure_without_child():
    pool = AddressPool("rw", "10.3.0.7/32")
    pool.acquire("bob", None, 0.0)
    pair = remote_access(pools=[pool])
    connect(pair)
    assert len(pair.of("a", IkeSaUp)) == 1 and not pair.of("a", ChildSaUp) and not pair.of("b", ChildSaUp)
    assert [f.notify for f in pair.of("b", NegotiationFailed)] == ["INTERNAL_ADDRESS_FAILURE"]
    assert "INTERNAL_ADDRESS_FAILURE" in [f.notify for f in pair.of("a", NegotiationFailed)]
    assert not pair.of("a", VirtualIpsAssigned)


def test_no_request_while_pools_are_configured_is_failed_cp_required():
    a = client(vips=())
    a.children[0].local_ts, a.children[0].local_dynamic = [], True
    pair = remote_access(a=a)
    connect(pair)
    assert [f.notify for f in pair.of("b", NegotiationFailed)] == ["FAILED_CP_REQUIRED"]
    assert not pair.of("b", ChildSaUp) and not pair.of("b", LeaseAssigned)


def test_ipv4_and_ipv6_from_two_pools():
    pools = [AddressPool("rw4", "10.3.0.0/28"), AddressPool("rw6", "fd00:3::/120", dns=(ip("fd00::53"),))]
    pair = remote_access(a=client(vips=("0.0.0.0", "::"), remote_ts="10.2.0.0/16,fd00:2::/48"),
                         b=gateway(pools=("rw4", "rw6"), local_ts="10.2.0.0/16,fd00:2::/48"), pools=pools)
    connect(pair)
    (assigned,) = pair.of("a", VirtualIpsAssigned)
    assert assigned.vips == ("10.3.0.1", "fd00:3::1") and assigned.dns == ("fd00::53",)
    (ca,) = pair.of("a", ChildSaUp)
    assert sorted(str(t) for t in ca.local_ts) == ["10.3.0.1/32", "fd00:3::1/128"]


def test_ipv6_request_without_an_ipv6_pool_gets_the_ipv4_one():
    pair = remote_access(a=client(vips=("0.0.0.0", "::")))
    connect(pair)
    assert pair.of("a", VirtualIpsAssigned)[0].vips == ("10.3.0.1",)


def test_gateway_without_pools_ignores_the_request():
    a = client()
    b = gateway(pools=())
    b.children[0].remote_ts, b.children[0].remote_dynamic = [TrafficSelector.from_cidr("0.0.0.0/0")], False
    pair = remote_access(a=a, b=b, pools=[])
    connect(pair)
    assert not pair.of("a", VirtualIpsAssigned) and not pair.of("b", LeaseAssigned)


def test_ike_rekey_keeps_the_lease_and_the_address():
    pool = AddressPool("rw", "10.3.0.0/28")
    pair = remote_access(pools=[pool])
    connect(pair)
    pair.a.rekey_ike("rw", pair.now)
    pair.run()
    assert [e.reason for e in pair.of("b", IkeSaDown)] == ["rekeyed"]
    assert pool.status()["online"] == 1
    assert pair.b.status()[0]["remote_vips"] == ["10.3.0.1"] and pair.a.status()[0]["local_vips"] == ["10.3.0.1"]
    pair.a.terminate_ike("rw", pair.now)
    pair.run()
    assert pool.status()["online"] == 0 and pool.status()["offline"] == 1


def _tamper_cp(attributes, cfg_type=CfgType.CFG_REQUEST):
    """Make the client's IKE_AUTH carry a CP payload of ``attributes`` (before encryption)."""
    ike_auth.ike_config.request_payloads = lambda sa: [CpPayload(cfg_type, attributes)]


@pytest.fixture
def restore_request():
    original = ike_auth.ike_config.request_payloads
    yield
    ike_auth.ike_config.request_payloads = original


def test_malformed_request_is_invalid_syntax_and_nothing_leased(restore_request):
    pool = AddressPool("rw", "10.3.0.0/28")
    pair = remote_access(pools=[pool])
    _tamper_cp([(CfgAttr.INTERNAL_IP4_ADDRESS, b"\x0a\x03")])
    connect(pair)
    assert [f.notify for f in pair.of("b", NegotiationFailed)] == ["INVALID_SYNTAX"]
    assert pool.status()["online"] == 0 and not pair.b.status()
    assert not pair.of("b", ChildSaUp)


def test_a_thousand_attributes_get_a_bounded_answer(restore_request):
    pool = AddressPool("rw", "10.3.0.0/28", dns=(ip("10.2.0.53"),))
    pair = remote_access(pools=[pool])
    _tamper_cp([(CfgAttr.INTERNAL_IP4_ADDRESS, b"")] * 1000)
    connect(pair)
    (assigned,) = pair.of("a", VirtualIpsAssigned)
    assert assigned.vips == ("10.3.0.1",)  # one address (MAX_VIPS per family), not a thousand
    assert pool.status()["online"] == 1


def test_unknown_cfg_type_is_ignored(restore_request):
    b = gateway(pools=())
    b.children[0].remote_dynamic = True
    pair = remote_access(b=b, pools=[])
    _tamper_cp([], CfgType.CFG_SET)
    connect(pair)
    assert pair.of("b", IkeSaUp) and pair.of("b", ChildSaUp)


def test_notify_constants_are_the_rfc_ones():
    assert (NotifyType.INTERNAL_ADDRESS_FAILURE, NotifyType.FAILED_CP_REQUIRED) == (36, 37)


def test_a_restarted_client_gets_its_address_back_with_initial_contact():
    pool = AddressPool("rw", "10.3.0.0/28")
    pair = remote_access(pools=[pool])
    connect(pair)
    pair.a = IkeEndpoint([client()], rng=seeded_rng(99))  # the laptop rebooted: no delete was sent
    pair.ips[A_IP] = pair.a
    pool.acquire("bob", None, pair.now)
    connect(pair)
    assert pair.of("a", VirtualIpsAssigned)[-1].vips == ("10.3.0.1",)
    assert [e.reason for e in pair.of("b", IkeSaDown)] == ["replaced"]
    assert pool.status()["online"] == 2 and len(pair.b.status()) == 1


def test_a_second_child_uses_the_virtual_ip():
    a = client()
    second = ChildConfig("more", [], [TrafficSelector.from_cidr("10.9.0.0/16")], local_dynamic=True)
    a.children.append(second)
    b = gateway()
    b.children.append(ChildConfig("more", [TrafficSelector.from_cidr("10.9.0.0/16")], [], remote_dynamic=True))
    pair = remote_access(a=a, b=b)
    connect(pair)
    more = [c for c in pair.of("a", ChildSaUp) if c.child_name == "more"]
    assert len(more) == 1 and [str(t) for t in more[0].local_ts] == ["10.3.0.1/32"]


def test_reauthentication_asks_for_and_gets_the_same_address():
    pool = AddressPool("rw", "10.3.0.0/28")
    a = client(reauth_time=100.0)
    pair = remote_access(a=a, pools=[pool])
    connect(pair)
    pool.acquire("bob", None, pair.now)
    pair.advance(120)
    assert [e.vips for e in pair.of("a", VirtualIpsAssigned)] == [("10.3.0.1",), ("10.3.0.1",)]
    assert [e.reason for e in pair.of("a", IkeSaDown)] == ["reauthenticated"]
    assert len(pair.b.status()) == 1 and pool.status()["online"] == 2  # the client's one lease, and bob's
    assert [str(t) for t in pair.of("a", ChildSaUp)[-1].local_ts] == ["10.3.0.1/32"]


def test_a_malformed_reply_is_logged_and_no_address_taken(monkeypatch):
    monkeypatch.setattr(ike_auth.ike_config, "build_reply",
                        lambda *args: CpPayload(CfgType.CFG_REPLY, [(CfgAttr.INTERNAL_IP4_ADDRESS, b"\x0a")]))
    pair = remote_access()
    connect(pair)
    assert pair.of("a", IkeSaUp) and not pair.of("a", VirtualIpsAssigned)
    assert pair.a.status()[0]["local_vips"] == []


def test_a_hundred_clients_each_get_their_own_lease():
    pool = AddressPool("rw", "10.3.0.0/24")
    gateway_ep = IkeEndpoint([gateway(remote_id="%any")], rng=seeded_rng(5), cookie_threshold=1000,
                             half_open_per_ip=1000, pools=[pool])
    clients = {}
    for n in range(100):
        ip_text = f"198.18.0.{n + 1}"
        conn = connection("rw", ip_text, B_IP, local_id=f"user{n}.example.org")
        conn.vips = ["0.0.0.0"]
        conn.children[0].local_ts, conn.children[0].local_dynamic = [], True
        conn.children[0].remote_ts = [TrafficSelector.from_cidr("10.2.0.0/16")]
        clients[ip_text] = IkeEndpoint([conn], rng=seeded_rng(100 + n))
    nodes = {B_IP: gateway_ep, **clients}
    for ep in clients.values():
        ep.initiate("rw", None, 0.0)
    for _ in range(20):  # deliver until quiet
        moved = False
        for ep in nodes.values():
            for d in ep.datagrams_to_send(0.0):
                nodes[d.dst[0]].receive_datagram(d.data, d.src, d.dst, 0.0)
                moved = True
        if not moved:
            break
    vips = []
    for ep in clients.values():
        while (event := ep.next_event()) is not None:
            if isinstance(event, VirtualIpsAssigned):
                vips += event.vips
    assert len(vips) == 100 and len(set(vips)) == 100
    assert pool.status()["online"] == 100
    assert sorted(s["remote_vips"][0] for s in gateway_ep.status()) == sorted(vips)
