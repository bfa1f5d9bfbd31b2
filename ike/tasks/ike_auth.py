"""IKE_AUTH with pre-shared keys or certificates (RFC 7296 s1.2, s2.15, s3.6-3.8; RFC 7427) and
the first CHILD SA.

Each side authenticates as its own ``auth`` says (PSK one way and signatures the other is
allowed). With ``pubkey`` we send our chain (shortened to the CA the peer's CERTREQ names) and sign
with method 14 when the peer announced SIGNATURE_HASH_ALGORITHMS, else with the key type's classic
method; the peer's CERT payloads must chain to our trust store at wall-clock time
(``now + clock_offset``), contain its ID, and carry the key its AUTH verifies with.

A failed CHILD SA here keeps the IKE SA (RFC 7296 s1.2, as strongSwan); failed authentication
ends it with AUTHENTICATION_FAILED and one log line naming the reason.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

from cryptography.hazmat.primitives import serialization

from ike.codec.constants import AuthMethod, CertEncoding, ExchangeType, NotifyType
from ike.codec.ids import ANY_ID, Identity, id_matches
from ike.codec.message import Message, MessageError, decode
from ike.codec.payloads import (AuthPayload, CertPayload, CertReqPayload, IdiPayload, IdPayload, IdrPayload,
                                NotifyPayload, Payload, SaPayload)
from ike.config import AuthConfig, ChildConfig, ConnectionConfig
from ike.crypto.certs import CertError, certificate_public_key, chain_to_send, validate_peer
from ike.crypto.keys import psk_auth, signed_octets
from ike.crypto.signatures import (SignatureError, parse_hash_algorithms, scheme_for_identifier, sign_auth,
                                   verify_auth)
from ike.events import Address, NegotiationFailed
from ike.tasks import ike_config, ike_mobike
from ike.tasks.base import DONE, IkeSaContext, Outcome, Task, destroy, shared
from ike.tasks.child_create import (ChildFailure, ChildOffer, PacketTs, abandon, accept_answer, answer_offer,
                                    failure_event,
                                    make_offer, offer_payloads)
from ike.tasks.states import IkeState


def local_identity(config: ConnectionConfig, local_addr: str) -> Identity:
    if config.local.id:
        return Identity.parse(config.local.id)
    if config.local.auth == "pubkey" and config.local.credential is not None:
        return config.local.credential.identity  # strongSwan: the certificate's subject DN
    return Identity.of_address(local_addr)


def auth_octets(sa: IkeSaContext, initiator_side: bool, id_payload: IdPayload) -> bytes:
    """The side's <Initiator|Responder>SignedOctets (RFC 7296 s2.15): what a PSK AUTH MACs and a
    signature AUTH (ike.crypto.signatures) signs."""
    assert sa.neg is not None and sa.keys is not None and sa.neg.prf is not None
    # after IKE_INTERMEDIATE exchanges both sides' octets end with IntAuth (RFC 9242 s3.3.2)
    int_auth = sa.intermediate.auth_input() if sa.intermediate is not None else b""
    if initiator_side:
        return signed_octets(sa.init_request, sa.nr, sa.neg.prf, sa.keys.sk_pi, id_payload.body()) + int_auth
    return signed_octets(sa.init_response, sa.ni, sa.neg.prf, sa.keys.sk_pr, id_payload.body()) + int_auth


def _auth_data(sa: IkeSaContext, psk: bytes, initiator_side: bool, id_payload: IdPayload) -> bytes:
    assert sa.neg is not None and sa.neg.prf is not None
    return psk_auth(sa.neg.prf, psk, auth_octets(sa, initiator_side, id_payload))


def _auth_ok(expected: bytes, got: AuthPayload | None) -> bool:
    return got is not None and got.method == AuthMethod.SHARED_KEY_MIC and hmac.compare_digest(expected, got.data)


def _peer_init_payloads(sa: IkeSaContext) -> list[Payload]:
    """The peer's IKE_SA_INIT payloads (kept raw for AUTH anyway): its SIGNATURE_HASH_ALGORITHMS
    and, from a responder, its CERTREQ."""
    try:
        return decode(sa.init_response if sa.initiator else sa.init_request).payloads
    except MessageError:
        return []


def _peer_hashes(sa: IkeSaContext) -> list[int] | None:
    for p in _peer_init_payloads(sa):
        if isinstance(p, NotifyPayload) and p.notify_type == NotifyType.SIGNATURE_HASH_ALGORITHMS:
            return parse_hash_algorithms(p.data)
    return None


def certreq_payloads(remote: AuthConfig) -> list[Payload]:
    """Our CERTREQ (RFC 7296 s3.7) when we authenticate the peer by certificate."""
    if remote.auth != "pubkey" or remote.trust is None:
        return []
    return [CertReqPayload.for_authorities(remote.trust.ca_key_hashes())]


def _own_auth(sa: IkeSaContext, cfg: ConnectionConfig, initiator_side: bool, id_payload: IdPayload,
              requested: list[bytes]) -> list[Payload]:
    """Our CERT payloads and AUTH, as our local ``auth`` says."""
    if cfg.local.auth != "pubkey":
        sa.auth_methods = ("psk", sa.auth_methods[1])
        return [AuthPayload(AuthMethod.SHARED_KEY_MIC, _auth_data(sa, cfg.psk, initiator_side, id_payload))]
    cred = cfg.local.credential
    assert cred is not None, "the config layer gives every pubkey connection its credential"
    known = cfg.remote.trust.cas if cfg.remote.trust is not None else ()
    out: list[Payload] = [CertPayload(CertEncoding.X509_SIGNATURE, c.public_bytes(_DER))
                          for c in chain_to_send(cred, requested, known)]
    method, data = sign_auth(cred.key, auth_octets(sa, initiator_side, id_payload), _peer_hashes(sa),
                             rsa_pss=cfg.local.rsa_pss)
    sa.auth_methods = (f"pubkey {_method_name(method, data)}", sa.auth_methods[1])
    return out + [AuthPayload(method, data)]


def _method_name(method: int, data: bytes) -> str:
    """What list-sas shows: the RFC 7427 scheme, or the classic method's name."""
    if method == AuthMethod.DIGITAL_SIGNATURE and data and len(data) > data[0]:
        scheme = scheme_for_identifier(bytes(data[1:1 + data[0]]))
        if scheme is not None:
            return scheme.name
    try:
        return AuthMethod(method).name
    except ValueError:
        return str(method)


