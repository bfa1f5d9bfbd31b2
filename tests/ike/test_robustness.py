"""Fragmentation (RFC 7383), INITIAL_CONTACT, half-open cleanup, cookies under load."""

from __future__ import annotations

import pytest

from ike.endpoint import IkeEndpoint
from tests.ike.harness import (A_IP, B_IP, ChildSaDown, ChildSaUp, IkeSaDown, IkeSaUp, NegotiationFailed, Pair, Wire,
                         mirrored, seeded_rng)

MANY_A = ",".join(f"10.1.{i}.0/24" for i in range(40))
MANY_B = ",".join(f"10.2.{i}.0/24" for i in range(40))


def fragmenting_pair(wire=None, **kw):
    a, b = mirrored(local_ts=MANY_A, remote_ts=MANY_B, b_local_ts=MANY_B, b_remote_ts=MANY_A,
                    fragment_size=576, **kw)
    sizes = []

    def record(d):
        sizes.append(len(d.data))
        return d

    wire = wire or Wire()
    wire.tamper = record
    pair = Pair([a], [b], wire=wire)
    pair.sizes = sizes
    return pair


def test_ike_auth_fragmented_both_ways():
    pair = fragmenting_pair()
    pair.a.initiate("site", None, 0.0)
    pair.run()
    (ca,), (cb,) = pair.of("a", ChildSaUp), pair.of("b", ChildSaUp)
    assert len(ca.local_ts) == 40 and ca.outbound_keymat == cb.inbound_keymat
    assert max(pair.sizes) <= 576 - 28 and len(pair.sizes) > 6  # IKE_AUTH went as several fragments


def test_no_fragments_unless_both_announce():
    pair = fragmenting_pair(b_fragmentation="no")
    pair.a.initiate("site", None, 0.0)
    pair.run()
    assert pair.of("a", ChildSaUp) and max(pair.sizes) > 1000 and len(pair.sizes) == 4


@pytest.mark.parametrize("seed", range(4))
def test_fragments_survive_loss_and_reordering(seed):
    pair = fragmenting_pair(wire=Wire(loss=0.1, dup=0.1, reorder=0.1, seed=seed))
    pair.a.initiate("site", None, 0.0)
    pair.advance(300)
    assert pair.of("a", ChildSaUp) and pair.of("b", ChildSaUp)


def test_child_rekey_fragmented():
    pair = fragmenting_pair()
    pair.a.initiate("site", None, 0.0)
    pair.run()
    (ca,) = pair.of("a", ChildSaUp)
    pair.b.rekey_child(pair.of("b", ChildSaUp)[0].inbound_spi, pair.now)
    pair.run()
    assert len(pair.of("a", ChildSaUp)) == 2 and [d.reason for d in pair.of("a", ChildSaDown)] == ["rekeyed"]


def test_initial_contact_replaces_stale_sa():
    pair = Pair(*[[c] for c in mirrored()])
    pair.a.initiate("site", None, 0.0)
    pair.run()
    # A reboots: a new endpoint with the same config, the old state is gone
    a_cfg = pair.a.connections["site"]
    pair.a = IkeEndpoint([a_cfg], rng=seeded_rng(99))
    pair.ips[A_IP] = pair.a
    pair.events["a"].clear()
    pair.a.initiate("site", None, pair.now)
    pair.run()
    assert [d.reason for d in pair.of("b", IkeSaDown)] == ["replaced"]
    assert len([s for s in pair.b.status()]) == 1
    assert len(pair.of("b", ChildSaUp)) == 2 and len(pair.of("b", ChildSaDown)) == 1


def test_half_open_sa_expires():
    a, b = mirrored()
    pair = Pair([a], [b])
    pair.a.initiate("site", None, 0.0)
    (init,) = pair.a.datagrams_to_send(0.0)
    pair.b.receive_datagram(init.data, init.src, init.dst, 0.0)
    assert pair.b.half_open_count() == 1
    assert pair.b.get_timer() == 30.0
    pair.b.handle_timer(30.0)
    assert pair.b.half_open_count() == 0 and not pair.b.sas
    assert pair.b.next_event() is None  # never up, so no IkeSaDown


