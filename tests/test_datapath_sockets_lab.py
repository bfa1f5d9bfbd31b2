"""Raw ESP with the kernel building the outer IPv4 header: TOS/ECN and DF per packet, source choice."""

from __future__ import annotations

import socket

import pytest

from test_sockets_lab import A4, B4, esp, gather, pair  # noqa: F401 (pair is a fixture)
from tunnel.sockets import RawEspSocket, parse_ipv4_esp

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
