"""Deleting CHILD SAs (RFC 7296 s1.4.1): each side lists the SPIs it receives on; the answer
lists ours for the same pairs, then both remove them."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ike.child_sa import ChildSa
from ike.codec.constants import ExchangeType, ProtocolId
from ike.codec.payloads import DeletePayload, Payload
from ike.tasks.base import DONE, Task

if TYPE_CHECKING:
    from ike.ike_sa import IkeSa


class ChildDelete(Task):
    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, child: ChildSa, reason: str = "deleted"):
        self.child, self.reason = child, reason

    def build(self, sa, now):
        if self.child.inbound_spi not in sa.children or sa.state not in ("established", "rekeyed"):
            return None
        self.child.state = "deleting"
        return [DeletePayload(ProtocolId.ESP, [struct.pack("!I", self.child.inbound_spi)], 4)]

    def process(self, sa, msg, raw, src, dst, now):
        sa.remove_child(self.child, self.reason)
        return DONE


def respond_child_deletes(sa: "IkeSa", deletes: list[DeletePayload], now: float) -> list[Payload]:
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
                if sa.active is not None and sa.active.task.exchange == ExchangeType.CREATE_CHILD_SA:
                    if not isinstance(sa.peer_deleted_spis, set):
                        sa.peer_deleted_spis = set()
                    sa.peer_deleted_spis.add(spi)
                continue
            # a CHILD SA we are deleting ourselves already (collision): the answer still lists it
            ours.append(struct.pack("!I", child.inbound_spi))
            reason = "rekeyed" if child.state == "rekeyed" or _collided(sa, child) else "deleted by peer"
            if child.state == "redundant":
                reason = "rekey collision"
            sa.remove_child(child, reason)
    return [DeletePayload(ProtocolId.ESP, ours, 4)] if ours else []


def _collided(sa: "IkeSa", child: ChildSa) -> bool:
    """Our rekey of ``child`` is out and the peer's rekey of it created its successor."""
    from ike.tasks.child_rekey import ChildRekey

    task = sa.active.task if sa.active else None
    return isinstance(task, ChildRekey) and task.child is child and task.collision is not None
