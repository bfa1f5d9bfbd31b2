"""CHILD SA negotiation: the first one inside IKE_AUTH and more with CREATE_CHILD_SA (RFC 7296
s1.3.1, s2.9, s2.17). Also the building blocks child_rekey reuses."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from sys import intern  # one string object for the names thousands of CHILD SAs share

from ike.codec.constants import ExchangeType, NotifyType, ProtocolId, TransformType
from ike.codec.message import Message
from ike.codec.payloads import KePayload, NoncePayload, NotifyPayload, Payload, SaPayload, TsiPayload, TsrPayload
from ike.config import ChildConfig, TrafficSelector
from ike.crypto.dh import InvalidKeyExchange, KeyExchange, key_exchange
from ike.crypto.keys import NONCE_LEN, child_keymat, split_child_keymat
from ike.crypto.multi_ke import child_keymat_multi
from ike.crypto.proposals import (Negotiated, Proposal, accept_answer as accept_proposal, choose,
                                  format_proposal, parse_proposals, without_dh)
from ike.events import Address, NegotiationFailed
from ike.tasks.base import DONE, POSTPONE, RETRY, IkeSaContext, Outcome, Task, uniform
from ike.tasks.child_delete import ChildAbandon
from ike.tasks.child_sa import ChildSa, is_subset, narrow, without_redundant
from ike.tasks.followup_ke import FollowupKe, begin as begin_followup
from ike.tasks.ike_config import local_selectors, remote_selectors
from ike.tasks.states import LIVE_CHILD_STATES


class ChildFailure(Exception):
    """A CHILD SA negotiation failed with ``notify``; ``abandoned_spi``: our inbound SPI of an SA
    the peer installed for an answer we refused (to be deleted, so both sides agree)."""

    def __init__(self, notify: NotifyType, message: str, data: bytes = b""):
        super().__init__(message)
        self.notify, self.data = notify, data
        self.abandoned_spi: int | None = None


@dataclass
class ChildOffer:
    """What the initiator of a CHILD SA negotiation sent, to check and complete the answer."""

    config: ChildConfig
    spi: int
    proposals: list[Proposal]
    tsi: list[TrafficSelector]
    tsr: list[TrafficSelector]
    nonce: bytes = field(default=b"", repr=False)
    ke: KeyExchange | None = field(default=None, repr=False)
    rekey_of: ChildSa | None = None


PacketTs = tuple[TrafficSelector, TrafficSelector]


def make_offer(sa: IkeSaContext, cfg: ChildConfig, *, in_auth: bool, packet_ts: PacketTs | None = None,
               rekey_of: ChildSa | None = None, group: int | None = None) -> ChildOffer:
    proposals = parse_proposals(cfg.esp_proposals, ProtocolId.ESP)
    spi = sa.new_child_spi()
    if rekey_of is not None:
        tsi, tsr = list(rekey_of.local_ts), list(rekey_of.remote_ts)
    else:
        tsi, tsr = local_selectors(sa, cfg), remote_selectors(sa, cfg)
        if packet_ts is not None:  # RFC 7296 s2.9: the triggering packet's selectors first
            tsi, tsr = [packet_ts[0]] + tsi, [packet_ts[1]] + tsr
    if in_auth:
        return ChildOffer(cfg, spi, without_dh(proposals), tsi, tsr, rekey_of=rekey_of)
    offer = ChildOffer(cfg, spi, proposals, tsi, tsr, nonce=sa.rng(NONCE_LEN), rekey_of=rekey_of)
    groups = [t.id for p in proposals for t in p.of_type(TransformType.DH) if t.id != 0]
    if groups:
        offer.ke = key_exchange(group if group in groups else groups[0], sa.rng)
    return offer


def offer_payloads(offer: ChildOffer) -> list[Payload]:
    spi = struct.pack("!I", offer.spi)
    proposals = [Proposal(p.protocol, p.transforms, p.number, spi) for p in offer.proposals]
    out: list[Payload] = []
    if offer.rekey_of is not None:
        spi = struct.pack("!I", offer.rekey_of.inbound_spi)
        out.append(NotifyPayload(NotifyType.REKEY_SA, b"", ProtocolId.ESP, spi))
    out.append(SaPayload(proposals))
    if offer.nonce:
        out.append(NoncePayload(offer.nonce))
    if offer.ke is not None:
        out.append(KePayload(offer.ke.group, offer.ke.public))
    out += [TsiPayload(list(offer.tsi)), TsrPayload(list(offer.tsr))]
    return out


def _lifetimes(sa: IkeSaContext, cfg: ChildConfig, now: float) -> tuple[float | None, float]:
    """(rekey_at, expire_at); a rekey time or lifetime of 0 means never (as in swanctl.conf)."""
    life = cfg.effective_life_time
    if life <= 0:
        life = math.inf
    if cfg.rekey_time <= 0:
        return None, now + life
    rand = cfg.rand_time if cfg.rand_time is not None else max(life - cfg.rekey_time, 0.0)
    # at most rekey_time, as strongSwan's apply_jitter(): else a rekey falls due at once, again and again
    rand = min(max(rand, 0.0), cfg.rekey_time)
    return now + cfg.rekey_time - uniform(sa.rng, 0.0, rand), now + life


def build_child(sa: IkeSaContext, cfg: ChildConfig, chosen: Proposal, neg: Negotiated, *, exchange_initiator: bool,
                our_spi: int, peer_spi: int, ni: bytes, nr: bytes, g_ir: bytes | None,
                local_ts: list[TrafficSelector], remote_ts: list[TrafficSelector], now: float,
                rekeyed_from: int | None = None, additional: Sequence[bytes] = ()) -> ChildSa:
    """``additional``: the secrets of IKE_FOLLOWUP_KE exchanges (RFC 9370 s2.2.4), after the nonces."""
    assert sa.neg is not None and sa.keys is not None and sa.neg.prf is not None
    length = 2 * neg.child_keymat_len()
    if additional:
        keymat = child_keymat_multi(sa.neg.prf, sa.keys.sk_d, g_ir, additional, ni, nr, length)
    else:
        keymat = child_keymat(sa.neg.prf, sa.keys.sk_d, ni, nr, length, g_ir)
    i2r, r2i = split_child_keymat(keymat)
    rekey_at, expire_at = _lifetimes(sa, cfg, now)
    return ChildSa(
        cfg, sa.next_unique_id(), our_spi, peer_spi, intern(format_proposal(chosen)),
        intern(neg.esp_transform_name),
        neg.esn, tuple(local_ts), tuple(remote_ts), now, rekey_at, expire_at,
        inbound_keymat=r2i if exchange_initiator else i2r, outbound_keymat=i2r if exchange_initiator else r2i,
        rekeyed_from=rekeyed_from)


Completion = Callable[[Sequence[bytes]], ChildSa]  # the CHILD SA, given the additional key exchanges' secrets


def accept_answer(sa: IkeSaContext, offer: ChildOffer, msg: Message, ni: bytes, nr: bytes, now: float) -> ChildSa:
    """Initiator: check the responder's answer against the offer; the new CHILD SA or ChildFailure."""
    neg, complete = accept_answer_multi(sa, offer, msg, ni, nr, now)
    if neg.additional_ke:  # never offered where this is called (IKE_AUTH carries no key exchange)
        raise ChildFailure(NotifyType.NO_PROPOSAL_CHOSEN, "peer chose additional key exchanges here")
    return complete(())


