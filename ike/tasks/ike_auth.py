"""IKE_AUTH with pre-shared keys (RFC 7296 s1.2, s2.15) and the first CHILD SA.

A failed CHILD SA here keeps the IKE SA (RFC 7296 s1.2, as strongSwan); failed authentication
ends it with AUTHENTICATION_FAILED.
"""

from __future__ import annotations

import hmac

from ike.codec.constants import AuthMethod, ExchangeType, NotifyType
from ike.codec.ids import ANY_ID, Identity, id_matches
from ike.codec.message import Message
from ike.codec.payloads import AuthPayload, IdiPayload, IdPayload, IdrPayload, NotifyPayload, Payload, SaPayload
from ike.config import ChildConfig, ConnectionConfig
from ike.crypto.keys import psk_auth, signed_octets
from ike.events import Address, NegotiationFailed
from ike.tasks.base import DONE, IkeSaContext, Outcome, Task, destroy, shared
from ike.tasks.child_create import (ChildFailure, ChildOffer, PacketTs, abandon, accept_answer, answer_offer,
                                    failure_event,
                                    make_offer, offer_payloads)
from ike.tasks.states import IkeState


def local_identity(config: ConnectionConfig, local_addr: str) -> Identity:
    if config.local.id:
        return Identity.parse(config.local.id)
    return Identity.of_address(local_addr)


def auth_octets(sa: IkeSaContext, initiator_side: bool, id_payload: IdPayload) -> bytes:
    """The side's <Initiator|Responder>SignedOctets (RFC 7296 s2.15): what a PSK AUTH MACs and a
    signature AUTH (ike.crypto.signatures) signs."""
    assert sa.neg is not None and sa.keys is not None and sa.neg.prf is not None
    if initiator_side:
        return signed_octets(sa.init_request, sa.nr, sa.neg.prf, sa.keys.sk_pi, id_payload.body())
    return signed_octets(sa.init_response, sa.ni, sa.neg.prf, sa.keys.sk_pr, id_payload.body())


def _auth_data(sa: IkeSaContext, psk: bytes, initiator_side: bool, id_payload: IdPayload) -> bytes:
    assert sa.neg is not None and sa.neg.prf is not None
    return psk_auth(sa.neg.prf, psk, auth_octets(sa, initiator_side, id_payload))


def _auth_ok(expected: bytes, got: AuthPayload | None) -> bool:
    return got is not None and got.method == AuthMethod.SHARED_KEY_MIC and hmac.compare_digest(expected, got.data)


class IkeAuth(Task):
    exchange = ExchangeType.IKE_AUTH

    def __init__(self, child_config: ChildConfig | None = None, packet_ts: PacketTs | None = None):
        self.child_config, self.packet_ts = child_config, packet_ts
        self.offer: ChildOffer | None = None

    def build(self, sa: IkeSaContext, now: float) -> list[Payload] | None:
        if sa.keys is None:
            return None
        sa.local_id = local_identity(sa.config, sa.local[0])
        idi = IdiPayload(sa.local_id.id_type, sa.local_id.data)
        out: list[Payload] = [idi]
        if sa.first_contact():
            out.append(NotifyPayload(NotifyType.INITIAL_CONTACT))
        remote_id = sa.config.remote.id
        if remote_id and remote_id != ANY_ID:
            peer = Identity.parse(remote_id)
            out.append(IdrPayload(peer.id_type, peer.data))
        out.append(AuthPayload(AuthMethod.SHARED_KEY_MIC, _auth_data(sa, sa.config.psk, True, idi)))
        if self.child_config is not None:
            self.offer = make_offer(sa, self.child_config, in_auth=True, packet_ts=self.packet_ts)
            out.append(NotifyPayload(NotifyType.ESP_TFC_PADDING_NOT_SUPPORTED))
            out += offer_payloads(self.offer)
        return out

    def _fail(self, sa: IkeSaContext, notify: str, text: str, tell_peer: bool = False) -> Outcome:
        sa.emit(NegotiationFailed(sa.name, "IKE_AUTH", notify, text))
        sa.log("ike_auth_failed", notify=notify, error=text)
        if tell_peer:  # the responder thinks the SA is up: tell it, once (as strongSwan does)
            sa.send_once(ExchangeType.INFORMATIONAL, [NotifyPayload(NotifyType.AUTHENTICATION_FAILED)])
        return destroy("auth failed")

    def process(self, sa: IkeSaContext, msg: Message, raw: bytes, src: Address, dst: Address,
                now: float) -> Outcome:
        idr, auth = msg.get(IdrPayload), msg.get(AuthPayload)
        if idr is None or auth is None:
            err = next((p for p in msg.all(NotifyPayload) if p.is_error), None)
            name = err.name if err else "INVALID_SYNTAX"
            return self._fail(sa, name, f"responder answered IKE_AUTH with {name}")
        if not _auth_ok(_auth_data(sa, sa.config.psk, False, idr), auth):
            return self._fail(sa, "AUTHENTICATION_FAILED", "responder's AUTH payload does not verify", True)
        sa.remote_id = Identity(idr.id_type, idr.data)
        if not id_matches(sa.config.remote.id, sa.remote_id):
            return self._fail(sa, "AUTHENTICATION_FAILED",
                              f"responder identity {sa.remote_id} is not the configured one", True)
        sa.set_established(now)
        sa.emit(sa.ike_up_event())
        if self.offer is not None:
            try:
                child = accept_answer(sa, self.offer, msg, sa.ni, sa.nr, now)
            except ChildFailure as exc:
                abandon(sa, exc)
                sa.emit(failure_event(sa, "IKE_AUTH", exc, self.offer.config.name))
                sa.log("child_sa_failed", child=self.offer.config.name, notify=exc.notify.name, error=str(exc))
            else:
                sa.add_child(child)
        sa.auth_done()
        return DONE


