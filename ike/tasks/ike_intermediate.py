"""IKE_INTERMEDIATE (RFC 9242) for the additional key exchanges of RFC 9370, as charon runs them.

After IKE_SA_INIT chose a proposal with ADDKE transforms (``ke1_mlkem768`` ...), one
IKE_INTERMEDIATE exchange per additional key exchange, in transform type order, carries a KE
payload each way: from the initiator its public value (an ML-KEM encapsulation key), from the
responder its own (an ML-KEM ciphertext). Each exchange is protected with the keys in force
before it; when it completes, all seven keys are replaced (``update_ike_keys``: SKEYSEED(n) =
prf(SK_d(n-1), SK(n) | Ni | Nr)). Both sides chain IntAuth values over every IKE_INTERMEDIATE
message (keyed with the SK_pi/SK_pr of the keys that protected it), and IKE_AUTH's AUTH payloads
sign them (``ike.tasks.ike_auth.auth_octets``).

``IkeIntermediate`` is the initiator's task (it queues the next one itself, ahead of IKE_AUTH);
``respond_intermediate`` the responder's answer. The responder's new keys wait in
``Intermediate.pending_keys`` until its answer is sealed with the old ones (the task manager
installs them then), as charon derives them "once we receive the next message".

Refusals, as strongSwan: a request without a KE payload is INVALID_SYNTAX; a KE payload of
another method than the negotiated one, or a value that fails its checks (ML-KEM: FIPS 203 s7.2
length and modulus check; DH: RFC 6989) is NO_PROPOSAL_CHOSEN. Either ends the half-open SA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ike.codec import message as codec
from ike.codec.constants import DhId, ExchangeType, NotifyType
from ike.codec.payloads import KePayload, NotifyPayload, Payload
from ike.crypto.dh import InvalidKeyExchange
from ike.crypto.keys import IkeKeys
from ike.crypto.multi_ke import (AdditionalKeyExchange, additional_key_exchange, intauth, intauth_of, intauth_step,
                                 update_ike_keys)
from ike.events import Address, NegotiationFailed
from ike.tasks.base import DONE, IkeSaContext, Outcome, Task, destroy
from ike.tasks.states import IkeState


@dataclass(slots=True)
class Intermediate:
    """An IKE SA's additional key exchanges while it is being set up (gone after IKE_AUTH)."""

    pending: list[tuple[int, int]]  # (ADDKE number 1..7, method) still to run, in order
    done: list[tuple[int, int]] = field(default_factory=list)
    intauth_i: bytes = field(default=b"", repr=False)
    intauth_r: bytes = field(default=b"", repr=False)
    pending_keys: IkeKeys | None = field(default=None, repr=False)  # responder: after its answer

    @property
    def exchanges(self) -> int:
        return len(self.done)

    def auth_input(self) -> bytes:
        """IntAuth for the AUTH payloads (RFC 9242 s3.3.2); empty if no exchange took place.
        IKE_AUTH's message ID follows IKE_SA_INIT (0) and the IKE_INTERMEDIATE exchanges."""
        if not self.done:
            return b""
        return intauth(self.intauth_i, self.intauth_r, len(self.done) + 1)


def method_name(method: int) -> str:
    try:
        return DhId(method).name
    except ValueError:
        return str(method)


def _own_parts(sa: IkeSaContext, mid: int, response: bool, payloads: list[Payload]) -> bytes:
    first, chain = codec.encode_chain(payloads)
    msg = codec.Message(sa.spi_i, sa.spi_r, ExchangeType.IKE_INTERMEDIATE, mid, sa.initiator, response)
    return intauth_of(msg.header(0, 0), first, chain)


def _peer_parts(msg: codec.Message) -> bytes:
    first, chain = msg.plain if msg.plain is not None else codec.encode_chain(msg.payloads)
    return intauth_of(msg.header(0, 0), first, chain)


def _chain(sa: IkeSaContext, state: Intermediate, from_initiator: bool, parts: bytes) -> None:
    """One IntAuth step with the SK_p (of the keys in force) of the message's sender."""
    assert sa.neg is not None and sa.neg.prf is not None and sa.keys is not None
    if from_initiator:
        state.intauth_i = intauth_step(sa.neg.prf, sa.keys.sk_pi, state.intauth_i, parts)
    else:
        state.intauth_r = intauth_step(sa.neg.prf, sa.keys.sk_pr, state.intauth_r, parts)


def _next_keys(sa: IkeSaContext, secret: bytes) -> IkeKeys:
    assert sa.neg is not None and sa.keys is not None
    return update_ike_keys(sa.neg, sa.keys, secret, sa.ni, sa.nr, sa.spi_i, sa.spi_r)


