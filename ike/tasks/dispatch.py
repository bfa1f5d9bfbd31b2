"""Responder side: route a decrypted request to the module of its exchange."""

from __future__ import annotations

from ike.codec.constants import ExchangeType, NotifyType, ProtocolId
from ike.codec.message import Message
from ike.codec.payloads import DeletePayload, NotifyPayload, Payload, SaPayload
from ike.tasks import (child_create, child_delete, child_rekey, followup_ke, ike_auth, ike_delete, ike_init,
                       ike_intermediate, ike_mobike, ike_rekey)
from ike.tasks.base import IkeSaContext


def respond(sa: IkeSaContext, msg: Message, now: float) -> list[Payload]:
    if sa.followup is not None and msg.exchange != ExchangeType.IKE_FOLLOWUP_KE:
        sa.followup = None  # the peer sends one request at a time: it gave up its IKE_FOLLOWUP_KE sequence
    if msg.exchange == ExchangeType.IKE_SA_INIT:
        return ike_init.respond_init(sa, msg, now)
    if msg.exchange == ExchangeType.IKE_INTERMEDIATE:
        return ike_intermediate.respond_intermediate(sa, msg, now)
    if msg.exchange == ExchangeType.IKE_AUTH:
        return ike_auth.respond_auth(sa, msg, now)
    if msg.exchange == ExchangeType.INFORMATIONAL:
        return _informational(sa, msg, now)
    if msg.exchange == ExchangeType.CREATE_CHILD_SA:
        if not sa.established or sa.silent:  # silent: an IKE rekey collision is still undecided
            return [NotifyPayload(NotifyType.TEMPORARY_FAILURE)]
        sa_p = msg.get(SaPayload)
        if sa_p is not None and sa_p.proposals and sa_p.proposals[0].protocol == ProtocolId.IKE:
            return ike_rekey.respond_ike_rekey(sa, msg, now)
        if NotifyType.REKEY_SA in msg.notifies():
            return child_rekey.respond_child_rekey(sa, msg, now)
        return child_create.respond_create(sa, msg, now)
    if msg.exchange == ExchangeType.IKE_FOLLOWUP_KE:
        if not sa.established:
            return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
        return followup_ke.respond_followup(sa, msg, now)
    sa.log("unsupported_exchange", exchange=msg.exchange_name)
    return [NotifyPayload(NotifyType.INVALID_SYNTAX)]


def _informational(sa: IkeSaContext, msg: Message, now: float) -> list[Payload]:
    """INFORMATIONAL (RFC 7296 s1.4): an IKE delete, CHILD deletes, error notifies, or nothing (DPD)."""
    deletes = msg.all(DeletePayload)
    if any(d.protocol == ProtocolId.IKE for d in deletes):
        return ike_delete.respond_ike_delete(sa, msg, now)
    out: list[Payload] = []
    child_deletes = [d for d in deletes if d.protocol in (ProtocolId.ESP, ProtocolId.AH)]
    if child_deletes:
        out += child_delete.respond_child_deletes(sa, child_deletes, now)
    if sa.established and not ike_mobike.MOBIKE_NOTIFIES.isdisjoint(msg.notifies()):
        out += ike_mobike.respond_mobike(sa, msg, now)
    ike_auth.respond_error_notifies(sa, msg)
    return out
