"""CHILD SA rekeying (RFC 7296 s1.3.3, s2.8) with simultaneous-rekey collisions (s2.8.1).

Make-before-break: the new SA is announced (ChildSaUp with rekeyed_from) before the old one is
deleted. In a collision both exchanges create an SA; the one whose exchange has the lowest of the
four nonces is redundant and deleted by the side that initiated that exchange, while the other
side (the winner) deletes the old SA, as strongSwan's child_rekey.c does.
"""

from __future__ import annotations

import struct

from ike.codec.constants import ExchangeType, NotifyType, ProtocolId
from ike.codec.message import Message
from ike.codec.payloads import NoncePayload, NotifyPayload, Payload
from ike.events import Address
from ike.tasks.base import DONE, POSTPONE, RETRY, IkeSaContext, Outcome, Task
from ike.tasks.child_create import (ChildCreate, ChildFailure, ChildOffer, abandon, accept_answer_multi,
                                    failure_event, make_offer, negotiate_offer, offer_payloads)
from ike.tasks.followup_ke import FollowupKe, begin as begin_followup, exchange_task, uses_additional_ke
from ike.tasks.child_delete import ChildDelete
from ike.tasks.child_sa import ChildSa
from ike.tasks.states import ChildState


def lower_nonce(nonces: tuple[bytes, bytes]) -> bytes:
    return min(nonces)


def lost_collision(ours: tuple[bytes, bytes], theirs: tuple[bytes, bytes]) -> bool:
    """We lose when our exchange holds the lowest nonce (compared over the shorter length)."""
    a, b = lower_nonce(ours), lower_nonce(theirs)
    n = min(len(a), len(b))
    return a[:n] < b[:n]


class ChildRekey(Task):
    exchange = ExchangeType.CREATE_CHILD_SA
    moves_on_ike_rekey = True

    def __init__(self, child: ChildSa):
        self.child = child
        self.offer: ChildOffer | None = None
        self.group: int | None = None
        self.collision: tuple[ChildSa, tuple[bytes, bytes]] | None = None

    def again(self) -> ChildRekey:
        return ChildRekey(self.child)

    def collided_on(self, child: ChildSa) -> bool:
        return child is self.child and self.collision is not None

    def build(self, sa: IkeSaContext, now: float) -> list[Payload] | None:
        child = self.child
        if not sa.established or sa.children.get(child.inbound_spi) is not child or child.state != ChildState.INSTALLED:
            return None
        child.move_to(ChildState.REKEYING)
        self.offer = make_offer(sa, child.config, in_auth=False, rekey_of=child, group=self.group)
        return offer_payloads(self.offer)

    def process(self, sa: IkeSaContext, msg: Message, raw: bytes, src: Address, dst: Address,
                now: float) -> Outcome:
        assert self.offer is not None
        nonce = msg.get(NoncePayload)
        try:
            neg, complete = accept_answer_multi(sa, self.offer, msg, self.offer.nonce, nonce.data if nonce else b"",
                                                now)
            if nonce is None:
                raise ChildFailure(NotifyType.INVALID_SYNTAX, "answer without a nonce")
        except ChildFailure as exc:
            return self._failed(sa, exc, now)
        nonces = (self.offer.nonce, nonce.data)
        if neg.additional_ke:  # RFC 9370: IKE_FOLLOWUP_KE exchanges first, then the new CHILD SA
            return FollowupKe.start(sa, self, neg.additional_ke, msg,
                                    lambda sa_, secrets, now_: self._install(sa_, complete(secrets), nonces, now_),
                                    self._followup_failed, now) or DONE
        return self._install(sa, complete(()), nonces, now)

    def _followup_failed(self, sa: IkeSaContext, notify: NotifyType, text: str, now: float, by_peer: bool) -> Outcome:
        exc = ChildFailure(notify, text)
        assert self.offer is not None
        if not by_peer:
            exc.abandoned_spi = self.offer.spi  # the peer installed it with its last answer
        return self._failed(sa, exc, now)

    def _install(self, sa: IkeSaContext, new: ChildSa, nonces: tuple[bytes, bytes], now: float) -> Outcome:
        child = self.child
        if new.outbound_spi in sa.peer_deleted_spis:  # the peer closed the new SA already
            sa.log("child_sa_deleted_before_installed", child=new.name, spi_out=f"{new.outbound_spi:08x}")
            new.forget_keys()
            if child.inbound_spi in sa.children and child.state == ChildState.REKEYING:
                child.move_to(ChildState.INSTALLED)
            return DONE
        if self.collision is not None:
            other, other_nonces = self.collision
            if lost_collision(nonces, other_nonces):
                sa.log("child_rekey_collision_lost", child=child.name, spi_in=f"{child.inbound_spi:08x}")
                new.move_to(ChildState.REDUNDANT)
                new.rekey_at = None
                sa.add_child(new)
                child.move_to(ChildState.REKEYED)  # the winner deletes the old SA
                sa.queue_next(ChildDelete(new, "rekey collision"))
                return DONE
            sa.log("child_rekey_collision_won", child=child.name, spi_in=f"{child.inbound_spi:08x}")
            if other.inbound_spi in sa.children:
                other.move_to(ChildState.REDUNDANT)  # the loser deletes it, else it goes CHILD_GRACE from now
                other.rekey_at = None
                other.expire_at = min(other.expire_at, now)
        sa.add_child(new)
        child.move_to(ChildState.REKEYED)
        child.rekey_at = None
        sa.queue_next(ChildDelete(child, "rekeyed"))
        return DONE

    def _failed(self, sa: IkeSaContext, exc: ChildFailure, now: float) -> Outcome:
        child = self.child
        abandon(sa, exc)
        live = child.inbound_spi in sa.children
        if exc.notify == NotifyType.INVALID_KE_PAYLOAD and len(exc.data) == 2 and self.group is None:
            self.group = struct.unpack("!H", exc.data)[0]
            child.move_to(ChildState.INSTALLED)
            return RETRY
        if self.collision is not None:
            if live and child.state == ChildState.REKEYING:
                child.move_to(ChildState.REKEYED)  # the peer's rekey of this SA went through; it deletes the old one
            return DONE
        if not live:
            return DONE  # the peer deleted it meanwhile: respect that
        if exc.notify == NotifyType.TEMPORARY_FAILURE:
            if child.state == ChildState.REKEYING:
                child.move_to(ChildState.INSTALLED)
                return POSTPONE
            return DONE
        if exc.notify == NotifyType.CHILD_SA_NOT_FOUND:
            # the peer lost it: replace it with a fresh CHILD SA, as strongSwan does
            sa.log("child_rekey_not_found", child=child.name, spi_in=f"{child.inbound_spi:08x}")
            sa.remove_child(child, "not found by peer")
            sa.queue_next(ChildCreate(child.config))
            return DONE
        sa.emit(failure_event(sa, "CREATE_CHILD_SA", exc, child.name))
        sa.log("child_rekey_failed", child=child.name, notify=exc.notify.name, error=str(exc))
        if child.state == ChildState.REKEYING:
            child.move_to(ChildState.INSTALLED)
        return DONE