class IkeIntermediate(Task):
    """Initiator: the next additional key exchange of ``sa.intermediate``."""

    exchange = ExchangeType.IKE_INTERMEDIATE

    def __init__(self) -> None:
        self.ke: AdditionalKeyExchange | None = None
        self.sent: list[Payload] = []

    def build(self, sa: IkeSaContext, now: float) -> list[Payload] | None:
        state = sa.intermediate
        if state is None or not state.pending or sa.state != IkeState.CONNECTING:
            return None
        method = state.pending[0][1]
        self.ke = additional_key_exchange(method, sa.rng, initiator=True)
        self.sent = [KePayload(method, self.ke.public)]
        return self.sent

    def _fail(self, sa: IkeSaContext, notify: str, text: str) -> Outcome:
        sa.emit(NegotiationFailed(sa.name, "IKE_INTERMEDIATE", notify, text))
        sa.log("ike_intermediate_failed", notify=notify, error=text)
        return destroy("negotiation failed")

    def process(self, sa: IkeSaContext, msg: codec.Message, raw: bytes, src: Address, dst: Address,
                now: float) -> Outcome:
        state = sa.intermediate
        assert state is not None and self.ke is not None
        number, method = state.pending[0]
        err = next((p for p in msg.all(NotifyPayload) if p.is_error), None)
        if err is not None:
            return self._fail(sa, err.name, f"responder refused additional key exchange {number} "
                                            f"({method_name(method)})")
        kes = msg.all(KePayload)
        if len(kes) != 1:
            return self._fail(sa, "INVALID_SYNTAX", f"IKE_INTERMEDIATE response with {len(kes)} KE payloads")
        if kes[0].group != method:
            return self._fail(sa, "INVALID_KE_PAYLOAD", f"responder answered with {method_name(kes[0].group)}, "
                                                        f"not {method_name(method)}")
        try:
            secret = self.ke.shared_secret(kes[0].data)
        except InvalidKeyExchange as exc:
            return self._fail(sa, "INVALID_KE_PAYLOAD", str(exc))
        self.ke = None
        _chain(sa, state, True, _own_parts(sa, msg.message_id, False, self.sent))
        _chain(sa, state, False, _peer_parts(msg))
        assert sa.neg is not None
        sa.install_keys(sa.neg, _next_keys(sa, secret))
        state.done.append(state.pending.pop(0))
        sa.log("additional_key_exchange_done", number=number, method=method_name(method))
        if state.pending:
            sa.queue_next(IkeIntermediate())
        return DONE

    def timed_out(self, sa: IkeSaContext, now: float) -> Outcome:
        sa.emit(NegotiationFailed(sa.name, "IKE_INTERMEDIATE", "TIMEOUT", "no answer to IKE_INTERMEDIATE"))
        return destroy("dead peer")


class KeyExchangeRefused(Exception):
    """An additional key exchange request the responder cannot answer: the notify it refuses with."""

    def __init__(self, notify: NotifyType, text: str):
        super().__init__(text)
        self.notify, self.text = notify, text


def answer_key_exchange(msg: codec.Message, sa: IkeSaContext, number: int, method: int,
                        exchange: str) -> tuple[KePayload, bytes]:
    """The responder's side of additional key exchange ``number`` (IKE_INTERMEDIATE or
    IKE_FOLLOWUP_KE alike): exactly one KE payload of the negotiated method, its value passing the
    method's checks (FIPS 203 for ML-KEM); our KE payload and the shared secret."""
    kes = msg.all(KePayload)
    if len(kes) != 1:
        raise KeyExchangeRefused(NotifyType.INVALID_SYNTAX, f"{exchange} with {len(kes)} KE payloads")
    if kes[0].group != method:
        raise KeyExchangeRefused(NotifyType.NO_PROPOSAL_CHOSEN, f"additional key exchange {number} is "
                                 f"{method_name(method)}, the peer sent {method_name(kes[0].group)}")
    try:
        ke = additional_key_exchange(method, sa.rng, initiator=False)
        secret = ke.shared_secret(kes[0].data)  # first: an ML-KEM responder's ciphertext comes from it
        return KePayload(method, ke.public), secret
    except (InvalidKeyExchange, ValueError) as exc:
        raise KeyExchangeRefused(NotifyType.NO_PROPOSAL_CHOSEN,
                                 f"{method_name(method)} value rejected: {exc}") from None


def _refuse(sa: IkeSaContext, notify: NotifyType, text: str) -> list[Payload]:
    sa.emit(NegotiationFailed(sa.name, "IKE_INTERMEDIATE", notify.name, text))
    sa.log("ike_intermediate_refused", notify=notify.name, error=text)
    sa.delete_after_response = "negotiation failed"
    return [NotifyPayload(notify)]


def respond_intermediate(sa: IkeSaContext, msg: codec.Message, now: float) -> list[Payload]:
    """The responder's answer to one IKE_INTERMEDIATE request: its KE payload, or a refusal."""
    state = sa.intermediate
    if sa.state != IkeState.CONNECTING or state is None or not state.pending:
        return _refuse(sa, NotifyType.INVALID_SYNTAX, "unexpected IKE_INTERMEDIATE request")
    number, method = state.pending[0]
    try:
        reply, secret = answer_key_exchange(msg, sa, number, method, "IKE_INTERMEDIATE request")
    except KeyExchangeRefused as refused:
        return _refuse(sa, refused.notify, refused.text)
    answer: list[Payload] = [reply]
    _chain(sa, state, True, _peer_parts(msg))
    _chain(sa, state, False, _own_parts(sa, msg.message_id, True, answer))
    state.pending_keys = _next_keys(sa, secret)  # installed once the answer is sealed with the old keys
    state.done.append(state.pending.pop(0))
    sa.log("additional_key_exchange_done", number=number, method=method_name(method))
    return answer
