"""Dead-peer detection (RFC 7296 s2.4): an empty INFORMATIONAL request; any answer proves the peer
alive, and no answer after the whole retransmission schedule ends the IKE SA as a dead peer."""

from __future__ import annotations

from ike.codec.constants import ExchangeType
from ike.codec.message import Message
from ike.codec.payloads import Payload
from ike.events import Address
from ike.tasks.base import DONE, IkeSaContext, Outcome, Task


class IkeDpd(Task):
    exchange = ExchangeType.INFORMATIONAL

    def build(self, sa: IkeSaContext, now: float) -> list[Payload] | None:
        return [] if sa.established else None

    def process(self, sa: IkeSaContext, msg: Message, raw: bytes, src: Address, dst: Address,
                now: float) -> Outcome:
        return DONE
