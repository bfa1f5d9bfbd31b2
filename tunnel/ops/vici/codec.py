"""strongSwan's vici wire format, sans-I/O: framing, packets and messages.

The layers follow strongSwan's ``src/libcharon/plugins/vici/README.md``:

* transport: a 32-bit big-endian length, then that many bytes (one packet); strongSwan refuses
  lengths above ``VICI_MESSAGE_SIZE_MAX`` (512 KiB) and so does :class:`StreamDecoder`, before
  buffering anything;
* packet: a type byte (:class:`PacketType`), for named types a 1-byte name length and the name,
  then, for CMD_REQUEST, CMD_RESPONSE and EVENT, a message;
* message: a sequence of elements (:class:`Element`) building a tree of sections, key/values and
  lists, decoded here into ``dict`` (sections, in wire order), ``bytes`` (values) and
  ``list[bytes]`` (lists).

Why not the ``vici`` package from PyPI (strongSwan's own Python client, MIT, 6.0.3 read for this):
its ``Transport`` reads from a blocking socket and trusts the length prefix (no size limit); its
``Message.deserialize`` reads from a ``BytesIO``, so a lying length silently yields a short value,
unknown element types and a LIST_END outside a list are skipped without error, there is no depth
limit, duplicate keys overwrite each other, and truncation surfaces as ``struct.error``; its
``Packet.parse`` knows only the client's side (it does not parse a CMD_REQUEST's name). A server
reading untrusted clients from a non-blocking loop needs the opposite on each point, and the
format is small, so espgw has its own codec; every failure is one typed :class:`ViciError`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import TypeAlias

VICI_MESSAGE_SIZE_MAX = 512 * 1024  # strongSwan's vici_socket.h: the largest packet either side accepts
MAX_DEPTH = 16  # sections within sections; swanctl.conf needs 3, list-sa events 4
LENGTH_PREFIX = struct.Struct("!I")

Value: TypeAlias = "bytes | list[bytes] | dict[str, Value]"
Message: TypeAlias = "dict[str, Value]"
# What the encoder accepts: text and numbers become strings, as the vici plugin encodes them
Scalar: TypeAlias = "bytes | str | int"
EncodableValue: TypeAlias = "Scalar | list[Scalar] | list[bytes] | list[str] | dict[str, EncodableValue]"
EncodableMessage: TypeAlias = "dict[str, EncodableValue]"


class ViciError(Exception):
    """A peer broke the vici protocol; ``reason`` is a short stable tag for logs and counters."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class PacketType(enum.IntEnum):
    CMD_REQUEST = 0  # named, with a message
    CMD_RESPONSE = 1  # message
    CMD_UNKNOWN = 2
    EVENT_REGISTER = 3  # named
    EVENT_UNREGISTER = 4  # named
    EVENT_CONFIRM = 5
    EVENT_UNKNOWN = 6
    EVENT = 7  # named, with a message


NAMED_TYPES = frozenset({PacketType.CMD_REQUEST, PacketType.EVENT_REGISTER, PacketType.EVENT_UNREGISTER,
                         PacketType.EVENT})
MESSAGE_TYPES = frozenset({PacketType.CMD_REQUEST, PacketType.CMD_RESPONSE, PacketType.EVENT})


class Element(enum.IntEnum):
    SECTION_START = 1
    SECTION_END = 2
    KEY_VALUE = 3
    LIST_START = 4
    LIST_ITEM = 5
    LIST_END = 6


@dataclass(frozen=True)
class Packet:
    """One vici packet. ``name`` is set exactly for the named types, ``message`` is empty for types
    without one."""

    type: PacketType
    name: str | None = None
    message: Message = field(default_factory=dict)


# ----------------------------------------------------------------------------- messages


def encode_message(message: EncodableMessage) -> bytes:
    """Encode a tree of dicts (sections), lists and scalars; str and int values become UTF-8 text."""
    out = bytearray()
    _encode_section(message, out, 0)
    return bytes(out)


