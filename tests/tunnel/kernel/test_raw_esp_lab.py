"""Raw ESP with the kernel building the outer IPv4 header: TOS/ECN and DF per packet, source choice."""

from __future__ import annotations

import socket
import time

import pytest

from tests.tunnel.kernel.helpers import A4, B4, esp, gather
from tunnel.kernel.udp import RawEspSocket, parse_ipv4_esp

pytestmark = pytest.mark.lab


def test_kernel_header_copies_tos_and_df_per_packet(pair):
    a, b = pair
    with a.entered():
        sender = RawEspSocket(socket.AF_INET, A4, kernel_header=True)
    with b.entered():
        receiver = RawEspSocket(socket.AF_INET, B4)
    try:
        send = sender.esp_sender(B4)
        plan = [(0x00, False), (0x00, False), (0xB8 | 2, True), (0x01, True), (0x01, False), (0x00, False)]
        packets = [esp(0x3000 + i, i + 1, 100 + i) for i in range(len(plan))]
        for packet, (tos, df) in zip(packets, plan):
            assert send(packet, tos, df)
        got = gather(receiver.read_batch, len(plan))
        assert [parse_ipv4_esp(d).esp for d in got] == packets
        assert [(d[1], bool(d[6] & 0x40)) for d in got] == plan
        assert all(d[9] == 50 and d[12:16] == socket.inet_aton(A4) and d[8] == 64 for d in got)
        assert sender.send_esp(esp(0x3100, 1), B4, tos=2, df=True)  # the generic call takes the same path
        (last,) = gather(receiver.read_batch, 1)
        assert last[1] == 2 and last[6] & 0x40
        # DF clear and too big for the link: the kernel fragments the outer packet
        assert send(esp(0x3200, 1, 3000), 0, False)
        fragments = gather(receiver.read_batch, 1)  # reassembled before a raw socket sees it
        assert len(fragments) == 1 and len(parse_ipv4_esp(fragments[0]).esp) == 3000
        # DF set and too big: a counted drop, not an exception
        assert not send(esp(0x3201, 1, 3000), 0, True)
        assert sender.counters["send_dropped"] == 1
    finally:
        sender.close()
        receiver.close()


def test_kernel_header_wildcard_socket_sends_from_the_sa_address(pair):
    a, b = pair
    with a.entered():
        sender = RawEspSocket(socket.AF_INET, "0.0.0.0", kernel_header=True)
    with b.entered():
        receiver = RawEspSocket(socket.AF_INET, B4)
    try:
        assert sender.esp_sender(B4, A4)(esp(0x4000, 1), 0, True)
        (got,) = gather(receiver.read_batch, 1)
        assert got[12:16] == socket.inet_aton(A4)
        with pytest.raises(ValueError):
            RawEspSocket.esp_sender(receiver, B4)  # an IP_HDRINCL socket builds its own headers
    finally:
        sender.close()
        receiver.close()


def test_read_esp_batch_splits_gro_runs_and_keeps_ike_apart(pair):
    """The data path's UDP read: ESP as per-datagram lists (GRO split), IKE and junk as read_batch has them."""
    from tunnel.kernel.udp import NON_ESP_MARKER, UdpIkeSockets

    a, b = pair
    with a.entered():
        sender = UdpIkeSockets([A4], ports=(500, 4500))
    with b.entered():
        receiver = UdpIkeSockets([B4], ports=(500, 4500), gro=True)
    try:
        packets = [esp(0xAB, i + 1, 200) for i in range(20)] + [esp(0xAB, 21, 120)]
        send_batch = sender.endpoint((A4, 4500), (B4, 4500), natt=True).esp_batch_sender((B4, 4500), A4)
        assert send_batch(packets) == len(packets)
        assert sender.counters["gso_sends"] == 1
        endpoint = sender.endpoint((A4, 4500), (B4, 4500), natt=True)
        endpoint.send(NON_ESP_MARKER + b"IKE", (B4, 4500))
        endpoint.send(b"\xff", (B4, 4500))  # keepalive
        endpoint.send(esp(0xAB, 22, 64), (B4, 4500))
        fd = next(ep.fd for ep in receiver.endpoints if ep.natt)
        runs, others = [], []
        deadline = time.monotonic() + 3
        while sum(len(p) for p, _ in runs) < 22 and time.monotonic() < deadline:
            got_runs, got_others = receiver.read_esp_batch(fd)
            runs += got_runs
            others += got_others
            time.sleep(0.01)
        others += receiver.read_esp_batch(fd)[1]
        received = [p for run, _ in runs for p in run]
        assert received[:21] == packets and len(received) == 22 and received[21][:8] == esp(0xAB, 22)[:8]
        assert len(runs) < 10 and all(ecn == 0 for _, ecn in runs)  # GRO merged the burst
        assert [(d.kind, d.data, d.local) for d in others] == [("ike", b"IKE", (B4, 4500))]
        counters = receiver.counters
        assert counters["esp"] == 22 and counters["keepalive"] == 1 and counters["ike"] == 1
    finally:
        sender.close()
        receiver.close()


def test_tunnel_sender_copies_tos_and_df_from_the_inner_packet(pair):
    a, b = pair
    with a.entered():
        sender = RawEspSocket(socket.AF_INET, "0.0.0.0", kernel_header=True)
    with b.entered():
        receiver = RawEspSocket(socket.AF_INET, B4)
    try:
        send = sender.tunnel_sender(B4, A4)
        v4 = lambda tos, df: bytes((0x45, tos, 0, 20, 0, 0, 0x40 if df else 0, 0)) + bytes(12)  # noqa: E731
        v6 = lambda tclass: bytes((0x60 | tclass >> 4, (tclass & 0x0F) << 4)) + bytes(38)  # noqa: E731
        plan = [(v4(0, False), 0, False), (v4(0xB8 | 1, True), 0xB9, True), (v6(0x2A), 0x2A, True),
                (v4(3, False), 3, False)]
        packets = [esp(0x5000 + i, i + 1, 80) for i in range(len(plan))]
        for packet, (inner, _, _) in zip(packets, plan):
            assert send(packet, inner)
        got = gather(receiver.read_batch, len(plan))
        assert [parse_ipv4_esp(d).esp for d in got] == packets
        assert [(d[1], bool(d[6] & 0x40)) for d in got] == [(tos, df) for _, tos, df in plan]
        assert all(d[12:16] == socket.inet_aton(A4) for d in got)  # the SA's source on a wildcard socket
        with pytest.raises(ValueError):
            RawEspSocket.tunnel_sender(receiver, B4)
    finally:
        sender.close()
        receiver.close()
