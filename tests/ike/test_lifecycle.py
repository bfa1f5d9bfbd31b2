"""After the handshake: extra CHILD SAs, rekeying (CHILD and IKE, either side, collisions), deletes,
liveness checks and retransmissions."""

from __future__ import annotations

import pytest

from ike.config import ChildConfig, TrafficSelector
from tests.ike.harness import (ChildSaDown, ChildSaUp, IkeSaDown, IkeSaUp, NegotiationFailed, Pair, Wire, mirrored)


def up(initiator="a", wire=None, seed=7, **kw):
    a, b = mirrored(**kw)
    pair = Pair([a], [b], wire=wire, seed=seed)
    pair.ep = lambda s: pair.a if s == "a" else pair.b
    pair.ep(initiator).initiate("site", None, pair.now)
    if wire is None:
        pair.run()
    else:
        pair.advance(600)
    assert pair.of("a", ChildSaUp) and pair.of("b", ChildSaUp)
    return pair


def only_sa(ep):
    sas = [sa for sa in ep.sas.values() if sa.state == "established"]
    assert len(sas) == 1, ep.status()
    return sas[0]


def installed(ep):
    """{inbound: outbound} of the CHILD SAs an endpoint has (per its events)."""
    return {c.inbound_spi: c.outbound_spi for sa in ep.sas.values() for c in sa.children.values()}


def assert_consistent(pair, n_children=1):
    a, b = installed(pair.a), installed(pair.b)
    assert len(a) == len(b) == n_children, (a, b)
    assert {v: k for k, v in a.items()} == b
    # events agree with state: each live SA had a ChildSaUp and no ChildSaDown
    for side, ep in (("a", pair.a), ("b", pair.b)):
        ups = {e.inbound_spi for e in pair.of(side, ChildSaUp)}
        downs = {e.inbound_spi for e in pair.of(side, ChildSaDown)}
        assert set(installed(ep)) == ups - downs


def keymat_pairs_match(pair, live_only=False):
    ups_a = {e.inbound_spi: e for e in pair.of("a", ChildSaUp)}
    ups_b = {e.inbound_spi: e for e in pair.of("b", ChildSaUp)}
    for spi, ea in ups_a.items():
        if live_only and spi not in installed(pair.a):
            continue
        eb = ups_b[ea.outbound_spi]
        assert eb.outbound_spi == spi and ea.inbound_keymat == eb.outbound_keymat
        assert ea.outbound_keymat == eb.inbound_keymat


def test_extra_child_sa():
    a, b = mirrored()
    extra = ChildConfig("web", [TrafficSelector.from_cidr("10.11.0.0/16")], [TrafficSelector.from_cidr("10.12.0.0/16")],
                        esp_proposals=["aes128-sha256-ecp256"])
    a.children.append(extra)
    b.children.append(ChildConfig("web", [TrafficSelector.from_cidr("10.12.0.0/16")],
                                  [TrafficSelector.from_cidr("10.11.0.0/16")], esp_proposals=["aes128-sha256-ecp256"]))
    pair = Pair([a], [b])
    pair.a.initiate("site", None, 0.0)
    pair.run()
    assert sorted(e.child_name for e in pair.of("a", ChildSaUp)) == ["net", "web"]
    assert sorted(e.child_name for e in pair.of("b", ChildSaUp)) == ["net", "web"]
    web = [e for e in pair.of("a", ChildSaUp) if e.child_name == "web"][0]
    assert web.esp_transform == "aes128-sha256"
    keymat_pairs_match(pair)
    assert_consistent(pair, 2)


@pytest.mark.parametrize("pfs", [False, True])
@pytest.mark.parametrize("side", ["a", "b"])
def test_child_rekey(side, pfs):
    esp = "aes256gcm16-ecp256" if pfs else "aes256gcm16"
    pair = up(esp=esp)
    ep = pair.ep(side)
    (old,) = pair.of(side, ChildSaUp)
    ep.rekey_child(old.inbound_spi, pair.now)
    pair.run()
    ups = pair.of(side, ChildSaUp)
    assert len(ups) == 2 and ups[1].rekeyed_from == old.inbound_spi
    downs = pair.of(side, ChildSaDown)
    assert [d.inbound_spi for d in downs] == [old.inbound_spi] and downs[0].reason == "rekeyed"
    # make-before-break: the new SA's Up comes before the old one's Down, on both sides
    for s in ("a", "b"):
        evs = [e for e in pair.events[s] if isinstance(e, (ChildSaUp, ChildSaDown))]
        assert [type(e).__name__ for e in evs] == ["ChildSaUp", "ChildSaUp", "ChildSaDown"]
    keymat_pairs_match(pair)
    assert ups[1].inbound_keymat != old.inbound_keymat
    assert_consistent(pair)