def accept_answer_multi(sa: IkeSaContext, offer: ChildOffer, msg: Message, ni: bytes, nr: bytes,
                        now: float) -> tuple[Negotiated, Completion]:
    """Initiator: as accept_answer, but the CHILD SA is made by the returned completion, once the
    IKE_FOLLOWUP_KE exchanges of ``neg.additional_ke`` (if any) have given their secrets."""
    for p in msg.all(NotifyPayload):
        if p.is_error:
            raise ChildFailure(NotifyType(p.notify_type) if p.notify_type in NotifyType._value2member_map_
                               else NotifyType.INVALID_SYNTAX, f"peer answered {p.name}", p.data)
    try:
        return _accept_answer(sa, offer, msg, ni, nr, now)
    except ChildFailure as exc:
        if msg.get(SaPayload) is not None:  # the peer installed the SA it answered with
            exc.abandoned_spi = offer.spi
        raise


def _accept_answer(sa: IkeSaContext, offer: ChildOffer, msg: Message, ni: bytes, nr: bytes,
                   now: float) -> tuple[Negotiated, Completion]:
    sa_p, tsi_p, tsr_p = msg.get(SaPayload), msg.get(TsiPayload), msg.get(TsrPayload)
    if sa_p is None or tsi_p is None or tsr_p is None:
        raise ChildFailure(NotifyType.INVALID_SYNTAX, "answer lacks SA, TSi or TSr")
    if len(sa_p.proposals) != 1 or len(sa_p.proposals[0].spi) != 4:
        raise ChildFailure(NotifyType.NO_PROPOSAL_CHOSEN, "answer must hold one ESP proposal with a 4-byte SPI")
    choice = accept_proposal(offer.proposals, sa_p.proposals)
    if choice is None:
        raise ChildFailure(NotifyType.NO_PROPOSAL_CHOSEN, "peer chose a proposal we did not offer")
    answer, neg = choice.proposal, choice.negotiated
    _esp_transform(neg)
    g_ir = None
    if neg.dh:
        ke = msg.get(KePayload)
        if offer.ke is None or ke is None or ke.group != neg.dh or offer.ke.group != neg.dh:
            raise ChildFailure(NotifyType.INVALID_KE_PAYLOAD, "PFS key exchange does not match the proposal")
        try:
            g_ir = offer.ke.shared_secret(ke.data)
        except InvalidKeyExchange as exc:
            raise ChildFailure(NotifyType.INVALID_KE_PAYLOAD, str(exc)) from None
    if not tsi_p.selectors or not tsr_p.selectors or not all(is_subset(t, offer.tsi) for t in tsi_p.selectors) \
            or not all(is_subset(t, offer.tsr) for t in tsr_p.selectors):
        raise ChildFailure(NotifyType.TS_UNACCEPTABLE, "answered traffic selectors are not within the offer")
    peer_spi = struct.unpack("!I", answer.spi)[0]
    local_ts, remote_ts = without_redundant(tsi_p.selectors), without_redundant(tsr_p.selectors)

    def complete(additional: Sequence[bytes]) -> ChildSa:
        return build_child(sa, offer.config, answer, neg, exchange_initiator=True, our_spi=offer.spi,
                           peer_spi=peer_spi, ni=ni, nr=nr, g_ir=g_ir, local_ts=local_ts, remote_ts=remote_ts,
                           now=now, rekeyed_from=offer.rekey_of.inbound_spi if offer.rekey_of else None,
                           additional=additional)
    return neg, complete


