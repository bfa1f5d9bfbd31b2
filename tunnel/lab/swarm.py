"""Many road-warrior clients in one process, behind real NATs, against the real espgw gateway.

The lab's load generator for issue #15's "a gateway serving many clients", after strongSwan's
load-tester plugin: each ``SwarmClient`` is a real IKE initiator (its own ``ike.endpoint``
``IkeEndpoint``, the core the daemon runs) with its own identity, its own UDP socket (so its own
source port, and behind a NAT its own public port) and its own ESP SAs (``esp.sa``). It asks the
gateway for a virtual IP (``vips = 0.0.0.0``), then pings the dashboard from that address inside
its ESP SA and checks that the echo reply comes back through the same SA: it decrypts with the
client's inbound keys, answers the client's ICMP id and sequence number and is addressed to the
client's virtual IP. One selector loop serves every socket; no thread per client.

IKE starts directly at the gateway's UDP 4500 with the non-ESP marker (RFC 7296 s2.23 allows it;
strongSwan does so when ``remote_port = 4500``): the core is told its own port is 4500 as well,
and the client's socket, bound to an ephemeral port, stands in for it. The NAT rewrites the
source anyway, so NAT detection sees the NAT and ESP travels in UDP (RFC 3948).

``SwarmLab`` is the topology: two cafes, each a LAN namespace for the clients behind an nftables
masquerade router, and the office gateway with the dashboard behind it::

    cafe1 clients (hostA) 192.168.1.7 -- cafe1 (gwA) 192.0.2.1 ------ 192.0.2.2 office (gwB) -- dashboard 10.0.5.9
    cafe2 clients (-lan2) 192.168.2.7 -- cafe2 (-cafe2) 198.51.100.1 -- 198.51.100.2 office wan1

Clients of one cafe share its LAN address and differ in their source port; the gateway sees
them all on the cafe's one public address with different ports.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import dpkt
import structlog
from pyroute2 import NetNS, netns

from esp.errors import Drop
from esp.sa import NH_IPV4, InboundSA, OutboundSA
from ike.codec.constants import NAT_T_PORT, NON_ESP_MARKER
from ike.config import AuthConfig, ChildConfig, ConnectionConfig, TrafficSelector
from ike.endpoint import IkeEndpoint
from ike.pools import AddressPool
from ike.events import ChildSaDown, ChildSaUp, IkeSaDown, NegotiationFailed, VirtualIpsAssigned
from tunnel.lab.configs import LAB_PSK
from tunnel.lab.netns import Lab, LabError, inside

log = structlog.get_logger(__name__)

CAFE1_LAN, CAFE1_CLIENTS, CAFE1_ROUTER = "192.168.1.0/24", "192.168.1.7", "192.168.1.1"
CAFE2_LAN_PREFIX, CAFE2_CLIENTS, CAFE2_ROUTER = 24, "192.168.2.7", "192.168.2.1"
CAFE2_PUBLIC_PREFIX, CAFE2_PUBLIC, OFFICE_WAN1 = 24, "198.51.100.1", "198.51.100.2"
NAT_TABLE = "espgw_swarm_nat"
GATEWAY_ID = "gwb.lab"
CONNECTION, CHILD = "rw", "rw"
DASHBOARD, OFFICE_LAN = "10.0.5.9", "10.0.5.0/24"
POOL = "10.3.0.0/24"  # 254 addresses
# Handshakes in flight per cafe: below the gateway's half-open limit per address (RFC 8019,
# ike.endpoint.HALF_OPEN_PER_IP = 5), and both cafes together below its cookie threshold (10).
WINDOW_PER_NAT = 4
RETRANSMIT_TIMEOUT = 1.0  # the lab's links lose nothing; a lost message should not cost 4 s
_IKE_SPI_BYTES = 8


class SwarmLab(Lab):
    """The lab of the module doc: ``hostA``/``gwA`` are cafe 1, ``lan2_ns``/``cafe2_ns`` cafe 2."""

    def __init__(self, prefix: str | None = None) -> None:
        super().__init__(prefix, ipv6=False, lan_a4=CAFE1_LAN, host_a4=CAFE1_CLIENTS, gw_a_lan4=CAFE1_ROUTER)
        self.cafe2_ns, self.lan2_ns = f"{self.prefix}-cafe2", f"{self.prefix}-lan2"
        try:
            self._build_cafe2()
            masquerade(self, self.gwA.ns, self.gwA.wan_iface)
            masquerade(self, self.cafe2_ns, "wan0")
        except BaseException:
            self.close()
            raise

    def _build_cafe2(self) -> None:
        for name in (self.cafe2_ns, self.lan2_ns):
            if name in netns.listnetns():
                raise LabError(f"namespace {name} already exists")
            netns.create(name)
            self._created.append(name)  # removed with the lab's own namespaces
        self.run(self.cafe2_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self._veth(self.lan2_ns, "eth0", self.cafe2_ns, "lan0")
        self._veth(self.cafe2_ns, "wan0", self.gwB.ns, "wan1")
        lan = f"/{CAFE2_LAN_PREFIX}"
        self._configure(self.lan2_ns, "eth0", [ipaddress.ip_interface(CAFE2_CLIENTS + lan)],
                        defaults=[ipaddress.ip_address(CAFE2_ROUTER)])
        self._configure(self.cafe2_ns, "lan0", [ipaddress.ip_interface(CAFE2_ROUTER + lan)])
        self._configure(self.cafe2_ns, "wan0", [ipaddress.ip_interface(f"{CAFE2_PUBLIC}/{CAFE2_PUBLIC_PREFIX}")])
        self._configure(self.gwB.ns, "wan1", [ipaddress.ip_interface(f"{OFFICE_WAN1}/{CAFE2_PUBLIC_PREFIX}")])
        with NetNS(self.cafe2_ns) as ipr:  # the office's public address, through its second link
            ipr.route("add", dst=str(self.gwB.wan4.network), gateway=OFFICE_WAN1)

    def __enter__(self) -> SwarmLab:
        return self

    @property
    def office(self) -> str:
        return self.gwB.wan_addr4

    @property
    def public_addresses(self) -> tuple[str, str]:
        """The cafes' public addresses, as the office sees its clients."""
        return self.gwA.wan_addr4, CAFE2_PUBLIC


