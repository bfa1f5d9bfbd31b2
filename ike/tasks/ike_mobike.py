"""MOBIKE (RFC 4555), as charon's ike_mobike task: the initiator tells the responder its addresses
changed (UPDATE_SA_ADDRESSES), checks its NAT mapping during liveness checks, and the responder
proves the new path before it moves traffic (return routability with COOKIE2).

``IkeMobike`` is the initiator's task in three kinds:

* ``update``: UPDATE_SA_ADDRESSES, NAT detection from the new addresses, NO_ADDITIONAL_ADDRESSES
  and a COOKIE2 the answer must echo (RFC 4555 s3.5); the answer moves the CHILD SAs;
* ``check``: a liveness check with NAT detection (charon's MOBIKE DPD); a changed mapping of our
  address (the responder's NAT_DETECTION_DESTINATION_IP hash differs from the last one) starts an
  ``update``;
* ``routability``: the responder's return routability check (RFC 4555 s5.4), an INFORMATIONAL with
  only COOKIE2 to the address an update came from; its echo moves the CHILD SAs there.

``respond_mobike`` answers such requests. The IKE SA moves at once (its answer goes to the
request's source anyway); its CHILD SAs follow only after the check. ``auth_payloads`` and
``auth_answered`` are IKE_AUTH's part (MOBIKE_SUPPORTED).
"""

from __future__ import annotations

import ipaddress

from ike.codec.constants import ExchangeType, NotifyType
from ike.codec.message import Message
from ike.codec.payloads import NotifyPayload, Payload
from ike.events import Address
from ike.tasks.base import DONE, IkeSaContext, Outcome, Task
from ike.tasks.ike_init import detect_nat, nat_notifies

COOKIE2_LEN = 16  # RFC 4555 s3.5: 8 to 64 octets
MAX_PEER_ADDRESSES = 16  # ADDITIONAL_*_ADDRESS beyond this are ignored (logged)
ADDRESS_NOTIFIES = (NotifyType.ADDITIONAL_IP4_ADDRESS, NotifyType.ADDITIONAL_IP6_ADDRESS,
                    NotifyType.NO_ADDITIONAL_ADDRESSES)
# an INFORMATIONAL request with any of these is MOBIKE's (charon's task manager has the same list)
MOBIKE_NOTIFIES = frozenset({NotifyType.UPDATE_SA_ADDRESSES, NotifyType.COOKIE2, NotifyType.NAT_DETECTION_SOURCE_IP,
                             NotifyType.NAT_DETECTION_DESTINATION_IP, *ADDRESS_NOTIFIES})

KINDS = ("update", "check", "routability")


def auth_payloads(sa: IkeSaContext) -> list[Payload]:
    """MOBIKE_SUPPORTED in our IKE_AUTH message, when the connection has ``mobike``."""
    return [NotifyPayload(NotifyType.MOBIKE_SUPPORTED)] if sa.config.mobike else []


def auth_answered(sa: IkeSaContext, msg: Message) -> None:
    """MOBIKE is in use when both sides said so in IKE_AUTH; the peer's addresses are kept."""
    notifies = msg.notifies()
    sa.mobike = sa.config.mobike and NotifyType.MOBIKE_SUPPORTED in notifies
    if sa.mobike:
        take_peer_addresses(sa, msg)
        sa.log("mobike_enabled")


def take_peer_addresses(sa: IkeSaContext, msg: Message) -> None:
    """ADDITIONAL_IP4/IP6_ADDRESS or NO_ADDITIONAL_ADDRESSES (RFC 4555 s3.4, s3.6): the list
    replaces the one we had; malformed entries are logged and skipped."""
    found = [p for p in msg.all(NotifyPayload) if p.notify_type in ADDRESS_NOTIFIES]
    if not found:
        return
    addrs: list[str] = []
    for p in found:
        if p.notify_type == NotifyType.NO_ADDITIONAL_ADDRESSES:
            continue
        want = 4 if p.notify_type == NotifyType.ADDITIONAL_IP4_ADDRESS else 16
        if len(p.data) != want:
            sa.log("mobike_bad_address", notify=p.name, length=len(p.data))
            continue
        if len(addrs) >= MAX_PEER_ADDRESSES:
            sa.log("mobike_too_many_addresses", limit=MAX_PEER_ADDRESSES)
            break
        addrs.append(str(ipaddress.ip_address(p.data)))
    sa.peer_addresses = tuple(addrs)


def _nat_payloads(sa: IkeSaContext, local: Address, remote: Address) -> list[Payload]:
    return nat_notifies(sa.spi_i, sa.spi_r, local, remote, sa.rng if sa.config.encap else None)


