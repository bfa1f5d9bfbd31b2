"""IKE_SA_INIT + IKE_AUTH between two in-memory endpoints, and their failure paths."""

from __future__ import annotations

import pytest

from tests.ike.harness import (A_IP, B_IP, ChildSaUp, IkeSaDown, IkeSaUp, NegotiationFailed, Pair, Wire,
                         connection, mirrored)

PAIRS = [
    ("aes256gcm16-prfsha256-ecp256", "aes256gcm16"),
    ("aes128-sha256-modp2048", "aes128-sha256"),
    ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305"),
    ("aes256-sha512-modp3072", "aes256-sha512"),
]


def established(ike="aes256gcm16-prfsha256-ecp256", esp="aes256gcm16", initiator="a", **kw):
    a, b = mirrored(ike, esp, **kw)
    pair = Pair([a], [b])
    (pair.a if initiator == "a" else pair.b).initiate("site", None, pair.now)
    pair.run()
    return pair


def assert_child_pair(pair):
    (ca,), (cb,) = pair.of("a", ChildSaUp), pair.of("b", ChildSaUp)
    assert ca.inbound_spi == cb.outbound_spi and ca.outbound_spi == cb.inbound_spi
    assert ca.outbound_keymat == cb.inbound_keymat and ca.inbound_keymat == cb.outbound_keymat
    assert ca.inbound_keymat != ca.outbound_keymat
    assert ca.esp_transform == cb.esp_transform
    assert [str(t) for t in ca.local_ts] == ["10.1.0.0/16"] and [str(t) for t in ca.remote_ts] == ["10.2.0.0/16"]
    assert [str(t) for t in cb.local_ts] == ["10.2.0.0/16"] and [str(t) for t in cb.remote_ts] == ["10.1.0.0/16"]
    return ca, cb


@pytest.mark.parametrize("initiator", ["a", "b"])
@pytest.mark.parametrize("ike,esp", PAIRS)
def test_handshake_each_proposal_both_roles(ike, esp, initiator):
    pair = established(ike, esp, initiator)
    (ia,), (ib,) = pair.of("a", IkeSaUp), pair.of("b", IkeSaUp)
    assert ia.proposal == ib.proposal and ia.proposal.startswith(ike.split("-")[0])
    assert ia.initiator == (initiator == "a") and ib.initiator == (initiator == "b")
    assert (ia.spi_i, ia.spi_r) == (ib.spi_i, ib.spi_r)
    assert ia.local_id == A_IP and ia.remote_id == B_IP
    ca, cb = assert_child_pair(pair)
    assert ca.esp_transform == esp
    assert "keymat" not in repr(ca).replace("keymat=", "") or "inbound_keymat=" not in repr(ca)
    assert not pair.of("a", NegotiationFailed) and not pair.of("b", NegotiationFailed)


def test_keys_never_in_repr_or_status():
    pair = established()
    (ca,) = pair.of("a", ChildSaUp)
    assert ca.inbound_keymat.hex() not in repr(ca) and "keymat" not in repr(ca)
    status = repr(pair.a.status()) + repr(pair.a.sas)
    assert ca.inbound_keymat.hex() not in status
    sa = next(iter(pair.a.sas.values()))
    assert sa.keys.sk_d.hex() not in repr(sa.keys)
    [s] = pair.a.status()
    assert s["state"] == "established" and s["children"][0]["name"] == "net"


def test_fqdn_and_keyid_identities():
    pair = established(a_local_id="@a.example", a_remote_id="@#0102", b_local_id="@#0102", b_remote_id="a.example")
    (ia,), (ib,) = pair.of("a", IkeSaUp), pair.of("b", IkeSaUp)
    assert ia.local_id == "a.example" and ia.remote_id == "@#0102" and ib.remote_id == "a.example"


