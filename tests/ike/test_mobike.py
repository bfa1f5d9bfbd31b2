"""MOBIKE (RFC 4555) between two in-memory endpoints: negotiation in IKE_AUTH, UPDATE_SA_ADDRESSES
when the initiator's address changes, the responder's return routability check (COOKIE2) before
its CHILD SAs move, NAT mapping changes found by liveness checks, and malformed MOBIKE notifies."""

from __future__ import annotations

from types import SimpleNamespace

from ike.codec.constants import ExchangeType, NotifyType
from ike.codec.message import Message
from ike.codec.payloads import NotifyPayload
from ike.endpoint import Datagram
from ike.events import IkeSaMoved
from ike.tasks import ike_mobike
from ike.tasks.ike_mobike import IkeMobike, respond_mobike, take_peer_addresses
from tests.ike.harness import A_IP, B_IP, ChildSaUp, IkeSaUp, Pair, mirrored

A2_IP = "203.0.113.9"  # where the initiator moves to
NAT_IP = "192.0.2.200"  # the initiator's NAT router


def _pair(**kw) -> Pair:
    endpoint_kw = {k: kw.pop(k) for k in list(kw) if k.startswith("retransmit_")}
    a, b = mirrored(**kw)
    return Pair([a], [b], **endpoint_kw)


def _up(pair: Pair) -> tuple[int, int]:
    pair.a.initiate("site", None, pair.now)
    pair.run()
    (ua,), (ub,) = pair.of("a", IkeSaUp), pair.of("b", IkeSaUp)
    return ua.unique_id, ub.unique_id


def _sa(ep):
    (sa,) = [s for s in ep.sas.values() if s.established]
    return sa


def _is_request(d: Datagram) -> bool:
    return not d.data[19] & 0x20  # the header's R flag


def test_mobike_negotiated_by_default_and_only_when_both_want_it():
    pair = _pair()
    _up(pair)
    assert _sa(pair.a).mobike and _sa(pair.b).mobike
    assert _sa(pair.a).status()["mobike"] is True
    for off in ({"a_mobike": False}, {"b_mobike": False}):
        pair = _pair(**off)
        _up(pair)
        assert not _sa(pair.a).mobike and not _sa(pair.b).mobike
        assert pair.a.roaming_sas() == []


def test_update_sa_addresses_keeps_the_sas_and_moves_after_the_routability_check():
    pair = _pair()
    ua, _ = _up(pair)
    before = (_sa(pair.a).spi_i, [e.inbound_spi for e in pair.of("a", ChildSaUp)])
    pair.ips[A2_IP] = pair.a
    seen: list[Datagram] = []
    pair.wire.tamper = lambda d: seen.append(d) or d
    assert pair.a.roam(ua, A2_IP, pair.now)
    pair.run()
    b_sa, a_sa = _sa(pair.b), _sa(pair.a)
    assert b_sa.remote[0] == A2_IP and a_sa.local[0] == A2_IP
    (moved_b,) = pair.of("b", IkeSaMoved)
    (moved_a,) = pair.of("a", IkeSaMoved)
    assert moved_b.remote[0] == A2_IP and moved_a.local[0] == A2_IP
    assert set(moved_a.child_spis) == set(before[1]) and len(moved_b.child_spis) == 1
    # no new handshake: the same IKE SA, no new CHILD SA
    assert (a_sa.spi_i, [e.inbound_spi for e in pair.of("a", ChildSaUp)]) == before
    assert len(pair.of("a", IkeSaUp)) == 1
    # the update (from A2) and then B's return routability check (to A2), both requests
    requests = [d for d in seen if _is_request(d)]
    assert requests[0].src[0] == A2_IP and requests[1].src[0] == B_IP and requests[1].dst[0] == A2_IP


def test_no_child_move_while_the_new_address_does_not_answer_the_check():
    pair = _pair(retransmit_timeout=1.0, retransmit_tries=2)
    ua, _ = _up(pair)
    pair.ips[A2_IP] = pair.a
    # B's requests towards the new address are lost (a spoofed update would look like this)
    pair.wire.tamper = lambda d: None if d.src[0] == B_IP and d.dst[0] == A2_IP and _is_request(d) else d
    pair.a.roam(ua, A2_IP, pair.now)
    pair.run()
    assert pair.of("b", IkeSaMoved) == []
    assert pair.of("a", IkeSaMoved)  # the initiator got its answer
    pair.advance(30)
    assert pair.of("b", IkeSaMoved) == []  # the check failed: B's SA ends as a dead peer instead
    assert not [s for s in pair.b.sas.values() if s.established]


