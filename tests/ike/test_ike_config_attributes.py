"""swanctl pool attributes beyond addrs/dns/subnet (``nbns``, ``netmask``) in IKE_AUTH, and the
issue's bad input that the other CP tests leave out (#15)."""

from __future__ import annotations

import ipaddress

import pytest
from structlog.testing import capture_logs

from ike.codec import config_payload
from ike.codec.config_payload import ConfigAttributes, build_reply, parse_config
from ike.codec.constants import CfgAttr, CfgType
from ike.codec.payloads import CpPayload
from ike.events import LeaseAssigned, VirtualIpsAssigned
from ike.pools import AddressPool
from ike.tasks import ike_config
from tests.ike.harness import ChildSaUp, NegotiationFailed
from tests.ike import test_ike_config
from tests.ike.test_ike_config import _tamper_cp, client, connect, remote_access

ip = ipaddress.ip_address
restore_request = test_ike_config.restore_request  # the fixture undoing _tamper_cp


@pytest.fixture
def replies(monkeypatch):
    """Every CP payload the IKE tasks read, as parsed (the gateway's request, the client's reply)."""
    seen: list[ConfigAttributes] = []

    def recording(cp):
        got = config_payload.parse_config(cp)
        seen.append(got)
        return got
    monkeypatch.setattr(ike_config, "parse_config", recording)
    return seen


def _reply(seen: list[ConfigAttributes]) -> ConfigAttributes:
    (reply,) = [r for r in seen if r.cfg_type == CfgType.CFG_REPLY]
    return reply


def test_nbns_and_netmask_reach_the_client(replies):
    pool = AddressPool("rw", "10.3.0.0/28", dns=(ip("10.2.0.53"),), nbns=(ip("10.2.0.5"),),
                       netmask=ipaddress.IPv4Address("255.255.255.240"))
    pair = remote_access(pools=[pool])
    connect(pair)
    (assigned,) = pair.of("a", VirtualIpsAssigned)
    assert assigned.nbns == ("10.2.0.5",) and assigned.dns == ("10.2.0.53",)
    reply = _reply(replies)
    assert reply.netmask == ip("255.255.255.240") and reply.nbns == [ip("10.2.0.5")]


def test_a_netmask_request_is_answered_as_charon_does(restore_request, replies):
    """charon answers the attributes its pool configures, whatever the client asked for: a
    requested INTERNAL_IP4_NETMASK gets the pool's ``netmask``, or none when it sets none."""
    request = [(CfgAttr.INTERNAL_IP4_ADDRESS, b""), (CfgAttr.INTERNAL_IP4_NETMASK, b""),
               (CfgAttr.INTERNAL_IP4_NBNS, b"")]
    with_mask = AddressPool("rw", "10.3.0.0/28", netmask=ipaddress.IPv4Address("255.255.255.0"))
    pair = remote_access(pools=[with_mask])
    _tamper_cp(request)
    connect(pair)
    assert _reply(replies).netmask == ip("255.255.255.0") and pair.of("b", ChildSaUp)
    replies.clear()
    pair = remote_access(pools=[AddressPool("rw", "10.3.0.0/28")])
    connect(pair)
    reply = _reply(replies)
    assert reply.netmask is None and reply.nbns == [] and reply.addresses == [ip("10.3.0.1")]
    assert pair.of("b", ChildSaUp)


def test_no_netmask_beside_an_ipv6_address_only():
    cp = build_reply([ip("fd00:3::1")], [], [], netmask=ipaddress.IPv4Address("255.255.255.0"))
    assert all(attr != CfgAttr.INTERNAL_IP4_NETMASK for attr, _ in cp.attributes)
    cp = build_reply([ip("10.3.0.1")], [], [], [ip("10.2.0.5"), ip("fd00::5")])
    assert parse_config(CpPayload.parse(cp.body())).nbns == [ip("10.2.0.5")]  # IPv4 only on the wire


def test_a_requested_address_of_another_pool_gets_one_of_the_connections_pool():
    """charon: a wish outside the connection's pools (here: inside a pool it does not use) is a
    hint only; the client gets a free address of its own pool, and the other pool lends nothing."""
    other = AddressPool("other", "10.4.0.0/28")
    pair = remote_access(a=client(vips=("10.4.0.5",)), pools=[AddressPool("rw", "10.3.0.0/28"), other])
    connect(pair)
    assert pair.of("a", VirtualIpsAssigned)[0].vips == ("10.3.0.1",)
    assert other.status()["online"] == 0 and [e.pool for e in pair.of("b", LeaseAssigned)] == ["rw"]


@pytest.mark.parametrize("attributes", [
    [(CfgAttr.INTERNAL_IP4_ADDRESS, b""), (CfgAttr.INTERNAL_IP4_NETMASK, b"\xff\xff")],  # short netmask
    [(CfgAttr.INTERNAL_IP4_ADDRESS, b""), (CfgAttr.INTERNAL_IP4_NBNS, bytes(16))],  # an IPv6-sized NBNS
    [(CfgAttr.INTERNAL_IP6_ADDRESS, bytes(17)[:-1])],  # no prefix byte
])
def test_malformed_attributes_leave_no_lease(restore_request, attributes):
    pool = AddressPool("rw", "10.3.0.0/28")
    pair = remote_access(pools=[pool])
    _tamper_cp(attributes)
    connect(pair)
    assert [f.notify for f in pair.of("b", NegotiationFailed)] == ["INVALID_SYNTAX"]
    assert pool.status() == {"name": "rw", "base": "10.3.0.1", "size": 14, "online": 0, "offline": 0}
    assert not pair.of("b", ChildSaUp) and not pair.b.status()


def test_a_thousand_attributes_are_capped_counted_and_logged(restore_request):
    pool = AddressPool("rw", "10.3.0.0/28")
    pair = remote_access(pools=[pool])
    _tamper_cp([(CfgAttr.INTERNAL_IP4_DNS, b"")] * 999 + [(CfgAttr.INTERNAL_IP4_ADDRESS, b"")])
    with capture_logs() as logs:
        connect(pair)
    (capped,) = [e for e in logs if e.get("event") == "cp_attributes_capped"]
    assert (capped["read"], capped["dropped"]) == (config_payload.MAX_ATTRIBUTES, 1000 - config_payload.MAX_ATTRIBUTES)
    assert pair.b.drops.get("cp_attributes_capped") == 1
    # the address request came after the cap: unread, so the gateway saw no request
    assert [f.notify for f in pair.of("b", NegotiationFailed)] == ["FAILED_CP_REQUIRED"]
    assert pool.status()["online"] == 0