def test_ipv6_endpoints_and_selectors():
    a = connection("v6", "2001:db8::1", "2001:db8::2", local_ts="fd00:1::/64", remote_ts="fd00:2::/64")
    b = connection("v6", "2001:db8::2", "2001:db8::1", local_ts="fd00:2::/64", remote_ts="fd00:1::/64")
    pair = Pair([a], [b])
    pair.ips = {"2001:db8::1": pair.a, "2001:db8::2": pair.b}
    pair.a.initiate("v6", None, 0.0)
    pair.run()
    (ca,) = pair.of("a", ChildSaUp)
    assert str(ca.remote_ts[0]) == "fd00:2::/64" and pair.of("b", IkeSaUp)[0].remote_id == "2001:db8::1"


def test_responder_with_any_remote_address():
    a, b = mirrored(b_remote_addrs=["%any"])
    pair = Pair([a], [b])
    pair.a.initiate("site", None, 0.0)
    pair.run()
    assert pair.of("b", IkeSaUp) and pair.of("b", ChildSaUp)


def test_no_ike_proposal_chosen():
    pair = established("aes256gcm16-prfsha256-ecp256", b_ike="aes128-sha256-modp2048")
    (fa,), (fb,) = pair.of("a", NegotiationFailed), pair.of("b", NegotiationFailed)
    assert fa.notify == fb.notify == "NO_PROPOSAL_CHOSEN" and fa.stage == "IKE_SA_INIT"
    assert not pair.a.sas and not pair.b.sas


def test_no_esp_proposal_keeps_ike_sa():
    pair = established(b_esp="aes128-sha256")
    assert pair.of("a", IkeSaUp) and pair.of("b", IkeSaUp)
    (fa,), (fb,) = pair.of("a", NegotiationFailed), pair.of("b", NegotiationFailed)
    assert fa.notify == fb.notify == "NO_PROPOSAL_CHOSEN" and fa.stage == "IKE_AUTH" and fa.child_name == "net"
    assert not pair.of("a", ChildSaUp) and not pair.of("b", ChildSaUp)
    assert [s["state"] for s in pair.a.status()] == ["established"]


def test_psk_mismatch():
    pair = established(b_psk=b"wrong")
    (fa,), (fb,) = pair.of("a", NegotiationFailed), pair.of("b", NegotiationFailed)
    assert fa.notify == fb.notify == "AUTHENTICATION_FAILED"
    assert b"wrong" not in repr(pair.events).encode()
    assert not pair.of("a", IkeSaUp) and not pair.of("b", IkeSaUp)
    assert not pair.a.sas and not pair.b.sas


def test_remote_id_mismatch_fails_auth():
    pair = established(a_remote_id="@somebody.else")
    (fa,) = pair.of("a", NegotiationFailed)
    assert fa.notify == "AUTHENTICATION_FAILED"
    assert not pair.a.sas


def test_ts_unacceptable():
    pair = established(b_remote_ts="10.9.0.0/16")
    (fa,), (fb,) = pair.of("a", NegotiationFailed), pair.of("b", NegotiationFailed)
    assert fa.notify == fb.notify == "TS_UNACCEPTABLE"
    assert pair.of("a", IkeSaUp) and not pair.of("a", ChildSaUp)


def test_ts_narrowing_to_intersection():
    pair = established(a_local_ts="10.1.0.0/16", a_remote_ts="10.2.0.0/16",
                       b_local_ts="10.2.5.0/24", b_remote_ts="10.1.0.0/24")
    (ca,), (cb,) = pair.of("a", ChildSaUp), pair.of("b", ChildSaUp)
    assert [str(t) for t in ca.local_ts] == ["10.1.0.0/24"] and [str(t) for t in ca.remote_ts] == ["10.2.5.0/24"]
    assert cb.local_ts == ca.remote_ts and cb.remote_ts == ca.local_ts


