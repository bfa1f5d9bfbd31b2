"""IKE_SA_INIT (RFC 7296 s1.2): proposals, key exchange, nonces, NAT detection (s2.23), COOKIE
(s2.6), INVALID_KE_PAYLOAD retry (s1.2), fragmentation support (RFC 7383) and signature hash
algorithms (RFC 7427, announced only: we authenticate with PSKs)."""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from typing import TYPE_CHECKING

from ike.codec import message as codec
from ike.codec.constants import NAT_T_PORT, ExchangeType, NotifyType, ProtocolId, TransformType
from ike.crypto.dh import InvalidKeyExchange, key_exchange
from ike.events import NegotiationFailed
from ike.crypto.keys import derive_ike_keys
from ike.codec.payloads import KePayload, NoncePayload, NotifyPayload, SaPayload
from ike.crypto.proposals import negotiated, parse_proposals, select_proposal
from ike.tasks.base import DONE, RETRY, Task

if TYPE_CHECKING:
    from ike.endpoint import IkeEndpoint
    from ike.ike_sa import IkeSa

NONCE_LEN = 32
MAX_RETRIES = 5  # COOKIE / INVALID_KE round trips before giving up
HASH_ALGORITHMS = struct.pack("!HHH", 2, 3, 4)  # SHA2-256/384/512 (RFC 7427 s7)
ZERO_SPI = bytes(8)


def nat_hash(spi_i: bytes, spi_r: bytes, addr: tuple[str, int]) -> bytes:
    return hashlib.sha1(spi_i + spi_r + ipaddress.ip_address(addr[0]).packed + struct.pack("!H", addr[1])).digest()


def nat_notifies(spi_i: bytes, spi_r: bytes, src, dst, rng=None) -> list[NotifyPayload]:
    """With ``rng`` (encap = yes) the source hash is of a random address, so the peer believes we
    are behind a NAT and encapsulates ESP in UDP (strongSwan's force_encap)."""
    if rng is not None:
        src = (str(ipaddress.IPv4Address(rng(4))), src[1])
    return [NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, nat_hash(spi_i, spi_r, src)),
            NotifyPayload(NotifyType.NAT_DETECTION_DESTINATION_IP, nat_hash(spi_i, spi_r, dst))]


def detect_nat(msg: codec.Message, spi_i: bytes, spi_r: bytes, src, dst) -> tuple[bool, bool] | None:
    """(we are behind a NAT, the peer is) from the peer's NAT_DETECTION notifies; None if absent."""
    srcs = [p.data for p in msg.all(NotifyPayload) if p.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP]
    dsts = [p.data for p in msg.all(NotifyPayload) if p.notify_type == NotifyType.NAT_DETECTION_DESTINATION_IP]
    if not srcs or not dsts:
        return None
    return nat_hash(spi_i, spi_r, dst) not in dsts, nat_hash(spi_i, spi_r, src) not in srcs


def _notify_name(value: int) -> str:
    try:
        return NotifyType(value).name
    except ValueError:
        return str(value)


