"""Stateless cookies against IKE_SA_INIT floods (RFC 7296 s2.6).

cookie = version | SHA-256(secret | Ni | IPi | SPIi); the secret rotates every ``ROTATE_AFTER``
seconds and the previous one is still accepted, so a cookie stays valid across one rotation.

Under load a request without a valid cookie is answered from a minimal parse (``init_request_
fields``: header checks and a walk of the payload chain for Ni and COOKIE, SA and KE untouched)
and a reply packed by hand, so a flood of spoofed requests costs little and leaves no state.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from dataclasses import dataclass, field
from collections.abc import Callable

from ike.codec.constants import IKE_HEADER_LEN, IKE_VERSION_BYTE, ExchangeType, HeaderFlag, NotifyType, PayloadType

ROTATE_AFTER = 60.0
SECRET_LEN = 32
MAX_PAYLOADS = 128  # as ike.codec.message: bounds the walk
_INIT_REQUEST = (ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR)  # exchange byte, flags byte
_ZERO_SPI = bytes(8)


@dataclass
class CookieJar:
    rng: Callable[[int], bytes] = field(repr=False)
    now: float = 0.0
    _secrets: dict[int, bytes] = field(default_factory=dict, repr=False)
    _version: int = 0
    _rotated_at: float = 0.0

    def __post_init__(self) -> None:
        self._secrets[0] = self.rng(SECRET_LEN)
        self._rotated_at = self.now

    def _rotate(self, now: float) -> None:
        if now - self._rotated_at < ROTATE_AFTER:
            return
        previous = self._version
        self._version = (self._version + 1) % 256
        self._secrets = {previous: self._secrets[previous], self._version: self.rng(SECRET_LEN)}
        self._rotated_at = now

    def _compute(self, version: int, nonce: bytes, ip: str, spi_i: bytes) -> bytes | None:
        secret = self._secrets.get(version)
        if secret is None:
            return None
        digest = hashlib.sha256(secret + nonce + ipaddress.ip_address(ip).packed + spi_i).digest()
        return bytes([version]) + digest

    def make(self, nonce: bytes, ip: str, spi_i: bytes, now: float) -> bytes:
        self._rotate(now)
        cookie = self._compute(self._version, nonce, ip, spi_i)
        assert cookie is not None
        return cookie

    def verify(self, cookie: bytes, nonce: bytes, ip: str, spi_i: bytes, now: float) -> bool:
        self._rotate(now)
        if not cookie:
            return False
        expected = self._compute(cookie[0], nonce, ip, spi_i)
        return expected is not None and hmac.compare_digest(expected, cookie)


def init_request_fields(data: bytes) -> tuple[bytes, bytes | None] | None:
    """(Ni, COOKIE notify data or None) of a well-formed first IKE_SA_INIT request, found without
    parsing any payload but these two; None for anything else (the full decoder then handles it,
    with its precise errors)."""
    end = len(data)
    if end < IKE_HEADER_LEN or data[17] >> 4 != 2 or (data[18], data[19]) != _INIT_REQUEST:
        return None
    if data[8:16] != _ZERO_SPI or data[20:24] != b"\0\0\0\0" or int.from_bytes(data[24:28], "big") != end:
        return None
    nonce = cookie = None
    pos, next_type, count = IKE_HEADER_LEN, data[16], 0
    while next_type != PayloadType.NONE:
        count += 1
        if count > MAX_PAYLOADS or end - pos < 4:
            return None
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 4 or pos + length > end:
            return None
        if next_type == PayloadType.NONCE and nonce is None:  # the first, as Message.get
            nonce = data[pos + 4:pos + length]
        elif next_type == PayloadType.NOTIFY and length >= 8 and \
                int.from_bytes(data[pos + 6:pos + 8], "big") == NotifyType.COOKIE:
            cookie = data[pos + 8 + data[pos + 5]:pos + length]  # the last, as Message.notifies
        next_type = data[pos]
        pos += length
    if pos != end or nonce is None or not 16 <= len(nonce) <= 256:
        return None
    return nonce, cookie


def cookie_reply(spi_i: bytes, cookie: bytes) -> bytes:
    """The IKE_SA_INIT response carrying only a COOKIE notify, packed directly (it is what
    ``ike.codec.message.encode`` makes of it)."""
    total = IKE_HEADER_LEN + 8 + len(cookie)
    return (struct.pack("!8s8sBBBBII", spi_i, _ZERO_SPI, PayloadType.NOTIFY, IKE_VERSION_BYTE,
                        ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0, total)
            + struct.pack("!BBHBBH", PayloadType.NONE, 0, 8 + len(cookie), 0, 0, NotifyType.COOKIE) + cookie)