def _pick_connection(sa: IkeSaContext, idi: Identity, idr: Identity | None) -> ConnectionConfig | None:
    """Among the configs that matched the addresses, the first whose IDs fit (RFC 7296 s2.15)."""
    for cfg in sa.candidates:
        if not id_matches(cfg.remote.id, idi):
            continue
        if idr is not None and local_identity(cfg, sa.local[0]) != idr:
            continue
        return cfg
    return None


def respond_auth(sa: IkeSaContext, msg: Message, now: float) -> list[Payload]:
    if sa.state != IkeState.CONNECTING:
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    idi_p, auth = msg.get(IdiPayload), msg.get(AuthPayload)
    idr_p = msg.get(IdrPayload)
    if idi_p is None or auth is None:
        sa.delete_after_response = "auth failed"
        sa.emit(NegotiationFailed(sa.name, "IKE_AUTH", "INVALID_SYNTAX", "IKE_AUTH without IDi or AUTH"))
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    idi = Identity(idi_p.id_type, idi_p.data)
    cfg = _pick_connection(sa, idi, Identity(idr_p.id_type, idr_p.data) if idr_p else None)
    if cfg is None or not _auth_ok(_auth_data(sa, cfg.psk, True, idi_p), auth):
        text = f"peer {idi} not authenticated" if cfg else f"no connection accepts identity {idi}"
        sa.emit(NegotiationFailed(cfg.name if cfg else sa.name, "IKE_AUTH", "AUTHENTICATION_FAILED", text))
        sa.log("ike_auth_failed", peer_id=str(idi), error=text)
        sa.delete_after_response = "auth failed"
        return [NotifyPayload(NotifyType.AUTHENTICATION_FAILED)]
    sa.config = cfg
    sa.remote_id = idi
    local_id = local_identity(cfg, sa.local[0])
    sa.local_id = shared(("identity", local_id), local_id)  # the same for most SAs of a gateway
    if cfg.unique == "keep" and sa.has_duplicates():  # strongSwan: keep the existing SA, refuse the new one
        sa.emit(NegotiationFailed(cfg.name, "IKE_AUTH", "AUTHENTICATION_FAILED",
                                  f"an IKE SA with {idi} exists and unique = keep"))
        sa.delete_after_response = "unique policy"
        return [NotifyPayload(NotifyType.AUTHENTICATION_FAILED)]
    idr = IdrPayload(sa.local_id.id_type, sa.local_id.data)
    out: list[Payload] = [idr, AuthPayload(AuthMethod.SHARED_KEY_MIC, _auth_data(sa, cfg.psk, False, idr))]
    if cfg.unique == "replace" or (NotifyType.INITIAL_CONTACT in msg.notifies() and cfg.unique != "never"):
        sa.replace_duplicates()
    sa.set_established(now)
    sa.emit(sa.ike_up_event())
    if msg.get(SaPayload) is not None:
        try:
            payloads, child = answer_offer(sa, msg, now, in_auth=True)
        except ChildFailure as exc:
            sa.emit(failure_event(sa, "IKE_AUTH", exc, None))
            sa.log("child_sa_failed", notify=exc.notify.name, error=str(exc))
            out.append(NotifyPayload(int(exc.notify), exc.data))
        else:
            sa.add_child(child)
            out += payloads
    sa.auth_done()
    return out


def respond_error_notifies(sa: IkeSaContext, msg: Message) -> None:
    """Error notifies in an INFORMATIONAL request: AUTHENTICATION_FAILED (or INVALID_SYNTAX before
    the SA is up) is the initiator rejecting our AUTH right after IKE_AUTH (RFC 7296 s2.21.2)."""
    for p in msg.all(NotifyPayload):
        if not p.is_error:
            continue
        sa.log("error_notify_received", notify=p.name)
        if p.notify_type == NotifyType.AUTHENTICATION_FAILED or (
                p.notify_type == NotifyType.INVALID_SYNTAX and not sa.established):
            sa.emit(NegotiationFailed(sa.name, "IKE_AUTH", p.name, "peer rejected the authentication"))
            sa.delete_after_response = "auth failed"