def masquerade(lab: Lab, ns: str, wan: str) -> None:
    """Source NAT of everything leaving ``wan`` in namespace ``ns`` (its own nftables table)."""
    script = [f"add table ip {NAT_TABLE}",
              f"add chain ip {NAT_TABLE} post {{ type nat hook postrouting priority srcnat; }}",
              f'add rule ip {NAT_TABLE} post oifname "{wan}" counter masquerade']
    lab.run(ns, "nft", "-f", "-", input="\n".join(script) + "\n")


# --- the ICMP echo carried inside each client's SA -----------------------------------------------

def echo_request(src: str, dst: str, ident: int, seq: int, payload: bytes = b"espgw-swarm") -> bytes:
    """An IPv4 ICMP echo request, checksums filled in (the gateway's kernel checks them)."""
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", dpkt.in_cksum(icmp)) + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), ident, 0, 64, socket.IPPROTO_ICMP, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return header[:10] + struct.pack("!H", dpkt.in_cksum(header)) + header[12:] + icmp


def parse_echo_reply(packet: bytes) -> tuple[str, str, int, int] | None:
    """(source, destination, id, sequence) of an IPv4 ICMP echo reply; None for anything else."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_ICMP:
        return None
    start = (packet[0] & 0x0F) * 4
    if len(packet) < start + 8 or packet[start] != 0:
        return None
    ident, seq = struct.unpack_from("!HH", packet, start + 4)
    return (str(ipaddress.IPv4Address(packet[12:16])), str(ipaddress.IPv4Address(packet[16:20])), ident, seq)


# --- configurations ------------------------------------------------------------------------------

def office_pool() -> AddressPool:
    return AddressPool(CONNECTION, POOL)


def office_connection(office: str) -> ConnectionConfig:
    """The office gateway: any client identity (one PSK), a lease from the pool, the office LAN."""
    child = ChildConfig(name=CHILD, local_ts=[TrafficSelector.from_cidr(OFFICE_LAN)], remote_ts=[],
                        remote_dynamic=True)
    return ConnectionConfig(name=CONNECTION, local_addrs=[office], remote_addrs=["%any"],
                            local=AuthConfig(auth="psk", id=GATEWAY_ID), remote=AuthConfig(auth="psk", id="%any"),
                            psk=LAB_PSK, pools=[CONNECTION], children=[child])


def laptop_connection(local_ip: str, office: str, identity: str = "laptop.lab",
                      remote_ts: str = OFFICE_LAN) -> ConnectionConfig:
    """A real espgw client daemon's side (``vips = 0.0.0.0``), IKE from port 500 as usual."""
    child = ChildConfig(name=CHILD, local_ts=[], remote_ts=[TrafficSelector.from_cidr(remote_ts)],
                        local_dynamic=True)
    return ConnectionConfig(name=CONNECTION, local_addrs=[local_ip], remote_addrs=[office],
                            local=AuthConfig(auth="psk", id=identity), remote=AuthConfig(auth="psk", id=GATEWAY_ID),
                            psk=LAB_PSK, vips=["0.0.0.0"], children=[child])


