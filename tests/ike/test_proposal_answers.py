"""Issue #19: an answer whose one proposal carries two transforms of a type (it passes selection,
then cannot be read as one choice) must fail cleanly, with the same outcome on both sides, in every
exchange that accepts a proposal: IKE_SA_INIT, the CHILD SA in IKE_AUTH, CREATE_CHILD_SA (new
CHILD SA, CHILD rekey, IKE rekey). Each test replays the case: a genuine answer, one ENCR (DES)
transform appended to its proposal, sealed again with the answering SA's own keys."""

from __future__ import annotations

import random

from ike.codec import message as codec
from ike.codec.constants import EncrId, ExchangeType, ProtocolId, TransformType
from ike.codec.payloads import SaPayload, Transform
from ike.crypto.proposals import accept_answer, choose, parse_proposals
from tests.ike.harness import (ChildSaDown, ChildSaUp, IkeSaDown, IkeSaUp, NegotiationFailed, Pair, Wire,
                               mirrored)
from ike.tasks.child_sa import host_selector
from tests.ike.test_lifecycle import only_sa, up

DES = Transform(TransformType.ENCR, EncrId.DES)


def _second_encr(msg: codec.Message) -> None:
    sa_p = msg.get(SaPayload)
    assert sa_p is not None and len(sa_p.proposals) == 1
    sa_p.proposals[0].transforms.append(DES)


def answer_tamper(responder, exchange: ExchangeType, protocol: ProtocolId):
    """A wire tamper: the responder's first answer of ``exchange`` whose proposal is for
    ``protocol`` gets a second ENCR transform, re-encrypted with the responder's keys."""
    done = []

    def tamper(d):
        if done or d.data[18] != exchange or not d.data[19] & 0x20:  # not a response of that exchange
            return d
        msg = codec.decode(d.data)
        if exchange == ExchangeType.IKE_SA_INIT:
            sa_p = msg.get(SaPayload)
            if sa_p is None:
                return d
            _second_encr(msg)
            done.append(1)
            return type(d)(codec.encode(codec.Message(msg.spi_i, msg.spi_r, msg.exchange, msg.message_id,
                                                      msg.initiator, True, msg.payloads)), d.src, d.dst)
        sa = responder.sas[msg.spi_r if not msg.initiator else msg.spi_i]
        plain = codec.open_sk(d.data, msg, sa.cipher_out)
        inner = codec.decode_inner(msg, codec.encrypted_payload(msg).first_inner, plain)
        sa_p = inner.get(SaPayload)
        if sa_p is None or sa_p.proposals[0].protocol != protocol:
            return d
        _second_encr(inner)
        done.append(1)
        sealed = codec.seal(codec.Message(msg.spi_i, msg.spi_r, msg.exchange, msg.message_id, msg.initiator, True,
                                          inner.payloads), sa.cipher_out, random.Random(3).randbytes)
        return type(d)(sealed, d.src, d.dst)

    tamper.done = done
    return tamper


def no_internal_errors(pair):
    for ep in (pair.a, pair.b):
        assert "internal error" not in ep.drops, ep.drops


def test_selection_refuses_an_answer_with_two_transforms_of_a_type():
    offer = parse_proposals("aes256gcm16-prfsha256-ecp256,aes128-sha256-modp2048", ProtocolId.IKE)
    good = choose(offer, offer)
    assert good is not None and good.negotiated.encr == EncrId.AES_GCM_16
    assert accept_answer(offer, [good.proposal]) is not None
    doubled = type(good.proposal)(ProtocolId.IKE, good.proposal.transforms + [DES], 1)
    assert accept_answer(offer, [doubled]) is None
    assert accept_answer(offer, [good.proposal, good.proposal]) is None
    # an offer may name several of a type: the responder's choice is still one of each
    assert choose(offer, [type(good.proposal)(ProtocolId.IKE, offer[0].transforms + [DES], 1)]) is not None


