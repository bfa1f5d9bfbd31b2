"""IKEv2 payload bodies (RFC 7296 s3.2-3.16, RFC 7383 s2.5): one dataclass per payload type.

Each class knows its ``TYPE``, encodes its body with ``body()`` and decodes one with
``parse(body)``. The generic payload header (next payload, critical bit, length) is handled by
``ike.codec.message``. Parsing is strict about lengths and raises ``MalformedPayload``; decoding then
re-encoding gives the same bytes (reserved fields are zero on the wire in practice; the critical
bit is kept).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import ClassVar


from ike.config import TrafficSelector
from ike.codec.constants import (CertEncoding, NotifyType, PayloadType, ProtocolId, TransformAttr, TransformType,
                                 TsType, is_error_notify)


@dataclass(frozen=True)
class Transform:
    type: TransformType
    id: int
    key_length: int | None = None  # bits (Key Length attribute 14); None when not sent


@dataclass
class Proposal:
    protocol: ProtocolId
    transforms: list[Transform]  # may hold several of one type (an offer)
    number: int = 1
    spi: bytes = b""  # 8 bytes IKE (rekey), 4 bytes ESP, empty in IKE_SA_INIT

    def of_type(self, t: TransformType) -> list[Transform]:
        return [tr for tr in self.transforms if tr.type == t]



class MalformedPayload(Exception):
    """A payload does not parse; answered with INVALID_SYNTAX (RFC 7296 s3.10.1)."""

    notify = NotifyType.INVALID_SYNTAX


@dataclass
class Payload:
    TYPE: ClassVar[int] = PayloadType.NONE
    critical: bool = field(default=False, kw_only=True)

    @property
    def type(self) -> int:
        return self.TYPE

    def body(self) -> bytes:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    @classmethod
    def parse(cls, body: bytes) -> Payload:  # pragma: no cover
        raise NotImplementedError


def _need(body: bytes, length: int, what: str) -> None:
    if len(body) < length:
        raise MalformedPayload(f"{what}: {len(body)} bytes, need {length}")


# --- SA ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OpaqueTransform(Transform):
    """A transform carrying attributes we do not know: kept for re-encoding, never selected
    (RFC 7296 s3.3.6 says to reject such a transform; it compares unequal to ours)."""

    raw_attributes: bytes = b""


def _encode_transform(t: Transform, last: bool) -> bytes:
    if isinstance(t, OpaqueTransform):
        attrs = t.raw_attributes
    elif t.key_length is not None:
        attrs = struct.pack("!HH", 0x8000 | TransformAttr.KEY_LENGTH, t.key_length)
    else:
        attrs = b""
    return struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attrs), int(t.type), 0, t.id) + attrs


def _parse_attributes(data: bytes) -> tuple[int | None, bool]:
    """Returns (key length, whether all attributes were known)."""
    key_length, known, pos = None, True, 0
    while pos < len(data):
        _need(data[pos:], 4, "transform attribute")
        attr_type, value = struct.unpack_from("!HH", data, pos)
        if attr_type & 0x8000:  # TV
            pos += 4
            if attr_type & 0x7FFF == TransformAttr.KEY_LENGTH and key_length is None:
                key_length = value
            else:
                known = False
        else:  # TLV: value is the length
            _need(data[pos + 4:], value, "transform attribute value")
            pos += 4 + value
            known = False
    return key_length, known


def _parse_transform(data: bytes) -> Transform:
    t_type, t_id = data[4], struct.unpack_from("!H", data, 6)[0]
    attrs = data[8:]
    key_length, known = _parse_attributes(attrs)
    try:
        typ = TransformType(t_type)
    except ValueError:
        typ = t_type  # type: ignore[assignment]  # unknown transform types keep their number; never selected
    if known:
        return Transform(typ, t_id, key_length)
    return OpaqueTransform(typ, t_id, key_length, raw_attributes=bytes(attrs))


# Bounds on the work one SA payload can ask for (checked before each proposal is parsed).
# strongSwan's default IKE proposal, the largest real one, has about 40 transforms in one proposal.
MAX_PROPOSALS = 32
MAX_TRANSFORMS = 128  # in one proposal and in a whole SA payload


def _encode_proposal(p: Proposal, last: bool) -> bytes:
    transforms = b"".join(_encode_transform(t, i == len(p.transforms) - 1) for i, t in enumerate(p.transforms))
    head = struct.pack("!BBHBBBB", 0 if last else 2, 0, 8 + len(p.spi) + len(transforms), p.number,
                       int(p.protocol), len(p.spi), len(p.transforms))
    return head + p.spi + transforms


def _parse_proposal(data: bytes) -> Proposal:
    _need(data, 8, "proposal")
    number, protocol, spi_size, count = data[4], data[5], data[6], data[7]
    if count > MAX_TRANSFORMS:
        raise MalformedPayload(f"{count} transforms in one proposal (at most {MAX_TRANSFORMS})")
    _need(data, 8 + spi_size, "proposal SPI")
    spi = bytes(data[8:8 + spi_size])
    pos, transforms = 8 + spi_size, []
    for i in range(count):
        _need(data[pos:], 8, "transform")
        last, length = data[pos], struct.unpack_from("!H", data, pos + 2)[0]
        if length < 8 or pos + length > len(data):
            raise MalformedPayload(f"transform length {length}")
        if last != (0 if i == count - 1 else 3):
            raise MalformedPayload("transform count does not match the last-substructure marks")
        transforms.append(_parse_transform(data[pos:pos + length]))
        pos += length
    if pos != len(data):
        raise MalformedPayload("trailing bytes after the transforms of a proposal")
    try:
        proto = ProtocolId(protocol)
    except ValueError:
        proto = protocol  # type: ignore[assignment]  # an unknown protocol keeps its number
    return Proposal(proto, transforms, number=number, spi=spi)


@dataclass
class SaPayload(Payload):
    TYPE: ClassVar[int] = PayloadType.SA
    proposals: list[Proposal] = field(default_factory=list)

    def body(self) -> bytes:
        n = len(self.proposals)
        return b"".join(_encode_proposal(p, i == n - 1) for i, p in enumerate(self.proposals))

    @classmethod
    def parse(cls, body: bytes) -> SaPayload:
        pos, transforms = 0, 0
        proposals: list[Proposal] = []
        while pos < len(body):
            if len(proposals) >= MAX_PROPOSALS:
                raise MalformedPayload(f"more than {MAX_PROPOSALS} proposals")
            _need(body[pos:], 8, "proposal header")
            transforms += body[pos + 7]
            if transforms > MAX_TRANSFORMS:
                raise MalformedPayload(f"more than {MAX_TRANSFORMS} transforms in an SA payload")
            last, length = body[pos], struct.unpack_from("!H", body, pos + 2)[0]
            if length < 8 or pos + length > len(body) or last not in (0, 2):
                raise MalformedPayload(f"proposal length {length} / mark {last}")
            proposals.append(_parse_proposal(body[pos:pos + length]))
            pos += length
            if last == 0:
                break
        if pos != len(body) or not proposals:
            raise MalformedPayload("SA payload: bad proposal chain")
        return cls(proposals)


# --- simple payloads -------------------------------------------------------------------------

@dataclass
class KePayload(Payload):
    TYPE: ClassVar[int] = PayloadType.KE
    group: int = 0
    data: bytes = b""

    def body(self) -> bytes:
        return struct.pack("!HH", self.group, 0) + self.data

    @classmethod
    def parse(cls, body: bytes) -> KePayload:
        _need(body, 4, "KE")
        return cls(struct.unpack_from("!H", body)[0], bytes(body[4:]))


@dataclass
class NoncePayload(Payload):
    TYPE: ClassVar[int] = PayloadType.NONCE
    data: bytes = b""

    def body(self) -> bytes:
        return self.data

    @classmethod
    def parse(cls, body: bytes) -> NoncePayload:
        if not 16 <= len(body) <= 256:  # RFC 7296 s3.9
            raise MalformedPayload(f"nonce of {len(body)} bytes")
        return cls(bytes(body))


@dataclass
class IdPayload(Payload):
    id_type: int = 0
    data: bytes = b""

    def body(self) -> bytes:
        return struct.pack("!B3x", self.id_type) + self.data

    @classmethod
    def parse(cls, body: bytes) -> IdPayload:
        _need(body, 4, "ID")
        return cls(body[0], bytes(body[4:]))


@dataclass
class IdiPayload(IdPayload):
    TYPE: ClassVar[int] = PayloadType.IDi


@dataclass
class IdrPayload(IdPayload):
    TYPE: ClassVar[int] = PayloadType.IDr


@dataclass
class AuthPayload(Payload):
    TYPE: ClassVar[int] = PayloadType.AUTH
    method: int = 0
    data: bytes = field(default=b"", repr=False)

    def body(self) -> bytes:
        return struct.pack("!B3x", self.method) + self.data

    @classmethod
    def parse(cls, body: bytes) -> AuthPayload:
        _need(body, 4, "AUTH")
        return cls(body[0], bytes(body[4:]))


@dataclass
class CertPayload(Payload):
    """CERT (RFC 7296 s3.6): encoding byte + data, kept as they came. Whether X.509 data (encoding
    4) is one DER certificate is judged by the receiver's validation (``ike.crypto.certs``), so a
    peer sending garbage is refused with AUTHENTICATION_FAILED, not a syntax error."""

    TYPE: ClassVar[int] = PayloadType.CERT
    encoding: int = CertEncoding.X509_SIGNATURE
    data: bytes = b""

    def body(self) -> bytes:
        return bytes([self.encoding]) + self.data

    @classmethod
    def parse(cls, body: bytes) -> CertPayload:
        _need(body, 1, "CERT")
        return cls(body[0], bytes(body[1:]))


CERTREQ_HASH_LEN = 20  # SHA-1 of a CA's SubjectPublicKeyInfo (RFC 7296 s3.7)


@dataclass
class CertReqPayload(Payload):
    """CERTREQ (RFC 7296 s3.7): encoding byte + for X.509 (4) concatenated 20-byte SHA-1 hashes
    of trusted CAs' public keys (may be empty: any CA)."""

    TYPE: ClassVar[int] = PayloadType.CERTREQ
    encoding: int = CertEncoding.X509_SIGNATURE
    data: bytes = b""

    @classmethod
    def for_authorities(cls, key_hashes: list[bytes]) -> CertReqPayload:
        if any(len(h) != CERTREQ_HASH_LEN for h in key_hashes):
            raise ValueError("CERTREQ authorities are 20-byte SHA-1 hashes")
        return cls(CertEncoding.X509_SIGNATURE, b"".join(key_hashes))

    @property
    def authorities(self) -> list[bytes]:
        """The CA key hashes of an X.509 CERTREQ (none for other encodings)."""
        if self.encoding != CertEncoding.X509_SIGNATURE:
            return []
        return [self.data[i:i + CERTREQ_HASH_LEN] for i in range(0, len(self.data), CERTREQ_HASH_LEN)]

    def body(self) -> bytes:
        return bytes([self.encoding]) + self.data

    @classmethod
    def parse(cls, body: bytes) -> CertReqPayload:
        _need(body, 1, "CERTREQ")
        if body[0] == CertEncoding.X509_SIGNATURE and (len(body) - 1) % CERTREQ_HASH_LEN:
            raise MalformedPayload(f"CERTREQ: {len(body) - 1} bytes of CA hashes, not a multiple of 20")
        return cls(body[0], bytes(body[1:]))


