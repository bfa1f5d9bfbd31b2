"""Path MTU signalling for the tunnel: the tunnel MTU and ICMP "too big" replies.

``tunnel_mtu`` derives the largest inner packet that still fits the path after ESP encapsulation.
``frag_needed_v4`` (RFC 792/1191: type 3 code 4 with the next-hop MTU) and ``packet_too_big_v6``
(RFC 4443 s3.2) build the reply the gateway writes back into the TUN when an inner packet is too
big and must not be fragmented. Replies are built with dpkt, imported on the first reply: it is not
the per-packet fast path, and most gateways never send one (it would cost every daemon 2-4 MB).
"""

from __future__ import annotations

import ipaddress

__all__ = ["tunnel_mtu", "frag_needed_v4", "packet_too_big_v6", "too_big_reply", "IPV4_MIN_MTU",
           "IPV6_MIN_MTU"]

IPV4_MIN_MTU = 68  # RFC 791
IPV6_MIN_MTU = 1280  # RFC 8200 s5
_ICMP_DEFAULT_TTL = 64
# RFC 1812 s4.3.2.3: an ICMPv4 error quotes as much as fits in 576 bytes.
_ICMPV4_MAX_ERROR = 576
_ICMPV4_ERROR_TYPES = frozenset((3, 4, 5, 11, 12))
_ESP_HEADER = 8  # SPI + sequence number
_ESP_TRAILER = 2  # pad length + next header


def tunnel_mtu(path_mtu: int, *, iv_len: int, icv_len: int, align: int = 4, ipv6_outer: bool = False,
               udp_encap: bool = False) -> int:
    """Largest inner packet that, ESP-encapsulated in tunnel mode, fits a path of ``path_mtu``.

    The ESP payload (inner packet + pad length + next header) is padded to ``align`` (the
    cipher's block size, at least 4, RFC 4303 s2.4), so rather than subtracting the worst-case
    padding we round the room left down to ``align`` -- same safety, no wasted bytes.
    """
    if iv_len < 0 or icv_len < 0 or align < 1:
        raise ValueError("iv_len and icv_len must be >= 0 and align >= 1")
    align = max(align, 4)
    room = path_mtu - (40 if ipv6_outer else 20) - (8 if udp_encap else 0) - _ESP_HEADER - iv_len - icv_len
    mtu = room // align * align - _ESP_TRAILER
    if mtu < IPV4_MIN_MTU:
        raise ValueError(f"path MTU {path_mtu} leaves no room for an inner packet ({mtu} bytes)")
    return mtu


def _is_unicast(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (addr.is_multicast or addr.is_unspecified or (addr.version == 4 and addr == ipaddress.IPv4Address(
        "255.255.255.255")))


def frag_needed_v4(packet: bytes, mtu: int, source: str | bytes) -> bytes | None:
    """ICMP "fragmentation needed and DF set" for an IPv4 ``packet``, announcing ``mtu``.

    ``source`` is the gateway's inner address. Returns None where RFC 1122 s3.2.2 forbids an
    error: the packet is itself an ICMP error, a non-first fragment, or from a non-unicast source.
    """
    if len(packet) < 20 or packet[0] >> 4 != 4 or (packet[0] & 0x0F) < 5:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl or int.from_bytes(packet[6:8], "big") & 0x1FFF:
        return None
    if packet[9] == 1 and (len(packet) <= ihl or packet[ihl] in _ICMPV4_ERROR_TYPES):
        return None  # never answer an ICMP error (or a truncated ICMP message) with one
    src = ipaddress.IPv4Address(packet[12:16])
    if not _is_unicast(src):
        return None
    quote = packet[:_ICMPV4_MAX_ERROR - 20 - 8]
    import dpkt

    # RFC 1191 s4: the next-hop MTU sits in the low 16 bits of the formerly unused word.
    body = dpkt.icmp.ICMP.Unreach(pad=0, mtu=min(mtu, 0xFFFF), data=quote)
    icmp = dpkt.icmp.ICMP(type=dpkt.icmp.ICMP_UNREACH, code=dpkt.icmp.ICMP_UNREACH_NEEDFRAG, data=body)
    src_bytes = source if isinstance(source, bytes) else ipaddress.IPv4Address(source).packed
    ip = dpkt.ip.IP(src=src_bytes, dst=packet[12:16], p=dpkt.ip.IP_PROTO_ICMP, ttl=_ICMP_DEFAULT_TTL, data=icmp)
    return bytes(ip)  # dpkt fills the ICMP and IP checksums when packing


def packet_too_big_v6(packet: bytes, mtu: int, source: str | bytes) -> bytes | None:
    """ICMPv6 "packet too big" (RFC 4443 s3.2) for an IPv6 ``packet``, announcing ``mtu``.

    Unlike other ICMPv6 errors, packet too big is sent for multicast destinations too (s2.4 e.3),
    but never to an unspecified or multicast source, nor in answer to an ICMPv6 error.
    """
    if len(packet) < 40 or packet[0] >> 4 != 6:
        return None
    src = ipaddress.IPv6Address(packet[8:24])
    if not _is_unicast(src):
        return None
    if packet[6] == 58 and (len(packet) < 41 or packet[40] < 128):
        return None  # ICMPv6 errors are types 0..127
    # RFC 4443 s2.4 c: quote as much as fits without the reply exceeding the minimum IPv6 MTU.
    quote = packet[:IPV6_MIN_MTU - 40 - 8]
    payload = mtu.to_bytes(4, "big") + quote
    import dpkt

    icmp = dpkt.icmp6.ICMP6(type=dpkt.icmp6.ICMP6_PACKET_TOO_BIG, code=0, data=payload)
    src_bytes = source if isinstance(source, bytes) else ipaddress.IPv6Address(source).packed
    ip = dpkt.ip6.IP6(src=src_bytes, dst=packet[8:24], nxt=58, hlim=_ICMP_DEFAULT_TTL, data=icmp)
    ip.plen = len(bytes(icmp))
    return bytes(ip)  # dpkt computes the ICMPv6 checksum over the pseudo-header here


def too_big_reply(packet: bytes, mtu: int, source_v4: str | bytes | None,
                  source_v6: str | bytes | None) -> bytes | None:
    """The right "too big" message for ``packet``'s IP version, or None if none may/can be sent."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and source_v4 is not None:
        return frag_needed_v4(packet, mtu, source_v4)
    if version == 6 and source_v6 is not None:
        return packet_too_big_v6(packet, mtu, source_v6)
    return None
