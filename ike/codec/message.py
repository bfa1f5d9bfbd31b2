"""IKEv2 message codec: header, payload chain, SK encryption (RFC 7296 s3.1-3.2, s3.14).

``decode(data)`` parses the plaintext layer (an SK/SKF payload stays opaque); ``open_sk`` then
decrypts and parses the inner chain. ``encode(msg)`` gives back the exact bytes ``decode`` saw.
``seal(msg, cipher, rng)`` builds an encrypted message from its inner payloads.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Protocol, TypeVar
from collections.abc import Callable

from ike.codec.constants import IKE_HEADER_LEN, IKE_VERSION_BYTE, ExchangeType, HeaderFlag, NotifyType, PayloadType
from ike.codec.payloads import (PAYLOAD_CLASSES, MalformedPayload, NotifyPayload, Payload, SkfPayload, SkPayload,
                               UnknownPayload)

P = TypeVar("P", bound=Payload)

MAX_PAYLOADS = 128  # a message with more is treated as malformed (bounds the work per datagram)
# An IKE_SA_INIT message is never fragmented and a real one is under 2 kB (strongSwan's full default
# proposal with a MODP-8192 or ML-KEM-1024 key share stays under 2.5 kB). Bigger ones are refused
# unparsed: the responder keeps the request (AUTH signs it) for every half-open SA.
MAX_INIT_MESSAGE = 3072


class IntegrityError(Exception):
    """The SK payload failed its integrity check, or is malformed; the message must be dropped."""


class SkCipher(Protocol):
    """One direction's SK payload protection, as ``ike.crypto.skcipher.SkCipher`` provides it."""

    def encrypted_len(self, plaintext_len: int) -> int: ...
    def max_plaintext_len(self, body_len: int) -> int: ...
    def seal(self, aad_prefix: bytes, plaintext: bytes, rng: Callable[[int], bytes]) -> bytes: ...
    def open(self, aad_prefix: bytes, body: bytes) -> bytes: ...


class MessageError(Exception):
    """A message is rejected; ``notify`` is what RFC 7296 would answer (if anything)."""

    notify = NotifyType.INVALID_SYNTAX


class MalformedMessage(MessageError):
    pass


class UnsupportedCriticalPayload(MessageError):
    notify = NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD

    def __init__(self, payload_type: int):
        super().__init__(f"unsupported critical payload {payload_type}")
        self.payload_type = payload_type


class InvalidMajorVersion(MessageError):
    notify = NotifyType.INVALID_MAJOR_VERSION


class DecryptionFailed(MessageError):
    """ICV check failed: silently dropped (RFC 7296 s2.21.2)."""