# --- the clients ----------------------------------------------------------------------------------

def client_config(identity: str, local_ip: str, gateway: str, remote_ts: str) -> ConnectionConfig:
    """One swarm client: a laptop's connection with IKE on 4500 from the first message."""
    return replace(laptop_connection(local_ip, gateway, identity, remote_ts), local_port=NAT_T_PORT,
                   remote_port=NAT_T_PORT)


@dataclass(eq=False)
class SwarmClient:
    """One road warrior: its socket, IKE endpoint, virtual IP and ESP SAs."""

    index: int
    identity: str
    group: str  # the namespace (cafe LAN) it sits in
    local_ip: str
    sock: socket.socket = field(repr=False)
    endpoint: IkeEndpoint = field(repr=False)
    vip: str | None = None
    inbound: InboundSA | None = field(default=None, repr=False)
    outbound: OutboundSA | None = field(default=None, repr=False)
    connecting_since: float | None = None
    connect_seconds: float | None = None
    ike_up: bool = False
    sent: set[int] = field(default_factory=set)  # echo sequence numbers waiting for a reply
    answered: set[int] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)  # what arrived and did not fit
    failures: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    @property
    def up(self) -> bool:
        return self.ike_up and self.vip is not None and self.inbound is not None

    @property
    def ident(self) -> int:
        return 0x5000 + self.index  # the ICMP id of its pings

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1