def _encode_section(section: EncodableMessage, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"vici message nested deeper than {MAX_DEPTH} sections")
    for key, value in section.items():
        if isinstance(value, dict):
            _encode_name(Element.SECTION_START, key, out)
            _encode_section(value, out, depth + 1)
            out.append(Element.SECTION_END)
        elif isinstance(value, list):
            _encode_name(Element.LIST_START, key, out)
            for item in value:
                out.append(Element.LIST_ITEM)
                _encode_value(item, out)
            out.append(Element.LIST_END)
        else:
            _encode_name(Element.KEY_VALUE, key, out)
            _encode_value(value, out)


def _encode_name(element: Element, name: str, out: bytearray) -> None:
    raw = name.encode("utf-8")
    if len(raw) > 0xFF:
        raise ValueError(f"vici name longer than 255 bytes: {name[:40]!r}...")
    out += bytes((element, len(raw)))
    out += raw


def _encode_value(value: Scalar, out: bytearray) -> None:
    if isinstance(value, bool):  # before int: True is an int, and vici spells booleans yes/no
        raw = b"yes" if value else b"no"
    elif isinstance(value, bytes):
        raw = value
    elif isinstance(value, (str, int)):
        raw = str(value).encode("utf-8")
    else:
        raise TypeError(f"vici values are bytes, str or int, not {type(value).__name__}")
    if len(raw) > 0xFFFF:
        raise ValueError("vici value longer than 65535 bytes")
    out += len(raw).to_bytes(2, "big")
    out += raw


def decode_message(data: bytes | memoryview, max_depth: int = MAX_DEPTH) -> Message:
    """Decode a message strictly: every length must fit, sections and lists must balance, names
    must be UTF-8 and unique in their section, and nesting stays within ``max_depth``."""
    view = memoryview(data)
    root: Message = {}
    stack: list[Message] = []
    section = root
    current_list: list[bytes] | None = None
    pos = 0
    end = len(view)
    while pos < end:
        element = view[pos]
        pos += 1
        if current_list is not None:
            if element == Element.LIST_ITEM:
                value, pos = _read_value(view, pos)
                current_list.append(value)
            elif element == Element.LIST_END:
                current_list = None
            else:
                raise ViciError("bad-list", f"element type {element} inside a list at offset {pos - 1}")
            continue
        if element == Element.SECTION_START:
            name, pos = _read_name(view, pos, section)
            if len(stack) >= max_depth:
                raise ViciError("too-deep", f"sections nested deeper than {max_depth}")
            child: Message = {}
            section[name] = child
            stack.append(section)
            section = child
        elif element == Element.SECTION_END:
            if not stack:
                raise ViciError("unbalanced", f"section end without a section at offset {pos - 1}")
            section = stack.pop()
        elif element == Element.KEY_VALUE:
            name, pos = _read_name(view, pos, section)
            section[name], pos = _read_value(view, pos)
        elif element == Element.LIST_START:
            name, pos = _read_name(view, pos, section)
            current_list = []
            section[name] = current_list
        elif element in (Element.LIST_ITEM, Element.LIST_END):
            raise ViciError("bad-list", f"list element outside a list at offset {pos - 1}")
        else:
            raise ViciError("unknown-element", f"element type {element} at offset {pos - 1}")
    if current_list is not None:
        raise ViciError("unbalanced", "list not closed at the end of the message")
    if stack:
        raise ViciError("unbalanced", f"{len(stack)} section(s) not closed at the end of the message")
    return root


def _read_name(view: memoryview, pos: int, section: Message) -> tuple[str, int]:
    if pos >= len(view):
        raise ViciError("truncated", "name length missing at the end of the message")
    length = view[pos]
    start = pos + 1
    if start + length > len(view):
        raise ViciError("truncated", f"name of {length} bytes at offset {pos} runs past the message end")
    try:
        name = bytes(view[start:start + length]).decode("utf-8")
    except UnicodeDecodeError:
        raise ViciError("bad-name", f"name at offset {pos} is not UTF-8") from None
    if name in section:
        raise ViciError("duplicate-key", f"{name!r} appears twice in one section")
    return name, start + length


def _read_value(view: memoryview, pos: int) -> tuple[bytes, int]:
    if pos + 2 > len(view):
        raise ViciError("truncated", "value length missing at the end of the message")
    length = int.from_bytes(view[pos:pos + 2], "big")
    start = pos + 2
    if start + length > len(view):
        raise ViciError("truncated", f"value of {length} bytes at offset {pos} runs past the message end")
    return bytes(view[start:start + length]), start + length


