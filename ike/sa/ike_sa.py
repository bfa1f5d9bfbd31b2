"""One IKE SA: its keys, identities, CHILD SAs, lifetimes and state.

The message handling (message IDs, retransmission, the task queue) is the ``TaskManager`` base
class; each exchange is a task module under ``ike.tasks``, which sees this class through
``ike.tasks.base.IkeSaContext``. The SA never calls its endpoint: datagrams, events and SA-level
notes go to the endpoint's ``Outbox`` (``ike.sa.outbox``), and the endpoint re-reads the SA's
deadlines after every entry into it.
"""

from __future__ import annotations

import math
from sys import intern
from typing import Protocol
from collections.abc import Callable, Sequence

import structlog

from ike.codec.constants import ProtocolId, TransformType
from ike.codec.ids import Identity
from ike.codec.payloads import Proposal
from ike.config import ConnectionConfig
from ike.crypto.keys import IkeKeys
from ike.crypto.proposals import Negotiated, format_proposal
from ike.crypto.skcipher import SkCipher
from ike.events import Address, ChildSaDown, ChildSaUp, IkeSaDown, IkeSaMoved, IkeSaUp, LeaseAssigned, LeaseReleased
from ike.pools import AddressPool, IPAddress
from ike.sa.outbox import (ChildAdded, ChildRemoved, ChildrenMoved, DropSuccessor, Established, Gone, Outbox,
                           Reauthenticate, Registered, ReplaceDuplicates)
from ike.sa.retransmit import RetransmitSchedule, total_lifetime
from ike.sa.task_manager import TaskManager
from ike.tasks.base import IkeSaContext, Task, jitter, shared
from ike.tasks.child_delete import ChildDelete
from ike.tasks.child_rekey import ChildRekey
from ike.tasks.child_sa import ChildSa
from ike.tasks.ike_delete import IkeDelete
from ike.tasks.ike_dpd import IkeDpd
from ike.tasks.followup_ke import FollowupResponder, exchange_task
from ike.tasks.ike_intermediate import Intermediate
from ike.tasks.ike_mobike import IkeMobike
from ike.tasks.ike_rekey import IkeRekey
from ike.tasks.states import IKE_TRANSITIONS, LIVE_CHILD_STATES, ChildState, IkeState, advance

log = structlog.get_logger("ike")

HALF_OPEN_TIMEOUT = 30.0  # strongSwan's charon.half_open_timeout
CHILD_GRACE = 30.0  # a superseded CHILD SA the peer never deletes goes this long after its hard lifetime
# how long an SA the peer is expected to delete may wait for that delete: the peer's last message
# (its rekey request, or its delete) may need its whole retransmission schedule to get through
AWAIT_PEER_DELETE = total_lifetime() + 15.0


def _finite(seconds: float) -> float:
    return 0.0 if seconds == math.inf else seconds  # events say "never" with 0


class Host(Protocol):
    """What an IKE SA asks of its endpoint: services and read-only look-ups, never policy."""

    rng: Callable[[int], bytes]
    outbox: Outbox
    retransmit_schedule: RetransmitSchedule
    pools: dict[str, AddressPool]

    def new_ike_spi(self) -> bytes: ...
    def new_child_spi(self) -> int: ...
    def next_unique_id(self) -> int: ...
    def first_contact(self, sa: IkeSa) -> bool: ...
    def duplicates(self, sa: IkeSa) -> list[IkeSa]: ...


NO_SPIS: frozenset[int] = frozenset()  # the empty ``peer_deleted_spis`` (one shared object)


class _Stats:
    """An SA's counters seen as a mapping (only "dropped" so far)."""

    __slots__ = ("_sa",)

    def __init__(self, sa: IkeSa) -> None:
        self._sa = sa

    def __getitem__(self, key: str) -> int:
        if key != "dropped":
            raise KeyError(key)
        return self._sa.dropped

    def __setitem__(self, key: str, value: int) -> None:
        if key != "dropped":
            raise KeyError(key)
        self._sa.dropped = value


