"""AUTH payload signatures: RFC 7427 Digital Signature (method 14) with SIGNATURE_HASH_ALGORITHMS,
and the older methods RSA (1, PKCS#1 v1.5 with SHA-1) and ECDSA (9/10/11, RFC 4754) for peers that
do not announce hash algorithms.

What is signed is <Initiator|Responder>SignedOctets, built by ``ike.crypto.keys.signed_octets`` as for
PSK authentication (RFC 7296 s2.15). AlgorithmIdentifiers are compared as whole DER blobs, as RFC
7427 s3 allows and as its Appendix A lists them; the RSASSA-PSS ones we send are strongSwan's
(SHA-2 hash and MGF1, salt as long as the hash, no trailer field).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from ike.codec.constants import AuthMethod
from ike.crypto.certs import PrivateKey, PublicKey, UnsupportedKey, check_public_key


class HashAlgorithm(IntEnum):
    """IKEv2 Hash Algorithms registry (RFC 7427 s7, RFC 8420 for Identity)."""

    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5


DEFAULT_HASHES: tuple[HashAlgorithm, ...] = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384,
                                             HashAlgorithm.SHA2_512, HashAlgorithm.IDENTITY)
_HASHES: dict[HashAlgorithm, type[hashes.HashAlgorithm]] = {
    HashAlgorithm.SHA1: hashes.SHA1, HashAlgorithm.SHA2_256: hashes.SHA256,
    HashAlgorithm.SHA2_384: hashes.SHA384, HashAlgorithm.SHA2_512: hashes.SHA512,
}


class SignatureError(Exception):
    """An AUTH signature that cannot be made or is not accepted; ``reason`` is a stable word."""

    reason: ClassVar[str] = "signature"


class MalformedSignature(SignatureError):
    reason = "malformed"


class UnknownAlgorithm(SignatureError):
    reason = "unknown-algorithm"


class AlgorithmMismatch(SignatureError):
    reason = "algorithm-mismatch"


class HashNotAllowed(SignatureError):
    reason = "hash-not-allowed"


class SignatureInvalid(SignatureError):
    reason = "bad-signature"


class UnsupportedAuthMethod(SignatureError):
    reason = "unsupported-method"


@dataclass(frozen=True)
class SignatureScheme:
    name: str
    key_type: str  # "rsa", "ecdsa" or "ed25519"
    hash: HashAlgorithm
    algorithm_identifier: bytes
    pss: bool = False


# Fixed DER strings (RFC 7427 Appendix A, RFC 8420 s2), checked byte for byte against the RFC and
# against certificates that cryptography and strongSwan's pki sign (tests/ike/test_rfc7427_vectors.py).
# RSASSA-PSS as strongSwan writes it: SHA-2 hash, MGF1 with it, salt length = hash length.
_PSS_SHA256 = bytes.fromhex(
    "304106092a864886f70d01010a3034a00f300d0609608648016503040201"
    "0500a11c301a06092a864886f70d010108300d06096086480165030402010500a203020120")
_PSS_SHA384 = bytes.fromhex(
    "304106092a864886f70d01010a3034a00f300d0609608648016503040202"
    "0500a11c301a06092a864886f70d010108300d06096086480165030402020500a203020130")
_PSS_SHA512 = bytes.fromhex(
    "304106092a864886f70d01010a3034a00f300d0609608648016503040203"
    "0500a11c301a06092a864886f70d010108300d06096086480165030402030500a203020140")
# ... and as RFC 7427 A.4.3 writes it, with the (default) trailer field spelled out.
_PSS_SHA256_TRAILER = bytes.fromhex(
    "304606092a864886f70d01010a3039a00f300d0609608648016503040201"
    "0500a11c301a06092a864886f70d010108300d06096086480165030402010500a203020120a303020101")
_PSS_SHA384_TRAILER = bytes.fromhex(
    "304606092a864886f70d01010a3039a00f300d0609608648016503040202"
    "0500a11c301a06092a864886f70d010108300d06096086480165030402020500a203020130a303020101")
_PSS_SHA512_TRAILER = bytes.fromhex(
    "304606092a864886f70d01010a3039a00f300d0609608648016503040203"
    "0500a11c301a06092a864886f70d010108300d06096086480165030402030500a203020140a303020101")
RSA_SHA256 = SignatureScheme("sha256WithRSAEncryption", "rsa", HashAlgorithm.SHA2_256,
                             bytes.fromhex("300d06092a864886f70d01010b0500"))
RSA_SHA384 = SignatureScheme("sha384WithRSAEncryption", "rsa", HashAlgorithm.SHA2_384,
                             bytes.fromhex("300d06092a864886f70d01010c0500"))
RSA_SHA512 = SignatureScheme("sha512WithRSAEncryption", "rsa", HashAlgorithm.SHA2_512,
                             bytes.fromhex("300d06092a864886f70d01010d0500"))
RSA_PSS_SHA256 = SignatureScheme("RSASSA-PSS SHA-256", "rsa", HashAlgorithm.SHA2_256, _PSS_SHA256, pss=True)
RSA_PSS_SHA384 = SignatureScheme("RSASSA-PSS SHA-384", "rsa", HashAlgorithm.SHA2_384, _PSS_SHA384, pss=True)
RSA_PSS_SHA512 = SignatureScheme("RSASSA-PSS SHA-512", "rsa", HashAlgorithm.SHA2_512, _PSS_SHA512, pss=True)
ECDSA_SHA256 = SignatureScheme("ecdsa-with-sha256", "ecdsa", HashAlgorithm.SHA2_256,
                               bytes.fromhex("300a06082a8648ce3d040302"))
ECDSA_SHA384 = SignatureScheme("ecdsa-with-sha384", "ecdsa", HashAlgorithm.SHA2_384,
                               bytes.fromhex("300a06082a8648ce3d040303"))
ECDSA_SHA512 = SignatureScheme("ecdsa-with-sha512", "ecdsa", HashAlgorithm.SHA2_512,
                               bytes.fromhex("300a06082a8648ce3d040304"))
ED25519 = SignatureScheme("Ed25519", "ed25519", HashAlgorithm.IDENTITY, bytes.fromhex("300506032b6570"))
SCHEMES: tuple[SignatureScheme, ...] = (RSA_SHA256, RSA_SHA384, RSA_SHA512, RSA_PSS_SHA256, RSA_PSS_SHA384,
                                        RSA_PSS_SHA512, ECDSA_SHA256, ECDSA_SHA384, ECDSA_SHA512, ED25519)

# Recognised on receipt to name the problem (SHA-1 is not in the default policy), or because
# RFC 7427 A.4.3 writes PSS with an explicit trailer field.
_RECEIVED_ONLY: tuple[SignatureScheme, ...] = (
    SignatureScheme("sha1WithRSAEncryption", "rsa", HashAlgorithm.SHA1,
                    bytes.fromhex("300d06092a864886f70d0101050500")),
    SignatureScheme("ecdsa-with-sha1", "ecdsa", HashAlgorithm.SHA1, bytes.fromhex("300906072a8648ce3d0401")),
    # RFC 7427 A.4.1 (empty parameters) and A.4.2 (defaults spelled out): SHA-1, MGF1-SHA-1, salt 20
    SignatureScheme("RSASSA-PSS SHA-1 (empty parameters)", "rsa", HashAlgorithm.SHA1,
                    bytes.fromhex("300d06092a864886f70d01010a3000"), pss=True),
    SignatureScheme("RSASSA-PSS SHA-1 (default parameters)", "rsa", HashAlgorithm.SHA1, bytes.fromhex(
        "303e06092a864886f70d01010a3031a00b300906052b0e03021a0500a118301606092a864886f70d010108300906052b0e03021a0500"
        "a203020114a303020101"), pss=True),
    SignatureScheme("RSASSA-PSS SHA-256 (trailer)", "rsa", HashAlgorithm.SHA2_256, _PSS_SHA256_TRAILER, pss=True),
    SignatureScheme("RSASSA-PSS SHA-384 (trailer)", "rsa", HashAlgorithm.SHA2_384, _PSS_SHA384_TRAILER, pss=True),
    SignatureScheme("RSASSA-PSS SHA-512 (trailer)", "rsa", HashAlgorithm.SHA2_512, _PSS_SHA512_TRAILER, pss=True),
)
_BY_IDENTIFIER = {s.algorithm_identifier: s for s in SCHEMES + _RECEIVED_ONLY}


def scheme_for_identifier(blob: bytes) -> SignatureScheme | None:
    """The scheme an RFC 7427 AlgorithmIdentifier names, if we know it."""
    return _BY_IDENTIFIER.get(blob)

# RFC 4754: the ECDSA methods fix curve and hash; the signature is r | s, each as long as the curve.
_LEGACY_ECDSA = {AuthMethod.ECDSA_SHA256_P256: (ec.SECP256R1, HashAlgorithm.SHA2_256, 32),
                 AuthMethod.ECDSA_SHA384_P384: (ec.SECP384R1, HashAlgorithm.SHA2_384, 48),
                 AuthMethod.ECDSA_SHA512_P521: (ec.SECP521R1, HashAlgorithm.SHA2_512, 66)}
_CURVE_HASH = {ec.SECP256R1.name: HashAlgorithm.SHA2_256, ec.SECP384R1.name: HashAlgorithm.SHA2_384,
               ec.SECP521R1.name: HashAlgorithm.SHA2_512}


# --- SIGNATURE_HASH_ALGORITHMS --------------------------------------------------------------

def hash_algorithms_data(allowed: Iterable[int] = DEFAULT_HASHES) -> bytes:
    """The SIGNATURE_HASH_ALGORITHMS notify data: 2-byte hash identifiers (RFC 7427 s4)."""
    return b"".join(int(h).to_bytes(2, "big") for h in allowed)


def parse_hash_algorithms(data: bytes) -> list[int]:
    """The peer's announced hashes (unknown numbers kept: they just never match)."""
    if len(data) % 2:
        raise MalformedSignature(f"SIGNATURE_HASH_ALGORITHMS of {len(data)} bytes, not a list of 2-byte values")
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]


