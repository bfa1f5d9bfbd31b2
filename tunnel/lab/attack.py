"""Hostile traffic for the namespace lab: ESP copies and mutations, junk on UDP 500/4500, and
floods of spoofed IKE_SA_INIT requests.

The builders are pure (bytes in, bytes out) and run in the test process; the packets leave from
inside a lab namespace through ``python -m tunnel.lab.attack``, which sends whole IPv4 or IPv6
packets (our own header, any source address) on a raw header-included socket. Lab use only: the
sender refuses destinations outside the documentation ranges the lab uses.

    python -m tunnel.lab.attack send FILE            # one hex IPv4 or IPv6 packet a line
    python -m tunnel.lab.attack flood TEMPLATE_HEX DST SOURCES COUNT SECONDS
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Iterator

import dpkt

IPPROTO_ESP = 50
IPPROTO_UDP = 17
IPPROTO_FRAGMENT = 44
LINK_MTU = 1500
_LAB_RANGES = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "10.0.0.0/8",
                                                 "2001:db8::/32", "fd00::/8")]


# --- packet builders ------------------------------------------------------------------------------
def ipv4_packets(src: str, dst: str, proto: int, payload: bytes, *, ident: int = 0, ttl: int = 64,
                 mtu: int = LINK_MTU) -> list[bytes]:
    """``payload`` in one IPv4 packet, or in fragments of at most ``mtu`` bytes when it is larger."""
    addrs = socket.inet_aton(src) + socket.inet_aton(dst)
    chunk = (mtu - 20) // 8 * 8
    pieces = [payload[i:i + chunk] for i in range(0, len(payload), chunk)] or [b""]
    packets = []
    for index, piece in enumerate(pieces):
        more = index < len(pieces) - 1
        flags_offset = (0x2000 if more else 0) | (index * chunk // 8)
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(piece), ident, flags_offset, ttl, proto, 0,
                             addrs[:4], addrs[4:])
        header = header[:10] + struct.pack("!H", dpkt.in_cksum(header)) + header[12:]
        packets.append(header + piece)
    return packets


def ipv6_packets(src: str, dst: str, proto: int, payload: bytes, *, ident: int = 0, hop_limit: int = 64,
                 mtu: int = LINK_MTU) -> list[bytes]:
    """``payload`` in one IPv6 packet, or behind fragment headers (RFC 8200 s4.5) when it is larger."""
    addrs = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    if 40 + len(payload) <= mtu:
        return [struct.pack("!IHBB", 6 << 28, len(payload), proto, hop_limit) + addrs + payload]
    chunk = (mtu - 48) // 8 * 8
    packets = []
    for start in range(0, len(payload), chunk):
        piece = payload[start:start + chunk]
        more = start + chunk < len(payload)
        # offset in 8-byte units sits above 3 flag bits: a multiple of 8 is already in place
        fragment = struct.pack("!BBHI", proto, 0, start | more, ident)
        packets.append(struct.pack("!IHBB", 6 << 28, 8 + len(piece), IPPROTO_FRAGMENT, hop_limit) + addrs
                       + fragment + piece)
    return packets


def ip_packets(src: str, dst: str, proto: int, payload: bytes, *, ident: int = 0) -> list[bytes]:
    """``ipv4_packets`` or ``ipv6_packets``, by the addresses' family."""
    build = ipv6_packets if ":" in dst else ipv4_packets
    return build(src, dst, proto, payload, ident=ident)


