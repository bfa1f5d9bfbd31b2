"""The optional Prometheus endpoint (``[gateway] metrics = "127.0.0.1:9469"``).

Nothing is counted for it on the packet path: :class:`GatewayCollector` reads, when scraped, the
counters the gateway keeps anyway, through the same ``status`` report that ``espgw status --json``
prints (so the two always agree), plus the IKE core's ``counts`` (retransmits, DPD results) and
:class:`EventCounts`, which the daemon feeds with the IKE events it already handles (a handful per
handshake, none per packet).

The HTTP server runs inside the daemon's event loop (:class:`MetricsServer` registers its
non-blocking sockets in the loop's selector, as the control socket does), not in a thread: a
scrape then reads the gateway between two loop turns, when no dict is half-updated, without a
lock on the hot path. A scrape costs one pass over the SAs (milliseconds for thousands).
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ike.events import ChildSaUp, IkeSaUp, NegotiationFailed
from ike.tasks.states import ChildState, IkeState
from tunnel.ops.config import split_host_port
from tunnel.ops.control import accept_pending, unregister

log = structlog.get_logger("espgw")

MAX_CLIENTS = 16
MAX_REQUEST = 8192  # a scrape's request head is a few hundred bytes
CLIENT_TIMEOUT = 10.0  # seconds a client may take to send its request and read the answer


class EventCounts:
    """Handshakes, failures and rekeys, counted from the IKE events the daemon handles."""

    def __init__(self) -> None:
        self.handshakes: dict[str, int] = {"initiator": 0, "responder": 0}
        self.failures: dict[tuple[str, str], int] = {}  # (stage, notify) -> count
        self.rekeys: dict[str, int] = {"ike": 0, "child": 0}

    def add(self, event: object) -> None:
        if isinstance(event, IkeSaUp):
            if event.rekeyed_from is not None:
                self.rekeys["ike"] += 1
            else:
                self.handshakes["initiator" if event.initiator else "responder"] += 1
        elif isinstance(event, ChildSaUp):
            if event.rekeyed_from is not None:
                self.rekeys["child"] += 1
        elif isinstance(event, NegotiationFailed):
            key = (str(event.stage), str(event.notify or "unknown"))
            self.failures[key] = self.failures.get(key, 0) + 1


class GatewayCollector(Collector):
    """Prometheus metrics read from a running gateway when scraped.

    ``report`` returns the gateway's ``status`` report (``tunnel.daemon.status.status``);
    ``ike_counts`` the IKE core's counts; ``events`` the daemon's :class:`EventCounts`.
    """

    def __init__(self, report: Callable[[], dict], ike_counts: Callable[[], dict[str, int]],
                 events: EventCounts) -> None:
        self.report = report
        self.ike_counts = ike_counts
        self.events = events

    def collect(self) -> Iterator[Metric]:
        status = self.report()
        yield from _traffic(status)
        yield from _sa_states(status)
        yield from self._ike_activity()
        uptime = GaugeMetricFamily("espgw_uptime_seconds", "Seconds since the daemon started")
        uptime.add_metric([], float(status.get("uptime") or 0))
        yield uptime

    def _ike_activity(self) -> Iterator[Metric]:
        events = self.events
        handshakes = CounterMetricFamily("espgw_ike_handshakes", "IKE SAs established by a full handshake "
                                         "(IKE_SA_INIT + IKE_AUTH), by our role", labels=["role"])
        for role, count in events.handshakes.items():
            handshakes.add_metric([role], count)
        yield handshakes
        failures = CounterMetricFamily("espgw_negotiation_failures", "Failed IKE or CHILD SA negotiations, "
                                       "by exchange and reason (the notify sent or received)",
                                       labels=["stage", "reason"])
        for (stage, reason), count in sorted(events.failures.items()):
            failures.add_metric([stage, reason], count)
        yield failures
        rekeys = CounterMetricFamily("espgw_rekeys", "Completed rekeys (IKE or CHILD SA)", labels=["kind"])
        for kind, count in events.rekeys.items():
            rekeys.add_metric([kind], count)
        yield rekeys
        counts = self.ike_counts()
        dpd = CounterMetricFamily("espgw_dpd", "Dead-peer detection results: alive (answered) or dead "
                                  "(unanswered after every retransmission)", labels=["result"])
        for result in ("alive", "dead"):
            dpd.add_metric([result], counts.get(f"dpd_{result}", 0))
        yield dpd
        retransmits = CounterMetricFamily("espgw_ike_retransmits", "IKE requests sent again for want of an answer")
        retransmits.add_metric([], counts.get("retransmits", 0))
        yield retransmits


def _traffic(status: dict) -> Iterator[Metric]:
    labels = ["connection", "child", "spi_in", "direction"]
    child_bytes = CounterMetricFamily("espgw_child_sa_bytes", "Inner bytes through each installed CHILD SA",
                                      labels=labels)
    child_packets = CounterMetricFamily("espgw_child_sa_packets", "Packets through each installed CHILD SA",
                                        labels=labels)
    for ike in status.get("ike_sas", []):
        for child in ike.get("children", []):
            if "bytes_in" not in child:
                continue  # negotiated but not installed in the data plane (yet)
            for direction in ("in", "out"):
                values = [str(ike.get("name")), str(child.get("name")), str(child.get("spi_in")), direction]
                child_bytes.add_metric(values, child.get(f"bytes_{direction}", 0))
                child_packets.add_metric(values, child.get(f"packets_{direction}", 0))
    yield child_bytes
    yield child_packets
    counters = status.get("counters") or {}
    for unit in ("bytes", "packets"):
        total = CounterMetricFamily(f"espgw_{unit}", f"Inner {unit} through all CHILD SAs, also those gone",
                                    labels=["direction"])
        for direction in ("in", "out"):
            total.add_metric([direction], counters.get(f"{unit}_{direction}", 0))
        yield total
    drops = CounterMetricFamily("espgw_drops", "Packets dropped, by reason (as `espgw status` shows them)",
                                labels=["reason"])
    for reason, count in sorted((status.get("drops") or {}).items()):
        drops.add_metric([reason], count)
    yield drops


def _sa_states(status: dict) -> Iterator[Metric]:
    ike_states = {state.value.upper(): 0 for state in IkeState if state != IkeState.DEAD}
    child_states = {state.value.upper(): 0 for state in ChildState}
    for ike in status.get("ike_sas", []):
        state = str(ike.get("state"))
        ike_states[state] = ike_states.get(state, 0) + 1
        for child in ike.get("children", []):
            state = str(child.get("state"))
            child_states[state] = child_states.get(state, 0) + 1
    for name, what, states in (("espgw_ike_sas", "IKE SAs", ike_states),
                               ("espgw_child_sas", "CHILD SAs", child_states)):
        gauge = GaugeMetricFamily(name, f"{what} by state", labels=["state"])
        for state, count in states.items():
            gauge.add_metric([state.lower()], count)
        yield gauge


# ----------------------------------------------------------------------------- HTTP, in the loop


class _Client:
    __slots__ = ("sock", "inbuf", "outbuf", "deadline")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.inbuf = b""
        self.outbuf = b""
        self.deadline = deadline


class MetricsServer:
    """Serves ``GET /metrics`` from ``registry`` on ``address`` ("HOST:PORT") through ``selector``,
    whose events the daemon's loop dispatches (``key.data(mask)``). HTTP/1.1, one request per
    connection; a client that stalls is dropped after CLIENT_TIMEOUT."""

    def __init__(self, address: str, registry: CollectorRegistry, selector: selectors.BaseSelector,
                 clock: Callable[[], float] = time.monotonic) -> None:
        host, port = split_host_port(address)
        self.address = address
        self.registry = registry
        self.selector = selector
        self.clock = clock
        self.clients: dict[socket.socket, _Client] = {}
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((host, port))
            self.listener.listen(16)
        except OSError:
            self.listener.close()
            raise
        self.port = self.listener.getsockname()[1]
        selector.register(self.listener, selectors.EVENT_READ, self._on_listener)
        log.info("metrics.listening", address=address)

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client)
        if self.listener.fileno() >= 0:
            unregister(self.selector, self.listener)
            self.listener.close()

    def _on_listener(self, mask: int) -> None:
        now = self.clock()
        for client in [c for c in self.clients.values() if c.deadline < now]:
            self._drop(client)  # checked here: stalled clients matter only when others come
        for sock in accept_pending(self.listener, "metrics.accept_failed"):
            if len(self.clients) >= MAX_CLIENTS:
                self._drop(next(iter(self.clients.values())))
            client = _Client(sock, now + CLIENT_TIMEOUT)
            self.clients[sock] = client
            self.selector.register(sock, selectors.EVENT_READ, lambda m, c=client: self._on_client(c, m))

    def _on_client(self, client: _Client, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(client)
            return
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.inbuf += data
        if b"\r\n\r\n" not in client.inbuf and b"\n\n" not in client.inbuf:
            if len(client.inbuf) > MAX_REQUEST:
                self._answer(client, 431, "text/plain", b"request header too large\n")
            return
        self._answer(client, *self._respond(client.inbuf))

    def _respond(self, request: bytes) -> tuple[int, str, bytes]:
        parts = request.split(b"\r\n", 1)[0].split()
        if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
            return 405, "text/plain", b"only GET /metrics\n"
        path = parts[1].split(b"?", 1)[0]
        if path not in (b"/metrics", b"/"):
            return 404, "text/plain", b"see /metrics\n"
        try:
            body = generate_latest(self.registry)
        except Exception:  # a bug in reading the gateway must not take the daemon down
            log.exception("metrics.collect_failed")
            return 500, "text/plain", b"collecting the metrics failed; see the daemon's log\n"
        return 200, CONTENT_TYPE_LATEST, body if parts[0] == b"GET" else b""

    def _answer(self, client: _Client, code: int, content_type: str, body: bytes) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large",
                  500: "Internal Server Error"}[code]
        head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode()
        client.outbuf = head + body
        client.inbuf = b""
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.outbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(client)
            return
        client.outbuf = client.outbuf[sent:]
        if not client.outbuf:
            self._drop(client)
        else:  # a large answer to a slow reader: wait until the socket takes more
            self.selector.modify(client.sock, selectors.EVENT_WRITE, lambda m, c=client: self._on_client(c, m))

    def _drop(self, client: _Client) -> None:
        self.clients.pop(client.sock, None)
        unregister(self.selector, client.sock)
        try:
            client.sock.close()
        except OSError:
            pass


def serve(gateway: Any, now: Callable[[], float]) -> MetricsServer:
    """Start the endpoint of ``gateway.settings.metrics`` in the gateway's loop."""
    from tunnel.daemon import status

    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(lambda: status.status(gateway, now()), lambda: gateway.ike.counts,
                                       gateway.event_counts))
    return MetricsServer(gateway.settings.metrics, registry, gateway.selector, clock=now)