# ----------------------------------------------------------------------------- packets


def encode_packet(packet_type: PacketType, name: str | None = None, message: EncodableMessage | None = None) -> bytes:
    """One packet without its length prefix (see :func:`frame`)."""
    out = bytearray((packet_type,))
    if packet_type in NAMED_TYPES:
        if name is None:
            raise ValueError(f"{packet_type.name} needs a name")
        _encode_name_bytes(name, out)
    elif name is not None:
        raise ValueError(f"{packet_type.name} carries no name")
    if message is not None:
        if packet_type not in MESSAGE_TYPES:
            raise ValueError(f"{packet_type.name} carries no message")
        out += encode_message(message)
    if len(out) > VICI_MESSAGE_SIZE_MAX:
        raise ValueError(f"vici packet of {len(out)} bytes exceeds {VICI_MESSAGE_SIZE_MAX}")
    return bytes(out)


def _encode_name_bytes(name: str, out: bytearray) -> None:
    raw = name.encode("utf-8")
    if not 0 < len(raw) <= 0xFF:
        raise ValueError("vici packet names are 1 to 255 bytes")
    out.append(len(raw))
    out += raw


def frame(packet: bytes) -> bytes:
    """Prefix a packet with the transport's 32-bit big-endian length."""
    return LENGTH_PREFIX.pack(len(packet)) + packet


def decode_packet(data: bytes | memoryview, max_depth: int = MAX_DEPTH) -> Packet:
    """Decode one packet (the bytes inside a transport frame)."""
    view = memoryview(data)
    if not view:
        raise ViciError("empty-packet", "a transport frame without a packet type")
    try:
        packet_type = PacketType(view[0])
    except ValueError:
        raise ViciError("unknown-packet-type", f"packet type {view[0]}") from None
    pos = 1
    name = None
    if packet_type in NAMED_TYPES:
        if len(view) < 2:
            raise ViciError("truncated", f"{packet_type.name} without a name length")
        length = view[1]
        if length == 0 or 2 + length > len(view):
            raise ViciError("truncated", f"{packet_type.name} name of {length} bytes does not fit")
        try:
            name = bytes(view[2:2 + length]).decode("ascii")
        except UnicodeDecodeError:
            raise ViciError("bad-name", f"{packet_type.name} name is not ASCII") from None
        pos = 2 + length
    if packet_type in MESSAGE_TYPES:
        return Packet(packet_type, name, decode_message(view[pos:], max_depth))
    if pos != len(view):
        raise ViciError("trailing-bytes", f"{len(view) - pos} bytes after a {packet_type.name} packet")
    return Packet(packet_type, name)


class StreamDecoder:
    """Turns a byte stream, in whatever pieces it arrives, into packets.

    A length prefix above ``max_size`` is refused as soon as its 4 bytes are in, so a peer
    announcing 100 MB never makes this buffer more than one maximal packet. After an error the
    decoder stays failed: the stream's framing is lost, the connection must close (packets decoded
    earlier in the same ``feed`` are not returned either).
    """

    def __init__(self, max_size: int = VICI_MESSAGE_SIZE_MAX, max_depth: int = MAX_DEPTH):
        self.max_size = max_size
        self.max_depth = max_depth
        self._buffer = bytearray()
        self._error: ViciError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete packet."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        if self._error is not None:
            raise self._error
        self._buffer += data
        packets = []
        try:
            while len(self._buffer) >= LENGTH_PREFIX.size:
                (length,) = LENGTH_PREFIX.unpack_from(self._buffer)
                if length > self.max_size:
                    raise ViciError("too-long", f"packet length {length} exceeds the {self.max_size} byte limit")
                total = LENGTH_PREFIX.size + length
                if len(self._buffer) < total:
                    break
                body = bytes(self._buffer[LENGTH_PREFIX.size:total])  # a copy: the buffer is resized next
                del self._buffer[:total]
                packet = decode_packet(body, self.max_depth)
                packets.append(packet)
        except ViciError as exc:
            self._error = exc
            self._buffer.clear()
            raise
        return packets
