"""IKE_FOLLOWUP_KE (RFC 9370 s2.2.2): additional key exchanges after a CREATE_CHILD_SA.

When a CREATE_CHILD_SA (new CHILD SA, CHILD rekey with PFS, IKE rekey) chose a proposal with
ADDKE transforms, the responder's answer carries N(ADDITIONAL_KEY_EXCHANGE) with opaque "link"
data and nothing is installed yet. The initiator then runs one IKE_FOLLOWUP_KE per additional
key exchange: its KE payload and the link; the responder answers with its KE payload, and a new
link while more exchanges follow. Only after the last one do both sides derive the keys (with
SK(1) .. SK(n) after the nonces) and install the SA, as strongSwan's child_create/ike_init do.

``FollowupKe`` is the initiator's task: the CREATE_CHILD_SA task hands it a ``finish`` (install,
given the additional secrets) and a ``fail``. ``FollowupResponder`` is the responder's state on
the IKE SA between exchanges (the peer runs one exchange at a time), with a ``complete`` that
installs and returns any payloads to add to the last answer.

Refusals, as strongSwan: no KE payload is INVALID_SYNTAX; another method or a bad value
NO_PROPOSAL_CHOSEN; a missing or wrong link STATE_NOT_FOUND.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from ike.codec.constants import ExchangeType, NotifyType, ProtocolId
from ike.codec.message import Message
from ike.codec.payloads import KePayload, NotifyPayload, Payload
from ike.crypto.dh import InvalidKeyExchange
from ike.crypto.multi_ke import AdditionalKeyExchange, additional_key_exchange
from ike.crypto.proposals import ADDKE_TYPES, parse_proposals
from ike.events import Address
from ike.tasks.base import DONE, IkeSaContext, Outcome, Task
from ike.tasks.child_sa import ChildSa
from ike.tasks.ike_intermediate import KeyExchangeRefused, answer_key_exchange, method_name

LINK_LEN = 8  # the responder's link data: opaque to the initiator (strongSwan sends one byte)
# how long we hold back our own requests for a peer's multi-exchange CREATE_CHILD_SA (a peer that
# gave up on it sends something else, which ends the wait at once)
PEER_SEQUENCE_WAIT = 60.0

Finish = Callable[[IkeSaContext, list[bytes], float], Outcome]
# (sa, notify, text, now, refused by the peer): a refusal means the peer installed nothing; a
# failure of ours after the peer's last answer leaves the peer with an SA we do not have
Fail = Callable[[IkeSaContext, NotifyType, str, float, bool], Outcome]
Complete = Callable[[IkeSaContext, list[bytes], float], list[Payload]]


def exchange_task(task: Task | None) -> Task | None:
    """The CREATE_CHILD_SA task an outstanding exchange belongs to (its IKE_FOLLOWUP_KE's parent):
    what collision checks look at."""
    return task.parent if isinstance(task, FollowupKe) else task


def uses_additional_ke(proposals: list[str], protocol: ProtocolId) -> bool:
    """Whether a configuration's proposals name additional key exchanges (RFC 9370)."""
    try:
        parsed = parse_proposals(proposals, protocol)
    except ValueError:
        return False
    return any(t.type in ADDKE_TYPES and t.id for p in parsed for t in p.transforms)


def link_of(msg: Message) -> bytes | None:
    note = msg.notifies().get(NotifyType.ADDITIONAL_KEY_EXCHANGE)
    return note.data if note is not None else None


def error_of(msg: Message) -> tuple[NotifyType, str] | None:
    err = next((p for p in msg.all(NotifyPayload) if p.is_error), None)
    if err is None:
        return None
    notify = (NotifyType(err.notify_type) if err.notify_type in NotifyType._value2member_map_
              else NotifyType.INVALID_SYNTAX)
    return notify, f"peer answered {err.name}"


class FollowupKe(Task):
    """Initiator: the next IKE_FOLLOWUP_KE of a CREATE_CHILD_SA exchange ``parent`` began."""

    exchange = ExchangeType.IKE_FOLLOWUP_KE

    def __init__(self, parent: Task, pending: list[tuple[int, int]], link: bytes, finish: Finish, fail: Fail,
                 secrets: list[bytes] | None = None) -> None:
        self.parent, self.pending, self.link = parent, pending, link
        self.finish, self.fail = finish, fail
        self.secrets: list[bytes] = secrets or []
        self.ke: AdditionalKeyExchange | None = None

    @classmethod
    def start(cls, sa: IkeSaContext, parent: Task, additional: tuple[tuple[int, int], ...], msg: Message,
              finish: Finish, fail: Fail, now: float) -> Outcome | None:
        """After a CREATE_CHILD_SA answer that chose ``additional`` key exchanges: queue the first
        IKE_FOLLOWUP_KE (None), or the failure's outcome if the answer has no link."""
        link = link_of(msg)
        if not link:
            return fail(sa, NotifyType.INVALID_SYNTAX, "answer chose additional key exchanges but has no "
                                                       "ADDITIONAL_KEY_EXCHANGE notify", now, False)
        sa.queue_next(cls(parent, list(additional), link, finish, fail))
        return None

    def collided_on(self, child: ChildSa) -> bool:
        return self.parent.collided_on(child)

    def again(self) -> Task:
        return self.parent.again()  # a postponed sequence starts over with a fresh CREATE_CHILD_SA

    def build(self, sa: IkeSaContext, now: float) -> list[Payload] | None:
        method = self.pending[0][1]
        self.ke = additional_key_exchange(method, sa.rng, initiator=True)
        return [KePayload(method, self.ke.public), NotifyPayload(NotifyType.ADDITIONAL_KEY_EXCHANGE, self.link)]

    def process(self, sa: IkeSaContext, msg: Message, raw: bytes, src: Address, dst: Address,
                now: float) -> Outcome:
        assert self.ke is not None
        number, method = self.pending[0]
        err = error_of(msg)
        if err is not None:
            return self.fail(sa, err[0], f"additional key exchange {number}: {err[1]}", now, True)
        kes = msg.all(KePayload)
        if len(kes) != 1 or kes[0].group != method:
            return self.fail(sa, NotifyType.INVALID_KE_PAYLOAD,
                             f"additional key exchange {number} ({method_name(method)}) answered without its KE", now,
                             False)
        try:
            secret = self.ke.shared_secret(kes[0].data)
        except InvalidKeyExchange as exc:
            return self.fail(sa, NotifyType.INVALID_KE_PAYLOAD, str(exc), now, False)
        self.ke = None
        secrets = [*self.secrets, secret]
        sa.log("additional_key_exchange_done", number=number, method=method_name(method), exchange="IKE_FOLLOWUP_KE")
        rest = self.pending[1:]
        if not rest:
            return self.finish(sa, secrets, now)
        link = link_of(msg)
        if not link:
            return self.fail(sa, NotifyType.INVALID_SYNTAX, "IKE_FOLLOWUP_KE answer without a link", now, False)
        sa.queue_next(FollowupKe(self.parent, rest, link, self.finish, self.fail, secrets))
        return DONE

    def timed_out(self, sa: IkeSaContext, now: float) -> Outcome:
        return self.parent.timed_out(sa, now)


@dataclass(slots=True)
class FollowupResponder:
    """The responder's side of a multi-exchange CREATE_CHILD_SA between its exchanges."""

    what: str  # for logs: "CHILD SA net", "IKE rekey"
    pending: list[tuple[int, int]]
    complete: Complete = field(repr=False)
    expires: float = 0.0  # until then our own requests wait (they could change what it completes)
    holding: bool = True  # False once ``expires`` passed: kept for a late last exchange, holds nothing
    link: bytes = field(default=b"", repr=False)
    secrets: list[bytes] = field(default_factory=list, repr=False)


def begin(sa: IkeSaContext, what: str, additional: tuple[tuple[int, int], ...], complete: Complete,
          answer: list[Payload], now: float) -> list[Payload]:
    """Responder: the CREATE_CHILD_SA answer chose additional key exchanges; keep what completes
    the SA and add the link to the answer. Until the peer's last IKE_FOLLOWUP_KE, we start no
    exchange of our own: an IKE rekey or CHILD rekey of ours could move or replace what the
    peer's exchange completes (its collision would only show exchanges later)."""
    state = FollowupResponder(what, list(additional), complete, now + PEER_SEQUENCE_WAIT, link=sa.rng(LINK_LEN))
    sa.followup = state
    return [*answer, NotifyPayload(NotifyType.ADDITIONAL_KEY_EXCHANGE, state.link)]


def _refuse(sa: IkeSaContext, notify: NotifyType, text: str) -> list[Payload]:
    what = sa.followup.what if sa.followup is not None else "no exchange"
    sa.followup = None  # nothing was installed; the half-made SA is dropped
    sa.log("followup_ke_refused", what=what, notify=notify.name, error=text)
    return [NotifyPayload(notify)]


def respond_followup(sa: IkeSaContext, msg: Message, now: float) -> list[Payload]:
    state = sa.followup
    link = link_of(msg)
    if state is None or link is None or not hmac.compare_digest(link, state.link):
        return _refuse(sa, NotifyType.STATE_NOT_FOUND, "IKE_FOLLOWUP_KE without a matching ADDITIONAL_KEY_EXCHANGE")
    number, method = state.pending[0]
    try:
        reply, secret = answer_key_exchange(msg, sa, number, method, "IKE_FOLLOWUP_KE")
    except KeyExchangeRefused as refused:
        return _refuse(sa, refused.notify, refused.text)
    state.secrets.append(secret)
    state.pending.pop(0)
    sa.log("additional_key_exchange_done", number=number, method=method_name(method), exchange="IKE_FOLLOWUP_KE")
    answer: list[Payload] = [reply]
    if state.pending:
        state.link = sa.rng(LINK_LEN)
        return [*answer, NotifyPayload(NotifyType.ADDITIONAL_KEY_EXCHANGE, state.link)]
    sa.followup = None
    return answer + state.complete(sa, state.secrets, now)
