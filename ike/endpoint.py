"""The gateway's IKE endpoint: all IKE SAs in both roles, sans-I/O (modelled on aioquic).

Bytes and the current time go in (``receive_datagram``, ``handle_timer`` and the commands);
datagrams to send, events and the next timer deadline come out. Nothing here reads a clock,
opens a socket or draws randomness other than from the injected ``rng``.

The endpoint is the top of ike/ (codec <- crypto <- tasks <- IKE SA <- endpoint) and the only
owner of what spans SAs: the SA indexes (by SPI, half-open, by name and peer identity, the CHILD
index by inbound ESP SPI), SPI allocation, the cookie policy and the restart policy (dpd_action,
close_action, keyingtries, reauthentication). SAs report through the ``Outbox``; after every entry
the endpoint reads it (``_settle``), files or drops SAs, re-reads the deadlines of every SA it
entered or was told about, and runs restarts last, after the SAs that caused them are gone.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import struct
import traceback
from collections import deque
from collections.abc import Callable, Iterator

import structlog

from ike.codec import message as codec
from ike.codec.constants import ExchangeType, NotifyType
from ike.codec.payloads import NoncePayload, NotifyPayload
from ike.config import ChildConfig, ConnectionConfig, concrete_addrs, is_any_addr
from ike.crypto.cookies import CookieJar, cookie_reply, init_request_fields
from ike.events import AddressWanted, NegotiationFailed
from ike.pools import AddressPool
from ike.sa import retransmit
from ike.sa.ike_sa import IkeSa
from ike.sa.outbox import (ChildAdded, ChildRemoved, ChildrenMoved, Datagram, DropSuccessor, Established, Gone,
                           Note, Outbox, Reauthenticate, Registered, ReplaceDuplicates)
from ike.tasks.child_create import ChildCreate, PacketTs
from ike.tasks.child_delete import ChildDelete
from ike.tasks.child_rekey import ChildRekey
from ike.tasks.ike_auth import IkeAuth
from ike.tasks.ike_delete import IkeDelete
from ike.tasks.ike_init import IkeInit, init_error_reply
from ike.tasks.ike_mobike import IkeMobike
from ike.tasks.ike_rekey import IkeRekey
from ike.tasks.states import ChildState, IkeState

__all__ = ["Datagram", "IkeEndpoint", "filed"]

log = structlog.get_logger("ike")

INVALID_IKE_SPI_PER_SECOND = 10
# RFC 8019 limits on half-open (responder, not yet authenticated) IKE SAs; see the README's
# Reliability section for how the defaults were chosen
HALF_OPEN_PER_IP = 5  # strongSwan's charon.block_threshold
HALF_OPEN_LIMIT = 5000  # strongSwan's charon.init_limit_half_open (unlimited there by default)

Address = tuple[str, int]
Event = object


class PendingInitiate:
    """An initiation waiting for its peer's address: what ``_start_ike`` then starts."""

    __slots__ = ("attempt", "children", "config", "packet_ts")

    def __init__(self, config: ConnectionConfig, children: list[ChildConfig], packet_ts: PacketTs | None,
                 attempt: int) -> None:
        self.config, self.children, self.packet_ts, self.attempt = config, children, packet_ts, attempt


def _is_ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _trace(exc: BaseException) -> str:
    """Where an unexpected error came from, without local variables (they may hold keys)."""
    return "".join(traceback.format_exception(exc, limit=-4)).strip()


def _addr_match(pattern: str, addr: str) -> bool:
    if is_any_addr(pattern) or pattern in ("0.0.0.0", "::"):
        return True
    try:
        if "/" in pattern:
            return ipaddress.ip_address(addr) in ipaddress.ip_network(pattern, strict=False)
        return ipaddress.ip_address(pattern) == ipaddress.ip_address(addr)
    except ValueError:
        return False  # a host name: not resolved in the sans-I/O core


def _file(index: dict, key: object, sa: IkeSa) -> None:
    held = index.get(key)
    if held is None:
        index[key] = sa
    elif isinstance(held, dict):
        held[sa] = None
    elif held is not sa:
        index[key] = {held: None, sa: None}


def _unfile(index: dict, key: object, sa: IkeSa) -> None:
    held = index.get(key)
    if held is sa:
        del index[key]
    elif isinstance(held, dict) and held.pop(sa, 0) is None and not held:
        del index[key]


def filed(index: dict, key: object) -> tuple[IkeSa, ...] | dict[IkeSa, None]:
    """The SAs an index of the endpoint holds under ``key`` (iterable, possibly empty)."""
    held = index.get(key)
    if held is None:
        return ()
    return held if isinstance(held, dict) else (held,)


