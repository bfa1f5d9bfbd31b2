"""IKE SA rekeying (RFC 7296 s1.3.2, s2.18) with collisions (s2.8.1).

The new IKE SA gets fresh SPIs and keys from the old SK_d; whoever initiated the rekey is the new
SA's initiator. CHILD SAs (and queued CHILD tasks) move to the new SA, which is announced (IkeSaUp
with rekeyed_from) before the old one is deleted by the rekey's initiator.

An answer we cannot accept (no SA, several proposals or two transforms of a type, a group we did
not offer) may still have made the peer switch to a new SA we cannot derive: the old IKE SA is then
deleted with a NO_PROPOSAL_CHOSEN (or INVALID_SYNTAX) notify beside the Delete, and a responder
that sees that notify drops the new SA it made, so both sides end with nothing.
"""

from __future__ import annotations

import struct

from ike.codec.constants import ExchangeType, NotifyType, ProtocolId, TransformType
from ike.codec.message import Message
from ike.codec.payloads import KePayload, NoncePayload, NotifyPayload, Payload, Proposal, SaPayload
from ike.crypto.dh import InvalidKeyExchange, KeyExchange, key_exchange
from ike.crypto.keys import NONCE_LEN, IkeKeys
from ike.crypto.multi_ke import rekeyed_ike_keys
from ike.crypto.proposals import Negotiated, accept_answer, choose, parse_proposals
from ike.events import Address, NegotiationFailed
from ike.tasks.base import DONE, POSTPONE, RETRY, IkeSaContext, Outcome, Task
from ike.tasks.child_rekey import lost_collision
from ike.tasks.followup_ke import FollowupKe, begin as begin_followup, exchange_task, uses_additional_ke
from ike.tasks.ike_delete import IkeDelete
from ike.tasks.states import ChildState, IkeState


class IkeRekey(Task):
    exchange = ExchangeType.CREATE_CHILD_SA

    def __init__(self) -> None:
        self.group: int | None = None
        self.collision: tuple[IkeSaContext, tuple[bytes, bytes]] | None = None
        self.proposals: list[Proposal] = []
        self.spi = b""
        self.nonce = b""
        self.ke: KeyExchange | None = None

    def again(self) -> IkeRekey:
        return IkeRekey()

    def build(self, sa: IkeSaContext, now: float) -> list[Payload] | None:
        if not sa.established or sa.neg is None:
            return None
        proposals = parse_proposals(sa.config.proposals, ProtocolId.IKE)
        groups = [t.id for p in proposals for t in p.of_type(TransformType.DH)]
        group = self.group if self.group in groups else (sa.neg.dh if sa.neg.dh in groups else groups[0])
        assert group is not None
        self.spi = sa.new_ike_spi()
        self.nonce = sa.rng(NONCE_LEN)
        self.ke = key_exchange(group, sa.rng)
        self.proposals = [Proposal(p.protocol, p.transforms, p.number, self.spi) for p in proposals]
        return [SaPayload(self.proposals), NoncePayload(self.nonce), KePayload(group, self.ke.public)]

    def process(self, sa: IkeSaContext, msg: Message, raw: bytes, src: Address, dst: Address,
                now: float) -> Outcome:
        err = next((p for p in msg.all(NotifyPayload) if p.is_error), None)
        if err is not None:
            return self._failed(sa, err, now)
        sa_p, nonce_p, ke_p = msg.get(SaPayload), msg.get(NoncePayload), msg.get(KePayload)
        if sa_p is None or nonce_p is None or ke_p is None or self.ke is None:
            return self._unusable(sa, NotifyType.INVALID_SYNTAX, "answer lacks SA, nonce or KE", now)
        choice = accept_answer(self.proposals, sa_p.proposals)
        if choice is None or len(choice.proposal.spi) != 8:
            return self._unusable(sa, NotifyType.NO_PROPOSAL_CHOSEN, "the answer's proposal is not one we offered", now)
        chosen, neg = choice.proposal, choice.negotiated
        if neg.dh != self.ke.group or ke_p.group != self.ke.group:
            return self._unusable(sa, NotifyType.INVALID_KE_PAYLOAD, "key exchange group mismatch", now)
        try:
            g_ir = self.ke.shared_secret(ke_p.data)
        except InvalidKeyExchange as exc:
            return self._unusable(sa, NotifyType.INVALID_KE_PAYLOAD, str(exc), now)
        nonce_r = nonce_p.data

        def finish(sa_: IkeSaContext, additional: list[bytes], now_: float) -> Outcome:
            assert sa_.neg is not None and sa_.keys is not None and sa_.neg.prf is not None
            keys = rekeyed_ike_keys(neg, sa_.neg.prf, sa_.keys.sk_d, g_ir, additional, self.nonce, nonce_r,
                                    self.spi, chosen.spi)
            return self._rekeyed(sa_, chosen, neg, keys, nonce_r, now_)
        if neg.additional_ke:  # RFC 9370 s2.2.4: IKE_FOLLOWUP_KE exchanges, then the new IKE SA
            return FollowupKe.start(sa, self, neg.additional_ke, msg, finish, self._followup_failed, now) or DONE
        return finish(sa, [], now)

    def _followup_failed(self, sa: IkeSaContext, notify: NotifyType, text: str, now: float, by_peer: bool) -> Outcome:
        if self.collision is not None and self.collision[0].state == IkeState.ESTABLISHED:
            # the peer's colliding rekey completed meanwhile (its IKE_FOLLOWUP_KE reached us first)
            # and it moved on to that SA, refusing ours: its SA takes over, as after a lost collision
            sa.log("ike_rekey_collision_lost", notify=notify.name)
            sa.hand_over(self.collision[0], now)
            return DONE
        if by_peer:  # the peer refused before completing: neither side switched, the old SA goes on
            sa.log("ike_rekey_failed", notify=notify.name, error=text)
            return POSTPONE if notify == NotifyType.TEMPORARY_FAILURE else DONE
        return self._unusable(sa, notify, text, now)

    def _rekeyed(self, sa: IkeSaContext, chosen: Proposal, neg: Negotiated, keys: IkeKeys, nonce_r: bytes,
                 now: float) -> Outcome:
        new = sa.rekeyed_sa(initiator=True, spi_i=self.spi, spi_r=chosen.spi, ni=self.nonce, nr=nonce_r,
                            chosen=chosen, neg=neg, keys=keys, now=now)
        winner = new
        if self.collision is not None:
            other, other_nonces = self.collision
            if lost_collision((self.nonce, nonce_r), other_nonces) and other.state == IkeState.ESTABLISHED:
                sa.log("ike_rekey_collision_lost")
                new.silent = True
                new.queue_task(IkeDelete("rekey collision"), now)
                winner = other
            else:
                sa.log("ike_rekey_collision_won")
                other.mark_redundant(now)  # the loser deletes it, or it times out
        sa.hand_over(winner, now)
        if winner is new:
            sa.queue_next(IkeDelete("rekeyed"))
        return DONE

    def _unusable(self, sa: IkeSaContext, notify: NotifyType, text: str, now: float) -> Outcome:
        """The peer answered, so it may have switched to a new IKE SA we cannot use: end the old
        one, telling the peer why, rather than keep an SA the peer may consider replaced."""
        sa.emit(NegotiationFailed(sa.name, "CREATE_CHILD_SA", notify.name, f"IKE rekey answer refused: {text}"))
        sa.log("ike_rekey_failed", notify=notify.name, error=text)
        sa.queue_next(IkeDelete("rekey failed", notify))
        return DONE

    def _failed(self, sa: IkeSaContext, err: NotifyPayload, now: float) -> Outcome:
        if err.notify_type == NotifyType.INVALID_KE_PAYLOAD and len(err.data) == 2 and self.group is None:
            self.group = struct.unpack("!H", err.data)[0]
            return RETRY
        if self.collision is not None and self.collision[0].state == IkeState.ESTABLISHED:
            sa.hand_over(self.collision[0], now)  # the peer's rekey went through; it deletes the old SA
            return DONE
        if err.notify_type == NotifyType.TEMPORARY_FAILURE:
            return POSTPONE
        sa.log("ike_rekey_failed", notify=err.name)
        return DONE