def test_child_rekey_by_timer_on_both_sides():
    pair = up(child_rekey_time=100.0, child_life_time=150.0)
    pair.advance(1000)
    assert len(pair.of("a", ChildSaUp)) >= 10
    keymat_pairs_match(pair)
    assert_consistent(pair)
    assert not pair.of("a", NegotiationFailed) and not pair.of("b", NegotiationFailed)


@pytest.mark.parametrize("side", ["a", "b"])
def test_ike_rekey(side):
    pair = up()
    old = only_sa(pair.ep(side))
    old.rekey_at = pair.now
    pair.ep(side).reschedule(old)
    pair.ep(side).handle_timer(pair.now)
    pair.run()
    for s in ("a", "b"):
        ups = pair.of(s, IkeSaUp)
        assert len(ups) == 2 and ups[1].rekeyed_from == ups[0].unique_id
        (down,) = pair.of(s, IkeSaDown)
        assert down.unique_id == ups[0].unique_id and down.reason == "rekeyed"
        new = only_sa(pair.ep(s))
        assert len(new.children) == 1 and not pair.of(s, ChildSaDown)
    assert only_sa(pair.a).spi_i == only_sa(pair.b).spi_i and only_sa(pair.a).initiator == (side == "a")
    # the new IKE SA works: a CHILD rekey over it
    (child,) = pair.of("b", ChildSaUp)
    pair.b.rekey_child(child.inbound_spi, pair.now)
    pair.run()
    assert len(pair.of("a", ChildSaUp)) == 2
    assert_consistent(pair)


def test_ike_rekey_by_timer():
    pair = up(rekey_time=500.0, b_rekey_time=700.0)
    pair.advance(2000)
    assert len(pair.of("a", IkeSaUp)) >= 4
    assert len(pair.a.sas) == 1 and len(pair.b.sas) == 1
    assert_consistent(pair)


@pytest.mark.parametrize("seed", range(6))
def test_simultaneous_child_rekey(seed):
    pair = up(seed=seed)
    (ca,), (cb,) = pair.of("a", ChildSaUp), pair.of("b", ChildSaUp)
    pair.a.rekey_child(ca.inbound_spi, pair.now)
    pair.b.rekey_child(cb.inbound_spi, pair.now)
    pair.run()
    assert_consistent(pair)
    keymat_pairs_match(pair)
    downs = [d.reason for d in pair.of("a", ChildSaDown)]
    assert sorted(downs) == ["rekey collision", "rekeyed"]


@pytest.mark.parametrize("seed", range(6))
def test_simultaneous_ike_rekey(seed):
    pair = up(seed=seed)
    for ep in (pair.a, pair.b):
        only_sa(ep).rekey_at = pair.now
        ep.reschedule(only_sa(ep))
    pair.a.handle_timer(pair.now)
    pair.b.handle_timer(pair.now)
    pair.run()
    new_a, new_b = only_sa(pair.a), only_sa(pair.b)
    assert (new_a.spi_i, new_a.spi_r) == (new_b.spi_i, new_b.spi_r)
    assert len(pair.a.sas) == 1 and len(pair.b.sas) == 1
    assert len(new_a.children) == 1 and len(new_b.children) == 1
    for s in ("a", "b"):
        assert len(pair.of(s, IkeSaUp)) == 2 and [d.reason for d in pair.of(s, IkeSaDown)] == ["rekeyed"]
    (child,) = pair.of("a", ChildSaUp)
    pair.a.rekey_child(child.inbound_spi, pair.now)
    pair.run()
    assert_consistent(pair)


@pytest.mark.parametrize("side", ["a", "b"])
def test_delete_child(side):
    pair = up()
    pair.ep(side).terminate_child("net", pair.now)
    pair.run()
    for s in ("a", "b"):
        (down,) = pair.of(s, ChildSaDown)
        assert down.reason == ("deleted" if s == side else "deleted by peer")
        assert only_sa(pair.ep(s)).children == {}


@pytest.mark.parametrize("side", ["a", "b"])
def test_delete_ike(side):
    pair = up()
    pair.ep(side).terminate_ike("site", pair.now)
    pair.run()
    for s in ("a", "b"):
        (down,) = pair.of(s, IkeSaDown)
        assert down.reason == ("deleted" if s == side else "deleted by peer")
        assert [d.reason for d in pair.of(s, ChildSaDown)] == ["ike down"]
        assert not pair.ep(s).sas and not pair.ep(s).child_index


