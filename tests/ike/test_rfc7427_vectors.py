"""RFC 7427 Appendix A AlgorithmIdentifiers (rfc-vectors/ike/rfc7427_appendix_a_algorithm_identifiers.json),
reproduced byte for byte by the AUTH payloads espgw signs, accepted or refused as the file says,
and found verbatim in certificates cryptography signs with the same algorithm."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from ike.codec.constants import AuthMethod
from ike.crypto import signatures as S

FILE = Path(__file__).resolve().parents[2] / "rfc-vectors" / "ike" / "rfc7427_appendix_a_algorithm_identifiers.json"
DATA = json.loads(FILE.read_text())
VECTORS = DATA["vectors"]
OCTETS = b"InitiatorSignedOctets " * 10
RSA = rsa.generate_private_key(65537, 2048)
CURVE_KEYS = {"SHA2_256": ec.generate_private_key(ec.SECP256R1()), "SHA2_384": ec.generate_private_key(ec.SECP384R1()),
              "SHA2_512": ec.generate_private_key(ec.SECP521R1())}
ED = ed25519.Ed25519PrivateKey.generate()


def _key(vector):
    return {"rsa": RSA, "ed25519": ED}.get(vector["key"]) or CURVE_KEYS.get(vector["hash"], CURVE_KEYS["SHA2_256"])


def _ids(vector):
    return f"{vector['section']} {vector['name']}"


def test_file_names_its_source():
    assert DATA["source"].startswith("RFC 7427 Appendix A")
    assert {v["section"] for v in VECTORS} >= {"A.1.2", "A.3.2", "A.4.3"}


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["espgw"] == "sends"], ids=_ids)
def test_sent_identifiers_byte_for_byte(vector):
    der = bytes.fromhex(vector["der"])
    hash_id = S.HashAlgorithm[vector["hash"]]
    method, data = S.sign_auth(_key(vector), OCTETS, [hash_id])
    assert method == AuthMethod.DIGITAL_SIGNATURE
    assert data[0] == len(der) and data[1:1 + len(der)] == der
    assert S.verify_auth(_key(vector).public_key(), method, data, OCTETS).algorithm_identifier == der


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["espgw"] in ("accepts", "sha1")], ids=_ids)
def test_accepted_identifiers(vector):
    der = bytes.fromhex(vector["der"])
    hash_id = S.HashAlgorithm[vector["hash"]]
    key = _key(vector)
    algorithm = {"SHA1": hashes.SHA1(), "SHA2_256": hashes.SHA256()}[vector["hash"]]
    if vector["key"] == "rsa":
        pad = padding.PSS(padding.MGF1(algorithm), algorithm.digest_size) if vector.get("pss") else padding.PKCS1v15()
        signature = key.sign(OCTETS, pad, algorithm)
    else:
        signature = key.sign(OCTETS, ec.ECDSA(algorithm))
    data = bytes([len(der)]) + der + signature
    if vector["espgw"] == "sha1":
        with pytest.raises(S.HashNotAllowed, match="SHA1"):
            S.verify_auth(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, OCTETS)
    scheme = S.verify_auth(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, OCTETS, allowed=[hash_id])
    assert scheme.algorithm_identifier == der and scheme.hash == hash_id and scheme.pss == bool(vector.get("pss"))


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["espgw"] == "unsupported"], ids=_ids)
def test_unsupported_identifiers(vector):
    der = bytes.fromhex(vector["der"])
    with pytest.raises(S.UnknownAlgorithm):
        S.verify_auth(RSA.public_key(), AuthMethod.DIGITAL_SIGNATURE, bytes([len(der)]) + der + b"\x00" * 256, OCTETS)


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["espgw"] == "sends"], ids=_ids)
def test_cryptography_writes_the_same_identifier_in_certificates(vector):
    """An independent encoder: the signatureAlgorithm of a certificate signed the same way."""
    key = _key(vector)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "vector")])
    now = datetime(2027, 1, 1, tzinfo=UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1)))
    algorithm = {"SHA2_256": hashes.SHA256(), "SHA2_384": hashes.SHA384(), "SHA2_512": hashes.SHA512(),
                 "IDENTITY": None}[vector["hash"]]
    der = builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)
    # in the TBS and beside the signature (and, for Ed25519, in the public key too)
    assert der.count(bytes.fromhex(vector["der"])) >= 2


@pytest.mark.parametrize("scheme", [S.RSA_PSS_SHA256, S.RSA_PSS_SHA384, S.RSA_PSS_SHA512], ids=lambda s: s.name)
def test_pss_identifiers_we_send_match_cryptography(scheme):
    """What we send for PSS (strongSwan's form, no trailer field) is also what cryptography writes;
    tests/ike/test_signatures.py finds it in strongSwan's pki output too."""
    algorithm = {S.HashAlgorithm.SHA2_256: hashes.SHA256(), S.HashAlgorithm.SHA2_384: hashes.SHA384(),
                 S.HashAlgorithm.SHA2_512: hashes.SHA512()}[scheme.hash]
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "pss")])
    now = datetime(2027, 1, 1, tzinfo=UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(RSA.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(RSA, algorithm, rsa_padding=padding.PSS(padding.MGF1(algorithm), padding.PSS.DIGEST_LENGTH)))
    assert cert.public_bytes(serialization.Encoding.DER).count(scheme.algorithm_identifier) == 2