# --- signing --------------------------------------------------------------------------------

def _key_type(key: PublicKey) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ecdsa"
    return "ed25519"


def choose_scheme(key: PrivateKey, peer_hashes: Sequence[int], allowed: Sequence[int] = DEFAULT_HASHES,
                  rsa_pss: bool = False) -> SignatureScheme | None:
    """The RFC 7427 scheme for our key and the hashes both sides allow, or None if none is common.

    ECDSA prefers the hash of its curve's strength, RSA our order of ``allowed``.
    """
    public = check_public_key(key.public_key())
    common = [HashAlgorithm(h) for h in allowed if h in peer_hashes and h in HashAlgorithm.__members__.values()]
    kind = _key_type(public)
    if kind == "ed25519":
        return ED25519 if HashAlgorithm.IDENTITY in common else None
    if isinstance(public, ec.EllipticCurvePublicKey):
        preferred = _CURVE_HASH[public.curve.name]
        common.sort(key=lambda h: h != preferred)
    for h in common:
        for scheme in SCHEMES:
            if scheme.key_type == kind and scheme.hash == h and (kind != "rsa" or scheme.pss == rsa_pss):
                return scheme
    return None


def _sign_with(key: PrivateKey, scheme_hash: HashAlgorithm, pss: bool, octets: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(octets)
    algorithm = _HASHES[scheme_hash]()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(octets, ec.ECDSA(algorithm))
    if pss:
        return key.sign(octets, padding.PSS(padding.MGF1(algorithm), algorithm.digest_size), algorithm)
    return key.sign(octets, padding.PKCS1v15(), algorithm)


def sign_auth(key: PrivateKey, octets: bytes, peer_hashes: Sequence[int] | None,
              allowed: Sequence[int] = DEFAULT_HASHES, rsa_pss: bool = False) -> tuple[int, bytes]:
    """AUTH method and data for our signature over ``octets``.

    ``peer_hashes`` is the peer's SIGNATURE_HASH_ALGORITHMS (None when it sent none). With a common
    hash: method 14 with an AlgorithmIdentifier; otherwise the key type's classic method (RSA with
    SHA-1, or the RFC 4754 method of the ECDSA curve). Ed25519 exists only as method 14.
    """
    public = check_public_key(key.public_key())
    scheme = choose_scheme(key, peer_hashes, allowed, rsa_pss) if peer_hashes is not None else None
    if scheme is None and isinstance(key, ed25519.Ed25519PrivateKey):
        if peer_hashes is not None:
            raise HashNotAllowed("an Ed25519 key needs the Identity hash, which the peer did not announce")
        scheme = ED25519
    if scheme is not None:
        signature = _sign_with(key, scheme.hash, scheme.pss, octets)
        blob = scheme.algorithm_identifier
        return AuthMethod.DIGITAL_SIGNATURE, bytes([len(blob)]) + blob + signature
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(public, ec.EllipticCurvePublicKey):
        for method, (curve, hash_id, size) in _LEGACY_ECDSA.items():
            if isinstance(public.curve, curve):
                r, s = decode_dss_signature(_sign_with(key, hash_id, False, octets))
                return method, r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return AuthMethod.RSA_SIG, _sign_with(key, HashAlgorithm.SHA1, False, octets)


# --- verification ---------------------------------------------------------------------------

def _verify_with(key: PublicKey, scheme: SignatureScheme, signature: bytes, octets: bytes) -> None:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, octets)
            return
        algorithm = _HASHES[scheme.hash]()
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, octets, ec.ECDSA(algorithm))
        elif scheme.pss:
            key.verify(signature, octets, padding.PSS(padding.MGF1(algorithm), algorithm.digest_size), algorithm)
        else:
            key.verify(signature, octets, padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        raise SignatureInvalid(f"the AUTH signature ({scheme.name}) does not verify with the peer's key") from None
    except ValueError:  # e.g. an ECDSA signature that is not DER
        raise MalformedSignature(f"the AUTH signature ({scheme.name}) is malformed") from None


def verify_auth(key: PublicKey, method: int, data: bytes, octets: bytes, allowed: Sequence[int] = DEFAULT_HASHES,
                allow_legacy: bool = True) -> SignatureScheme:
    """Check the peer's AUTH payload (method, data) over ``octets`` with its certificate's key.

    ``allowed`` are the hashes our policy accepts in method 14; ``allow_legacy`` whether methods
    1 and 9-11 are acceptable (they are what a peer without RFC 7427 sends). Returns the scheme
    used; raises a SignatureError subclass that says what was wrong.
    """
    key = check_public_key(key)
    kind = _key_type(key)
    if method == AuthMethod.DIGITAL_SIGNATURE:
        if not data or len(data) < 1 + data[0]:
            raise MalformedSignature("AUTH data shorter than its AlgorithmIdentifier length says")
        blob, signature = data[1:1 + data[0]], data[1 + data[0]:]
        scheme = _BY_IDENTIFIER.get(blob)
        if scheme is None:
            raise UnknownAlgorithm(f"AUTH AlgorithmIdentifier {blob.hex()} is not one we know")
        if scheme.key_type != kind:
            raise AlgorithmMismatch(f"AUTH uses {scheme.name}, but the peer's certificate has an {kind} key")
        if scheme.hash not in allowed:
            raise HashNotAllowed(f"AUTH uses {scheme.name}: hash {scheme.hash.name} is not allowed by local policy")
        if not signature:
            raise MalformedSignature("AUTH has an AlgorithmIdentifier but no signature")
        _verify_with(key, scheme, signature, octets)
        return scheme
    if method not in (AuthMethod.RSA_SIG, *_LEGACY_ECDSA):
        raise UnsupportedAuthMethod(f"AUTH method {method} is not a signature method we support")
    if not allow_legacy:
        raise HashNotAllowed(f"AUTH method {AuthMethod(method).name} is not allowed by local policy (RFC 7427 only)")
    if method == AuthMethod.RSA_SIG:
        if kind != "rsa":
            raise AlgorithmMismatch(f"AUTH method RSA_SIG, but the peer's certificate has an {kind} key")
        scheme = _BY_IDENTIFIER[bytes.fromhex("300d06092a864886f70d0101050500")]
        _verify_with(key, scheme, data, octets)
        return scheme
    curve, hash_id, size = _LEGACY_ECDSA[AuthMethod(method)]
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
        raise AlgorithmMismatch(f"AUTH method {AuthMethod(method).name}, but the peer's key is "
                                f"{kind if kind != 'ecdsa' else 'on another curve'}")
    if len(data) != 2 * size:
        raise MalformedSignature(f"AUTH {AuthMethod(method).name} signature of {len(data)} bytes, not {2 * size}")
    der = encode_dss_signature(int.from_bytes(data[:size], "big"), int.from_bytes(data[size:], "big"))
    scheme = SignatureScheme(AuthMethod(method).name, "ecdsa", hash_id, b"")
    _verify_with(key, scheme, der, octets)
    return scheme


__all__ = ["AlgorithmMismatch", "DEFAULT_HASHES", "HashAlgorithm", "HashNotAllowed", "MalformedSignature",
           "SCHEMES", "SignatureError", "SignatureInvalid", "SignatureScheme", "UnknownAlgorithm",
           "UnsupportedAuthMethod", "UnsupportedKey", "choose_scheme", "hash_algorithms_data",
           "parse_hash_algorithms", "scheme_for_identifier", "sign_auth", "verify_auth"]