def test_dpd_keeps_alive_then_declares_dead():
    pair = up(dpd_delay=30.0)
    pair.advance(300)
    assert not pair.of("a", IkeSaDown)
    sent = pair.sent
    assert sent > 10  # liveness checks went back and forth
    pair.wire.loss = 1.0  # the peer vanishes
    pair.advance(400)
    (down,) = pair.of("a", IkeSaDown)
    assert down.reason == "dead peer"
    assert [d.reason for d in pair.of("a", ChildSaDown)] == ["ike down"]
    assert not pair.a.sas


def test_inbound_esp_postpones_dpd():
    pair = up(dpd_delay=30.0, b_dpd_delay=0.0)
    (ca,) = pair.of("a", ChildSaUp)
    before = pair.sent
    for t in range(1, 100):
        pair.now = float(t)
        pair.a.note_inbound_esp(ca.inbound_spi, pair.now)
        pair.a.handle_timer(pair.now)
        pair.step()
    assert pair.sent == before  # no DPD while ESP arrives


def test_retransmit_same_bytes_and_cached_response():
    a, b = mirrored()
    pair = Pair([a], [b])
    pair.a.initiate("site", None, 0.0)
    first = pair.a.datagrams_to_send(0.0)
    assert pair.a.get_timer() == 4.0
    pair.a.handle_timer(4.0)
    again = pair.a.datagrams_to_send(4.0)
    assert [d.data for d in again] == [d.data for d in first]
    # the responder answers a repeated request from its cache, with the same bytes
    pair.b.receive_datagram(first[0].data, first[0].src, first[0].dst, 4.0)
    resp1 = pair.b.datagrams_to_send(4.0)
    pair.b.receive_datagram(first[0].data, first[0].src, first[0].dst, 5.0)
    resp2 = pair.b.datagrams_to_send(5.0)
    assert [d.data for d in resp1] == [d.data for d in resp2]
    assert pair.a.get_timer() == pytest.approx(4.0 + 4.0 * 1.8)


def test_wrong_message_id_ignored():
    pair = up()
    sa_b = only_sa(pair.b)
    from ike.tasks.ike_dpd import IkeDpd
    sa_a = only_sa(pair.a)
    sa_a.my_mid += 5  # skip ahead: the responder must ignore it
    sa_a.queue_task(IkeDpd(), pair.now)
    pair.step()
    assert pair.b.drops.get("unexpected message ID") == 1
    assert sa_b.peer_mid == 2


@pytest.mark.parametrize("seed", range(5))
def test_lossy_network_converges(seed):
    wire = Wire(loss=0.1, dup=0.1, reorder=0.1, seed=seed)
    a, b = mirrored(child_rekey_time=200.0, child_life_time=400.0, rekey_time=500.0, dpd_delay=60.0)
    pair = Pair([a], [b], wire=wire, seed=seed)
    pair.a.initiate("site", None, 0.0)
    pair.advance(2000)
    assert pair.of("a", IkeSaUp) and pair.of("b", IkeSaUp)
    pair.wire.loss = pair.wire.dup = pair.wire.reorder = 0.0
    pair.advance(100)
    live_a = [sa for sa in pair.a.sas.values() if sa.state == "established"]
    live_b = [sa for sa in pair.b.sas.values() if sa.state == "established"]
    assert len(live_a) == len(live_b) == 1
    assert_consistent(pair)
    keymat_pairs_match(pair)


def test_child_rekey_invalid_ke_retry_with_requested_group():
    pair = up(a_esp="aes256gcm16-ecp256-x25519", b_esp="aes256gcm16-x25519")
    (old,) = pair.of("a", ChildSaUp)
    pair.a.rekey_child(old.inbound_spi, pair.now)
    pair.run()
    ups = pair.of("a", ChildSaUp)
    assert len(ups) == 2 and ups[1].rekeyed_from == old.inbound_spi
    assert not pair.of("a", NegotiationFailed)
    keymat_pairs_match(pair)
    assert_consistent(pair)


def test_child_rekey_pfs_refused_keeps_old_sa():
    pair = up(a_esp="aes256gcm16-ecp256", b_esp="aes256gcm16")
    (old,) = pair.of("a", ChildSaUp)
    pair.a.rekey_child(old.inbound_spi, pair.now)
    pair.run()
    (fail,) = pair.of("a", NegotiationFailed)
    assert fail.notify == "NO_PROPOSAL_CHOSEN" and fail.stage == "CREATE_CHILD_SA"
    assert_consistent(pair)


