"""Responder side: route a decrypted request to the module of its exchange."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ike.codec.constants import ExchangeType, NotifyType, ProtocolId
from ike.codec.payloads import NotifyPayload, Payload, SaPayload

if TYPE_CHECKING:
    from ike.ike_sa import IkeSa
    from ike.codec.message import Message


def respond(sa: "IkeSa", msg: "Message", now: float) -> list[Payload]:
    from ike.tasks import child_create, child_rekey, ike_auth, ike_rekey, informational

    if msg.exchange == ExchangeType.IKE_AUTH:
        return ike_auth.respond_auth(sa, msg, now)
    if msg.exchange == ExchangeType.INFORMATIONAL:
        return informational.respond_informational(sa, msg, now)
    if msg.exchange == ExchangeType.CREATE_CHILD_SA:
        if not sa.established or sa.silent:  # silent: an IKE rekey collision is still undecided
            return [NotifyPayload(NotifyType.TEMPORARY_FAILURE)]
        sa_p = msg.get(SaPayload)
        if sa_p is not None and sa_p.proposals and sa_p.proposals[0].protocol == ProtocolId.IKE:
            return ike_rekey.respond_ike_rekey(sa, msg, now)
        if NotifyType.REKEY_SA in msg.notifies():
            return child_rekey.respond_child_rekey(sa, msg, now)
        return child_create.respond_create(sa, msg, now)
    sa.log("unsupported_exchange", exchange=msg.exchange_name)
    return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