def respond_ike_rekey(sa: IkeSaContext, msg: Message, now: float) -> list[Payload]:
    active = exchange_task(sa.active_task)
    colliding = isinstance(active, IkeRekey)
    if colliding and uses_additional_ke(sa.config.proposals, ProtocolId.IKE):
        colliding = False  # as for CHILD SAs (child_rekey): refused, both retry later
    if sa.state != IkeState.ESTABLISHED or (active is not None and not colliding) or any(
            c.state == ChildState.REKEYING for c in sa.children.values()):
        return [NotifyPayload(NotifyType.TEMPORARY_FAILURE)]
    sa_p, nonce_p, ke_p = msg.get(SaPayload), msg.get(NoncePayload), msg.get(KePayload)
    if sa_p is None or nonce_p is None or ke_p is None:
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    offered = [p for p in sa_p.proposals if p.protocol == ProtocolId.IKE and len(p.spi) == 8]
    choice = choose(parse_proposals(sa.config.proposals, ProtocolId.IKE), offered)
    if choice is None:
        return [NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN)]
    chosen, neg = choice.proposal, choice.negotiated
    if neg.dh is None or ke_p.group != neg.dh:
        return [NotifyPayload(NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", neg.dh or 0))]
    our_ke = key_exchange(neg.dh, sa.rng)
    try:
        g_ir = our_ke.shared_secret(ke_p.data)
    except InvalidKeyExchange:
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    spi_r, nonce_r, nonce_i = sa.new_ike_spi(), sa.rng(NONCE_LEN), nonce_p.data
    answer: list[Payload] = [SaPayload([Proposal(chosen.protocol, chosen.transforms, chosen.number, spi_r)]),
                             NoncePayload(nonce_r), KePayload(neg.dh, our_ke.public)]

    def rekeyed(sa_: IkeSaContext, additional: list[bytes], now_: float) -> list[Payload]:
        assert sa_.neg is not None and sa_.keys is not None and sa_.neg.prf is not None
        keys = rekeyed_ike_keys(neg, sa_.neg.prf, sa_.keys.sk_d, g_ir, additional, nonce_i, nonce_r, chosen.spi,
                                spi_r)
        new = sa_.rekeyed_sa(initiator=False, spi_i=chosen.spi, spi_r=spi_r, ni=nonce_i, nr=nonce_r,
                             chosen=chosen, neg=neg, keys=keys, now=now_)
        active_now = exchange_task(sa_.active_task)
        if isinstance(active_now, IkeRekey):
            new.silent = True  # decided when our own rekey is answered
            active_now.collision = (new, (nonce_i, nonce_r))
        else:
            sa_.hand_over(new, now_)
        return []
    if neg.additional_ke:
        return begin_followup(sa, "IKE rekey", neg.additional_ke, rekeyed, answer, now)
    rekeyed(sa, [], now)
    return answer