def test_on_demand_packet_selectors_first():
    from ike.tasks.child_sa import host_selector
    a, b = mirrored(b_local_ts="10.2.7.9/32", b_remote_ts="10.1.3.4/32,10.1.9.0/24")
    pair = Pair([a], [b])
    pair.a.initiate("site", "net", 0.0, packet_ts=(host_selector("10.1.3.4"), host_selector("10.2.7.9")))
    pair.run()
    (ca,) = pair.of("a", ChildSaUp)
    assert [str(t) for t in ca.local_ts] == ["10.1.3.4/32", "10.1.9.0/24"]
    assert [str(t) for t in ca.remote_ts] == ["10.2.7.9/32"]


def test_on_demand_packet_selectors_inside_the_subnet_are_not_kept():
    """The trapped packet's /32 goes first in the offer, then the subnet; both sides keep only the
    subnet (strongSwan's remove_duplicate_ts), so one policy per direction is installed."""
    from ike.tasks.child_sa import host_selector
    a, b = mirrored(b_local_ts="10.2.7.0/24", b_remote_ts="10.1.3.0/24")
    pair = Pair([a], [b])
    pair.a.initiate("site", "net", 0.0, packet_ts=(host_selector("10.1.3.4"), host_selector("10.2.7.9")))
    pair.run()
    (ca,), (cb,) = pair.of("a", ChildSaUp), pair.of("b", ChildSaUp)
    assert [str(t) for t in ca.local_ts] == ["10.1.3.0/24"] and [str(t) for t in ca.remote_ts] == ["10.2.7.0/24"]
    assert cb.local_ts == ca.remote_ts and cb.remote_ts == ca.local_ts


def test_narrow_drops_contained_selectors_keeping_order():
    from ike.tasks.child_sa import host_selector, narrow, without_redundant
    from ike.config import TrafficSelector as TS
    net, host = TS.from_cidr("10.0.0.0/24"), host_selector("10.0.0.7")
    assert narrow([host, net], [net]) == [net]
    assert narrow([host, TS.from_cidr("10.0.0.0/16")], [net]) == [net]
    other = TS.from_cidr("10.9.0.0/24")
    assert narrow([host, net, other], [TS.from_cidr("10.0.0.0/8")]) == [net, other]
    tcp = TS.from_cidr("10.0.0.0/24", protocol=6, start_port=80, end_port=80)
    assert without_redundant([tcp, net, net]) == [net]
    assert without_redundant([tcp, other]) == [tcp, other]  # disjoint ones all stay
    v6 = TS.from_cidr("fd00::/64")
    assert without_redundant([host, v6, net]) == [v6, net]


def test_initiator_drops_redundant_selectors_a_responder_answered(monkeypatch):
    """A responder that answers the /32 next to its subnet (older espgw) still leaves the
    initiator with one selector per side."""
    import ike.tasks.child_create as child_create
    from ike.tasks.child_sa import host_selector, intersect

    def narrow_keeping_all(offered, configured):
        out = [intersect(theirs, mine) for theirs in offered for mine in configured]
        return [ts for i, ts in enumerate(out) if ts is not None and ts not in out[:i]]

    monkeypatch.setattr(child_create, "narrow", narrow_keeping_all)
    a, b = mirrored(b_local_ts="10.2.7.0/24", b_remote_ts="10.1.3.0/24")
    pair = Pair([a], [b])
    pair.a.initiate("site", "net", 0.0, packet_ts=(host_selector("10.1.3.4"), host_selector("10.2.7.9")))
    pair.run()
    (ca,), (cb,) = pair.of("a", ChildSaUp), pair.of("b", ChildSaUp)
    assert len(cb.remote_ts) == 2  # the responder kept both
    assert [str(t) for t in ca.local_ts] == ["10.1.3.0/24"] and [str(t) for t in ca.remote_ts] == ["10.2.7.0/24"]