def _mapping_changed(sa: IkeSaContext, msg: Message) -> bool:
    """Whether the peer saw our address and port as something else than last time (charon's
    has_mapping_changed: the first hash seen is the baseline)."""
    seen = next((p.data for p in msg.all(NotifyPayload)
                 if p.notify_type == NotifyType.NAT_DETECTION_DESTINATION_IP), None)
    if seen is None:
        return False
    before, sa.nat_mapping = sa.nat_mapping, seen
    return before is not None and before != seen


def _apply_nat(sa: IkeSaContext, msg: Message, src: Address, dst: Address) -> None:
    nat = detect_nat(msg, sa.spi_i, sa.spi_r, src, dst)
    if nat is not None:
        sa.nat_local, sa.nat_remote = nat


class IkeMobike(Task):
    exchange = ExchangeType.INFORMATIONAL

    def __init__(self, kind: str):
        if kind not in KINDS:
            raise ValueError(f"unknown MOBIKE task kind {kind!r}")
        self.kind = kind
        self.cookie2 = b""

    def build(self, sa: IkeSaContext, now: float) -> list[Payload] | None:
        if not sa.established or not sa.mobike:
            return None
        out: list[Payload] = []
        if self.kind == "update":
            out.append(NotifyPayload(NotifyType.UPDATE_SA_ADDRESSES))
            out.append(NotifyPayload(NotifyType.NO_ADDITIONAL_ADDRESSES))
        if self.kind in ("update", "check"):
            out += _nat_payloads(sa, sa.local, sa.remote)
        if self.kind in ("update", "routability"):
            self.cookie2 = sa.rng(COOKIE2_LEN)
            out.append(NotifyPayload(NotifyType.COOKIE2, self.cookie2))
        sa.log("mobike_request", kind=self.kind, local=sa.local, remote=sa.remote)
        return out

    def process(self, sa: IkeSaContext, msg: Message, raw: bytes, src: Address, dst: Address,
                now: float) -> Outcome:
        notifies = msg.notifies()
        if self.cookie2:
            echoed = notifies.get(NotifyType.COOKIE2)
            if echoed is None or echoed.data != self.cookie2:
                # authentic, but not the answer to our check: the path is not proven
                sa.log("mobike_cookie2_mismatch", kind=self.kind)
                return DONE
        err = next((p for p in msg.all(NotifyPayload) if p.is_error), None)
        if err is not None:
            sa.log("mobike_refused", kind=self.kind, notify=err.name)
            return DONE
        take_peer_addresses(sa, msg)
        if self.kind in ("update", "check"):
            _apply_nat(sa, msg, src, dst)
            changed = _mapping_changed(sa, msg)
            if self.kind == "check" and changed:
                sa.log("mobike_nat_mapping_changed")
                sa.queue_next(IkeMobike("update"))
                return DONE
        if self.kind in ("update", "routability"):
            sa.addresses_moved(now)
        return DONE


def respond_mobike(sa: IkeSaContext, msg: Message, now: float) -> list[Payload]:
    """The answer to an INFORMATIONAL request with MOBIKE notifies (RFC 4555 s3.5)."""
    notifies = msg.notifies()
    src, dst = sa.request_addresses
    out: list[Payload] = []
    if not sa.mobike:
        if NotifyType.UPDATE_SA_ADDRESSES in notifies:
            sa.log("mobike_update_ignored", reason="MOBIKE not negotiated")
        return out
    take_peer_addresses(sa, msg)
    has_natd = NotifyType.NAT_DETECTION_SOURCE_IP in notifies
    if has_natd:
        _apply_nat(sa, msg, src, dst)
        out += _nat_payloads(sa, dst, src)
    cookie2 = notifies.get(NotifyType.COOKIE2)
    if cookie2 is not None:
        if 8 <= len(cookie2.data) <= 64:
            out.append(NotifyPayload(NotifyType.COOKIE2, cookie2.data))
        else:
            sa.log("mobike_bad_cookie2", length=len(cookie2.data))
    if NotifyType.UPDATE_SA_ADDRESSES in notifies:
        moved = (src, dst) != (sa.remote, sa.local)
        sa.log("mobike_update", old_remote=sa.remote, new_remote=src, local=dst)
        sa.local, sa.remote = dst, src  # the IKE SA now: our answer goes there in any case
        if moved:
            sa.queue_next(IkeMobike("routability"))  # sent after this answer; CHILD SAs move once it is echoed
        else:
            sa.addresses_moved(now)
    return out


__all__ = ["IkeMobike", "MOBIKE_NOTIFIES", "auth_answered", "auth_payloads", "respond_mobike", "take_peer_addresses"]