@dataclass
class NotifyPayload(Payload):
    TYPE: ClassVar[int] = PayloadType.NOTIFY
    notify_type: int = 0
    data: bytes = b""
    protocol: int = 0
    spi: bytes = b""

    def body(self) -> bytes:
        return struct.pack("!BBH", self.protocol, len(self.spi), self.notify_type) + self.spi + self.data

    @classmethod
    def parse(cls, body: bytes) -> NotifyPayload:
        _need(body, 4, "Notify")
        protocol, spi_size, ntype = struct.unpack_from("!BBH", body)
        _need(body, 4 + spi_size, "Notify SPI")
        return cls(ntype, bytes(body[4 + spi_size:]), protocol, bytes(body[4:4 + spi_size]))

    @property
    def name(self) -> str:
        try:
            return NotifyType(self.notify_type).name
        except ValueError:
            return str(self.notify_type)

    @property
    def is_error(self) -> bool:
        return is_error_notify(self.notify_type)


@dataclass
class DeletePayload(Payload):
    TYPE: ClassVar[int] = PayloadType.DELETE
    protocol: int = ProtocolId.IKE
    spis: list[bytes] = field(default_factory=list)
    spi_size: int = 0  # IKE: 0; ESP/AH: 4

    def body(self) -> bytes:
        return struct.pack("!BBH", self.protocol, self.spi_size, len(self.spis)) + b"".join(self.spis)

    @classmethod
    def parse(cls, body: bytes) -> DeletePayload:
        _need(body, 4, "Delete")
        protocol, spi_size, count = struct.unpack_from("!BBH", body)
        if len(body) != 4 + spi_size * count:
            raise MalformedPayload("Delete: SPI count does not match the length")
        spis = [bytes(body[4 + i * spi_size:4 + (i + 1) * spi_size]) for i in range(count)]
        return cls(protocol, spis, spi_size)


