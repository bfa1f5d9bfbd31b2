"""charon's task_manager_v2 in small: message IDs, requests, responses and retransmissions of one
IKE SA (RFC 7296 s2.1-2.3), the base class of ``ike.sa.ike_sa.IkeSa``.

Requests we initiate come from a queue of task objects, one outstanding at a time (window size
1), retransmitted with the exact same bytes until answered; each task's ``Outcome`` says what
follows (done, retry, postpone, destroy the SA). Requests from the peer, IKE_SA_INIT included, go
to the responder side of the matching task module, and the last response is cached and resent
when the peer repeats its request. Encrypted messages are sealed, opened, fragmented (RFC 7383)
and reassembled here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from collections.abc import Sequence

import structlog

from ike.codec import message as codec
from ike.codec.constants import NAT_T_PORT, ExchangeType, NotifyType
from ike.codec.fragments import MAX_FRAGMENTS, Reassembly, fragment_limit
from ike.codec.payloads import NotifyPayload, Payload, SkfPayload
from ike.config import ChildConfig
from ike.events import Address
from ike.sa.outbox import Datagram
from ike.sa.retransmit import Retransmit, Retransmitter
from ike.tasks.base import Outcome, Step, Task, jitter
from ike.tasks.child_create import ChildCreate
from ike.tasks.dispatch import respond
from ike.tasks.followup_ke import FollowupKe
from ike.tasks.ike_auth import IkeAuth
from ike.tasks.ike_delete import IkeDelete
from ike.tasks.ike_dpd import IkeDpd
from ike.tasks.states import IkeState

if TYPE_CHECKING:  # the IKE SA is this class's subclass; annotations only
    from ike.sa.ike_sa import IkeSa

log = structlog.get_logger("ike")

RETRY_AFTER_TEMPORARY_FAILURE = 10.0  # seconds (jittered) before a postponed task runs again


@dataclass(slots=True)
class Outstanding:
    task: Task
    message_id: int
    retransmit: Retransmitter


class TaskManager:
    """Everything between task objects and datagrams, for the IkeSa subclass."""

    __slots__ = ("active", "delete_after_response", "inner_error", "last_response", "my_mid", "peer_mid",
                 "postponed", "queue", "reassembly", "retry_at")

    def __init__(self) -> None:
        self.my_mid = 0
        self.peer_mid = 0
        self.queue: list[Task] = []
        self.active: Outstanding | None = None
        # (message ID, its packets...): one flat tuple, no list, as every IKE SA keeps one
        self.last_response: tuple | None = None
        self.reassembly: dict[tuple[bool, int], Reassembly] = {}
        self.delete_after_response: str | None = None
        self.inner_error: codec.MessageError | None = None
        self.retry_at: float | None = None  # a postponed task (after TEMPORARY_FAILURE)
        self.postponed: list[Task] = []

    def _sa(self) -> IkeSa:
        return self  # type: ignore[return-value]  # only IkeSa instances exist

    def queue_task(self, task: Task, now: float, first: bool = False) -> None:
        if first:
            self.queue.insert(0, task)
        else:
            self.queue.append(task)
        sa = self._sa()
        sa.touch()
        self.kick(now)

    def queue_next(self, task: Task) -> None:
        """Run ``task`` next (the task manager starts it once the current exchange is over)."""
        self.queue.insert(0, task)

    def has_task(self, kind: type[Task]) -> bool:
        return (isinstance(self.active.task, kind) if self.active else False) or any(
            isinstance(t, kind) for t in self.queue + self.postponed)

    def postpone(self, task: Task, now: float) -> None:
        self.postponed.append(task)
        self.retry_at = now + RETRY_AFTER_TEMPORARY_FAILURE * (0.5 + jitter(self._sa().rng))

    def pending_child_configs(self) -> list[ChildConfig]:
        """CHILD configs an outstanding or queued task is negotiating."""
        tasks = ([self.active.task] if self.active else []) + self.queue + self.postponed
        out: list[ChildConfig] = []
        for t in tasks:
            if isinstance(t, ChildCreate):
                out.append(t.config)
            elif isinstance(t, IkeAuth) and t.child_config is not None:
                out.append(t.child_config)
        return out

    # --- sending -----------------------------------------------------------------------------------
    def _packets(self, msg: codec.Message) -> list[bytes]:
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            return [codec.encode(msg)]
        sa = self._sa()
        cipher = sa.cipher_out
        assert cipher is not None
        config = sa.config
        limit = fragment_limit(config.fragment_size, sa.remote[0], NAT_T_PORT in (sa.local[1], sa.remote[1]))
        if sa.peer_fragmentation and config.fragmentation in ("yes", "force"):
            whole = codec.seal(msg, cipher, sa.rng)
            if len(whole) > limit or config.fragmentation == "force":
                return codec.seal_fragments(msg, cipher, sa.rng, limit)
            return [whole]
        return [codec.seal(msg, cipher, sa.rng)]

    def send(self, packets: Sequence[bytes], to: tuple[Address, Address] | None = None) -> None:
        """To the SA's peer, or ``to`` = (source, destination) of the request a response answers
        (RFC 7296 s2.11: a response goes where its request came from)."""
        sa = self._sa()
        out = sa.host.outbox.datagrams
        local, remote = (sa.local, sa.remote) if to is None else (to[1], to[0])
        for data in packets:
            out.append(Datagram(data, local, remote))

    def send_once(self, exchange: ExchangeType, payloads: list[Payload]) -> None:
        """A request sent without waiting for (or retransmitting) an answer: for the last words
        of an SA that is being torn down locally."""
        sa = self._sa()
        msg = codec.Message(sa.spi_i, sa.spi_r, exchange, self.my_mid, sa.initiator, False, payloads)
        self.my_mid += 1
        self.send(self._packets(msg))

    def kick(self, now: float) -> None:
        """Start the next queued task if no request is outstanding."""
        sa = self._sa()
        # a peer's IKE_FOLLOWUP_KE sequence holds our new requests back for a while (kept after
        # that: its last exchange may still come); our own sequence, already begun, goes on
        waiting = sa.followup is not None and sa.followup.holding and now < sa.followup.expires
        while (self.active is None and self.queue and sa.state != IkeState.DEAD
               and (not waiting or isinstance(self.queue[0], FollowupKe))):
            task = self.queue.pop(0)
            payloads = task.build(sa, now)
            if payloads is None:  # no longer applicable (SA gone, CHILD deleted meanwhile, ...)
                continue
            mid = self.my_mid
            msg = codec.Message(sa.spi_i, sa.spi_r, task.exchange, mid, sa.initiator, False, payloads)
            packets = self._packets(msg)
            if task.exchange == ExchangeType.IKE_SA_INIT:
                sa.init_request = packets[0]
            self.active = Outstanding(task, mid, Retransmitter(packets, now, sa.host.retransmit_schedule))
            sa.log("request_sent", exchange=msg.exchange_name, mid=mid, task=type(task).__name__,
                   fragments=len(packets))
            self.send(packets)
        if self.active is None and not self.queue and sa.replaces is not None and sa.established:
            old, sa.replaces = sa.replaces, None  # all CHILD SAs are over: the old SA can go
            if old.state != IkeState.DEAD:
                old.queue_task(IkeDelete("reauthenticated"), now, first=True)

    def _retransmit_due(self, now: float) -> bool:
        """Resend the outstanding request if due; True if it was given up (the SA is gone)."""
        sa = self._sa()
        active = self.active
        assert active is not None
        action = active.retransmit.on_timer(now)
        if action == Retransmit.RESEND:
            sa.log("retransmit", mid=active.message_id, attempt=active.retransmit.retransmits)
            sa.host.outbox.count("retransmits")
            self.send(active.retransmit.packets)
        elif action == Retransmit.GIVE_UP:
            sa.log("peer_unresponsive", mid=active.message_id)
            if isinstance(active.task, IkeDpd):
                sa.host.outbox.count("dpd_dead")
            outcome = active.task.timed_out(sa, now)
            sa.destroy(outcome.reason or "dead peer", now)
            return True
        return False

    # --- receiving ---------------------------------------------------------------------------------
    def receive(self, raw: bytes, msg: codec.Message, src: Address, dst: Address, now: float) -> None:
        if self._sa().state == IkeState.DEAD:
            return
        if msg.response:
            self._receive_response(raw, msg, src, dst, now)
        else:
            self._receive_request(raw, msg, src, dst, now)

    def _drop(self, why: str, **fields: object) -> None:
        sa = self._sa()
        sa.dropped += 1
        sa.host.outbox.count_drop(why)
        log.debug("message_dropped", ike=sa.name, reason=why, **fields)

    def _unprotect(self, raw: bytes, msg: codec.Message) -> codec.Message | None:
        """Decrypt an SK message or collect an SKF fragment; None if dropped or incomplete."""
        sa = self._sa()
        self.inner_error = None
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            return msg
        sk = codec.encrypted_payload(msg)
        cipher = sa.cipher_in
        if sk is None or cipher is None:
            self._drop("unencrypted message after IKE_SA_INIT", exchange=msg.exchange_name)
            return None
        try:
            plaintext = codec.open_sk(raw, msg, cipher)
        except codec.MessageError as exc:
            self._drop(type(exc).__name__, error=str(exc))
            return None
        if not isinstance(sk, SkfPayload):
            return self._decode_inner(msg, sk.first_inner, plaintext)
        if not sa.peer_fragmentation or sk.total > MAX_FRAGMENTS:
            self._drop("unexpected fragment")
            return None
        key = (msg.response, msg.message_id)
        entry = self.reassembly.get(key)
        if entry is None or entry.total != sk.total:
            for stale in [k for k in self.reassembly if k[0] == msg.response and k != key]:
                del self.reassembly[stale]  # an older message of this direction never completed
            entry = self.reassembly[key] = Reassembly(msg.message_id, sk.total)
        whole = entry.add(sk.number, sk.total, sk.first_inner, plaintext)
        if whole is None:
            return None
        del self.reassembly[key]
        return self._decode_inner(msg, entry.first_inner, whole)

    def _decode_inner(self, msg: codec.Message, first: int, plaintext: bytes) -> codec.Message | None:
        """Parse an authentic plaintext chain; a parse error is kept in ``inner_error`` so a
        request can be answered with it (RFC 7296 s2.5, s3.10.1)."""
        try:
            return codec.decode_inner(msg, first, plaintext)
        except codec.MessageError as exc:
            self._drop(type(exc).__name__, error=str(exc))
            self.inner_error = exc
            return None

    def _peer_moved(self, src: Address, dst: Address, now: float) -> None:
        """Follow a peer that floats to port 4500 (RFC 7296 s2.23) or whose NAT mapping changed;
        only called for authenticated messages."""
        sa = self._sa()
        if dst[1] == NAT_T_PORT and sa.local[1] != NAT_T_PORT:
            sa.local = (sa.local[0], NAT_T_PORT)
        if sa.mobike:  # RFC 4555: only UPDATE_SA_ADDRESSES moves a MOBIKE SA (ike.tasks.ike_mobike)
            return
        if src != sa.remote and (sa.nat_remote or sa.nat_local or
                                 (src[0] == sa.remote[0] and src[1] == NAT_T_PORT)):
            sa.log("peer_address_changed", old=sa.remote, new=src)
            sa.remote = src
            sa.addresses_moved(now)  # a new NAT mapping: the CHILD SAs' ESP follows

    def _receive_response(self, raw: bytes, msg: codec.Message, src: Address, dst: Address, now: float) -> None:
        sa = self._sa()
        if self.active is None or msg.message_id != self.active.message_id:
            self._drop("unexpected response", mid=msg.message_id)
            return
        if msg.initiator == sa.initiator:
            self._drop("response with our own I flag")
            return
        if msg.exchange != self.active.task.exchange:
            self._drop("response to another exchange", exchange=msg.exchange_name)
            return
        full = self._unprotect(raw, msg)
        if full is None:
            return
        if msg.exchange != ExchangeType.IKE_SA_INIT:
            sa.last_inbound = now
            self._peer_moved(src, dst, now)
        task = self.active.task
        self.active = None
        self.my_mid += 1
        outcome = task.process(sa, full, raw, src, dst, now)
        if isinstance(task, IkeDpd):
            sa.host.outbox.count("dpd_alive")
        if sa.peer_deleted_spis:
            sa.peer_deleted_spis = frozenset()  # the empty frozenset is one shared object
        self._apply(task, outcome, now)

    def _apply(self, task: Task, outcome: Outcome, now: float) -> None:
        """Act on how a task's exchange ended."""
        sa = self._sa()
        if sa.state == IkeState.DEAD:
            return
        if outcome.step is Step.DESTROY:
            sa.destroy(outcome.reason, now)
            return
        if outcome.step is Step.RETRY:
            self.queue.insert(0, task)
            if task.exchange == ExchangeType.IKE_SA_INIT:
                self.my_mid = 0  # COOKIE / INVALID_KE_PAYLOAD: IKE_SA_INIT again with ID 0
        elif outcome.step is Step.POSTPONE:
            self.postpone(task.again(), now)
        self.kick(now)

    def _receive_request(self, raw: bytes, msg: codec.Message, src: Address, dst: Address, now: float) -> None:
        sa = self._sa()
        if msg.initiator == sa.initiator and msg.exchange != ExchangeType.IKE_SA_INIT:
            self._drop("request with our own I flag")
            return
        if self.last_response and msg.message_id == self.last_response[0]:
            sk = codec.encrypted_payload(msg)
            if not isinstance(sk, SkfPayload) or sk.number == 1:
                sa.log("retransmitting_response", mid=msg.message_id)
                self.send(self.last_response[1:], (src, dst))
            return
        if msg.message_id != self.peer_mid:
            self._drop("unexpected message ID", mid=msg.message_id, expected=self.peer_mid)
            return
        full = self._unprotect(raw, msg)
        if full is None and self.inner_error is None:
            return
        sa.last_inbound = now
        self._peer_moved(src, dst, now)
        sa.request_addresses = (src, dst)
        payloads: list[Payload] = [self._error_answer(msg)] if full is None else respond(sa, full, now)
        if sa.state == IkeState.DEAD:
            return
        reply = codec.Message(sa.spi_i, sa.spi_r, msg.exchange, msg.message_id, sa.initiator, True, payloads)
        packets = self._packets(reply)
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            sa.init_response = packets[0]
        self.last_response = (msg.message_id, *packets)
        self.peer_mid += 1
        self.send(packets, (src, dst))
        self._install_pending_keys()
        if self.delete_after_response is not None:
            reason, self.delete_after_response = self.delete_after_response, None
            sa.destroy(reason, now)
            return
        self.kick(now)

    def _install_pending_keys(self) -> None:
        """An IKE_INTERMEDIATE answer went out under the old keys: the new ones apply from now
        (RFC 9370 s2.2.2; the cached answer, resent for a retransmitted request, keeps the old)."""
        sa = self._sa()
        state = sa.intermediate
        if state is not None and state.pending_keys is not None and sa.neg is not None:
            keys, state.pending_keys = state.pending_keys, None
            sa.install_keys(sa.neg, keys)

    def _error_answer(self, msg: codec.Message) -> NotifyPayload:
        exc, self.inner_error = self.inner_error, None
        if self._sa().state == IkeState.CONNECTING:  # a broken IKE_AUTH ends the half-open SA
            self.delete_after_response = "invalid IKE_AUTH"
        if isinstance(exc, codec.UnsupportedCriticalPayload):
            return NotifyPayload(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([exc.payload_type & 0xFF]))
        return NotifyPayload(NotifyType.INVALID_SYNTAX)