def test_ike_rekey_answer_with_a_second_encr():
    pair = up()
    old_a = only_sa(pair.a)
    pair.wire.tamper = answer_tamper(pair.b, ExchangeType.CREATE_CHILD_SA, ProtocolId.IKE)
    old_a.rekey_at = pair.now
    pair.a.reschedule(old_a)
    pair.a.handle_timer(pair.now)
    pair.run()
    assert pair.wire.tamper.done
    no_internal_errors(pair)
    (failed,) = pair.of("a", NegotiationFailed)
    assert failed.stage == "CREATE_CHILD_SA" and failed.notify == "NO_PROPOSAL_CHOSEN"
    # both sides agree: the old IKE SA, the new one B made, and the CHILD SAs are all gone
    assert not pair.a.sas and not pair.b.sas
    assert not pair.a.child_index and not pair.b.child_index
    for side in "ab":
        ups, downs = pair.of(side, IkeSaUp), pair.of(side, IkeSaDown)
        assert {u.unique_id for u in ups} == {d.unique_id for d in downs}
        assert len(pair.of(side, ChildSaUp)) == len(pair.of(side, ChildSaDown))


def test_ike_sa_init_answer_with_a_second_encr():
    a, b = mirrored()
    pair = Pair([a], [b])
    pair.wire.tamper = answer_tamper(pair.b, ExchangeType.IKE_SA_INIT, ProtocolId.IKE)
    pair.a.initiate("site", None, pair.now)
    pair.run()
    no_internal_errors(pair)
    (failed,) = pair.of("a", NegotiationFailed)
    assert failed.stage == "IKE_SA_INIT" and failed.notify == "NO_PROPOSAL_CHOSEN"
    assert not pair.a.sas and not pair.of("a", IkeSaUp)
    pair.advance(60)  # B's half-open SA times out
    assert not pair.b.sas and not pair.of("b", IkeSaUp)


def test_ike_auth_child_answer_with_a_second_encr():
    a, b = mirrored()
    pair = Pair([a], [b])
    pair.wire.tamper = answer_tamper(pair.b, ExchangeType.IKE_AUTH, ProtocolId.ESP)
    pair.a.initiate("site", None, pair.now)
    pair.run()
    assert pair.wire.tamper.done
    no_internal_errors(pair)
    (failed,) = pair.of("a", NegotiationFailed)
    assert failed.stage == "IKE_AUTH" and failed.notify == "NO_PROPOSAL_CHOSEN"
    assert pair.of("a", IkeSaUp) and not pair.of("a", ChildSaUp)  # the IKE SA stays (RFC 7296 s1.2)


def test_create_child_and_child_rekey_answers_with_a_second_encr():
    pair = up()
    (child,) = pair.of("a", ChildSaUp)
    pair.wire.tamper = answer_tamper(pair.b, ExchangeType.CREATE_CHILD_SA, ProtocolId.ESP)
    pair.a.rekey_child(child.inbound_spi, pair.now)
    pair.run()
    assert pair.wire.tamper.done
    no_internal_errors(pair)
    (failed,) = pair.of("a", NegotiationFailed)
    assert failed.stage == "CREATE_CHILD_SA" and failed.notify == "NO_PROPOSAL_CHOSEN"
    assert child.inbound_spi in pair.a.child_index  # the old CHILD SA stays in use
    assert_children_agree(pair)
    pair.wire = Wire(tamper=answer_tamper(pair.b, ExchangeType.CREATE_CHILD_SA, ProtocolId.ESP))
    hosts = (host_selector("10.1.0.5"), host_selector("10.2.0.5"))
    pair.a.initiate("site", "net", pair.now, packet_ts=hosts)  # a second CHILD SA, for a packet
    pair.run()
    no_internal_errors(pair)
    assert len(pair.of("a", NegotiationFailed)) == 2
    assert_children_agree(pair)


def assert_children_agree(pair):
    """B deleted the CHILD SA it installed for the answer A refused: both hold the same pairs."""
    a = {c.inbound_spi: c.outbound_spi for sa in pair.a.sas.values() for c in sa.children.values()}
    b = {c.inbound_spi: c.outbound_spi for sa in pair.b.sas.values() for c in sa.children.values()}
    assert {v: k for k, v in a.items()} == b


def test_ike_auth_child_refused_is_deleted_on_the_responder():
    a, b = mirrored()
    pair = Pair([a], [b])
    pair.wire.tamper = answer_tamper(pair.b, ExchangeType.IKE_AUTH, ProtocolId.ESP)
    pair.a.initiate("site", None, pair.now)
    pair.run()
    assert pair.of("b", ChildSaUp) and not pair.b.child_index  # B installed it, then deleted it
    assert_children_agree(pair)