class IkeSa(TaskManager):
    """State, keys and CHILD SAs of one IKE SA; the message handling is in TaskManager."""

    # slots: a gateway holds thousands of these; an instance dict of ~55 entries costs ~1.5 KB more
    __slots__ = ("attempt", "auth_methods", "candidates", "children", "chosen", "config", "created", "dropped",
                 "established_at", "expire_at", "followup", "half_open_key", "held_events", "host",
                 "indexed_name", "init_request", "init_response", "initiated", "initiator", "intermediate",
                 "keys", "last_inbound", "local", "local_id", "local_vips", "mobike", "nat_local",
                 "nat_mapping", "nat_remote", "neg", "ni", "nr", "peer_addresses", "peer_deleted_spis",
                 "peer_fragmentation", "peer_key", "proposal_name", "reauth_at", "redundant_until", "rekey_at",
                 "rekeyed_from", "remote", "remote_id", "remote_vips", "replaces", "request_addresses",
                 "silent", "spi_i", "spi_r", "state", "timer_at", "timer_entry", "unique_id",
                 "__weakref__")

    def __init__(self, host: Host, config: ConnectionConfig, *, initiator: bool, local: Address, remote: Address,
                 spi_i: bytes, spi_r: bytes, unique_id: int, now: float):
        super().__init__()
        self.host = host
        self.config = config
        self.initiator = initiator  # original initiator of this IKE SA (the I flag)
        self.local: Address = shared(("local", local), local)
        self.remote = remote
        self.spi_i, self.spi_r = spi_i, spi_r
        self.unique_id = unique_id
        self.created = now
        self.state = IkeState.CONNECTING
        self.established_at: float | None = None
        self.candidates: Sequence[ConnectionConfig] = [config]  # responder: configs matching the addresses
        # keys and what IKE_AUTH signs
        self.neg: Negotiated | None = None
        self.keys: IkeKeys | None = None
        self.ni = self.nr = b""
        self.init_request = self.init_response = b""
        self.local_id: Identity | None = None
        self.remote_id: Identity | None = None
        self.auth_methods: tuple[str, str] = ("", "")  # (ours, the peer's), e.g. "pubkey ecdsa-with-sha256"
        self.nat_local = self.nat_remote = False
        self.peer_fragmentation = False
        self.intermediate: Intermediate | None = None  # IKE_INTERMEDIATE key exchanges (RFC 9370)
        self.followup: FollowupResponder | None = None  # a peer's CREATE_CHILD_SA awaiting IKE_FOLLOWUP_KE
        self.mobike = False  # RFC 4555 negotiated (ike.tasks.ike_mobike)
        self.peer_addresses: tuple[str, ...] = ()  # the peer's ADDITIONAL_*_ADDRESS list
        self.nat_mapping: bytes | None = None  # the peer's last NAT_DETECTION_DESTINATION_IP hash
        self.request_addresses: tuple[Address, Address] = (remote, local)  # of the request in hand
        self.proposal_name = ""  # strongSwan-style, e.g. "aes256gcm16-prfsha256-ecp256"
        self.chosen: Proposal | None = None  # the selected IKE proposal
        # timers
        self.last_inbound = now
        self.rekey_at: float | None = None
        self.expire_at: float | None = None  # hard lifetime: rekey time + over_time
        self.reauth_at: float | None = None
        self.replaces: IkeSa | None = None  # reauthentication: the SA this one takes over from
        self.attempt = 1  # keyingtries: which connection attempt this initiator SA is
        self.initiated: tuple[list, object] | None = None  # (CHILD configs, packet_ts) asked for
        # CHILD SAs by inbound SPI
        self.children: dict[int, ChildSa] = {}
        # outbound SPIs deleted before we installed them; a real set only once there is one
        self.peer_deleted_spis: set[int] | frozenset[int] = NO_SPIS
        self.rekeyed_from: int | None = None
        self.silent = False  # a rekey collision's SA not (yet) known to survive: events are held
        self.held_events: list[object] | tuple[()] = ()  # a list once there is one
        self.redundant_until: float | None = None  # when to drop it if the peer never deletes it
        self.dropped = 0  # messages dropped by the task manager (through ``stats``)
        # the endpoint's bookkeeping: keys this SA is filed under, its current timer heap entry
        self.peer_key: tuple | None = None
        self.indexed_name: str | None = None
        self.timer_entry: int | None = None
        self.timer_at: float | None = None
        self.half_open_key: tuple | None = None  # responder: its key in the endpoint's half_open
        # virtual IPs (ike.tasks.ike_config): ours as a client, (pool, address) lent to the peer
        self.local_vips: tuple[IPAddress, ...] = ()
        self.remote_vips: tuple[tuple[str, IPAddress], ...] = ()

    @property
    def stats(self) -> _Stats:
        """``stats["dropped"]``, as the task manager counts it, without a dict per SA."""
        return _Stats(self)

    # --- what tasks use (ike.tasks.base.IkeSaContext) ---------------------------------------------
    @property
    def rng(self) -> Callable[[int], bytes]:
        return self.host.rng

    @property
    def our_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def established(self) -> bool:
        return self.state == IkeState.ESTABLISHED

    @property
    def active_task(self) -> Task | None:
        return self.active.task if self.active is not None else None

    def state_to(self, new: IkeState) -> None:
        """The one place an IKE SA changes state (the transition table is ike.tasks.states)."""
        self.state = advance(self.state, new, IKE_TRANSITIONS, f"IKE SA {self.name}")
        if new == IkeState.DELETING:
            self.rekey_at = None

    def new_ike_spi(self) -> bytes:
        return self.host.new_ike_spi()

    def new_child_spi(self) -> int:
        return self.host.new_child_spi()

    def next_unique_id(self) -> int:
        return self.host.next_unique_id()

    def first_contact(self) -> bool:
        """Whether no other IKE SA of this connection to the same peer is up (send INITIAL_CONTACT)."""
        return self.host.first_contact(self)

    def has_duplicates(self) -> bool:
        return bool(self.host.duplicates(self))

    def replace_duplicates(self) -> None:
        self.host.outbox.items.append(ReplaceDuplicates(self))

    # --- virtual IP leases -------------------------------------------------------------------------
    def pool(self, name: str) -> AddressPool | None:
        return self.host.pools.get(name)

    def count_drop(self, reason: str) -> None:
        """Something of the peer's ignored, by reason (the daemon's drop counters)."""
        self.host.outbox.count_drop(reason)

    def take_over_leases(self, now: float) -> None:
        """This SA replaces its duplicates (INITIAL_CONTACT, unique = replace): their leases go
        offline now, before it asks for its own, so a reconnecting client gets its address back."""
        if any(isinstance(i, ReplaceDuplicates) and i.sa is self for i in self.host.outbox.items):
            for other in self.host.duplicates(self):
                other.release_leases(now)

    def release_leases(self, now: float) -> None:
        leases, self.remote_vips = self.remote_vips, ()
        identity = str(self.remote_id)
        for pool_name, address in leases:
            pool = self.pool(pool_name)
            if pool is not None:  # else unloaded meanwhile: its leases went with it
                pool.release(identity, address, now)
            self.log("virtual_ip_released", pool=pool_name, address=str(address), peer_id=identity)
            self.emit(LeaseReleased(self.name, self.unique_id, pool_name, str(address), identity))

    def _share_leases(self, new: IkeSa, now: float) -> None:
        """An IKE rekey: the new SA holds the same leases (one more user each) and addresses."""
        new.local_vips = self.local_vips
        identity = str(self.remote_id)
        for pool_name, address in self.remote_vips:
            pool = self.pool(pool_name)
            if pool is not None and pool.acquire(identity, address, now, self.remote) == address:
                new.remote_vips = (*new.remote_vips, (pool_name, address))
                new.emit(LeaseAssigned(new.name, new.unique_id, pool_name, str(address), identity))

    def touch(self) -> None:
        """This SA's deadlines may have moved outside its own message or timer handling."""
        self.host.outbox.touched[self] = None

    def install_keys(self, neg: Negotiated, keys: IkeKeys) -> None:
        SkCipher(neg, keys.sk_ei, keys.sk_ai), SkCipher(neg, keys.sk_er, keys.sk_ar)  # bad keys fail now
        self.neg, self.keys = shared(("negotiated", neg.protocol, neg), neg), keys

    def _sk_cipher(self, initiator_sent: bool) -> SkCipher | None:
        """Built per message from the keys, not kept: two SkCipher objects are ~190 B per idle SA."""
        keys, neg = self.keys, self.neg
        if keys is None or neg is None:
            return None
        if initiator_sent:
            return SkCipher(neg, keys.sk_ei, keys.sk_ai)
        return SkCipher(neg, keys.sk_er, keys.sk_ar)

    @property
    def cipher_out(self) -> SkCipher | None:
        return self._sk_cipher(self.initiator)

    @property
    def cipher_in(self) -> SkCipher | None:
        return self._sk_cipher(not self.initiator)

    def set_proposal(self, chosen: Proposal) -> None:
        """The selected IKE proposal and its strongSwan-style name, shared by the SAs that chose
        the same one (nothing changes a chosen proposal)."""
        name = format_proposal(chosen)
        self.proposal_name, self.chosen = shared(("proposal", name, chosen.number, bytes(chosen.spi)),
                                                  (name, chosen))

    def auth_done(self) -> None:
        """IKE_AUTH is over, its CHILD SA included: what it signed with (the nonces, SK_pi/SK_pr)
        and the connections it chose among are not needed again (rekeys bring fresh nonces);
        a gateway with thousands of SAs should not keep them."""
        self.ni = self.nr = b""
        self.intermediate = None  # its IntAuth values are signed
        self.candidates = (self.config,)  # a tuple: smaller than a list
        if self.keys is not None:
            self.keys.forget_auth_keys()

    def log(self, event: str, **fields: object) -> None:
        log.info(event, ike=self.name, ike_id=self.unique_id, **fields)

    def emit(self, event: object) -> None:
        if self.silent:  # held until a rekey collision decides whether this SA lives
            if not isinstance(self.held_events, list):
                self.held_events = []
            self.held_events.append(event)
        else:
            self.host.outbox.items.append(event)

    def unsilence(self) -> None:
        self.silent = False
        held, self.held_events = self.held_events, ()
        self.host.outbox.items.extend(held)

    # --- life cycle ------------------------------------------------------------------------------
    def set_established(self, now: float) -> None:
        self.state_to(IkeState.ESTABLISHED)
        self.established_at = now
        # IKE_AUTH signed the IKE_SA_INIT messages; they are not needed again (RFC 7296 s2.15)
        self.init_request = self.init_response = b""
        self.host.outbox.items.append(Established(self))
        self.last_inbound = now
        over_default = 0.1  # strongSwan: rand_time and over_time default to 10% of the interval
        if self.config.rekey_time > 0:
            rekey = self.config.rekey_time
            over = self.config.over_time if self.config.over_time is not None else over_default * rekey
            self.rekey_at = now + rekey - jitter(self.rng) * 0.1 * rekey
            self.expire_at = self.rekey_at + over
        if self.config.reauth_time > 0:  # make-before-break reauthentication (strongSwan 5.3+)
            reauth = self.config.reauth_time
            self.reauth_at = now + reauth - jitter(self.rng) * 0.1 * reauth
            over = self.config.over_time if self.config.over_time is not None else over_default * reauth
            self.expire_at = min(self.expire_at or math.inf, self.reauth_at + over)
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
        self.host.outbox.items.append(ChildAdded(self, child.inbound_spi))
        self.emit(ChildSaUp(
            self.name, self.unique_id, child.name, child.unique_id, child.inbound_spi, child.outbound_spi,
            child.esp_transform, child.esn, child.config.mode, child.local_ts, child.remote_ts, self.local,
            self.remote, self.encap, (child.rekey_at - child.established) if child.rekey_at else 0.0,
            _finite(child.expire_at - child.established), child.config.replay_window, child.config.tfc_padding,
            child.proposal, child.inbound_keymat, child.outbound_keymat, child.rekeyed_from))
        self.log("child_sa_established", child=child.name, child_id=child.unique_id, spi_in=f"{child.inbound_spi:08x}",
                 spi_out=f"{child.outbound_spi:08x}", proposal=child.proposal, encap=self.encap,
                 rekeyed_from=child.rekeyed_from,  # the inbound SPI it replaces, as a number
                 local_ts=[str(t) for t in child.local_ts], remote_ts=[str(t) for t in child.remote_ts])

    def remove_child(self, child: ChildSa, reason: str) -> None:
        if self.children.pop(child.inbound_spi, None) is None:
            return
        child.forget_keys()
        self.host.outbox.items.append(ChildRemoved(self, child.inbound_spi, child.config, reason))
        self.emit(ChildSaDown(self.name, child.name, child.unique_id, child.inbound_spi, child.outbound_spi, reason))
        self.log("child_sa_down", child=child.name, child_id=child.unique_id, spi_in=f"{child.inbound_spi:08x}",
                 reason=reason)

    def child_by_outbound(self, spi: int) -> ChildSa | None:
        for child in self.children.values():
            if child.outbound_spi == spi:
                return child
        return None

    @property
    def encap(self) -> bool:
        return self.config.encap or self.nat_local or self.nat_remote

    def addresses_moved(self, now: float) -> None:
        """The outer addresses changed (MOBIKE, a NAT mapping): the CHILD SAs' ESP follows."""
        if self.state != IkeState.ESTABLISHED:
            return
        self.log("ike_sa_moved", local=self.local, remote=self.remote, nat_local=self.nat_local,
                 nat_remote=self.nat_remote)
        self.emit(IkeSaMoved(self.name, self.unique_id, self.local, self.remote, self.encap, self.nat_local,
                             tuple(self.children)))

    # --- IKE rekeying ------------------------------------------------------------------------------
    def rekeyed_sa(self, *, initiator: bool, spi_i: bytes, spi_r: bytes, ni: bytes, nr: bytes, chosen: Proposal,
                   neg: Negotiated, keys: IkeKeys, now: float) -> IkeSa:
        """The IKE SA a rekey of this one creates (established, filed by the endpoint afterwards)."""
        new = IkeSa(self.host, self.config, initiator=initiator, local=self.local, remote=self.remote,
                    spi_i=spi_i, spi_r=spi_r, unique_id=self.host.next_unique_id(), now=now)
        new.candidates = self.candidates
        new.ni, new.nr = ni, nr
        new.install_keys(neg, keys)
        new.set_proposal(chosen)
        new.local_id, new.remote_id = self.local_id, self.remote_id
        new.auth_methods = self.auth_methods
        new.nat_local, new.nat_remote = self.nat_local, self.nat_remote
        new.peer_fragmentation = self.peer_fragmentation
        new.mobike, new.peer_addresses, new.nat_mapping = self.mobike, self.peer_addresses, self.nat_mapping
        new.rekeyed_from = self.unique_id
        self._share_leases(new, now)
        new.set_established(now)
        new.ni = new.nr = b""  # only the next rekey's fresh nonces matter
        self.host.outbox.items.append(Registered(new))
        return new

    def hand_over(self, new: IkeSaContext, now: float) -> None:
        """``new`` replaces this SA: CHILD SAs and pending CHILD tasks move, IkeSaUp is announced."""
        assert isinstance(new, IkeSa)  # tasks only ever hold IKE SAs as contexts
        new.rekeyed_from = self.unique_id
        spis = tuple(self.children)
        new.children.update(self.children)
        self.children.clear()
        self.host.outbox.items.append(ChildrenMoved(new, spis))
        new.queue += [t for t in self.queue + self.postponed if t.moves_on_ike_rekey]
        self.queue = [t for t in self.queue if not t.moves_on_ike_rekey]
        self.postponed = []
        self.state_to(IkeState.REKEYED)
        self.rekey_at = self.expire_at = self.reauth_at = None
        self.redundant_until = now + AWAIT_PEER_DELETE  # if the peer never deletes it
        new.silent = False
        new.emit(new.ike_up_event())
        new.unsilence()  # what happened on it while the collision was open
        new.log("ike_sa_rekeyed", old_ike_id=self.unique_id)
        new.kick(now)
        new.touch()

    def mark_redundant(self, now: float) -> None:
        """A rekey collision's loser made this SA: the peer deletes it, else it goes in a while."""
        self.silent = True
        self.redundant_until = now + AWAIT_PEER_DELETE
        self.touch()

    def finish_colliding_rekey(self, now: float) -> None:
        """The peer deletes an IKE SA we were rekeying while it rekeyed it too: its rekey won (it may
        not have seen the collision), so the SA it created takes over before this one goes."""
        task = exchange_task(self.active_task)
        if isinstance(task, IkeRekey) and task.collision is not None:
            new = task.collision[0]
            if new.state == IkeState.ESTABLISHED:
                self.hand_over(new, now)
                self.active = None

    def drop_successor(self) -> None:
        self.host.outbox.items.append(DropSuccessor(self))

    def destroy(self, reason: str, now: float, *, up_event: bool = True) -> None:
        """Tear the SA down locally: CHILD SAs down, keys released, IkeSaDown (if it was ever up).
        The endpoint drops it from its structures and applies restarts when it reads ``Gone``."""
        if self.state == IkeState.DEAD:
            return
        was_up = self.established_at is not None
        for child in list(self.children.values()):
            self.remove_child(child, reason if reason in ("rekeyed", "reauthenticated") else "ike down")
        self.release_leases(now)
        self.state_to(IkeState.DEAD)
        self.active = None
        self.queue.clear()
        self.postponed.clear()
        self.forget_keys()
        if was_up and up_event:
            self.emit(IkeSaDown(self.name, self.unique_id, reason))
        if self.silent and isinstance(self.held_events, list):  # never announced: neither is its end
            self.held_events = ()
        (self.log if self.unique_id else _quiet)("ike_sa_down", reason=reason)
        self.host.outbox.items.append(Gone(self, reason, was_up, self.initiator and not was_up))

    def forget_keys(self) -> None:
        """Drop every key and secret this SA holds (Python cannot wipe bytes; released, they are
        freed): SK_* keys, nonces, the signed IKE_SA_INIT messages, cached responses."""
        if self.keys is not None:
            self.keys.forget()
        self.keys = None
        self.intermediate = self.followup = None
        self.ni = self.nr = b""
        self.init_request = self.init_response = b""
        self.last_response = None
        self.reassembly.clear()

    # --- timers ----------------------------------------------------------------------------------
    def deadlines(self) -> list[float]:
        out = []
        if self.active:
            out.append(self.active.retransmit.deadline)
        if self.state == IkeState.CONNECTING and not self.initiator:
            out.append(self.created + HALF_OPEN_TIMEOUT)
        if self.redundant_until is not None:
            out.append(self.redundant_until)
        if self.followup is not None and self.followup.holding:
            out.append(self.followup.expires)
        if self.state == IkeState.ESTABLISHED:
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
                if child.rekey_at is not None and child.state == ChildState.INSTALLED:
                    out.append(child.rekey_at)
                out.append(child.expire_at if child.state in LIVE_CHILD_STATES else child.expire_at + CHILD_GRACE)
        return out

    def next_deadline(self) -> float | None:
        """The earliest finite deadline, or None."""
        finite = [d for d in self.deadlines() if d != math.inf]
        return min(finite) if finite else None

    def handle_timer(self, now: float) -> None:
        if self.state == IkeState.DEAD:
            return
        if self.active is not None and self._retransmit_due(now):
            return
        if self.followup is not None and self.followup.holding and now >= self.followup.expires:
            self.followup.holding = False  # held-back requests go now; the state stays
            self.kick(now)
        if self.state == IkeState.CONNECTING and not self.initiator and now >= self.created + HALF_OPEN_TIMEOUT:
            self.destroy("half-open timeout", now)
            return
        if self.redundant_until is not None and now >= self.redundant_until:
            # the peer never deleted it: a collision loser's SA, or an old SA after a rekey
            self.destroy("rekeyed" if self.state == IkeState.REKEYED else "rekey collision", now)
            return
        if self.state != IkeState.ESTABLISHED:
            return
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            tasks, self.postponed = self.postponed, []
            for task in tasks:
                self.queue_task(task, now)
        if self.expire_at is not None and now >= self.expire_at:
            self.expire_at = self.rekey_at = None
            self.log("ike_sa_expired")
            self.queue_task(IkeDelete("expired"), now, first=True)
            return
        if self.reauth_at is not None and now >= self.reauth_at:
            self.reauth_at = None
            self.host.outbox.items.append(Reauthenticate(self))
        if self.rekey_at is not None and now >= self.rekey_at:
            self.rekey_at = None
            if not self.has_task(IkeRekey):
                self.queue_task(IkeRekey(), now)
        for child in list(self.children.values()):
            if child.state in LIVE_CHILD_STATES and now >= child.expire_at:
                child.rekey_at = None
                child.move_to(ChildState.DELETING)
                self.queue_task(ChildDelete(child, "expired"), now, first=True)
            elif child.state not in LIVE_CHILD_STATES and now >= child.expire_at + CHILD_GRACE:
                self.remove_child(child, "expired")  # the peer never deleted it
            elif child.rekey_at is not None and now >= child.rekey_at and child.state == ChildState.INSTALLED:
                child.rekey_at = None
                self.queue_task(ChildRekey(child), now)
        if (self.config.dpd_delay > 0 and self.active is None and not self.queue
                and now >= self.last_inbound + self.config.dpd_delay):
            # behind a NAT with MOBIKE, the liveness check also watches our NAT mapping (as charon)
            mapped = self.mobike and self.initiator and self.nat_local
            self.queue_task(IkeMobike("check") if mapped else IkeDpd(), now)

    def key_row(self) -> dict | None:
        """This SA's SK_e*/SK_a* for a Wireshark decryption table; only for an explicit key
        export (tunnel.ops.keyexport), never logged."""
        chosen = self.chosen
        if self.keys is None or chosen is None:
            return None

        def name(t: TransformType) -> str:
            found = chosen.of_type(t)
            return format_proposal(Proposal(ProtocolId.IKE, found[:1])) if found else "none"

        k = self.keys
        return {"spi_i": self.spi_i.hex(), "spi_r": self.spi_r.hex(), "encr_alg": name(TransformType.ENCR),
                "sk_ei": k.sk_ei.hex(), "sk_er": k.sk_er.hex(), "integ_alg": name(TransformType.INTEG),
                "sk_ai": k.sk_ai.hex(), "sk_ar": k.sk_ar.hex()}

    # --- status ------------------------------------------------------------------------------------
    def status(self) -> dict:
        return {
            "name": self.name, "unique_id": self.unique_id, "state": self.state, "initiator": self.initiator,
            "spi_i": self.spi_i.hex(), "spi_r": self.spi_r.hex(), "local": list(self.local),
            "remote": list(self.remote), "local_id": str(self.local_id) if self.local_id else None,
            "remote_id": str(self.remote_id) if self.remote_id else None, "proposal": self.proposal_name,
            "local_auth": self.auth_methods[0], "remote_auth": self.auth_methods[1],
            "nat_local": self.nat_local, "nat_remote": self.nat_remote, "established": self.established_at,
            "mobike": self.mobike, "peer_addresses": list(self.peer_addresses),
            "rekey_at": self.rekey_at, "expire_at": self.expire_at,
            "local_vips": [str(v) for v in self.local_vips],
            "remote_vips": [str(address) for _, address in self.remote_vips],
            "children": [c.status() for c in self.children.values()],
        }


def _quiet(event: str, **fields: object) -> None:
    """A refused IKE_SA_INIT's SA never existed for anyone: its end is not worth a log line."""
    log.debug(event, **fields)
