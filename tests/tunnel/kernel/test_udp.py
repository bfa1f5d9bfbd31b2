"""RFC 3948 framing on a NAT-T port, on loopback (no root): what is IKE, ESP, a keepalive or junk."""

from __future__ import annotations

import socket
import time

from ike.codec.constants import NON_ESP_MARKER
from tunnel.kernel.udp import NAT_KEEPALIVE, UdpEndpoint


def _received(endpoint: UdpEndpoint, *payloads: bytes, natt_reader: bool = True):
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for payload in payloads:
            sender.sendto(payload, ("127.0.0.1", endpoint.port))
        time.sleep(0.05)
        return endpoint.read_esp_batch(64) if natt_reader else (None, endpoint.read_batch(64))
    finally:
        sender.close()


def test_port_4500_sorts_ike_esp_keepalives_and_junk():
    endpoint = UdpEndpoint("127.0.0.1", 0, natt=True)
    esp = bytes.fromhex("c0ffee01") + bytes(20)
    try:
        runs, others = _received(endpoint, NON_ESP_MARKER + b"an IKE message", esp, NAT_KEEPALIVE,
                                 b"\x01\x02", NON_ESP_MARKER)
        assert runs == [([esp], 0)]
        assert [(d.kind, d.data) for d in others] == [("ike", b"an IKE message")]  # the marker stripped
        counters = endpoint.counters
        assert counters["ike"] == 1 and counters["esp"] == 1 and counters["keepalive"] == 1
        assert counters["malformed"] == 2  # a runt shorter than an ESP header, a marker and nothing else
    finally:
        endpoint.close()


def test_port_500_carries_ike_without_a_marker():
    endpoint = UdpEndpoint("127.0.0.1", 0, natt=False)
    try:
        _, got = _received(endpoint, b"IKE on 500", NON_ESP_MARKER + b"also IKE", natt_reader=False)
        assert [(d.kind, d.data) for d in got] == [("ike", b"IKE on 500"), ("ike", NON_ESP_MARKER + b"also IKE")]
    finally:
        endpoint.close()
