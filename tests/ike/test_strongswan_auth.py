"""strongSwan's own certificate AUTH payloads, recorded from two charons 5.9
(tests/fixtures/certs/record_strongswan_auth.py), checked with ike.crypto end to end: the signed
octets rebuilt with ike.crypto.keys.signed_octets verify strongSwan's signatures (RFC 7427 RSASSA-PSS and
ECDSA; classic RSA and ECDSA methods), its CERT chains validate, its ID_DER_ASN1_DN ids match the
certificates, and its CERTREQ names the CA by the same SPKI SHA-1 we compute."""

from __future__ import annotations

import json

import pytest

from ike.codec import payloads as p
from ike.codec.constants import AuthMethod, IdType, NotifyType, PrfId
from ike.crypto import certs as C
from ike.crypto import signatures as S
from ike.codec.ids import Identity
from ike.crypto.keys import signed_octets
from ike.codec.message import decode, decode_chain
from tests.ike.certs_helpers import FIXTURES, NOW, cert

MOON, SUN = "C=CH, O=strongSwan, CN=moon.strongswan.org", "C=CH, O=strongSwan, CN=sun.strongswan.org"
EXPECTED = {  # scenario: (initiator's scheme, responder's method / scheme)
    "rfc7427": ((AuthMethod.DIGITAL_SIGNATURE, "RSASSA-PSS SHA-256"),
                (AuthMethod.DIGITAL_SIGNATURE, "ecdsa-with-sha256")),
    "legacy": ((AuthMethod.RSA_SIG, "sha1WithRSAEncryption"), (AuthMethod.ECDSA_SHA256_P256, "ECDSA_SHA256_P256")),
}


def _load(scenario):
    record = json.loads((FIXTURES / f"strongswan-auth-{scenario}.json").read_text())
    init_req, init_resp = bytes.fromhex(record["init_request"]), bytes.fromhex(record["init_response"])
    messages = {"init_request": decode(init_req), "init_response": decode(init_resp)}
    for key in ("ike_auth_request", "ike_auth_response"):
        messages[key] = decode_chain(record[key]["first_payload"], bytes.fromhex(record[key]["plaintext"]))
    return record, init_req, init_resp, messages


def _one(payloads, cls):
    (found,) = [x for x in payloads if type(x) is cls]
    return found


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
@pytest.mark.parametrize("initiator", [True, False], ids=["initiator-moon-rsa", "responder-sun-ecdsa"])
def test_strongswan_auth_verifies(scenario, initiator):
    record, init_req, init_resp, messages = _load(scenario)
    ni = _one(messages["init_request"].payloads, p.NoncePayload).data
    nr = _one(messages["init_response"].payloads, p.NoncePayload).data
    auth_payloads = messages["ike_auth_request" if initiator else "ike_auth_response"]
    id_payload = _one(auth_payloads, p.IdiPayload if initiator else p.IdrPayload)
    auth = _one(auth_payloads, p.AuthPayload)
    (cert_payload,) = [x for x in auth_payloads if isinstance(x, p.CertPayload)]
    assert record["prf"] == "PRF_HMAC_SHA2_256"
    if initiator:
        octets = signed_octets(init_req, nr, PrfId.HMAC_SHA2_256, bytes.fromhex(record["sk_pi"]), id_payload.body())
    else:
        octets = signed_octets(init_resp, ni, PrfId.HMAC_SHA2_256, bytes.fromhex(record["sk_pr"]), id_payload.body())

    peer_cert = C.parse_certificate(cert_payload.data)
    method, name = EXPECTED[scenario][0 if initiator else 1]
    assert auth.method == method
    scheme = S.verify_auth(C.certificate_public_key(peer_cert), auth.method, auth.data, octets,
                           allow_legacy=scenario == "legacy")
    assert scheme.name == name
    with pytest.raises(S.SignatureInvalid):
        S.verify_auth(C.certificate_public_key(peer_cert), auth.method, auth.data, octets[:-1] + b"\x00",
                      allow_legacy=True)
    if scenario == "legacy":  # a policy that insists on RFC 7427 refuses the classic methods
        with pytest.raises(S.HashNotAllowed):
            S.verify_auth(C.certificate_public_key(peer_cert), auth.method, auth.data, octets, allow_legacy=False)

    chain = C.validate_chain(peer_cert, [], C.TrustStore(cas=[cert("ca.crt")]), NOW)
    assert len(chain) == 2
    ident = Identity(id_payload.id_type, id_payload.data)
    assert ident.id_type == IdType.ID_DER_ASN1_DN and str(ident) == (MOON if initiator else SUN)
    C.check_identity(peer_cert, ident)
    with pytest.raises(C.IdentityMismatch):
        C.check_identity(peer_cert, Identity.parse(SUN if initiator else MOON))


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_strongswan_certreq_names_the_ca_by_our_hash(scenario):
    _, _, _, messages = _load(scenario)
    ca_hash = C.spki_sha1(cert("ca.crt"))
    in_init = _one(messages["init_response"].payloads, p.CertReqPayload)
    in_auth = _one(messages["ike_auth_request"], p.CertReqPayload)
    assert in_init.authorities == [ca_hash] and in_auth.authorities == [ca_hash]
    assert C.TrustStore(cas=[cert("ca.crt")]).ca_key_hashes() == [ca_hash]


def test_strongswan_hash_notify_and_our_answer():
    _, _, _, messages = _load("rfc7427")
    notify = [x for x in messages["init_request"].payloads
              if isinstance(x, p.NotifyPayload) and x.notify_type == NotifyType.SIGNATURE_HASH_ALGORITHMS]
    announced = S.parse_hash_algorithms(notify[0].data)
    assert {S.HashAlgorithm.SHA2_256, S.HashAlgorithm.SHA2_384, S.HashAlgorithm.SHA2_512} <= set(announced)
    sun_key = C.load_private_key(FIXTURES / "sun.key")
    method, data = S.sign_auth(sun_key, b"octets", announced)
    assert method == AuthMethod.DIGITAL_SIGNATURE and data[1:1 + data[0]] == S.ECDSA_SHA256.algorithm_identifier
    _, _, _, legacy = _load("legacy")
    assert not [x for x in legacy["init_request"].payloads
                if isinstance(x, p.NotifyPayload) and x.notify_type == NotifyType.SIGNATURE_HASH_ALGORITHMS]
