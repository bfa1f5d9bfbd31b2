"""Deleting CHILD SAs (RFC 7296 s1.4.1): each side lists the SPIs it receives on; the answer
lists ours for the same pairs, then both remove them."""

from __future__ import annotations

import struct

from ike.codec.constants import ExchangeType, ProtocolId
from ike.codec.message import Message
from ike.codec.payloads import DeletePayload, Payload
from ike.events import Address
from ike.tasks.base import DONE, IkeSaContext, Outcome, Task
from ike.tasks.child_sa import ChildSa
from ike.tasks.states import ChildState, IkeState


class ChildDelete(Task):
    exchange = ExchangeType.INFORMATIONAL
    moves_on_ike_rekey = True

    def __init__(self, child: ChildSa, reason: str = "deleted"):
        self.child, self.reason = child, reason

    def build(self, sa: IkeSaContext, now: float) -> list[Payload] | None:
        if self.child.inbound_spi not in sa.children or sa.state not in (IkeState.ESTABLISHED, IkeState.REKEYED):
            return None
        if self.child.state != ChildState.DELETING:
            self.child.move_to(ChildState.DELETING)
        return [DeletePayload(ProtocolId.ESP, [struct.pack("!I", self.child.inbound_spi)], 4)]

    def process(self, sa: IkeSaContext, msg: Message, raw: bytes, src: Address, dst: Address,
                now: float) -> Outcome:
        sa.remove_child(self.child, self.reason)
        return DONE


class ChildAbandon(Task):
    """Delete the CHILD SA the peer installed for an answer we refused: we never installed ours,
    so the Delete lists the inbound SPI we had offered (the peer's SA sends to it)."""

    exchange = ExchangeType.INFORMATIONAL
    moves_on_ike_rekey = True

    def __init__(self, spi: int):
        self.spi = spi

    def build(self, sa: IkeSaContext, now: float) -> list[Payload] | None:
        if sa.state not in (IkeState.ESTABLISHED, IkeState.REKEYED):
            return None
        return [DeletePayload(ProtocolId.ESP, [struct.pack("!I", self.spi)], 4)]

    def process(self, sa: IkeSaContext, msg: Message, raw: bytes, src: Address, dst: Address,
                now: float) -> Outcome:
        return DONE


def respond_child_deletes(sa: IkeSaContext, deletes: list[DeletePayload], now: float) -> list[Payload]:
    ours: list[bytes] = []
    for d in deletes:
        if d.spi_size != 4:
            continue
        for raw in d.spis:
            spi = struct.unpack("!I", raw)[0]
            child = sa.child_by_outbound(spi)
            if child is None:
                # maybe an SA our outstanding CREATE_CHILD_SA is about to install: the peer
                # deleted it before our answer arrived (strongSwan's deleted_spis)
                active = sa.active_task
                if active is not None and active.exchange in (ExchangeType.CREATE_CHILD_SA,
                                                              ExchangeType.IKE_FOLLOWUP_KE):
                    if not isinstance(sa.peer_deleted_spis, set):
                        sa.peer_deleted_spis = set()
                    sa.peer_deleted_spis.add(spi)
                continue
            # a CHILD SA we are deleting ourselves already (collision): the answer still lists it
            ours.append(struct.pack("!I", child.inbound_spi))
            active = sa.active_task
            collided = active is not None and active.collided_on(child)
            reason = "rekeyed" if child.state == ChildState.REKEYED or collided else "deleted by peer"
            if child.state == ChildState.REDUNDANT:
                reason = "rekey collision"
            sa.remove_child(child, reason)
    return [DeletePayload(ProtocolId.ESP, ours, 4)] if ours else []

