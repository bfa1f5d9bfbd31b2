"""IKE_SA_INIT (RFC 7296 s1.2): proposals, key exchange, nonces, NAT detection (s2.23), COOKIE
(s2.6), INVALID_KE_PAYLOAD retry (s1.2), fragmentation support (RFC 7383) and signature hash
algorithms (RFC 7427, announced only: we authenticate with PSKs).

``IkeInit`` is the initiator's task, ``respond_init`` the responder's answer (the endpoint hands a
new request to a fresh responder IKE SA, whose task manager sends what it returns). Refusals are
stateless: the answer names no responder SPI and the SA ends with it."""

from __future__ import annotations

import hashlib
import ipaddress
import struct

from ike.codec import message as codec
from ike.codec.constants import NAT_T_PORT, ExchangeType, NotifyType, ProtocolId, TransformType
from ike.codec.payloads import CertReqPayload, KePayload, NoncePayload, NotifyPayload, Payload, SaPayload
from ike.crypto.dh import InvalidKeyExchange, KeyExchange, key_exchange
from ike.crypto.keys import NONCE_LEN, derive_ike_keys
from ike.crypto.multi_ke import supported_method
from ike.crypto.proposals import ADDKE_TYPES, Negotiated, Proposal, accept_answer, choose, parse_proposals
from ike.events import Address, NegotiationFailed
from ike.tasks.base import DONE, RETRY, IkeSaContext, Outcome, Rng, Task, destroy
from ike.tasks.ike_intermediate import IkeIntermediate, Intermediate, method_name

MAX_RETRIES = 5  # COOKIE / INVALID_KE round trips before giving up
HASH_ALGORITHMS = struct.pack("!HHHH", 2, 3, 4, 5)  # SHA2-256/384/512 and Identity (Ed25519) (RFC 7427 s7, RFC 8420)
ZERO_SPI = bytes(8)


def nat_hash(spi_i: bytes, spi_r: bytes, addr: tuple[str, int]) -> bytes:
    return hashlib.sha1(spi_i + spi_r + ipaddress.ip_address(addr[0]).packed + struct.pack("!H", addr[1])).digest()


def nat_notifies(spi_i: bytes, spi_r: bytes, src: Address, dst: Address,
                 rng: Rng | None = None) -> list[Payload]:
    """With ``rng`` (encap = yes) the source hash is of a random address, so the peer believes we
    are behind a NAT and encapsulates ESP in UDP (strongSwan's force_encap)."""
    if rng is not None:
        src = (str(ipaddress.IPv4Address(rng(4))), src[1])
    return [NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, nat_hash(spi_i, spi_r, src)),
            NotifyPayload(NotifyType.NAT_DETECTION_DESTINATION_IP, nat_hash(spi_i, spi_r, dst))]


def has_additional_ke(proposals: list[Proposal]) -> bool:
    """Whether any proposal names an additional key exchange (RFC 9370), NONE ones aside."""
    return any(t.type in ADDKE_TYPES and t.id for p in proposals for t in p.transforms)


def additional_ke_problem(neg: Negotiated, peer_supports_intermediate: bool) -> str | None:
    """Why the chosen proposal's additional key exchanges cannot run, or None."""
    if not neg.additional_ke:
        return None
    if not peer_supports_intermediate:  # as strongSwan: multiple key exchanges need RFC 9242
        return "additional key exchanges chosen, but the peer did not send INTERMEDIATE_EXCHANGE_SUPPORTED"
    for number, method in neg.additional_ke:
        if not supported_method(method):
            return f"additional key exchange {number} ({method_name(method)}) is not supported"
    return None


def detect_nat(msg: codec.Message, spi_i: bytes, spi_r: bytes, src: Address,
               dst: Address) -> tuple[bool, bool] | None:
    """(we are behind a NAT, the peer is) from the peer's NAT_DETECTION notifies; None if absent."""
    srcs = [p.data for p in msg.all(NotifyPayload) if p.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP]
    dsts = [p.data for p in msg.all(NotifyPayload) if p.notify_type == NotifyType.NAT_DETECTION_DESTINATION_IP]
    if not srcs or not dsts:
        return None
    return nat_hash(spi_i, spi_r, dst) not in dsts, nat_hash(spi_i, spi_r, src) not in srcs


