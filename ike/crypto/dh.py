"""IKEv2 key exchange: MODP (RFC 3526), ECP (RFC 5903) and Curve25519 (RFC 8031).

Private values come from the caller's ``rng`` so runs are reproducible; the arithmetic is
``cryptography``'s. Peer public values are checked as RFC 6989 asks before they are used.
"""

from __future__ import annotations

from typing import Any

import warnings
from dataclasses import dataclass, field
from functools import cache
from collections.abc import Callable

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dh, ec, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ike.codec.constants import DhId

Rng = Callable[[int], bytes]


class InvalidKeyExchange(Exception):
    """The peer's key exchange data is malformed or not a valid public value (RFC 6989)."""


# RFC 3526 s3-5: p = 2^n - 2^(n-64) - 1 + 2^64 * ([2^(n-130) pi] + k), generator 2
_MODP_PRIMES_HEX = {
    DhId.MODP2048: (
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
        "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
        "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
        "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
        "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
        "955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF"),
    DhId.MODP3072: (
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
        "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
        "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
        "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
        "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
        "955817183995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64"
        "ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7ABF5AE8CDB0933D71E8C94E04A25619DCEE3D226"
        "1AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
        "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF"),
    DhId.MODP4096: (
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
        "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
        "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
        "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
        "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
        "955817183995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64"
        "ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7ABF5AE8CDB0933D71E8C94E04A25619DCEE3D226"
        "1AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E2"
        "08E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D788719A10BDBA5B2699C32718"
        "6AF4E23C1A946834B6150BDA2583E9CA2AD44CE8DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D"
        "99B2964FA090C3A2233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA993B4EA98"
        "8D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF"),
}
MODP_PRIMES: dict[int, int] = {group: int(h, 16) for group, h in _MODP_PRIMES_HEX.items()}
MODP_GENERATOR = 2
# Private exponent size: at least twice the group's strength (RFC 3526 s8: 2048 ~ 110-160 bits,
# 4096 ~ 150-240), as strongSwan's short exponents; keeps key generation fast.
_MODP_EXPONENT_BYTES = 64

_ECP_CURVES: dict[int, type[ec.EllipticCurve]] = {
    DhId.ECP256: ec.SECP256R1, DhId.ECP384: ec.SECP384R1, DhId.ECP521: ec.SECP521R1}
# group orders n (FIPS 186-4 D.1.2), to draw private scalars in [1, n-1]
_ECP_ORDERS: dict[int, int] = {
    DhId.ECP256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    DhId.ECP384: int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77A"
                     "ECEC196ACCC52973", 16),
    DhId.ECP521: int("1FF" + "F" * 56 + "FFFFFFFA51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEB"
                     "B6FB71E91386409", 16),
}

SUPPORTED_GROUPS: tuple[int, ...] = (DhId.MODP2048, DhId.MODP3072, DhId.MODP4096, DhId.ECP256,
                                     DhId.ECP384, DhId.ECP521, DhId.CURVE25519)


def public_value_len(group: int) -> int:
    """Length of the KE payload's key exchange data for a group."""
    if group in MODP_PRIMES:
        return (MODP_PRIMES[group].bit_length() + 7) // 8
    if group in _ECP_CURVES:
        return 2 * _coord_len(group)
    if group == DhId.CURVE25519:
        return 32
    raise ValueError(f"unsupported key exchange group {group}")


def _coord_len(group: int) -> int:
    return (_ECP_CURVES[group]().key_size + 7) // 8


@cache
def _modp_params(group: int) -> dh.DHParameterNumbers:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography deprecates FFDH; IKE still needs MODP 14
        return dh.DHParameterNumbers(MODP_PRIMES[group], MODP_GENERATOR)


