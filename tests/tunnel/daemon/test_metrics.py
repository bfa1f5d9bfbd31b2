"""tunnel.daemon.metrics: the collector reads the status report and counts at scrape time; the
server answers HTTP from a selector loop without blocking it."""

from __future__ import annotations

import selectors
import socket
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from ike.events import ChildSaUp, IkeSaUp, NegotiationFailed
from tunnel.daemon.metrics import EventCounts, GatewayCollector, MetricsServer

STATUS = {
    "uptime": 12.5,
    "ike_sas": [
        {"name": "office", "state": "ESTABLISHED", "children": [
            {"name": "lan", "state": "INSTALLED", "spi_in": "c1a2b3c4", "bytes_in": 840, "bytes_out": 1680,
             "packets_in": 10, "packets_out": 20},
            {"name": "voice", "state": "REKEYING"},  # negotiated, not in the data plane: no traffic series
        ]},
        {"name": "branch", "state": "CONNECTING", "children": []},
    ],
    "counters": {"bytes_in": 1000, "bytes_out": 2000, "packets_in": 11, "packets_out": 22},
    "drops": {"no_policy": 3, "replay": 1},
}


def fake_event(cls, **fields):
    event = cls.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(event, name, value)
    return event


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def registry_of(status=STATUS, counts=None, events=None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(lambda: status, lambda: counts or {}, events or EventCounts()))
    return registry


def test_traffic_drops_and_states_come_from_the_status_report():
    got = samples(registry_of())
    lan = (("child", "lan"), ("connection", "office"), ("spi_in", "c1a2b3c4"))
    assert got[("espgw_child_sa_bytes_total", tuple(sorted(lan + (("direction", "in"),))))] == 840
    assert got[("espgw_child_sa_packets_total", tuple(sorted(lan + (("direction", "out"),))))] == 20
    assert not any(key[0].startswith("espgw_child_sa_") and ("child", "voice") in key[1] for key in got)
    assert got[("espgw_bytes_total", (("direction", "out"),))] == 2000
    assert got[("espgw_packets_total", (("direction", "in"),))] == 11
    assert got[("espgw_drops_total", (("reason", "no_policy"),))] == 3
    assert got[("espgw_ike_sas", (("state", "established"),))] == 1
    assert got[("espgw_ike_sas", (("state", "connecting"),))] == 1
    assert got[("espgw_ike_sas", (("state", "deleting"),))] == 0  # every state is a series, also at 0
    assert got[("espgw_child_sas", (("state", "rekeying"),))] == 1
    assert got[("espgw_uptime_seconds", ())] == 12.5


def test_handshakes_failures_rekeys_dpd_and_retransmits():
    events = EventCounts()
    events.add(fake_event(IkeSaUp, initiator=True, rekeyed_from=None))
    events.add(fake_event(IkeSaUp, initiator=False, rekeyed_from=None))
    events.add(fake_event(IkeSaUp, initiator=True, rekeyed_from=1))
    events.add(fake_event(ChildSaUp, rekeyed_from=None))
    events.add(fake_event(ChildSaUp, rekeyed_from=0x1234))
    events.add(fake_event(NegotiationFailed, stage="IKE_AUTH", notify="AUTHENTICATION_FAILED"))
    events.add(fake_event(NegotiationFailed, stage="IKE_AUTH", notify="AUTHENTICATION_FAILED"))
    got = samples(registry_of(counts={"retransmits": 4, "dpd_alive": 7, "dpd_dead": 1}, events=events))
    assert got[("espgw_ike_handshakes_total", (("role", "initiator"),))] == 1
    assert got[("espgw_ike_handshakes_total", (("role", "responder"),))] == 1
    assert got[("espgw_rekeys_total", (("kind", "ike"),))] == 1
    assert got[("espgw_rekeys_total", (("kind", "child"),))] == 1
    assert got[("espgw_negotiation_failures_total", (("reason", "AUTHENTICATION_FAILED"), ("stage", "IKE_AUTH")))] == 2
    assert got[("espgw_dpd_total", (("result", "alive"),))] == 7
    assert got[("espgw_dpd_total", (("result", "dead"),))] == 1
    assert got[("espgw_ike_retransmits_total", ())] == 4


class Loop:
    """A selector loop in a thread, as the daemon's: dispatches ``key.data(mask)``."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            for key, mask in self.selector.select(0.05):
                key.data(mask)


@pytest.fixture
def server():
    loop = Loop()
    metrics = MetricsServer("127.0.0.1:0", registry_of(), loop.selector)
    loop.thread.start()
    yield metrics
    loop.stop.set()
    loop.thread.join(5)
    metrics.close()
    loop.selector.close()


def test_scrape_over_http(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as answer:
        assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain")
        text = answer.read().decode()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"espgw_child_sa_bytes", "espgw_drops", "espgw_ike_sas", "espgw_dpd"} <= names
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/nope", timeout=5)
    assert info.value.code == 404


def test_stalled_and_garbage_clients_do_not_block_others(server):
    stalled = socket.create_connection(("127.0.0.1", server.port))  # connects, never asks
    garbage = socket.create_connection(("127.0.0.1", server.port))
    garbage.sendall(b"\x00\xff nonsense\r\n\r\n")
    try:
        assert garbage.recv(100).startswith(b"HTTP/1.1 405")
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as answer:
            assert answer.status == 200
    finally:
        stalled.close()
        garbage.close()


def test_a_collector_bug_is_a_500_not_a_crash():
    def broken() -> dict:
        raise RuntimeError("bug")

    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(broken, dict, EventCounts()))
    server = MetricsServer("127.0.0.1:0", registry, selectors.DefaultSelector())
    try:
        assert server._respond(b"GET /metrics HTTP/1.1\r\n\r\n")[0] == 500
    finally:
        server.close()


def test_bind_failure_is_named_by_startup_diagnosis():
    from tests.tunnel.ops.helpers import MINIMAL
    from tunnel.daemon import startup
    from tunnel.ops.config import parse_config

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    config = parse_config(f'[gateway]\nmetrics = "127.0.0.1:{port}"\n' + MINIMAL)
    try:
        with pytest.raises(OSError) as info:
            MetricsServer(config.gateway.metrics, CollectorRegistry(), selectors.DefaultSelector())
        problem = startup.diagnose(info.value, config)
    finally:
        holder.close()
    assert problem.resource == f"metrics endpoint 127.0.0.1:{port}"
    assert problem.message.startswith(f"TCP 127.0.0.1:{port} of the metrics endpoint 127.0.0.1:{port} is already "
                                      "in use by ")