class IkeInit(Task):
    exchange = ExchangeType.IKE_SA_INIT

    def __init__(self, sa: "IkeSa"):
        self.proposals = parse_proposals(sa.config.proposals, ProtocolId.IKE)
        self.group = self.proposals[0].of_type(TransformType.DH)[0].id
        self.groups = [t.id for p in self.proposals for t in p.of_type(TransformType.DH)]
        self.cookie: bytes | None = None
        self.ke = None
        self.retries = 0

    def build(self, sa, now):
        if self.ke is None or self.ke.group != self.group:
            self.ke = key_exchange(self.group, sa.rng)
        if not sa.ni:
            sa.ni = sa.rng(NONCE_LEN)
        out = [NotifyPayload(NotifyType.COOKIE, self.cookie)] if self.cookie else []
        out += [SaPayload(self.proposals), KePayload(self.group, self.ke.public), NoncePayload(sa.ni)]
        out += nat_notifies(sa.spi_i, ZERO_SPI, sa.local, sa.remote, sa.rng if sa.config.encap else None)
        if sa.config.fragmentation != "no":
            out.append(NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        out.append(NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, HASH_ALGORITHMS))
        return out

    def _fail(self, sa, notify: str, text: str, now) -> str:
        sa.emit(NegotiationFailed(sa.name, "IKE_SA_INIT", notify, text))
        sa.log("ike_sa_init_failed", notify=notify, error=text)
        sa.destroy("negotiation failed", now)
        return DONE

    def process(self, sa, msg, raw, src, dst, now):
        notifies = msg.notifies()
        if NotifyType.COOKIE in notifies:
            cookie = notifies[NotifyType.COOKIE].data
            self.retries += 1
            if self.retries > MAX_RETRIES or not 1 <= len(cookie) <= 64 or cookie == self.cookie:
                return self._fail(sa, "COOKIE", "responder keeps asking for a cookie", now)
            self.cookie = cookie
            sa.log("cookie_requested")
            return RETRY
        if NotifyType.INVALID_KE_PAYLOAD in notifies:
            data = notifies[NotifyType.INVALID_KE_PAYLOAD].data
            group = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 0
            self.retries += 1
            if group not in self.groups or group == self.group or self.retries > MAX_RETRIES:
                return self._fail(sa, "INVALID_KE_PAYLOAD", f"responder wants group {group} which we do not offer", now)
            sa.log("invalid_ke_retry", group=group)
            self.group = group
            return RETRY
        for p in msg.payloads:
            if isinstance(p, NotifyPayload) and p.notify_type < 16384:
                return self._fail(sa, _notify_name(p.notify_type), "responder refused IKE_SA_INIT", now)
        sa_p, ke_p, nonce_p = msg.get(SaPayload), msg.get(KePayload), msg.get(NoncePayload)
        if sa_p is None or ke_p is None or nonce_p is None or msg.spi_r == ZERO_SPI:
            return self._fail(sa, "INVALID_SYNTAX", "response lacks SA, KE, nonce or SPI", now)
        if len(sa_p.proposals) != 1 or select_proposal(self.proposals, sa_p.proposals) is None:
            return self._fail(sa, "NO_PROPOSAL_CHOSEN", "responder chose a proposal we did not offer", now)
        chosen = sa_p.proposals[0]
        try:
            neg = negotiated(chosen)
        except ValueError as exc:
            return self._fail(sa, "NO_PROPOSAL_CHOSEN", str(exc), now)
        if neg.dh != self.group or ke_p.group != self.group:
            return self._fail(sa, "INVALID_KE_PAYLOAD", "responder's key exchange group differs from ours", now)
        try:
            g_ir = self.ke.shared_secret(ke_p.data)
        except InvalidKeyExchange as exc:
            return self._fail(sa, "INVALID_KE_PAYLOAD", str(exc), now)
        sa.spi_r = msg.spi_r
        sa.nr = nonce_p.data
        sa.init_response = raw
        sa.install_keys(neg, derive_ike_keys(neg, sa.ni, sa.nr, g_ir, sa.spi_i, sa.spi_r))
        sa.set_proposal(chosen)
        nat = detect_nat(msg, sa.spi_i, sa.spi_r, src, dst)
        if nat is not None:
            sa.nat_local, sa.nat_remote = nat
        sa.peer_fragmentation = (NotifyType.IKEV2_FRAGMENTATION_SUPPORTED in notifies
                                 and sa.config.fragmentation != "no")
        if sa.nat_local or sa.nat_remote or sa.config.encap:  # RFC 7296 s2.23: continue on port 4500
            sa.local = (sa.local[0], NAT_T_PORT)
            if sa.remote[1] == 500:
                sa.remote = (sa.remote[0], NAT_T_PORT)
        sa.log("ike_sa_init_done", proposal=sa.proposal_name, nat_local=sa.nat_local, nat_remote=sa.nat_remote)
        return DONE

    def timed_out(self, sa, now):
        sa.emit(NegotiationFailed(sa.name, "IKE_SA_INIT", "TIMEOUT", "no answer to IKE_SA_INIT"))


def _error_response(endpoint: "IkeEndpoint", msg: codec.Message, src, dst, notify: NotifyType, data: bytes = b"") -> None:
    reply = codec.Message(msg.spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, 0, False, True,
                          [NotifyPayload(int(notify), data)])
    endpoint.send(codec.encode(reply), dst, src)