def _esp_transform(neg: Negotiated) -> str:
    try:
        return neg.esp_transform_name
    except ValueError as exc:
        raise ChildFailure(NotifyType.NO_PROPOSAL_CHOSEN, str(exc)) from None


def pick_config(sa: IkeSaContext, tsi: list[TrafficSelector], tsr: list[TrafficSelector]
                ) -> tuple[ChildConfig | None, list[TrafficSelector], list[TrafficSelector]]:
    """Responder: the first CHILD config whose selectors intersect the offer, with the narrowed
    selectors (ours: local = narrowed TSr, remote = narrowed TSi)."""
    for cfg in sa.config.children:
        remote, local = narrow(tsi, remote_selectors(sa, cfg)), narrow(tsr, local_selectors(sa, cfg))
        if remote and local:
            return cfg, remote, local
    return None, [], []


def answer_offer(sa: IkeSaContext, msg: Message, now: float, *, in_auth: bool, ni: bytes | None = None,
                 rekey_of: ChildSa | None = None) -> tuple[list[Payload], ChildSa]:
    """Responder: negotiate a CHILD SA from a request; (answer payloads, new CHILD SA) or ChildFailure.
    ``ni`` is the IKE_SA_INIT nonce pair's Ni in IKE_AUTH; CREATE_CHILD_SA carries fresh nonces."""
    answer, neg, complete = negotiate_offer(sa, msg, now, in_auth=in_auth, rekey_of=rekey_of)
    if neg.additional_ke:  # only where in_auth (no key exchanges): never chosen
        raise ChildFailure(NotifyType.NO_PROPOSAL_CHOSEN, "additional key exchanges are not possible here")
    return answer, complete(())


