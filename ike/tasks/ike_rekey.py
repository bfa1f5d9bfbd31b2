"""IKE SA rekeying (RFC 7296 s1.3.2, s2.18) with collisions (s2.8.1).

The new IKE SA gets fresh SPIs and keys from the old SK_d; whoever initiated the rekey is the new
SA's initiator. CHILD SAs (and queued tasks) move to the new SA, which is announced (IkeSaUp with
rekeyed_from) before the old one is deleted by the rekey's initiator.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ike.codec.constants import ExchangeType, NotifyType, ProtocolId, TransformType
from ike.crypto.dh import InvalidKeyExchange, key_exchange
from ike.crypto.keys import derive_rekeyed_ike_keys
from ike.codec.payloads import KePayload, NoncePayload, NotifyPayload, Payload, SaPayload
from ike.crypto.proposals import Proposal, format_proposal, negotiated, parse_proposals, select_proposal
from ike.tasks.base import DONE, RETRY, Task
from ike.retransmit import total_lifetime
from ike.tasks.child_rekey import lost_collision

if TYPE_CHECKING:
    from ike.ike_sa import IkeSa
    from ike.codec.message import Message

NONCE_LEN = 32
# how long an SA the peer is expected to delete may wait for that delete: the peer's last message
# (its rekey request, or its delete) may need its whole retransmission schedule to get through
AWAIT_PEER_DELETE = total_lifetime() + 15.0


def make_rekeyed_sa(old: "IkeSa", *, initiator: bool, spi_i: bytes, spi_r: bytes, ni: bytes, nr: bytes,
                    chosen: Proposal, g_ir: bytes, now: float) -> "IkeSa":
    from ike.ike_sa import IkeSa

    neg = negotiated(chosen)
    assert old.neg is not None and old.keys is not None
    keys = derive_rekeyed_ike_keys(neg, old.keys.sk_d, old.neg.prf, ni, nr, g_ir, spi_i, spi_r)
    new = IkeSa(old.endpoint, old.config, initiator=initiator, local=old.local, remote=old.remote,
                spi_i=spi_i, spi_r=spi_r, unique_id=old.endpoint.next_unique_id(), now=now)
    new.candidates = old.candidates
    new.ni, new.nr = ni, nr
    new.install_keys(neg, keys)
    new.proposal_name = format_proposal(chosen)
    new.chosen = chosen
    new.local_id, new.remote_id = old.local_id, old.remote_id
    new.nat_local, new.nat_remote = old.nat_local, old.nat_remote
    new.peer_fragmentation = old.peer_fragmentation
    new.set_established(now)
    old.endpoint.register(new)
    return new


def hand_over(old: "IkeSa", new: "IkeSa", now: float) -> None:
    """``new`` replaces ``old``: CHILD SAs and pending CHILD tasks move, IkeSaUp is announced."""
    from ike.tasks.child_create import ChildCreate
    from ike.tasks.child_delete import ChildDelete
    from ike.tasks.child_rekey import ChildRekey

    new.rekeyed_from = old.unique_id
    new.adopt_children(old)
    movable = (ChildCreate, ChildRekey, ChildDelete)
    new.queue += [t for t in old.queue + old.postponed if isinstance(t, movable)]
    old.queue = [t for t in old.queue if not isinstance(t, movable)]
    old.postponed = []
    old.state = "rekeyed"
    old.rekey_at = old.expire_at = old.reauth_at = None
    old.redundant_until = now + AWAIT_PEER_DELETE  # if the peer never deletes it
    new.silent = False
    new.emit(new.ike_up_event())
    new.unsilence()  # what happened on it while the collision was open
    new.log("ike_sa_rekeyed", old_ike_id=old.unique_id)
    new.kick(now)


class IkeRekey(Task):
    exchange = ExchangeType.CREATE_CHILD_SA

    def __init__(self):
        self.group: int | None = None
        self.collision: tuple["IkeSa", tuple[bytes, bytes]] | None = None

    def build(self, sa, now):
        if not sa.established or sa.neg is None:
            return None
        self.proposals = parse_proposals(sa.config.proposals, ProtocolId.IKE)
        groups = [t.id for p in self.proposals for t in p.of_type(TransformType.DH)]
        group = self.group if self.group in groups else (sa.neg.dh if sa.neg.dh in groups else groups[0])
        self.spi = sa.endpoint.new_ike_spi()
        self.nonce = sa.rng(NONCE_LEN)
        self.ke = key_exchange(group, sa.rng)
        self.proposals = [Proposal(p.protocol, p.transforms, p.number, self.spi) for p in self.proposals]
        return [SaPayload(self.proposals), NoncePayload(self.nonce), KePayload(group, self.ke.public)]

    def process(self, sa, msg, raw, src, dst, now):
        err = next((p for p in msg.all(NotifyPayload) if p.notify_type < 16384), None)
        if err is not None:
            return self._failed(sa, err, now)
        sa_p, nonce_p, ke_p = msg.get(SaPayload), msg.get(NoncePayload), msg.get(KePayload)
        ok = sa_p is not None and nonce_p is not None and ke_p is not None and len(sa_p.proposals) == 1 \
            and len(sa_p.proposals[0].spi) == 8 and select_proposal(self.proposals, sa_p.proposals) is not None
        if not ok:
            sa.log("ike_rekey_failed", error="malformed or unacceptable answer")
            return DONE
        chosen = sa_p.proposals[0]
        neg = negotiated(chosen)
        if neg.dh != self.ke.group or ke_p.group != self.ke.group:
            sa.log("ike_rekey_failed", error="key exchange group mismatch")
            return DONE
        try:
            g_ir = self.ke.shared_secret(ke_p.data)
        except InvalidKeyExchange as exc:
            sa.log("ike_rekey_failed", error=str(exc))
            return DONE
        new = make_rekeyed_sa(sa, initiator=True, spi_i=self.spi, spi_r=chosen.spi, ni=self.nonce,
                              nr=nonce_p.data, chosen=chosen, g_ir=g_ir, now=now)
        winner = new
        if self.collision is not None:
            other, other_nonces = self.collision
            if lost_collision((self.nonce, nonce_p.data), other_nonces) and other.state == "established":
                sa.log("ike_rekey_collision_lost")
                from ike.tasks.informational import IkeDelete
                new.silent = True
                new.queue_task(IkeDelete("rekey collision"), now)
                winner = other
            else:
                sa.log("ike_rekey_collision_won")
                other.silent = True  # the loser deletes it, or it times out
                other.redundant_until = now + AWAIT_PEER_DELETE
        hand_over(sa, winner, now)
        if winner is new:
            from ike.tasks.informational import IkeDelete
            sa.queue.insert(0, IkeDelete("rekeyed"))
        return DONE

    def _failed(self, sa, err: NotifyPayload, now) -> str:
        if err.notify_type == NotifyType.INVALID_KE_PAYLOAD and len(err.data) == 2 and self.group is None:
            self.group = struct.unpack("!H", err.data)[0]
            return RETRY
        if self.collision is not None and self.collision[0].state == "established":
            hand_over(sa, self.collision[0], now)  # the peer's rekey went through; it deletes the old SA
            return DONE
        if err.notify_type == NotifyType.TEMPORARY_FAILURE:
            sa.postpone(IkeRekey(), now)
            return DONE
        sa.log("ike_rekey_failed", notify=err.name)
        return DONE


def respond_ike_rekey(sa: "IkeSa", msg: "Message", now: float) -> list[Payload]:
    active = sa.active.task if sa.active else None
    colliding = isinstance(active, IkeRekey)
    if sa.state != "established" or (active is not None and not colliding) or any(
            c.state == "rekeying" for c in sa.children.values()):
        return [NotifyPayload(NotifyType.TEMPORARY_FAILURE)]
    sa_p, nonce_p, ke_p = msg.get(SaPayload), msg.get(NoncePayload), msg.get(KePayload)
    if sa_p is None or nonce_p is None or ke_p is None:
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    offered = [p for p in sa_p.proposals if p.protocol == ProtocolId.IKE and len(p.spi) == 8]
    chosen = select_proposal(parse_proposals(sa.config.proposals, ProtocolId.IKE), offered)
    if chosen is None:
        return [NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN)]
    neg = negotiated(chosen)
    if ke_p.group != neg.dh:
        return [NotifyPayload(NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", neg.dh))]
    our_ke = key_exchange(neg.dh, sa.rng)
    try:
        g_ir = our_ke.shared_secret(ke_p.data)
    except InvalidKeyExchange:
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    spi_r, nonce_r = sa.endpoint.new_ike_spi(), sa.rng(NONCE_LEN)
    new = make_rekeyed_sa(sa, initiator=False, spi_i=chosen.spi, spi_r=spi_r, ni=nonce_p.data, nr=nonce_r,
                          chosen=chosen, g_ir=g_ir, now=now)
    answer = [SaPayload([Proposal(chosen.protocol, chosen.transforms, chosen.number, spi_r)]),
              NoncePayload(nonce_r), KePayload(neg.dh, our_ke.public)]
    if colliding:
        new.silent = True  # decided when our own rekey is answered
        active.collision = (new, (nonce_p.data, nonce_r))
    else:
        hand_over(sa, new, now)
    return answer