def test_cookies_under_a_flood_still_let_the_real_peer_in():
    a, b = mirrored(b_remote_addrs=["%any"])
    pair = Pair([a], [b], cookie_threshold=5)
    # 20 spoofed initiators fill the half-open table
    for i in range(20):
        spoof = IkeEndpoint([mirrored(b_remote_addrs=["%any"])[0]], rng=seeded_rng(500 + i))
        spoof.initiate("site", None, 0.0)
        (d,) = spoof.datagrams_to_send(0.0)
        pair.b.receive_datagram(d.data, (f"203.0.113.{i + 1}", 500), d.dst, 0.0)
    pair.b.datagrams_to_send(0.0)
    assert pair.b.half_open_count() == 5
    assert pair.b.drops["cookie required"] == 15
    pair.a.initiate("site", None, 0.0)
    pair.run()
    assert pair.of("a", IkeSaUp) and pair.of("b", IkeSaUp)


def test_cookie_secret_rotation():
    from ike.crypto.cookies import CookieJar
    jar = CookieJar(seeded_rng(1), 0.0)
    c = jar.make(b"n" * 32, "192.0.2.1", b"s" * 8, 0.0)
    assert jar.verify(c, b"n" * 32, "192.0.2.1", b"s" * 8, 61.0)  # previous secret still good
    assert not jar.verify(c, b"n" * 32, "192.0.2.9", b"s" * 8, 61.0)
    assert not jar.verify(c, b"n" * 32, "192.0.2.1", b"s" * 8, 200.0)  # two rotations later
    assert not jar.verify(b"", b"n" * 32, "192.0.2.1", b"s" * 8, 0.0)


def test_status_reports_deadlines_and_no_keys():
    pair = Pair(*[[c] for c in mirrored()])
    pair.a.initiate("site", None, 0.0)
    pair.run()
    [s] = pair.a.status()
    assert s["proposal"] == "aes256gcm16-prfsha256-ecp256" and s["rekey_at"] > 0
    [child] = s["children"]
    assert child["rekey_at"] < child["expire_at"] and child["proposal"] == "aes256gcm16"
    assert "keymat" not in repr(s)


def test_commands_for_unknown_things_are_harmless():
    pair = Pair(*[[c] for c in mirrored()])
    pair.a.rekey_child(12345, 0.0)
    pair.a.note_inbound_esp(12345, 0.0)
    pair.a.terminate_child("nope", 0.0)
    pair.a.terminate_ike("site", 0.0)
    with pytest.raises(KeyError):
        pair.a.initiate("nope", None, 0.0)
    assert pair.a.datagrams_to_send(0.0) == [] and pair.a.get_timer() is None


def test_dpd_action_restart_reconnects():
    a, b = mirrored(dpd_delay=30.0, child_dpd_action="restart", b_child_dpd_action="clear")
    pair = Pair([a], [b])
    pair.a.initiate("site", None, 0.0)
    pair.run()
    pair.wire.loss = 1.0
    pair.advance(250)
    assert [d.reason for d in pair.of("a", IkeSaDown)] == ["dead peer"]
    pair.wire.loss = 0.0
    pair.advance(100)
    assert len(pair.of("a", IkeSaUp)) == 2 and len(pair.of("a", ChildSaUp)) == 2


def test_peer_floating_to_4500_without_nat():
    from ike.endpoint import Datagram

    def float_a(d):  # A switches to port 4500 after IKE_SA_INIT although no NAT is in between
        if d.src[0] == A_IP and d.data[18] != 34:  # not IKE_SA_INIT
            return Datagram(d.data, (A_IP, 4500), (d.dst[0], 4500))
        return d

    pair = Pair(*[[c] for c in mirrored()], wire=Wire(tamper=float_a))
    pair.a.initiate("site", None, 0.0)
    pair.run()
    (ib,) = pair.of("b", IkeSaUp)
    assert ib.remote == (A_IP, 4500) and ib.local == (B_IP, 4500)
    assert not ib.nat_remote and pair.of("a", ChildSaUp)


