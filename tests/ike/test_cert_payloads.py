"""CERT and CERTREQ payloads (RFC 7296 s3.6, s3.7): encode, decode, garbage is a clean error."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from ike.codec import payloads as p
from ike.codec.constants import CertEncoding, PayloadType
from ike.crypto import certs as C
from ike.codec.message import decode_chain, encode_chain
from tests.ike.certs_helpers import NOW, cert

MOON_DER = cert("moon.crt").public_bytes(serialization.Encoding.DER)


def test_cert_round_trip_with_a_strongswan_certificate():
    payload = p.CertPayload(CertEncoding.X509_SIGNATURE, MOON_DER)
    assert payload.body() == b"\x04" + MOON_DER
    parsed = p.CertPayload.parse(payload.body())
    assert parsed == payload and C.parse_certificate(parsed.data).subject == cert("moon.crt").subject
    assert p.PAYLOAD_CLASSES[PayloadType.CERT] is p.CertPayload


@pytest.mark.parametrize("body", [b"\x04", b"\x04garbage", b"\x04" + MOON_DER[:-1], b"\x04" + MOON_DER + b"\x00",
                                  b"\x04\x30\x03\x02\x01\x00"])
def test_cert_garbage_is_kept_and_refused_by_validation(body):
    parsed = p.CertPayload.parse(body)  # the receiver refuses it with AUTHENTICATION_FAILED
    assert parsed.data == body[1:]
    with pytest.raises(C.CertificateGarbage):
        C.validate_peer([parsed.data], C.TrustStore(cas=[cert("ca.crt")]), NOW)


def test_cert_empty_and_other_encodings():
    with pytest.raises(p.MalformedPayload):
        p.CertPayload.parse(b"")
    hash_and_url = b"\x0c" + b"h" * 20 + b"http://ca.example/gw.der"
    assert p.CertPayload.parse(hash_and_url).encoding == CertEncoding.HASH_AND_URL_X509  # kept, left to the caller


def test_certreq_authorities():
    hashes = [C.spki_sha1(cert("ca.crt")), C.spki_sha1(cert("ica.crt"))]
    payload = p.CertReqPayload.for_authorities(hashes)
    assert payload.body() == b"\x04" + hashes[0] + hashes[1]
    parsed = p.CertReqPayload.parse(payload.body())
    assert parsed.authorities == hashes and parsed == payload
    assert p.CertReqPayload.parse(b"\x04").authorities == []  # empty: any CA
    assert p.CertReqPayload(12, b"whatever").authorities == []
    assert p.PAYLOAD_CLASSES[PayloadType.CERTREQ] is p.CertReqPayload
    with pytest.raises(ValueError):
        p.CertReqPayload.for_authorities([b"short"])


@pytest.mark.parametrize("body", [b"", b"\x04" + b"h" * 19, b"\x04" + b"h" * 21, b"\x04" + b"h" * 41])
def test_certreq_garbage_is_a_decode_error(body):
    with pytest.raises(p.MalformedPayload):
        p.CertReqPayload.parse(body)


def test_in_a_payload_chain():
    chain = [p.CertPayload(4, MOON_DER), p.CertReqPayload.for_authorities([C.spki_sha1(cert("ca.crt"))]),
             p.AuthPayload(14, b"a" * 40)]
    first, data = encode_chain(chain)
    assert decode_chain(first, data) == chain
    bad = bytearray(data)
    bad[4 + 1 + 10] ^= 0xFF  # inside the certificate's DER header: decodes, validation refuses it
    assert decode_chain(first, bytes(bad))[0].data != chain[0].data