@dataclass
class VendorIdPayload(Payload):
    TYPE: ClassVar[int] = PayloadType.VENDOR_ID
    data: bytes = b""

    def body(self) -> bytes:
        return self.data

    @classmethod
    def parse(cls, body: bytes) -> VendorIdPayload:
        return cls(bytes(body))


# --- traffic selectors -----------------------------------------------------------------------

@dataclass
class TsPayload(Payload):
    selectors: list[TrafficSelector] = field(default_factory=list)

    def body(self) -> bytes:
        out = [struct.pack("!B3x", len(self.selectors))]
        for ts in self.selectors:
            v6 = ts.version == 6
            out.append(struct.pack("!BBHHH", TsType.TS_IPV6_ADDR_RANGE if v6 else TsType.TS_IPV4_ADDR_RANGE,
                                   ts.protocol, 40 if v6 else 16, ts.start_port, ts.end_port))
            out.append(ts.start_addr.packed + ts.end_addr.packed)
        return b"".join(out)

    @classmethod
    def parse(cls, body: bytes) -> TsPayload:
        _need(body, 4, "TS")
        count, pos, selectors = body[0], 4, []
        for _ in range(count):
            _need(body[pos:], 8, "traffic selector")
            ts_type, proto, length, sport, eport = struct.unpack_from("!BBHHH", body, pos)
            alen = {TsType.TS_IPV4_ADDR_RANGE: 4, TsType.TS_IPV6_ADDR_RANGE: 16}.get(ts_type)
            if alen is None:
                raise MalformedPayload(f"traffic selector type {ts_type} not supported")
            if length != 8 + 2 * alen or pos + length > len(body):
                raise MalformedPayload(f"traffic selector length {length}")
            start = ipaddress.ip_address(bytes(body[pos + 8:pos + 8 + alen]))
            end = ipaddress.ip_address(bytes(body[pos + 8 + alen:pos + length]))
            selectors.append(TrafficSelector(start, end, proto, sport, eport))
            pos += length
        if pos != len(body):
            raise MalformedPayload("TS: trailing bytes")
        return cls(selectors)