def negotiate_offer(sa: IkeSaContext, msg: Message, now: float, *, in_auth: bool, rekey_of: ChildSa | None = None
                    ) -> tuple[list[Payload], Negotiated, Completion]:
    """Responder: as answer_offer, but the CHILD SA is made by the returned completion, once the
    IKE_FOLLOWUP_KE exchanges of ``neg.additional_ke`` (if any) have given their secrets."""
    sa_p, tsi_p, tsr_p = msg.get(SaPayload), msg.get(TsiPayload), msg.get(TsrPayload)
    if sa_p is None or tsi_p is None or tsr_p is None:
        raise ChildFailure(NotifyType.INVALID_SYNTAX, "request lacks SA, TSi or TSr")
    cfg: ChildConfig | None
    if rekey_of is not None:
        cfg = rekey_of.config
        remote = narrow(tsi_p.selectors, remote_selectors(sa, cfg))
        local = narrow(tsr_p.selectors, local_selectors(sa, cfg))
    else:
        cfg, remote, local = pick_config(sa, tsi_p.selectors, tsr_p.selectors)
    if cfg is None or not remote or not local:
        raise ChildFailure(NotifyType.TS_UNACCEPTABLE, "no CHILD config matches the traffic selectors")
    own = parse_proposals(cfg.esp_proposals, ProtocolId.ESP)
    offered = [p for p in sa_p.proposals if p.protocol == ProtocolId.ESP and len(p.spi) == 4]
    choice = choose(own, offered, skip_dh=in_auth)
    if choice is None:
        raise ChildFailure(NotifyType.NO_PROPOSAL_CHOSEN, "no acceptable ESP proposal", b"")
    chosen, neg = choice.proposal, choice.negotiated
    _esp_transform(neg)
    answer: list[Payload] = []
    g_ir, our_ke = None, None
    if in_auth:
        nonce_i, nonce_r = sa.ni, sa.nr
    else:
        nonce_p = msg.get(NoncePayload)
        if nonce_p is None:
            raise ChildFailure(NotifyType.INVALID_SYNTAX, "CREATE_CHILD_SA request without a nonce")
        nonce_i, nonce_r = nonce_p.data, sa.rng(NONCE_LEN)
        if neg.dh:
            ke = msg.get(KePayload)
            if ke is None or ke.group != neg.dh:
                raise ChildFailure(NotifyType.INVALID_KE_PAYLOAD, "KE group differs from the chosen one",
                                   struct.pack("!H", neg.dh))
            our_ke = key_exchange(neg.dh, sa.rng)
            try:
                g_ir = our_ke.shared_secret(ke.data)
            except InvalidKeyExchange as exc:
                raise ChildFailure(NotifyType.INVALID_SYNTAX, str(exc)) from None
    our_spi = sa.new_child_spi()
    peer_spi = struct.unpack("!I", chosen.spi)[0]
    config = cfg

    def complete(additional: Sequence[bytes]) -> ChildSa:
        child = build_child(sa, config, chosen, neg, exchange_initiator=False, our_spi=our_spi, peer_spi=peer_spi,
                            ni=nonce_i, nr=nonce_r, g_ir=g_ir, local_ts=local, remote_ts=remote, now=now,
                            rekeyed_from=rekey_of.inbound_spi if rekey_of else None, additional=additional)
        if not in_auth:
            child.nonces = (nonce_i, nonce_r)
        return child
    answer.append(SaPayload([Proposal(chosen.protocol, chosen.transforms, chosen.number, struct.pack("!I", our_spi))]))
    if not in_auth:
        answer.append(NoncePayload(nonce_r))
    if our_ke is not None:
        answer.append(KePayload(our_ke.group, our_ke.public))
    answer += [TsiPayload(remote), TsrPayload(local)]
    return answer, neg, complete


def abandon(sa: IkeSaContext, exc: ChildFailure) -> None:
    """Delete the SA the peer installed for an answer we refused (it lists our SPI as outbound)."""
    if exc.abandoned_spi is not None:
        sa.queue_next(ChildAbandon(exc.abandoned_spi))


