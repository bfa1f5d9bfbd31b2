"""One IKE SA: its keys, identities, CHILD SAs, lifetimes and events.

The message handling (message IDs, retransmission, the task queue) is ``ike.task_manager``; each
exchange is a task module under ``ike.tasks``.
"""

from __future__ import annotations

import math
from sys import intern
from typing import TYPE_CHECKING, Callable, Sequence

import structlog

from ike.codec import message as codec
from ike.child_sa import ChildSa
from ike.config import ConnectionConfig
from ike.events import ChildSaDown, ChildSaUp, IkeSaDown, IkeSaUp
from ike.codec.fragments import Reassembly
from ike.codec.ids import Identity
from ike.crypto.skcipher import SkCipher
from ike.task_manager import Outstanding, TaskManager

if TYPE_CHECKING:
    from ike.endpoint import IkeEndpoint
    from ike.crypto.keys import IkeKeys
    from ike.crypto.proposals import Negotiated, Proposal
    from ike.tasks.base import Task

log = structlog.get_logger("ike")

HALF_OPEN_TIMEOUT = 30.0  # strongSwan's charon.half_open_timeout
CHILD_GRACE = 30.0  # a superseded CHILD SA the peer never deletes goes this long after its hard lifetime


def _finite(seconds: float) -> float:
    return 0.0 if seconds == math.inf else seconds  # events say "never" with 0


class _TimerField:
    """An IkeSa attribute a deadline depends on: assigning it (from anywhere, tests included)
    has the endpoint re-read the SA's deadlines before its next timer look-up."""

    def __set_name__(self, owner, name: str) -> None:
        self.slot = owner.__dict__["_" + name]  # the __slots__ member holding the value

    def __get__(self, sa, owner=None):
        return self if sa is None else self.slot.__get__(sa, owner)

    def __set__(self, sa, value) -> None:
        self.slot.__set__(sa, value)
        sa.endpoint.timer_changed(sa)


class _NoSpis(frozenset):
    """The empty ``peer_deleted_spis`` every SA starts with, shared; the task manager clears the
    set after each response, which must work on it too."""

    __slots__ = ()

    def clear(self) -> None:
        pass


NO_SPIS = _NoSpis()

class _Stats:
    """An SA's counters seen as a mapping (only "dropped" so far)."""

    __slots__ = ("_sa",)

    def __init__(self, sa: "IkeSa") -> None:
        self._sa = sa

    def __getitem__(self, key: str) -> int:
        if key != "dropped":
            raise KeyError(key)
        return self._sa.dropped

    def __setitem__(self, key: str, value: int) -> None:
        if key != "dropped":
            raise KeyError(key)
        self._sa.dropped = value


_SHARED: dict = {}
_SHARED_MAX = 1024  # distinct algorithm choices are few; the bound only stops a slow leak


def shared(key, value):
    """The first value stored under ``key`` (equal immutable values become one object)."""
    if len(_SHARED) >= _SHARED_MAX:
        _SHARED.clear()
    return _SHARED.setdefault(key, value)


