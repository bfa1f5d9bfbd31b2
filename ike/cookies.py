"""Stateless cookies against IKE_SA_INIT floods (RFC 7296 s2.6).

cookie = version | SHA-256(secret | Ni | IPi | SPIi); the secret rotates every ``ROTATE_AFTER``
seconds and the previous one is still accepted, so a cookie stays valid across one rotation.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass, field
from typing import Callable

ROTATE_AFTER = 60.0
SECRET_LEN = 32


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