def _check_peer_auth(sa: IkeSaContext, cfg: ConnectionConfig, msg: Message, initiator_side: bool,
                     id_payload: IdPayload, peer: Identity, now: float) -> str | None:
    """None when the peer's AUTH (and with pubkey its certificate) checks out; else the reason."""
    auth = msg.get(AuthPayload)
    if auth is None:
        return "no AUTH payload"
    if cfg.remote.auth != "pubkey":
        if auth.method != AuthMethod.SHARED_KEY_MIC:
            return f"peer used AUTH method {auth.method}, but {cfg.name} expects a pre-shared key"
        if not _auth_ok(_auth_data(sa, cfg.psk, initiator_side, id_payload), auth):
            return "pre-shared key AUTH does not verify"
        sa.auth_methods = (sa.auth_methods[0], "psk")
        return None
    if auth.method == AuthMethod.SHARED_KEY_MIC:
        return f"peer used a pre-shared key, but {cfg.name} expects a certificate (pubkey)"
    if cfg.remote.trust is None:
        return "no trusted CA configured"
    ders = [p.data for p in msg.all(CertPayload) if p.encoding == CertEncoding.X509_SIGNATURE]
    when = datetime.fromtimestamp(now + cfg.remote.clock_offset, UTC)
    try:
        chain = validate_peer(ders, cfg.remote.trust, when, peer)
        peer_hashes = _peer_hashes(sa)
        scheme = verify_auth(certificate_public_key(chain[0]), auth.method, auth.data,
                             auth_octets(sa, initiator_side, id_payload), allow_legacy=peer_hashes is None)
    except CertError as exc:
        return f"certificate {exc.reason}: {exc}"
    except SignatureError as exc:
        return f"signature: {exc}"
    sa.auth_methods = (sa.auth_methods[0], f"pubkey {scheme.name}")
    return None


