"""charon's task_manager_v2 in small: message IDs, requests, responses and retransmissions of one
IKE SA (RFC 7296 s2.1-2.3), mixed into ``ike.ike_sa.IkeSa``.

Requests we initiate come from a queue of task objects, one outstanding at a time (window size
1), retransmitted with the exact same bytes until answered; requests from the peer go to the
responder side of the matching task module, and the last response is cached and resent when the
peer repeats its request. Encrypted messages are sealed, opened, fragmented (RFC 7383) and
reassembled here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import structlog

from ike.codec import message as codec
from ike.codec.constants import NAT_T_PORT, ExchangeType, NotifyType
from ike.codec.fragments import MAX_FRAGMENTS, Reassembly, fragment_limit
from ike.codec.payloads import NotifyPayload, Payload, SkfPayload
from ike.retransmit import Retransmitter

if TYPE_CHECKING:
    from ike.tasks.base import Task

log = structlog.get_logger("ike")

RETRY_AFTER_TEMPORARY_FAILURE = 10.0  # seconds (jittered) before a postponed task runs again


@dataclass
class Outstanding:
    task: "Task"
    message_id: int
    retransmit: Retransmitter


class TaskManager:
    """Mixin for IkeSa: everything between task objects and datagrams."""

    __slots__ = ()

    def queue_task(self, task: "Task", now: float, first: bool = False) -> None:
        if first:
            self.queue.insert(0, task)
        else:
            self.queue.append(task)
        self.kick(now)

    def has_task(self, kind: type) -> bool:
        return (isinstance(self.active.task, kind) if self.active else False) or any(
            isinstance(t, kind) for t in self.queue + self.postponed)

    def postpone(self, task: "Task", now: float) -> None:
        self.postponed.append(task)
        jitter = int.from_bytes(self.rng(2), "big") / 65535.0
        self.retry_at = now + RETRY_AFTER_TEMPORARY_FAILURE * (0.5 + jitter)

    # --- sending -----------------------------------------------------------------------------
    def _packets(self, msg: codec.Message) -> list[bytes]:
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            return [codec.encode(msg)]
        assert self.cipher_out is not None
        limit = fragment_limit(self.config.fragment_size, self.remote[0], NAT_T_PORT in (self.local[1], self.remote[1]))
        if self.peer_fragmentation and self.config.fragmentation in ("yes", "force"):
            whole = codec.seal(msg, self.cipher_out, self.rng)
            if len(whole) > limit or self.config.fragmentation == "force":
                return codec.seal_fragments(msg, self.cipher_out, self.rng, limit)
            return [whole]
        return [codec.seal(msg, self.cipher_out, self.rng)]

    def send(self, packets: Sequence[bytes]) -> None:
        for data in packets:
            self.endpoint.send(data, self.local, self.remote)

    def send_once(self, exchange: ExchangeType, payloads: list[Payload]) -> None:
        """A request sent without waiting for (or retransmitting) an answer: for the last words
        of an SA that is being torn down locally."""
        msg = codec.Message(self.spi_i, self.spi_r, exchange, self.my_mid, self.initiator, False, payloads)
        self.my_mid += 1
        self.send(self._packets(msg))

    def pending_child_configs(self) -> list:
        """CHILD configs an outstanding or queued task is negotiating."""
        tasks = ([self.active.task] if self.active else []) + self.queue + self.postponed
        return [t.child_config if hasattr(t, "child_config") else t.config for t in tasks
                if type(t).__name__ in ("IkeAuth", "ChildCreate")]

    def kick(self, now: float) -> None:
        """Start the next queued task if no request is outstanding."""
        while self.active is None and self.queue and self.state != "dead":
            task = self.queue.pop(0)
            payloads = task.build(self, now)
            if payloads is None:  # no longer applicable (SA gone, CHILD deleted meanwhile, ...)
                continue
            mid = self.my_mid
            msg = codec.Message(self.spi_i, self.spi_r, task.exchange, mid, self.initiator, False, payloads)
            packets = self._packets(msg)
            if task.exchange == ExchangeType.IKE_SA_INIT:
                self.init_request = packets[0]
            self.active = Outstanding(task, mid, Retransmitter(packets, now, self.endpoint.retransmit_schedule))
            self.log("request_sent", exchange=msg.exchange_name, mid=mid, task=type(task).__name__,
                     fragments=len(packets))
            self.send(packets)
        if self.active is None and not self.queue and self.replaces is not None and self.established:
            old, self.replaces = self.replaces, None  # all CHILD SAs are over: the old SA can go
            if old.state != "dead":
                from ike.tasks.informational import IkeDelete
                old.queue_task(IkeDelete("reauthenticated"), now, first=True)

    # --- receiving ---------------------------------------------------------------------------
    def receive(self, raw: bytes, msg: codec.Message, src: tuple[str, int], dst: tuple[str, int], now: float) -> None:
        if self.state == "dead":
            return
        if msg.response:
            self._receive_response(raw, msg, src, dst, now)
        else:
            self._receive_request(raw, msg, src, dst, now)

    def _drop(self, why: str, **fields) -> None:
        self.stats["dropped"] += 1
        self.endpoint.count_drop(why)
        log.debug("message_dropped", ike=self.name, reason=why, **fields)

    def _unprotect(self, raw: bytes, msg: codec.Message) -> codec.Message | None:
        """Decrypt an SK message or collect an SKF fragment; None if dropped or incomplete."""
        self.inner_error = None
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            return msg
        sk = codec.encrypted_payload(msg)
        if sk is None or self.cipher_in is None:
            self._drop("unencrypted message after IKE_SA_INIT", exchange=msg.exchange_name)
            return None
        try:
            plaintext = codec.open_sk(raw, msg, self.cipher_in)
        except codec.MessageError as exc:
            self._drop(type(exc).__name__, error=str(exc))
            return None
        if not isinstance(sk, SkfPayload):
            return self._decode_inner(msg, sk.first_inner, plaintext)
        if not self.peer_fragmentation or sk.total > MAX_FRAGMENTS:
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

    def _peer_moved(self, src: tuple[str, int], dst: tuple[str, int]) -> None:
        """Follow a peer that floats to port 4500 (RFC 7296 s2.23) or whose NAT mapping changed;
        only called for authenticated messages."""
        if dst[1] == NAT_T_PORT and self.local[1] != NAT_T_PORT:
            self.local = (self.local[0], NAT_T_PORT)
        if src != self.remote and (self.nat_remote or self.nat_local or
                                   (src[0] == self.remote[0] and src[1] == NAT_T_PORT)):
            self.log("peer_address_changed", old=self.remote, new=src)
            self.remote = src

    def _receive_response(self, raw, msg, src, dst, now) -> None:
        if self.active is None or msg.message_id != self.active.message_id:
            self._drop("unexpected response", mid=msg.message_id)
            return
        if msg.initiator == self.initiator:
            self._drop("response with our own I flag")
            return
        if msg.exchange != self.active.task.exchange:
            self._drop("response to another exchange", exchange=msg.exchange_name)
            return
        full = self._unprotect(raw, msg)
        if full is None:
            return
        if msg.exchange != ExchangeType.IKE_SA_INIT:
            self.last_inbound = now
            self._peer_moved(src, dst)
        task = self.active.task
        self.active = None
        self.my_mid += 1
        outcome = task.process(self, full, raw, src, dst, now)
        self.peer_deleted_spis.clear()
        if self.state == "dead":
            return
        if outcome == "retry":
            self.queue.insert(0, task)
            if task.exchange == ExchangeType.IKE_SA_INIT:
                self.my_mid = 0  # COOKIE / INVALID_KE_PAYLOAD: IKE_SA_INIT again with ID 0
        self.kick(now)

    def _receive_request(self, raw, msg, src, dst, now) -> None:
        if msg.initiator == self.initiator and msg.exchange != ExchangeType.IKE_SA_INIT:
            self._drop("request with our own I flag")
            return
        if self.last_response and msg.message_id == self.last_response[0]:
            sk = codec.encrypted_payload(msg)
            if not isinstance(sk, SkfPayload) or sk.number == 1:
                self.log("retransmitting_response", mid=msg.message_id)
                self.send(self.last_response[1:])
            return
        if msg.message_id != self.peer_mid:
            self._drop("unexpected message ID", mid=msg.message_id, expected=self.peer_mid)
            return
        full = self._unprotect(raw, msg)
        if full is None and self.inner_error is None:
            return
        self.last_inbound = now
        self._peer_moved(src, dst)
        if full is None:
            payloads = [self._error_answer(msg)]
        else:
            from ike.tasks.dispatch import respond
            payloads = respond(self, full, now)
        if self.state == "dead":
            return
        reply = codec.Message(self.spi_i, self.spi_r, msg.exchange, msg.message_id, self.initiator, True, payloads)
        packets = self._packets(reply)
        self.last_response = (msg.message_id, *packets)
        self.peer_mid += 1
        self.send(packets)
        if self.delete_after_response is not None:
            reason, self.delete_after_response = self.delete_after_response, None
            self.destroy(reason, now)
            return
        self.kick(now)

    def _error_answer(self, msg: codec.Message) -> NotifyPayload:
        exc, self.inner_error = self.inner_error, None
        if self.state == "connecting":  # a broken IKE_AUTH ends the half-open SA
            self.delete_after_response = "invalid IKE_AUTH"
        if isinstance(exc, codec.UnsupportedCriticalPayload):
            return NotifyPayload(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([exc.payload_type & 0xFF]))
        return NotifyPayload(NotifyType.INVALID_SYNTAX)