class IkeSa(TaskManager):
    """State, keys and CHILD SAs of one IKE SA; the message handling is in TaskManager."""

    # slots: a gateway holds thousands of these; an instance dict of ~55 entries costs ~1.5 KB more
    __slots__ = ("_active", "_expire_at", "_reauth_at", "_redundant_until", "_rekey_at", "_retry_at", "_state",
                 "attempt", "candidates", "children", "chosen", "config", "created",
                 "delete_after_response", "endpoint", "established_at", "half_open_key", "held_events",
                 "indexed_name", "init_request", "init_response", "initiated", "initiator", "inner_error", "keys",
                 "last_inbound", "last_response", "local", "local_id", "my_mid", "nat_local", "nat_remote", "neg",
                 "ni", "nr", "peer_deleted_spis", "peer_fragmentation", "peer_key", "peer_mid", "postponed",
                 "proposal_name", "queue", "reassembly", "rekeyed_from", "remote", "remote_id", "replaces",
                 "silent", "spi_i", "spi_r", "dropped", "timer_at", "timer_entry", "unique_id", "__weakref__")

    state = _TimerField()
    active = _TimerField()
    rekey_at = _TimerField()
    expire_at = _TimerField()
    reauth_at = _TimerField()
    retry_at = _TimerField()
    redundant_until = _TimerField()

    def __init__(self, endpoint: "IkeEndpoint", config: ConnectionConfig, *, initiator: bool,
                 local: tuple[str, int], remote: tuple[str, int], spi_i: bytes, spi_r: bytes,
                 unique_id: int, now: float):
        self.endpoint = endpoint
        self.config = config
        self.initiator = initiator  # original initiator of this IKE SA (the I flag)
        self.local, self.remote = shared(("local", local), local), remote
        self.spi_i, self.spi_r = spi_i, spi_r
        self.unique_id = unique_id
        self.created = now
        self.state = "connecting"  # connecting | established | rekeyed | deleting | dead
        self.established_at: float | None = None
        self.candidates: Sequence[ConnectionConfig] = [config]  # responder: configs matching the addresses
        # keys and what IKE_AUTH signs
        self.neg: "Negotiated | None" = None
        self.keys: "IkeKeys | None" = None
        self.ni = self.nr = b""
        self.init_request = self.init_response = b""
        self.local_id: Identity | None = None
        self.remote_id: Identity | None = None
        self.nat_local = self.nat_remote = False
        self.peer_fragmentation = False
        self.proposal_name = ""  # strongSwan-style, e.g. "aes256gcm16-prfsha256-ecp256"
        self.chosen = None  # the selected IKE proposal (ike.crypto.proposals.Proposal)
        # message IDs and the task manager
        self.my_mid = 0
        self.peer_mid = 0
        self.queue: list["Task"] = []
        self.active: Outstanding | None = None
        # (message ID, its packets...): one flat tuple, no list, as every IKE SA keeps one
        self.last_response: tuple | None = None
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
        # outbound SPIs deleted before we installed them; a real set only once there is one
        self.peer_deleted_spis: set[int] | frozenset[int] = NO_SPIS
        self.rekeyed_from: int | None = None
        self.silent = False  # a rekey collision's SA not (yet) known to survive: events are held
        self.held_events: list | tuple = ()  # a list once there is one
        self.redundant_until: float | None = None  # when to drop it if the peer never deletes it
        self.dropped = 0  # messages dropped by the task manager (through ``stats``)
        # the endpoint's indices: keys this SA is filed under, its current timer heap entry
        self.peer_key: tuple | None = None
        self.indexed_name: str | None = None
        self.timer_entry: int | None = None
        self.timer_at: float | None = None
        self.half_open_key: tuple | None = None  # responder: its key in the endpoint's half_open

    @property
    def stats(self) -> "_Stats":
        """``stats["dropped"]``, as the task manager counts it, without a dict per SA."""
        return _Stats(self)

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
        SkCipher(neg, keys.sk_ei, keys.sk_ai), SkCipher(neg, keys.sk_er, keys.sk_ar)  # bad keys fail now
        self.neg, self.keys = shared(("negotiated", neg.protocol, neg), neg), keys

    def _sk_cipher(self, initiator_sent: bool) -> SkCipher | None:
        """Built per message from the keys, not kept: two SkCipher objects are ~190 B per idle SA."""
        keys = self.keys
        if keys is None:
            return None
        if initiator_sent:
            return SkCipher(self.neg, keys.sk_ei, keys.sk_ai)
        return SkCipher(self.neg, keys.sk_er, keys.sk_ar)

    @property
    def cipher_out(self) -> SkCipher | None:
        return self._sk_cipher(self.initiator)

    @property
    def cipher_in(self) -> SkCipher | None:
        return self._sk_cipher(not self.initiator)

    def set_proposal(self, chosen: "Proposal") -> None:
        """The selected IKE proposal and its strongSwan-style name, shared by the SAs that chose
        the same one (nothing changes a chosen proposal)."""
        from ike.crypto.proposals import format_proposal
        name = format_proposal(chosen)
        self.proposal_name, self.chosen = shared(("proposal", name, chosen.number, bytes(chosen.spi)),
                                                  (name, chosen))

    def auth_done(self) -> None:
        """IKE_AUTH is over, its CHILD SA included: what it signed with (the nonces, SK_pi/SK_pr)
        and the connections it chose among are not needed again (rekeys bring fresh nonces);
        a gateway with thousands of SAs should not keep them."""
        self.ni = self.nr = b""
        self.candidates = (self.config,)  # a tuple: smaller than a list
        if self.keys is not None:
            self.keys.forget_auth_keys()

    def log(self, event: str, **fields) -> None:
        log.info(event, ike=self.name, ike_id=self.unique_id, **fields)

    def emit(self, event) -> None:
        if self.silent:  # held until a rekey collision decides whether this SA lives
            if not self.held_events:
                self.held_events = []
            self.held_events.append(event)
        else:
            self.endpoint.emit(event)

    def unsilence(self) -> None:
        self.silent = False
        held, self.held_events = self.held_events, ()
        for event in held:
            self.endpoint.emit(event)

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
            over = self.config.over_time if self.config.over_time is not None else 0.1 * self.config.reauth_time
            self.expire_at = min(self.expire_at or float("inf"), self.reauth_at + over)
        self.log("ike_sa_established", local=self.local, remote=self.remote, initiator=self.initiator,
                 proposal=self.proposal_name)

    def ike_up_event(self) -> IkeSaUp:
        # interned: the gateway keeps this event, and its own ID is the same text for every SA
        return IkeSaUp(self.name, self.unique_id, self.local, self.remote, self.spi_i, self.spi_r, self.initiator,
                       self.proposal_name, intern(str(self.local_id)), str(self.remote_id), self.nat_local,
                       self.nat_remote, self.rekeyed_from)

    def add_child(self, child: ChildSa) -> None:
        if self.replaces is not None and child.rekeyed_from is None:  # reauthentication successor
            old = next((c for c in self.replaces.children.values() if c.name == child.name
                        and not any(n.rekeyed_from == c.inbound_spi for n in self.children.values())), None)
            child.rekeyed_from = old.inbound_spi if old else None
        self.children[child.inbound_spi] = child
        self.endpoint.child_index[child.inbound_spi] = self
        self.touch()
        self.emit(ChildSaUp(
            self.name, self.unique_id, child.name, child.unique_id, child.inbound_spi, child.outbound_spi,
            child.esp_transform, child.esn, child.config.mode, child.local_ts, child.remote_ts, self.local,
            self.remote, self.encap, (child.rekey_at - child.established) if child.rekey_at else 0.0,
            _finite(child.expire_at - child.established), child.config.replay_window, child.config.tfc_padding,
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
        self.touch()

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

    def next_deadline(self) -> float | None:
        """The earliest finite deadline, or None."""
        finite = [d for d in self.deadlines() if d != math.inf]
        return min(finite) if finite else None

    def touch(self) -> None:
        """Deadlines may have changed outside this SA's own message or timer handling."""
        self.endpoint.timer_changed(self)

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
            # the peer never deleted it: a collision loser's SA, or an old SA after a rekey
            self.destroy("rekeyed" if self.state == "rekeyed" else "rekey collision", now)
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
        from ike.codec.constants import ProtocolId, TransformType
        from ike.crypto.proposals import Proposal, format_proposal

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