def failure_event(sa: IkeSaContext, stage: str, exc: ChildFailure, child_name: str | None) -> NegotiationFailed:
    return NegotiationFailed(sa.name, stage, exc.notify.name, str(exc), child_name)


class ChildCreate(Task):
    """Initiator: an additional CHILD SA over an established IKE SA."""

    exchange = ExchangeType.CREATE_CHILD_SA

    def __init__(self, config: ChildConfig, packet_ts: PacketTs | None = None):
        self.config, self.packet_ts = config, packet_ts
        self.offer: ChildOffer | None = None
        self.group: int | None = None

    def again(self) -> ChildCreate:
        return ChildCreate(self.config, self.packet_ts)

    def build(self, sa: IkeSaContext, now: float) -> list[Payload] | None:
        if not sa.established:
            return None
        if self.packet_ts is None and any(c.config is self.config and c.state in LIVE_CHILD_STATES
                                          for c in sa.children.values()):
            return None  # already up (asked twice, or moved here by an IKE rekey)
        self.offer = make_offer(sa, self.config, in_auth=False, packet_ts=self.packet_ts, group=self.group)
        return offer_payloads(self.offer)

    def process(self, sa: IkeSaContext, msg: Message, raw: bytes, src: Address, dst: Address,
                now: float) -> Outcome:
        assert self.offer is not None
        nonce = msg.get(NoncePayload)
        try:
            if nonce is None and not any(p.is_error for p in msg.all(NotifyPayload)):
                raise ChildFailure(NotifyType.INVALID_SYNTAX, "answer without a nonce")
            neg, complete = accept_answer_multi(sa, self.offer, msg, self.offer.nonce, nonce.data if nonce else b"",
                                                now)
        except ChildFailure as exc:
            if exc.notify == NotifyType.INVALID_KE_PAYLOAD and len(exc.data) == 2 and self.group is None:
                self.group = struct.unpack("!H", exc.data)[0]
                return RETRY
            if exc.notify == NotifyType.TEMPORARY_FAILURE:
                return POSTPONE
            return self._failed(sa, exc)
        if neg.additional_ke:  # RFC 9370: IKE_FOLLOWUP_KE exchanges first, then the CHILD SA
            return FollowupKe.start(sa, self, neg.additional_ke, msg,
                                    lambda sa_, secrets, now_: self._install(sa_, complete(secrets)),
                                    self._followup_failed, now) or DONE
        return self._install(sa, complete(()))

    def _failed(self, sa: IkeSaContext, exc: ChildFailure) -> Outcome:
        abandon(sa, exc)
        sa.emit(failure_event(sa, "CREATE_CHILD_SA", exc, self.config.name))
        return DONE

    def _followup_failed(self, sa: IkeSaContext, notify: NotifyType, text: str, now: float, by_peer: bool) -> Outcome:
        exc = ChildFailure(notify, text)
        assert self.offer is not None
        if not by_peer:
            exc.abandoned_spi = self.offer.spi  # the peer installed it with its last answer
        return self._failed(sa, exc)

    def _install(self, sa: IkeSaContext, child: ChildSa) -> Outcome:
        if child.outbound_spi in sa.peer_deleted_spis:
            sa.log("child_sa_deleted_before_installed", child=child.name, spi_out=f"{child.outbound_spi:08x}")
            return DONE
        sa.add_child(child)
        return DONE


def respond_create(sa: IkeSaContext, msg: Message, now: float) -> list[Payload]:
    """Responder: CREATE_CHILD_SA for a new CHILD SA (no REKEY_SA, no IKE proposal)."""
    try:
        payloads, neg, complete = negotiate_offer(sa, msg, now, in_auth=False)
    except ChildFailure as exc:
        sa.emit(failure_event(sa, "CREATE_CHILD_SA", exc, None))
        return [NotifyPayload(int(exc.notify), exc.data)]
    if neg.additional_ke:
        def installed(sa_: IkeSaContext, secrets: list[bytes], now_: float) -> list[Payload]:
            sa_.add_child(complete(secrets))
            return []
        return begin_followup(sa, "CHILD SA", neg.additional_ke, installed, payloads, now)
    sa.add_child(complete(()))
    return payloads
