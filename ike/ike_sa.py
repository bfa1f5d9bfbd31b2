"""One IKE SA: its keys, CHILD SAs, message IDs and the task manager running its exchanges.

As in charon's task_manager_v2: requests we initiate come from a queue of task objects, one
outstanding at a time (window size 1), retransmitted with the exact same bytes until answered;
requests from the peer are dispatched to the responder side of the matching task module, and
the last response is cached and resent when the peer repeats its request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import structlog

from ike import message as codec
from ike.child_sa import ChildSa
from ike.config import ConnectionConfig
from ike.constants import NAT_T_PORT, ExchangeType, NotifyType
from ike.events import ChildSaDown, ChildSaUp, IkeSaDown, IkeSaUp
from ike.fragments import MAX_FRAGMENTS, Reassembly, fragment_limit
from ike.ids import Identity
from ike.payloads import NotifyPayload, Payload, SkfPayload
from ike.retransmit import Retransmitter
from ike.skcipher import SkCipher

if TYPE_CHECKING:
    from ike.endpoint import IkeEndpoint
    from ike.keys import IkeKeys
    from ike.proposals import Negotiated
    from ike.tasks.base import Task

log = structlog.get_logger("ike")

HALF_OPEN_TIMEOUT = 30.0  # strongSwan's charon.half_open_timeout
RETRY_AFTER_TEMPORARY_FAILURE = 10.0
CHILD_GRACE = 30.0  # a superseded CHILD SA the peer never deletes goes this long after its hard lifetime


@dataclass
class Outstanding:
    task: "Task"
    message_id: int
    retransmit: Retransmitter


class IkeSa:
    def __init__(self, endpoint: "IkeEndpoint", config: ConnectionConfig, *, initiator: bool,
                 local: tuple[str, int], remote: tuple[str, int], spi_i: bytes, spi_r: bytes,
                 unique_id: int, now: float):
        self.endpoint = endpoint
        self.config = config
        self.initiator = initiator  # original initiator of this IKE SA (the I flag)
        self.local, self.remote = local, remote
        self.spi_i, self.spi_r = spi_i, spi_r
        self.unique_id = unique_id
        self.created = now
        self.state = "connecting"  # connecting | established | rekeyed | deleting | dead
        self.established_at: float | None = None
        self.candidates: list[ConnectionConfig] = [config]  # responder: configs matching the addresses
        # keys and what IKE_AUTH signs
        self.neg: "Negotiated | None" = None
        self.keys: "IkeKeys | None" = None
        self.cipher_in: SkCipher | None = None
        self.cipher_out: SkCipher | None = None
        self.ni = self.nr = b""
        self.init_request = self.init_response = b""
        self.local_id: Identity | None = None
        self.remote_id: Identity | None = None
        self.nat_local = self.nat_remote = False
        self.peer_fragmentation = False
        self.proposal_name = ""  # strongSwan-style, e.g. "aes256gcm16-prfsha256-ecp256"
        self.chosen = None  # the selected IKE proposal (ike.proposals.Proposal)
        # message IDs and the task manager
        self.my_mid = 0
        self.peer_mid = 0
        self.queue: list["Task"] = []
        self.active: Outstanding | None = None
        self.last_response: tuple[int, list[bytes]] | None = None
        self.reassembly: dict[tuple[bool, int], Reassembly] = {}
        self.delete_after_response: str | None = None
        self.inner_error: codec.MessageError | None = None
        # timers
        self.last_inbound = now
        self.rekey_at: float | None = None
        self.expire_at: float | None = None  # hard lifetime: rekey time + over_time
        self.reauth_at: float | None = None
        self.replaces: "IkeSa | None" = None  # reauthentication: the SA this one takes over from
        self.attempt = 1  # keyingtries: which connection attempt this initiator SA is
        self.initiated: tuple[list, object] | None = None  # (CHILD configs, packet_ts) asked for
        self.retry_at: float | None = None  # a postponed task (after TEMPORARY_FAILURE)
        self.postponed: list["Task"] = []
        # CHILD SAs by inbound SPI
        self.children: dict[int, ChildSa] = {}
        self.peer_deleted_spis: set[int] = set()  # outbound SPIs deleted before we installed them
        self.rekeyed_from: int | None = None
        self.rekey_collision = None  # ike_rekey: an IKE SA the peer created while our rekey was out
        self.silent = False  # a rekey collision's SA not (yet) known to survive: events are held
        self.held_events: list = []
        self.redundant_until: float | None = None  # the collision loser should delete it by then
        self.stats = {"dropped": 0}

    # --- helpers for tasks -------------------------------------------------------------------
    @property
    def rng(self) -> Callable[[int], bytes]:
        return self.endpoint.rng

    @property
    def our_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def established(self) -> bool:
        return self.state == "established"

    def install_keys(self, neg: "Negotiated", keys: "IkeKeys") -> None:
        self.neg, self.keys = neg, keys
        if self.initiator:
            self.cipher_out = SkCipher(neg, keys.sk_ei, keys.sk_ai)
            self.cipher_in = SkCipher(neg, keys.sk_er, keys.sk_ar)
        else:
            self.cipher_out = SkCipher(neg, keys.sk_er, keys.sk_ar)
            self.cipher_in = SkCipher(neg, keys.sk_ei, keys.sk_ai)

    def log(self, event: str, **fields) -> None:
        log.info(event, ike=self.name, ike_id=self.unique_id, **fields)

    def emit(self, event) -> None:
        if self.silent:  # held until a rekey collision decides whether this SA lives
            self.held_events.append(event)
        else:
            self.endpoint.emit(event)

    def unsilence(self) -> None:
        self.silent = False
        held, self.held_events = self.held_events, []
        for event in held:
            self.endpoint.emit(event)

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

    # --- events for the SA and its children --------------------------------------------------
    def set_established(self, now: float) -> None:
        self.state = "established"
        self.established_at = now
        self.endpoint.sa_established(self)
        self.last_inbound = now
        if self.config.rekey_time > 0:
            # strongSwan: rand_time and over_time default to 10% of rekey_time
            over = self.config.over_time if self.config.over_time is not None else 0.1 * self.config.rekey_time
            jitter = int.from_bytes(self.rng(2), "big") / 65535.0 * 0.1 * self.config.rekey_time
            self.rekey_at = now + self.config.rekey_time - jitter
            self.expire_at = self.rekey_at + over
        if self.config.reauth_time > 0:  # make-before-break reauthentication (strongSwan 5.3+)
            jitter = int.from_bytes(self.rng(2), "big") / 65535.0 * 0.1 * self.config.reauth_time
            self.reauth_at = now + self.config.reauth_time - jitter
            self.rekey_at = None if self.config.rekey_time <= 0 else self.rekey_at
            over = self.config.over_time if self.config.over_time is not None else 0.1 * self.config.reauth_time
            self.expire_at = min(self.expire_at or float("inf"), self.reauth_at + over)
        self.log("ike_sa_established", local=self.local, remote=self.remote, initiator=self.initiator,
                 proposal=self.proposal_name)

    def ike_up_event(self) -> IkeSaUp:
        return IkeSaUp(self.name, self.unique_id, self.local, self.remote, self.spi_i, self.spi_r, self.initiator,
                       self.proposal_name, str(self.local_id), str(self.remote_id), self.nat_local,
                       self.nat_remote, self.rekeyed_from)

    def add_child(self, child: ChildSa) -> None:
        if self.replaces is not None and child.rekeyed_from is None:  # reauthentication successor
            old = next((c for c in self.replaces.children.values() if c.name == child.name
                        and not any(n.rekeyed_from == c.inbound_spi for n in self.children.values())), None)
            child.rekeyed_from = old.inbound_spi if old else None
        self.children[child.inbound_spi] = child
        self.endpoint.child_index[child.inbound_spi] = self
        self.emit(ChildSaUp(
            self.name, self.unique_id, child.name, child.unique_id, child.inbound_spi, child.outbound_spi,
            child.esp_transform, child.esn, child.config.mode, child.local_ts, child.remote_ts, self.local,
            self.remote, self.encap, (child.rekey_at - child.established) if child.rekey_at else 0.0,
            child.expire_at - child.established, child.config.replay_window, child.config.tfc_padding,
            child.proposal, child.inbound_keymat, child.outbound_keymat, child.rekeyed_from))
        self.log("child_sa_established", child=child.name, spi_in=f"{child.inbound_spi:08x}",
                 spi_out=f"{child.outbound_spi:08x}", proposal=child.proposal,
                 local_ts=[str(t) for t in child.local_ts], remote_ts=[str(t) for t in child.remote_ts])

    def remove_child(self, child: ChildSa, reason: str) -> None:
        if self.children.pop(child.inbound_spi, None) is None:
            return
        if self.endpoint.child_index.get(child.inbound_spi) is self:
            del self.endpoint.child_index[child.inbound_spi]
        self.emit(ChildSaDown(self.name, child.name, child.unique_id, child.inbound_spi, child.outbound_spi, reason))
        self.log("child_sa_down", child=child.name, spi_in=f"{child.inbound_spi:08x}", reason=reason)
        if reason == "deleted by peer" and child.config.close_action in ("start", "restart"):
            self.endpoint.restart_later(self.config, child.config)

    def child_by_outbound(self, spi: int) -> ChildSa | None:
        for child in self.children.values():
            if child.outbound_spi == spi:
                return child
        return None

    def adopt_children(self, old: "IkeSa") -> None:
        """Move CHILD SAs from the IKE SA being rekeyed (no events: the SAs themselves stay)."""
        for spi, child in list(old.children.items()):
            self.children[spi] = child
            self.endpoint.child_index[spi] = self
        old.children.clear()

    @property
    def encap(self) -> bool:
        return self.config.encap or self.nat_local or self.nat_remote

    def destroy(self, reason: str, now: float, *, up_event: bool = True) -> None:
        """Tear the SA down locally: CHILD SAs down, IkeSaDown (if it was ever up), unregistered."""
        if self.state == "dead":
            return
        was_up = self.established_at is not None
        for child in list(self.children.values()):
            self.remove_child(child, reason if reason in ("rekeyed", "reauthenticated") else "ike down")
        self.state = "dead"
        self.active = None
        self.queue.clear()
        self.postponed.clear()
        if was_up and up_event:
            self.emit(IkeSaDown(self.name, self.unique_id, reason))
        self.log("ike_sa_down", reason=reason)
        self.endpoint.unregister(self)
        if reason == "dead peer" and was_up:
            self.endpoint.after_dead_peer(self, now)
        if reason == "deleted by peer" and was_up:
            for cfg in self.config.children:
                if cfg.close_action in ("start", "restart"):
                    self.endpoint.restart_later(self.config, cfg)

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

    def send(self, packets: list[bytes]) -> None:
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
            self.active = Outstanding(task, mid, Retransmitter(packets, now))
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
                self.send(self.last_response[1])
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
        self.last_response = (msg.message_id, packets)
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

    # --- timers ------------------------------------------------------------------------------
    def deadlines(self) -> list[float]:
        out = []
        if self.active:
            out.append(self.active.retransmit.deadline)
        if self.state == "connecting" and not self.initiator:
            out.append(self.created + HALF_OPEN_TIMEOUT)
        if self.redundant_until is not None:
            out.append(self.redundant_until)
        if self.state == "established":
            if self.rekey_at is not None:
                out.append(self.rekey_at)
            if self.expire_at is not None:
                out.append(self.expire_at)
            if self.reauth_at is not None:
                out.append(self.reauth_at)
            if self.config.dpd_delay > 0 and self.active is None:
                out.append(self.last_inbound + self.config.dpd_delay)
            if self.retry_at is not None:
                out.append(self.retry_at)
            for child in self.children.values():
                if child.rekey_at is not None and child.state == "installed":
                    out.append(child.rekey_at)
                out.append(child.expire_at if child.state in ("installed", "rekeying") else child.expire_at + CHILD_GRACE)
        return out

    def handle_timer(self, now: float) -> None:
        from ike.tasks.child_delete import ChildDelete
        from ike.tasks.child_rekey import ChildRekey
        from ike.tasks.informational import IkeDpd
        from ike.tasks.ike_rekey import IkeRekey
        if self.state == "dead":
            return
        if self.active is not None:
            action = self.active.retransmit.on_timer(now)
            if action == "resend":
                self.log("retransmit", mid=self.active.message_id, attempt=self.active.retransmit.retransmits)
                self.send(self.active.retransmit.packets)
            elif action == "give up":
                task = self.active.task
                self.log("peer_unresponsive", mid=self.active.message_id)
                connecting = self.established_at is None
                task.timed_out(self, now)
                if self.state != "dead":
                    self.destroy("dead peer", now)
                if connecting and self.initiator:
                    self.endpoint.retry_connect(self, now)
                return
        if self.state == "connecting" and not self.initiator and now >= self.created + HALF_OPEN_TIMEOUT:
            self.destroy("half-open timeout", now)
            return
        if self.redundant_until is not None and now >= self.redundant_until:
            self.destroy("rekey collision", now)  # the loser never deleted it (strongSwan does the same)
            return
        if self.state != "established":
            return
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            tasks, self.postponed = self.postponed, []
            for task in tasks:
                self.queue_task(task, now)
        if self.expire_at is not None and now >= self.expire_at:
            from ike.tasks.informational import IkeDelete
            self.expire_at = self.rekey_at = None
            self.log("ike_sa_expired")
            self.queue_task(IkeDelete("expired"), now, first=True)
            return
        if self.reauth_at is not None and now >= self.reauth_at:
            self.reauth_at = None
            self.endpoint.reauthenticate(self, now)
        if self.rekey_at is not None and now >= self.rekey_at:
            self.rekey_at = None
            if not self.has_task(IkeRekey):
                self.queue_task(IkeRekey(), now)
        for child in list(self.children.values()):
            if child.state in ("installed", "rekeying") and now >= child.expire_at:
                child.rekey_at = None
                child.state = "deleting"
                self.queue_task(ChildDelete(child, "expired"), now, first=True)
            elif child.state not in ("installed", "rekeying") and now >= child.expire_at + CHILD_GRACE:
                self.remove_child(child, "expired")  # the peer never deleted it
            elif child.rekey_at is not None and now >= child.rekey_at and child.state == "installed":
                child.rekey_at = None
                self.queue_task(ChildRekey(child), now)
        if (self.config.dpd_delay > 0 and self.active is None and not self.queue
                and now >= self.last_inbound + self.config.dpd_delay):
            self.queue_task(IkeDpd(), now)

    def key_row(self) -> dict | None:
        """This SA's SK_e*/SK_a* for a Wireshark decryption table; only for an explicit key
        export (tunnel.keyexport), never logged."""
        if self.keys is None or self.chosen is None:
            return None
        from ike.constants import ProtocolId, TransformType
        from ike.proposals import Proposal, format_proposal

        def name(t: TransformType) -> str:
            found = self.chosen.of_type(t)
            return format_proposal(Proposal(ProtocolId.IKE, found[:1])) if found else "none"

        k = self.keys
        return {"spi_i": self.spi_i.hex(), "spi_r": self.spi_r.hex(), "encr_alg": name(TransformType.ENCR),
                "sk_ei": k.sk_ei.hex(), "sk_er": k.sk_er.hex(), "integ_alg": name(TransformType.INTEG),
                "sk_ai": k.sk_ai.hex(), "sk_ar": k.sk_ar.hex()}

    # --- status ------------------------------------------------------------------------------
    def status(self) -> dict:
        return {
            "name": self.name, "unique_id": self.unique_id, "state": self.state, "initiator": self.initiator,
            "spi_i": self.spi_i.hex(), "spi_r": self.spi_r.hex(), "local": list(self.local),
            "remote": list(self.remote), "local_id": str(self.local_id) if self.local_id else None,
            "remote_id": str(self.remote_id) if self.remote_id else None, "proposal": self.proposal_name,
            "nat_local": self.nat_local, "nat_remote": self.nat_remote, "established": self.established_at,
"rekey_at": self.rekey_at, "expire_at": self.expire_at,
            "children": [c.status() for c in self.children.values()],
        }