class IkeEndpoint:
    def __init__(self, connections: list[ConnectionConfig], *, rng: Callable[[int], bytes],
                 cookie_threshold: int = 10, now: float = 0.0, retransmit_timeout: float = retransmit.TIMEOUT,
                 retransmit_base: float = retransmit.BASE, retransmit_tries: int = retransmit.TRIES,
                 half_open_limit: int = HALF_OPEN_LIMIT, half_open_per_ip: int = HALF_OPEN_PER_IP,
                 pools: list[AddressPool] | None = None):
        self.connections = {c.name: c for c in connections}
        self.pools: dict[str, AddressPool] = {p.name: p for p in pools or ()}  # virtual IPs, by name
        self.rng = rng
        # raises ValueError for a schedule that would never give up or never wait
        self.retransmit_schedule = retransmit.RetransmitSchedule(retransmit_timeout, retransmit_base, retransmit_tries)
        self.cookie_threshold = cookie_threshold
        if half_open_limit < 1 or half_open_per_ip < 1:
            raise ValueError("half-open limits must be at least 1")
        self.half_open_limit, self.half_open_per_ip = half_open_limit, half_open_per_ip
        self.cookies = CookieJar(rng, now)
        self.outbox = Outbox()
        self.drops = self.outbox.drops
        self.counts = self.outbox.counts  # retransmits, DPD results (Outbox.counts)
        self.sas: dict[bytes, IkeSa] = {}  # by our SPI
        # responder SAs not yet authenticated, by (SPIi, peer IP): the port is left out so that one
        # request (or one cookie) replayed from other ports, or with other payloads, is not a new SA
        self.half_open: dict[tuple[bytes, str], IkeSa] = {}
        self._connecting: dict[IkeSa, None] = {}  # the same SAs, oldest first (evicted first)
        self._half_open_by_ip: dict[str, int] = {}
        self.child_index: dict[int, IkeSa] = {}  # inbound ESP SPI -> IKE SA
        # SPIs handed out during the current entry, not yet filed (an SA is filed when settled)
        self._spis_given: set[object] = set()
        # Established, not yet dead IKE SAs, so per-handshake look-ups need not scan all SAs:
        # established SAs by (connection, remote identity) and by connection name: one SA as is,
        # several in a dict (most peers have one SA, and an empty dict alone costs 200+ bytes)
        self._by_peer_id: dict[tuple, IkeSa | dict[IkeSa, None]] = {}
        self._by_name: dict[str, IkeSa | dict[IkeSa, None]] = {}
        # Timer deadlines: a heap of (deadline, entry number, our SPI); an entry is current only
        # while its SA's ``timer_entry`` is that number (lazy deletion). SAs entered since the last
        # look-up are queued in ``_timer_dirty`` and their deadlines re-read before the next one.
        self._timers: list[tuple[float, int, bytes]] = []
        self._timer_dirty = self.outbox.touched
        self._timer_seq = itertools.count(1)
        self._events: deque[Event] = deque()
        self._unique = 0
        self._restarts: list[tuple[str, str | None]] = []  # (connection, child or all) to initiate
        self._resolving: dict[str, PendingInitiate] = {}  # connection -> initiation waiting for its address
        self._invalid_spi_window, self._invalid_spi_sent = now, 0  # rate limit of INVALID_IKE_SPI

    # --- services for IKE SAs (ike.sa.ike_sa.Host) ----------------------------------------------
    def next_unique_id(self) -> int:
        self._unique += 1
        return self._unique

    def count_drop(self, reason: str) -> None:
        self.outbox.count_drop(reason)

    def new_ike_spi(self) -> bytes:
        while True:
            spi = self.rng(8)
            if spi != bytes(8) and spi not in self.sas and spi not in self._spis_given:
                self._spis_given.add(spi)
                return spi

    def new_child_spi(self) -> int:
        while True:
            spi = struct.unpack("!I", self.rng(4))[0]
            # 1-255 are reserved (RFC 4303)
            if spi >= 256 and spi not in self.child_index and spi not in self._spis_given:
                self._spis_given.add(spi)
                return spi

    def first_contact(self, sa: IkeSa) -> bool:
        """Whether no other IKE SA of this connection to the same peer is up (send INITIAL_CONTACT)."""
        return not any(o is not sa and o.remote[0] == sa.remote[0] and o.state != IkeState.DEAD
                       for o in filed(self._by_name, sa.name))

    def duplicates(self, sa: IkeSa) -> list[IkeSa]:
        """Other live IKE SAs of the same connection with the same peer identity."""
        return [o for o in filed(self._by_peer_id, (sa.name, sa.remote_id))
                if o is not sa and o.state != IkeState.DEAD]

    def half_open_count(self) -> int:
        """Responder IKE SAs waiting for IKE_AUTH (RFC 7296 s2.6 cookie threshold)."""
        return len(self._connecting)

    def configs_for(self, local: Address, remote: Address) -> list[ConnectionConfig]:
        return [c for c in self.connections.values()
                if (not c.local_addrs or any(_addr_match(p, local[0]) for p in c.local_addrs))
                and (not c.remote_addrs or any(_addr_match(p, remote[0]) for p in c.remote_addrs))]

    # --- the SA indexes ------------------------------------------------------------------------
    def _register(self, sa: IkeSa, half_open_key: tuple[bytes, str] | None = None) -> None:
        self.sas[sa.our_spi] = sa
        self._timer_dirty[sa] = None
        if sa.established_at is not None:  # a rekeyed IKE SA is established before it is filed
            self._index_established(sa)
        if half_open_key is not None:
            sa.half_open_key = half_open_key
            self.half_open[half_open_key] = sa
            self._connecting[sa] = None
            ip = half_open_key[1]
            self._half_open_by_ip[ip] = self._half_open_by_ip.get(ip, 0) + 1

    def _unregister(self, sa: IkeSa) -> None:
        """Drop a dead SA from every structure at once (its keys are gone already)."""
        if self.sas.get(sa.our_spi) is sa:
            del self.sas[sa.our_spi]
        self._drop_half_open(sa)
        for index, key in ((self._by_peer_id, sa.peer_key), (self._by_name, sa.indexed_name)):
            if key is not None:
                _unfile(index, key, sa)
        sa.peer_key = sa.indexed_name = None
        self._timer_dirty.pop(sa, None)
        sa.timer_entry = sa.timer_at = None  # its heap entry (SPI only) is stale from now on
        for spi in [spi for spi, owner in self.child_index.items() if owner is sa] if sa.children else ():
            del self.child_index[spi]

    def adopt(self, sa: IkeSa) -> None:
        """File an IKE SA built outside the endpoint (a test replaying a recorded exchange)."""
        self._register(sa)

    def _drop_half_open(self, sa: IkeSa) -> None:
        if self._connecting.pop(sa, 0) is None:
            ip = sa.half_open_key[1] if sa.half_open_key else ""
            left = self._half_open_by_ip.get(ip, 1) - 1
            if left > 0:
                self._half_open_by_ip[ip] = left
            else:
                self._half_open_by_ip.pop(ip, None)
        key = sa.half_open_key
        if key is not None and self.half_open.get(key) is sa:
            del self.half_open[key]
        sa.half_open_key = None

    def _index_established(self, sa: IkeSa) -> None:
        """Name and identity are final once an SA is up (IKE_AUTH picked the connection)."""
        if sa.indexed_name is not None:
            return
        sa.peer_key, sa.indexed_name = (sa.name, sa.remote_id), sa.name
        _file(self._by_peer_id, sa.peer_key, sa)
        _file(self._by_name, sa.name, sa)

    # --- after every entry: what the SAs reported ----------------------------------------------
    def _settle(self, now: float) -> None:
        """Apply the SAs' notes in order and queue their events; restarts run last, when every SA
        they follow from is gone, so no policy runs inside a tear-down."""
        todo = deque(self.outbox.take())
        while todo:
            item = todo.popleft()
            if isinstance(item, Note):
                self._timer_dirty[item.sa] = None
                self._apply(item, now)
                todo.extendleft(reversed(self.outbox.take()))  # what it caused comes next
            else:
                self._events.append(item)
        self._spis_given.clear()
        restarts, self._restarts = self._restarts, []
        for connection, child in restarts:
            if connection in self.connections:
                log.info("restarting", ike=connection, child=child)
                try:
                    self.initiate(connection, child, now)
                except (KeyError, ValueError) as exc:  # the configuration changed meanwhile
                    log.error("restart_failed", ike=connection, child=child, error=str(exc))

    def _apply(self, note: Note, now: float) -> None:
        sa = note.sa
        if isinstance(note, ChildAdded):
            self.child_index[note.spi] = sa
        elif isinstance(note, ChildRemoved):
            if self.child_index.get(note.spi) is sa:
                del self.child_index[note.spi]
            if note.reason == "deleted by peer" and note.config.close_action in ("start", "restart"):
                self._restart_later(sa.config, note.config.name)
        elif isinstance(note, ChildrenMoved):
            for spi in note.spis:
                self.child_index[spi] = sa
        elif isinstance(note, Established):
            self._drop_half_open(sa)
            if self.sas.get(sa.our_spi) is sa:
                self._index_established(sa)
        elif isinstance(note, Registered):
            if sa.state != IkeState.DEAD:
                self._register(sa)
        elif isinstance(note, Gone):
            self._unregister(sa)
            self._after_gone(note, now)
        elif isinstance(note, ReplaceDuplicates):
            # INITIAL_CONTACT (or unique = replace): without the notify the peer may still hold
            # them, so it is told; with it, they are gone already
            for other in self.duplicates(sa):
                other.log("replaced", new_ike_id=sa.unique_id)
                other.destroy("replaced", now)
        elif isinstance(note, Reauthenticate):
            self._reauthenticate(sa, now)
        elif isinstance(note, DropSuccessor):
            for other in list(filed(self._by_name, sa.name)):
                if other.rekeyed_from == sa.unique_id and other.state != IkeState.DEAD:
                    other.destroy("rekey failed", now)

    def _after_gone(self, note: Gone, now: float) -> None:
        """The restart policy: dpd_action = restart, close_action = start/restart, keyingtries."""
        sa, config = note.sa, note.sa.config
        if note.reason == "dead peer" and note.was_up:
            restart = [c.name for c in config.children if c.dpd_action == "restart"]
            if restart:
                sa.log("restarting_after_dead_peer", children=restart)
                for name in restart if len(restart) < len(config.children) else [None]:
                    self._restart_later(config, name)
        elif note.reason == "deleted by peer" and note.was_up:
            for cfg in config.children:
                if cfg.close_action in ("start", "restart"):
                    self._restart_later(config, cfg.name)
        elif note.reason == "dead peer" and note.connecting_initiator:
            self._retry_connect(sa, now)

    def _restart_later(self, config: ConnectionConfig, child: str | None) -> None:
        if config.name not in self.connections or not concrete_addrs(config.remote_addrs):
            return
        if (config.name, child) not in self._restarts:
            self._restarts.append((config.name, child))

    def _retry_connect(self, sa: IkeSa, now: float) -> None:
        """keyingtries: a connection attempt that got no answer is started again (0 = forever)."""
        tries = sa.config.keyingtries
        if sa.config.name not in self.connections or (tries and sa.attempt >= tries):
            return
        children, packet_ts = sa.initiated or ([], None)
        sa.log("retrying_connect", attempt=sa.attempt + 1, keyingtries=tries)
        self._start_ike(sa.config, children, packet_ts, now, attempt=sa.attempt + 1)  # type: ignore[arg-type]

    def _reauthenticate(self, old: IkeSa, now: float) -> None:
        """reauth_time: a fresh IKE SA (new IKE_SA_INIT + IKE_AUTH) with the same CHILD SAs; the
        old one is deleted once they are all up (make-before-break, as strongSwan)."""
        if old.config.name not in self.connections or not concrete_addrs(old.config.remote_addrs):
            old.log("reauth_skipped", why="no concrete remote address to initiate to")
            return
        children: list[ChildConfig] = []
        for child in old.children.values():
            if child.state in (ChildState.INSTALLED, ChildState.REKEYING) and child.config not in children:
                children.append(child.config)
        old.log("reauthenticating", children=[c.name for c in children])
        # a host name is not looked up again here: the new SA goes where the old one is
        new = self._start_ike(old.config, children, None, now, remote_ip=old.remote[0])
        if new is not None:
            new.replaces = old
            new.local_vips = old.local_vips  # asked for again (ike_config), as strongSwan's reauth

    # --- the public API ----------------------------------------------------------------------
    def receive_datagram(self, data: bytes, src: Address, dst: Address, now: float) -> None:
        try:
            if len(data) > codec.MAX_INIT_MESSAGE and codec.is_ike_sa_init(data):
                self.count_drop("IKE_SA_INIT too large")  # refused before any parsing or crypto
                log.debug("datagram_dropped", src=src, reason=f"IKE_SA_INIT of {len(data)} bytes")
                return
            if self.half_open_count() >= self.cookie_threshold and self._cookie_answered(data, src, dst, now):
                return
            msg = codec.decode(data)
        except codec.MessageError as exc:
            self.count_drop(type(exc).__name__)
            log.debug("datagram_dropped", src=src, reason=str(exc))
            if isinstance(exc, codec.UnsupportedCriticalPayload):
                self._reject_critical_init(data, exc, src, dst)
            return
        except Exception as exc:  # never let a malformed datagram take the daemon down
            self.count_drop("internal error")
            log.error("datagram_crashed_parser", src=src, error=_trace(exc))
            return
        try:
            self._dispatch(data, msg, src, dst, now)
        except Exception as exc:
            self.count_drop("internal error")
            log.error("datagram_processing_failed", src=src, exchange=msg.exchange_name, error=_trace(exc))
        self._settle_safely(now)

    def _settle_safely(self, now: float) -> None:
        try:
            self._settle(now)
        except Exception as exc:
            self.count_drop("internal error")
            log.error("settling_failed", error=_trace(exc))

    def _cookie_answered(self, data: bytes, src: Address, dst: Address, now: float) -> bool:
        """Under load (RFC 7296 s2.6), before any parsing: a new IKE_SA_INIT request without a
        valid COOKIE is answered with one from a minimal parse; True if answered so. A request the
        minimal parse cannot read takes the full path (``_respond_init`` asks the same question)."""
        fields = init_request_fields(data)
        if fields is None:
            return False
        sa = self.half_open.get((data[:8], src[0]))
        if sa is not None:  # a retransmission (answered from its SA) or a replay (dropped there)
            return False
        return self._demand_cookie(data[:8], fields[0], fields[1], src, dst, now)

    def _demand_cookie(self, spi_i: bytes, nonce: bytes, cookie: bytes | None, src: Address, dst: Address,
                       now: float) -> bool:
        """The one cookie check: without a valid cookie, answer with one and keep no state."""
        if cookie is not None and self.cookies.verify(cookie, nonce, src[0], spi_i, now):
            return False
        reply = cookie_reply(spi_i, self.cookies.make(nonce, src[0], spi_i, now))
        self.outbox.datagrams.append(Datagram(reply, dst, src))
        self.count_drop("cookie required")
        return True

    def _reject_critical_init(self, data: bytes, exc: codec.UnsupportedCriticalPayload, src: Address,
                              dst: Address) -> None:
        """An IKE_SA_INIT request with an unknown critical payload is answered (RFC 7296 s2.5)."""
        msg = codec.parse_header(data)
        if msg.exchange == ExchangeType.IKE_SA_INIT and not msg.response and msg.message_id == 0:
            reply = init_error_reply(msg, NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([exc.payload_type & 0xFF]))
            self.outbox.datagrams.append(Datagram(reply, dst, src))

    def _dispatch(self, data: bytes, msg: codec.Message, src: Address, dst: Address, now: float) -> None:
        if msg.exchange == ExchangeType.IKE_SA_INIT and not msg.response:
            if msg.spi_r != bytes(8) or not msg.initiator or msg.message_id != 0:
                self.count_drop("bad IKE_SA_INIT request header")
                return
            sa = self.half_open.get((msg.spi_i, src[0]))
            if sa is not None and sa.init_request == data and sa.remote == src:  # a retransmission
                self._timer_dirty[sa] = None
                sa.receive(data, msg, src, dst, now)
            elif sa is not None:  # the same initiator SPI from the same address: one SA is enough
                self.count_drop("IKE_SA_INIT replayed")
            else:
                self._respond_init(data, msg, src, dst, now)
            return
        our_spi = msg.spi_r if msg.initiator else msg.spi_i
        sa = self.sas.get(our_spi)
        if sa is None or (sa.initiator == msg.initiator):
            self.count_drop("unknown IKE SPI")
            if sa is None:
                self._answer_invalid_ike_spi(msg, src, dst, now)
            return
        if msg.exchange != ExchangeType.IKE_SA_INIT and (msg.spi_i != sa.spi_i or msg.spi_r != sa.spi_r):
            self.count_drop("SPI mismatch")
            return
        self._timer_dirty[sa] = None
        sa.receive(data, msg, src, dst, now)

    def _respond_init(self, data: bytes, msg: codec.Message, src: Address, dst: Address, now: float) -> None:
        """A new IKE_SA_INIT request: a fresh responder SA answers it through its task manager;
        it is filed (half-open) if it accepted, and gone with its answer if it refused."""
        configs = self.configs_for(dst, src)
        if not configs:
            self._events.append(NegotiationFailed("", "IKE_SA_INIT", "NO_PROPOSAL_CHOSEN",
                                                  f"no connection for {src[0]}"))
            self.outbox.datagrams.append(Datagram(init_error_reply(msg, NotifyType.NO_PROPOSAL_CHOSEN), dst, src))
            return
        nonce = msg.get(NoncePayload)
        if nonce is not None and self.half_open_count() >= self.cookie_threshold:
            cookie = msg.notifies().get(NotifyType.COOKIE)
            if self._demand_cookie(msg.spi_i, nonce.data, cookie.data if cookie else None, src, dst, now):
                return
        if self._half_open_by_ip.get(src[0], 0) >= self.half_open_per_ip:  # RFC 8019 s4.1, as block_threshold
            self.count_drop("half-open limit per address")
            return
        sa = IkeSa(self, configs[0], initiator=False, local=dst, remote=src, spi_i=msg.spi_i, spi_r=bytes(8),
                   unique_id=0, now=now)
        sa.candidates = configs
        sa.init_request = data
        sa.receive(data, msg, src, dst, now)
        if sa.state != IkeState.DEAD:
            self._make_room_for_half_open(now)
            self._register(sa, half_open_key=(msg.spi_i, src[0]))

    def _make_room_for_half_open(self, now: float) -> None:
        """At most ``half_open_limit`` half-open SAs in all (RFC 8019 s7): the oldest is evicted,
        so a real peer still gets in during a flood (a flood's SAs are the old ones). Only a request
        that was accepted evicts one."""
        while len(self._connecting) >= self.half_open_limit:
            oldest = next(iter(self._connecting))
            self._drop_half_open(oldest)  # counted out now; the SA is unfiled when settled
            self.count_drop("half-open SA evicted")
            oldest.destroy("evicted (half-open limit)", now)

    def _answer_invalid_ike_spi(self, msg: codec.Message, src: Address, dst: Address, now: float) -> None:
        """RFC 7296 s1.5, s2.21.4: an encrypted request for an IKE SA we do not know (we restarted,
        or it is gone) MAY get an unprotected INVALID_IKE_SPI with its SPIs and message ID. Never
        for a response, and at most INVALID_IKE_SPI_PER_SECOND of them, so spoofed requests cannot
        turn us into a reflector."""
        if msg.response or codec.encrypted_payload(msg) is None:
            return
        if now - self._invalid_spi_window >= 1.0 or now < self._invalid_spi_window:
            self._invalid_spi_window, self._invalid_spi_sent = now, 0
        if self._invalid_spi_sent >= INVALID_IKE_SPI_PER_SECOND:
            self.count_drop("INVALID_IKE_SPI rate limit")
            return
        self._invalid_spi_sent += 1
        reply = codec.Message(msg.spi_i, msg.spi_r, ExchangeType.INFORMATIONAL, msg.message_id,
                              not msg.initiator, True, [NotifyPayload(NotifyType.INVALID_IKE_SPI)])
        self.outbox.datagrams.append(Datagram(codec.encode(reply), dst, src))
        log.debug("invalid_ike_spi_sent", remote=src, exchange=msg.exchange_name)

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        out, self.outbox.datagrams = self.outbox.datagrams, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def _push_timer(self, sa: IkeSa) -> None:
        deadline = sa.next_deadline()
        if sa.timer_entry is not None and sa.timer_at == deadline:
            return  # its current entry still holds
        sa.timer_at = deadline
        if deadline is None:
            sa.timer_entry = None
            return
        sa.timer_entry = entry = next(self._timer_seq)
        heapq.heappush(self._timers, (deadline, entry, sa.our_spi))

    def reschedule(self, sa: IkeSa) -> None:
        """Re-read ``sa``'s deadlines before the next timer look-up: for a caller that changed an
        SA from outside an entry (a test moving a deadline). Entries do this themselves."""
        self._timer_dirty[sa] = None

    def _flush_timers(self) -> None:
        dirty = list(self._timer_dirty)
        self._timer_dirty.clear()
        for sa in dirty:
            if sa.state != IkeState.DEAD and self.sas.get(sa.our_spi) is sa:
                self._push_timer(sa)
        if len(self._timers) > 2 * len(self.sas) + 64:  # too many superseded entries: compact
            self._timers = [e for e in self._timers if self._current(e) is not None]
            heapq.heapify(self._timers)

    def _current(self, entry: tuple[float, int, bytes]) -> IkeSa | None:
        sa = self.sas.get(entry[2])
        return sa if sa is not None and sa.timer_entry == entry[1] else None

    def get_timer(self) -> float | None:
        """The earliest deadline of all SAs (exact: the top entry is re-checked against its SA)."""
        self._flush_timers()
        timers = self._timers
        while timers:
            deadline, _, _ = top = timers[0]
            sa = self._current(top)
            if sa is None:
                heapq.heappop(timers)
            elif sa.next_deadline() != deadline:  # moved later (e.g. DPD after inbound ESP)
                heapq.heappop(timers)
                self._push_timer(sa)
            else:
                return deadline
        return None

    def handle_timer(self, now: float) -> None:
        self._flush_timers()
        due = []
        while self._timers and self._timers[0][0] <= now:
            sa = self._current(heapq.heappop(self._timers))
            if sa is not None:
                sa.timer_entry = None
                due.append(sa)
        for sa in due:
            self._timer_dirty[sa] = None  # pushed again with whatever deadlines it has afterwards
            if sa.state != IkeState.DEAD and any(d <= now for d in sa.deadlines()):
                try:
                    sa.handle_timer(now)
                except Exception as exc:
                    self.count_drop("internal error")
                    log.error("timer_failed", ike=sa.name, error=_trace(exc))
                    sa.destroy("internal error", now)
        self._settle_safely(now)

    def _established_for(self, name: str) -> IkeSa | None:
        """The IKE SA new CHILD SAs of a connection go to: an established one (not a collision's
        undecided SA, preferring the one holding CHILD SAs), else one being set up."""
        up = [sa for sa in filed(self._by_name, name)
              if sa.state == IkeState.ESTABLISHED and not sa.silent and sa.replaces is None]
        if up:
            return max(up, key=lambda sa: (len(sa.children), sa.unique_id))
        return next((sa for sa in self.sas.values() if sa.name == name and sa.state == IkeState.CONNECTING
                     and not sa.silent and sa.replaces is None), None)

    def initiate(self, connection: str, child: str | None, now: float, *,
                 packet_ts: PacketTs | None = None) -> None:
        config = self.connections[connection]
        children = [config.child(child)] if child is not None else list(config.children)
        sa = self._established_for(connection)
        if sa is not None:
            pending = sa.pending_child_configs()
            for cfg in children:
                busy = any(c.config is cfg for c in sa.children.values()) or any(p is cfg for p in pending)
                if not busy or (packet_ts is not None and sa.established):
                    sa.queue_task(ChildCreate(cfg, packet_ts), now)
        else:
            self._start_ike(config, children, packet_ts, now)
        self._settle(now)

    def _start_ike(self, config: ConnectionConfig, children: list[ChildConfig], packet_ts: PacketTs | None,
                   now: float, *, remote_ip: str | None = None, attempt: int = 1) -> IkeSa | None:
        """A new initiator IKE SA; None while its peer's host name is being looked up."""
        remote = concrete_addrs(config.remote_addrs)
        if not remote:
            raise ValueError(f"connection {config.name!r} has no concrete remote address to initiate to")
        if remote_ip is None:
            if not _is_ip_literal(remote[0]):
                self._want_address(config, remote[0], children, packet_ts, attempt)
                return None
            remote_ip = remote[0]
        local = concrete_addrs(config.local_addrs)
        local_ip = local[0] if local else ("::" if ":" in remote_ip else "0.0.0.0")
        sa = IkeSa(self, config, initiator=True, local=(local_ip, config.local_port),
                   remote=(remote_ip, config.remote_port), spi_i=self.new_ike_spi(), spi_r=bytes(8),
                   unique_id=self.next_unique_id(), now=now)
        sa.initiated = (list(children), packet_ts)
        sa.attempt = attempt
        self._register(sa)
        sa.queue.append(IkeInit(config.proposals))
        sa.queue.append(IkeAuth(children[0] if children else None, packet_ts))
        for cfg in children[1:]:
            sa.queue.append(ChildCreate(cfg))
        sa.log("initiating", remote=sa.remote, attempt=sa.attempt)
        sa.kick(now)
        return sa

    def _want_address(self, config: ConnectionConfig, host: str, children: list[ChildConfig],
                      packet_ts: PacketTs | None, attempt: int) -> None:
        """Ask the user for ``host``'s address (``AddressWanted``); a second initiation of the same
        connection meanwhile joins the first instead of asking again."""
        pending = self._resolving.get(config.name)
        if pending is not None and pending.config is config:
            pending.children.extend(c for c in children if c not in pending.children)
            return
        pending = self._resolving[config.name] = PendingInitiate(config, list(children), packet_ts, attempt)
        self._events.append(AddressWanted(config.name, host, attempt, pending))

    def initiate_to(self, request: object, address: str, now: float) -> None:
        """Go on with an initiation that waited for its peer's address (``AddressWanted``)."""
        if not isinstance(request, PendingInitiate) or self._resolving.get(request.config.name) is not request:
            return  # abandoned, or the connection was replaced or removed meanwhile
        del self._resolving[request.config.name]
        if self.connections.get(request.config.name) is not request.config:
            return
        self._start_ike(request.config, request.children, request.packet_ts, now, remote_ip=address,
                        attempt=request.attempt)
        self._settle(now)

    def abandon(self, request: object) -> None:
        """Give up an initiation whose peer's address could not be found."""
        if isinstance(request, PendingInitiate) and self._resolving.get(request.config.name) is request:
            del self._resolving[request.config.name]

    def resolving(self, connection: str) -> bool:
        """Whether an initiation of ``connection`` waits for its peer's address."""
        return connection in self._resolving

    def terminate_ike(self, connection: str, now: float) -> None:
        self._resolving.pop(connection, None)  # an initiation waiting for its address ends too
        for sa in list(self.sas.values()):
            if sa.name != connection or sa.state == IkeState.DEAD:
                continue
            if sa.established:
                sa.queue_task(IkeDelete("deleted"), now, first=True)
            else:
                sa.destroy("deleted", now)
        self._settle(now)

    def terminate_child(self, child: str, now: float) -> None:
        for sa in list(self.sas.values()):
            for c in list(sa.children.values()):
                if c.name == child and c.state in (ChildState.INSTALLED, ChildState.REKEYING):
                    sa.queue_task(ChildDelete(c, "deleted"), now)
        self._settle(now)

    def rekey_child(self, inbound_spi: int, now: float) -> None:
        sa = self.child_index.get(inbound_spi)
        child = sa.children.get(inbound_spi) if sa else None
        if sa is None or child is None or child.state != ChildState.INSTALLED or not sa.established:
            return
        child.rekey_at = None
        self._timer_dirty[sa] = None
        if not any(isinstance(t, ChildRekey) and t.child is child for t in sa.queue):
            sa.queue_task(ChildRekey(child), now)
        self._settle(now)

    def rekey_ike(self, connection: str, now: float) -> int:
        """Rekey the connection's established IKE SAs now; how many were asked."""
        count = 0
        for sa in list(self.sas.values()):
            if sa.name == connection and sa.established and not sa.has_task(IkeRekey):
                sa.rekey_at = None
                self._timer_dirty[sa] = None
                sa.queue_task(IkeRekey(), now)
                count += 1
        self._settle(now)
        return count

    def set_connection(self, config: ConnectionConfig) -> None:
        """Add or replace a connection at runtime; SAs set up from an old version keep it."""
        self.connections[config.name] = config

    def set_pool(self, pool: AddressPool) -> None:
        """Add or replace an address pool (vici load-pool); a replaced pool's leases are gone."""
        self.pools[pool.name] = pool

    def remove_pool(self, name: str) -> bool:
        """Forget a pool (vici unload-pool); SAs holding its addresses keep them until they end."""
        return self.pools.pop(name, None) is not None

    def remove_connection(self, connection: str) -> None:
        """Forget a connection (terminate its SAs first): nothing restarts or accepts it again."""
        self.connections.pop(connection, None)
        self._resolving.pop(connection, None)

    def roaming_sas(self) -> list[tuple[int, Address, Address]]:
        """(unique id, local, remote) of the established IKE SAs we initiated with MOBIKE from a
        connection without a concrete local address (``%any``: a roaming client): the ones whose
        local address the daemon watches (RFC 4555: the initiator moves the SA). A gateway bound to
        configured addresses stays on them whatever source the kernel would prefer."""
        return [(sa.unique_id, sa.local, sa.remote) for sa in self.sas.values()
                if sa.state == IkeState.ESTABLISHED and sa.mobike and sa.initiator and not sa.silent
                and not concrete_addrs(sa.config.local_addrs)]

    def roam(self, unique_id: int, local_ip: str, now: float) -> bool:
        """Our address towards the peer of IKE SA ``unique_id`` is now ``local_ip``: tell the peer
        (UPDATE_SA_ADDRESSES, RFC 4555 s3.5). False if there is no such MOBIKE SA."""
        sa = next((s for s in self.sas.values() if s.unique_id == unique_id and s.state == IkeState.ESTABLISHED
                   and s.mobike), None)
        if sa is None:
            return False
        if sa.local[0] != local_ip:
            sa.log("local_address_changed", old=sa.local[0], new=local_ip)
            sa.local = (local_ip, sa.local[1])
            if not any(isinstance(t, IkeMobike) and t.kind == "update" for t in sa.queue):
                sa.queue_task(IkeMobike("update"), now)
        self._settle(now)
        return True

    def esp_from(self, inbound_spi: int, src: Address, now: float) -> bool:
        """Authentic ESP-in-UDP for CHILD SA ``inbound_spi`` came from ``src``, not from the IKE SA's
        peer address: a peer behind a NAT whose mapping changed (RFC 3948 s2.2; the kernel's
        XFRM_MSG_MAPPING that charon follows). The SA follows if the peer is behind a NAT and we
        are not; with MOBIKE only a new port of the same address (a new address is a move, which
        only UPDATE_SA_ADDRESSES and its return routability check may make). True if it moved."""
        sa = self.child_index.get(inbound_spi)
        if (sa is None or sa.state != IkeState.ESTABLISHED or not sa.nat_remote or sa.nat_local
                or src == sa.remote or (sa.mobike and src[0] != sa.remote[0])):
            return False
        sa.log("peer_address_changed", old=sa.remote, new=src, by="esp")
        sa.remote = src
        sa.addresses_moved(now)
        self._settle(now)
        return True

    def note_inbound_esp(self, inbound_spi: int, now: float) -> None:
        sa = self.child_index.get(inbound_spi)
        if sa is not None and now > sa.last_inbound:
            sa.last_inbound = now  # DPD only moves later: the heap entry is re-checked lazily

    def key_snapshot(self) -> list[dict]:
        """IKE keys of the live SAs for ``tunnel.ops.keyexport`` (the operator asked for them)."""
        rows = [sa.key_row() for sa in self.sas.values() if sa.state != IkeState.DEAD]
        return [r for r in rows if r is not None]

    def status(self) -> list[dict]:
        return list(self.statuses())

    def statuses(self) -> Iterator[dict]:
        """Each live IKE SA's status, one at a time (a caller encoding thousands need not hold all)."""
        return (sa.status() for sa in self.sas.values() if sa.state != IkeState.DEAD)
