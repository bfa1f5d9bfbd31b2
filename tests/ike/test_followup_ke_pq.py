"""RFC 9370 IKE_FOLLOWUP_KE between two espgw endpoints: new CHILD SAs, CHILD rekeys with PFS and
IKE rekeys whose proposals add ML-KEM key exchanges after the CREATE_CHILD_SA's own."""

from __future__ import annotations

import os

import pytest

from ike.codec import message as codec
from ike.codec.constants import ExchangeType, NotifyType
from ike.codec.payloads import KePayload, NotifyPayload
from ike.config import ChildConfig, TrafficSelector
from ike.tasks import followup_ke
from tests.ike.harness import (ChildSaDown, ChildSaUp, IkeSaDown, IkeSaUp, NegotiationFailed, Pair, Wire,
                               mirrored)
from tests.ike.test_lifecycle import assert_consistent, keymat_pairs_match, only_sa

HYBRID_IKE = "aes256gcm16-prfsha384-ecp384-ke1_mlkem768"
HYBRID_TWO = "aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke2_mlkem1024"
PQ_ESP = "aes256gcm16-ecp384-ke1_mlkem768"
PQ_ESP_TWO = "aes256gcm16-x25519-ke1_mlkem768-ke2_mlkem1024"
SEEDS = int(os.environ.get("PQ_SEEDS", "0"))  # more seeds for the collision and loss tests (20 pass)


def up(ike=HYBRID_IKE, esp=PQ_ESP, seed=7, wire=None, **kw):
    a, b = mirrored(ike=ike, esp=esp, **kw)
    seen: list = []
    lossy = wire is not None
    wire = wire or Wire()
    wire.tamper = lambda d: (seen.append(d), d)[1]
    pair = Pair([a], [b], wire=wire, seed=seed)
    pair.ep = lambda s: pair.a if s == "a" else pair.b
    pair.seen = seen
    pair.a.initiate("site", None, pair.now)
    if lossy:
        pair.advance(90)
    else:
        pair.run()
    assert pair.of("a", ChildSaUp) and pair.of("b", ChildSaUp)
    return pair


def exchanges(pair, start: int = 0) -> list[tuple[str, bool]]:
    out = []
    for d in pair.seen[start:]:
        m = codec.decode(d.data)
        key = (m.exchange_name, m.response, m.message_id)
        if not out or out[-1] != key:
            out.append(key)
    return [(name, response) for name, response, _ in out]


def followups(pair, start: int = 0) -> int:
    return sum(1 for name, response in exchanges(pair, start) if name == "IKE_FOLLOWUP_KE" and not response)


def test_extra_child_sa_with_additional_key_exchange():
    a, b = mirrored(ike=HYBRID_IKE)
    a.children.append(ChildConfig("web", [TrafficSelector.from_cidr("10.11.0.0/16")],
                                  [TrafficSelector.from_cidr("10.12.0.0/16")], esp_proposals=[PQ_ESP_TWO]))
    b.children.append(ChildConfig("web", [TrafficSelector.from_cidr("10.12.0.0/16")],
                                  [TrafficSelector.from_cidr("10.11.0.0/16")], esp_proposals=[PQ_ESP_TWO]))
    seen: list = []
    pair = Pair([a], [b], wire=Wire(tamper=lambda d: (seen.append(d), d)[1]))
    pair.a.initiate("site", None, 0.0)
    pair.run()
    assert sorted(e.child_name for e in pair.of("b", ChildSaUp)) == ["net", "web"]
    web = next(e for e in pair.of("a", ChildSaUp) if e.child_name == "web")
    assert web.proposal == PQ_ESP_TWO
    names = [codec.decode(d.data).exchange_name for d in seen]
    assert names.count("CREATE_CHILD_SA") == 2 and names.count("IKE_FOLLOWUP_KE") >= 4  # 2 exchanges, fragments
    pair.seen = seen
    keymat_pairs_match(pair)
    assert_consistent(pair, 2)