class IkeInit(Task):
    exchange = ExchangeType.IKE_SA_INIT

    def __init__(self, proposals: str | list[str]):
        self.proposals = parse_proposals(proposals, ProtocolId.IKE)
        self.group = self.proposals[0].of_type(TransformType.DH)[0].id
        self.groups = [t.id for p in self.proposals for t in p.of_type(TransformType.DH)]
        self.cookie: bytes | None = None
        self.ke: KeyExchange | None = None
        self.retries = 0

    def build(self, sa: IkeSaContext, now: float) -> list[Payload] | None:
        if self.ke is None or self.ke.group != self.group:
            self.ke = key_exchange(self.group, sa.rng)
        if not sa.ni:
            sa.ni = sa.rng(NONCE_LEN)
        out: list[Payload] = [NotifyPayload(NotifyType.COOKIE, self.cookie)] if self.cookie else []
        out += [SaPayload(self.proposals), KePayload(self.group, self.ke.public), NoncePayload(sa.ni)]
        out += nat_notifies(sa.spi_i, ZERO_SPI, sa.local, sa.remote, sa.rng if sa.config.encap else None)
        if sa.config.fragmentation != "no":
            out.append(NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        out.append(NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, HASH_ALGORITHMS))
        if has_additional_ke(self.proposals):
            out.append(NotifyPayload(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED))
        return out

    def _fail(self, sa: IkeSaContext, notify: str, text: str) -> Outcome:
        sa.emit(NegotiationFailed(sa.name, "IKE_SA_INIT", notify, text))
        return destroy("negotiation failed")

    def process(self, sa: IkeSaContext, msg: codec.Message, raw: bytes, src: Address, dst: Address,
                now: float) -> Outcome:
        notifies = msg.notifies()
        if NotifyType.COOKIE in notifies:
            cookie = notifies[NotifyType.COOKIE].data
            self.retries += 1
            if self.retries > MAX_RETRIES or not 1 <= len(cookie) <= 64 or cookie == self.cookie:
                return self._fail(sa, "COOKIE", "responder keeps asking for a cookie")
            self.cookie = cookie
            sa.log("cookie_requested")
            return RETRY
        if NotifyType.INVALID_KE_PAYLOAD in notifies:
            data = notifies[NotifyType.INVALID_KE_PAYLOAD].data
            group = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 0
            self.retries += 1
            if group not in self.groups or group == self.group or self.retries > MAX_RETRIES:
                return self._fail(sa, "INVALID_KE_PAYLOAD", f"responder wants group {group} which we do not offer")
            sa.log("invalid_ke_retry", group=group)
            self.group = group
            return RETRY
        err = next((p for p in msg.all(NotifyPayload) if p.is_error), None)
        if err is not None:
            return self._fail(sa, err.name, "responder refused IKE_SA_INIT")
        sa_p, ke_p, nonce_p = msg.get(SaPayload), msg.get(KePayload), msg.get(NoncePayload)
        if sa_p is None or ke_p is None or nonce_p is None or msg.spi_r == ZERO_SPI:
            return self._fail(sa, "INVALID_SYNTAX", "response lacks SA, KE, nonce or SPI")
        choice = accept_answer(self.proposals, sa_p.proposals)
        if choice is None:
            return self._fail(sa, "NO_PROPOSAL_CHOSEN", "responder chose a proposal we did not offer")
        neg = choice.negotiated
        problem = additional_ke_problem(neg, NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED in notifies)
        if problem is not None:
            return self._fail(sa, "NO_PROPOSAL_CHOSEN", problem)
        if self.ke is None or neg.dh != self.group or ke_p.group != self.group:
            return self._fail(sa, "INVALID_KE_PAYLOAD", "responder's key exchange group differs from ours")
        try:
            g_ir = self.ke.shared_secret(ke_p.data)
        except InvalidKeyExchange as exc:
            return self._fail(sa, "INVALID_KE_PAYLOAD", str(exc))
        self.ke = None  # the private value is not needed again
        sa.spi_r = msg.spi_r
        sa.nr = nonce_p.data
        sa.init_response = raw
        sa.install_keys(neg, derive_ike_keys(neg, sa.ni, sa.nr, g_ir, sa.spi_i, sa.spi_r))
        sa.set_proposal(choice.proposal)
        nat = detect_nat(msg, sa.spi_i, sa.spi_r, src, dst)
        if nat is not None:
            sa.nat_local, sa.nat_remote = nat
        sa.peer_fragmentation = (NotifyType.IKEV2_FRAGMENTATION_SUPPORTED in notifies
                                 and sa.config.fragmentation != "no")
        if ipaddress.ip_address(sa.local[0]).is_unspecified and not ipaddress.ip_address(dst[0]).is_unspecified:
            sa.local = (dst[0], sa.local[1])  # sent from a wildcard: the address the kernel chose (MOBIKE's start)
        if sa.nat_local or sa.nat_remote or sa.config.encap:  # RFC 7296 s2.23: continue on port 4500
            sa.local = (sa.local[0], NAT_T_PORT)
            if sa.remote[1] == 500:
                sa.remote = (sa.remote[0], NAT_T_PORT)
        if neg.additional_ke:  # RFC 9370: one IKE_INTERMEDIATE per additional key exchange, before IKE_AUTH
            sa.intermediate = Intermediate(list(neg.additional_ke))
            sa.queue_next(IkeIntermediate())
        sa.log("ike_sa_init_done", proposal=sa.proposal_name, nat_local=sa.nat_local, nat_remote=sa.nat_remote)
        return DONE

    def timed_out(self, sa: IkeSaContext, now: float) -> Outcome:
        sa.emit(NegotiationFailed(sa.name, "IKE_SA_INIT", "TIMEOUT", "no answer to IKE_SA_INIT"))
        return destroy("dead peer")