def test_invalid_ke_retry_with_requested_group():
    pair = established("aes256gcm16-prfsha256-ecp256-x25519", b_ike="aes256gcm16-prfsha256-x25519")
    (ia,) = pair.of("a", IkeSaUp)
    assert ia.proposal == "aes256gcm16-prfsha256-x25519"
    assert_child_pair(pair)


def test_initiator_gives_up_on_silent_peer():
    a, b = mirrored()
    pair = Pair([a], [b], wire=Wire(loss=1.0))
    pair.a.initiate("site", None, 0.0)
    pair.run(until=1000, idle_stop=False)
    (fa,) = pair.of("a", NegotiationFailed)
    assert fa.notify == "TIMEOUT" and not pair.a.sas
    assert 160 < pair.now <= 1000


def test_nat_detected_moves_to_4500():
    a, b = mirrored()
    nat_ip = "203.0.113.9"

    def nat(d):  # A sits behind a NAT that rewrites its source address
        from ike.endpoint import Datagram
        if d.src[0] == A_IP:
            return Datagram(d.data, (nat_ip, d.src[1] + 10000), d.dst)
        if d.dst[0] == nat_ip:
            return Datagram(d.data, d.src, (A_IP, d.dst[1] - 10000))
        return d

    pair = Pair([a], [b], wire=Wire(tamper=nat))
    pair.b.connections["site"].remote_addrs = ["%any"]
    pair.a.initiate("site", None, 0.0)
    pair.run()
    (ia,), (ib,) = pair.of("a", IkeSaUp), pair.of("b", IkeSaUp)
    assert ia.nat_local and not ia.nat_remote and ib.nat_remote
    assert ia.local[1] == 4500 and ia.remote[1] == 4500
    assert ib.remote == (nat_ip, 14500)
    (ca,), (cb,) = pair.of("a", ChildSaUp), pair.of("b", ChildSaUp)
    assert ca.encap and cb.encap


def test_initiator_rejecting_responder_tells_it():
    # B's identity is not what A expects: A fails IKE_AUTH and tells B, which drops its SA too
    a, b = mirrored()
    pair = Pair([a], [b])
    pair.a.initiate("site", None, 0.0)
    for src, dst in ((pair.a, pair.b), (pair.b, pair.a), (pair.a, pair.b)):  # up to the IKE_AUTH request
        (d,) = src.datagrams_to_send(0.0)
        dst.receive_datagram(d.data, d.src, d.dst, 0.0)
    a.remote.id = "@somebody.else"  # checked when B's answer arrives
    pair.run()
    pair._collect()
    (fa,), (fb,) = pair.of("a", NegotiationFailed), pair.of("b", NegotiationFailed)
    assert fa.notify == fb.notify == "AUTHENTICATION_FAILED"
    assert [d.reason for d in pair.of("b", IkeSaDown)] == ["auth failed"]
    assert not pair.a.sas and not pair.b.sas


def test_initiate_twice_does_not_duplicate_children():
    a, b = mirrored()
    pair = Pair([a], [b])
    pair.a.initiate("site", None, 0.0)
    pair.a.initiate("site", None, 0.0)
    pair.a.initiate("site", "net", 0.0)
    pair.run()
    assert len(pair.of("a", ChildSaUp)) == 1 and len(pair.of("a", IkeSaUp)) == 1


@pytest.mark.parametrize("side", ["a", "b"])
def test_forced_encapsulation_fakes_nat(side):
    pair = established(**{f"{side}_encap": True})
    (ia,), (ib,) = pair.of("a", IkeSaUp), pair.of("b", IkeSaUp)
    forcing, other = (ia, ib) if side == "a" else (ib, ia)
    assert other.nat_remote and not forcing.nat_remote and not forcing.nat_local
    assert ia.local[1] == ia.remote[1] == 4500 and ib.local[1] == ib.remote[1] == 4500
    (ca,), (cb,) = pair.of("a", ChildSaUp), pair.of("b", ChildSaUp)
    assert ca.encap and cb.encap