def test_superseded_child_removed_if_never_deleted():
    pair = Pair(*[[c] for c in mirrored(child_rekey_time=0.0, child_life_time=100.0, b_child_rekey_time=0.0)])
    pair.a.initiate("site", None, 0.0)
    pair.run()
    sa = next(iter(pair.a.sas.values()))
    (child,) = sa.children.values()
    child.state = "rekeyed"  # as if the peer rekeyed it and then never sent the delete
    assert pair.a.get_timer() == pytest.approx(child.expire_at + 30.0)
    pair.a.handle_timer(child.expire_at + 30.0)
    assert sa.children == {}


def test_unknown_critical_payload_answered_and_sa_survives():
    from ike.codec import message as codec
    from ike.codec.payloads import UnknownPayload
    pair = Pair(*[[c] for c in mirrored()])
    pair.a.initiate("site", None, 0.0)
    pair.run()
    sa_a = next(iter(pair.a.sas.values()))
    sa_b = next(iter(pair.b.sas.values()))
    msg = codec.Message(sa_a.spi_i, sa_a.spi_r, 37, sa_a.my_mid, True, False,
                        [UnknownPayload(222, b"x", critical=True)])
    data = codec.seal(msg, sa_a.cipher_out, seeded_rng(3))
    pair.b.receive_datagram(data, sa_a.local, sa_a.remote, 1.0)
    (answer,) = pair.b.datagrams_to_send(1.0)
    reply = codec.decode(answer.data)
    inner = codec.decode_inner(reply, reply.payloads[-1].first_inner,
                               codec.open_sk(answer.data, reply, sa_a.cipher_in))
    assert inner.payloads[0].notify_type == 1 and inner.payloads[0].data == bytes([222])
    assert sa_b.peer_mid == sa_a.my_mid + 1 and sa_b.state == "established"
    # an IKE_SA_INIT request with one is answered without creating state
    init = codec.Message(b"\x01" * 8, bytes(8), 34, 0, True, False, [UnknownPayload(222, b"x", critical=True)])
    pair.b.receive_datagram(codec.encode(init), (A_IP, 500), (B_IP, 500), 1.0)
    (answer,) = pair.b.datagrams_to_send(1.0)
    assert codec.decode(answer.data).payloads[0].notify_type == 1 and len(pair.b.sas) == 1


@pytest.mark.parametrize("ike,encr,integ", [("aes256gcm16-prfsha256-ecp256", "aes256gcm16", "none"),
                                            ("aes128-sha256-modp2048", "aes128", "sha256")])
def test_key_snapshot_for_wireshark_export(ike, encr, integ):
    from tunnel.ops.keyexport import ikev2_lines
    pair = Pair(*[[c] for c in mirrored(ike)])
    pair.a.initiate("site", None, 0.0)
    pair.run()
    (row,) = pair.a.key_snapshot()
    assert row["encr_alg"] == encr and row["integ_alg"] == integ
    assert pair.b.key_snapshot() == [row]
    lines, skipped = ikev2_lines({"child_sas": [], "ike_sas": [row]})
    assert len(lines) == 1 and not skipped


def test_ike_sa_expires_when_rekey_keeps_failing():
    pair = Pair(*[[c] for c in mirrored(rekey_time=100.0, over_time=20.0, b_rekey_time=0.0,
                                       b_ike="aes256gcm16-prfsha256-ecp256")])
    pair.a.initiate("site", None, 0.0)
    pair.run()
    b_sa = next(iter(pair.b.sas.values()))
    b_sa.config.proposals = ["aes128-sha256-modp2048"]  # B now refuses A's rekey proposals
    pair.advance(200)
    assert [d.reason for d in pair.of("a", IkeSaDown)] == ["expired"]
    assert [d.reason for d in pair.of("b", IkeSaDown)] == ["deleted by peer"]