REFUSED = "refused"  # the reason a responder SA that answered with an error ends with


def init_error_reply(request: codec.Message, notify: NotifyType, data: bytes = b"") -> bytes:
    """A stateless IKE_SA_INIT error answer: the notify alone, no responder SPI."""
    reply = codec.Message(request.spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, 0, False, True,
                          [NotifyPayload(int(notify), data)])
    return codec.encode(reply)


def _refuse(sa: IkeSaContext, notify: NotifyType, data: bytes = b"") -> list[Payload]:
    sa.spi_r = ZERO_SPI  # stateless: the answer names no SA of ours, and the SA ends with it
    sa.delete_after_response = REFUSED
    return [NotifyPayload(int(notify), data)]


def respond_init(sa: IkeSaContext, msg: codec.Message, now: float) -> list[Payload]:
    """A new IKE_SA_INIT request, given to a fresh responder SA whose ``candidates`` are the
    connections matching the addresses: the answer, or an error answer that ends the SA."""
    sa_p, ke_p, nonce_p = msg.get(SaPayload), msg.get(KePayload), msg.get(NoncePayload)
    if sa_p is None or ke_p is None or nonce_p is None:
        return _refuse(sa, NotifyType.INVALID_SYNTAX)
    offered = [p for p in sa_p.proposals if p.protocol == ProtocolId.IKE and not p.spi]
    choice, config = None, None
    for cfg in sa.candidates:
        choice = choose(parse_proposals(cfg.proposals, ProtocolId.IKE), offered)
        if choice is not None:
            config = cfg
            break
    if choice is None or config is None:
        sa.emit(NegotiationFailed(sa.candidates[0].name, "IKE_SA_INIT", "NO_PROPOSAL_CHOSEN",
                                  "no acceptable IKE proposal"))
        return _refuse(sa, NotifyType.NO_PROPOSAL_CHOSEN)
    neg = choice.negotiated
    notifies = msg.notifies()
    problem = additional_ke_problem(neg, NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED in notifies)
    if problem is not None:
        sa.emit(NegotiationFailed(config.name, "IKE_SA_INIT", "NO_PROPOSAL_CHOSEN", problem))
        return _refuse(sa, NotifyType.NO_PROPOSAL_CHOSEN)
    if neg.dh is None or ke_p.group != neg.dh:
        return _refuse(sa, NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", neg.dh or 0))
    try:
        our_ke = key_exchange(neg.dh, sa.rng)
    except ValueError:  # e.g. an ML-KEM as the IKE_SA_INIT method: only additional ones are supported
        return _refuse(sa, NotifyType.NO_PROPOSAL_CHOSEN)
    try:
        g_ir = our_ke.shared_secret(ke_p.data)
    except InvalidKeyExchange:
        return _refuse(sa, NotifyType.INVALID_SYNTAX)
    sa.config = config
    sa.spi_r = sa.new_ike_spi()
    sa.unique_id = sa.next_unique_id()
    sa.ni, sa.nr = nonce_p.data, sa.rng(NONCE_LEN)
    sa.install_keys(neg, derive_ike_keys(neg, sa.ni, sa.nr, g_ir, sa.spi_i, sa.spi_r))
    sa.set_proposal(choice.proposal)
    src, dst = sa.remote, sa.local
    nat = detect_nat(msg, sa.spi_i, ZERO_SPI, src, dst)
    if nat is not None:
        sa.nat_local, sa.nat_remote = nat
    sa.peer_fragmentation = NotifyType.IKEV2_FRAGMENTATION_SUPPORTED in notifies and config.fragmentation != "no"
    payloads: list[Payload] = [SaPayload([choice.proposal]), KePayload(neg.dh, our_ke.public), NoncePayload(sa.nr)]
    payloads += nat_notifies(sa.spi_i, sa.spi_r, dst, src, sa.rng if config.encap else None)
    if sa.peer_fragmentation:
        payloads.append(NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
    if NotifyType.SIGNATURE_HASH_ALGORITHMS in notifies:
        payloads.append(NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, HASH_ALGORITHMS))
    if neg.additional_ke:  # the chosen proposal has additional key exchanges: IKE_INTERMEDIATE next
        payloads.append(NotifyPayload(NotifyType.INTERMEDIATE_EXCHANGE_SUPPORTED))
        sa.intermediate = Intermediate(list(neg.additional_ke))
    if config.remote.auth == "pubkey" and config.remote.trust is not None:  # CERTREQ here, as strongSwan
        payloads.append(CertReqPayload.for_authorities(config.remote.trust.ca_key_hashes()))
    sa.log("ike_sa_init_answered", remote=src, proposal=sa.proposal_name, nat_local=sa.nat_local,
           nat_remote=sa.nat_remote)
    return payloads
