"""ike.crypto.signatures: every AUTH method signs and verifies, negotiation picks what both
sides allow, and each kind of bad AUTH is a typed error.

Cross-checks with independent signers: the certificates strongSwan's pki signed (PKCS#1 v1.5,
RSASSA-PSS, ECDSA) are verified through verify_auth with strongSwan's own AlgorithmIdentifier,
as strongSwan's AUTH would arrive; and the openssl command line signs SignedOctets for method 14.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ike.codec.constants import AuthMethod, PrfId
from ike.crypto import certs as C
from ike.crypto import signatures as S
from ike.crypto.signatures import HashAlgorithm as H
from ike.crypto.keys import signed_octets
from tests.ike.certs_helpers import FIXTURES, cert, fixture

KEYS = {"rsa": rsa.generate_private_key(65537, 2048), "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()), "p521": ec.generate_private_key(ec.SECP521R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate()}
# <InitiatorSignedOctets> as the PSK path builds them (RFC 7296 s2.15)
OCTETS = signed_octets(b"\x11" * 300, b"\x22" * 32, PrfId.HMAC_SHA2_256, b"\x33" * 32, b"\x09\x00\x00\x00" + b"dn")
ALL = [H.SHA2_256, H.SHA2_384, H.SHA2_512, H.IDENTITY]


def _data(scheme: S.SignatureScheme, signature: bytes) -> bytes:
    blob = scheme.algorithm_identifier
    return bytes([len(blob)]) + blob + signature


@pytest.mark.parametrize("scheme", S.SCHEMES, ids=lambda s: s.name)
def test_every_rfc7427_scheme_round_trips(scheme):
    key = {"rsa": KEYS["rsa"], "ed25519": KEYS["ed25519"]}.get(scheme.key_type) or \
        {H.SHA2_256: KEYS["p256"], H.SHA2_384: KEYS["p384"], H.SHA2_512: KEYS["p521"]}[scheme.hash]
    method, data = S.sign_auth(key, OCTETS, [scheme.hash], rsa_pss=scheme.pss)
    assert method == AuthMethod.DIGITAL_SIGNATURE
    assert data[1:1 + data[0]] == scheme.algorithm_identifier
    assert S.verify_auth(key.public_key(), method, data, OCTETS) == scheme
    with pytest.raises(S.SignatureInvalid):
        S.verify_auth(key.public_key(), method, data, OCTETS + b"x")


@pytest.mark.parametrize("kind, method, size", [("p256", AuthMethod.ECDSA_SHA256_P256, 32),
                                                ("p384", AuthMethod.ECDSA_SHA384_P384, 48),
                                                ("p521", AuthMethod.ECDSA_SHA512_P521, 66)])
def test_legacy_ecdsa_methods_without_hash_notify(kind, method, size):
    key = KEYS[kind]
    got_method, data = S.sign_auth(key, OCTETS, None)
    assert got_method == method and len(data) == 2 * size  # r | s (RFC 4754), not DER
    assert S.verify_auth(key.public_key(), got_method, data, OCTETS).hash != H.SHA1
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(S.SignatureInvalid):
        S.verify_auth(key.public_key(), got_method, tampered, OCTETS)
    with pytest.raises(S.MalformedSignature, match="not"):
        S.verify_auth(key.public_key(), got_method, data[:-1], OCTETS)


def test_legacy_rsa_method_is_pkcs1_sha1():
    key = KEYS["rsa"]
    method, data = S.sign_auth(key, OCTETS, None)
    assert method == AuthMethod.RSA_SIG and len(data) == 256
    assert S.verify_auth(key.public_key(), method, data, OCTETS).hash == H.SHA1
    with pytest.raises(S.HashNotAllowed, match="RFC 7427 only"):
        S.verify_auth(key.public_key(), method, data, OCTETS, allow_legacy=False)


def test_ed25519_needs_identity_hash():
    key = KEYS["ed25519"]
    assert S.sign_auth(key, OCTETS, None)[0] == AuthMethod.DIGITAL_SIGNATURE  # no classic method exists
    with pytest.raises(S.HashNotAllowed, match="Identity"):
        S.sign_auth(key, OCTETS, [H.SHA2_256])


def test_negotiation_prefers_curve_hash_and_local_order():
    assert S.choose_scheme(KEYS["p384"], ALL) == S.ECDSA_SHA384
    assert S.choose_scheme(KEYS["p384"], [H.SHA2_256, H.SHA2_512]) == S.ECDSA_SHA256
    assert S.choose_scheme(KEYS["p521"], ALL) == S.ECDSA_SHA512
    assert S.choose_scheme(KEYS["rsa"], ALL) == S.RSA_SHA256
    assert S.choose_scheme(KEYS["rsa"], [H.SHA2_512]) == S.RSA_SHA512
    assert S.choose_scheme(KEYS["rsa"], ALL, allowed=[H.SHA2_384, H.SHA2_256]) == S.RSA_SHA384
    assert S.choose_scheme(KEYS["rsa"], ALL, rsa_pss=True) == S.RSA_PSS_SHA256
    assert S.choose_scheme(KEYS["rsa"], [H.SHA1, 99]) is None
    assert S.choose_scheme(KEYS["ed25519"], ALL) == S.ED25519


def test_no_common_hash_falls_back_to_classic_method():
    method, _ = S.sign_auth(KEYS["p256"], OCTETS, [H.SHA1])
    assert method == AuthMethod.ECDSA_SHA256_P256
    assert S.sign_auth(KEYS["rsa"], OCTETS, [])[0] == AuthMethod.RSA_SIG


def test_hash_notify_data():
    assert S.hash_algorithms_data() == bytes.fromhex("0002000300040005")
    assert S.parse_hash_algorithms(bytes.fromhex("0002000300040005")) == [2, 3, 4, 5]
    assert S.parse_hash_algorithms(b"") == []
    with pytest.raises(S.MalformedSignature):
        S.parse_hash_algorithms(b"\x00\x02\x00")


def test_algorithm_identifier_must_match_key_type():
    _, data = S.sign_auth(KEYS["p256"], OCTETS, ALL)
    with pytest.raises(S.AlgorithmMismatch, match="rsa key"):
        S.verify_auth(KEYS["rsa"].public_key(), AuthMethod.DIGITAL_SIGNATURE, data, OCTETS)
    _, rsa_data = S.sign_auth(KEYS["rsa"], OCTETS, ALL)
    with pytest.raises(S.AlgorithmMismatch):
        S.verify_auth(KEYS["ed25519"].public_key(), AuthMethod.DIGITAL_SIGNATURE, rsa_data, OCTETS)
    method, legacy = S.sign_auth(KEYS["p256"], OCTETS, None)
    with pytest.raises(S.AlgorithmMismatch, match="another curve"):
        S.verify_auth(KEYS["p384"].public_key(), method, legacy, OCTETS)
    with pytest.raises(S.AlgorithmMismatch):
        S.verify_auth(KEYS["rsa"].public_key(), method, legacy, OCTETS)
    with pytest.raises(S.AlgorithmMismatch):
        S.verify_auth(KEYS["p256"].public_key(), AuthMethod.RSA_SIG, legacy, OCTETS)


def test_hash_not_allowed_by_policy():
    _, data = S.sign_auth(KEYS["p521"], OCTETS, ALL)
    with pytest.raises(S.HashNotAllowed, match="SHA2_512"):
        S.verify_auth(KEYS["p521"].public_key(), AuthMethod.DIGITAL_SIGNATURE, data, OCTETS,
                      allowed=[H.SHA2_256, H.SHA2_384])
    sha1_blob = bytes.fromhex("300d06092a864886f70d0101050500")
    signature = S.sign_auth(KEYS["rsa"], OCTETS, None)[1]  # PKCS#1 SHA-1
    data = bytes([len(sha1_blob)]) + sha1_blob + signature
    with pytest.raises(S.HashNotAllowed, match="SHA1"):
        S.verify_auth(KEYS["rsa"].public_key(), AuthMethod.DIGITAL_SIGNATURE, data, OCTETS)
    assert S.verify_auth(KEYS["rsa"].public_key(), AuthMethod.DIGITAL_SIGNATURE, data, OCTETS,
                         allowed=[H.SHA1]).hash == H.SHA1


@pytest.mark.parametrize("data", [b"", b"\x0f", b"\x0f" + bytes.fromhex("300d06092a864886f70d01010b05"),
                                  b"\x0f" + bytes.fromhex("300d06092a864886f70d01010b0500")])
def test_malformed_auth_data(data):
    with pytest.raises(S.MalformedSignature):
        S.verify_auth(KEYS["rsa"].public_key(), AuthMethod.DIGITAL_SIGNATURE, data, OCTETS)


def test_malformed_signature_bytes():
    ecdsa_blob = S.ECDSA_SHA256.algorithm_identifier
    data = bytes([len(ecdsa_blob)]) + ecdsa_blob + b"\x30\x02\x01"  # not a DER ECDSA-Sig-Value
    with pytest.raises((S.MalformedSignature, S.SignatureInvalid)):
        S.verify_auth(KEYS["p256"].public_key(), AuthMethod.DIGITAL_SIGNATURE, data, OCTETS)
    rsa_data = _data(S.RSA_SHA256, b"\x01" * 3)  # wrong length for the modulus
    with pytest.raises((S.MalformedSignature, S.SignatureInvalid)):
        S.verify_auth(KEYS["rsa"].public_key(), AuthMethod.DIGITAL_SIGNATURE, rsa_data, OCTETS)


def test_unknown_algorithm_identifier_and_method():
    blob = bytes.fromhex("300b0609608648016503040302")  # dsa-with-sha256 (RFC 7427 A.2.2): not supported
    with pytest.raises(S.UnknownAlgorithm, match="300b06"):
        S.verify_auth(KEYS["rsa"].public_key(), AuthMethod.DIGITAL_SIGNATURE, bytes([len(blob)]) + blob + b"s", OCTETS)
    for method in (AuthMethod.SHARED_KEY_MIC, AuthMethod.DSS_SIG, AuthMethod.NULL_AUTH, 200):
        with pytest.raises(S.UnsupportedAuthMethod):
            S.verify_auth(KEYS["rsa"].public_key(), method, b"x" * 32, OCTETS)


def test_pss_with_trailer_field_as_rfc7427_writes_it_verifies():
    key = KEYS["rsa"]
    _, data = S.sign_auth(key, OCTETS, ALL, rsa_pss=True)
    signature = data[1 + data[0]:]
    trailer = S._PSS_SHA256_TRAILER
    assert S.verify_auth(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, bytes([len(trailer)]) + trailer + signature,
                         OCTETS).pss


def test_unsupported_peer_key():
    small = rsa.generate_private_key(65537, 1024)
    with pytest.raises(C.UnsupportedKey):
        S.verify_auth(small.public_key(), AuthMethod.RSA_SIG, b"x" * 128, OCTETS)


def test_errors_never_show_keys_or_signatures():
    key = KEYS["rsa"]
    _, data = S.sign_auth(key, OCTETS, ALL)
    with pytest.raises(S.SignatureError) as exc:
        S.verify_auth(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, OCTETS + b"!")
    text = str(exc.value) + repr(exc.value)
    assert data[-16:].hex() not in text and format(key.private_numbers().d, "x")[:32] not in text


# --- strongSwan and openssl as independent signers -------------------------------------------

@pytest.mark.parametrize("name, issuer, scheme", [("moon.crt", "ca.crt", S.RSA_SHA256),
                                                  ("moon-pss.der", "ca.crt", S.RSA_PSS_SHA256),
                                                  ("carol.crt", "ica.crt", S.ECDSA_SHA384)])
def test_strongswan_signatures_verify_as_auth(name, issuer, scheme):
    """A certificate's signature is strongSwan's signer over octets (its TBS) with strongSwan's
    AlgorithmIdentifier: exactly what its method-14 AUTH carries."""
    signed = C.parse_certificate(fixture(name))
    der = fixture(name) if name.endswith(".der") else None
    if der is not None:
        assert scheme.algorithm_identifier in der  # strongSwan's own encoding of the identifier
    data = _data(scheme, signed.signature)
    public = cert(issuer).public_key()
    assert S.verify_auth(public, AuthMethod.DIGITAL_SIGNATURE, data, signed.tbs_certificate_bytes) == scheme
    with pytest.raises(S.SignatureInvalid):
        S.verify_auth(public, AuthMethod.DIGITAL_SIGNATURE, data, signed.tbs_certificate_bytes[:-1])


def test_strongswan_ecdsa_signature_as_rfc4754_method():
    carol = cert("carol.crt")
    r, s = decode_dss_signature(carol.signature)
    raw = r.to_bytes(48, "big") + s.to_bytes(48, "big")
    S.verify_auth(cert("ica.crt").public_key(), AuthMethod.ECDSA_SHA384_P384, raw, carol.tbs_certificate_bytes)


def test_our_signatures_with_strongswan_made_keys():
    for key_file, expected in (("moon.key", AuthMethod.RSA_SIG), ("sun.key", AuthMethod.ECDSA_SHA256_P256),
                               ("carol.key", AuthMethod.ECDSA_SHA512_P521)):
        key = C.load_private_key(FIXTURES / key_file)
        for peer_hashes in (None, ALL):
            method, data = S.sign_auth(key, OCTETS, peer_hashes)
            assert (method == expected) == (peer_hashes is None)
            S.verify_auth(key.public_key(), method, data, OCTETS)
    moon = cert("moon.crt")
    method, data = S.sign_auth(C.load_private_key(FIXTURES / "moon.key"), OCTETS, ALL)
    S.verify_auth(C.certificate_public_key(moon), method, data, OCTETS)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("key_file, scheme, options", [
    ("moon.key", S.RSA_SHA384, ["-sha384"]),
    ("moon.key", S.RSA_PSS_SHA256, ["-sha256", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32",
                                    "-sigopt", "rsa_mgf1_md:sha256"]),
    ("sun.key", S.ECDSA_SHA256, ["-sha256"]),
])
def test_openssl_command_line_signatures_verify(tmp_path, key_file, scheme, options):
    octets_file = tmp_path / "octets"
    octets_file.write_bytes(OCTETS)
    signature = subprocess.run(["openssl", "dgst", *options, "-sign", str(FIXTURES / key_file), str(octets_file)],
                               check=True, capture_output=True).stdout
    public = C.load_private_key(FIXTURES / key_file).public_key()
    assert S.verify_auth(public, AuthMethod.DIGITAL_SIGNATURE, _data(scheme, signature), OCTETS) == scheme