def test_close_action_start_recreates_child_deleted_by_peer():
    pair = Pair(*[[c] for c in mirrored(a_child_close_action="start")])
    pair.a.initiate("site", None, 0.0)
    pair.run()
    pair.b.terminate_child("net", pair.now)
    pair.run()
    assert len(pair.of("a", ChildSaUp)) == 2 and len(pair.of("b", ChildSaUp)) == 2
    pair.b.terminate_ike("site", pair.now)
    pair.run()
    assert len(pair.of("a", IkeSaUp)) == 2 and len(pair.of("a", ChildSaUp)) == 3


def test_keyingtries_retries_unanswered_connect():
    a, b = mirrored(a_keyingtries=3)
    pair = Pair([a], [b], wire=Wire(loss=1.0))
    pair.a.initiate("site", None, 0.0)
    pair.advance(170 * 2 + 10)  # two attempts time out
    assert len(pair.of("a", NegotiationFailed)) == 2
    pair.wire.loss = 0.0
    pair.advance(200)
    assert pair.of("a", IkeSaUp) and pair.of("a", ChildSaUp)
    assert len(pair.a.status()) == 1


def test_fragmentation_accept_reassembles_but_never_sends_fragments():
    pair = fragmenting_pair(a_fragmentation="accept")
    pair.a.initiate("site", None, 0.0)
    pair.run()
    assert pair.of("a", ChildSaUp) and pair.of("b", ChildSaUp)
    sent_by_a = [d for d in pair.sizes]
    assert max(sent_by_a) > 1000  # A's IKE_AUTH went whole; B's answer came in fragments


@pytest.mark.parametrize("unique,expect_b_downs", [("replace", ["replaced"]), ("keep", []), ("never", [])])
def test_unique_policy(unique, expect_b_downs):
    a, b = mirrored(b_unique=unique)
    pair = Pair([a], [b])
    pair.a.initiate("site", None, 0.0)
    pair.run()
    # a second IKE SA from the same peer identity (A not rebooted: no INITIAL_CONTACT is sent)
    next(iter(pair.a.sas.values())).state = "deleting"  # so A does not reuse it
    pair.a.initiate("site", None, pair.now)
    pair.run()
    assert [d.reason for d in pair.of("b", IkeSaDown)] == expect_b_downs
    if unique == "keep":
        assert pair.of("b", NegotiationFailed)[0].notify == "AUTHENTICATION_FAILED"


@pytest.mark.parametrize("action", ["restart", "start"])
def test_close_action_restarts_once_after_the_peer_deletes_the_ike_sa(action):
    """The endpoint's restart policy alone brings the connection back (the daemon has none): one
    new IKE SA, started after the old one is gone, never from inside its tear-down."""
    pair = Pair(*[[c] for c in mirrored(a_child_close_action=action)])
    pair.a.initiate("site", None, 0.0)
    pair.run()
    old = next(iter(pair.a.sas.values()))
    pair.b.terminate_ike("site", pair.now)
    pair.step()  # B's delete reaches A: A answers, its SA goes, the restart follows in the same entry
    assert old.state == "dead" and old not in pair.a.sas.values()
    (new,) = pair.a.sas.values()
    assert new.state == "connecting" and new.unique_id > old.unique_id
    pair.run()
    kinds = [type(e).__name__ for e in pair.events["a"] if isinstance(e, (IkeSaUp, IkeSaDown))]
    assert kinds == ["IkeSaUp", "IkeSaDown", "IkeSaUp"]
    assert [d.reason for d in pair.of("a", IkeSaDown)] == ["deleted by peer"]
    assert len(pair.a.sas) == 1 and len(pair.b.sas) == 1


def test_dpd_action_restart_starts_after_the_dead_sa_is_gone():
    a, b = mirrored(dpd_delay=30.0, child_dpd_action="restart", b_child_dpd_action="clear")
    pair = Pair([a], [b])
    pair.a.initiate("site", None, 0.0)
    pair.run()
    old = next(iter(pair.a.sas.values()))
    pair.wire.loss = 1.0
    pair.advance(250)
    assert old.state == "dead" and old.keys is None
    assert [sa for sa in pair.a.sas.values() if sa is old] == []
    assert len(pair.a.sas) == 1 and next(iter(pair.a.sas.values())).attempt == 1  # the restart, not a retry