@dataclass
class TsiPayload(TsPayload):
    TYPE: ClassVar[int] = PayloadType.TSi


@dataclass
class TsrPayload(TsPayload):
    TYPE: ClassVar[int] = PayloadType.TSr


# --- configuration ---------------------------------------------------------------------------

@dataclass
class CpPayload(Payload):
    TYPE: ClassVar[int] = PayloadType.CP
    cfg_type: int = 0
    attributes: list[tuple[int, bytes]] = field(default_factory=list)

    def body(self) -> bytes:
        out = [struct.pack("!B3x", self.cfg_type)]
        for attr_type, value in self.attributes:
            out.append(struct.pack("!HH", attr_type & 0x7FFF, len(value)) + value)
        return b"".join(out)

    @classmethod
    def parse(cls, body: bytes) -> CpPayload:
        # the three RESERVED bytes after CFG Type are ignored on receipt (RFC 7296 s3.15)
        _need(body, 4, "CP")
        pos, attrs = 4, []
        while pos < len(body):
            _need(body[pos:], 4, "CP attribute")
            attr_type, length = struct.unpack_from("!HH", body, pos)
            attr_type &= 0x7FFF  # the reserved bit: sent as zero, ignored on receipt (RFC 7296 s3.15.1)
            _need(body[pos + 4:], length, "CP attribute value")
            attrs.append((attr_type, bytes(body[pos + 4:pos + 4 + length])))
            pos += 4 + length
        return cls(body[0], attrs)


# --- encrypted -------------------------------------------------------------------------------

@dataclass
class SkPayload(Payload):
    """Encrypted and Authenticated payload: IV | ciphertext | ICV. ``first_inner`` is the type of
    the first payload inside (the generic header's Next Payload field)."""

    TYPE: ClassVar[int] = PayloadType.SK
    data: bytes = b""
    first_inner: int = 0

    def body(self) -> bytes:
        return self.data

    @classmethod
    def parse(cls, body: bytes) -> SkPayload:
        return cls(bytes(body))


@dataclass
class SkfPayload(Payload):
    """Encrypted fragment (RFC 7383 s2.5); ``first_inner`` is non-zero only in fragment 1."""

    TYPE: ClassVar[int] = PayloadType.SKF
    number: int = 1
    total: int = 1
    data: bytes = b""
    first_inner: int = 0

    def body(self) -> bytes:
        return struct.pack("!HH", self.number, self.total) + self.data

    @classmethod
    def parse(cls, body: bytes) -> SkfPayload:
        _need(body, 4, "SKF")
        number, total = struct.unpack_from("!HH", body)
        if not 1 <= number <= total:
            raise MalformedPayload(f"fragment {number} of {total}")
        return cls(number, total, bytes(body[4:]))


@dataclass
class UnknownPayload(Payload):
    """A payload type we do not implement; skipped unless critical (RFC 7296 s2.5)."""

    payload_type: int = 0
    data: bytes = b""

    @property
    def type(self) -> int:
        return self.payload_type

    def body(self) -> bytes:
        return self.data


PAYLOAD_CLASSES: dict[int, type[Payload]] = {
    cls.TYPE: cls for cls in (SaPayload, KePayload, NoncePayload, IdiPayload, IdrPayload, AuthPayload,
                              CertPayload, CertReqPayload, NotifyPayload, DeletePayload, VendorIdPayload,
                              TsiPayload, TsrPayload, CpPayload, SkPayload, SkfPayload)
}
