"""EspReceiver: a receive batch decapsulated, checked and handed on in order; every bad packet a counted drop."""

from __future__ import annotations

import ipaddress
import struct

from esp.errors import DropReason
from esp.sa import InboundSA, OutboundSA
from esp.sadb import SADatabase
from ike.config import TrafficSelector
from tunnel.dataplane.receive import DropLog, EspReceiver, InboundFilter
from tunnel.dataplane.policy import PolicyTable

KEY_A, KEY_B = bytes(range(36)), bytes(range(1, 37))


def ts(net: str) -> TrafficSelector:
    n = ipaddress.ip_network(net)
    return TrafficSelector(n[0], n[-1])


def packet(src: str, dst: str, seq: int, tos: int = 0, size: int = 200) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, tos, size, 0, 0x4000, 64, 6, 0,
                     ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    tcp = struct.pack("!HHIIBBHHH", 5201, 40000, seq, 1, 0x50, 0x10, 500, 0, 0)
    return ip + tcp + bytes(size - 40)


class Setup:
    def __init__(self) -> None:
        self.sadb = SADatabase()
        self.policy = PolicyTable()
        self.sas = {}
        for spi, key, remote in ((0x100, KEY_A, "10.2.0.0/16"), (0x200, KEY_B, "10.3.0.0/16")):
            sa = InboundSA(spi, "aes256gcm16", key)
            self.sadb.add_inbound(sa)
            self.policy.add(spi, [ts("10.1.0.0/16")], [ts(remote)], object())
            self.policy.bind_inbound(spi, sa)
            self.sas[spi] = sa
        self.peers = {0x100: OutboundSA(0x100, "aes256gcm16", KEY_A), 0x200: OutboundSA(0x200, "aes256gcm16", KEY_B)}
        self.out: list[bytes] = []
        self.receiver = EspReceiver(self.sadb, InboundFilter(self.policy), self.out.append, DropLog())


def test_batch_in_order_across_sas_and_seen_once_per_sa():
    s = Setup()
    inners = [packet("10.2.0.1", "10.1.0.1", i) for i in range(3)] + [packet("10.3.0.1", "10.1.0.1", 9)]
    inners.append(packet("10.2.0.1", "10.1.0.1", 10))
    esps = [s.peers[0x200 if p[12] == 10 and p[13] == 3 else 0x100].encapsulate(p) for p in inners]
    seen: dict = {}
    s.receiver.receive(esps, 0, seen)
    assert s.out == inners
    assert seen == {0x100: s.sas[0x100], 0x200: s.sas[0x200]}


def test_every_bad_packet_is_a_counted_drop_and_the_rest_goes_on():
    s = Setup()
    good = [packet("10.2.0.1", "10.1.0.1", i) for i in range(4)]
    esps = [s.peers[0x100].encapsulate(p) for p in good]
    spoofed = s.peers[0x100].encapsulate(packet("10.3.0.1", "10.1.0.1", 5))  # another SA's selectors
    tampered = esps[2][:-1] + bytes([esps[2][-1] ^ 1])
    batch = [esps[0], b"\x00\x00\x01", struct.pack("!II", 0x999, 1) + bytes(40), esps[0], spoofed, tampered, esps[1],
             esps[3]]
    seen: dict = {}
    s.receiver.receive(batch, 0, seen)
    assert s.out == [good[0], good[1], good[3]]
    drops = s.sas[0x100].counters.drops
    assert drops[DropReason.REPLAY] == 1 and drops[DropReason.INNER_MISMATCH] == 1
    assert drops[DropReason.AUTH_FAILED] == 1
    assert s.sadb.counters.drops[DropReason.TRUNCATED] == 1 and s.sadb.counters.drops[DropReason.UNKNOWN_SPI] == 1


def test_ecn_ce_marks_the_inner_packet_and_ce_over_not_ect_is_a_drop():
    s = Setup()
    ect0 = packet("10.2.0.1", "10.1.0.1", 1, tos=0xB8 | 2)
    not_ect = packet("10.2.0.1", "10.1.0.1", 2, tos=0xB8)
    esps = [s.peers[0x100].encapsulate(p) for p in (ect0, not_ect)]
    s.receiver.receive(esps, 3, {})
    assert len(s.out) == 1 and s.out[0][1] == 0xB8 | 3
    assert s.sas[0x100].counters.drops[DropReason.ECN_DROP] == 1


def test_receive_ipv4_parses_the_outer_header_per_packet():
    s = Setup()
    inners = [packet("10.2.0.1", "10.1.0.1", i, tos=2) for i in range(4)]
    esps = [s.peers[0x100].encapsulate(p) for p in inners]
    outer = lambda ecn, esp, ihl=5: bytes((0x40 | ihl, ecn)) + bytes(ihl * 4 - 2) + esp  # noqa: E731
    datagrams = [outer(0, esps[0]), b"\x45\x00", outer(3, esps[1]), outer(0, esps[2], ihl=6), outer(0, esps[3]),
                 b"\x42" + bytes(30)]
    assert s.receiver.receive_ipv4(datagrams, {}) == 2
    assert [p[1] for p in s.out] == [2, 3, 2, 2]  # the CE-marked one changed, in order
    assert [p[20:] for p in s.out] == [p[20:] for p in inners]