@pytest.mark.parametrize("esp,additional", [(PQ_ESP, 1), (PQ_ESP_TWO, 2)])
@pytest.mark.parametrize("side", ["a", "b"])
def test_child_rekey_with_pfs_and_ml_kem(side, esp, additional):
    pair = up(esp=esp)
    start = len(pair.seen)
    (old,) = pair.of(side, ChildSaUp)
    assert old.proposal == "aes256gcm16"  # the CHILD SA of IKE_AUTH has no key exchange
    pair.ep(side).rekey_child(old.inbound_spi, pair.now)
    pair.run()
    ups = pair.of(side, ChildSaUp)
    assert len(ups) == 2 and ups[1].rekeyed_from == old.inbound_spi and ups[1].proposal == esp
    assert [d.reason for d in pair.of(side, ChildSaDown)] == ["rekeyed"]
    assert followups(pair, start) == additional
    keymat_pairs_match(pair)
    assert_consistent(pair)


@pytest.mark.parametrize("ike,additional", [(HYBRID_IKE, 1), (HYBRID_TWO, 2)])
@pytest.mark.parametrize("side", ["a", "b"])
def test_ike_rekey_with_additional_key_exchanges(side, ike, additional):
    pair = up(ike=ike)
    start = len(pair.seen)
    old = only_sa(pair.ep(side))
    old.rekey_at = pair.now
    pair.ep(side).reschedule(old)
    pair.ep(side).handle_timer(pair.now)
    pair.run()
    assert followups(pair, start) == additional
    for s in ("a", "b"):
        ups = pair.of(s, IkeSaUp)
        assert len(ups) == 2 and ups[1].rekeyed_from == ups[0].unique_id and ups[1].proposal == ike
        assert [d.reason for d in pair.of(s, IkeSaDown)] == ["rekeyed"]
    new_a, new_b = only_sa(pair.a), only_sa(pair.b)
    assert new_a.keys.sk_d == new_b.keys.sk_d and new_a.keys.sk_d != old.keys.sk_d if old.keys else True
    # the new IKE SA works: a CHILD rekey with ML-KEM over it
    (child,) = pair.of("b", ChildSaUp)
    pair.b.rekey_child(child.inbound_spi, pair.now)
    pair.run()
    keymat_pairs_match(pair)
    assert_consistent(pair)


def test_rekeys_by_timer_on_both_sides():
    pair = up(child_rekey_time=100.0, child_life_time=150.0, rekey_time=300.0, b_rekey_time=350.0)
    pair.advance(1200)
    assert len(pair.of("a", ChildSaUp)) >= 10 and len(pair.of("a", IkeSaUp)) >= 3
    keymat_pairs_match(pair)
    assert_consistent(pair)
    assert not pair.of("a", NegotiationFailed) and not pair.of("b", NegotiationFailed)


@pytest.mark.parametrize("seed", range(SEEDS or 4))
def test_simultaneous_child_rekeys(seed):
    pair = up(seed=seed)
    (ca,), (cb,) = pair.of("a", ChildSaUp), pair.of("b", ChildSaUp)
    pair.a.rekey_child(ca.inbound_spi, pair.now)
    pair.b.rekey_child(cb.inbound_spi, pair.now)
    pair.advance(120)
    assert_consistent(pair)
    keymat_pairs_match(pair, live_only=True)


@pytest.mark.parametrize("seed", range(SEEDS or 3))
def test_lossy_rekeys_converge(seed):
    pair = up(seed=seed, wire=Wire(loss=0.1, dup=0.05, seed=seed), child_rekey_time=100.0,
              child_life_time=200.0, rekey_time=250.0, over_time=120.0)
    pair.advance(1000)
    pair.wire.loss = pair.wire.dup = 0.0
    pair.advance(200)
    assert_consistent(pair)
    keymat_pairs_match(pair, live_only=True)