@dataclass
class Message:
    spi_i: bytes
    spi_r: bytes
    exchange: int
    message_id: int
    initiator: bool  # the I flag: sent by the original initiator of the IKE SA
    response: bool
    payloads: list[Payload] = field(default_factory=list)
    version: int = IKE_VERSION_BYTE
    extra_flags: int = 0  # flag bits we do not interpret, kept for exact re-encoding
    encrypted: bool = False  # payloads came out of (or go into) an SK payload
    # (first inner payload type, inner chain) as decrypted: RFC 9242's IntAuth signs these bytes
    plain: tuple[int, bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def flags(self) -> int:
        return ((HeaderFlag.INITIATOR if self.initiator else 0) | (HeaderFlag.RESPONSE if self.response else 0)
                | self.extra_flags)

    def header(self, next_payload: int, length: int) -> bytes:
        return struct.pack("!8s8sBBBBII", self.spi_i, self.spi_r, next_payload, self.version, self.exchange,
                           self.flags, self.message_id, length)

    def get(self, cls: type[P]) -> P | None:
        for p in self.payloads:
            if type(p) is cls:
                return p
        return None

    def all(self, cls: type[P]) -> list[P]:
        return [p for p in self.payloads if type(p) is cls]

    def notifies(self) -> dict[int, NotifyPayload]:
        return {p.notify_type: p for p in self.payloads if isinstance(p, NotifyPayload)}

    @property
    def exchange_name(self) -> str:
        try:
            return ExchangeType(self.exchange).name
        except ValueError:
            return str(self.exchange)


def parse_header(data: bytes) -> Message:
    """The header alone, with its length checked against ``data``; payloads are left empty."""
    if len(data) < IKE_HEADER_LEN:
        raise MalformedMessage(f"{len(data)} bytes is shorter than an IKE header")
    spi_i, spi_r, _next, version, exchange, flags, mid, length = struct.unpack_from("!8s8sBBBBII", data)
    if version >> 4 != 2:
        raise InvalidMajorVersion(f"IKE major version {version >> 4}")
    if length != len(data):
        raise MalformedMessage(f"header length {length} but datagram has {len(data)} bytes")
    return Message(spi_i, spi_r, exchange, mid, bool(flags & HeaderFlag.INITIATOR),
                   bool(flags & HeaderFlag.RESPONSE), version=version,
                   extra_flags=flags & ~(HeaderFlag.INITIATOR | HeaderFlag.RESPONSE) & 0xFF)


def is_ike_sa_init(data: bytes) -> bool:
    """Whether a datagram's header names IKE_SA_INIT (looked at before anything is parsed)."""
    return len(data) >= IKE_HEADER_LEN and data[18] == ExchangeType.IKE_SA_INIT


def decode_chain(first: int, data: bytes) -> list[Payload]:
    payloads: list[Payload] = []
    pos, next_type = 0, first
    while next_type != PayloadType.NONE:
        if len(payloads) >= MAX_PAYLOADS:
            raise MalformedMessage("too many payloads")
        if len(data) - pos < 4:
            raise MalformedMessage(f"payload {next_type} truncated")
        nxt, flags, length = struct.unpack_from("!BBH", data, pos)
        if length < 4 or pos + length > len(data):
            raise MalformedMessage(f"payload {next_type} length {length}")
        body = data[pos + 4:pos + length]
        critical = bool(flags & 0x80)
        cls = PAYLOAD_CLASSES.get(next_type)
        if cls is None:
            if critical:
                raise UnsupportedCriticalPayload(next_type)
            payload: Payload = UnknownPayload(next_type, bytes(body))
        else:
            try:
                payload = cls.parse(body)
            except MalformedPayload as exc:
                raise MalformedMessage(f"{cls.__name__}: {exc}") from None
        payload.critical = critical
        payloads.append(payload)
        pos += length
        if isinstance(payload, (SkPayload, SkfPayload)):
            payload.first_inner = nxt
            if pos != len(data):
                raise MalformedMessage("an encrypted payload must be the last one")
            return payloads
        next_type = nxt
    if pos != len(data):
        raise MalformedMessage("trailing bytes after the last payload")
    return payloads


def encode_chain(payloads: list[Payload]) -> tuple[int, bytes]:
    """(type of the first payload, encoded chain)."""
    out = []
    for i, p in enumerate(payloads):
        if i + 1 < len(payloads):
            nxt = payloads[i + 1].type
        elif isinstance(p, (SkPayload, SkfPayload)):
            nxt = p.first_inner
        else:
            nxt = PayloadType.NONE
        body = p.body()
        out.append(struct.pack("!BBH", nxt, 0x80 if p.critical else 0, 4 + len(body)) + body)
    return (payloads[0].type if payloads else PayloadType.NONE), b"".join(out)


def decode(data: bytes) -> Message:
    """Parse the outer layer of a datagram. Raises a ``MessageError``, never anything else."""
    data = bytes(data)
    msg = parse_header(data)
    msg.payloads = decode_chain(data[16], data[IKE_HEADER_LEN:])
    return msg


def encode(msg: Message) -> bytes:
    first, chain = encode_chain(msg.payloads)
    return msg.header(first, IKE_HEADER_LEN + len(chain)) + chain


def encrypted_payload(msg: Message) -> SkPayload | SkfPayload | None:
    if msg.payloads and isinstance(msg.payloads[-1], (SkPayload, SkfPayload)):
        return msg.payloads[-1]
    return None


def open_sk(raw: bytes, msg: Message, cipher: SkCipher) -> bytes:
    """Decrypt the SK/SKF payload of a decoded message; returns the plaintext inner chain."""
    sk = encrypted_payload(msg)
    if sk is None:
        raise MalformedMessage("no encrypted payload")
    hdr_len = 4 if isinstance(sk, SkPayload) else 8
    offset = len(raw) - len(sk.data) - hdr_len
    try:
        return cipher.open(raw[:offset + hdr_len], sk.data)
    except IntegrityError:
        raise DecryptionFailed("ICV mismatch") from None
    except ValueError as exc:  # wrong body length for the cipher etc.
        raise DecryptionFailed(f"cannot decrypt: {exc}") from None


def decode_inner(msg: Message, first: int, plaintext: bytes) -> Message:
    """A copy of ``msg`` whose payloads are the decrypted inner chain."""
    inner = decode_chain(first, plaintext)
    if any(isinstance(p, (SkPayload, SkfPayload)) for p in inner):
        raise MalformedMessage("encrypted payload inside an encrypted payload")
    return Message(msg.spi_i, msg.spi_r, msg.exchange, msg.message_id, msg.initiator, msg.response, inner,
                   msg.version, msg.extra_flags, encrypted=True, plain=(first, plaintext))


def seal(msg: Message, cipher: SkCipher, rng) -> bytes:
    """Encrypt ``msg.payloads`` into one SK payload."""
    first, chain = encode_chain(msg.payloads)
    body_len = cipher.encrypted_len(len(chain))
    total = IKE_HEADER_LEN + 4 + body_len
    aad = msg.header(PayloadType.SK, total) + struct.pack("!BBH", first, 0, 4 + body_len)
    return aad + cipher.seal(aad, chain, rng)


def seal_fragments(msg: Message, cipher: SkCipher, rng, max_len: int) -> list[bytes]:
    """Encrypt ``msg.payloads`` as RFC 7383 fragments, each at most ``max_len`` bytes of IKE message."""
    first, chain = encode_chain(msg.payloads)
    chunk = max(cipher.max_plaintext_len(max_len - IKE_HEADER_LEN - 8), 1)
    pieces = [chain[i:i + chunk] for i in range(0, len(chain), chunk)] or [b""]
    out = []
    for number, piece in enumerate(pieces, 1):
        body_len = cipher.encrypted_len(len(piece))
        total = IKE_HEADER_LEN + 8 + body_len
        aad = (msg.header(PayloadType.SKF, total)
               + struct.pack("!BBHHH", first if number == 1 else 0, 0, 8 + body_len, number, len(pieces)))
        out.append(aad + cipher.seal(aad, piece, rng))
    return out