@dataclass
class KeyExchange:
    """One private key of a group; ``public`` is the KE payload's key exchange data."""

    group: int
    public: bytes
    _private: Any = field(repr=False)  # the cryptography private key of the group's kind

    def shared_secret(self, peer_public: bytes) -> bytes:
        """g^ir as IKEv2 uses it (RFC 7296 s2.14, RFC 5903 s7, RFC 8031 s2); InvalidKeyExchange."""
        if not isinstance(peer_public, (bytes, bytearray)):
            raise InvalidKeyExchange("key exchange data must be bytes")
        expected = public_value_len(self.group)
        if len(peer_public) != expected:
            raise InvalidKeyExchange(
                f"key exchange data for group {_group_name(self.group)} must be {expected} bytes, "
                f"got {len(peer_public)}")
        if self.group in MODP_PRIMES:
            return self._modp_shared(bytes(peer_public))
        if self.group in _ECP_CURVES:
            return self._ecp_shared(bytes(peer_public))
        return self._x25519_shared(bytes(peer_public))

    def _modp_shared(self, peer_public: bytes) -> bytes:
        p = MODP_PRIMES[self.group]
        y = int.from_bytes(peer_public, "big")
        if not 1 < y < p - 1:  # RFC 6989 s2.1: rejects 0, 1, p-1 and values >= p
            raise InvalidKeyExchange("MODP public value out of range (RFC 6989: 1 < y < p-1)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peer = dh.DHPublicNumbers(y, _modp_params(self.group)).public_key()
            secret = self._private.exchange(peer)
        # padded with zeros to the length of the modulus (RFC 7296 s2.14)
        return secret.rjust(len(peer_public), b"\x00")

    def _ecp_shared(self, peer_public: bytes) -> bytes:
        try:
            # RFC 5903 s7: x | y without the 0x04 point-format octet; on-curve check is RFC 6989 s2.3
            peer = ec.EllipticCurvePublicKey.from_encoded_point(
                _ECP_CURVES[self.group](), b"\x04" + peer_public)
            return self._private.exchange(ec.ECDH(), peer)  # the x coordinate only (RFC 5903 s7)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise InvalidKeyExchange(f"ECP public value is not a point on {_group_name(self.group)}") from exc

    def _x25519_shared(self, peer_public: bytes) -> bytes:
        try:
            secret = self._private.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # cryptography refuses an all-zero result
            raise InvalidKeyExchange("Curve25519 shared secret is all zeros (RFC 8031 s2)") from exc
        if secret == bytes(32):
            raise InvalidKeyExchange("Curve25519 shared secret is all zeros (RFC 8031 s2)")
        return secret


def _group_name(group: int) -> str:
    try:
        return DhId(group).name
    except ValueError:
        return str(group)


def key_exchange(group: int, rng: Rng) -> KeyExchange:
    """A fresh private key of ``group`` drawn from ``rng``; ValueError on an unsupported group."""
    if group in MODP_PRIMES:
        while True:
            x = int.from_bytes(rng(_MODP_EXPONENT_BYTES), "big")
            if x > 1:
                break
        return modp_from_private(group, x)
    if group in _ECP_CURVES:
        order = _ECP_ORDERS[group]
        mask = (1 << order.bit_length()) - 1
        while True:  # rejection sampling: uniform in [1, n-1] and an in-range value is kept as is
            d = int.from_bytes(rng(_coord_len(group)), "big") & mask
            if 0 < d < order:
                return ecp_from_private(group, d)
    if group == DhId.CURVE25519:
        return x25519_from_private(rng(32))
    raise ValueError(f"unsupported key exchange group {_group_name(group)}")


def modp_from_private(group: int, x: int) -> KeyExchange:
    p = MODP_PRIMES[group]
    y = pow(MODP_GENERATOR, x, p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = _modp_params(group)
        private = dh.DHPrivateNumbers(x, dh.DHPublicNumbers(y, params)).private_key()
    return KeyExchange(group, y.to_bytes((p.bit_length() + 7) // 8, "big"), private)


def ecp_from_private(group: int, d: int) -> KeyExchange:
    private = ec.derive_private_key(d, _ECP_CURVES[group]())
    numbers = private.public_key().public_numbers()
    size = _coord_len(group)
    return KeyExchange(group, numbers.x.to_bytes(size, "big") + numbers.y.to_bytes(size, "big"), private)


def x25519_from_private(scalar: bytes) -> KeyExchange:
    private = x25519.X25519PrivateKey.from_private_bytes(scalar)
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return KeyExchange(DhId.CURVE25519, public, private)