def respond_init(endpoint: "IkeEndpoint", raw: bytes, msg: codec.Message, src, dst, now: float) -> None:
    """A new IKE_SA_INIT request: answer with an error and keep no state, or create a half-open SA."""
    from ike.ike_sa import IkeSa

    configs = endpoint.configs_for(dst, src)
    if not configs:
        endpoint.emit(NegotiationFailed("", "IKE_SA_INIT", "NO_PROPOSAL_CHOSEN", f"no connection for {src[0]}"))
        _error_response(endpoint, msg, src, dst, NotifyType.NO_PROPOSAL_CHOSEN)
        return
    sa_p, ke_p, nonce_p = msg.get(SaPayload), msg.get(KePayload), msg.get(NoncePayload)
    if sa_p is None or ke_p is None or nonce_p is None:
        _error_response(endpoint, msg, src, dst, NotifyType.INVALID_SYNTAX)
        return
    if endpoint.half_open_count() >= endpoint.cookie_threshold:
        cookie = msg.notifies().get(NotifyType.COOKIE)
        if cookie is None or not endpoint.cookies.verify(cookie.data, nonce_p.data, src[0], msg.spi_i, now):
            made = endpoint.cookies.make(nonce_p.data, src[0], msg.spi_i, now)
            _error_response(endpoint, msg, src, dst, NotifyType.COOKIE, made)
            endpoint.count_drop("cookie required")
            return
    offered = [p for p in sa_p.proposals if p.protocol == ProtocolId.IKE and not p.spi]
    chosen, config = None, None
    for cfg in configs:
        chosen = select_proposal(parse_proposals(cfg.proposals, ProtocolId.IKE), offered)
        if chosen is not None:
            config = cfg
            break
    if chosen is None or config is None:
        endpoint.emit(NegotiationFailed(configs[0].name, "IKE_SA_INIT", "NO_PROPOSAL_CHOSEN",
                                        "no acceptable IKE proposal"))
        _error_response(endpoint, msg, src, dst, NotifyType.NO_PROPOSAL_CHOSEN)
        return
    neg = negotiated(chosen)
    if ke_p.group != neg.dh:
        _error_response(endpoint, msg, src, dst, NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", neg.dh))
        return
    our_ke = key_exchange(neg.dh, endpoint.rng)
    try:
        g_ir = our_ke.shared_secret(ke_p.data)
    except InvalidKeyExchange:
        _error_response(endpoint, msg, src, dst, NotifyType.INVALID_SYNTAX)
        return
    spi_r = endpoint.new_ike_spi()
    sa = IkeSa(endpoint, config, initiator=False, local=dst, remote=src, spi_i=msg.spi_i, spi_r=spi_r,
               unique_id=endpoint.next_unique_id(), now=now)
    sa.candidates = [c for c in configs]
    sa.ni, sa.nr = nonce_p.data, endpoint.rng(NONCE_LEN)
    sa.init_request = raw
    sa.install_keys(neg, derive_ike_keys(neg, sa.ni, sa.nr, g_ir, sa.spi_i, sa.spi_r))
    sa.set_proposal(chosen)
    notifies = msg.notifies()
    nat = detect_nat(msg, sa.spi_i, ZERO_SPI, src, dst)
    if nat is not None:
        sa.nat_local, sa.nat_remote = nat
    sa.peer_fragmentation = NotifyType.IKEV2_FRAGMENTATION_SUPPORTED in notifies and config.fragmentation != "no"
    payloads = [SaPayload([chosen]), KePayload(neg.dh, our_ke.public), NoncePayload(sa.nr)]
    payloads += nat_notifies(sa.spi_i, sa.spi_r, dst, src, endpoint.rng if config.encap else None)
    if sa.peer_fragmentation:
        payloads.append(NotifyPayload(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
    if NotifyType.SIGNATURE_HASH_ALGORITHMS in notifies:
        payloads.append(NotifyPayload(NotifyType.SIGNATURE_HASH_ALGORITHMS, HASH_ALGORITHMS))
    reply = codec.Message(sa.spi_i, sa.spi_r, ExchangeType.IKE_SA_INIT, 0, False, True, payloads)
    data = codec.encode(reply)
    sa.init_response = data
    sa.last_response = (0, data)
    sa.peer_mid = 1
    endpoint.register(sa, half_open_key=(msg.spi_i, src))
    sa.log("ike_sa_init_answered", remote=src, proposal=sa.proposal_name, nat_local=sa.nat_local,
           nat_remote=sa.nat_remote)
    endpoint.send(data, dst, src)
