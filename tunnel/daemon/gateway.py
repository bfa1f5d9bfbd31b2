"""``espgw run``: the gateway daemon.

One thread, one selector loop. It owns every piece of I/O the sans-I/O cores need: the TUN
device, raw ESP sockets, UDP 500/4500, the control socket and the clock. IKE (``ike.endpoint``)
gets datagrams and time and answers with datagrams, events and a deadline; the events install
and remove CHILD SAs in the data plane (``tunnel.dataplane``). Packets no SA covers go to the
on-demand traps (``tunnel.daemon.traps``); the control socket's reports are built by
``tunnel.daemon.status``.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import os
import select
import selectors
import signal
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any
from collections.abc import Callable

import structlog
from pyroute2 import IPRoute

from esp.sadb import SADatabase
from ike.config import ConnectionConfig
from ike.endpoint import IkeEndpoint
from ike.events import (Address, AddressWanted, ChildSaDown, ChildSaUp, IkeSaDown, IkeSaMoved, IkeSaUp,
                        NegotiationFailed)
from ike.tasks.states import IkeState
from tunnel.daemon import metrics, reload, startup, status
from tunnel.daemon.resolver import Resolver
from tunnel.daemon.roaming import Roaming
from tunnel.daemon.traps import Traps
from tunnel.daemon.vici import ViciDaemon
from tunnel.daemon.virtual_ip import VirtualIpClient, pool_networks
from tunnel.dataplane.child import ChildPath, inner_mtu, send_with_mtu
from tunnel.dataplane.gro import TcpCoalescer
from tunnel.dataplane.receive import DropLog, EspReceiver, InboundFilter
from tunnel.dataplane.transmit import TxBatcher, make_transmit
from tunnel.dataplane.policy import PolicyTable
from tunnel.kernel.pmtu import path_mtu
from tunnel.kernel.routes import RouteTable
from tunnel.kernel.tun import TunDevice
from tunnel.kernel.tx_ring import RingSet
from tunnel.kernel.raw_esp import RawEspSocket
from tunnel.kernel.udp import UdpIkeSockets
from tunnel.ops.config import Config, ConfigError, load_config
from tunnel.ops.control import ControlError, ControlServer
from tunnel.ops.log import configure_from_config, is_secret_key

log = structlog.get_logger("espgw")

BATCH = 64
HOUSEKEEPING_INTERVAL = 1.0
# Handshakes churn through short-lived buffers (messages, DH values); glibc keeps freed heap
# memory mapped until told otherwise, so the daemon gives it back to the kernel now and then.
TRIM_INTERVAL = 10.0
PMTU_CACHE_SECONDS = 60.0  # the kernel's PMTU knowledge changes rarely; one netlink query a minute per peer
REKEY_GRACE = 2.0  # seconds a rekeyed inbound SA keeps accepting packets after its delete
RESOLVE_RETRY_DELAY = 10.0  # seconds between keyingtries when a peer's host name does not resolve
# control commands that only read: logged at debug (espgw initiate polls ``events``)
READ_ONLY_COMMANDS = frozenset({"status", "list-sas", "list-conns", "events"})


def _concrete(addrs: list[str]) -> list[str]:
    return [a for a in addrs if not a.startswith("%") and "/" not in a]


class Gateway:
    """The daemon's state; ``run()`` loops until SIGTERM/SIGINT or ``stop()``."""

    # set by open()
    tun: TunDevice
    gro: TcpCoalescer  # decrypted TCP segments merged per receive batch
    receiver: EspReceiver  # decapsulates a receive batch into the GRO
    routes: RouteTable
    raw_v4: RawEspSocket
    udp: UdpIkeSockets
    control: ControlServer

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[int], bytes] = os.urandom, resolver: Resolver | None = None) -> None:
        self.config = config
        self.settings = config.gateway
        self.clock = clock
        self.started = clock()
        self.force_udp = self.settings.esp_encap == "udp"
        if self.force_udp:  # both sides must agree to encapsulate: IKE then fakes NAT detection
            for conn in config.connections:
                conn.encap = True
        self.ike = IkeEndpoint(config.connections, rng=rng, now=self.started,
                               retransmit_timeout=self.settings.retransmit_timeout,
                               retransmit_base=self.settings.retransmit_base,
                               retransmit_tries=self.settings.retransmit_tries,
                               cookie_threshold=self.settings.cookie_threshold,
                               half_open_limit=self.settings.half_open_limit,
                               half_open_per_ip=self.settings.half_open_per_ip, pools=config.pools)
        self.sadb = SADatabase()
        self.policy = PolicyTable()
        self.inbound_ok = InboundFilter(self.policy)  # cleared on every policy change below
        self.traps = Traps(self.settings.queue_size)
        self.children: dict[int, ChildPath] = {}  # by inbound SPI
        # A lineage is a CHILD SA and its rekeyed successors: one policy (keyed by the first SA's
        # key) that sends through one of them, ``routed``, and accepts what arrives on any of them.
        self.routed: dict[tuple, ChildPath] = {}
        # lineage -> its live SAs; a tuple, as most lineages have one SA (a dict each: ~220 B more)
        self.lineages: dict[tuple, tuple[ChildPath, ...]] = {}
        self._pmtu_cache: dict[str, tuple[float, int]] = {}  # peer -> (looked up at, path MTU)
        self.pending: dict[int, ChildPath] = {}  # inbound SPI -> a successor not yet sent through
        self.retiring: deque[tuple[float, ChildPath]] = deque()  # (when, rekeyed SA) in order
        self.dying: set[int] = set()  # inbound SPIs of deleted SAs still accepting stragglers
        self._generation = 0
        self.totals = status.Totals()
        self.drops: dict[str, int] = {}  # gateway-level drops (no SA for a packet, trap queue full)
        # IKE SAs by unique id: their connection's name, and (local, remote) for NAT keepalives
        # of those behind a NAT; not the IkeSaUp events (~200 B each with the remote's ID text)
        self.ike_sa_names: dict[int, str] = {}
        self.nat_keepalives: dict[int, tuple[Address, Address]] = {}
        self.failures: deque[dict] = deque(maxlen=20)
        self._init_operations(resolver)
        self.event_counts = metrics.EventCounts()  # handshakes, failures, rekeys (for the metrics endpoint)
        self.drop_log = DropLog(clock)
        # The loop polls one epoll set: fd -> zero-argument handler. The control server keeps its
        # own selector (its clients come and go), watched here as one more fd.
        self._poll = select.epoll()
        self._handlers: dict[int, Callable[[], None]] = {}
        self._ike_fed = True  # IKE took input since the loop last read its deadline
        self.selector = selectors.DefaultSelector()
        self._stopping = False
        self._next_housekeeping = self.started
        self._next_keepalive = self.started + self.settings.keep_alive
        self.roaming = Roaming(self)  # MOBIKE: our address changes, SAs that moved
        self._next_trim = self.started + TRIM_INTERVAL
        self._wakeup_r = self._wakeup_w = -1
        # The devices and sockets (tun, gro, receiver, routes, raw_v4, udp, control: see the class
        # body) exist from open() on; close() releases those it finds.
        self.raw_v6: RawEspSocket | None = None
        self.vici: ViciDaemon | None = None  # the vici socket, if configured (open())
        # what a loop turn sends: ESP-in-UDP per SA with GSO, raw IPv4 ESP through TX rings
        self.udp_out = TxBatcher(RingSet() if self.settings.raw_esp_tx == "ring" else None, clock=clock)
        self.icmp_v4: str | None = None
        self.icmp_v6: str | None = None
        # client mode: virtual IPs on the TUN, their routes and DNS servers (tunnel.daemon.virtual_ip)
        self.virtual_ips = VirtualIpClient(self.settings.tun_name, Path(self.settings.control_socket).parent
                                           / f"{self.settings.tun_name}-vip.json", self.settings.dns)
        self.pool_routes: set[str] = set()  # gateway mode: the pools' networks routed into the TUN

    # --- set-up and tear-down ---------------------------------------------------------------
    def open(self) -> None:
        local = sorted({a for c in self.config.connections for a in c.local_addrs})
        concrete = _concrete(local)
        wildcard = len(concrete) != len(local) or not local  # none yet: vici may load any
        v4 = [a for a in concrete if ipaddress.ip_address(a).version == 4]
        v6 = [a for a in concrete if ipaddress.ip_address(a).version == 6]
        udp_addrs = (["0.0.0.0", "::"] if wildcard else concrete)
        self.udp = UdpIkeSockets(udp_addrs, gro=True)
        self.raw_v4 = RawEspSocket(socket.AF_INET, v4[0] if v4 and not wildcard else "0.0.0.0")
        if v6 or wildcard:
            self.raw_v6 = RawEspSocket(socket.AF_INET6, v6[0] if v6 and not wildcard else "::")
        self.tun = TunDevice.create(self.settings.tun_name, self.settings.mtu, vnet_hdr=True)
        self.gro = TcpCoalescer(self.tun.write, self.tun.write_gso)
        self.receiver = EspReceiver(self.sadb, self.inbound_ok, self.gro.add, self.drop_log)
        self.routes = RouteTable(self.tun.name)
        self._install_routes()
        self.control = ControlServer(self.settings.control_socket, self.handle_control, selector=self.selector)
        if self.settings.vici_socket:
            self.vici = ViciDaemon(self, self.settings.vici_socket, self.selector)
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        self.watch(self.resolver.fileno(), self.resolver.deliver)
        self.watch(self.tun.fd, self._on_tun)
        self.watch(self.raw_v4.fd, functools.partial(self._on_raw, self.raw_v4))
        if self.raw_v6 is not None:
            self.watch(self.raw_v6.fd, functools.partial(self._on_raw, self.raw_v6))
        for fd in self.udp.fds():
            self.watch(fd, functools.partial(self._on_udp, fd))
        self.watch(self._wakeup_r, self._on_wakeup)
        self.watch(self.selector.fileno(), self._on_control)
        log.info("started", tun=self.tun.name, mtu=self.tun.mtu, connections=[c.name for c in self.config.connections],
                 udp_ports=(self.udp.ike_port, self.udp.nat_port), esp_encap=self.settings.esp_encap)
        self._start_connections()

    def _install_routes(self) -> None:
        """Route every child's remote subnets into the TUN, sourced from our address in its local subnets."""
        own = _local_addresses()
        self.sync_pool_routes()  # to virtual IPs
        for conn in self.config.connections:
            if conn.vips:  # a client's routes come with its virtual IP (tunnel.daemon.virtual_ip)
                continue
            for child in conn.children:
                for remote in child.remote_ts:
                    src = next((str(a) for a in own for ts in child.local_ts
                                if a.version == remote.version and ts.contains_addr(a)), None)
                    if remote.version == 4 and src and not self.icmp_v4:
                        self.icmp_v4 = src
                    if remote.version == 6 and src and not self.icmp_v6:
                        self.icmp_v6 = src
                    for net in ipaddress.summarize_address_range(remote.start_addr, remote.end_addr):
                        if str(net) not in self.routes.routes:
                            self.routes.add(str(net), src=src)

    def _start_connections(self) -> None:
        now = self.clock()
        for conn in self.config.connections:
            self._start_connection(conn, now)
        self.pump(now)

    def _start_connection(self, conn: ConnectionConfig, now: float) -> None:
        """Its traps, and the children with ``start_action = start`` initiated."""
        for child in conn.children:
            if child.start_action == "trap":
                self.traps.add(conn, child)
        starting = [c.name for c in conn.children if c.start_action == "start"]
        if starting:
            self._initiate(conn.name, None if len(starting) == len(conn.children) else starting[0], now)
            for name in starting[1:] if len(starting) != len(conn.children) else []:
                self._initiate(conn.name, name, now)

    # --- runtime configuration changes (vici's load-conn/unload-conn; a future reload) --------
    def apply_connection(self, conn: ConnectionConfig, now: float) -> str:
        """Add ``conn``, or replace the connection of its name: "added", "replaced" or "unchanged".
        An unchanged connection keeps its SAs; a replaced one is torn down (at the peer too) and
        set up again as its start actions say."""
        if self.force_udp:
            conn.encap = True
        old = next((c for c in self.config.connections if c.name == conn.name), None)
        if old is not None and reload.same_connection(old, conn):
            return "unchanged"
        was_up: list[str] = []
        if old is not None:
            was_up = sorted({str(c.get("name")) for sa in self.ike.statuses() if sa.get("name") == conn.name
                             for c in sa.get("children", [])})
            self.remove_connection(conn.name, now)
        self.config.connections.append(conn)
        self.ike.set_connection(conn)
        self._install_routes()
        self._start_connection(conn, now)
        for child in was_up:  # what was up comes up again with the new settings
            if any(c.name == child and c.start_action != "start" for c in conn.children):
                self._initiate(conn.name, child, now)
        self.pump(now)
        log.info("connection.loaded", connection=conn.name, replaced=old is not None)
        return "added" if old is None else "replaced"

    def remove_connection(self, name: str, now: float) -> ConnectionConfig:
        """Delete the connection's SAs (at the peer too), its traps and the routes only it needed."""
        conn = self.config.connection(name)  # KeyError if there is none
        self.ike.terminate_ike(name, now)
        self.ike.remove_connection(name)
        self.traps.remove(conn)
        self.config.connections.remove(conn)
        still_routed = self._selector_networks() | self._pool_networks()
        for child in conn.children:
            for ts in child.remote_ts:
                for net in ipaddress.summarize_address_range(ts.start_addr, ts.end_addr):
                    if str(net) not in still_routed and str(net) in self.routes.routes:
                        self.routes.remove(str(net))
        self.sync_pool_routes()  # its pools may be used by no connection now
        self.pump(now)
        log.info("connection.removed", connection=name)
        return conn

    def _selector_networks(self) -> set[str]:
        """The networks routed for the gateway-mode connections' remote selectors."""
        return {str(net) for c in self.config.connections if not c.vips for child in c.children
                for ts in child.remote_ts for net in ipaddress.summarize_address_range(ts.start_addr, ts.end_addr)}

    def _pool_networks(self) -> set[str]:
        return {str(net) for net in pool_networks(self.config.connections, list(self.ike.pools.values()))}

    def sync_pool_routes(self) -> None:
        """Route into the TUN the pools some connection lends from, and no other: a pool unloaded
        (vici), replaced by another range, or left without a connection (a reload, unload-conn)
        loses its route, unless a remote selector still needs that network."""
        wanted = self._pool_networks()
        stale = self.pool_routes - wanted
        if stale:
            needed = self._selector_networks()
            for net in sorted(stale):
                self.pool_routes.discard(net)
                if net not in needed and net in self.routes.routes:
                    self.routes.remove(net)
                    log.info("pool.route_removed", dst=net)
        for net in sorted(wanted - self.pool_routes):
            if net not in self.routes.routes:
                self.routes.add(net)
            self.pool_routes.add(net)

    def close(self) -> None:
        """Delete our IKE SAs at the peer (best effort), then release every resource."""
        if hasattr(self, "udp"):
            now = self.clock()
            for name in set(self.ike_sa_names.values()):
                self.ike.terminate_ike(name, now)
            self.pump(now)
        self.virtual_ips.close()
        for name in ("vici", "control", "tun", "raw_v4", "raw_v6", "udp", "resolver"):
            closer = getattr(self, name, None)
            if closer is not None:
                try:
                    closer.close()
                except OSError:
                    pass
        for closer in (self.udp_out.rings,):
            if closer is not None:
                try:
                    closer.close()
                except OSError:
                    pass
        if hasattr(self, "routes"):
            self.routes.remove_all()
        if self._wakeup_w >= 0:
            signal.set_wakeup_fd(-1)
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
            self._wakeup_r = self._wakeup_w = -1
        self.selector.close()
        self._poll.close()
        self._handlers.clear()
        log.info("stopped")

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:  # reloaded by the loop (_on_wakeup), never inside a handler
            self._reload_requested = True
            try:
                os.write(self._wakeup_w, b"H")  # the signal's own wake-up may have been read already
            except OSError:
                pass
            return
        self._stopping = True

    def _on_wakeup(self) -> None:
        try:
            os.read(self._wakeup_r, 512)
        except BlockingIOError:
            pass
        if self._reload_requested:
            self._reload_requested = False
            self.reload_on_signal()

    def _on_control(self) -> None:
        for key, mask in self.selector.select(0):
            key.data(mask)

    def watch(self, fd: int, handler: Callable[[], None]) -> None:
        """Call ``handler()`` from the loop whenever ``fd`` is readable."""
        self._poll.register(fd, select.EPOLLIN)
        self._handlers[fd] = handler

    def stop(self) -> None:
        self._stopping = True

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        # Every turn of an idle gateway starts with cold CPU caches, and on a busy machine each
        # packet's hop through the gateways runs back to back on one CPU: the work between
        # waking and sending is the latency. So a turn does only what its events need: IKE's
        # deadline is read again only after IKE took input (a heap walk; inbound ESP only moves
        # DPD later, and waking at a deadline that has since moved costs one idle turn), IKE is
        # pumped only after it was fed, and the clock decides whether timers are due at all.
        poll, handlers, clock, flush = self._poll.poll, self._handlers, self.clock, self.udp_out.flush
        timer: float | None = None
        while not self._stopping:
            if self._ike_fed:
                self._ike_fed = False
                timer = self.ike.get_timer()
            deadline = self._next_housekeeping
            if timer is not None and timer < deadline:
                deadline = timer
            timeout = deadline - clock()
            for fd, _mask in poll(timeout if timeout > 0.0 else 0.0, len(handlers) or 1):
                handlers[fd]()
            flush()  # ESP-in-UDP (GSO) and ring frames the handlers queued
            now = clock()
            if now >= deadline:
                if timer is not None and timer <= now:
                    self.ike.handle_timer(now)
                    self.pump(now)
                if now >= self._next_housekeeping:
                    self._housekeeping(now)
                flush()  # what IKE events queued (e.g. a trap's packets on a new SA)

    def pump(self, now: float) -> None:
        """Send what IKE wants sent and act on its events; called after every input to IKE."""
        self._ike_fed = True
        ike = self.ike
        while True:
            for dg in ike.datagrams_to_send(now):
                self._send_ike(dg.data, dg.dst, dg.src)
            event = ike.next_event()
            if event is None:
                if self._failed_recently:
                    self._settle_failures(now)
                return
            self._on_event(event, now)

    # --- packets ----------------------------------------------------------------------------
    def _on_tun(self) -> None:
        lookup = self.policy.lookup_outbound
        write = self.tun.write
        for packet in self.tun.read_batch(BATCH):
            path = lookup(packet)
            if path is None:
                self._unprotected(packet)
            elif len(packet) <= path.mtu:
                path.send(packet)
            else:
                send_with_mtu(path, packet, write, self.icmp_v4, self.icmp_v6)

    def _unprotected(self, packet: bytes) -> None:
        """No CHILD SA covers the packet: start a trapped child, or drop it."""
        trap = self.traps.catch(packet)
        if trap is None:
            if not _link_local_noise(packet):
                self.drops["no_policy"] = self.drops.get("no_policy", 0) + 1
                self.drop_log("no_policy")
            return
        now = self.clock()
        acquire = self.traps.acquire(trap, packet, now)
        if acquire is not None:
            log.info("acquire", connection=acquire.connection, child=acquire.child)
            self._initiate(acquire.connection, acquire.child, now, packet_ts=acquire.packet_ts)
            self.pump(now)

    def _on_raw(self, sock: RawEspSocket) -> None:
        seen: dict[int, Any] = {}
        if sock.family == socket.AF_INET:
            # the outer IPv4 header parsed inline: no tuple, no address string per packet
            malformed = self.receiver.receive_ipv4(sock.read_batch(BATCH), seen)
            if malformed:
                sock.counters["recv_malformed"] += malformed
        else:
            receive = self.receiver.receive
            for dg in sock.recv_batch(BATCH):
                receive((dg.esp,), dg.ecn, seen)
        self.gro.flush()
        self._note_alive(seen)

    def _on_udp(self, fd: int) -> None:
        seen: dict[int, Any] = {}
        sources: list = []  # each run's sender: a peer behind a NAT may come from a new port
        runs, others = self.udp.read_esp_batch(fd, BATCH, sources)
        self.roaming.receive_runs(runs, sources, seen)
        self.gro.flush()
        self._note_alive(seen)
        if others:
            now = self.clock()
            for dg in others:
                try:
                    self.ike.receive_datagram(dg.data, dg.remote, dg.local, now)
                except Exception:  # the core should never raise; a bug here must not kill the gateway
                    log.exception("ike.receive_failed", remote=dg.remote)
            self.pump(now)

    def _note_alive(self, seen: dict) -> None:
        if seen:
            now = self.clock()
            for spi in seen:
                self.ike.note_inbound_esp(spi, now)
                if spi in self.pending:
                    self._route(self.pending[spi])

    # --- IKE events -------------------------------------------------------------------------
    def _initiate(self, conn: str, child: str | None, now: float, **kw) -> None:
        try:
            self.ike.initiate(conn, child, now, **kw)
        except (KeyError, ValueError) as exc:
            log.error("initiate_failed", connection=conn, child=child, error=str(exc))

    def _on_event(self, event: Any, now: float) -> None:
        # the IKE core logs each SA's ike_sa_established/child_sa_established/..._down: not again here
        self.event_counts.add(event)
        if isinstance(event, ChildSaUp):
            self._install_child(event, now)
        elif isinstance(event, ChildSaDown):
            self._remove_child(event, now)
        elif isinstance(event, IkeSaUp):
            self.ike_sa_names[event.unique_id] = event.name
            if event.nat_local:
                self.nat_keepalives[event.unique_id] = (event.local, event.remote)
            self.journal.add(now, "ike_sa.up", event.name, f"IKE SA {event.name}[{event.unique_id}] established "
                             f"between {event.local[0]}[{event.local_id}]...{event.remote[0]}[{event.remote_id}]",
                             outcome="up")
        elif isinstance(event, IkeSaMoved):
            self.roaming.on_moved(event)
        elif isinstance(event, IkeSaDown):
            self.ike_sa_names.pop(event.unique_id, None)
            self.nat_keepalives.pop(event.unique_id, None)
            self.journal.add(now, "ike_sa.down", event.name,
                             f"IKE SA {event.name}[{event.unique_id}] down: {event.reason}")
        elif isinstance(event, NegotiationFailed):
            self._record_failure(now, event.name, event.stage, event.notify, event.message, event.child_name)
        elif isinstance(event, AddressWanted):
            self._resolve(event, now)
        self.virtual_ips.on_event(event)
        if self.vici is not None:  # after the data plane acted: a client told "up" finds the SA installed
            try:
                self.vici.on_ike_event(event, now)
            except Exception:  # a bug in reporting to vici clients must not take the gateway down
                log.exception("vici.event_failed", event=type(event).__name__)

    def _install_child(self, up: ChildSaUp, now: float) -> None:
        path_mtu = self._path_mtu(up.remote[0], now)
        conn = self.config.connection(up.ike_name) if up.ike_name in {c.name for c in self.config.connections} else None
        child_cfg = next((c for c in conn.children if c.name == up.child_name), None) if conn else None
        transmit = make_transmit(up, raw_v4=self.raw_v4, raw_v6=self.raw_v6, udp=self.udp, force_udp=self.force_udp,
                                 batcher=self.udp_out)
        path = ChildPath(up, transmit=transmit, mtu=inner_mtu(self.tun.mtu, path_mtu, up, self.force_udp),
                         rekey_packets=child_cfg.rekey_packets if child_cfg else 0,
                         rekey_bytes=child_cfg.rekey_bytes if child_cfg else 0, now=now)
        self._generation += 1
        path.generation = self._generation
        self.sadb.add_inbound(path.inbound)
        self.children[up.inbound_spi] = path
        old = self.children.get(up.rekeyed_from) if up.rekeyed_from is not None else None
        if old is None or old.lineage not in self.routed:
            self._join_lineage(path)
            self._route(path)
        else:
            # Make-before-break: the new inbound SA is live at once; we keep sending on the old
            # SA until the peer shows it can receive on the new one (ESP arriving on the new
            # SA, or its delete of the old one), so neither side drops packets it cannot open.
            path.lineage = old.lineage
            self._join_lineage(path)
            self.policy.bind_inbound(path.lineage, path.inbound)
            self.inbound_ok.clear()
            self.pending[up.inbound_spi] = path
        self.journal.add(now, "child_sa.up", up.ike_name, f"CHILD SA {up.child_name}{{{up.unique_id}}} established "
                         f"with SPIs {up.inbound_spi:08x}_i {up.outbound_spi:08x}_o and TS "
                         f"{' '.join(map(str, up.local_ts))} === {' '.join(map(str, up.remote_ts))}",
                         child=up.child_name, outcome="up")
        self._flush_trap(up, path)

    def _join_lineage(self, path: ChildPath) -> None:
        spi = path.inbound_spi  # an SA installed again replaces itself, as in ``children``
        members = tuple(p for p in self.lineages.get(path.lineage, ()) if p.inbound_spi != spi)
        self.lineages[path.lineage] = members + (path,)

    def _flush_trap(self, up: ChildSaUp, path: ChildPath) -> None:
        for packet in self.traps.release(up.ike_name, up.child_name):
            if self.policy.lookup_outbound(packet) is path:
                if len(packet) <= path.mtu:
                    path.send(packet)
                else:
                    send_with_mtu(path, packet, self.tun.write, self.icmp_v4, self.icmp_v6)

    def _path_mtu(self, peer: str, now: float) -> int:
        cached = self._pmtu_cache.get(peer)
        if cached is None or now - cached[0] > PMTU_CACHE_SECONDS:
            cached = self._pmtu_cache[peer] = (now, path_mtu(peer))
        return cached[1]

    def _route(self, path: ChildPath) -> None:
        """Send the lineage's packets through ``path``; every live SA of it still receives."""
        lineage = path.lineage
        previous = self.routed.get(lineage)
        self.policy.remove(lineage)
        self.policy.add(lineage, path.local_ts, path.remote_ts, path)
        for member in self.lineages.get(lineage, ()):
            self.policy.bind_inbound(lineage, member.inbound)
        self.inbound_ok.clear()
        self.routed[lineage] = path
        self.pending.pop(path.inbound_spi, None)
        if previous is not None and previous is not path:
            log.info("child_sa.switched", child=path.child_name, spi_out=f"{path.outbound_spi:08x}",
                     old_spi_out=f"{previous.outbound_spi:08x}")

    def _remove_child(self, down: ChildSaDown, now: float) -> None:
        path = self.children.get(down.inbound_spi)
        if path is None:
            self.sadb.remove_inbound(down.inbound_spi)
            return
        self.pending.pop(down.inbound_spi, None)
        others = [p for p in self.lineages.get(path.lineage, ()) if p is not path
                  and p.inbound_spi not in self.dying]
        if self.routed.get(path.lineage) is path:
            if others:
                self._route(max(others, key=lambda p: p.generation))
            else:
                self.policy.remove(path.lineage)
                self.inbound_ok.clear()
                del self.routed[path.lineage]
        if others:  # rekeyed: what the peer sent just before switching may still be in flight
            self.dying.add(down.inbound_spi)
            self.retiring.append((now + REKEY_GRACE, path))
        else:
            self._retire(path)
        self.journal.add(now, "child_sa.down", down.ike_name,
                         f"CHILD SA {down.child_name}{{{down.unique_id}}} down: {down.reason}", child=down.child_name)

    def _retire(self, path: ChildPath) -> None:
        """Forget an SA for good; its counters live on in the gateway's totals."""
        self.children.pop(path.inbound_spi, None)
        members = tuple(p for p in self.lineages.get(path.lineage, ()) if p is not path)
        if members:
            self.lineages[path.lineage] = members
        else:
            self.lineages.pop(path.lineage, None)
        self.dying.discard(path.inbound_spi)
        self.sadb.remove_inbound(path.inbound_spi)
        self.inbound_ok.clear()  # its verdicts hold the SA (and so its keys) alive
        self.totals.add(path)

    # --- timers -----------------------------------------------------------------------------
    def _housekeeping(self, now: float) -> None:
        self._next_housekeeping = now + HOUSEKEEPING_INTERVAL
        if self.vici is not None:
            self.vici.expire(now)
        self._resolve_housekeeping(now)
        while self.retiring and self.retiring[0][0] <= now:
            self._retire(self.retiring.popleft()[1])
        for path in list(self.children.values()):
            if not path.rekey_requested and (path.outbound.rekey_needed or path.inbound.rekey_needed):
                path.rekey_requested = True
                log.info("child_sa.volume_rekey", child=path.child_name, spi_in=f"{path.inbound_spi:08x}")
                self.ike.rekey_child(path.inbound_spi, now)
                self.pump(now)
        if now >= self._next_trim:
            self._next_trim = now + TRIM_INTERVAL
            release_free_memory()
        self.roaming.check(now)
        if now >= self._next_keepalive:
            self._next_keepalive = now + self.settings.keep_alive
            for local, remote in self.nat_keepalives.values():
                self.udp.send_keepalive((remote[0], remote[1]), (local[0], local[1]))

    # --- control socket ---------------------------------------------------------------------
    def handle_control(self, request: dict) -> Any:
        """One control command; each is logged once with its result (queries at debug level)."""
        cmd = str(request.get("cmd"))
        args = {k: v for k, v in request.items() if k != "cmd" and not is_secret_key(k)}
        emit = log.debug if cmd in READ_ONLY_COMMANDS else log.info
        try:
            result = self._dispatch_control(cmd, request, self.clock())
        except ControlError as exc:
            emit("control.command", command=cmd, args=args, result="error", error=str(exc))
            raise
        summary = result.get("message") if isinstance(result, dict) else None
        emit("control.command", command=cmd, args=args, result="ok", **({"message": summary} if summary else {}))
        return result

    def _dispatch_control(self, cmd: str, request: dict, now: float) -> Any:
        if cmd == "status":
            return status.status(self, now)
        if cmd == "list-sas":
            return status.list_sas_json(self, now, request.get("ike"))
        if cmd == "list-conns":
            return {"connections": status.list_conns(self.config)}
        if cmd == "initiate":
            return self._control_initiate(request, now)
        if cmd == "terminate":
            return self._control_terminate(request, now)
        if cmd == "rekey":
            return self._control_rekey(request, now)
        if cmd == "reload":
            return self.reload_from_file("control")
        if cmd == "events":
            since = request.get("since", 0)
            if not isinstance(since, int) or isinstance(since, bool):
                raise ControlError("events: 'since' must be an integer")
            connection = request.get("connection")
            return {"events": self.journal.since(since, connection if isinstance(connection, str) else None, now),
                    "next": self.journal.seq}
        if cmd == "keys":
            return status.key_snapshot(self)
        raise ControlError(f"unknown command {cmd!r}")

    def _control_initiate(self, request: dict, now: float) -> dict:
        """Start the negotiation; ``since`` is the journal number the CLI follows from, and
        ``already`` says the SA is up (nothing to wait for)."""
        since = self.journal.seq
        if request.get("child"):
            try:
                conn, child = self.config.find_child(request["child"])
            except KeyError as exc:
                raise ControlError(str(exc.args[0]) if exc.args else "no such child") from None
            if self._installed_children(child.name):
                return {"message": f"CHILD SA {child.name} of {conn.name} is already up", "already": True,
                        "connection": conn.name, "since": since}
            self.journal.add(now, "initiate", conn.name, f"initiating CHILD SA {child.name} of {conn.name}",
                             child=child.name)
            self._initiate(conn.name, child.name, now)
            self.pump(now)
            self._journal_connecting(conn.name, now)
            return {"message": f"initiating CHILD SA {child.name} of {conn.name}", "connection": conn.name,
                    "since": since}
        name = request.get("ike")
        if name not in {c.name for c in self.config.connections}:
            raise ControlError(f"no connection named {name!r}")
        if any(sa.get("name") == name and sa.get("state") == IkeState.ESTABLISHED for sa in self.ike.statuses()):
            return {"message": f"IKE SA {name} is already up", "already": True, "connection": name, "since": since}
        self.journal.add(now, "initiate", name, f"initiating IKE SA {name}")
        self._initiate(name, None, now)
        self.pump(now)
        self._journal_connecting(name, now)
        return {"message": f"initiating IKE SA {name}", "connection": name, "since": since}

    def _journal_connecting(self, name: str, now: float) -> None:
        """Journal the IKE SAs of ``name`` we are setting up (where an initiation went)."""
        for sa in self.ike.sas.values():
            if sa.name == name and sa.initiator and sa.state == IkeState.CONNECTING and sa.unique_id not in self._told:
                self._told.add(sa.unique_id)
                self.journal.add(now, "connecting", name, f"initiating IKE SA {name}[{sa.unique_id}] to "
                                 f"{sa.remote[0]} (attempt {sa.attempt})")
        if len(self._told) > 256:  # keep only the SAs still alive
            self._told &= {sa.unique_id for sa in self.ike.sas.values()}

    def _installed_children(self, child: str) -> list[int]:
        """Inbound SPIs of the live CHILD SAs of that name (installed, or being rekeyed by us)."""
        return [int(c["inbound_spi"], 16) for sa in self.ike.statuses() for c in sa.get("children", [])
                if c.get("name") == child and c.get("state") in ("installed", "rekeying")
                and isinstance(c.get("inbound_spi"), str)]

    def _live_ike_names(self) -> set[str]:
        return {str(sa.get("name")) for sa in self.ike.statuses()}

    def _control_terminate(self, request: dict, now: float) -> dict:
        child = request.get("child")
        if child:
            if not self._installed_children(child):
                raise ControlError(f"no CHILD SA named {child!r} is up")
            self.ike.terminate_child(child, now)
            self.pump(now)
            return {"message": f"terminating CHILD SA {child}"}
        name = request.get("ike")
        if not name:
            raise ControlError("terminate needs ike or child")
        if name not in self._live_ike_names() and not self.ike.resolving(name):
            raise ControlError(f"no IKE SA named {name!r}" + ("" if name in {c.name for c in self.config.connections}
                                                             else " (and no such connection)"))
        self.ike.terminate_ike(name, now)
        self.pump(now)
        return {"message": f"terminating IKE SA {name}"}

    def _control_rekey(self, request: dict, now: float) -> dict:
        child = request.get("child")
        if child:
            spis = self._installed_children(child)
            if not spis:
                raise ControlError(f"no CHILD SA named {child!r} is up")
            for spi in spis:
                self.ike.rekey_child(spi, now)
            self.pump(now)
            return {"message": f"rekeying CHILD SA {child}" + (f" ({len(spis)} SAs)" if len(spis) > 1 else "")}
        name = request.get("ike")
        if not name:
            raise ControlError("rekey needs ike or child")
        if not self.ike.rekey_ike(name, now):
            raise ControlError(f"no established IKE SA named {name!r}")
        self.pump(now)
        return {"message": f"rekeying IKE SA {name}"}

    # --- operations: reload, SIGHUP, host names, failures (issue #18) ------------------------
    def _init_operations(self, resolver: Resolver | None) -> None:
        self.journal = status.Journal()
        self.resolver = resolver if resolver is not None else Resolver(clock=self.clock)
        # connections the file configured (a reload may remove them); vici's load-conn adds others
        self.file_connections = {c.name for c in self.config.connections}
        self._reload_requested = False
        self._failed_recently: dict[str, str | None] = {}  # connection -> child, checked after pump
        self._resolve_retries: list[tuple[float, AddressWanted]] = []
        self._told: set[int] = set()  # IKE SAs whose initiation the journal has (unique ids)
        self._unsendable: set[str] = set()  # peers our last IKE message to could not be sent to
        self._addresses: dict[str, str] = {}  # connection -> the address its host name had last

    def _send_ike(self, data: bytes, dst: Address, src: Address | None) -> None:
        """Send one IKE message; a peer the kernel will not send to (no route, no socket of its
        family) is remembered, so the attempt's failure can say why, and never stops the loop."""
        try:
            sent = self.udp.send_ike(data, dst, src)
        except (OSError, ValueError) as exc:
            log.warning("ike.send_failed", remote=dst, error=str(exc))
            sent = False
        if sent is False:
            self._unsendable.add(dst[0])
        else:
            self._unsendable.discard(dst[0])

    def reload(self, new: Config, now: float) -> dict:
        """Take over ``new``'s connections: removed ones are deleted (at the peer too), changed
        ones set up again, added ones started; unchanged ones keep their SAs and traffic.
        ``[gateway]`` settings are not changed live: each changed one is reported as needing a
        restart, and the daemon goes on with the old value."""
        for key, value in self.config.overrides.items():  # the command line's, not the file's
            setattr(new.gateway, key, value)
        if self.force_udp:
            for conn in new.connections:
                conn.encap = True
        diff = reload.diff_connections(self.config.connections, new.connections, self.file_connections)
        logging = (new.gateway.log_level, new.gateway.log_format)
        if logging != (self.settings.log_level, self.settings.log_format):
            configure_from_config(*logging)  # the --log-* flags still win
            self.settings.log_level, self.settings.log_format = logging
        warnings = reload.settings_needing_restart(self.settings, new.gateway, set(self.config.overrides))
        warnings += self._unbound_local_addresses(new)
        warnings += reload.pools_needing_restart(self.config.pools, new.pools)
        for name in diff.removed:
            self._reload_step(warnings, name, self.remove_connection, name, now)
        for conn in new.connections:
            if conn.name in diff.added or conn.name in diff.changed:
                self._reload_step(warnings, conn.name, self.apply_connection, conn, now)
        self.file_connections = {c.name for c in new.connections}
        self.config.psk_sources.update(new.psk_sources)
        for warning in warnings:
            log.warning("reload.needs_restart", detail=warning)
        return {"source": new.source, **diff.as_dict(), "warnings": warnings}

    @staticmethod
    def _reload_step(warnings: list[str], name: str, step: Callable[..., Any], *args: Any) -> None:
        """One connection's part of a reload; a kernel refusal (a route) is reported, and the
        other connections are still applied."""
        try:
            step(*args)
        except OSError as exc:
            log.error("reload.connection_failed", connection=name, error=str(exc))
            warnings.append(f"connection {name}: {exc}")

    def _unbound_local_addresses(self, new: Config) -> list[str]:
        """Local addresses of new connections that no IKE socket was bound to at start."""
        if not hasattr(self, "udp"):
            return []
        bound = {a for c in self.config.connections for a in _concrete(c.local_addrs)}
        if not bound or any(len(_concrete(c.local_addrs)) != len(c.local_addrs) or not c.local_addrs
                            for c in self.config.connections):
            return []  # bound to the wildcard addresses at start: every address is served
        missing = sorted({a for c in new.connections for a in _concrete(c.local_addrs)} - bound)
        return [f"local address {a} has no IKE socket (the daemon bound {', '.join(sorted(bound))} at start): "
                "restart to use it" for a in missing]

    def reload_from_file(self, origin: str) -> dict:
        """Read the configuration file again and :meth:`reload` it; a file with errors is refused
        (ControlError listing them) and the running configuration stays."""
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            log.error("reload.refused", origin=origin, source=self.config.source, problems=exc.problems)
            raise ControlError("configuration not reloaded (the running one stays):\n"
                               + "\n".join(exc.problems)) from None
        result = self.reload(new, self.clock())
        log.info("reload.done", origin=origin, source=new.source, added=result["added"], removed=result["removed"],
                 changed=result["changed"], unchanged=len(result["unchanged"]), warnings=len(result["warnings"]))
        return result

    def reload_on_signal(self) -> None:
        """SIGHUP: as ``espgw reload``; whatever goes wrong is logged, the daemon runs on."""
        log.info("reload.signal", signal="SIGHUP", source=self.config.source)
        try:
            self.reload_from_file("SIGHUP")
        except ControlError:
            pass  # logged as reload.refused
        except Exception:  # a bug in a reload must not take the gateway down
            log.exception("reload.failed", origin="SIGHUP")

    def _record_failure(self, now: float, connection: str, stage: str, notify: str, message: str,
                        child: str | None = None) -> None:
        """A failed attempt: kept for ``status``, logged, journalled; whether it ends the
        initiation (no retry follows) is decided after the events are handled (_settle_failures)."""
        if notify == "TIMEOUT":
            conn = next((c for c in self.config.connections if c.name == connection), None)
            peers = ([self._addresses.get(connection, "")] + _concrete(conn.remote_addrs)) if conn else []
            unsendable = next((p for p in peers if p in self._unsendable), None)
            if unsendable:
                message += f" (sending to {unsendable} failed: no route to it, or the kernel refused)"
        self.failures.append({"at": now, "connection": connection, "stage": stage, "notify": notify,
                              "message": message, "child": child})
        log.warning("negotiation_failed", connection=connection, stage=stage, notify=notify, message=message,
                    child=child)
        self.journal.add(now, "failure", connection, f"{stage} failed: {notify}: {message}", child=child)
        if connection:
            self._failed_recently[connection] = child

    def _settle_failures(self, now: float) -> None:
        failed, self._failed_recently = self._failed_recently, {}
        for name, child in failed.items():
            if self._in_progress(name):
                self.journal.add(now, "retrying", name, f"connection {name}: trying again", child=child)
                self._journal_connecting(name, now)
            else:
                self.journal.add(now, "failed", name, f"establishing {name} failed", child=child, outcome="failed")

    def _in_progress(self, name: str) -> bool:
        """Whether an attempt of the connection is still under way (a keyingtries retry)."""
        if self.ike.resolving(name) or any(w.name == name for _, w in self._resolve_retries):
            return True
        return any(sa.name == name and sa.initiator and sa.state == IkeState.CONNECTING
                   for sa in self.ike.sas.values())

    def _resolve(self, want: AddressWanted, now: float) -> None:
        """Look the peer's host name up off the loop; the answer continues in _resolved."""
        log.info("resolving", connection=want.name, host=want.host, attempt=want.attempt)
        self.journal.add(now, "resolving", want.name, f"looking up {want.host} (attempt {want.attempt})")
        try:
            conn = self.config.connection(want.name)
        except KeyError:
            self.ike.abandon(want.request)
            return
        local = _concrete(conn.local_addrs)
        family = (socket.AF_INET6 if ":" in local[0] else socket.AF_INET) if local else socket.AF_UNSPEC
        self.resolver.submit(want.host, family, functools.partial(self._resolved, want))

    def _resolved(self, want: AddressWanted, address: str | None, error: str | None) -> None:
        now = self.clock()
        if address is not None:
            log.info("resolved", connection=want.name, host=want.host, address=address)
            self.journal.add(now, "resolved", want.name, f"{want.host} is {address}")
            self._addresses[want.name] = address
            self.ike.initiate_to(want.request, address, now)
            self.pump(now)
            self._journal_connecting(want.name, now)
            return
        # as the IKE core's failures: recorded, and vici clients waiting on the initiation hear of it
        self._on_event(NegotiationFailed(want.name, "RESOLVE", "UNRESOLVABLE", f"cannot resolve {want.host}: {error}"),
                       now)
        conn = next((c for c in self.config.connections if c.name == want.name), None)
        tries = conn.keyingtries if conn is not None else 1
        if conn is not None and (tries == 0 or want.attempt < tries):
            self._resolve_retries.append((now + RESOLVE_RETRY_DELAY, want))
        else:
            self.ike.abandon(want.request)
        self._settle_failures(now)

    def _resolve_housekeeping(self, now: float) -> None:
        self.resolver.expire(now)
        due = [w for when, w in self._resolve_retries if when <= now]
        if not due:
            return
        self._resolve_retries = [(when, w) for when, w in self._resolve_retries if when > now]
        for want in due:
            if not self.ike.resolving(want.name):
                continue  # terminated or removed meanwhile
            request: Any = want.request
            request.attempt = want.attempt + 1
            log.info("retrying_connect", connection=want.name, attempt=want.attempt + 1)
            self._resolve(AddressWanted(want.name, want.host, want.attempt + 1, request), now)

def malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0), or a no-op where the C library has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc; other C libraries may not have it
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


# Housekeeping hands freed heap back to the kernel every TRIM_INTERVAL (a module attribute, so a
# test can count the calls)
release_free_memory = malloc_trim()


def _link_local_noise(packet: bytes) -> bool:
    """IPv6 packets the kernel sends on the TUN itself (router solicitations, MLD): not traffic."""
    return len(packet) >= 40 and packet[0] >> 4 == 6 and (packet[8:10] in (b"\xfe\x80", bytes(2)))


def _local_addresses() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    with IPRoute() as ipr:
        return [ipaddress.ip_address(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr()
                if a.get_attr("IFA_ADDRESS")]


def run(config: Config) -> int:
    """Run the gateway in the foreground until SIGTERM or Ctrl-C; the exit status."""
    configure_from_config(config.gateway.log_level, config.gateway.log_format)  # --log-* flags win
    gateway = Gateway(config)
    metrics_server = None
    try:
        gateway.open()
        if config.gateway.metrics:  # served from this loop, read between its turns (tunnel.daemon.metrics)
            metrics_server = metrics.serve(gateway, gateway.clock)
    except (OSError, ControlError, ValueError) as exc:
        problem = startup.diagnose(exc, config)  # names the address, interface or capability
        log.error("startup_failed", resource=problem.resource, error=problem.message, fix=problem.fix)
        gateway.close()
        return 1
    startup.check_forwarding(config, [str(a) for a in _local_addresses()])
    try:
        gateway.run()
    finally:
        if metrics_server is not None:
            metrics_server.close()
        gateway.close()
    return 0