_DER = serialization.Encoding.DER


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
        out += certreq_payloads(sa.config.remote)
        remote_id = sa.config.remote.id
        if remote_id and remote_id != ANY_ID:
            peer = Identity.parse(remote_id)
            out.append(IdrPayload(peer.id_type, peer.data))
        requested = [h for p in _peer_init_payloads(sa) if isinstance(p, CertReqPayload) for h in p.authorities]
        try:
            auth_payloads = _own_auth(sa, sa.config, True, idi, requested)
        except SignatureError as exc:
            self._fail(sa, "AUTHENTICATION_FAILED", f"cannot sign our AUTH: {exc}")
            return None
        out[1:1] = [p for p in auth_payloads if isinstance(p, CertPayload)]  # CERT right after IDi (s1.2)
        out += [p for p in auth_payloads if not isinstance(p, CertPayload)]
        out += ike_config.request_payloads(sa)
        if self.child_config is not None:
            self.offer = make_offer(sa, self.child_config, in_auth=True, packet_ts=self.packet_ts)
            out.append(NotifyPayload(NotifyType.ESP_TFC_PADDING_NOT_SUPPORTED))
            out += offer_payloads(self.offer)
        out += ike_mobike.auth_payloads(sa)
        return out

    def _fail(self, sa: IkeSaContext, notify: str, text: str, tell_peer: bool = False) -> Outcome:
        sa.emit(NegotiationFailed(sa.name, "IKE_AUTH", notify, text))
        if tell_peer:  # the responder thinks the SA is up: tell it, once (as strongSwan does)
            sa.send_once(ExchangeType.INFORMATIONAL, [NotifyPayload(NotifyType.AUTHENTICATION_FAILED)])
        return destroy("auth failed")

    def timed_out(self, sa: IkeSaContext, now: float) -> Outcome:
        """No answer to IKE_AUTH: a failure with its reason (``espgw initiate`` and ``status`` see
        it), then the IKE SA ends as a dead peer and keyingtries decides about another attempt."""
        sa.emit(NegotiationFailed(sa.name, "IKE_AUTH", "TIMEOUT", "no answer to IKE_AUTH"))
        return destroy("dead peer")

    def process(self, sa: IkeSaContext, msg: Message, raw: bytes, src: Address, dst: Address,
                now: float) -> Outcome:
        idr, auth = msg.get(IdrPayload), msg.get(AuthPayload)
        if idr is None or auth is None:
            err = next((p for p in msg.all(NotifyPayload) if p.is_error), None)
            name = err.name if err else "INVALID_SYNTAX"
            return self._fail(sa, name, f"responder answered IKE_AUTH with {name}")
        peer = Identity(idr.id_type, idr.data)
        reason = _check_peer_auth(sa, sa.config, msg, False, idr, peer, now)
        if reason is not None:
            return self._fail(sa, "AUTHENTICATION_FAILED", f"responder {peer} not authenticated: {reason}", True)
        sa.remote_id = peer
        if not id_matches(sa.config.remote.id, sa.remote_id):
            return self._fail(sa, "AUTHENTICATION_FAILED",
                              f"responder identity {sa.remote_id} is not the configured one", True)
        ike_mobike.auth_answered(sa, msg)
        sa.set_established(now)
        sa.emit(sa.ike_up_event())
        ike_config.process_reply(sa, msg)
        if self.offer is not None:
            try:
                child = accept_answer(sa, self.offer, msg, sa.ni, sa.nr, now)
            except ChildFailure as exc:
                abandon(sa, exc)
                sa.emit(failure_event(sa, "IKE_AUTH", exc, self.offer.config.name))
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
    if sa.intermediate is not None and sa.intermediate.pending:  # RFC 9370: every key exchange first
        sa.delete_after_response = "auth failed"
        sa.emit(NegotiationFailed(sa.name, "IKE_AUTH", "INVALID_SYNTAX",
                                  "IKE_AUTH before the additional key exchanges were done"))
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    idi_p, auth = msg.get(IdiPayload), msg.get(AuthPayload)
    idr_p = msg.get(IdrPayload)
    if idi_p is None or auth is None:
        sa.delete_after_response = "auth failed"
        sa.emit(NegotiationFailed(sa.name, "IKE_AUTH", "INVALID_SYNTAX", "IKE_AUTH without IDi or AUTH"))
        return [NotifyPayload(NotifyType.INVALID_SYNTAX)]
    idi = Identity(idi_p.id_type, idi_p.data)
    cfg = _pick_connection(sa, idi, Identity(idr_p.id_type, idr_p.data) if idr_p else None)
    reason = _check_peer_auth(sa, cfg, msg, True, idi_p, idi, now) if cfg is not None else None
    if cfg is None or reason is not None:
        text = f"peer {idi} not authenticated: {reason}" if cfg else f"no connection accepts identity {idi}"
        sa.emit(NegotiationFailed(cfg.name if cfg else sa.name, "IKE_AUTH", "AUTHENTICATION_FAILED", text))
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
    requested = [h for p in msg.all(CertReqPayload) for h in p.authorities]
    try:
        out: list[Payload] = [idr, *_own_auth(sa, cfg, False, idr, requested)]
    except SignatureError as exc:
        text = f"cannot sign our AUTH: {exc}"
        sa.emit(NegotiationFailed(cfg.name, "IKE_AUTH", "AUTHENTICATION_FAILED", text))
        sa.delete_after_response = "auth failed"
        return [NotifyPayload(NotifyType.AUTHENTICATION_FAILED)]
    if cfg.unique == "replace" or (NotifyType.INITIAL_CONTACT in msg.notifies() and cfg.unique != "never"):
        sa.replace_duplicates()
    ike_mobike.auth_answered(sa, msg)
    if sa.mobike:
        out += ike_mobike.auth_payloads(sa)
    sa.set_established(now)
    sa.emit(sa.ike_up_event())
    try:
        out += ike_config.respond_config(sa, msg, now)
        child_wanted = msg.get(SaPayload) is not None
    except ike_config.ConfigFailure as exc:  # no CHILD SA without the virtual IP it needs
        out += ike_config.failure_payloads(sa, exc)
        child_wanted = False
    if child_wanted:
        try:
            payloads, child = answer_offer(sa, msg, now, in_auth=True)
        except ChildFailure as exc:
            sa.emit(failure_event(sa, "IKE_AUTH", exc, None))
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