def udp_datagram(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header and payload with a correct checksum over the IPv4 or IPv6 pseudo-header."""
    length = 8 + len(payload)
    if ":" in dst:
        pseudo = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                  + struct.pack("!I3xB", length, IPPROTO_UDP))
    else:
        pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, IPPROTO_UDP, length)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    checksum = dpkt.in_cksum(pseudo + header + payload) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length, checksum) + payload


def esp_header(esp: bytes) -> tuple[int, int]:
    """(SPI, sequence number) of an ESP packet."""
    return struct.unpack_from("!II", esp)


def bit_flipped(esp: bytes, seq_jump: int = 1 << 20, bit: int = 0) -> bytes:
    """A copy moved to a sequence number not yet seen (so the replay check passes) with one more
    bit flipped in the encrypted payload: only the ICV can reject it."""
    spi, seq = esp_header(esp)
    body = bytearray(esp[8:])
    position = min(len(body) - 1, 12 + bit // 8)
    body[position] ^= 1 << (bit % 8)
    return struct.pack("!II", spi, (seq + seq_jump) & 0xFFFFFFFF) + bytes(body)


def with_spi(esp: bytes, spi: int) -> bytes:
    return struct.pack("!I", spi) + esp[4:]


def oversized_esp(spi: int, seq: int, size: int, rng=os.urandom) -> bytes:
    """An ESP packet of ``size`` bytes for a real SPI, with a fresh sequence number and junk after."""
    return struct.pack("!II", spi, seq) + rng(size - 8)


def esp_from_pcap(path: str | Path, src: str, dst: str) -> list[bytes]:
    """The ESP part (from the SPI on) of every unfragmented ESP packet src -> dst in a pcap: IPv4,
    or IPv6 with ESP right after the fixed header."""
    import dpkt  # capture parsing only, never on the gateway's packet path

    found = []
    want = (ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    with open(path, "rb") as f:
        for _ts, frame in dpkt.pcap.Reader(f):
            if len(frame) >= 54 and frame[12:14] == b"\x86\xdd":
                ip6 = frame[14:]
                if ip6[6] == IPPROTO_ESP and (ip6[8:24], ip6[24:40]) == want:
                    found.append(bytes(ip6[40:40 + struct.unpack("!H", ip6[4:6])[0]]))
                continue
            if len(frame) < 34 or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
            ihl = (ip[0] & 0x0F) * 4
            if (ip[9] != IPPROTO_ESP or socket.inet_ntoa(ip[12:16]) != src
                    or socket.inet_ntoa(ip[16:20]) != dst or struct.unpack("!H", ip[6:8])[0] & 0x3FFF):
                continue
            total = struct.unpack("!H", ip[2:4])[0]
            found.append(bytes(ip[ihl:total]))
    return found


def write_packets(path: str | Path, packets: Iterable[bytes]) -> int:
    lines = [p.hex() for p in packets]
    Path(path).write_text("\n".join(lines) + "\n")
    return len(lines)


def ike_junk(count: int, seed: int = 7) -> list[bytes]:
    """Datagrams for an IKE port: every other one plain noise, the rest IKE-shaped (version 2.0,
    a real exchange type and a matching length field) around random SPIs, flags and payloads."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        body = rng.randbytes(rng.randrange(0, 400))
        if i % 2 == 0:
            out.append(rng.randbytes(rng.randrange(1, 28)) + body)
            continue
        spi_r = bytes(8) if i % 4 == 1 else rng.randbytes(8)
        header = rng.randbytes(8) + spi_r + struct.pack("!BBBBII", rng.randrange(256), 0x20,
                                                        rng.choice((34, 35, 36, 37)), rng.choice((0x08, 0x20, 0x28)),
                                                        rng.randrange(3), 28 + len(body))
        out.append(header + body)
    return out


def ike_sa_init_template(local: str, remote: str, proposals: list[str] | None = None) -> bytes:
    """A well-formed IKE_SA_INIT request (SA, KE, Ni, notifies) as espgw's initiator sends it;
    the flood varies its SPIi, so every copy looks like a new peer's first message."""
    from ike.config import AuthConfig, ChildConfig, ConnectionConfig, TrafficSelector
    from ike.endpoint import IkeEndpoint

    kw: dict[str, Any] = {"proposals": proposals} if proposals else {}
    conn = ConnectionConfig("flood", [local], [remote], AuthConfig(id="flood"), AuthConfig(id="victim"),
                            psk=os.urandom(32), children=[ChildConfig(
                                "c", [TrafficSelector.from_cidr("0.0.0.0/0")],
                                [TrafficSelector.from_cidr("0.0.0.0/0")])], **kw)
    endpoint = IkeEndpoint([conn], rng=os.urandom)
    endpoint.initiate("flood", None, 0.0)
    (first, *_rest) = endpoint.datagrams_to_send(0.0)
    return first.data


def flood_requests(template: bytes, dst: str, sources: str, count: int, seed: int = 0) -> Iterator[bytes]:
    """``count`` IPv4/UDP IKE_SA_INIT requests to dst:500 from random addresses of ``sources``,
    each with its own SPIi and source port."""
    rng = random.Random(seed)
    net = ipaddress.ip_network(sources)
    hosts = net.num_addresses - 2 if net.num_addresses > 2 else net.num_addresses
    base = int(net.network_address) + (1 if net.num_addresses > 2 else 0)
    for _ in range(count):
        src = str(ipaddress.IPv4Address(base + rng.randrange(hosts)))
        message = rng.randbytes(8) + template[8:]
        yield ipv4_packets(src, dst, IPPROTO_UDP, udp_datagram(src, dst, rng.randrange(1024, 65536), 500, message),
                           ident=rng.randrange(65536))[0]


# --- the sender (runs inside a lab namespace) -------------------------------------------------------
def _lab_only(dst: str) -> None:
    if not any(ipaddress.ip_address(dst) in net for net in _LAB_RANGES):
        raise SystemExit(f"refusing to send to {dst}: not a lab address")


class RawSender:
    """Whole IPv4 or IPv6 packets out as they are (IP_HDRINCL; an IPv6 IPPROTO_RAW socket includes
    the header too); failures are counted, never raised."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        self._sock6: socket.socket | None = None
        self.sent = self.failed = 0

    def send(self, packet: bytes) -> None:
        if packet[:1] and packet[0] >> 4 == 6:
            dst = socket.inet_ntop(socket.AF_INET6, packet[24:40])
            if self._sock6 is None:
                self._sock6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
            sock = self._sock6
        else:
            dst = socket.inet_ntoa(packet[16:20])
            sock = self.sock
        _lab_only(dst)
        try:
            sock.sendto(packet, (dst, 0))
            self.sent += 1
        except OSError:
            self.failed += 1


def send_file(path: str, interval: float = 0.0) -> dict:
    sender = RawSender()
    for line in Path(path).read_text().split():
        sender.send(bytes.fromhex(line))
        if interval:
            time.sleep(interval)
    return {"sent": sender.sent, "failed": sender.failed}


def flood(template: bytes, dst: str, sources: str, count: int, seconds: float) -> dict:
    """Send ``count`` spoofed requests evenly over ``seconds`` (in bursts of 50)."""
    _lab_only(dst)
    sender = RawSender()
    start = time.monotonic()
    burst = 50
    for index, packet in enumerate(flood_requests(template, dst, sources, count)):
        if index % burst == 0:
            due = start + seconds * index / count
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        sender.send(packet)
    return {"sent": sender.sent, "failed": sender.failed, "seconds": round(time.monotonic() - start, 2)}


def main(argv: list[str]) -> int:
    if argv[:1] == ["send"] and len(argv) in (2, 3):
        result = send_file(argv[1], float(argv[2]) if len(argv) == 3 else 0.0)
    elif argv[:1] == ["flood"] and len(argv) == 6:
        result = flood(bytes.fromhex(argv[1]), argv[2], argv[3], int(argv[4]), float(argv[5]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


__all__ = ["ipv4_packets", "ipv6_packets", "ip_packets", "udp_datagram", "esp_header", "bit_flipped", "with_spi",
           "oversized_esp",
           "esp_from_pcap", "write_packets", "ike_junk", "ike_sa_init_template", "flood_requests", "send_file", "flood"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