def _tamper_followups(pair, mutate):
    """Rewrite the initiator's IKE_FOLLOWUP_KE payloads before they are sealed."""
    original = followup_ke.FollowupKe.build

    def build(self, sa, now):
        return mutate(original(self, sa, now))
    return build


@pytest.mark.parametrize("mutate,notify", [
    (lambda out: [out[0], NotifyPayload(NotifyType.ADDITIONAL_KEY_EXCHANGE, b"wrong")], "STATE_NOT_FOUND"),
    (lambda out: [out[0]], "STATE_NOT_FOUND"),  # no link
    (lambda out: [out[1]], "INVALID_SYNTAX"),  # no KE payload
    (lambda out: [KePayload(out[0].group, out[0].data[:-1]), out[1]], "NO_PROPOSAL_CHOSEN"),
    (lambda out: [KePayload(37, out[0].data), out[1]], "NO_PROPOSAL_CHOSEN"),  # ML-KEM-1024, not -768
])
def test_bad_followup_keeps_the_old_child_sa(monkeypatch, mutate, notify):
    pair = up()
    (old,) = pair.of("a", ChildSaUp)
    monkeypatch.setattr(followup_ke.FollowupKe, "build", _tamper_followups(pair, mutate))
    pair.a.rekey_child(old.inbound_spi, pair.now)
    pair.run()
    assert [(f.stage, f.notify) for f in pair.of("a", NegotiationFailed)] == [("CREATE_CHILD_SA", notify)]
    assert len(pair.of("a", ChildSaUp)) == 1 and len(pair.of("b", ChildSaUp)) == 1
    assert only_sa(pair.b).followup is None
    assert_consistent(pair)
    monkeypatch.undo()
    pair.a.rekey_child(old.inbound_spi, pair.now)  # and a later rekey works
    pair.run()
    assert len(pair.of("a", ChildSaUp)) == 2
    assert_consistent(pair)


def test_followup_without_a_pending_exchange_is_refused():
    pair = up()
    sa = only_sa(pair.b)
    answer = followup_ke.respond_followup(sa, codec.Message(sa.spi_i, sa.spi_r, ExchangeType.IKE_FOLLOWUP_KE, 9,
                                                            True, False, []), pair.now)
    assert [p.notify_type for p in answer] == [NotifyType.STATE_NOT_FOUND]


def test_crossing_sequences_do_not_wait_for_each_other():
    """A creates a CHILD SA while B rekeys another: each answered the other's CREATE_CHILD_SA with a
    link, and each one's own IKE_FOLLOWUP_KE still goes at once (new requests would wait)."""
    a, b = mirrored(ike=HYBRID_IKE, esp=PQ_ESP)
    a.children.append(ChildConfig("web", [TrafficSelector.from_cidr("10.11.0.0/16")],
                                  [TrafficSelector.from_cidr("10.12.0.0/16")], esp_proposals=[PQ_ESP]))
    b.children.append(ChildConfig("web", [TrafficSelector.from_cidr("10.12.0.0/16")],
                                  [TrafficSelector.from_cidr("10.11.0.0/16")], esp_proposals=[PQ_ESP]))
    pair = Pair([a], [b])
    pair.a.initiate("site", "net", 0.0)
    pair.run()
    (net_b,) = pair.of("b", ChildSaUp)
    start = pair.now
    pair.a.initiate("site", "web", pair.now)
    pair.b.rekey_child(net_b.inbound_spi, pair.now)
    pair.run(until=pair.now + 2.0, idle_stop=False)
    assert pair.now - start <= 2.0
    assert sorted(e.child_name for e in pair.of("a", ChildSaUp)) == ["net", "net", "web"]
    assert [d.reason for d in pair.of("b", ChildSaDown)] == ["rekeyed"]
    keymat_pairs_match(pair)
    assert_consistent(pair, 2)