def respond_child_rekey(sa: IkeSaContext, msg: Message, now: float) -> list[Payload]:
    note = msg.notifies()[NotifyType.REKEY_SA]
    if note.protocol != ProtocolId.ESP or len(note.spi) != 4:
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    child = sa.child_by_outbound(struct.unpack("!I", note.spi)[0])
    active = exchange_task(sa.active_task)
    if child is None:
        if isinstance(active, (ChildRekey, ChildCreate)):  # our answer may be about to create it
            return [NotifyPayload(NotifyType.TEMPORARY_FAILURE)]
        return [NotifyPayload(NotifyType.CHILD_SA_NOT_FOUND, b"", ProtocolId.ESP, note.spi)]
    colliding = isinstance(active, ChildRekey) and active.child is child
    if colliding and uses_additional_ke(child.config.esp_proposals, ProtocolId.ESP):
        # a collision is decided when both new SAs exist; with IKE_FOLLOWUP_KE the SAs appear
        # exchanges apart, so each side refuses the other's rekey and retries later instead
        return [NotifyPayload(NotifyType.TEMPORARY_FAILURE)]
    if child.state != ChildState.INSTALLED and not colliding:
        return [NotifyPayload(NotifyType.TEMPORARY_FAILURE)]
    try:
        payloads, neg, complete = negotiate_offer(sa, msg, now, in_auth=False, rekey_of=child)
    except ChildFailure as exc:
        sa.emit(failure_event(sa, "CREATE_CHILD_SA", exc, child.name))
        sa.log("child_rekey_refused", child=child.name, notify=exc.notify.name, error=str(exc))
        return [NotifyPayload(int(exc.notify), exc.data)]

    def installed(sa_: IkeSaContext, secrets: list[bytes], now_: float) -> list[Payload]:
        new = complete(secrets)
        sa_.add_child(new)
        active_now = exchange_task(sa_.active_task)
        if isinstance(active_now, ChildRekey) and active_now.child is child:
            active_now.collision = (new, new.nonces)
        elif child.inbound_spi in sa_.children and child.state in (ChildState.INSTALLED, ChildState.REKEYING):
            child.move_to(ChildState.REKEYED)  # the initiator deletes it
            child.rekey_at = None
        return []
    if neg.additional_ke:
        return begin_followup(sa, f"rekey of CHILD SA {child.name}", neg.additional_ke, installed, payloads, now)
    installed(sa, [], now)
    return payloads
