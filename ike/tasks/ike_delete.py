"""Deleting the IKE SA (RFC 7296 s1.4.1), and with it its CHILD SAs, in both roles."""

from __future__ import annotations

from ike.codec.constants import ExchangeType, NotifyType, ProtocolId
from ike.codec.message import Message
from ike.codec.payloads import DeletePayload, NotifyPayload, Payload
from ike.events import Address
from ike.tasks.base import IkeSaContext, Outcome, Task, destroy
from ike.tasks.states import IkeState


class IkeDelete(Task):
    """Delete the IKE SA; it ends when answered or unanswered. ``notify`` (an error) tells the peer
    why, as when an IKE rekey answer was refused (ike_rekey)."""

    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, reason: str = "deleted", notify: NotifyType | None = None):
        self.reason, self.notify = reason, notify

    def build(self, sa: IkeSaContext, now: float) -> list[Payload] | None:
        if sa.state == IkeState.DEAD:
            return None
        if sa.state != IkeState.DELETING:
            sa.state_to(IkeState.DELETING)
        out: list[Payload] = [NotifyPayload(int(self.notify))] if self.notify is not None else []
        return out + [DeletePayload(ProtocolId.IKE, [], 0)]

    def process(self, sa: IkeSaContext, msg: Message, raw: bytes, src: Address, dst: Address,
                now: float) -> Outcome:
        return destroy(self.reason)

    def timed_out(self, sa: IkeSaContext, now: float) -> Outcome:
        return destroy(self.reason)


def respond_ike_delete(sa: IkeSaContext, msg: Message, now: float) -> list[Payload]:
    """The peer deletes this IKE SA: answer, then it ends. A Delete with an error notify on an SA
    we answered a rekey for means the rekey's initiator refused our answer: the SA we made for it
    ends too."""
    sa.log("ike_delete_received")
    sa.finish_colliding_rekey(now)
    if sa.state == IkeState.REKEYED and any(p.is_error for p in msg.all(NotifyPayload)):
        sa.drop_successor()
        sa.delete_after_response = "rekey failed"
    else:
        sa.delete_after_response = "rekeyed" if sa.state == IkeState.REKEYED else "deleted by peer"
    return []