class Swarm:
    """``count`` clients per group (namespace, LAN address) against ``gateway``: connect, ping,
    disconnect, reconnect, all from one selector loop. Close with ``close()`` (or ``with``)."""

    def __init__(self, groups: Iterable[tuple[str, str, int]], gateway: str, dashboard: str,
                 remote_ts: str, *, first_index: int = 1, window: int = WINDOW_PER_NAT) -> None:
        self.gateway, self.dashboard, self.window = gateway, dashboard, window
        self.selector = selectors.DefaultSelector()
        self.clients: list[SwarmClient] = []
        self._queue: dict[str, list[SwarmClient]] = {}  # per group: clients still to start
        self._in_flight: dict[str, set[SwarmClient]] = {}
        index = first_index
        try:
            for ns, local_ip, count in groups:
                self._queue[ns], self._in_flight[ns] = [], set()
                for _ in range(count):
                    self.clients.append(self._client(index, ns, local_ip, remote_ts))
                    index += 1
        except BaseException:
            self.close()
            raise

    def _client(self, index: int, ns: str, local_ip: str, remote_ts: str) -> SwarmClient:
        with inside(ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        sock.bind((local_ip, 0))
        identity = f"swarm{index:03d}.lab"
        endpoint = IkeEndpoint([client_config(identity, local_ip, self.gateway, remote_ts)], rng=os.urandom,
                               retransmit_timeout=RETRANSMIT_TIMEOUT)
        client = SwarmClient(index, identity, ns, local_ip, sock, endpoint)
        self.selector.register(sock, selectors.EVENT_READ, client)
        return client

    def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(client.sock)
            client.sock.close()
        self.selector.close()

    def __enter__(self) -> Swarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- operations ----------------------------------------------------------------------------
    def connect(self, clients: Iterable[SwarmClient] | None = None, timeout: float = 60.0) -> float:
        """Bring the clients up (at most ``window`` handshakes in flight per cafe); returns the
        seconds it took. Raises LabError naming the clients that did not make it."""
        chosen = list(self.clients if clients is None else clients)
        for client in chosen:
            if not client.up:
                self._queue[client.group].append(client)
        started = time.monotonic()
        self._run_until(lambda: all(c.up or c.failures for c in chosen), timeout)
        self._check(chosen, "connect", lambda c: c.up)
        return time.monotonic() - started

    def ping(self, clients: Iterable[SwarmClient] | None = None, timeout: float = 10.0, seq: int = 1) -> float:
        """One echo request from each client's virtual IP to the dashboard inside its SA; waits
        for every reply through the same SA. Returns the seconds it took."""
        chosen = list(self.clients if clients is None else clients)
        started = time.monotonic()
        for client in chosen:
            if client.outbound is None or client.vip is None:
                raise LabError(f"{client.identity} has no SA to ping through")
            packet = echo_request(client.vip, self.dashboard, client.ident, seq)
            client.sent.add(seq)
            self._send(client, client.outbound.encapsulate(packet, NH_IPV4))
        self._run_until(lambda: all(seq in c.answered for c in chosen), timeout)
        self._check(chosen, "ping", lambda c: seq in c.answered)
        return time.monotonic() - started

    def disconnect(self, clients: Iterable[SwarmClient], timeout: float = 10.0) -> None:
        """Delete the clients' IKE SAs (INFORMATIONAL with a Delete), wait for the answers."""
        chosen = list(clients)
        now = time.monotonic()
        for client in chosen:
            client.endpoint.terminate_ike(CONNECTION, now)
            self._flush(client)
            self._events(client, now)
        self._run_until(lambda: not any(c.ike_up for c in chosen), timeout)
        self._check(chosen, "disconnect", lambda c: not c.ike_up)

    def _check(self, chosen: list[SwarmClient], what: str, ok: Callable[[SwarmClient], bool]) -> None:
        bad = [c for c in chosen if not ok(c)]
        if bad:
            detail = "; ".join(f"{c.identity}: {c.failures or c.counts or 'no answer'}" for c in bad[:5])
            raise LabError(f"{what}: {len(bad)} of {len(chosen)} swarm clients failed ({detail})")

    # --- the loop ------------------------------------------------------------------------------
    def _run_until(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._start_queued()
            if done():
                return
            now = time.monotonic()
            if now >= deadline:
                return
            wake = deadline
            for client in self.clients:
                timer = client.endpoint.get_timer()
                if timer is not None and timer < wake:
                    wake = timer
            for key, _mask in self.selector.select(max(0.0, min(wake - now, 0.5))):
                self._readable(key.data)
            now = time.monotonic()
            for client in self.clients:
                timer = client.endpoint.get_timer()
                if timer is not None and timer <= now:
                    client.endpoint.handle_timer(now)
                    self._flush(client)
                    self._events(client, now)

    def _start_queued(self) -> None:
        now = time.monotonic()
        for group, queue in self._queue.items():
            in_flight = self._in_flight[group]
            while queue and len(in_flight) < self.window:
                client = queue.pop(0)
                client.failures.clear()
                client.connecting_since = now
                in_flight.add(client)
                client.endpoint.initiate(CONNECTION, None, now)
                self._flush(client)
                self._events(client, now)

    def _readable(self, client: SwarmClient) -> None:
        for _ in range(64):
            try:
                data = client.sock.recv(65535)
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. ICMP unreachable reported on the socket
                client.count(f"recv_error:{exc.errno}")
                return
            now = time.monotonic()
            if data[:4] == NON_ESP_MARKER:
                if len(data) > 4 + _IKE_SPI_BYTES:
                    client.endpoint.receive_datagram(data[4:], (self.gateway, NAT_T_PORT),
                                                     (client.local_ip, NAT_T_PORT), now)
                    self._flush(client)
                    self._events(client, now)
                else:
                    client.count("malformed")
            elif data == b"\xff":
                client.count("keepalive")
            else:
                self._esp(client, data)

    def _esp(self, client: SwarmClient, data: bytes) -> None:
        """ESP for this client: it must open with its own inbound SA and be its echo reply."""
        if client.inbound is None:
            client.count("esp_without_sa")
            return
        if len(data) < 8 or int.from_bytes(data[:4], "big") != client.inbound.spi:
            client.count("esp_other_spi")  # another client's traffic on this socket: misrouted
            return
        try:
            _nh, inner = client.inbound.decapsulate(data)
        except Drop as drop:
            client.count(f"esp_drop:{drop.reason.value}")
            return
        reply = parse_echo_reply(inner)
        if reply is None:
            client.count("not_an_echo_reply")
            return
        src, dst, ident, seq = reply
        if src != self.dashboard or dst != client.vip or ident != client.ident or seq not in client.sent:
            client.count("foreign_echo_reply")
            return
        client.sent.discard(seq)
        client.answered.add(seq)

    def _send(self, client: SwarmClient, payload: bytes) -> None:
        try:
            client.sock.sendto(payload, (self.gateway, NAT_T_PORT))
        except OSError as exc:  # a full buffer: the core retransmits IKE, a ping times out
            client.count(f"send_error:{exc.errno}")

    def _flush(self, client: SwarmClient) -> None:
        for dg in client.endpoint.datagrams_to_send(time.monotonic()):
            self._send(client, NON_ESP_MARKER + dg.data)

    def _events(self, client: SwarmClient, now: float) -> None:
        while (event := client.endpoint.next_event()) is not None:
            if isinstance(event, VirtualIpsAssigned):
                client.vip = event.vips[0] if event.vips else None
            elif isinstance(event, ChildSaUp):
                client.inbound = InboundSA(event.inbound_spi, event.esp_transform, event.inbound_keymat,
                                           esn=event.esn, replay_window=event.replay_window)
                client.outbound = OutboundSA(event.outbound_spi, event.esp_transform, event.outbound_keymat,
                                             esn=event.esn)
                client.ike_up = True
                self._settled(client, now)
            elif isinstance(event, ChildSaDown):
                if client.inbound is not None and client.inbound.spi == event.inbound_spi:
                    client.inbound = client.outbound = None
            elif isinstance(event, IkeSaDown):
                client.ike_up = False
                client.vip = None
                client.inbound = client.outbound = None
                if client in self._in_flight[client.group]:
                    client.failures.append(f"IKE SA down: {event.reason}")
                    self._settled(client, now)
            elif isinstance(event, NegotiationFailed):
                client.failures.append(f"{event.stage} {event.notify}: {event.message}")
                self._settled(client, now)

    def _settled(self, client: SwarmClient, now: float) -> None:
        if client in self._in_flight[client.group]:
            self._in_flight[client.group].discard(client)
            if client.connecting_since is not None and client.up:
                client.connect_seconds = now - client.connecting_since


__all__ = ["Swarm", "SwarmClient", "SwarmLab", "client_config", "echo_request", "inside", "laptop_connection",
           "masquerade", "office_connection", "office_pool", "parse_echo_reply"]