def test_only_clients_without_a_fixed_local_address_are_watched_for_roaming():
    pair = _pair()
    _up(pair)
    assert pair.a.roaming_sas() == []  # site-to-site: local_addrs names the address
    a, b = mirrored()
    pair = Pair([a], [b])
    ua, _ = _up(pair)
    a.local_addrs = ["%any"]  # a laptop's connection: from wherever it is
    ((uid, local, remote),) = pair.a.roaming_sas()
    assert uid == ua and remote[0] == B_IP
    assert pair.b.roaming_sas() == []  # the responder never starts a move


def test_roam_without_mobike_is_refused():
    pair = _pair(mobike=False)
    ua, _ = _up(pair)
    assert not pair.a.roam(ua, A2_IP, pair.now)
    assert not pair.a.roam(999, A2_IP, pair.now)


class _Nat:
    """A NAT in front of A: A's source becomes NAT_IP and a port from ``base``."""

    def __init__(self, base: int):
        self.base = base
        self.inside: dict[int, int] = {}  # public port -> A's port (the current mappings)

    def __call__(self, d: Datagram) -> Datagram | None:
        if d.src[0] == A_IP:
            public = self.base + d.src[1]
            self.inside[public] = d.src[1]
            return Datagram(d.data, (NAT_IP, public), d.dst)
        if d.dst[0] == NAT_IP:
            port = self.inside.get(d.dst[1]) if d.dst[1] >= self.base else None
            return None if port is None else Datagram(d.data, d.src, (A_IP, port))
        return d


def test_nat_mapping_change_is_found_by_the_liveness_check_and_followed():
    a, b = mirrored(a_dpd_delay=5.0, b_remote_addrs=["%any"])
    pair = Pair([a], [b])
    nat = _Nat(10000)
    pair.wire.tamper = nat
    pair.ips[NAT_IP] = pair.a
    _up(pair)
    assert _sa(pair.a).nat_local and _sa(pair.b).nat_remote
    assert _sa(pair.b).remote == (NAT_IP, 14500)
    pair.advance(6)  # the first check sets the mapping's baseline
    assert pair.of("b", IkeSaMoved) == []
    nat.base = 20000  # the router restarted: new public ports
    pair.advance(6)
    (moved,) = pair.of("b", IkeSaMoved)
    assert moved.remote == (NAT_IP, 24500) == _sa(pair.b).remote
    assert len(pair.of("a", IkeSaUp)) == 1


def _fake_sa(**kw):
    logged: list[tuple[str, dict]] = []
    sa = SimpleNamespace(config=SimpleNamespace(mobike=True, encap=False), mobike=True, peer_addresses=(),
                         nat_mapping=None, established=True, spi_i=bytes(8), spi_r=bytes(range(8)),
                         local=("192.0.2.1", 4500), remote=("198.51.100.2", 4500), nat_local=False,
                         nat_remote=False, rng=lambda n: bytes(n), moved=[], queued=[],
                         request_addresses=(("198.51.100.2", 4500), ("192.0.2.1", 4500)))
    sa.log = lambda event, **f: logged.append((event, f))
    sa.addresses_moved = lambda now: sa.moved.append(now)
    sa.queue_next = sa.queued.append
    sa.logged = logged
    for key, value in kw.items():
        setattr(sa, key, value)
    return sa


def _msg(*notifies: NotifyPayload) -> Message:
    return Message(bytes(8), bytes(8), ExchangeType.INFORMATIONAL, 1, False, False, list(notifies))


def test_additional_addresses_are_kept_and_bad_ones_skipped():
    sa = _fake_sa()
    take_peer_addresses(sa, _msg(NotifyPayload(NotifyType.ADDITIONAL_IP4_ADDRESS, bytes([198, 51, 100, 7])),
                                 NotifyPayload(NotifyType.ADDITIONAL_IP6_ADDRESS, bytes(15) + b"\x01"),
                                 NotifyPayload(NotifyType.ADDITIONAL_IP4_ADDRESS, b"\x01\x02\x03")))
    assert sa.peer_addresses == ("198.51.100.7", "::1")
    assert [e for e, _ in sa.logged] == ["mobike_bad_address"]
    take_peer_addresses(sa, _msg(NotifyPayload(NotifyType.NO_ADDITIONAL_ADDRESSES)))
    assert sa.peer_addresses == ()
    many = [NotifyPayload(NotifyType.ADDITIONAL_IP4_ADDRESS, bytes([10, 0, 0, n])) for n in range(1000 % 256)]
    take_peer_addresses(sa, _msg(*many))
    assert len(sa.peer_addresses) == ike_mobike.MAX_PEER_ADDRESSES
    assert "mobike_too_many_addresses" in [e for e, _ in sa.logged]