@pytest.mark.parametrize("side", ["a", "b"])
def test_reauthentication_make_before_break(side):
    kw = {f"{side}_reauth_time": 300.0}
    pair = up(**kw)
    (old_child,) = pair.of(side, ChildSaUp)
    pair.advance(400)
    ups, downs = pair.of(side, IkeSaUp), pair.of(side, IkeSaDown)
    assert len(ups) == 2 and [d.reason for d in downs] == ["reauthenticated"] and ups[1].rekeyed_from is None
    new_child = pair.of(side, ChildSaUp)[1]
    assert new_child.rekeyed_from == old_child.inbound_spi and new_child.ike_unique_id == ups[1].unique_id
    evs = [type(e).__name__ for e in pair.events[side] if isinstance(e, (ChildSaUp, ChildSaDown))]
    assert evs == ["ChildSaUp", "ChildSaUp", "ChildSaDown"]
    assert [d.reason for d in pair.of(side, ChildSaDown)] == ["reauthenticated"]
    other = "b" if side == "a" else "a"
    assert [d.reason for d in pair.of(other, IkeSaDown)] == ["deleted by peer"]
    assert len(pair.a.sas) == len(pair.b.sas) == 1
    assert_consistent(pair)


# --- the same under a bad network: 10% lost, 10% duplicated, 10% reordered -------------------

def lossy(seed):
    return Wire(loss=0.1, dup=0.1, reorder=0.1, seed=seed)


@pytest.mark.parametrize("ike,esp", [("aes256gcm16-prfsha256-ecp256", "aes256gcm16"),
                                     ("aes128-sha256-modp2048", "aes128-sha256"),
                                     ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305"),
                                     ("aes256-sha512-modp3072", "aes256-sha512")])
@pytest.mark.parametrize("side", ["a", "b"])
def test_lossy_handshake_each_proposal(ike, esp, side):
    a, b = mirrored(ike, esp)
    pair = Pair([a], [b], wire=lossy(len(ike) * 7 + (side == "a")))
    (pair.a if side == "a" else pair.b).initiate("site", None, 0.0)
    pair.advance(600)
    assert_consistent(pair)
    keymat_pairs_match(pair)


@pytest.mark.parametrize("seed", range(3))
def test_lossy_simultaneous_rekeys_and_deletes(seed):
    pair = up(wire=lossy(seed), seed=seed, esp="aes256gcm16-ecp256")
    pair.advance(300)
    (ca,), (cb,) = [[c for c in pair.of(s, ChildSaUp) if c.inbound_spi in installed(pair.ep(s))] for s in "ab"]
    pair.a.rekey_child(ca.inbound_spi, pair.now)
    pair.b.rekey_child(cb.inbound_spi, pair.now)
    for ep in (pair.a, pair.b):
        only_sa(ep).rekey_at = pair.now
        ep.reschedule(only_sa(ep))
    pair.a.handle_timer(pair.now)
    pair.b.handle_timer(pair.now)
    pair.advance(600)
    assert_consistent(pair)
    keymat_pairs_match(pair)
    pair.b.terminate_child("net", pair.now)
    pair.advance(600)
    assert installed(pair.a) == {} and installed(pair.b) == {}
    pair.a.terminate_ike("site", pair.now)
    pair.advance(600)
    assert not pair.a.sas and not pair.b.sas


def test_zero_rekey_and_life_time_mean_never():
    pair = up(child_rekey_time=0.0, rekey_time=0.0)
    (ca,) = pair.of("a", ChildSaUp)
    assert ca.rekey_time == 0.0 and ca.life_time == 0.0
    assert pair.a.get_timer() is None
    pair.advance(10 ** 6)
    assert len(pair.of("a", ChildSaUp)) == 1 and not pair.of("a", ChildSaDown)
    assert pair.a.status()[0]["children"][0]["expire_at"] is None


def test_old_ike_sa_goes_even_if_the_peer_never_deletes_it():
    pair = up()
    sa = only_sa(pair.a)
    sa.rekey_at = pair.now
    pair.a.reschedule(sa)
    pair.wire.tamper = lambda d: None if d.data[18] == 37 else d  # INFORMATIONALs (the delete) vanish
    pair.a.handle_timer(pair.now)
    pair.advance(400)
    assert [d.reason for d in pair.of("b", IkeSaDown)] == ["rekeyed"]
    assert len(pair.b.sas) == 1 and len(pair.a.sas) == 1
