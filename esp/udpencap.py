"""ESP in UDP for NAT traversal (RFC 3948)."""

from __future__ import annotations

import struct
from typing import Literal

NAT_KEEPALIVE = b"\xff"
NON_ESP_MARKER = b"\x00\x00\x00\x00"
_UDP = struct.Struct("!HHHH")


def udp_encapsulate(esp: bytes, sport: int, dport: int) -> bytes:
    # RFC 3948 s2.1: the UDP checksum SHOULD be 0 over IPv4; over IPv6 the caller's
    # socket computes it (the kernel fills it in for UDP sockets).
    return _UDP.pack(sport, dport, 8 + len(esp), 0) + esp


def classify_udp4500(payload: bytes) -> Literal["esp", "ike", "keepalive"]:
    """What a datagram on port 4500 carries (RFC 3948 s2.2, s2.3)."""
    if payload == NAT_KEEPALIVE:
        return "keepalive"
    if payload[:4] == NON_ESP_MARKER:
        return "ike"      # IKE behind the non-ESP marker (also a too-short all-zero datagram)
    return "esp"          # an SPI is never zero; too-short ESP is dropped as TRUNCATED later