def test_cookie2_echoed_only_when_well_formed_and_update_ignored_without_mobike():
    sa = _fake_sa()
    out = respond_mobike(sa, _msg(NotifyPayload(NotifyType.COOKIE2, b"x" * 16)), 0.0)
    assert [(p.notify_type, p.data) for p in out] == [(NotifyType.COOKIE2, b"x" * 16)]
    assert respond_mobike(sa, _msg(NotifyPayload(NotifyType.COOKIE2, b"x" * 4)), 0.0) == []
    assert respond_mobike(sa, _msg(NotifyPayload(NotifyType.COOKIE2, b"x" * 65)), 0.0) == []
    off = _fake_sa(mobike=False)
    assert respond_mobike(off, _msg(NotifyPayload(NotifyType.UPDATE_SA_ADDRESSES)), 0.0) == []
    assert off.remote == ("198.51.100.2", 4500) and ("mobike_update_ignored", {"reason": "MOBIKE not negotiated"}) \
        in off.logged


def test_update_from_a_new_address_queues_the_check_and_same_address_moves_at_once():
    sa = _fake_sa(request_addresses=(("203.0.113.9", 4500), ("192.0.2.1", 4500)))
    respond_mobike(sa, _msg(NotifyPayload(NotifyType.UPDATE_SA_ADDRESSES)), 0.0)
    assert sa.remote == ("203.0.113.9", 4500) and sa.moved == []
    (check,) = sa.queued
    assert isinstance(check, IkeMobike) and check.kind == "routability"
    same = _fake_sa()
    respond_mobike(same, _msg(NotifyPayload(NotifyType.UPDATE_SA_ADDRESSES)), 0.0)
    assert same.moved == [0.0] and same.queued == []


def test_a_wrong_cookie2_in_the_answer_proves_nothing():
    sa = _fake_sa()
    task = IkeMobike("routability")
    assert [p.notify_type for p in task.build(sa, 0.0)] == [NotifyType.COOKIE2]
    src, dst = sa.remote, sa.local
    reply = Message(bytes(8), bytes(8), ExchangeType.INFORMATIONAL, 1, False, True,
                    [NotifyPayload(NotifyType.COOKIE2, b"y" * 16)])
    task.process(sa, reply, b"", src, dst, 0.0)
    assert sa.moved == [] and "mobike_cookie2_mismatch" in [e for e, _ in sa.logged]
    reply.payloads = []
    task.process(sa, reply, b"", src, dst, 0.0)
    assert sa.moved == []
    reply.payloads = [NotifyPayload(NotifyType.COOKIE2, task.cookie2)]
    task.process(sa, reply, b"", src, dst, 0.0)
    assert sa.moved == [0.0]


def test_esp_from_a_new_port_moves_an_sa_whose_peer_is_behind_a_nat():
    a, b = mirrored(b_remote_addrs=["%any"])
    pair = Pair([a], [b])
    pair.wire.tamper = _Nat(10000)
    pair.ips[NAT_IP] = pair.a
    _up(pair)
    (b_child,) = pair.of("b", ChildSaUp)
    spi = b_child.inbound_spi
    # with MOBIKE only a new port of the same address; a new address needs UPDATE_SA_ADDRESSES
    assert not pair.b.esp_from(spi, ("203.0.113.50", 14500), pair.now)
    assert pair.b.esp_from(spi, (NAT_IP, 31000), pair.now)
    pair._collect()
    (moved,) = pair.of("b", IkeSaMoved)
    assert moved.remote == (NAT_IP, 31000) and moved.child_spis == (spi,)
    assert not pair.b.esp_from(spi, (NAT_IP, 31000), pair.now)  # already there
    assert not pair.b.esp_from(12345, (NAT_IP, 31001), pair.now)  # no such SA
    (a_child,) = pair.of("a", ChildSaUp)
    assert not pair.a.esp_from(a_child.inbound_spi, ("203.0.113.50", 4500), pair.now)  # we are the NATed side


def test_esp_from_elsewhere_does_not_move_an_sa_without_a_nat():
    pair = _pair(mobike=False)
    _up(pair)
    (b_child,) = pair.of("b", ChildSaUp)
    assert not pair.b.esp_from(b_child.inbound_spi, ("203.0.113.50", 4500), pair.now)
    assert pair.of("b", IkeSaMoved) == []
