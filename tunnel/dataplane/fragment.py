"""Fitting inner packets to the tunnel MTU before encryption (RFC 4459 s3, "pre-fragmentation").

An IPv4 packet without DF that exceeds the tunnel MTU is split into IPv4 fragments, each then
encrypted on its own; the far end's stack reassembles them. IPv4 with DF set and every oversize
IPv6 packet (RFC 8200: only the source fragments) get an ICMP "too big" reply instead.
``fit_to_mtu`` makes that decision for the daemon in one call.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from tunnel.dataplane.icmp import IPV4_MIN_MTU, too_big_reply

__all__ = ["FragmentError", "MtuVerdict", "fragment_ipv4", "fit_to_mtu", "ipv4_header_checksum"]

_DF = 0x4000
_MF = 0x2000
_OFFSET_MASK = 0x1FFF
_OPTION_COPIED = 0x80  # RFC 791: options with this bit go into every fragment
_OPTION_END, _OPTION_NOP = 0, 1


class FragmentError(ValueError):
    """The packet cannot be fragmented (malformed, DF set, or the MTU is too small)."""


class MtuVerdict(NamedTuple):
    """What to do with one inner packet: encrypt each of ``packets``; write ``icmp_reply`` to the TUN."""

    packets: list[bytes]
    icmp_reply: bytes | None


def ipv4_header_checksum(header: bytes | bytearray) -> int:
    """RFC 1071 checksum of an IPv4 header whose checksum field is zero."""
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _copied_options(options: bytes) -> bytes:
    """The options that RFC 791 says every fragment after the first carries, padded to 32 bits."""
    kept = bytearray()
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == _OPTION_END:
            break
        if kind == _OPTION_NOP:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2 or i + options[i + 1] > len(options):
            raise FragmentError("malformed IPv4 options")
        length = options[i + 1]
        if kind & _OPTION_COPIED:
            kept += options[i:i + length]
        i += length
    kept += b"\x00" * (-len(kept) % 4)
    return bytes(kept)


def _header(template: bytearray, total_len: int, flags_offset: int) -> bytes:
    template[2:4] = total_len.to_bytes(2, "big")
    template[6:8] = flags_offset.to_bytes(2, "big")
    template[10:12] = b"\x00\x00"
    template[10:12] = ipv4_header_checksum(template).to_bytes(2, "big")
    return bytes(template)


def fragment_ipv4(packet: bytes, mtu: int) -> list[bytes]:
    """Split an IPv4 ``packet`` (DF clear) into fragments of at most ``mtu`` bytes.

    Works on packets that are already fragments, too: offsets continue from the packet's own and
    the last piece keeps its MF flag. A packet that fits is returned unchanged as the only item.
    """
    if len(packet) < 20 or packet[0] >> 4 != 4:
        raise FragmentError("not an IPv4 packet")
    ihl = (packet[0] & 0x0F) * 4
    total_len = int.from_bytes(packet[2:4], "big")
    if ihl < 20 or total_len < ihl or total_len > len(packet):
        raise FragmentError("inconsistent IPv4 header lengths")
    packet = packet[:total_len]  # drop any link padding
    if total_len <= mtu:
        return [packet]
    flags_offset = int.from_bytes(packet[6:8], "big")
    if flags_offset & _DF:
        raise FragmentError("DF is set")
    if mtu < IPV4_MIN_MTU:
        raise FragmentError(f"MTU {mtu} is below the IPv4 minimum of {IPV4_MIN_MTU}")
    first_header = bytearray(packet[:ihl])
    later_header = bytearray(packet[:20] + _copied_options(packet[20:ihl]))
    later_header[0] = 0x40 | len(later_header) // 4
    payload = memoryview(packet)[ihl:]
    base_offset = flags_offset & _OFFSET_MASK  # in 8 byte units
    last_mf = flags_offset & _MF

    fragments = []
    pos = 0
    header = first_header
    while pos < len(payload):
        room = (mtu - len(header)) // 8 * 8
        chunk = payload[pos:pos + room]
        is_last = pos + len(chunk) >= len(payload)
        flags = (last_mf if is_last else _MF) | (base_offset + pos // 8)
        fragments.append(_header(header, len(header) + len(chunk), flags) + chunk)
        pos += len(chunk)
        header = later_header
    return fragments


def fit_to_mtu(packet: bytes, mtu: int, *, icmp_source_v4: str | bytes | None = None,
               icmp_source_v6: str | bytes | None = None) -> MtuVerdict:
    """Decide how an inner packet crosses a tunnel of ``mtu``: as is, fragmented, or refused.

    Refused packets yield an ICMP "fragmentation needed" / ICMPv6 "packet too big" carrying
    ``mtu`` from the gateway's inner address (None if no source address is configured for that
    IP version, or if RFC 1122/4443 forbid an error for this packet). Malformed IPv4 packets
    that would need fragmenting are dropped: both fields empty.
    """
    if len(packet) <= mtu:
        return MtuVerdict([packet], None)
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        if int.from_bytes(packet[6:8], "big") & _DF:
            return MtuVerdict([], too_big_reply(packet, mtu, icmp_source_v4, None))
        try:
            return MtuVerdict(fragment_ipv4(packet, mtu), None)
        except FragmentError:
            return MtuVerdict([], None)
    if version == 6:
        return MtuVerdict([], too_big_reply(packet, mtu, None, icmp_source_v6))
    return MtuVerdict([], None)
