"""INFORMATIONAL exchanges (RFC 7296 s1.4): liveness checks, IKE SA deletion, and the responder
side for deletes and error notifications. CHILD SA deletion is in child_delete."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ike.codec.constants import ExchangeType, NotifyType, ProtocolId
from ike.codec.payloads import DeletePayload, NotifyPayload, Payload
from ike.tasks.base import DONE, Task

if TYPE_CHECKING:
    from ike.ike_sa import IkeSa
    from ike.codec.message import Message


class IkeDpd(Task):
    """An empty INFORMATIONAL request; any answer proves the peer alive (RFC 7296 s2.4)."""

    exchange = ExchangeType.INFORMATIONAL

    def build(self, sa, now):
        return [] if sa.established else None

    def process(self, sa, msg, raw, src, dst, now):
        return DONE


class IkeDelete(Task):
    """Delete the IKE SA (and with it its CHILD SAs); done when answered or unanswered."""

    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, reason: str = "deleted"):
        self.reason = reason

    def build(self, sa, now):
        if sa.state == "dead":
            return None
        sa.state = "deleting"
        sa.rekey_at = None
        return [DeletePayload(ProtocolId.IKE, [], 0)]

    def process(self, sa, msg, raw, src, dst, now):
        sa.destroy(self.reason, now)
        return DONE

    def timed_out(self, sa, now):
        sa.destroy(self.reason, now)


def respond_informational(sa: "IkeSa", msg: "Message", now: float) -> list[Payload]:
    from ike.tasks.child_delete import respond_child_deletes

    deletes = msg.all(DeletePayload)
    if any(d.protocol == ProtocolId.IKE for d in deletes):
        sa.log("ike_delete_received")
        _finish_colliding_rekey(sa, now)
        sa.delete_after_response = "rekeyed" if sa.state == "rekeyed" else "deleted by peer"
        return []
    out: list[Payload] = []
    child_deletes = [d for d in deletes if d.protocol in (ProtocolId.ESP, ProtocolId.AH)]
    if child_deletes:
        out += respond_child_deletes(sa, child_deletes, now)
    for p in msg.all(NotifyPayload):
        if p.notify_type < 16384:
            sa.log("error_notify_received", notify=p.name)
            if p.notify_type == NotifyType.AUTHENTICATION_FAILED or (
                    p.notify_type == NotifyType.INVALID_SYNTAX and not sa.established):
                # the initiator rejected our AUTH right after IKE_AUTH (RFC 7296 s2.21.2)
                from ike.events import NegotiationFailed
                sa.emit(NegotiationFailed(sa.name, "IKE_AUTH", p.name, "peer rejected the authentication"))
                sa.delete_after_response = "auth failed"
    return out


def _finish_colliding_rekey(sa: "IkeSa", now: float) -> None:
    """The peer deletes an IKE SA we were rekeying while it rekeyed it too: its rekey won (it may
    not have seen the collision), so the SA it created takes over before this one goes."""
    from ike.tasks.ike_rekey import IkeRekey, hand_over

    task = sa.active.task if sa.active else None
    if isinstance(task, IkeRekey) and task.collision is not None and task.collision[0].state == "established":
        hand_over(sa, task.collision[0], now)
        sa.active = None
